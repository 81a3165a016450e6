"""Export a real (tiny) training run, publish it into a releases folder, and load it back over HTTP.

The Hub is not reachable from the test machines, so the HTTP path runs against `python -m hub serve`'s server on
loopback, through huggingface_hub, timm and transformers themselves. Loads run in fresh interpreters of a venv
where timm-spa is pip-installed (regular and editable), without `import timm_spa`.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Tuple

import numpy as np
import pytest
import timm
import torch
from conftest import ROOT, train_tiny, write_cifar
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from benchmarks.startup_time import measure
from hub import push as push_module
from hub.__main__ import main as hub_main
from hub.card import model_card, model_profile
from hub.export import export_run, portable_path
from hub.push import publish
from hub.releases import released_repositories
from hub.repository import RepositoryError
from hub.serve import HubServer, by_layout
from train import train as train_script
from train.cli import UsageError
from train.run_dir import RunDir, RunError

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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


@pytest.mark.slow
def test_export_push_releases_serve_and_load_over_http(trained_run, installed, tmp_path):
    """The release path: export, push into a releases folder, serve it as a Hub,
    load with pretrained=True, hf-hub: and hf_hub_download, then offline from the cache."""
    folder = export_run(str(trained_run), str(tmp_path / 'repo'))
    assert sorted(p.name for p in folder.iterdir()) == \
        ['README.md', 'config.json', 'curves.png', 'model.safetensors', 'results.json']
    releases = tmp_path / 'releases'
    env = dict(os.environ, HF_HOME=str(tmp_path / 'hf'), HF_HUB_DISABLE_TELEMETRY='1')
    env.pop('HF_HUB_OFFLINE', None)
    summary = publish(str(folder), REPO_ID, releases=str(releases))
    assert summary['new_name'] is None  # a scratch folder: the library's RELEASED is not this push's business
    assert sorted(p.name for p in (releases / REPO_ID).iterdir()) == \
        sorted([p.name for p in folder.iterdir()] + ['history.json'])  # a first release: nothing replaced yet

    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = _trained_outputs(trained_run, x)
    with HubServer(by_layout(released_repositories(releases))) as server:
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


@pytest.mark.slow
def test_unreachable_hub_names_the_endpoint_and_offline_options(tmp_path):
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(('127.0.0.1', 0))
        port = unused.getsockname()[1]
    env = dict(os.environ, HF_HOME=str(tmp_path / 'hf'), HF_ENDPOINT=f'http://127.0.0.1:{port}')
    env.pop('HF_HUB_OFFLINE', None)
    code = ("import timm, timm_spa\ntry:\n    timm.create_model('resnet18_spa.cifar10', pretrained=True)\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    done = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
    assert 'WeightsDownloadError' in done.stdout, done.stdout + done.stderr
    assert 'HF_ENDPOINT' in done.stdout and 'HF_HUB_OFFLINE=1' in done.stdout and '127.0.0.1' in done.stdout


def test_model_card_and_config(trained_run, tmp_path):
    folder = export_run(str(trained_run), str(tmp_path / 'repo'))
    results = json.loads((trained_run / 'results.json').read_text())
    text = (folder / 'README.md').read_text()
    card = ModelCard(text)  # the front matter round-trips through huggingface_hub
    assert card.data.library_name == 'timm' and card.data.datasets == ['cifar10'] and 'timm-spa' in card.data.tags
    evals = {e.metric_name: e for e in card.data.eval_results}
    assert evals['Top-1 accuracy'].metric_value == round(results['test_top1'], 2)
    assert evals['Top-5 accuracy'].metric_value == round(results['test_top5'], 2)
    assert evals['Top-1 accuracy'].dataset_split == 'test' and evals['Top-1 accuracy'].dataset_type == 'cifar10'
    assert f"{results['test_top1']:.2f}" in text and '95.79' in text  # ours beside the paper's CIFAR-10 cell
    assert results['dataset']['label'] in text and 'A partial copy' in text
    assert 'held out of train' in text and 'curves.png' in text and 'eprint        = {2106.04996}' in text
    assert f"seed {results['seed']}" in text and results['hardware'] in text and 'single training run' in text
    assert oct(folder.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's private mode
    assert 'training in float32' in text and 'avx512_bf16' in text  # precision and the CPU's flags
    for heading in ('## Model Details', '### Image Classification', '### Feature Map Extraction',
                    '### Image Embeddings', 'Params (M): 11.4', 'https://arxiv.org/abs/2106.04996',
                    'https://github.com/likyoo/SPANet', 'resolve_model_data_config', 'features_only=True',
                    'pre_logits=True'):
        assert heading in text, heading
    gmacs, activations = model_profile(timm.create_model('resnet18_spa', num_classes=10), 32)
    assert f'GMACs: {gmacs:.2f}' in text and f'Activations (M): {activations:.2f}' in text
    for key in ('lr', 'weight_decay', 'momentum', 'batch_size', 'sched', 'epochs', 'smoothing', 'sched_on_updates'):
        assert f'`{key}`' in text
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'resnet18_spa' and config['num_classes'] == 10
    assert 'model_args' not in config  # nothing beyond the name and class count: transformers passes num_classes
    assert 'no public labels' not in text
    assert config['pretrained_cfg']['mean'] == [0.4914, 0.4822, 0.4465]
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), _trained_outputs(trained_run, x))
    assert loaded.pretrained_cfg['label_names'] == [f'class{i}' for i in range(10)]  # what the usage snippet reads


def test_tiny_imagenet_card_names_its_test_split_as_the_hub_does(trained_run, tmp_path):
    """Tiny-ImageNet's test numbers are on its official val split: the card's metadata names the Hub data set's
    split for it ('valid'), and the card says why that split is the test split."""
    results = json.loads((trained_run / 'results.json').read_text())
    results['dataset'].update(name='tinyimagenet', label='Tiny-ImageNet-200')
    (tmp_path / 'results.json').write_text(json.dumps(results))
    record = RunDir(tmp_path).read_results()
    text = model_card(record, 'timm-spa/resnet18_spa.tinyimagenet', timm.create_model('resnet18_spa'))
    evals = ModelCard(text).data.eval_results
    assert {(e.dataset_type, e.dataset_split) for e in evals} == {('zh-plus/tiny-imagenet', 'valid')}
    assert "- Tiny-ImageNet's test images have no public labels: the test split here is the archive's official" \
        in text


def test_profile_counts_macs_and_activations_of_a_plain_network():
    """Checked against the textbook count: a conv costs Cout*Cin*k*k*Hout*Wout MACs, a linear layer
    in*out, and each produces its output elements as activations."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1, stride=2),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 5))
    gmacs, activations = model_profile(net, 16)
    macs = 8 * 3 * 9 * 16 * 16 + 4 * 8 * 1 * 8 * 8 + 256 * 5
    assert gmacs * 1e9 == pytest.approx(macs)
    assert activations * 1e6 == pytest.approx(8 * 16 * 16 + 4 * 8 * 8 + 5)


