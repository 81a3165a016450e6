"""Training runs end to end: honest evaluation, the run directory, resume after SIGKILL, DDP, the budget
recipe's flags, precision by CPU capability, timm's checkpoint keys, and runs that must stop."""
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import ROOT, train_tiny
from conftest import TINY_TRAIN as TINY
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from hub.card import model_card
from train import compare as compare_script
from train import precision
from train import train as train_script
from train import validate as validate_script
from train.checkpoint import load_training_state
from train.report import read_summary, write_summary
from train.run_dir import BEST, LAST, RECOVERY, RunDir, RunError


def _run(data, out, *extra):
    return json.loads((train_tiny(data, out, *extra) / 'results.json').read_text())


def test_summary_records_the_learning_rate_each_epoch_trained_with(folder_data, tmp_path):
    """A cosine stepped per epoch over 2 epochs from 0.05: epoch 0 trains at 0.05 and epoch 1 at 0.025 (the cosine's
    value at t = 1 of 2), which summary.csv says, not the rate after each epoch's scheduler step (0.025, then 0)."""
    out = tmp_path / 'run'
    _run(folder_data, out, '--epochs', '2', '--sched', 'cosine')
    assert [row['lr'] for row in read_summary(out / 'summary.csv')] == pytest.approx([0.05, 0.025])


def _fails(capsys, argv, code=2):
    """Run the train CLI expecting it to refuse; returns its one-line message."""
    with pytest.raises(SystemExit) as exit_info:
        train_script.main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    return err


def _cli(*args, **kwargs):
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable, '-m', *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)


def test_run_writes_honest_results(folder_data, tmp_path, capsys):
    out = tmp_path / 'run'
    results = _run(folder_data, out, '--epochs', '2', '--model-kwargs', 'attn_stages=(2,)', 'attn_kwargs={"k": 4}')
    epoch_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('epoch ')]
    assert len(epoch_lines) == 2 and ' h for the 1 epoch left' in epoch_lines[0] and 'left' not in epoch_lines[1]
    mask = os.umask(0)
    os.umask(mask)
    for name in (LAST, BEST, 'summary.csv', 'curves.png', 'results.json', 'args.json'):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask, name  # safetensors alone writes 0600
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
    for key in ('wall_time_s', 'hardware', 'software', 'git_commit', 'args', 'run_id'):
        assert results[key]
    assert results['precision']['train'] == 'float32' and results['precision']['test'] == 'float32'
    assert set(results['precision']['cpu_flags']) >= {'avx512_bf16', 'amx'} or 'mkldnn_bf16' in \
        results['precision']['cpu_flags']
    rows = (out / 'summary.csv').read_text().strip().splitlines()
    assert len(rows) == 3  # header + 2 epochs
    header = rows[0].split(',')
    assert {'epoch_s', 'elapsed_s', 'train_s', 'precision'} <= set(header)
    elapsed = [float(r.split(',')[header.index('elapsed_s')]) for r in rows[1:]]
    epoch_s = [float(r.split(',')[header.index('epoch_s')]) for r in rows[1:]]
    assert elapsed[0] == pytest.approx(epoch_s[0]) and elapsed[1] == pytest.approx(epoch_s[0] + epoch_s[1])
    assert results['wall_time_s'] >= elapsed[-1]

    # every part of the run carries its id: checkpoint (timm's keys), chosen weights, results
    state = torch.load(out / LAST, weights_only=True)  # safe loading works for our own checkpoints
    assert state['epoch'] == 1 and state['arch'] == 'resnet18_spa' and state['run_id'] == results['run_id']
    assert {'state_dict', 'optimizer', 'scheduler', 'model_args', 'args'} <= set(state)
    with safe_open(str(out / BEST), 'pt') as f:
        meta = f.metadata()
    assert meta['run_id'] == results['run_id'] and meta['epoch'] == str(results['best_epoch'])
    assert RunDir(out).read_finished().results.test_top1 == results['test_top1']

    # the validation command reproduces the test number from the chosen weights
    report = validate_script.validate(validate_script.parse_args(['--run', str(out), '--split', 'test']))
    assert report['top1'] == pytest.approx(results['test_top1']) and report['images'] == 16
    report = validate_script.validate(validate_script.parse_args(['--run', str(out), '--split', 'val']))
    assert report['top1'] == pytest.approx(results['val_top1']) and report['images'] == 8


def test_refuses_an_output_directory_holding_another_run(folder_data, tmp_path, capsys):
    out = tmp_path / 'run'
    _run(folder_data, out, '--epochs', '1')
    err = _fails(capsys, TINY + ['--data-dir', str(folder_data), '--output', str(out), '--epochs', '1'])
    assert 'already holds a run' in err and '--resume' in err and '--overwrite' in err
    _run(folder_data, out, '--epochs', '1', '--overwrite')


@pytest.mark.slow
def test_overwrite_killed_after_one_epoch_leaves_no_old_results(folder_data, tmp_path):
    """--overwrite removes the old run's files before training, so an interrupted overwrite never pairs the
    old results with new weights; what is left cannot be exported or validated."""
    out = tmp_path / 'run'
    old = _run(folder_data, out, '--epochs', '1')
    (out / 'notes.txt').write_text('mine')  # not a run file: never deleted
    proc = subprocess.Popen([sys.executable, '-m', 'train', *TINY, '--data-dir', str(folder_data), '--output',
                             str(out), '--epochs', '3', '--overwrite', '--log-interval', '1'], cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1'),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith('epoch 1 step 2/'):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert not (out / 'results.json').exists() and (out / 'notes.txt').read_text() == 'mine'
    state = load_training_state(out / LAST)
    assert state['epoch'] == 0 and state['run_id'] != old['run_id']
    with pytest.raises(RunError, match='has no results.json'):
        RunDir(out).read_finished()


def test_resume_takes_the_runs_own_arguments_and_refuses_other_recipes(folder_data, tmp_path, capsys):
    out = tmp_path / 'run'
    _run(folder_data, out, '--epochs', '1', '--lr', '0.03')
    state = load_training_state(out / LAST)
    # the run is finished (1 of 1 epochs): resuming it alone evaluates it again, with its own arguments
    again = train_script.main(['--resume', str(out), '--no-progress', '--workers', '0'])
    assert again.args['lr'] == 0.03 and again.run_id == state['run_id'] and again.epochs == 1
    # what the data set is called may be corrected (it is not what was trained): the results carry the new name
    named = train_script.main(['--resume', str(out), '--dataset-label', 'folder (a copy)'])
    assert named.dataset.label == 'folder (a copy)' and named.test_top1 == again.test_top1
    assert RunDir(out).read_results().dataset.label == 'folder (a copy)'
    err = _fails(capsys, ['--resume', str(out), '--epochs', '3', '--lr', '0.1', '--val-split-seed', '4'])
    for part in ('--epochs 3 (the run has 1)', '--lr 0.1 (the run has 0.03)', '--val-split-seed 4 (the run has 0)',
                 'Only --data-dir'):
        assert part in err, err
    err = _fails(capsys, TINY[:-1] + ['resnet18_nl', '--data-dir', str(folder_data), '--resume', str(out)])
    assert "--model 'resnet18_nl' (the run has 'resnet18_spa')" in err
    err = _fails(capsys, ['--resume', str(out), '--model-kwargs', 'attn_stages=(1,)'])
    assert "--model-kwargs {'attn_stages': (1,)} (the run has {})" in err
    err = _fails(capsys, ['--resume', str(tmp_path / 'elsewhere')])
    assert 'no last.pth.tar there' in err


def test_resume_turns_speed_flags_off_as_well_as_on(tiny_run, tmp_path):
    """--channels-last, --amp and --torchcompile may change on --resume both ways: a run that had them goes on
    without them (--no-...), e.g. when compilation does not pay on the CPU it moved to."""
    run = Path(shutil.copytree(tiny_run, tmp_path / 'run'))
    state = torch.load(run / LAST, weights_only=True)  # as if it had been trained with the three (nothing compiles)
    torch.save(dict(state, args=dict(state['args'], channels_last=True, amp=True, torchcompile='inductor')), run / LAST)
    speed = ('channels_last', 'amp', 'torchcompile')
    kept = train_script.main(['--resume', str(run), '--no-torchcompile'])
    assert [kept.args[k] for k in speed] == [True, True, None]
    off = train_script.main(['--resume', str(run), '--no-channels-last', '--no-amp', '--no-torchcompile'])
    assert [off.args[k] for k in speed] == [False, False, None] and off.test_top1 == kept.test_top1


def test_resume_refuses_other_data(folder_data, tmp_path, capsys):
    from conftest import write_image_folders
    out = tmp_path / 'run'
    _run(folder_data, out, '--epochs', '1')
    other = write_image_folders(tmp_path / 'other', classes=4, n_train=56, n_test=16)
    err = _fails(capsys, ['--resume', str(out), '--data-dir', str(other)], code=1)
    assert 'not the one the run was trained on' in err and 'train_images: run 40, now 48' in err


def test_timm_loader_reads_raw_and_ema_weights(folder_data, tmp_path):
    """timm's own `load_checkpoint` (what its validate.py --use-ema calls) finds the EMA under state_dict_ema."""
    out = tmp_path / 'run'
    _run(folder_data, out, '--epochs', '1', '--model-ema', '--model-ema-decay', '0.5')
    state = torch.load(out / LAST, weights_only=True)
    for use_ema, key in ((True, 'state_dict_ema'), (False, 'state_dict')):
        model = timm.create_model('resnet18_spa', num_classes=4)
        timm.models.load_checkpoint(model, str(out / LAST), use_ema=use_ema)
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state[key].items()), key
    raw, ema = state['state_dict'], state['state_dict_ema']
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())
    report = validate_script.validate(validate_script.parse_args(
        ['--model', 'resnet18_spa', '--checkpoint', str(out / LAST), '--use-ema', '--dataset', 'folder',
         '--data-dir', str(folder_data), '--val-size', '8', '--img-size', '16', '--split', 'val', '--workers', '0']))
    assert report['top1'] == pytest.approx(json.loads((out / 'results.json').read_text())['val_top1'])


