"""Export a real (tiny) training run, publish it into a local mirror, and load it back over HTTP.

The Hub is not reachable from the test machines, so the HTTP path runs against olah, a real
Hub-compatible server, serving the mirror on loopback. Loads run in fresh interpreters of a venv
where timm-spa is pip-installed (regular and editable), without `import timm_spa`.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from conftest import write_cifar
from safetensors.torch import load_file

from benchmarks.startup_time import measure
from hub.__main__ import main as hub_main
from hub.export import ExportError, export_run
from hub.mirror import MirrorServer, free_port
from hub.push import publish
from train import train as train_script

ROOT = Path(__file__).resolve().parent.parent
REPO_ID = 'timm-spa/resnet18_spa.cifar10'
PROBE = """
import json, sys, torch, timm
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
x = torch.load(sys.argv[1], weights_only=True)
out = {}
def run(name, model):
    with torch.no_grad():
        out[name] = model.eval()(x).tolist()
run('tag', timm.create_model('resnet18_spa.cifar10', pretrained=True))
run('hf_hub', timm.create_model('hf-hub:%s', pretrained=True))
model = timm.create_model('resnet18_spa', num_classes=10)
model.load_state_dict(load_file(hf_hub_download('%s', 'model.safetensors')))
run('download', model)
print('MODULES', 'timm_spa' in sys.modules)
json.dump(out, open(sys.argv[2], 'w'))
""" % (REPO_ID, REPO_ID)


def _venv_with_install(path: Path, editable: bool) -> Path:
    """A venv that sees this interpreter's packages and has timm-spa pip-installed for real."""
    subprocess.run([sys.executable, '-m', 'venv', str(path)], check=True)
    site = next(path.glob('lib/python*/site-packages'))
    own = next(p for p in sys.path if p.endswith('site-packages') and Path(p, 'timm').is_dir())
    (site / '_parent_env.pth').write_text(own + '\n')
    args = ['-e', str(ROOT)] if editable else [str(ROOT)]
    subprocess.run([str(path / 'bin' / 'python'), '-m', 'pip', 'install', '-q', '--no-deps', *args], check=True,
                   capture_output=True, timeout=600)
    return path / 'bin' / 'python'


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    return _venv_with_install(tmp_path_factory.mktemp('venv'), editable=False)


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('hubrun')
    write_cifar(root / 'data', 'cifar10', n_train=40, n_test=20)
    out = root / 'run'
    train_script.main(['--dataset', 'cifar10', '--data-dir', str(root / 'data'), '--val-size', '8', '-b', '8',
                       '--epochs', '1', '--workers', '0', '--log-interval', '0', '--no-progress',
                       '--model', 'resnet18_spa', '--output', str(out)])
    return out


def _trained_outputs(run: Path, x: torch.Tensor) -> torch.Tensor:
    model = timm.create_model('resnet18_spa', num_classes=10)
    model.load_state_dict(load_file(run / 'model_best.safetensors'))
    with torch.no_grad():
        return model.eval()(x)


def _probe(python: Path, env: dict, tmp: Path, x: torch.Tensor):
    torch.save(x, tmp / 'x.pt')
    script = tmp / 'probe.py'
    script.write_text(PROBE)
    done = subprocess.run([str(python), str(script), str(tmp / 'x.pt'), str(tmp / 'out.json')], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tmp)
    return done, (json.loads((tmp / 'out.json').read_text()) if done.returncode == 0 else None)