@pytest.mark.slow
def test_export_keeps_attention_placement(folder_data, tmp_path):
    run = train_tiny(folder_data, tmp_path / 'run', '--epochs', '1', '--model', 'resnet18_nl', '--model-kwargs',
                     'attn_stages=(1, 2)')
    folder = export_run(str(run), str(tmp_path / 'repo'))
    assert json.loads((folder / 'config.json').read_text())['model_args'] == {'attn_stages': [1, 2]}
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert loaded.attn_stages == (1, 2) and loaded.num_classes == 4


def _copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def test_card_gives_the_arguments_the_initial_weights_were_trained_with(trained_run, tmp_path):
    """A staged schedule's first stage is most of its recipe (e.g. 26 epochs at 32x32, then 4 at 64x64): the card of
    a run started from another gives the parent's arguments where they differ. A run recorded before the parent's
    arguments were (none in its lineage) gets them from the parent's run directory while that holds the same run;
    the release then carries them, so a card written anew from the release (CI) keeps the table."""
    parent = _copy_run(trained_run, tmp_path / 'parent')
    held = json.loads((parent / 'results.json').read_text())
    parent_args = dict(held['args'], epochs=26, lr=0.05, img_size=32)
    (parent / 'results.json').write_text(json.dumps(dict(held, run_id='f' * 32, args=parent_args)))
    child = _copy_run(trained_run, tmp_path / 'child')
    lineage = dict(parent=dict(source=str(parent), run_dir=str(parent), run_id='f' * 32, weights_sha256='0' * 64),
                   totals_known=False, total_epochs=held['epochs'], total_wall_time_s=held['wall_time_s'])
    (child / 'results.json').write_text(json.dumps(dict(held, lineage=lineage)))
    rows = (f"| `epochs` | `26` | `{held['args']['epochs']}` |", f"| `lr` | `0.05` | `{held['args']['lr']}` |",
            f"| `img_size` | `32` | `{held['args']['img_size']}` |")
    repo = export_run(str(child), str(tmp_path / 'repo'))
    card = (repo / 'README.md').read_text()
    assert f"The initial weights (run `{'f' * 32}`) were trained with the same arguments but these:" in card
    assert all(row in card for row in rows) and '| `batch_size` |' not in card.split('same arguments but')[1]
    assert json.loads((repo / 'results.json').read_text())['lineage']['parent']['args']['lr'] == 0.05
    shutil.rmtree(parent)  # the release holds them now
    again = export_run(str(repo), str(tmp_path / 'again'))
    assert (again / 'README.md').read_text() == card
    # a parent directory that holds another run now: nothing is taken from it
    parent = _copy_run(trained_run, tmp_path / 'parent')
    assert 'same arguments but' not in (export_run(str(child), str(tmp_path / 'other')) / 'README.md').read_text()


DUMP_ARGV = """python() { printf '%s\\0' "$@" >> "$ARGV_FILE"; printf '\\n\\0' >> "$ARGV_FILE"; }
"""


