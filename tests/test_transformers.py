"""transformers users: every release through `pipeline("image-classification")`, `AutoModelForImageClassification`
and `AutoImageProcessor` (transformers' TimmWrapper), served as a Hub by `hub serve`, in fresh interpreters, with and
without `import timm_spa`; and the cards' transformers snippets run as pasted."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import ROOT

from hub.export import export_run
from hub.releases import released_repositories
from hub.repository import read_repository
from hub.serve import HubServer, by_layout

pytest.importorskip('transformers')

RELEASES = ROOT / 'releases'
DEMO_IMAGES = sorted((ROOT / 'docs' / 'demo-images').glob('*.png'))  # real CIFAR-10 test images, one per class

USE = """
import json, sys
if sys.argv[1] == 'import':
    import timm_spa
imported = 'timm_spa' in sys.modules
import timm, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
names, images, out = json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
pictures = [Image.open(path).convert('RGB') for path in images]
report = dict(imported_by_script=imported)
for name in names:
    repo = 'timm-spa/' + name
    classifier = pipeline('image-classification', model=repo)
    labelled = classifier(images, top_k=classifier.model.config.num_labels)
    processor = AutoImageProcessor.from_pretrained(repo)
    model = AutoModelForImageClassification.from_pretrained(repo).eval()
    reference = timm.create_model(name, pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(reference), is_training=False)
    pixels = processor(pictures, return_tensors='pt')['pixel_values']
    expected = torch.stack([transform(picture) for picture in pictures])
    with torch.no_grad():
        logits, reference_logits = model(pixel_values=expected).logits, reference(expected)
    report[name] = dict(
        labelled=labelled, data_config={k: list(v) if isinstance(v, tuple) else v
                                        for k, v in processor.data_config.items()},
        same_pixels=torch.equal(pixels, expected), max_logit_diff=(logits - reference_logits).abs().max().item(),
        timm_top1=[reference.pretrained_cfg['label_names'][i] for i in reference_logits.argmax(-1).tolist()],
        id2label=[model.config.id2label[i] for i in range(len(model.config.id2label))])