def test_export_push_mirror_and_load_over_http(trained_run, installed, tmp_path):
    folder = export_run(str(trained_run), str(tmp_path / 'repo'))
    assert sorted(p.name for p in folder.iterdir()) == \
        ['README.md', 'config.json', 'curves.png', 'model.safetensors', 'results.json']
    record = tmp_path / 'published.json'
    mirror = tmp_path / 'mirror'
    env = dict(os.environ, TIMM_SPA_PUBLISHED_RECORD=str(record), HF_HOME=str(tmp_path / 'hf'),
               HF_HUB_DISABLE_TELEMETRY='1')
    env.pop('HF_HUB_OFFLINE', None)
    summary = publish(str(folder), REPO_ID, mirror=str(mirror), record=record)
    assert json.loads(record.read_text()) == ['resnet18_spa.cifar10'] and summary['records'] == 'resnet18_spa.cifar10'
    branch = subprocess.run(['git', 'branch', '--show-current'], cwd=mirror / 'models' / REPO_ID,
                            capture_output=True, text=True, check=True).stdout.strip()
    assert branch == 'main'

    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = _trained_outputs(trained_run, x)
    with MirrorServer(mirror, tmp_path / 'olah') as server:
        done, outputs = _probe(installed, dict(env, HF_ENDPOINT=server.endpoint), tmp_path, x)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'MODULES True' in done.stdout  # registered by the hook, the probe never imports timm_spa
    for name in ('tag', 'hf_hub', 'download'):
        assert torch.equal(torch.tensor(outputs[name]), expected), name

    # the server is gone: the Hugging Face cache serves the same weights offline
    done, outputs = _probe(installed, dict(env, HF_ENDPOINT=server.endpoint, HF_HUB_OFFLINE='1'), tmp_path, x)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ('tag', 'hf_hub', 'download'):
        assert torch.equal(torch.tensor(outputs[name]), expected), name

    # a corrupted download names the fix
    blob = next(p for p in (tmp_path / 'hf').rglob('blobs/*') if p.stat().st_size > 1_000_000)
    blob.write_bytes(blob.read_bytes()[:1000])
    code = ("import timm\ntry:\n    timm.create_model('resnet18_spa.cifar10', pretrained=True)\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    done = subprocess.run([str(installed), '-c', code], env=dict(env, HF_HUB_OFFLINE='1'), capture_output=True,
                          text=True, timeout=300)
    assert 'WeightsDownloadError' in done.stdout and 'corrupt' in done.stdout and 'cache' in done.stdout


def test_unreachable_hub_names_the_endpoint_and_offline_options(tmp_path):
    record = tmp_path / 'published.json'
    record.write_text('["resnet18_spa.cifar10"]')
    env = dict(os.environ, TIMM_SPA_PUBLISHED_RECORD=str(record), HF_HOME=str(tmp_path / 'hf'),
               HF_ENDPOINT=f'http://127.0.0.1:{free_port()}')
    env.pop('HF_HUB_OFFLINE', None)
    code = ("import timm, timm_spa\ntry:\n    timm.create_model('resnet18_spa.cifar10', pretrained=True)\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert 'WeightsDownloadError' in done.stdout, done.stdout + done.stderr
    assert 'HF_ENDPOINT' in done.stdout and 'HF_HUB_OFFLINE=1' in done.stdout and '127.0.0.1' in done.stdout


def test_model_card_and_config(trained_run, tmp_path):
    folder = export_run(str(trained_run), str(tmp_path / 'repo'))
    results = json.loads((trained_run / 'results.json').read_text())
    card = (folder / 'README.md').read_text()
    meta = yaml.safe_load(card.split('---')[1])
    assert meta['library_name'] == 'timm' and meta['datasets'] == ['cifar10'] and 'timm-spa' in meta['tags']
    metrics = meta['model-index'][0]['results'][0]['metrics']
    assert [m['value'] for m in metrics] == [round(results['test_top1'], 2), round(results['test_top5'], 2)]
    assert f"{results['test_top1']:.2f}" in card and '95.79' in card  # ours beside the paper's CIFAR-10 cell
    assert 'not the official binary batches' not in card and results['dataset']['label'] in card
    assert 'held out of train' in card and 'curves.png' in card and '@misc{fang_spanet' in card
    assert f"seed {results['seed']}" in card and results['hardware'] in card
    for key in ('lr', 'weight_decay', 'momentum', 'batch_size', 'sched', 'epochs'):
        assert f'`{key}`' in card
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'resnet18_spa' and config['num_classes'] == 10
    assert config['pretrained_cfg']['mean'] == [0.4914, 0.4822, 0.4465]
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), _trained_outputs(trained_run, x))


def test_export_keeps_attention_placement(folder_data, tmp_path):
    run = tmp_path / 'run'
    train_script.main(['--dataset', 'folder', '--data-dir', str(folder_data), '--img-size', '16', '-b', '8',
                       '--val-size', '8', '--epochs', '1', '--workers', '0', '--log-interval', '0', '--no-progress',
                       '--model', 'resnet18_nl', '--output', str(run), '--model-kwargs', 'attn_stages=(1, 2)'])
    folder = export_run(str(run), str(tmp_path / 'repo'))
    assert json.loads((folder / 'config.json').read_text())['model_args']['attn_stages'] == [1, 2]
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert loaded.attn_stages == (1, 2) and loaded.num_classes == 4


