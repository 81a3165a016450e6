"""The registered model family: names, parameter counts, attention placement, configs, bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from conftest import ROOT, slow_at_depth_50
from timm.layers import GlobalContext, NonLocalAttn, SEModule
from timm.models import save_for_hf

import timm_spa
from timm_spa.layers import SalientPositionsAttention
from timm_spa.models import HF_HUB_ORG, PRETRAINED_TAGS, PretrainedWeightsUnavailable
from timm_spa.models.published import RELEASED

# the README's Models table (params, ours, exact; beside the paper's Table 1), num_classes=10
PARAM_COUNTS = {
    'resnet18_cifar': 11_173_962,
    'resnet50_cifar': 23_520_842,
    'resnet18_nl': 11_306_186,
    'resnet50_nl': 25_622_602,
    'resnet18_gc': 11_190_955,
    'resnet50_gc': 23_785_419,
    'resnet18_spa': 11_371_594,
    'resnet50_spa': 26_670_666,
    'resnet18_se': 11_264_074,
    'resnet50_se': 26_051_834,
}
ATTN_TYPES = {'spa': SalientPositionsAttention, 'nl': NonLocalAttn, 'gc': GlobalContext}


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_our_models():
    assert timm.list_models('*_spa') == ['resnet18_spa', 'resnet50_spa']
    for name in PARAM_COUNTS:
        assert timm.is_model(name)
    assert set(timm.list_models(module='cifar_resnet')) == set(PARAM_COUNTS)


@pytest.mark.parametrize('name', sorted(PARAM_COUNTS))
def test_parameter_count_matches_spec(name):
    model = timm.create_model(name, num_classes=10)
    assert _count(model) == PARAM_COUNTS[name]


def test_parameter_table_agrees_with_exact_counts_and_paper():
    from timm_spa.param_table import parameter_rows
    rows = {row['model']: row for row in parameter_rows()}
    assert set(rows) == set(PARAM_COUNTS)
    for name, count in PARAM_COUNTS.items():
        assert rows[name]['params'] == count
        if not name.endswith('_se'):  # the paper's SE rows also count its reference convs' biases
            assert abs(count / 1e6 - rows[name]['paper_params_m']) <= 0.001


@pytest.mark.parametrize('name,attn', [('resnet18_spa', 'spa'), ('resnet50_nl', 'nl'), ('resnet18_gc', 'gc')])
def test_default_attention_after_last_block_of_stage3(name, attn):
    model = timm.create_model(name)
    for stage in (1, 2, 3, 4):
        layer = getattr(model, f'layer{stage}')
        has = any(isinstance(m, ATTN_TYPES[attn]) for m in layer)
        assert has == (stage == 3)
    assert isinstance(model.layer3[-1], ATTN_TYPES[attn])
    assert model.attn_stages == (3,)


def test_nl_and_gc_use_the_paper_widths():
    nl = timm.create_model('resnet18_nl').layer3[-1]
    assert nl.t.out_channels == 128  # rd 1/2 of 256
    gc = timm.create_model('resnet18_gc').layer3[-1]
    assert gc.mlp_add is not None and gc.mlp_scale is None
    assert gc.mlp_add.fc1.out_channels == 32  # rd 1/8 of 256


def test_se_models_put_se_in_every_block():
    model = timm.create_model('resnet18_se')
    blocks = [b for s in (1, 2, 3, 4) for b in getattr(model, f'layer{s}')]
    assert len(blocks) == 8 and all(isinstance(b.se, SEModule) for b in blocks)


@pytest.mark.parametrize('stages', [(1,), (2,), (4,), (1, 2), (2, 4), (1, 2, 3, 4)])
def test_attention_stages_anywhere(stages):
    model = timm.create_model('resnet18_spa', attn_stages=stages, attn_kwargs=dict(k=8))
    found = [s for s in (1, 2, 3, 4) if isinstance(getattr(model, f'layer{s}')[-1], SalientPositionsAttention)]
    assert tuple(found) == stages
    assert all(getattr(model, f'layer{s}')[-1].k == 8 for s in stages)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_table_cells_through_create_model():
    model = timm.create_model('resnet50_nl', attn_stages=(1,), attn_kwargs=dict(rd_ratio=1 / 4))
    assert isinstance(model.layer1[-1], NonLocalAttn) and model.layer1[-1].t.out_channels == 64
    model = timm.create_model('resnet18_spa', attn_stages=[3, 1], attn_kwargs=dict(k_ratio=16.0, scale='inv_channels'))
    assert model.attn_stages == (1, 3)
    assert model.layer1[-1].num_positions(32, 32) == 64
    assert model.layer3[-1].scale == pytest.approx(1 / 256)
    # an attention layer can be added to a baseline name, too
    model = timm.create_model('resnet18_cifar', attn_layer='spa', attn_stages=2)
    assert isinstance(model.layer2[-1], SalientPositionsAttention)


def test_attention_keeps_stock_state_dict_keys():
    base = set(timm.create_model('resnet18_cifar').state_dict())
    spa = set(timm.create_model('resnet18_spa').state_dict())
    assert base <= spa
    assert {k.rsplit('.', 1)[0] for k in spa - base} == {'layer3.2.qv', 'layer3.2.proj', 'layer3.2.norm'}


def test_spa_model_equals_baseline_at_init():
    # zero-initialised last BN: adding SPA does not change a backbone's outputs at step 0
    torch.manual_seed(0)
    base = timm.create_model('resnet18_cifar').eval()
    spa = timm.create_model('resnet18_spa').eval()
    spa.load_state_dict(base.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(base(x), spa(x))


@pytest.mark.parametrize('name', ['resnet18_spa', 'resnet18_nl'])
def test_init_weights_again_restores_the_identity_blocks(name):
    """init_weights() on a trained model re-initialises the attention block entirely, its last norm included."""
    model = timm.create_model(name).eval()
    block = model.layer3[2]
    for p in block.parameters():
        p.data.normal_()  # as if trained: no longer the identity
    x = torch.randn(2, 256, 8, 8)
    with torch.no_grad():
        assert not torch.equal(block(x), x)
        model.init_weights()
        assert torch.equal(block(x), x)


@pytest.mark.parametrize('size', [(32, 32), (64, 64), (24, 24), (32, 48), (20, 36)])
def test_any_input_size(size):
    model = timm.create_model('resnet18_spa', attn_stages=(3, 4), attn_kwargs=dict(k=64)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 10)
        feats = model.forward_features(torch.randn(1, 3, *size))
    assert feats.shape[-2:] == ((size[0] + 7) // 8, (size[1] + 7) // 8)


def test_pretrained_cfgs_name_what_the_models_have():
    """What timm reads from a pretrained config is true of the model it builds: `first_conv` is a conv taking the
    config's input channels (timm adapts it for in_chans), `classifier` the linear layer with the config's class
    count (timm resets it for num_classes), and the default tag is CIFAR-10's."""
    for name in PARAM_COUNTS:
        for tag in PRETRAINED_TAGS:
            cfg = timm.models.get_pretrained_cfg(f'{name}.{tag}')
            model = timm.create_model(f'{name}.{tag}')
            conv, head = model.get_submodule(cfg.first_conv), model.get_submodule(cfg.classifier)
            assert isinstance(conv, torch.nn.Conv2d) and conv.in_channels == cfg.input_size[0], (name, tag)
            assert isinstance(head, torch.nn.Linear) and head.out_features == cfg.num_classes, (name, tag)
            assert model.pretrained_cfg['tag'] == tag
    assert timm.create_model('resnet18_spa').pretrained_cfg['tag'] == 'cifar10'
    cifar100 = timm.models.get_pretrained_cfg('resnet50_nl.cifar100').label_names
    assert len(set(cifar100)) == 100 and list(cifar100) == sorted(cifar100)  # CIFAR-100's fine labels are sorted


