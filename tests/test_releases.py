"""The released weights in releases/: served as a Hub, loaded with pretrained=True, and their numbers measured again.

Every release folder is checked (its files belong together, its config builds), served with olah,
loaded through `timm.create_model(..., pretrained=True)` (and torch.hub) in a fresh interpreter, and
compared with the folder's own file; then each model is evaluated on the full CIFAR-10 JPEG test
split (10,000 images, float32), which must reproduce its card's top-1 and top-5 within 0.02 points.
Where ../shared/data/cifar10-jpeg is absent (a user's own clone) that part is skipped.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from hub.mirror import MirrorServer, build_mirror
from hub.releases import release_table, released_repositories
from hub.repository import read_history
from timm_spa.models import HF_HUB_ORG, MODEL_NAMES, PRETRAINED_TAGS, PretrainedWeightsUnavailable, published_names
from timm_spa.models.published import PUBLISHED_RECORD, RECORD_ENV
from train.data import TransformedSamples, build_loader, build_transforms, load_dataset
from train.distributed import DistEnv
from train.engine import evaluate

ROOT = Path(__file__).resolve().parent.parent
RELEASES = ROOT / 'releases'
CIFAR10_JPEG = ROOT.parent / 'shared' / 'data' / 'cifar10-jpeg'
TOLERANCE = 0.02  # points: two borderline images on 10,000 may flip on another CPU

LOAD = """
import json, sys, torch, timm
names = json.loads(sys.argv[1])
x = torch.load(sys.argv[2], weights_only=True)
out = {}
for name in names:
    with torch.no_grad():
        out[name] = timm.create_model(name, pretrained=True).eval()(x).tolist()
hub = torch.hub.load(sys.argv[4], names[0].split('.')[0], source='local', pretrained=True,
                     pretrained_cfg=names[0].split('.')[1]).eval()
with torch.no_grad():
    out['torch.hub'] = hub(x).tolist()
json.dump(out, open(sys.argv[3], 'w'))
"""


@pytest.fixture(scope='module')
def releases():
    return released_repositories(RELEASES) if RELEASES.is_dir() else []


@pytest.fixture(scope='module')
def released(releases):
    if not releases:
        pytest.skip('releases/ holds no release yet')
    return releases


def test_record_lists_exactly_the_release_folders(releases):
    """One record of released tags (in the package), equal to the folders; timm lists exactly those."""
    released = sorted(r.folder.name for r in releases)
    assert all(r.folder.parent.name == HF_HUB_ORG for r in releases)
    assert sorted(published_names(PUBLISHED_RECORD)) == released
    assert sorted(n for n in timm.list_pretrained() if n.split('.')[0] in MODEL_NAMES) == released
    # timm's own vit_pe_spatial_* match '*_spa*' too: ours are the resnet*_spa names
    assert timm.list_pretrained('resnet*_spa*') == [n for n in released if '_spa.' in n]
    unreleased = next(f'{m}.{t}' for m in MODEL_NAMES for t in PRETRAINED_TAGS if f'{m}.{t}' not in released)
    with pytest.raises(PretrainedWeightsUnavailable, match=unreleased.replace('.', '\\.')):
        timm.create_model(unreleased, pretrained=True)


def test_release_folders_hold_exactly_what_push_uploads(released):
    for repo in released:
        assert sorted(p.name for p in repo.folder.iterdir()) == \
            ['README.md', 'config.json', 'curves.png', 'history.json', 'model.safetensors', 'results.json'], repo.folder
        history = read_history(repo.folder)  # a replaced release is on the card too
        assert ('## Release history' in (repo.folder / 'README.md').read_text()) == bool(history)
        assert all(h['run_id'] != repo.results.run_id for h in history)
        assert repo.results.dataset.label == 'CIFAR-10 (JPEG q75 copy)' and repo.results.tag == 'cifar10'
        weights = load_file(repo.folder / 'model.safetensors')
        assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())
        card = (repo.folder / 'README.md').read_text()
        assert f'{repo.results.test_top1:.2f}' in card and 'single training run' in card
    # one recipe, budget and seed for all: the cards compare like with like
    recipes = {json.dumps({k: v for k, v in r.results.args.items() if k != 'model'}, sort_keys=True)
               for r in released}
    assert len(recipes) == 1


def test_readme_table_is_generated_from_the_releases(releases):
    assert release_table(releases) in (ROOT / 'README.md').read_text()


@pytest.mark.slow
def test_served_release_loads_with_pretrained_true(released, tmp_path):
    names = [r.folder.name for r in released]
    mirror = build_mirror(released, tmp_path / 'mirror')
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / 'x.pt')
    (tmp_path / 'load.py').write_text(LOAD)
    env = dict(os.environ, HF_HOME=str(tmp_path / 'hf'), HF_HUB_DISABLE_TELEMETRY='1')
    env.pop('HF_HUB_OFFLINE', None)
    env.pop(RECORD_ENV, None)  # the package's own record
    with MirrorServer(mirror, tmp_path / 'olah') as server:
        done = subprocess.run([sys.executable, str(tmp_path / 'load.py'), json.dumps(names), str(tmp_path / 'x.pt'),
                               str(tmp_path / 'out.json'), str(ROOT)], env=dict(env, HF_ENDPOINT=server.endpoint),
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    outputs = json.loads((tmp_path / 'out.json').read_text())
    for repo in released:
        model = timm.create_model(repo.folder.name, num_classes=10)
        model.load_state_dict(load_file(repo.folder / 'model.safetensors'))
        with torch.no_grad():
            expected = model.eval()(x)
        assert torch.equal(torch.tensor(outputs[repo.folder.name]), expected), repo.folder.name
        if repo.folder.name == names[0]:
            assert torch.equal(torch.tensor(outputs['torch.hub']), expected)


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10_JPEG.is_dir(), reason=f'{CIFAR10_JPEG} is not here (a clone without the shared data)')
def test_release_numbers_are_measured_again(released):
    splits = load_dataset('cifar10', str(CIFAR10_JPEG))
    samples, indices = splits.split('test')
    batch_size = 250
    loader = build_loader(TransformedSamples(samples, indices, build_transforms(splits, 32, False)), batch_size, False,
                          workers=2, seed=0)
    data = list(loader)  # decoded once, evaluated by every model
    env = DistEnv()
    for repo in released:
        card = repo.results
        channels_last = bool(card.args.get('channels_last'))  # the memory format the run measured its test split in
        model = timm.create_model(repo.folder.name, num_classes=10)
        model.load_state_dict(load_file(repo.folder / 'model.safetensors'))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        metrics = evaluate(model, data, env, None, channels_last)  # float32, as the run's test evaluation
        assert metrics['count'] == card.dataset.test_images == 10000
        assert abs(metrics['top1'] - card.test_top1) <= TOLERANCE, (repo.folder.name, metrics['top1'], card.test_top1)
        assert abs(metrics['top5'] - card.test_top5) <= TOLERANCE, (repo.folder.name, metrics['top5'], card.test_top5)