def test_diverged_training_stops_and_publishes_nothing(folder_data, tmp_path, capsys):
    out = tmp_path / 'run'
    err = _fails(capsys, TINY + ['--data-dir', str(folder_data), '--output', str(out), '--epochs', '3',
                                 '--lr', '1e12'], code=1)
    assert 'training diverged' in err and 'Lower --lr (it is 1000000000000.0)' in err
    assert not (out / 'results.json').exists()
    if (out / BEST).exists():  # written only for a finite epoch
        assert all(torch.isfinite(v).all() for v in load_file(out / BEST).values())


def test_results_json_is_strict(tmp_path):
    from train.run_dir import dump_json
    with pytest.raises(ValueError):
        dump_json({'test_top1': math.nan})
    run = RunDir(tmp_path)
    (tmp_path / 'results.json').write_text('{"results_version": 2, "test_top1": NaN}')
    with pytest.raises(RunError, match='not valid JSON'):
        run.read_results()
    (tmp_path / 'results.json').write_text('{"results_version": 1}')
    with pytest.raises(RunError, match=r'results version 1; this timm-spa reads version 2: re-finish the run'):
        run.read_results()
    (tmp_path / 'results.json').write_text('{"results_version": 3}')
    with pytest.raises(RunError, match='upgrade timm-spa'):
        run.read_results()


@pytest.mark.parametrize('flag,value,match', [
    ('--epochs', '0', '--epochs 0 is not allowed: it must be an int >= 1'),
    ('-b', '0', '--batch-size 0 is not allowed'),
    ('--lr', '-0.1', '--lr -0.1 is not allowed: it must be a number > 0'),
    ('--img-size', '0', '--img-size 0 is not allowed'),
    ('--smoothing', '1.5', '--smoothing 1.5 is not allowed: it must be in [0, 1)'),
    ('--reprob', '2', '--reprob 2.0 is not allowed: it must be in [0, 1]'),
    ('--recount', '0', '--recount 0 is not allowed: it must be an int >= 1'),
    ('--mixup-prob', '1.5', '--mixup-prob 1.5 is not allowed: it must be in [0, 1]'),
    ('--aa', 'rnd-m9', "--aa 'rnd-m9' is not one of timm's augmentation policies (Unknown AutoAugment config "
                       "section): e.g. rand-m9-mstd0.5-inc1 (RandAugment)"),
    ('--model', 'resnet18_sap', 'no such model in timm or timm-spa. Did you mean resnet18_spa'),
    ('--device', 'tpu', "--device 'tpu' is not a device torch knows"),
])
def test_bad_values_are_refused_before_anything_runs(folder_data, tmp_path, capsys, flag, value, match):
    err = _fails(capsys, TINY + ['--data-dir', str(folder_data), '--output', str(tmp_path / 'run'), flag, value])
    assert match in err and not (tmp_path / 'run').exists()


@pytest.mark.parametrize('flag,value,match', [
    ('-b', '0', 'argument -b/--batch-size: 0 must be at least 1'),
    ('-j', '-1', 'argument -j/--workers: -1 must be at least 0'),
    ('--img-size', 'big', "argument --img-size: 'big' is not a whole number"),
])
def test_validate_refuses_counts_out_of_range_naming_the_flag(capsys, flag, value, match):
    with pytest.raises(SystemExit) as exit_info:
        validate_script.main(['--model', 'resnet18_spa', '--dataset', 'cifar10', flag, value])
    assert exit_info.value.code == 2 and match in capsys.readouterr().err


def test_mixing_needs_an_even_batch(folder_data, tmp_path, capsys):
    err = _fails(capsys, TINY + ['--data-dir', str(folder_data), '--output', str(tmp_path / 'run'), '--cutmix', '1',
                                 '-b', '7'])
    assert '--mixup/--cutmix mix a batch with itself reversed, so -b must be even (it is 7)' in err


def test_budget_recipe_steps_the_lr_every_update(folder_data, tmp_path):
    """--sched-on-updates with warm-up: the LR of each epoch's first update (summary.csv's lr) is the warm-up's start,
    then timm's cosine at that update, computed here from the formula; the paper's per-epoch schedule keeps it
    constant within an epoch."""
    out = tmp_path / 'run'
    _run(folder_data, out, '--epochs', '3', '--opt', 'sgd', '--sched-on-updates', '--warmup-epochs', '1',
         '--warmup-lr', '0.01', '--smoothing', '0.1')
    updates = 40 // 8  # 40 training images, batch 8, drop_last
    total, warmup = 3 * updates, updates
    rows = (out / 'summary.csv').read_text().strip().splitlines()
    header = rows[0].split(',')
    lrs = [float(r.split(',')[header.index('lr')]) for r in rows[1:]]
    for epoch, lr in enumerate(lrs):
        t = epoch * updates
        expected = 0.05 * 0.5 * (1 + math.cos(math.pi * t / total)) if t >= warmup else 0.01 + t * 0.04 / warmup
        assert lr == pytest.approx(expected), (epoch, lr)
    args = json.loads((out / 'results.json').read_text())['args']
    assert args['opt'] == 'sgd' and args['smoothing'] == 0.1 and args['sched_on_updates']
    state = load_training_state(out / LAST)
    assert state['optimizer']['param_groups'][0]['nesterov'] is True  # timm's 'sgd' is Nesterov


def test_poly_schedule_with_decay_rate_one_decays_linearly_to_zero(folder_data, tmp_path):
    """--sched poly --decay-rate 1 (timm's names): after the warm-up the LR falls on a straight line from the
    peak at update 0 to 0 at the last update, computed here from that line (each epoch's first update in
    summary.csv, the last update's in the checkpoint)."""
    out = tmp_path / 'run'
    _run(folder_data, out, '--epochs', '4', '--opt', 'sgd', '--sched', 'poly', '--decay-rate', '1',
         '--sched-on-updates', '--warmup-epochs', '1', '--warmup-lr', '0.01')
    updates = 40 // 8  # 40 training images, batch 8, drop_last
    total = 4 * updates
    lrs = [row['lr'] for row in read_summary(out / 'summary.csv')]
    assert lrs == pytest.approx([0.01] + [0.05 * (1 - epoch * updates / total) for epoch in range(1, 4)])
    assert load_training_state(out / LAST)['optimizer']['param_groups'][0]['lr'] == 0.0
    assert json.loads((out / 'results.json').read_text())['args']['decay_rate'] == 1.0