CIFAR10_JPEG = ROOT.parent / 'shared' / 'data' / 'cifar10-jpeg'


@pytest.mark.skipif(not (CIFAR10_JPEG / 'train.tar').is_file(), reason='the CIFAR-10 JPEG copy is not here')
def test_cifar10_cfg_matches_the_data():
    """The CIFAR-10 config against the real images: label i is the class the data loader gives index i, and
    mean/std are those of the training pixels (2,000 images of the JPEG copy: within 0.01 of CIFAR-10's
    published statistics, which CIFAR-100's or swapped channels are not)."""
    from train.data import load_dataset
    cfg = timm.models.get_pretrained_cfg('resnet18_spa.cifar10')
    splits = load_dataset('cifar10', str(CIFAR10_JPEG), val_size=5000, log=lambda _: None)
    assert list(cfg.label_names) == splits.class_names
    picked = np.random.default_rng(0).choice(splits.train_indices, 2000, replace=False)
    pixels = np.stack([np.asarray(splits.train.load(int(i))[0], dtype=np.float64) / 255 for i in picked])
    assert np.allclose(pixels.mean(axis=(0, 1, 2)), cfg.mean, atol=0.01), pixels.mean(axis=(0, 1, 2))
    assert np.allclose(pixels.std(axis=(0, 1, 2)), cfg.std, atol=0.01), pixels.std(axis=(0, 1, 2))


@pytest.mark.parametrize('name', ['resnet18_spa', slow_at_depth_50('resnet50_gc')])
@pytest.mark.parametrize('tag', PRETRAINED_TAGS)
def test_pool_size_is_the_feature_map_the_model_makes(name, tag):
    """The pretrained config's pool_size is the spatial size forward_features gives at its input size."""
    cfg = timm.models.get_pretrained_cfg(f'{name}.{tag}')
    model = timm.create_model(f'{name}.{tag}').eval()
    with torch.no_grad():
        features = model.forward_features(torch.zeros(1, *cfg.input_size))
    assert tuple(features.shape[-2:]) == cfg.pool_size