json.dump(report, open(out, 'w'))
"""


@pytest.fixture(scope='module')
def served_releases(tmp_path_factory):
    """releases/ served as `python -m hub serve releases/` serves it, and a fresh HF cache per process."""
    repos = released_repositories(RELEASES)
    with HubServer(by_layout(repos)) as server:
        yield server, repos


def _env(tmp_path: Path, endpoint: str) -> dict:
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / 'hf'), HF_HUB_DISABLE_TELEMETRY='1')
    for key in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'TIMM_SPA_NO_AUTOREGISTER'):
        env.pop(key, None)
    return env


@pytest.mark.slow
@pytest.mark.parametrize('how', ['import', 'no-import'])
def test_every_release_through_transformers(served_releases, tmp_path, how):
    """Labels by name with scores summing to 1, the very logits and pixels of timm's own model and transform, and
    the card's input size, mean and std, for every release; `no-import` relies on the start-up hook alone, after
    transformers looked timm up with `find_spec` before importing it."""
    server, repos = served_releases
    names = [r.folder.name for r in repos]
    (tmp_path / 'use.py').write_text(USE)
    done = subprocess.run([sys.executable, str(tmp_path / 'use.py'), how, json.dumps(names),
                           json.dumps([str(p) for p in DEMO_IMAGES]), str(tmp_path / 'out.json')],
                          env=_env(tmp_path, server.endpoint), capture_output=True, text=True, timeout=900,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    report = json.loads((tmp_path / 'out.json').read_text())
    assert report['imported_by_script'] == (how == 'import')
    for repo in repos:
        got, cfg = report[repo.folder.name], repo.config['pretrained_cfg']
        labels = repo.config['label_names']
        assert got['id2label'] == labels
        size = repo.results.dataset.image_size
        assert got['data_config']['input_size'] == cfg['input_size'] == [3, size, size]
        assert (got['data_config']['mean'], got['data_config']['std']) == (cfg['mean'], cfg['std'])
        assert got['same_pixels'] and got['max_logit_diff'] <= 1e-5, repo.folder.name
        for answer, timm_top1 in zip(got['labelled'], got['timm_top1'], strict=True):
            assert sorted(a['label'] for a in answer) == sorted(labels)  # every class, by name
            assert sum(a['score'] for a in answer) == pytest.approx(1.0, abs=1e-5)
            assert answer[0]['label'] == timm_top1
        if repo.results.tag == 'cifar10':  # real test images, labelled right as often as the card's top-1 says
            truth = [p.name.split('_')[0] for p in DEMO_IMAGES]
            right = sum(answer[0]['label'] == t for answer, t in zip(got['labelled'], truth, strict=True))
            assert right >= 8, (repo.folder.name, right)


def _snippets(markdown: str, heading: str) -> list:
    """The python code blocks of the section `heading` of a Markdown text."""
    section = markdown.split(heading, 1)[1].split('\n#', 1)[0]
    return re.findall(r'```python\n(.*?)```', section, re.S)


@pytest.mark.slow
def test_card_and_readme_snippets_run_as_pasted(served_releases, tmp_path):
    server, repos = served_releases
    repo = next(r for r in repos if r.folder.name == 'resnet18_spa.cifar10')
    shutil.copy(next(p for p in DEMO_IMAGES if p.name.startswith('ship')), tmp_path / 'image.png')
    snippets = _snippets((repo.folder / 'README.md').read_text(), '### With transformers')
    readme = (ROOT / 'README.md').read_text()
    snippets += _snippets(readme, '### With timm') + _snippets(readme, '### With transformers')
    assert len(snippets) == 5
    for code in snippets:
        done = subprocess.run([sys.executable, '-c', code], env=_env(tmp_path, server.endpoint), capture_output=True,
                              text=True, timeout=600, cwd=tmp_path)
        assert done.returncode == 0, code + done.stderr[-4000:]
        assert re.fullmatch(r"\[\{'label': 'ship', .*|ship", done.stdout.strip(), re.S), code + done.stdout


@pytest.mark.slow
def test_transformers_rebuilds_non_default_architecture_arguments(folder_data, tmp_path):
    """config.json's model_args hold exactly the run's model arguments (never num_classes, which transformers
    passes itself), and TimmWrapper, local-dir: and the run's weights give the same logits."""
    from conftest import train_tiny
    from transformers import AutoModelForImageClassification
    run = train_tiny(folder_data, tmp_path / 'run', '--epochs', '1', '--model-kwargs', 'attn_stages=(1, 2)',
                     "attn_kwargs={'k': 8}")
    folder = export_run(str(run), str(tmp_path / 'timm-spa' / 'resnet18_spa.folder'))  # served as ORG/NAME
    config = json.loads((folder / 'config.json').read_text())
    assert config['model_args'] == {'attn_stages': [1, 2], 'attn_kwargs': {'k': 8}}
    wrapped = AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    local = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert local.attn_stages == (1, 2) and local.layer1[-1].k == 8 and local.num_classes == 4
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / 'x.pt')
    with torch.no_grad():
        expected = local(x)
        assert torch.allclose(wrapped(pixel_values=x).logits, expected, atol=1e-6)
    repo_id = json.loads((folder / 'config.json').read_text())['pretrained_cfg']['hf_hub_id']
    load = ('import sys, torch, timm; m = timm.create_model(sys.argv[1], pretrained=True).eval(); '
            'print(m.attn_stages, m.layer1[-1].k); torch.save(m(torch.load(sys.argv[2])).detach(), sys.argv[3])')
    with HubServer({repo_id: read_repository(folder)}) as server:
        done = subprocess.run([sys.executable, '-c', load, f'hf-hub:{repo_id}', str(tmp_path / 'x.pt'),
                               str(tmp_path / 'y.pt')], env=_env(tmp_path, server.endpoint), capture_output=True,
                              text=True, timeout=300)
    assert done.stdout.strip() == '(1, 2) 8', done.stderr
    assert torch.allclose(torch.load(tmp_path / 'y.pt'), expected, atol=1e-6)