def test_card_gives_the_commands_that_train_its_weights_again(trained_run, tmp_path):
    """The card's bash block, run by bash itself (`python` a function that writes down its arguments), gives each
    stage's `python -m train` flags that argparse reads back as the arguments that stage recorded, quotes and `~`
    included; the first stage writes where the second starts from, and `hub export` reads where the second wrote."""
    child = _copy_run(trained_run, tmp_path / 'child')
    held = json.loads((child / 'results.json').read_text())
    stage_one = '~/runs/stage one'
    parent_args = dict(held['args'], epochs=26, lr=0.05, img_size=32, channels_last=True, model_ema=True,
                       dataset_label="CIFAR-10 (JPEG q75 copy, 'a' quote)", decode_cache='~/my cache',
                       model_kwargs={'attn_kwargs': {'k': 8}, 'attn_stages': [1]}, torchcompile='inductor',
                       aa='rand-m9-mstd0.5-inc1', seed=7)
    lineage = dict(parent=dict(source=stage_one, run_dir=stage_one, run_id='f' * 32, weights_sha256='0' * 64,
                               args=parent_args),
                   totals_known=False, total_epochs=held['epochs'], total_wall_time_s=held['wall_time_s'])
    child_args = dict(held['args'], initial_checkpoint=stage_one, amp=False, reprob=0.25)
    (child / 'results.json').write_text(json.dumps(dict(held, args=child_args, lineage=lineage)))
    repo = export_run(str(child), str(tmp_path / 'repo'))
    card, record = (repo / 'README.md').read_text(), json.loads((repo / 'results.json').read_text())
    assert record['lineage']['parent']['args']['decode_cache'] == '~/my cache' == parent_args['decode_cache']
    script = card.split('## Recipe')[1].split('```bash\n')[1].split('```')[0]
    home, argv_file = tmp_path / 'home', tmp_path / 'argv'
    subprocess.run(['bash', '-c', DUMP_ARGV + script], check=True, env=dict(os.environ, HOME=str(home),
                                                                           ARGV_FILE=str(argv_file)))
    commands = [c.strip('\0').split('\0') for c in argv_file.read_text().split('\n\0') if c]
    assert [c[:2] for c in commands] == [['-m', 'train'], ['-m', 'train'], ['-m', 'hub']]

    def expanded(value):
        return str(home) + value[1:] if isinstance(value, str) and value.startswith('~/') else value

    # the release's record: paths as the card names them (from ~ or the checkout, wherever the test's data lies)
    for argv, recorded in zip(commands[:2], (record['lineage']['parent']['args'], record['args']), strict=True):
        parsed = vars(train_script.parse_args(argv[2:]))
        for key, value in recorded.items():
            if key not in ('device', 'progress', 'log_interval', 'run_id'):
                assert json.loads(json.dumps(parsed[key])) == expanded(value), key
    first, second = (train_script.parse_args(argv[2:]) for argv in commands[:2])
    assert first.output == second.initial_checkpoint == expanded(stage_one)
    assert commands[2][2:] == ['export', second.output, '--output', 'resnet18_spa.cifar10']


def test_history_keeps_every_epoch_behind_the_replaced_weights():
    """A release trained in stages (26 epochs at 32x32 from scratch, then 4 at 64x64 from those weights) is recorded,
    when replaced, with every epoch behind its weights, as the release table counts them: its last stage's alone
    read as a one-epoch release."""
    results = RunDir(ROOT / 'releases' / 'timm-spa' / 'resnet18_spa.tinyimagenet').read_results()
    entry = push_module._entry(SimpleNamespace(results=results), '0' * 64)
    assert results.epochs < results.lineage['total_epochs'] == entry['epochs']