def test_library_claims_exactly_the_released_weights():
    """timm lists exactly RELEASED as our pretrained names, and only their configs name a Hub repository: in a
    fresh interpreter, where importing the library reads no file (what it claims is code)."""
    code = ('import json, timm, timm_spa; ours = [n for n in timm.list_pretrained() if n.split(".")[0] in '
            'timm_spa.models.MODEL_NAMES]; hubs = sorted(timm.models.get_pretrained_cfg(n).hf_hub_id or "" for n in '
            'ours); print(json.dumps([ours, [h for h in hubs if h]]))')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    listed, hubs = json.loads(done.stdout)
    assert sorted(listed) == sorted(RELEASED), done.stderr
    assert hubs == sorted(f'{HF_HUB_ORG}/{name}' for name in RELEASED)
    unreleased = [f'{m}.{t}' for m in PARAM_COUNTS for t in PRETRAINED_TAGS if f'{m}.{t}' not in RELEASED]
    assert unreleased and all(timm.models.get_pretrained_cfg(n).hf_hub_id is None for n in unreleased)


def test_unpublished_weights_fail_clearly(monkeypatch):
    monkeypatch.setattr(timm_spa.models.published, 'published_names', lambda: ['resnet50_nl.cifar100'])
    with pytest.raises(PretrainedWeightsUnavailable, match=r"'resnet18_spa\.cifar100'.*Published: resnet50_nl"):
        timm.create_model('resnet18_spa.cifar100', pretrained=True)
    with pytest.raises(PretrainedWeightsUnavailable, match=r"'resnet18_spa\.cifar10'"):
        timm.create_model('resnet18_spa', pretrained=True)


def test_pretrained_from_own_file(tmp_path):
    from safetensors.torch import save_file
    source = timm.create_model('resnet18_gc')
    save_file(source.state_dict(), tmp_path / 'model.safetensors')
    model = timm.create_model(
        'resnet18_gc', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'model.safetensors')))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_config_json_recreates_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('resnet18_spa', num_classes=7, attn_stages=(1, 3), attn_kwargs=dict(k=8)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SalientPositionsAttention):
                m.norm.weight.fill_(1.0)  # attention active, so a wrong rebuild shows in the outputs
    save_for_hf(model, tmp_path)
    loaded = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert loaded.attn_stages == (1, 3) and loaded.layer1[-1].k == 8 and loaded.num_classes == 7
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


@pytest.mark.parametrize('kwargs,match', [
    (dict(attn_stages=()), r'attn_stages must be a non-empty set.*got \(\)'),
    (dict(attn_stages=(0,)), r'from 1 to 4.*got \(0,\)'),
    (dict(attn_stages=(5,)), r'got \(5,\)'),
    (dict(attn_stages=(2, 2)), r'distinct'),
    (dict(attn_stages='3'), r"got '3'"),
    (dict(attn_layer='cbam'), r"attn_layer must be one of \['gc', 'nl', 'spa'\] or None; got 'cbam'"),
    (dict(attn_kwargs=dict(k=0)), r'k must be an int >= 1'),
    (dict(attn_kwargs=dict(k_ratio=0)), r'k_ratio must be a number > 0'),
    (dict(attn_kwargs=dict(k_ratio=-2.0)), r'k_ratio'),
])
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('resnet18_spa', **kwargs)


def test_attention_arguments_need_an_attention_layer():
    with pytest.raises(ValueError, match='attn_stages and attn_kwargs need an attention layer'):
        timm.create_model('resnet18_cifar', attn_stages=(1,))


def test_unknown_attention_kwarg_is_a_type_error():
    with pytest.raises(TypeError, match='kk'):
        timm.create_model('resnet18_spa', attn_kwargs=dict(kk=3))


def test_misspelt_model_argument_is_named_before_building():
    with pytest.raises(TypeError, match=r"resnet18_spa takes no argument 'attn_kwarg' \(did you mean attn_kwargs\?\)"):
        timm.create_model('resnet18_spa', attn_kwarg=dict(k=3))


def test_a_bug_inside_a_constructor_surfaces_as_itself(monkeypatch):
    """Only arguments nobody takes are the user's mistake: a TypeError raised while building is not reworded."""
    def broken(self, *args, **kwargs):
        raise TypeError('a bug inside the block')
    monkeypatch.setattr(SalientPositionsAttention, '__init__', broken)
    with pytest.raises(TypeError) as info:
        timm.create_model('resnet18_spa')
    assert str(info.value) == 'a bug inside the block'


def test_wrong_input_shape_gets_torchs_own_message():
    """The stem is a plain Conv2d: torch names the channels it expected and the 4D input it needs."""
    model = timm.create_model('resnet18_spa')
    with pytest.raises(RuntimeError, match=r'expected input\[2, 1, 32, 32\] to have 3 channels, but got 1'):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r'expected 4D input \(got 3D input\)'):
        model(torch.randn(3, 32, 32))