def test_label_smoothing_and_augmentation_reach_the_run(folder_data, tmp_path):
    plain = _run(folder_data, tmp_path / 'a', '--epochs', '1')
    smooth = _run(folder_data, tmp_path / 'b', '--epochs', '1', '--smoothing', '0.5')
    first = [(tmp_path / d / 'summary.csv').read_text().splitlines()[1] for d in 'ab']
    assert first[0].split(',')[2] != first[1].split(',')[2]  # train_loss differs from the first step on
    assert plain['args']['smoothing'] == 0.0 and smooth['args']['smoothing'] == 0.5
    augmented = _run(folder_data, tmp_path / 'c', '--epochs', '2', '--aa', 'rand-m9-mstd0.5', '--reprob', '0.5',
                     '--mixup', '0.2', '--cutmix', '1.0', '--mixup-off-epoch', '1')
    assert (augmented['args']['aa'], augmented['args']['reprob'], augmented['args']['remode']) == \
        ('rand-m9-mstd0.5', 0.5, 'pixel')
    assert (augmented['args']['mixup'], augmented['args']['cutmix'], augmented['args']['mixup_off_epoch']) == \
        (0.2, 1.0, 1)
    assert plain['args']['aa'] is None and plain['args']['reprob'] == 0.0
    assert (tmp_path / 'c' / 'summary.csv').read_text().splitlines()[1].split(',')[2] != first[0].split(',')[2]
    results = RunDir(tmp_path / 'c').read_results()
    arch = results.model_args
    card = model_card(results, 'timm-spa/x', timm.create_model(results.model, num_classes=arch['num_classes'],
                                                                **arch['model_kwargs']))
    assert '| `aa` | `rand-m9-mstd0.5` |' in card and '| `reprob` | `0.5` |' in card and '| `cutmix` | `1.0` |' in card

    # the two side by side (train.compare): only the differing argument, each epoch's val top-1 and time, test
    (tmp_path / 'b' / 'results.json').unlink()  # as if b were still training
    text = compare_script.compare([str(tmp_path / 'a'), str(tmp_path / 'b')], str(tmp_path / 'cmp.png'))
    lines = text.splitlines()
    assert lines[0] == ('| run | --smoothing | val top-1 after epoch 0 (elapsed) | best val top-1 (epoch) | '
                        'test top-1 | train top-1, last epoch | median train img/s | trained on |')
    row = read_summary(tmp_path / 'a' / 'summary.csv')[0]
    assert lines[2] == (f"| a | `0.0` | {plain['val_top1']:.2f} ({row['elapsed_s'] / 60:.1f} min) | "
                        f"{plain['val_top1']:.2f} (0) | {plain['test_top1']:.2f} | {row['train_top1']:.2f} | "
                        f"{row['img_s']:.1f} | {row['hardware']} |")
    assert row['hardware'] == plain['hardware'] and 'cores' in row['hardware']
    assert lines[3].startswith('| b | `0.5` | ') and f" | - | {row['hardware']} |" not in lines[3]  # its img/s
    assert lines[3].endswith(f" | {row['hardware']} |")
    assert (tmp_path / 'cmp.png').stat().st_size > 0
    (tmp_path / 'b' / 'args.json').write_text('{"cut')
    with pytest.raises(RunError, match='args.json cannot be read'):
        compare_script.compare([str(tmp_path / 'b')])