def test_export_refuses_incomplete_or_mismatched_runs(trained_run, tmp_path):
    broken = tmp_path / 'broken'
    broken.mkdir()
    with pytest.raises(RunError, match='has no results.json'):
        export_run(str(broken), str(tmp_path / 'out'))
    results = json.loads((trained_run / 'results.json').read_text())
    (broken / 'results.json').write_text(json.dumps({k: v for k, v in results.items() if k != 'test_top1'}))
    with pytest.raises(RunError, match='incomplete \\(missing test_top1\\)'):
        export_run(str(broken), str(tmp_path / 'out'))
    # the architecture the results claim is checked against the weights' own record of it
    edited = _copy_run(trained_run, tmp_path / 'edited')
    other = dict(results, model_args=dict(results['model_args'], model_kwargs={'attn_kwargs': {'k': 8}}))
    (edited / 'results.json').write_text(json.dumps(other))
    with pytest.raises(RunError, match="the weights were saved for .*'model_kwargs': \\{\\}"):
        export_run(str(edited), str(tmp_path / 'out'))
    # results of one run beside the weights of another: refused, whatever the numbers say
    mixed = _copy_run(trained_run, tmp_path / 'mixed')
    (mixed / 'results.json').write_text(json.dumps(dict(results, run_id='0' * 32)))
    with pytest.raises(RunError, match='come from different runs'):
        export_run(str(mixed), str(tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('where', ['run', 'parent', 'inside'])
def test_export_never_deletes_a_run(trained_run, tmp_path, where):
    parent = tmp_path / 'runs'
    run = _copy_run(trained_run, parent / 'r1')
    _copy_run(trained_run, parent / 'r2')
    output = {'run': run, 'parent': parent, 'inside': run / 'hub-repo'}[where]
    before = sorted(str(p) for p in parent.rglob('*'))
    with pytest.raises(RepositoryError, match='exporting there would overwrite or delete the run'):
        export_run(str(run), str(output), overwrite=True)
    assert sorted(str(p) for p in parent.rglob('*')) == before


def test_export_overwrite_replaces_only_an_exported_repository(trained_run, tmp_path):
    out = export_run(str(trained_run), str(tmp_path / 'repo'))
    export_run(str(trained_run), str(out), overwrite=True)  # an export: replaced
    (out / 'my-notes.txt').write_text('mine')
    with pytest.raises(RepositoryError, match='holds files export did not write \\(my-notes.txt\\)'):
        export_run(str(trained_run), str(out), overwrite=True)
    holder = tmp_path / 'holder'
    _copy_run(trained_run, holder / 'a-run')
    with pytest.raises(RepositoryError, match='holds a training run'):
        export_run(str(trained_run), str(holder), overwrite=True)
    assert (holder / 'a-run' / 'results.json').is_file()


def test_push_refuses_a_run_under_another_tag(tiny_run, tmp_path):
    """A 4-class 16x16 folder run cannot be published as resnet18_spa.cifar10 (or any tag it is not)."""
    folder = export_run(str(tiny_run), str(tmp_path / 'repo'))
    for repo_id in (REPO_ID, 'someone/resnet18_spa.cifar100', 'timm-spa/resnet18_nl.cifar10'):
        with pytest.raises(RepositoryError, match=f'cannot be published as {repo_id}'):
            publish(str(folder), repo_id, releases=str(tmp_path / 'releases'))
    assert not (tmp_path / 'releases').exists()
    publish(str(folder), 'someone/resnet18_spa.folder', releases=str(tmp_path / 'releases'))  # says what it is


def test_push_refuses_a_folder_inside_its_destination(trained_run, tmp_path):
    releases = tmp_path / 'releases'
    folder = export_run(str(trained_run), str(releases / REPO_ID / 'exported'))
    with pytest.raises(RepositoryError, match='overlap'):
        publish(str(folder), REPO_ID, releases=str(releases))
    assert (folder / 'model.safetensors').is_file()


def test_push_refuses_an_edited_repository(trained_run, tmp_path):
    folder = export_run(str(trained_run), str(tmp_path / 'repo'))
    config = json.loads((folder / 'config.json').read_text())
    config['model_args'] = {'attn_kwargs': {'k': 8}}
    (folder / 'config.json').write_text(json.dumps(config))
    with pytest.raises(RepositoryError, match='config.json builds .* but the weights were trained as'):
        publish(str(folder), REPO_ID, dry_run=True)


def test_push_dry_run_bad_repo_id_and_missing_token(trained_run, tmp_path, capsys, monkeypatch):
    folder = export_run(str(trained_run), str(tmp_path / 'repo'))
    summary = publish(str(folder), dry_run=True)  # the id it was exported for
    printed = capsys.readouterr().out
    assert 'would upload to https://huggingface.co/timm-spa/resnet18_spa.cifar10' in printed
    assert 'model.safetensors' in printed and 'model.safetensors' in summary['files']
    publish(str(folder), REPO_ID, dry_run=True, releases=str(tmp_path / 'rel'))
    assert f"would upload to {tmp_path / 'rel' / REPO_ID}:" in capsys.readouterr().out
    for bad in ('no-slash', 'a/b/c', 'bad name/x'):
        with pytest.raises(RepositoryError, match='invalid --repo-id'):
            publish(str(folder), bad, dry_run=True)
    monkeypatch.setenv('HF_HOME', str(tmp_path / 'empty-hf'))
    monkeypatch.delenv('HF_TOKEN', raising=False)
    with pytest.raises(SystemExit) as exit_info:
        hub_main(['push', str(folder), '--repo-id', REPO_ID])
    assert exit_info.value.code == 1
    assert 'no Hugging Face token: run `hf auth login` or set HF_TOKEN' in capsys.readouterr().err


def test_serve_refuses_what_it_cannot_serve(trained_run, tmp_path, capsys):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(RepositoryError, match='holds no repositories'):
        released_repositories(empty)
    releases = tmp_path / 'releases'
    folder = export_run(str(trained_run), str(releases / REPO_ID))
    (folder / 'model.safetensors').rename(tmp_path / 'weights')
    with pytest.raises(RepositoryError, match='not an exported repository \\(no model.safetensors\\)'):
        released_repositories(releases)
    (tmp_path / 'weights').rename(folder / 'model.safetensors')
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps(dict(config, architecture='resnet18_nope')))
    with pytest.raises(RepositoryError, match='config.json builds'):
        released_repositories(releases)
    (folder / 'config.json').write_text(json.dumps(config))
    assert [r.name for r in released_repositories(releases)] == ['resnet18_spa.cifar10']
    with socket.socket() as busy:
        busy.bind(('127.0.0.1', 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit):
            hub_main(['serve', str(releases), '--port', str(port)])
    assert f'port {port} on 127.0.0.1 is in use' in capsys.readouterr().err


def test_a_config_repeating_timms_recorded_arguments_is_refused_and_exported_anew(trained_run, tmp_path):
    """timm 1.0.31's save_config_for_hf repeats num_classes in model_args, which transformers cannot load: push
    refuses such a folder, and `hub export FOLDER` writes its config and card anew around the same weights."""
    folder = export_run(str(trained_run), str(tmp_path / 'repo'))
    timm.models.save_for_hf(timm.create_model('resnet18_spa', num_classes=10), tmp_path / 'timm-written')
    written = json.loads((tmp_path / 'timm-written' / 'config.json').read_text())
    assert written['model_args']['num_classes'] == 10  # what timm writes: the reason for all of this
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps(dict(config, model_args=written['model_args'])))
    with pytest.raises(RepositoryError, match='repeats num_classes, in_chans, global_pool in model_args'):
        publish(str(folder), dry_run=True)
    fresh = export_run(str(folder), str(tmp_path / 'fresh'))
    assert json.loads((fresh / 'config.json').read_text()) == config
    for name in ('model.safetensors', 'results.json', 'curves.png'):
        assert (fresh / name).read_bytes() == (folder / name).read_bytes(), name
    assert publish(str(fresh), dry_run=True)['repo_id'] == REPO_ID
    with pytest.raises(RepositoryError, match='overwrite or delete the repository'):
        export_run(str(fresh), str(fresh), overwrite=True)


def test_portable_path_names_home_and_checkout_neighbours_portably(tmp_path):
    home, checkout = tmp_path / 'home' / 'me', tmp_path / 'work' / 'timm-spa'
    cases = {
        str(home / '.cache' / 'timm-spa'): '~/.cache/timm-spa',
        str(home): '~',
        str(home / 'runs' / '..' / 'data'): '~/data',
        str(tmp_path / 'work' / 'shared' / 'data' / 'cifar10-jpeg'): '../shared/data/cifar10-jpeg',
        str(checkout / 'data'): 'data',
        str(tmp_path / 'home' / 'other'): str(tmp_path / 'home' / 'other'),  # neither: as it is
        '../shared/data/cifar10-jpeg': '../shared/data/cifar10-jpeg',  # already relative
        'hf-hub:timm-spa/resnet18_spa.cifar10': 'hf-hub:timm-spa/resnet18_spa.cifar10',
        None: None, 5e-4: 5e-4, True: True,
    }
    assert {value: portable_path(value, home, checkout) for value in cases} == cases
    # a checkout at the file system's top: its parent is everything, so nothing is named relative to it
    assert portable_path('/opt/data', home, Path('/timm-spa')) == '/opt/data'


def test_export_names_no_path_of_the_training_machine(trained_run, tmp_path, monkeypatch):
    """A run's data folder, decode cache and initial checkpoint lie on the machine that trained it: the published
    record and card name them from the home folder, every number as the run wrote it; a release exported before
    this rule is refused by `hub push` and mended by `hub export FOLDER`, with only those values rewritten (same
    weights, so `hub push` keeps its history)."""
    run = _copy_run(trained_run, tmp_path / 'run')
    written = json.loads((run / 'results.json').read_text())
    assert os.path.isabs(written['args']['data_dir'])  # what a run records: the absolute path it read
    lineage = dict(parent=dict(source=str(tmp_path / 'parent-run'), run_dir=str(tmp_path / 'parent-run'),
                               weights_sha256='0' * 64), totals_known=False, total_epochs=1, total_wall_time_s=1.0)
    recorded = dict(written, args=dict(written['args'], data_dir=str(tmp_path / 'datasets' / 'cifar10'),
                                       decode_cache=str(tmp_path / '.cache' / 'timm-spa')), lineage=lineage)
    (run / 'results.json').write_text(json.dumps(recorded, indent=2) + '\n')
    monkeypatch.setenv('HOME', str(tmp_path))
    out = export_run(str(run), str(tmp_path / 'repo'))
    published = json.loads((out / 'results.json').read_text())
    assert (published['args']['data_dir'], published['args']['decode_cache']) == \
        ('~/datasets/cifar10', '~/.cache/timm-spa')
    assert published['lineage']['parent']['source'] == published['lineage']['parent']['run_dir'] == '~/parent-run'
    unchanged = {k: v for k, v in recorded.items() if k not in ('args', 'lineage')}
    assert {k: v for k, v in published.items() if k not in ('args', 'lineage')} == unchanged
    card = (out / 'README.md').read_text()
    assert str(tmp_path) not in card and '| `decode_cache` | `~/.cache/timm-spa` |' in card
    # a release published with the machine's paths: exported anew, only they change; a portable one is untouched
    (out / 'results.json').write_text(json.dumps(recorded, indent=2) + '\n')
    with pytest.raises(RepositoryError, match=f"names paths of the machine that trained it .*{tmp_path}/datasets/"
                                              f"cifar10.*hub export {out} --output NEW_FOLDER"):
        publish(str(out), dry_run=True)  # push never uploads them
    mended = export_run(str(out), str(tmp_path / 'mended'))
    assert json.loads((mended / 'results.json').read_text()) == published
    assert publish(str(mended), dry_run=True)['repo_id'] == REPO_ID
    assert (mended / 'model.safetensors').read_bytes() == (out / 'model.safetensors').read_bytes()
    again = export_run(str(mended), str(tmp_path / 'again'))
    assert (again / 'results.json').read_bytes() == (mended / 'results.json').read_bytes()


def test_config_this_version_cannot_build(tmp_path):
    model = timm.create_model('resnet18_spa')
    timm.models.save_for_hf(model, tmp_path, model_args=dict(attn_future_option=3))
    with pytest.raises(TypeError, match=r"attn_future_option.*another timm-spa version.*upgrade timm-spa"):
        timm.create_model(f'local-dir:{tmp_path}', pretrained=True)


@pytest.mark.slow
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


@pytest.mark.slow
def test_main_job_publishes_reloads_and_serves_the_releases(folder_data, tmp_path, capfd):
    """`python -m hub.demo all` (what scripts/demo.sh runs): the run reloads over HTTP equal to its card, then
    the released resnet18_spa, served from releases/, classifies the demo images and draws its attention."""
    from hub import demo
    run = train_tiny(folder_data, tmp_path / 'demo' / 'run', '--epochs', '1', '--model', 'resnet18_gc', '--amp')
    demo.main(['all', str(run), '--workdir', str(tmp_path / 'demo')])
    results = json.loads((run / 'results.json').read_text())
    report = json.loads((tmp_path / 'demo' / 'reloaded.json').read_text())
    assert (report['top1'], report['top5']) == (results['test_top1'], results['test_top5'])
    assert report['model'] == 'hf-hub:timm-spa/resnet18_gc.folder' and report['pretrained']
    assert (tmp_path / 'demo' / 'hub-repo' / 'model.safetensors').is_file()
    out = capfd.readouterr().out  # the children's lines too: the reload, the classification
    served = len(released_repositories(ROOT / 'releases'))
    assert 'equal.' in out and f'serving {served} released repositories' in out and ' of 10 right.' in out
    assert "`timm.create_model('resnet18_spa', pretrained=True)` (timm-spa/resnet18_spa.cifar10)" in out
    assert (tmp_path / 'demo' / 'release-attention.png').stat().st_size > 0


def _second_run(folder_data: Path, out: Path) -> Path:
    return train_tiny(folder_data, out, '--epochs', '1', '--seed', '7')


@pytest.mark.slow
def test_a_published_name_keeps_its_weights_unless_replaced_on_purpose(folder_data, tiny_run, tmp_path, capsys):
    """Pushing other weights under a published name is refused; `--replace` replaces them and the history (file
    and card) keeps the replaced release; pushing the same content again changes nothing."""
    first = export_run(str(_second_run(folder_data, tmp_path / 'run1')), str(tmp_path / 'repo1'))
    second = export_run(str(tiny_run), str(tmp_path / 'repo2'))
    dest = tmp_path / 'releases'
    target = dest / 'timm-spa' / 'resnet18_spa.folder'
    push = ['push', '--releases', str(dest)]

    hub_main([*push[:1], str(first), *push[1:]])
    assert json.loads((target / 'history.json').read_text()) == []
    before = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    hub_main([*push[:1], str(first), *push[1:]])  # the same again: nothing to do
    assert 'already holds exactly this; nothing to publish' in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == before
    with pytest.raises(SystemExit) as exit_info:
        hub_main([*push[:1], str(second), *push[1:]])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    old_id = json.loads((first / 'results.json').read_text())['run_id']
    new_id = json.loads((second / 'results.json').read_text())['run_id']
    assert old_id in err and new_id in err and '--replace' in err
    assert {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} == before
    hub_main([*push[:1], str(second), *push[1:], '--replace'])
    assert (target / 'model.safetensors').read_bytes() == (second / 'model.safetensors').read_bytes()
    history = json.loads((target / 'history.json').read_text())
    assert [h['run_id'] for h in history] == [old_id]
    old = json.loads((first / 'results.json').read_text())
    assert history[0]['test_top1'] == old['test_top1'] and history[0]['epochs'] == old['epochs']
    card = (target / 'README.md').read_text()
    assert '## Release history' in card and old_id in card
    assert card.index('## Release history') < card.index('## Citation')
    # replaced again: the history grows, oldest first, and the card shows every entry once
    hub_main([*push[:1], str(first), *push[1:], '--replace'])
    history = json.loads((target / 'history.json').read_text())
    assert [h['run_id'] for h in history] == [old_id, new_id]
    card = (target / 'README.md').read_text()
    assert card.count('## Release history') == 1 and new_id in card
    assert [r.name for r in released_repositories(dest)] == ['resnet18_spa.folder']
    assert not list(dest.glob('timm-spa/.*.staging-*')) and not list(dest.glob('timm-spa/.*.replaced'))


def test_export_never_replaces_a_published_folder(trained_run, folder_data, tmp_path):
    folder = export_run(str(trained_run), str(tmp_path / 'repo'))
    publish(str(folder), REPO_ID, releases=str(tmp_path / 'releases'))
    release = tmp_path / 'releases' / REPO_ID
    before = {p.name: p.read_bytes() for p in release.iterdir()}
    with pytest.raises(RepositoryError, match='holds files export did not write \\(history.json\\)'):
        export_run(str(trained_run), str(release), overwrite=True)
    assert {p.name: p.read_bytes() for p in release.iterdir()} == before


def test_push_replace_is_for_releases(trained_run, tmp_path, capsys):
    folder = export_run(str(trained_run), str(tmp_path / 'repo'))
    with pytest.raises(SystemExit) as exit_info:
        hub_main(['push', str(folder), '--replace'])
    assert exit_info.value.code == 2 and '--replace applies to --releases' in capsys.readouterr().err


def _start_serving(releases: Path, tmp: Path) -> Tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, '-m', 'hub', 'serve', str(releases)], cwd=ROOT,
                            env=dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED='1'),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith('export HF_ENDPOINT='):
            return proc, line.split('=', 1)[1].strip()
    raise AssertionError(f'hub serve exited with {proc.wait()} before serving')


