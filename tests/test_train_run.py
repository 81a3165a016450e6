"""Training runs end to end: honest evaluation, results file, resume after SIGKILL, DDP, bad input."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from train import train as train_script
from train import validate as validate_script
from train.checkpoint import BEST, LAST

ROOT = Path(__file__).resolve().parent.parent
TINY = ['--dataset', 'folder', '--img-size', '16', '-b', '8', '--val-size', '8', '--workers', '0',
        '--lr', '0.05', '--log-interval', '0', '--no-progress', '--model', 'resnet18_spa']


def _run(data, out, *extra):
    train_script.main(TINY + ['--data-dir', str(data), '--output', str(out), *extra])
    return json.loads((out / 'results.json').read_text())


def _cli(*args, **kwargs):
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)


def test_run_writes_honest_results(folder_data, tmp_path):
    out = tmp_path / 'run'
    results = _run(folder_data, out, '--epochs', '2', '--model-kwargs', 'attn_stages=(2,)', 'attn_kwargs={"k": 4}')
    for name in (LAST, BEST, 'summary.csv', 'curves.png', 'results.json', 'args.json'):
        assert (out / name).is_file(), name
    assert results['model'] == 'resnet18_spa' and results['epochs'] == 2 and results['seed'] == 42
    assert results['model_args'] == dict(model='resnet18_spa', num_classes=4,
                                         model_kwargs=dict(attn_stages=[2], attn_kwargs={'k': 4}))
    assert results['dataset']['test_images'] == 16 and results['dataset']['val_images'] == 8
    assert results['dataset']['train_images'] == 40
    assert 0 <= results['best_epoch'] < 2
    assert 0 <= results['test_top1'] <= results['test_top5'] <= 100
    model = timm.create_model('resnet18_spa', num_classes=4, attn_stages=(2,), attn_kwargs={'k': 4})
    assert results['param_count'] == sum(p.numel() for p in model.parameters())
    assert 'held out of train' in results['checkpoint_selection']
    for key in ('wall_time_s', 'hardware', 'software', 'git_commit', 'args'):
        assert results[key]
    assert len((out / 'summary.csv').read_text().strip().splitlines()) == 3  # header + 2 epochs
    state = torch.load(out / LAST, weights_only=True)  # safe loading works for our own checkpoints
    assert state['epoch'] == 1 and state['arch']['model'] == 'resnet18_spa'

    # the validation command reproduces the test number from the chosen weights
    report = validate_script.validate(validate_script.parse_args(['--run', str(out), '--split', 'test']))
    assert report['top1'] == pytest.approx(results['test_top1']) and report['images'] == 16
    report = validate_script.validate(validate_script.parse_args(['--run', str(out), '--split', 'val']))
    assert report['top1'] == pytest.approx(results['val_top1']) and report['images'] == 8


def test_refuses_an_output_directory_holding_another_run(folder_data, tmp_path):
    out = tmp_path / 'run'
    _run(folder_data, out, '--epochs', '1')
    with pytest.raises(SystemExit, match=r'already holds a run .*--resume .*--overwrite'):
        _run(folder_data, out, '--epochs', '1')
    _run(folder_data, out, '--epochs', '1', '--overwrite')


def test_resume_from_another_architecture_names_the_mismatch(folder_data, tmp_path):
    out = tmp_path / 'run'
    _run(folder_data, out, '--epochs', '1')
    with pytest.raises(SystemExit, match=r"another architecture \(model: checkpoint 'resnet18_spa', this run "
                                         r"'resnet18_nl'"):
        train_script.main(TINY[:-1] + ['resnet18_nl', '--data-dir', str(folder_data), '--resume', str(out),
                                       '--epochs', '2'])
    with pytest.raises(SystemExit, match=r"model_kwargs: checkpoint \{\}, this run \{'attn_stages': \(1,\)\}"):
        train_script.main(TINY + ['--data-dir', str(folder_data), '--resume', str(out), '--epochs', '2',
                                  '--model-kwargs', 'attn_stages=(1,)'])


def test_class_count_must_match(folder_data, tmp_path):
    with pytest.raises(SystemExit, match='--num-classes 10 disagrees with the data set: .* has 4 classes'):
        _run(folder_data, tmp_path / 'run', '--num-classes', '10')


def test_missing_data_directory(tmp_path):
    with pytest.raises(SystemExit, match='expected train/ and test/'):
        _run(tmp_path / 'absent', tmp_path / 'run')


def test_corrupt_checkpoint_and_foreign_weights(folder_data, tmp_path):
    out = tmp_path / 'run'
    _run(folder_data, out, '--epochs', '1')
    (out / LAST).write_bytes((out / LAST).read_bytes()[:1000])
    with pytest.raises(SystemExit, match=r'cannot read checkpoint .*last\.pth\.tar.*corrupt'):
        train_script.main(TINY + ['--data-dir', str(folder_data), '--resume', str(out), '--epochs', '2'])
    with pytest.raises(SystemExit, match=r'does not match resnet18_nl: missing .*unexpected'):
        validate_script.main(['--model', 'resnet18_nl', '--checkpoint', str(out / BEST), '--dataset', 'folder',
                              '--data-dir', str(folder_data), '--val-size', '8', '--img-size', '16'])


def test_bfloat16_autocast_and_channels_last_on_cpu(folder_data, tmp_path):
    results = _run(folder_data, tmp_path / 'run', '--epochs', '1', '--amp', '--channels-last')
    assert results['amp_dtype'] == 'bfloat16'
    assert all(torch.isfinite(v).all() for v in load_file(tmp_path / 'run' / BEST).values())


def test_sigkill_mid_epoch_then_resume_is_bit_identical(folder_data, tmp_path):
    common = TINY + ['--data-dir', str(folder_data), '--epochs', '3', '-b', '4', '--log-interval', '1',
                     '--model-ema']
    straight, killed = tmp_path / 'straight', tmp_path / 'killed'
    assert _cli('train', *common, '--output', str(straight)).returncode == 0

    proc = subprocess.Popen([sys.executable, '-m', 'train', *common, '--output', str(killed)], cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1'),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith('epoch 1 step 3/'):
            proc.send_signal(signal.SIGKILL)  # mid-epoch: epoch 0 is checkpointed, epoch 1 is lost
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert torch.load(killed / LAST, weights_only=True)['epoch'] == 0
    assert not (killed / 'results.json').exists()

    resumed = _cli('train', *common, '--resume', str(killed))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert 'resumed' in resumed.stdout
    a, b = torch.load(straight / LAST, weights_only=True), torch.load(killed / LAST, weights_only=True)
    for part in ('model', 'ema'):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    first, second = (json.loads((d / 'results.json').read_text()) for d in (straight, killed))
    assert first['test_top1'] == second['test_top1'] and first['best_epoch'] == second['best_epoch']
    assert (straight / 'summary.csv').read_text().count('\n') == (killed / 'summary.csv').read_text().count('\n')


def test_ddp_two_cpu_processes_gloo(folder_data, tmp_path):
    out = tmp_path / 'ddp'
    done = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29517', '-m', 'train',
         *TINY, '--data-dir', str(folder_data), '--epochs', '1', '--output', str(out)],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / 'results.json').read_text())
    assert results['world_size'] == 2
    assert results['dataset']['test_images'] == 16  # reduced across ranks, every image once
    assert done.stdout.count('test top-1') == 1  # only rank 0 reports and writes
