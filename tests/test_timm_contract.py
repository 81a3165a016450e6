"""Every registered model behaves like a first-class timm model.

Cheap checks run on all ten models at 32x32 (batch 2); the fast loop (`-m "not slow"`) checks the five
depth-18 ones, CI all ten. The expensive ones run on a representative subset: `torch.compile` on
resnet18_spa only (its first call costs ~40 s on CPU), ONNX export on one model per attention type (SPA
also at depth 50); the others share the same code paths.
"""

import pytest
import timm
import torch
from conftest import ROOT, activate_attention, randomize_norm, slow_at_depth_50

from timm_spa.layers import SalientPositionsAttention
from timm_spa.models import MODEL_NAMES

ALL_MODELS = [slow_at_depth_50(name) for name in MODEL_NAMES]
ONNX_MODELS = ['resnet18_spa', 'resnet50_spa', 'resnet18_nl', 'resnet18_gc', 'resnet18_se', 'resnet18_cifar']


def _images(batch=2, chans=3, size=32):
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize('name', ALL_MODELS)
def test_forward_backward_with_overrides(name):
    model = timm.create_model(name, num_classes=5, in_chans=1)
    out = model(_images(chans=1))
    assert out.shape == (2, 5)
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


@pytest.mark.parametrize('name', ALL_MODELS)
def test_features_and_intermediates(name):
    model = activate_attention(timm.create_model(name)).eval()
    x = _images()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert tuple(feats.shape[-2:]) == model.pretrained_cfg['pool_size']
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, feats)
        assert [t.shape[1] for t in inter] == [info['num_chs'] for info in model.feature_info]
        assert [32 // t.shape[-1] for t in inter] == [info['reduction'] for info in model.feature_info]
        only = model.forward_intermediates(x, indices=[2, 4], intermediates_only=True)
        torch.testing.assert_close(only[1], feats)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    expected_chs = [64, 64, 128, 256, 512] if '18' in name else [64, 256, 512, 1024, 2048]
    assert model.feature_info.channels() == expected_chs
    assert model.feature_info.reduction() == [1, 1, 2, 4, 8]  # stride-1 CIFAR stem
    with torch.no_grad():
        outs = model(_images())
    assert [o.shape[1] for o in outs] == expected_chs
    assert [32 // o.shape[-1] for o in outs] == [1, 1, 2, 4, 8]
    subset = timm.create_model(name, features_only=True, out_indices=(3,))
    assert subset.feature_info.channels() == [expected_chs[3]]


@pytest.mark.parametrize('name', ALL_MODELS)
def test_reset_classifier_and_unpooled(name):
    model = timm.create_model(name).eval()
    x = _images()
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features)
    model.reset_classifier(0, global_pool='')
    with torch.no_grad():
        assert model(x).shape == (2, model.num_features, 4, 4)
    model.reset_classifier(3, global_pool='avg')
    with torch.no_grad():
        assert model(x).shape == (2, 3)
    unpooled = timm.create_model(name, num_classes=0, global_pool='').eval()
    with torch.no_grad():
        assert unpooled(x).shape == (2, unpooled.num_features, 4, 4)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_grad_checkpointing_gives_same_output(name):
    model = activate_attention(timm.create_model(name)).eval()
    x = _images()
    expected = model(x)
    model.set_grad_checkpointing(True)
    x_ckpt = x.clone().requires_grad_()
    out = model(x_ckpt)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert x_ckpt.grad is not None and torch.isfinite(x_ckpt.grad).all()


@pytest.mark.parametrize('name', ALL_MODELS)
def test_torchscript(name):
    model = activate_attention(timm.create_model(name)).eval()
    scripted = torch.jit.script(model)
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
        torch.testing.assert_close(scripted(_images(size=24)), model(_images(size=24)))


@pytest.mark.slow
def test_torch_compile_cpu():
    model = activate_attention(timm.create_model('resnet18_spa', attn_stages=(2, 3))).eval()
    compiled = torch.compile(model)
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('name', ONNX_MODELS)
def test_onnx_export_matches_pytorch(name, tmp_path):
    onnxruntime = pytest.importorskip('onnxruntime')
    model = activate_attention(timm.create_model(name)).eval()
    x = _images()
    path = tmp_path / f'{name}.onnx'
    torch.onnx.export(
        model, (x,), str(path), input_names=['images'], output_names=['logits'],
        dynamic_shapes=({0: torch.export.Dim('batch')},), verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for batch in (2, 3):
        images = _images(batch=batch)
        got = session.run(None, {'images': images.numpy()})[0]
        with torch.no_grad():
            expected = model(images).numpy()
        assert abs(got - expected).max() <= 1e-4


@pytest.mark.slow
def test_torch_compile_training_step_matches_eager():
    # training under torch.compile traces the SPA block's hand-written K K^T backward
    torch.manual_seed(0)
    block = activate_attention(torch.nn.Sequential(SalientPositionsAttention(16))).train()
    x = torch.randn(2, 16, 3, 4)  # n <= C': the materialised C' x C' softmax
    compiled = torch.compile(block, fullgraph=True)  # no graph break around the autograd Function
    grads = []
    for module in (block, compiled):
        block.zero_grad()
        module(x).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in block.parameters()])
    for eager, traced in zip(*grads, strict=True):
        torch.testing.assert_close(traced, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', [slow_at_depth_50(name) for name in
                                  ('resnet18_spa', 'resnet18_nl', 'resnet18_gc', 'resnet18_se', 'resnet50_spa')])