@pytest.fixture(scope='module')
def served_releases(trained_run, tmp_path_factory):
    root = tmp_path_factory.mktemp('served')
    folder = export_run(str(trained_run), str(root / 'repo'))
    publish(str(folder), REPO_ID, releases=str(root / 'releases'))
    return root / 'releases'


@pytest.mark.parametrize('signals', [(signal.SIGTERM,), (signal.SIGHUP,), (signal.SIGINT, signal.SIGINT)],
                         ids=['SIGTERM', 'SIGHUP', 'SIGINT-twice'])
@pytest.mark.slow
def test_serve_stops_cleanly_on_every_stop_signal(served_releases, tmp_path, signals):
    proc, endpoint = _start_serving(served_releases, tmp_path)
    weights = served_releases / REPO_ID / 'model.safetensors'
    with urllib.request.urlopen(f'{endpoint}/{REPO_ID}/resolve/main/config.json') as answer:
        assert answer.read() == (served_releases / REPO_ID / 'config.json').read_bytes()
    for sig in signals:
        proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert 'Traceback' not in out and out.strip().endswith('stopped'), out
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f'{endpoint}/{REPO_ID}/resolve/main/config.json', timeout=5)
    assert not list(tmp_path.iterdir()) and weights.is_file()  # nothing written, nothing left