def test_mixup_feeds_the_loss_the_mixed_batch_and_soft_targets():
    """timm's batch mixup as wired into an epoch, against the formulas: x' = lam x + (1 - lam) flip(x), and targets
    lam y + (1 - lam) flip(y) of label-smoothed one-hots, lam ~ Beta(alpha, alpha) drawn after the mixing coin."""
    import argparse

    from train.distributed import DistEnv
    from train.engine import train_one_epoch

    alpha, smoothing, classes = 0.8, 0.1, 3
    x, y = torch.randn(4, 5), torch.tensor([0, 2, 1, 1])
    seen = {}

    class Recorder(nn.Linear):
        def forward(self, inputs):
            seen['inputs'] = inputs.clone()
            return super().forward(inputs)

    def loss_fn(logits, targets):
        seen['targets'] = targets
        return -(targets * logits.log_softmax(1)).sum(1).mean()

    mixup = train_script._mixup(argparse.Namespace(mixup=alpha, cutmix=0.0, mixup_prob=1.0, mixup_switch_prob=0.5,
                                                   mixup_mode='batch', smoothing=smoothing), classes)
    model = Recorder(5, classes)
    np.random.seed(3)
    np.random.rand()
    lam = np.random.beta(alpha, alpha)
    np.random.seed(3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = train_one_epoch(model, [(x.clone(), y)], optimizer, loss_fn=loss_fn, env=DistEnv(), mixup=mixup)
    one_hot = torch.full((4, classes), smoothing / classes)
    one_hot[torch.arange(4), y] += 1 - smoothing
    torch.testing.assert_close(seen['inputs'], lam * x + (1 - lam) * x.flip(0))
    torch.testing.assert_close(seen['targets'], lam * one_hot + (1 - lam) * one_hot.flip(0))
    assert stats['train_loss'] > 0
    mixup.mixup_enabled = False  # --mixup-off-epoch: the batch goes through as it is, the targets stay smoothed
    train_one_epoch(model, [(x.clone(), y)], optimizer, loss_fn=loss_fn, env=DistEnv(), mixup=mixup)
    torch.testing.assert_close(seen['inputs'], x)
    torch.testing.assert_close(seen['targets'], one_hot)
    with pytest.raises(ValueError, match='need an even number of images per batch; this one has 3'):
        train_one_epoch(model, [(x[:3], y[:3])], optimizer, loss_fn=loss_fn, env=DistEnv(), mixup=mixup)


def test_compare_gives_the_time_to_a_target_with_the_parents_budget(tmp_path, capsys):
    """--target 92: the first epoch at or above it, its own elapsed hours, and the totals with the parent recorded in
    the checkpoint; a run that has not reached it says its best; a bad target is refused."""
    def run(name, val, parent=None):
        folder = tmp_path / name
        folder.mkdir()
        write_summary(folder / 'summary.csv', [dict(epoch=e, val_top1=v, epoch_s=1800.0, elapsed_s=1800.0 * (e + 1),
                                                    img_s=None if parent else 100.0 + 20 * e,
                                                    train_top1=None if parent else 70.0 + 10 * e)
                                               for e, v in enumerate(val)])
        # the warm run recorded --dist-bn at its default, the cold one predates the flag: no column for it; nor for
        # where the data lay, written two ways
        (folder / 'args.json').write_text(json.dumps(dict(lr=0.1, dist_bn='reduce', data_dir='~/data') if parent
                                                     else dict(lr=0.2, data_dir='/root/data', download=True)))
        torch.save(dict(version=2, model_args={}, epoch=len(val) - 1, parent=parent), folder / LAST)
        return str(folder)
    warm = run('warm', [90.0, 91.99, 92.0, 93.1], dict(total_epochs=15, total_wall_time_s=36000.0))
    cold = run('cold', [80.0, 91.5])
    text = compare_script.compare([warm, cold], target=92)
    lines = text.splitlines()
    assert lines[0].endswith('| test top-1 | train top-1, last epoch | median train img/s | trained on | '
                             'time to 92% val top-1 |')
    # epoch 2, 3 x 0.5 h + 10 h; summaries from before the hardware column
    assert lines[2].endswith('| - | not recorded for epochs 0-3 (2.00 h) | 3 epochs, 1.50 h; in all 18 epochs, '
                             '11.50 h |')
    assert lines[3].endswith('| not reached in 2 epochs (best 91.50 at epoch 1) |')
    assert len({line.count('|') for line in lines}) == 1
    # --at-epochs: columns only after those epoch counts (from 1), '-' where a run is shorter; the best still shows
    picked = compare_script.compare([warm, cold], at_epochs=[4, 2, 2]).splitlines()
    assert picked[0] == ('| run | --lr | val top-1 after 2 epochs (elapsed) | val top-1 after 4 epochs (elapsed) | '
                         'best val top-1 (epoch) | test top-1 | train top-1, last epoch | median train img/s | '
                         'trained on |')
    # the warm run's summary predates the train top-1 and img/s columns; the cold one's last train top-1 (80, not
    # the first epoch's 70) and its median img/s of 100 and 120
    assert picked[2].startswith('| warm | `0.1` | 91.99 (60.0 min) | 93.10 (120.0 min) | 93.10 (3) | - | - | - |')
    assert picked[3].startswith('| cold | `0.2` | 91.50 (60.0 min) | - | 91.50 (1) | - | 80.00 | 110.0 |')
    with pytest.raises(SystemExit) as exit_info:
        compare_script.main([warm, '--at-epochs', '0', '15'])
    assert exit_info.value.code == 2 and '--at-epochs 0 is not a number of epochs trained' in capsys.readouterr().err
    alone = compare_script.compare([cold], target=92).splitlines()  # no argument differs: no empty column
    assert alone[0].startswith('| run | val top-1 after epoch 0') and len({line.count('|') for line in alone}) == 1
    with pytest.raises(SystemExit) as exit_info:
        compare_script.main([warm, '--target', '920'])
    assert exit_info.value.code == 2 and '--target 920 is not a top-1 in percent' in capsys.readouterr().err


def test_compare_draws_a_stage_after_the_run_it_started_from():
    """A run started from another's weights is drawn after the epochs and hours behind them: from its checkpoint's
    parent, or, for a record without checkpoint (docs/runs), from its results' lineage; a run from scratch at
    its own."""
    stage = dict(parent=dict(total_epochs=6, total_wall_time_s=7200.0),
                 rows=[dict(epoch=0, val_top1=36.0, elapsed_s=1800.0), dict(epoch=1, val_top1=38.0, elapsed_s=3600.0)])
    assert compare_script.curve(stage) == ([7, 8], [2.5, 3.0], [36.0, 38.0])
    assert compare_script.curve(dict(stage, parent=None)) == ([1, 2], [0.5, 1.0], [36.0, 38.0])
    record = compare_script._load(str(ROOT / 'docs' / 'runs' / 'tin-pilot-r18spa-64-e1'))  # no last.pth.tar
    parent = json.loads((ROOT / 'docs' / 'runs' / 'tin-pilot-r18spa-32-e6' / 'results.json').read_text())
    assert compare_script.curve(record)[0] == [parent['epochs'] + 1]


# docs/training.md's comparisons of runs, each from the records (args.json, summary.csv, results.json) of the runs
# behind it: the CIFAR-10 recipes (v1 again, the v2 pilot, the v2 release run), the four v2 release runs, the
# Tiny-ImageNet pilot and its release run
CIFAR10_AT = dict(target=92, at_epochs=[5, 10, 15, 20, 25, 30])
RUN_COMPARISONS = {  # figure: (the runs, train.compare's options)
    'docs/figures/v2_pilot_cpu.png': (('docs/runs/v1-rerun-r18spa-e15', 'docs/runs/v2-pilot-r18spa-e15',
                                       'docs/runs/cifar10-v2-e30/v2-resnet18_spa-e30'), CIFAR10_AT),
    'docs/figures/v2_releases_cpu.png': (tuple(f'docs/runs/cifar10-v2-e30/v2-resnet18_{block}-e30'
                                               for block in ('spa', 'cifar', 'nl', 'gc')), CIFAR10_AT),
    'docs/figures/tin_pilot_cpu.png': (('docs/runs/tin-pilot-r18spa-32-e6', 'docs/runs/tin-pilot-r18spa-64-e1'), {}),
    'docs/figures/tin_release_cpu.png': (('docs/runs/tin-pilot-r18spa-32-e6', 'docs/runs/tin-pilot-r18spa-64-e1',
                                          'docs/runs/tin-v2-resnet18_spa-32-e26',
                                          'docs/runs/tin-v2-resnet18_spa-64-e4'),
                                         dict(target=50, at_epochs=[1, 4, 6, 13, 26])),
}


@pytest.mark.parametrize('figure', RUN_COMPARISONS)
def test_run_comparisons_are_what_train_compare_prints_from_the_committed_runs(figure):
    """No number of those tables typed by hand: docs/training.md shows train.compare's output for the committed
    runs."""
    runs, options = RUN_COMPARISONS[figure]
    table = compare_script.compare([str(ROOT / run) for run in runs], **options)
    assert table in (ROOT / 'docs' / 'training.md').read_text(), 'paste the output of train.compare into the page'
    assert (ROOT / figure).is_file()


@pytest.mark.parametrize('bf16, kernels, native', [
    pytest.param(True, True, True, id='avx512_bf16', marks=pytest.mark.slow),  # 16x slower where bf16 is emulated
    pytest.param(False, False, False, id='avx2_only'),
    pytest.param(True, False, False, id='avx512_bf16_with_avx2_kernels')])
def test_amp_uses_bfloat16_only_on_a_cpu_that_has_it(folder_data, tmp_path, monkeypatch, capsys, bf16, kernels,
                                                     native):
    flags = dict(avx2=True, avx512=bf16, avx512_bf16=bf16, amx=False, avx512_kernels=kernels)
    monkeypatch.setattr(precision, 'cpu_flags', lambda: flags)
    assert precision.resolve_amp_dtype(True, None, torch.device('cpu'))[0] == ('bfloat16' if native else None)
    forced, warning = precision.resolve_amp_dtype(False, 'bfloat16', torch.device('cpu'))
    assert forced == 'bfloat16' and (warning is None) == native
    results = _run(folder_data, tmp_path / 'run', '--epochs', '1', '--amp', '--channels-last')
    out = capsys.readouterr().out
    assert results['precision']['train'] == ('bfloat16 autocast' if native else 'float32')
    assert results['precision']['cpu_flags'] == flags
    assert out.count('no native bfloat16') == (0 if native else 1)
    assert all(torch.isfinite(v).all() for v in load_file(tmp_path / 'run' / BEST).values())


@pytest.mark.slow
@pytest.mark.skipif(platform.machine().lower() not in ('x86_64', 'amd64'), reason='an x86 switch')
def test_torch_limited_to_avx2_kernels_trains_in_float32():
    # torch's own switch, in a fresh process: an AVX-512 CPU told to compute like an AVX2-only one
    code = ('import torch; from train.precision import cpu_flags, resolve_amp_dtype; '
            'print(cpu_flags()["avx512_kernels"], resolve_amp_dtype(True, None, torch.device("cpu")))')
    done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, ATEN_CPU_CAPABILITY='avx2'))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('False (None, ') and 'no native bfloat16' in done.stdout