def test_export_refuses_incomplete_or_mismatched_runs(trained_run, tmp_path):
    broken = tmp_path / 'broken'
    broken.mkdir()
    with pytest.raises(ExportError, match='has no results.json'):
        export_run(str(broken), str(tmp_path / 'out'))
    results = json.loads((trained_run / 'results.json').read_text())
    (broken / 'results.json').write_text(json.dumps({k: v for k, v in results.items() if k != 'test_top1'}))
    with pytest.raises(ExportError, match='incomplete \\(missing test_top1\\)'):
        export_run(str(broken), str(tmp_path / 'out'))
    other = dict(results, model='resnet18_nl', model_args=dict(results['model_args'], model='resnet18_nl'))
    (broken / 'results.json').write_text(json.dumps(other))
    (broken / 'model_best.safetensors').write_bytes((trained_run / 'model_best.safetensors').read_bytes())
    with pytest.raises(ExportError, match='weights do not match the recorded architecture.*missing'):
        export_run(str(broken), str(tmp_path / 'out'))


def test_push_dry_run_bad_repo_id_and_missing_token(trained_run, tmp_path, capsys, monkeypatch):
    folder = export_run(str(trained_run), str(tmp_path / 'repo'))
    summary = publish(str(folder), REPO_ID, dry_run=True)
    printed = capsys.readouterr().out
    assert 'would upload to https://huggingface.co/timm-spa/resnet18_spa.cifar10' in printed
    assert 'model.safetensors' in printed and 'would record resnet18_spa.cifar10' in printed
    assert 'model.safetensors' in summary['files']
    for bad in ('no-slash', 'a/b/c', 'bad name/x'):
        with pytest.raises(ExportError, match='invalid --repo-id'):
            publish(str(folder), bad, dry_run=True)
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'empty-hf'))
    monkeypatch.delenv('HF_TOKEN', raising=False)
    with pytest.raises(SystemExit, match='no Hugging Face token: run `hf auth login` or set HF_TOKEN'):
        hub_main(['push', str(folder), '--repo-id', REPO_ID])


def test_config_this_version_cannot_build(tmp_path):
    model = timm.create_model('resnet18_spa')
    timm.models.save_for_hf(model, tmp_path, model_args=dict(attn_future_option=3))
    with pytest.raises(TypeError, match=r"attn_future_option.*another timm-spa version.*upgrade timm-spa"):
        timm.create_model(f'local-dir:{tmp_path}', pretrained=True)


@pytest.mark.parametrize('editable', [False, True])
def test_registered_without_import_in_fresh_interpreters(tmp_path, editable, installed):
    python = installed if not editable else _venv_with_install(tmp_path / 'venv', editable=True)
    startup = subprocess.run([str(python), '-c', 'import sys; print(sorted(m for m in ("torch", "timm", '
                              '"timm_spa", "_timm_spa_autoregister") if m in sys.modules))'],
                             capture_output=True, text=True, check=True)
    assert startup.stdout.strip() == "['_timm_spa_autoregister']"  # only the tiny hook runs at start-up
    cost = measure(str(python), runs=2)  # the start-up measurement script, on this install
    assert cost['hook_installed'] and cost['heavy_modules_at_startup'] == []
    use = subprocess.run([str(python), '-c', 'import timm; m = timm.create_model("resnet18_spa"); '
                          'print(type(m).__name__, timm.list_models("*_spa"))'], capture_output=True, text=True)
    assert use.stdout.strip() == "CifarResNet ['resnet18_spa', 'resnet50_spa']", use.stderr
    off = subprocess.run([str(python), '-c', 'import timm; timm.create_model("resnet18_spa")'],
                         env=dict(os.environ, TIMM_SPA_NO_AUTOREGISTER='1'), capture_output=True, text=True)
    assert 'Unknown model (resnet18_spa)' in off.stderr


def test_main_job_last_step_reproduces_the_card(folder_data, tmp_path, capsys):
    from hub import demo
    run = tmp_path / 'run'
    train_script.main(['--dataset', 'folder', '--data-dir', str(folder_data), '--img-size', '16', '-b', '8',
                       '--val-size', '8', '--epochs', '1', '--workers', '0', '--log-interval', '0', '--no-progress',
                       '--model', 'resnet18_gc', '--output', str(run), '--amp'])
    report = demo.main([str(run)])
    results = json.loads((run / 'results.json').read_text())
    assert (report['top1'], report['top5']) == (results['test_top1'], results['test_top5'])
    assert report['model'] == 'hf-hub:timm-spa/resnet18_gc.folder' and report['pretrained']
    assert 'equal.' in capsys.readouterr().out
    assert (run / 'hub-mirror' / 'models' / 'timm-spa' / 'resnet18_gc.folder' / 'model.safetensors').is_file()