def _plain_predictions(folder: Path, data: Path, without_block: bool = False) -> Tuple[list, list]:
    """Each test image's top-1 class and label, recomputed image by image without the project's transforms or
    evaluation loop; `without_block`: by the plain ResNet holding the same weights but the SPA block's."""
    from train.data import load_dataset
    results = json.loads((folder / 'results.json').read_text())
    weights = load_file(folder / 'model.safetensors')
    if without_block:
        model = timm.create_model('resnet18_cifar', num_classes=10)
        model.load_state_dict({k: v for k, v in weights.items() if not k.startswith('layer3.2.')})
    else:
        model = timm.create_model('resnet18_spa', num_classes=10)
        model.load_state_dict(weights)
    mean, std = (torch.tensor(results['dataset'][k]).view(3, 1, 1) for k in ('mean', 'std'))
    samples, indices = load_dataset('cifar10', str(data), val_size=8).split('test')
    predictions, labels = [], []
    with torch.no_grad():
        for i in indices:
            image, label = samples.load(i)
            x = torch.from_numpy(np.asarray(image.convert('RGB'), dtype=np.float32)).permute(2, 0, 1)
            predictions.append(int(model.eval()(((x / 255 - mean) / std)[None]).argmax()))
            labels.append(label)
    return predictions, labels