def test_float32_evaluation_switches_tf32_off_and_back():
    # "test split evaluated in float32" must hold on CUDA, where cuDNN convolutions default to TF32: a run on an
    # H200 reported its test top-1 with TF32 convolutions before this (the flags only act on CUDA, so a CPU
    # model can record what the forward ran under)
    from train.distributed import DistEnv
    from train.engine import evaluate

    class Recorder(nn.Linear):
        def forward(self, x):
            seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                         torch.is_autocast_enabled('cpu')))
            return super().forward(x)

    seen, saved = [], (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    batches = [(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))]
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        evaluate(Recorder(3, 3), batches, DistEnv(), None)
        assert seen[-1] == (False, False, False)
        assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
        evaluate(Recorder(3, 3), batches, DistEnv(), 'bfloat16')  # autocast: TF32 left as the user set it
        assert seen[-1] == (True, True, True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.slow
def test_torchcompile_trains_and_keeps_plain_checkpoint_keys(folder_data, tmp_path):
    # the model's code compiled at another input size first (in this process): --torchcompile must not then
    # fall into dynamic shapes, which inductor fails on for CPU bmm in torch 2.14
    torch.compile(timm.create_model('resnet18_spa', num_classes=4))(torch.randn(2, 3, 32, 32))
    results = _run(folder_data, tmp_path / 'run', '--epochs', '1', '--torchcompile')
    state = load_training_state(tmp_path / 'run' / LAST)
    assert not any(k.startswith('_orig_mod.') for k in state['state_dict'])
    assert results['args']['torchcompile'] == 'inductor'


def test_class_count_must_match(folder_data, tmp_path, capsys):
    err = _fails(capsys, TINY + ['--data-dir', str(folder_data), '--output', str(tmp_path / 'run'),
                                 '--num-classes', '10'], code=1)
    assert '--num-classes 10 disagrees with the data set: ' in err and 'has 4 classes' in err


def test_missing_data_directory(tmp_path, capsys):
    err = _fails(capsys, TINY + ['--data-dir', str(tmp_path / 'absent'), '--output', str(tmp_path / 'run')], code=1)
    assert 'expected train/ and test/' in err


def test_corrupt_checkpoint_and_foreign_weights(folder_data, tmp_path, capsys):
    out = tmp_path / 'run'
    _run(folder_data, out, '--epochs', '1')
    (out / LAST).write_bytes((out / LAST).read_bytes()[:1000])
    err = _fails(capsys, ['--resume', str(out)], code=1)
    assert 'cannot read checkpoint' in err and 'last.pth.tar' in err and 'corrupt' in err
    with pytest.raises(SystemExit):
        validate_script.main(['--model', 'resnet18_nl', '--checkpoint', str(out / BEST), '--dataset', 'folder',
                              '--data-dir', str(folder_data), '--val-size', '8', '--img-size', '16'])
    err = capsys.readouterr().err
    assert 'does not match resnet18_nl: missing' in err and 'unexpected' in err


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(folder_data, tmp_path):
    common = TINY + ['--data-dir', str(folder_data), '--epochs', '3', '-b', '4', '--log-interval', '1',
                     '--model-ema', '--sched-on-updates', '--warmup-epochs', '1']
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

    resumed = _cli('train', '--resume', str(killed))  # its own arguments: nothing else on the command line
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert 'resumed' in resumed.stdout
    a, b = torch.load(straight / LAST, weights_only=True), torch.load(killed / LAST, weights_only=True)
    for part in ('state_dict', 'state_dict_ema'):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    first, second = (json.loads((d / 'results.json').read_text()) for d in (straight, killed))
    assert first['test_top1'] == second['test_top1'] and first['best_epoch'] == second['best_epoch']
    assert first['run_id'] != second['run_id'] and second['run_id'] == b['run_id']
    assert (straight / 'summary.csv').read_text().count('\n') == (killed / 'summary.csv').read_text().count('\n')


def _train_until(argv, line_start: str, sig=signal.SIGKILL) -> str:
    """Start `python -m train argv`, send `sig` when it prints a line starting with `line_start`; its output."""
    proc = subprocess.Popen([sys.executable, '-m', 'train', *argv], cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1'),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith(line_start):
            proc.send_signal(sig)
            break
    out.append(proc.stdout.read())
    proc.wait(timeout=60)
    assert proc.returncode in (-sig, 128 + sig), ''.join(out)
    return ''.join(out)


def test_random_streams_survive_a_weights_only_checkpoint(tmp_path):
    """What a recovery checkpoint stores of torch's, numpy's and Python's random streams loads with
    weights_only=True and puts each stream back where it was."""
    import random

    import numpy as np

    from train.engine import rng_state, set_rng_state
    torch.save(dict(rng=rng_state()), tmp_path / 'rng.pth.tar')
    drawn = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    set_rng_state(torch.load(tmp_path / 'rng.pth.tar', weights_only=True)['rng'])
    again = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(drawn[0], again[0]) and np.array_equal(drawn[1], again[1]) and drawn[2] == again[2]


@pytest.mark.slow
def test_recovery_interval_resumes_inside_an_epoch_as_if_never_stopped(folder_data, tmp_path):
    """--recovery-interval: a run SIGKILLed in the middle of epoch 0 (nothing but the recovery file saved), and
    SIGTERMed in the middle of epoch 1, ends with the weights, EMA and per-epoch numbers of the run never stopped:
    batches, augmentation (RandAugment and random erasing in two loader workers), mixup/cutmix (in the main
    process) and dropout draw exactly what they drew there."""
    common = TINY + ['--data-dir', str(folder_data), '--epochs', '2', '-b', '4', '--log-interval', '1',
                     '--model-ema', '--sched-on-updates', '--warmup-epochs', '1', '--workers', '2',
                     '--model-kwargs', 'drop_rate=0.5', '--aa', 'rand-m9-mstd0.5', '--reprob', '0.5',
                     '--mixup', '0.4', '--cutmix', '1.0']
    straight, killed = tmp_path / 'straight', tmp_path / 'killed'
    assert _cli('train', *common, '--output', str(straight)).returncode == 0

    argv = [*common, '--output', str(killed), '--recovery-interval', '3']
    _train_until(argv, 'epoch 0 step 5/')
    assert not (killed / LAST).exists()
    recovery = torch.load(killed / RECOVERY, weights_only=True)
    assert (recovery['epoch'], recovery['recovery']['step']) == (0, 3)
    resumed = _train_until(['--resume', str(killed)], 'epoch 1 step 8/', signal.SIGTERM)
    assert 'resumed' in resumed and 'after its step 3 of 10 (recovery.pth.tar)' in resumed, resumed
    assert f'`python -m train --resume {killed}` continues it from recovery.pth.tar.' in resumed
    assert 'epoch 0 step 3/' not in resumed and 'epoch 0 step 4/' in resumed  # steps 1-3 were not trained again
    recovery = torch.load(killed / RECOVERY, weights_only=True)
    assert (recovery['epoch'], recovery['recovery']['step']) == (1, 6)
    assert torch.load(killed / LAST, weights_only=True)['epoch'] == 0

    finished = _cli('train', '--resume', str(killed))
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert not (killed / RECOVERY).exists()  # the epoch's own checkpoint replaced it
    a, b = torch.load(straight / LAST, weights_only=True), torch.load(killed / LAST, weights_only=True)
    for part in ('state_dict', 'state_dict_ema', 'optimizer'):
        assert str(a[part].keys()) == str(b[part].keys())
    for part in ('state_dict', 'state_dict_ema'):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    same = ('epoch', 'lr', 'train_loss', 'train_top1', 'val_loss', 'val_top1', 'val_top5', 'precision')
    rows = [[{k: row[k] for k in same} for row in read_summary(d / 'summary.csv')] for d in (straight, killed)]
    assert rows[0] == rows[1] and len(rows[0]) == 2
    first, second = (json.loads((d / 'results.json').read_text()) for d in (straight, killed))
    assert first['test_top1'] == second['test_top1'] and first['best_epoch'] == second['best_epoch']


@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo(folder_data, tmp_path):
    out = tmp_path / 'ddp'
    done = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--standalone', '-m', 'train',
         *TINY, '--data-dir', str(folder_data), '--epochs', '1', '--output', str(out)],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / 'results.json').read_text())
    assert results['world_size'] == 2
    assert results['dataset']['test_images'] == 16  # reduced across ranks, every image once
    assert done.stdout.count('test top-1') == 1  # only rank 0 reports and writes


BN_PROBE = """
import json, os, sys
from train import train as train_script
from train.distributed import gather_to_main
real, spread = train_script.evaluate, []

def evaluate(model, loader, env, *args, **kwargs):  # every rank's BatchNorm statistics, as it evaluates
    stats = {k: v.detach().clone() for k, v in model.named_buffers() if 'running_' in k}
    ranks = gather_to_main(stats, env)
    if env.is_main:
        spread.append(max((a[k] - b[k]).abs().max().item() for a in ranks for b in ranks for k in a))
    return real(model, loader, env, *args, **kwargs)

train_script.evaluate = evaluate
train_script.main(sys.argv[2:])
if os.environ['RANK'] == '0':
    json.dump(spread, open(sys.argv[1], 'w'))
"""