def test_fx_feature_extraction(name):
    """torchvision's create_feature_extractor (plain FX, no leaf list) and timm's FX feature path trace every
    attention type; the traced graph computes what the model computes and still checks its input."""
    from torchvision.models.feature_extraction import create_feature_extractor
    model = timm.create_model(name, attn_stages=(2, 3) if name.endswith(('_spa', '_nl', '_gc')) else None).eval()
    x = torch.randn(2, 3, 32, 32)
    extractor = create_feature_extractor(model, return_nodes={'layer2': 'layer2', 'layer3': 'layer3', 'fc': 'logits'})
    with torch.no_grad():
        out = extractor(x)
        torch.testing.assert_close(out['logits'], model(x))
        assert out['layer3'].shape == (2, model.feature_info[3]['num_chs'], 8, 8)
    with pytest.raises(RuntimeError, match=r'expected input\[2, 4, 32, 32\] to have 3 channels'):  # torch's own check
        extractor(torch.randn(2, 4, 32, 32))
    torch.manual_seed(0)
    fx_features = timm.create_model(name, features_only=True, feature_cls='fx').eval()
    torch.manual_seed(0)
    hook_features = timm.create_model(name, features_only=True).eval()  # the same initial weights
    with torch.no_grad():
        for a, b in zip(fx_features(x), hook_features(x), strict=True):
            torch.testing.assert_close(a, b)


def test_spa_block_traced_alone_checks_its_input():
    block = SalientPositionsAttention(16).eval()
    randomize_norm(block.norm)  # an active block: the identity would hide a wrong branch
    traced = torch.fx.symbolic_trace(block)
    for size in (5, 3, 1):  # W applied to A (n > C), then to A V (materialised, fused): decided when it runs
        x = torch.randn(2, 16, size, size)
        torch.testing.assert_close(traced(x), block(x))
    with pytest.raises(ValueError, match='built for in_channels=16 got an input with 8 channels'):
        traced(torch.randn(2, 8, 5, 5))


def test_torch_hub_entry_points_are_the_registered_models():
    """hubconf.py at the repository root: torch.hub.load(<repo>, name, source='local') for every model we register."""
    import importlib.util
    spec = importlib.util.spec_from_file_location('hubconf', ROOT / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = sorted(n for n in dir(hubconf) if not n.startswith('_') and callable(getattr(hubconf, n))
                     and n not in ('model_entrypoint', 'timm'))
    assert entries == sorted(MODEL_NAMES)
    model = torch.hub.load(str(ROOT), 'resnet18_spa', source='local', num_classes=7, attn_stages=(2,))
    reference = timm.create_model('resnet18_spa', num_classes=7, attn_stages=(2,))
    assert type(model) is type(reference) and model.num_classes == 7 and model.attn_stages == (2,)
    assert model.state_dict().keys() == reference.state_dict().keys()