@pytest.mark.parametrize('arch', ['resnet18_spa', 'resnet18_nl', 'resnet18_gc'])
def test_without_attention_computes_the_plain_resnet_with_the_same_weights(arch):
    """Recomputed independently: the model with its blocks removed gives what `resnet18_cifar` gives with the same
    weights but the blocks' (the blocks' parameters made random first, so that they change the output)."""
    from hub.releases import without_attention
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=10).eval()
    blocks = [f'layer{stage}.{len(getattr(model, f"layer{stage}")) - 1}.' for stage in model.attn_stages]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(tuple(blocks)):
                param.normal_(0, 0.2)
    plain = timm.create_model('resnet18_cifar', num_classes=10).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(tuple(blocks))})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full, expected = model(x), plain(x)
        assert not torch.allclose(full, expected)
        assert torch.equal(without_attention(model)(x), expected)


def test_remeasure_records_the_whole_split_and_the_check_compares_with_it(trained_run, tmp_path, capsys):
    """`hub remeasure` records what the released weights measure on the whole test split (refusing a card that
    says otherwise); `--check` (CI's) measures the first images again and refuses a release without a current
    record, a record that disagrees with the card, or predictions that moved."""
    releases = tmp_path / 'releases'
    source = export_run(str(trained_run), str(tmp_path / 'repo'))
    publish(str(source), REPO_ID, releases=str(releases))
    folder, record_path = releases / REPO_ID, releases / 'remeasured.json'
    data = ['--data', f'cifar10={trained_run.parent / "data"}']
    assert f'next: python -m hub remeasure {releases} --data cifar10=DIR' in capsys.readouterr().out

    def fails(*argv) -> str:
        with pytest.raises(SystemExit) as exit_info:
            hub_main(['remeasure', str(releases), *data, *argv])
        assert exit_info.value.code == 1
        return capsys.readouterr().err

    assert 'has no whole-split re-measurement of its current weights' in fails('--check')
    assert 'python -m hub remeasure' in fails('--check') and not record_path.exists()
    hub_main(['remeasure', str(releases), *data])
    record = json.loads(record_path.read_text())
    entry, results = record[REPO_ID], json.loads((folder / 'results.json').read_text())
    plain, labels = _plain_predictions(folder, trained_run.parent / 'data')
    assert entry['images'] == 20 and entry['check_stride'] == 1 and entry['check_predictions'] == plain
    assert entry['top1'] == pytest.approx(100 * sum(p == t for p, t in zip(plain, labels, strict=True)) / 20)
    assert entry['top1'] == pytest.approx(results['test_top1']) and entry['top5'] == pytest.approx(results['test_top5'])
    ablated, _ = _plain_predictions(folder, trained_run.parent / 'data', without_block=True)
    ablated_top1 = 100 * sum(p == t for p, t in zip(ablated, labels, strict=True)) / 20
    assert entry['without_attention']['top1'] == pytest.approx(ablated_top1)
    card = (folder / 'README.md').read_text()  # the card shows the measurement, before its citation
    shown = card[card.index('## Measured again\n'):card.index('## Citation')]
    assert f"| as released | {results['test_top1']:.2f} | {results['test_top5']:.2f} |" in shown
    assert f'nothing retrained) | {ablated_top1:.2f} |' in shown and '20 images' in shown
    # a new card for the same weights: their record still covers them, so push asks for no re-measurement
    (source / 'README.md').write_text((source / 'README.md').read_text() + '\nOne more sentence.\n')
    capsys.readouterr()
    assert publish(str(source), REPO_ID, releases=str(releases),
                   replace=True)['changed']
    assert 'hub remeasure' not in capsys.readouterr().out
    assert shown in (folder / 'README.md').read_text()  # the new card shows the record of its weights too
    checked = hub_main(['remeasure', str(releases), *data, '--check'])
    assert checked['resnet18_spa.cifar10']['flips'] == [] and json.loads(record_path.read_text()) == record
    assert '0 prediction(s) differ from the record' in capsys.readouterr().out

    def edited(change) -> dict:
        copy = json.loads(json.dumps(record))
        change(copy[REPO_ID])
        record_path.write_text(json.dumps(copy))
        return copy

    moved = [(p + 1) % 10 for p in plain[:3]] + plain[3:]
    edited(lambda e: e.update(check_predictions=moved))
    assert '3 of 20 test images (every 1) are classified otherwise than recorded (test images 0, 1, 2)' \
        in fails('--check')
    edited(lambda e: e.update(check_predictions=moved[:1] + plain[1:]))  # one borderline flip is tolerated
    assert hub_main(['remeasure', str(releases), *data, '--check'])['resnet18_spa.cifar10']['flips'] == [0]
    record_path.write_text(json.dumps(record))
    card = (folder / 'README.md').read_text()
    (folder / 'README.md').write_text(card.replace(shown, ''))  # a card without the section
    assert 'its card does not show its re-measurement' in fails('--check')
    (folder / 'README.md').write_text(card)
    edited(lambda e: e.update(top1=e['top1'] + 5))
    assert f"its card says top-1 {results['test_top1']:.2f}" in fails('--check')
    edited(lambda e: e.update(weights_sha256='0' * 64))  # other weights were measured
    assert 'has no whole-split re-measurement of its current weights' in fails('--check')
    record_path.write_text('{"truncated": ')
    assert 'cannot be read' in fails('--check')
    # a card that is not what its weights measure: nothing is recorded
    record_path.write_text(json.dumps(record))
    (folder / 'results.json').write_text(json.dumps(dict(results, test_top1=results['test_top1'] + 1)))
    err = fails()
    assert 'do not measure what their cards say' in err and 'remeasured.json is unchanged' in err
    assert json.loads(record_path.read_text()) == record