@pytest.mark.slow
@pytest.mark.parametrize('dist_bn', ['reduce', 'broadcast', ''])
def test_ddp_ranks_evaluate_and_save_one_set_of_batch_norm_statistics(folder_data, tmp_path, dist_bn):
    """Under torchrun (2 gloo processes), timm's --dist-bn: every rank holds the same BatchNorm statistics when it
    evaluates (the EMA's too), and the validation top-1 the run recorded is what its saved weights give on one
    process. With --dist-bn '' each rank keeps its own, which is what this test catches."""
    (tmp_path / 'probe.py').write_text(BN_PROBE)
    out = tmp_path / 'ddp'
    done = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--standalone',
         str(tmp_path / 'probe.py'), str(tmp_path / 'spread.json'), *TINY, '--data-dir', str(folder_data),
         '--epochs', '2', '--model-ema', '--model-ema-decay', '0.5', '--dist-bn', dist_bn, '--output', str(out)],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    spread = json.loads((tmp_path / 'spread.json').read_text())
    assert len(spread) == 3  # two validations, one test
    if not dist_bn:
        assert max(spread[:2]) > 0  # the ranks saw different shards: their statistics differ
        return
    assert spread == [0.0, 0.0, 0.0]
    results = json.loads((out / 'results.json').read_text())
    again = validate_script.main(['--run', str(out), '--split', 'val', '--workers', '0'])
    assert again['images'] == results['dataset']['val_images'] and again['top1'] == results['val_top1']