def test_export_with_seeds_puts_their_spread_on_the_card(trained_run, tmp_path):
    """`hub export --seeds FOLDER`: the card and seeds.json give the runs of the same arguments but the seed (the
    exported run among them) and the baseline's, mean +- std against a hand computation; a run of other arguments is
    left out; a folder without the run or without another seed is refused; a re-export of the repository keeps its
    record byte for byte, and one of another run's weights is refused."""
    record = json.loads((trained_run / 'results.json').read_text())
    top1, folder = record['test_top1'], tmp_path / 'seeds'

    def add(name, model='resnet18_spa', lr=record['args']['lr'], **change):
        (folder / name).mkdir(parents=True)
        changed = dict(record, model=model, args=dict(record['args'], model=model, lr=lr),
                       model_args=dict(record['model_args'], model=model), **change)
        (folder / name / 'results.json').write_text(json.dumps(changed))

    def refused(source=trained_run) -> str:
        with pytest.raises((UsageError, RepositoryError)) as error:
            export_run(str(source), str(tmp_path / 'refused'), seeds=str(folder) if source == trained_run else None)
        return str(error.value)

    add('cifar-43', model='resnet18_cifar', run_id='c' * 32, seed=43, test_top1=top1 - 1)
    assert 'holds no finished run' in refused()
    add('spa-42')  # the exported run's own record
    assert 'no other seed' in refused()
    add('spa-43', run_id='a' * 32, seed=43, test_top1=top1 + 1)
    add('spa-44', run_id='b' * 32, seed=44, test_top1=top1 + 2)
    add('spa-lr', run_id='d' * 32, seed=45, test_top1=top1 + 40, lr=0.5)  # another recipe: left out
    add('cifar-44', model='resnet18_cifar', run_id='e' * 32, seed=44, test_top1=top1 + 1)
    add('copy/spa-43', run_id='a' * 32, seed=43, test_top1=top1 + 1)  # one run recorded twice counts once
    out = export_run(str(trained_run), str(tmp_path / 'repo'), seeds=str(folder))
    seeds = json.loads((out / 'seeds.json').read_text())
    assert [r['seed'] for r in seeds['runs']] == [record['seed'], 43, 44]
    assert seeds['test_top1']['mean'] == pytest.approx(top1 + 1) and seeds['test_top1']['std'] == pytest.approx(1.0)
    assert seeds['baseline'] == 'resnet18_cifar' and seeds['baseline_test_top1']['mean'] == pytest.approx(top1)
    assert seeds['baseline_test_top1']['std'] == pytest.approx(2 ** 0.5)
    assert seeds['vs_baseline']['difference'] == pytest.approx(1.0)
    assert seeds['paper_vs_baseline'] == pytest.approx(95.79 - 93.07)
    card = (out / 'README.md').read_text()
    assert f"| `resnet18_spa` | 3 | {top1 + 1:.2f} +- 1.00 | {top1:.2f} ({record['seed']}), {top1 + 1:.2f} (43)" in card
    assert f'| `resnet18_cifar` | 2 | {top1:.2f} +- 1.41 | {top1 - 1:.2f} (43), {top1 + 1:.2f} (44) |' in card
    assert 'Difference from `resnet18_cifar`: +1.00 points' in card
    assert '"Seeds" below gives the spread over 3 seeds' in card and 'no mean or seed-to-seed spread' not in card
    add('spa-43-rerun', run_id='9' * 32, seed=43, test_top1=top1)
    assert 'more than one run of resnet18_spa with seed 43' in refused()
    again = export_run(str(out), str(tmp_path / 'again'))
    assert (again / 'seeds.json').read_bytes() == (out / 'seeds.json').read_bytes()
    assert (again / 'README.md').read_text() == card
    (out / 'seeds.json').write_text(json.dumps(dict(seeds, runs=seeds['runs'][1:])))  # another run's seeds
    assert 'does not list run' in refused(out)