@pytest.mark.slow
def test_ddp_recovery_resumes_with_as_many_processes(folder_data, tmp_path, capsys):
    """Two gloo processes stopped inside epoch 1 resume from the recovery checkpoint (each rank its own totals and
    random streams) to the weights of the run never stopped; one process is refused, naming the count."""
    def torchrun(*argv):  # --standalone: a free port of its own, so that tests running at once never share one
        return [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--standalone', '-m', 'train',
                *argv]
    common = [*TINY, '--data-dir', str(folder_data), '--epochs', '2', '-b', '4', '--log-interval', '1',
              '--model-ema', '--model-kwargs', 'drop_rate=0.5']
    straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
    done = subprocess.run(torchrun(*common, '--output', str(straight)), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    proc = subprocess.Popen(torchrun(*common, '--output', str(stopped), '--recovery-interval', '2'), cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith('epoch 1 step 3/'):
            proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
            break
    proc.communicate(timeout=120)
    recovery = torch.load(stopped / RECOVERY, weights_only=True)
    assert (recovery['epoch'], recovery['recovery']['step'], recovery['recovery']['world_size']) == (1, 2, 2)
    assert len(recovery['recovery']['ranks']) == 2

    err = _fails(capsys, ['--resume', str(stopped)], code=1)
    assert 'by 2 process(es), and this is 1' in err and 'torchrun --nproc_per_node 2' in err
    done = subprocess.run(torchrun('--resume', str(stopped)), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'after its step 2 of 5 (recovery.pth.tar)' in done.stdout
    a, b = torch.load(straight / LAST, weights_only=True), torch.load(stopped / LAST, weights_only=True)
    for part in ('state_dict', 'state_dict_ema'):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert [row['train_loss'] for row in read_summary(straight / 'summary.csv')] == \
        [row['train_loss'] for row in read_summary(stopped / 'summary.csv')]


@pytest.mark.slow
def test_ddp_divergence_stops_every_rank(folder_data, tmp_path):
    done = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--standalone', '-m', 'train',
         *TINY, '--data-dir', str(folder_data), '--epochs', '2', '--lr', '1e12', '--output', str(tmp_path / 'ddp')],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and 'training diverged' in done.stderr


def test_a_run_destroys_only_the_process_group_it_created(monkeypatch):
    """A sweep creates the group once; its runs must leave it alive (a re-created group can hang on stale keys)."""
    import torch.distributed as dist

    from train.distributed import cleanup, init_distributed
    real_init, created = dist.init_process_group, []

    def one_process_group(backend):  # stands in for torchrun's rendezvous: a group of one on a private store
        created.append(backend)
        real_init(backend, store=dist.HashStore(), rank=0, world_size=1)

    monkeypatch.setattr(dist, 'init_process_group', one_process_group)
    monkeypatch.setenv('WORLD_SIZE', '2')
    sweep_env = init_distributed('cpu')
    try:
        run_env = init_distributed('cpu')
        assert created == ['gloo'] and sweep_env.owns_group and not run_env.owns_group
        cleanup(run_env)
        assert dist.is_initialized()
    finally:
        cleanup(sweep_env)
    assert not dist.is_initialized()


@pytest.mark.slow
def test_a_run_directory_has_one_owner_and_a_killed_owner_does_not_block_resume(folder_data, tmp_path):
    """A second process on a training run's folder is refused naming the first; SIGKILL frees the folder."""
    run = tmp_path / 'run'
    common = TINY + ['--data-dir', str(folder_data), '--epochs', '3', '-b', '4', '--log-interval', '1']
    first = subprocess.Popen([sys.executable, '-m', 'train', *common, '--output', str(run)], cwd=ROOT,
                             env=dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1'),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:
            if line.startswith('epoch 1 step 2/'):
                first.send_signal(signal.SIGSTOP)  # mid-epoch, holding the folder, for as long as the test needs
                break
        run_id = json.loads((run / 'args.json').read_text())['run_id']
        for argv in (['--output', str(run)], ['--output', str(run), '--overwrite'], ['--resume', str(run)]):
            second = _cli('train', *common, *argv) if argv[0] == '--output' else _cli('train', *argv)
            assert second.returncode == 1, second.stdout + second.stderr
            assert f'is in use by process {first.pid} on ' in second.stderr and 'Traceback' not in second.stderr
            assert json.loads((run / 'args.json').read_text())['run_id'] == run_id  # the first run's, untouched
    finally:
        first.kill()
        first.wait(timeout=60)
    with RunDir(run).lock():  # the kernel dropped the killed process's lock: --resume may take it
        pass


def test_a_failed_start_leaves_no_folder_behind(folder_data, tmp_path, capsys):
    out = tmp_path / 'never'
    _fails(capsys, TINY + ['--data-dir', str(tmp_path / 'no-data'), '--output', str(out)], code=1)
    assert not out.exists()


def test_the_test_split_is_measured_only_on_this_runs_weights(folder_data, tmp_path):
    """The final reload checks the run id and epoch of model_best.safetensors, so a file another process wrote
    there can never be reported as this run's test number."""
    run = tmp_path / 'run'
    results = _run(folder_data, run, '--epochs', '1')
    model = timm.create_model('resnet18_spa', num_classes=4)
    RunDir(run).load_best(model, results['run_id'], results['best_epoch'], 'resnet18_spa')
    for run_id, epoch in (('another-run', results['best_epoch']), (results['run_id'], results['best_epoch'] + 1)):
        with pytest.raises(RunError, match='another process wrote into'):
            RunDir(run).load_best(model, run_id, epoch, 'resnet18_spa')


@pytest.mark.slow
def test_initial_checkpoint_starts_from_given_weights_and_records_the_lineage(folder_data, tmp_path, capsys):
    """--initial-checkpoint (timm's flag): a run, a repository folder or a bare file; fresh optimizer and
    schedule; the parent's ids, epochs and hours go into results.json, chained over generations."""
    from hub.export import export_run
    from train.lineage import describe, load_initial_checkpoint
    first = _run(folder_data, tmp_path / 'first', '--epochs', '1')
    assert first['lineage'] is None
    model = timm.create_model('resnet18_spa', num_classes=4)
    parent = load_initial_checkpoint(model, str(tmp_path / 'first'), 'resnet18_spa')
    saved = load_file(tmp_path / 'first' / BEST)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert parent['run_id'] == first['run_id'] and parent['total_epochs'] == 1

    # at a smaller image size: progressive resizing, whose schedule the child's card states
    second = _run(folder_data, tmp_path / 'second', '--epochs', '2', '--initial-checkpoint', str(tmp_path / 'first'),
                  '--img-size', '8')
    lineage = second['lineage']
    assert lineage['parent']['run_id'] == first['run_id'] and lineage['parent']['epochs'] == 1
    assert lineage['parent']['image_size'] == 16 and second['dataset']['image_size'] == 8
    assert lineage['parent']['args'] == first['args']  # its recipe, which the child's card shows where it differs
    assert lineage['total_epochs'] == 3 and lineage['totals_known']
    assert lineage['total_wall_time_s'] == pytest.approx(first['wall_time_s'] + second['wall_time_s'])
    assert torch.load(tmp_path / 'second' / LAST, weights_only=True)['optimizer']['state'] != {}  # its own, fresh
    # a grandchild from the exported repository: the totals add up over generations
    repo = export_run(str(tmp_path / 'second'), str(tmp_path / 'repo'))
    third = _run(folder_data, tmp_path / 'third', '--epochs', '1', '--initial-checkpoint', str(repo))
    assert third['lineage']['parent']['run_id'] == second['run_id'] and third['lineage']['total_epochs'] == 4
    card = (export_run(str(tmp_path / 'third'), str(tmp_path / 'repo3')) / 'README.md').read_text()
    assert f"run_id `{second['run_id']}`" in card and 'In all: 4 epochs (3 before this run, 1 in it)' in card
    assert 'the initial weights were trained at 8 x 8 pixels, this run at 16 x 16' in card
    assert describe(RunDir(tmp_path / 'third').read_results()) == \
        f"from run {second['run_id']}, 3 epochs, the last 2 at 8x8; + 1 = 4 epochs"
    assert describe(RunDir(tmp_path / 'second').read_results()) == \
        f"from run {first['run_id']}, 1 epochs at 16x16; + 2 = 3 epochs"
    second_card = (export_run(str(tmp_path / 'second'), str(tmp_path / 'repo2')) / 'README.md').read_text()
    assert 'trained at 16 x 16 pixels, this run at 8 x 8' in second_card
    assert '| `epochs` | `1` | `2` |' in second_card and '| `img_size` | `16` | `8` |' in second_card
    # a bare weights file: its run id from the metadata, the epochs before it unknown (and said so)
    bare = _run(folder_data, tmp_path / 'bare', '--epochs', '1', '--initial-checkpoint',
                str(tmp_path / 'first' / BEST))
    assert bare['lineage']['parent']['run_id'] == first['run_id'] and not bare['lineage']['totals_known']
    # resuming a finished run keeps its lineage (the parent is not read again)
    shutil.rmtree(tmp_path / 'first')
    resumed = subprocess.run([sys.executable, '-m', 'train', '--resume', str(tmp_path / 'second')], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads((tmp_path / 'second' / 'results.json').read_text())['lineage']
    assert again['parent'] == lineage['parent'] and again['total_epochs'] == lineage['total_epochs']


def test_initial_checkpoint_refuses_what_it_cannot_start_from(folder_data, tmp_path, capsys):
    base = TINY + ['--data-dir', str(folder_data), '--epochs', '1']
    err = _fails(capsys, base + ['--output', str(tmp_path / 'a'), '--pretrained', '--initial-checkpoint', 'x'])
    assert '--pretrained and --initial-checkpoint both choose the initial weights' in err
    err = _fails(capsys, base + ['--output', str(tmp_path / 'b'), '--initial-checkpoint', 'nowhere.safetensors'],
                 code=1)
    assert '--initial-checkpoint nowhere.safetensors: no such file or folder' in err and 'resnet18_spa.cifar10' in err
    other = tmp_path / 'gc'
    train_script.main(TINY + ['--data-dir', str(folder_data), '--epochs', '1', '--output', str(other), '--model',
                              'resnet18_gc'])
    capsys.readouterr()
    err = _fails(capsys, base + ['--output', str(tmp_path / 'c'), '--initial-checkpoint', str(other)], code=1)
    assert f'--initial-checkpoint {other}: checkpoint' in err and 'does not match resnet18_spa' in err
    assert not (tmp_path / 'c').exists()


@pytest.mark.slow
def test_initial_checkpoint_from_a_served_repository(folder_data, tmp_path):
    """hf-hub:ORG/NAME through HF_ENDPOINT (a releases folder served by `hub serve`): the parent's repo id is
    recorded."""
    from hub.export import export_run
    from hub.push import publish
    from hub.releases import released_repositories
    from hub.serve import HubServer, by_layout
    parent = _run(folder_data, tmp_path / 'parent', '--epochs', '1')
    repo = export_run(str(tmp_path / 'parent'), str(tmp_path / 'repo'), 'someone/resnet18_spa.folder')
    publish(str(repo), 'someone/resnet18_spa.folder', releases=str(tmp_path / 'releases'))
    with HubServer(by_layout(released_repositories(tmp_path / 'releases'))) as server:
        env = dict(os.environ, HF_ENDPOINT=server.endpoint, HF_HOME=str(tmp_path / 'hf'), OMP_NUM_THREADS='1')
        env.pop('HF_HUB_OFFLINE', None)
        done = subprocess.run([sys.executable, '-m', 'train', *TINY, '--data-dir', str(folder_data), '--epochs', '1',
                               '--output', str(tmp_path / 'child'), '--initial-checkpoint',
                               'hf-hub:someone/resnet18_spa.folder'], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lineage = json.loads((tmp_path / 'child' / 'results.json').read_text())['lineage']
    assert lineage['parent']['repo_id'] == 'someone/resnet18_spa.folder'
    assert lineage['parent']['run_id'] == parent['run_id'] and lineage['total_epochs'] == 2


def test_one_checkpoint_format_key(tmp_path):
    """timm's `version` is the one format key, and a checkpoint without it is refused by name."""
    from train.checkpoint import CHECKPOINT_VERSION, CheckpointError, save_training_state
    state = dict(state_dict={'w': torch.zeros(1)}, epoch=0, model_args={'model': 'm'}, run_id='r')
    save_training_state(tmp_path / 'new.pth.tar', state)
    raw = torch.load(tmp_path / 'new.pth.tar', weights_only=True)
    assert raw['version'] == CHECKPOINT_VERSION == 2 and load_training_state(tmp_path / 'new.pth.tar')['run_id'] == 'r'
    torch.save(dict(state, version=1), tmp_path / 'other.pth.tar')
    with pytest.raises(CheckpointError, match='is not a timm-spa training checkpoint'):
        load_training_state(tmp_path / 'other.pth.tar')


STOPPED_CLOCK = """
import sys, time
from train.clock import stopped_seconds
stopped_seconds()
print('ticking', flush=True)
sys.setswitchinterval(30)  # the main thread keeps the GIL: the ticking thread is late, but nothing was stopped
deadline = time.monotonic() + 4
while time.monotonic() < deadline:
    pass
sys.setswitchinterval(0.005)
time.sleep(1)
print('starved', stopped_seconds(), flush=True)
time.sleep(10)
print('stopped', stopped_seconds(), flush=True)
"""


def _stop_for(proc: subprocess.Popen, seconds: float) -> None:
    proc.send_signal(signal.SIGSTOP)
    time.sleep(seconds)
    proc.send_signal(signal.SIGCONT)


@pytest.mark.slow
def test_stopped_time_counts_a_sigstop_and_not_a_starved_thread():
    proc = subprocess.Popen([sys.executable, '-c', STOPPED_CLOCK], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line.split())
        if line.startswith('starved'):
            time.sleep(1)
            _stop_for(proc, 4)
    assert proc.wait(timeout=60) == 0
    assert lines[1] == ['starved', '0'] and 3 <= float(lines[2][1]) <= 6, lines


@pytest.mark.slow
def test_a_run_stopped_and_continued_leaves_the_stop_out_of_its_hours(folder_data, tmp_path):
    """SIGSTOP for 5 s in epoch 0: summary.csv, results.json and the card count the time the run ran, and say
    how long it was stopped."""
    out = tmp_path / 'run'
    proc = subprocess.Popen([sys.executable, '-m', 'train', *TINY, '--data-dir', str(folder_data), '--epochs', '2',
                             '-b', '4', '--log-interval', '1', '--output', str(out)], cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1'),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith('epoch 0 step 2/'):
            _stop_for(proc, 5)
    assert proc.wait(timeout=120) == 0
    rows = read_summary(out / 'summary.csv')
    results = RunDir(out).read_results()
    assert 4 <= rows[0]['stopped_s'] <= 7 and rows[1]['stopped_s'] < 1, rows
    assert rows[0]['train_s'] < rows[0]['epoch_s'], rows  # steps (so images/s) leave the stop out as well
    assert rows[1]['elapsed_s'] == pytest.approx(rows[0]['epoch_s'] + rows[1]['epoch_s'])
    assert rows[0]['stopped_s'] <= results.stopped_s <= rows[0]['stopped_s'] + 1
    assert results.wall_time_s >= rows[1]['elapsed_s']
    model = timm.create_model('resnet18_spa', num_classes=4)
    card = model_card(results, 'timm-spa/resnet18_spa.folder', model)
    assert f'leaves out {results.stopped_s / 3600:.2f} h ({results.stopped_s:.0f} s)' in card


def test_a_summary_from_before_the_stopped_column_resumes_and_says_so(tiny_run, tmp_path, capsys):
    """A run whose summary.csv has no stopped_s column (an earlier version): the column is blank (NaN) for its
    epochs, and results and card say the stopped time is not known."""
    path = tmp_path / 'summary.csv'
    write_summary(path, [dict(epoch=0, epoch_s=1.5, precision='float32')])
    write_summary(path, read_summary(path) + [dict(epoch=1, epoch_s=2.0, precision='float32', stopped_s=0.5)])
    rows = read_summary(path)
    assert math.isnan(rows[0]['stopped_s']) and rows[1]['stopped_s'] == 0.5 and rows[1]['epoch_s'] == 2.0
    run = Path(shutil.copytree(tiny_run, tmp_path / 'old'))
    old = [{k: v for k, v in row.items() if k != 'stopped_s'} for row in read_summary(run / 'summary.csv')]
    (run / 'summary.csv').unlink()
    write_summary(run / 'summary.csv', old)
    assert train_script.main(['--resume', str(run)]) is not None  # a finished run: evaluated again
    results = RunDir(run).read_results()
    assert results.stopped_s is None
    card = model_card(results, 'timm-spa/resnet18_spa.folder', timm.create_model('resnet18_spa', num_classes=4))
    assert 'was not measured for every epoch' in card



def test_a_run_resumed_on_another_machine_records_each_machine_with_its_epochs(folder_data, tmp_path, monkeypatch):
    """Epoch 0 on one machine, then Ctrl-C, then epoch 1 resumed on another: summary.csv names each epoch's
    machine, and results and card list both with their epochs and hours, not only the machine that finished."""
    run, calls = tmp_path / 'run', []
    real_evaluate = train_script.evaluate

    def evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the validation pass of epoch 1
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    argv = [*TINY, '--data-dir', str(folder_data), '--epochs', '2', '--output', str(run)]
    with monkeypatch.context() as patched:
        patched.setattr(train_script, 'hardware', lambda device, world_size: 'CPU A (2 cores; AVX2 only)')
        patched.setattr(train_script, 'evaluate', evaluate)
        with pytest.raises(SystemExit):
            train_script.main(argv)
    monkeypatch.setattr(train_script, 'hardware', lambda device, world_size: 'CPU B (8 cores; AMX)')
    train_script.main(['--resume', str(run)])
    rows = read_summary(run / 'summary.csv')
    assert [r['hardware'] for r in rows] == ['CPU A (2 cores; AVX2 only)', 'CPU B (8 cores; AMX)']
    results = RunDir(run).read_results()
    assert results.hardware == (f"CPU A (2 cores; AVX2 only) for epoch 0 ({rows[0]['epoch_s'] / 3600:.2f} h); "
                                f"CPU B (8 cores; AMX) for epoch 1 ({rows[1]['epoch_s'] / 3600:.2f} h)")
    card = model_card(results, 'timm-spa/resnet18_spa.folder', timm.create_model('resnet18_spa', num_classes=4))
    assert f'- Hardware: {results.hardware}; 1 process(es)' in card


def test_hardware_names_the_cpu_arithmetic_and_a_run_lists_its_machines_in_order():
    from train.precision import cpu_capability
    from train.report import hardware_record
    no = dict(avx2=False, avx512=False, avx512_bf16=False, amx=False, avx512_kernels=False)
    assert cpu_capability(dict(no, avx2=True)) == 'AVX2 only'
    assert cpu_capability(dict(no, avx2=True, avx512=True, avx512_kernels=True)) == 'AVX-512'
    assert cpu_capability(dict(no, avx2=True, avx512=True, avx512_bf16=True, avx512_kernels=True)) == 'AVX-512-BF16'
    assert cpu_capability(dict(no, avx2=True, avx512=True, avx512_bf16=True, amx=True, avx512_kernels=True)) == 'AMX'
    assert cpu_capability(dict(no, avx2=True, avx512=True, amx=True)) == 'AVX2 kernels (AVX-512 switched off)'
    assert cpu_capability(dict(mkldnn_bf16=True)) == 'native bfloat16'
    rows = [dict(epoch=0, epoch_s=3600.0, hardware=''), dict(epoch=1, epoch_s=1800.0),  # from before the column
            dict(epoch=2, epoch_s=900.0, hardware='A'), dict(epoch=3, epoch_s=900.0, hardware='A'),
            dict(epoch=4, epoch_s=36.0, hardware='B'), dict(epoch=5, epoch_s=72.0, hardware='A')]
    assert hardware_record(rows) == ('not recorded for epochs 0-1 (1.50 h); A for epochs 2-3 (0.50 h); '
                                     'B for epoch 4 (0.01 h); A for epoch 5 (0.02 h)')
    assert hardware_record(rows[2:4]) == 'A'
    assert hardware_record(rows[:2]) == 'not recorded for epochs 0-1 (1.50 h)'


@pytest.mark.slow
@pytest.mark.parametrize('sig, ignored', [(signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGHUP, True)],
                         ids=['SIGTERM', 'SIGHUP', 'SIGHUP-under-nohup'])
def test_sigterm_and_sighup_stop_a_run_with_how_to_resume(folder_data, tmp_path, sig, ignored):
    """kill, timeout, systemd or a closed terminal: one line saying how to resume, exit 128 + the signal, the
    folder free and resumable; under nohup (SIGHUP ignored) the run carries on."""
    run = tmp_path / 'run'
    hup = signal.SIG_IGN if ignored else signal.SIG_DFL  # as asked, whatever this process inherited (nohup ignores it)
    proc = subprocess.Popen([sys.executable, '-m', 'train', *TINY, '--data-dir', str(folder_data), '--epochs', '2',
                             '-b', '4', '--log-interval', '1', '--output', str(run)], cwd=ROOT,
                            env=dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1'), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, hup))
    for line in proc.stdout:
        if line.startswith('epoch 1 step 2/'):
            proc.send_signal(sig)
    err = proc.stderr.read()
    if ignored:
        assert proc.wait(timeout=120) == 0 and (run / 'results.json').is_file(), err
        return
    assert proc.wait(timeout=120) == 128 + sig, err
    assert err.strip() == (f'python -m train: interrupted ({signal.Signals(sig).name}): `python -m train --resume '
                           f'{run}` continues it from last.pth.tar.'), err
    assert torch.load(run / LAST, weights_only=True)['epoch'] == 0 and not (run / 'results.json').exists()
    resumed = _cli('train', '--resume', str(run))
    assert resumed.returncode == 0 and (run / 'results.json').is_file(), resumed.stdout + resumed.stderr
