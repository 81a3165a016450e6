"""Sweeps: the table definitions, a two-cell two-seed sweep on the embedded digits data, resuming a killed sweep,
refusing runs made with other arguments, and the report beside the paper."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from conftest import ROOT

from timm_spa import paper
from timm_spa.models import MODEL_NAMES
from train import sweep
from train.cli import UsageError
from train.run_dir import RunError

# the embedded digits at their native 8x8, one epoch: a few dozen steps per run
TINY = ['--dataset', 'digits', '--img-size', '8', '-b', '64', '--epochs', '1', '--workers', '0', '--log-interval', '0',
        '--no-progress']


def _count(cell: sweep.Cell, num_classes: int = 10) -> int:
    model = timm.create_model(cell.model, num_classes=num_classes, **cell.model_kwargs)
    return sum(p.numel() for p in model.parameters())


def test_table1_is_the_ten_models_of_the_paper():
    cells = sweep.table1()
    assert [c.model for c in cells] == list(MODEL_NAMES) and all(c.model_kwargs == {} for c in cells)
    for cell in cells:
        assert cell.paper == paper.TOP1[cell.model]
        assert round(_count(cell) / 1e6, 3) == pytest.approx(paper.PARAMS_M[cell.model], abs=0.03)  # SE: conv biases


def test_table2_places_each_attention_after_each_stage():
    cells = sweep.table2()
    assert len(cells) == 3 * 2 * 4
    assert {(c.model, c.attn_stages) for c in cells} == {
        (f'resnet{d}_{k}', (s,)) for k in ('nl', 'spa', 'gc') for d in (18, 50) for s in (1, 2, 3, 4)}
    by_name = {c.name: c for c in cells}
    assert by_name['resnet50_spa-s1'].paper == {'cifar100': 80.01}  # the paper's best cell
    assert by_name['resnet18_nl-s4'].paper == {'cifar100': 77.92}
    assert all(c.paper is None for c in cells if c.model.endswith('_gc'))  # not in the paper
    # the block sits after the chosen stage: its parameters grow with that stage's width
    spa18 = [_count(by_name[f'resnet18_spa-s{s}']) - 11_173_962 for s in (1, 2, 3, 4)]
    assert spa18 == [3 * c * c + 4 * c for c in (64, 128, 256, 512)]  # theta, g (with bias), W; BN weight+bias


def test_table3_is_k_by_stage_then_stage_pairs():
    cells = sweep.table3()
    grid = [c for c in cells if len(c.attn_stages) == 1]
    assert [(c.k, c.attn_stages[0]) for c in grid] == [(k, s) for k in (2, 4, 8, 16, 32) for s in (1, 2, 3, 4)]
    assert {(c.k, c.attn_stages[0]) for c in grid if c.paper} == set(paper.TABLE3_TOP1)
    assert [c.attn_stages for c in cells if len(c.attn_stages) == 2] == [(1, 2), (1, 3), (2, 3)]
    model = timm.create_model('resnet18_spa', **cells[-1].model_kwargs)
    assert model.layer2[-1].k == model.layer3[-1].k == 2
    assert all(c.model == 'resnet18_spa' for c in cells)


def _sweep(out: Path, *extra):
    return sweep.main(['custom', '--models', 'resnet18_cifar', 'resnet18_spa', '--seeds', '2', '--output', str(out),
                       *TINY, *extra])


def _table(out: Path) -> list:
    data = json.loads((out / 'report.json').read_text())
    return [(r['cell'], r['test_top1']['n'], r['test_top1']['values']) for r in data['rows']]


@pytest.mark.slow
def test_two_cells_two_seeds_run_and_report(tmp_path, capsys):
    out = tmp_path / 'sweep'
    runs = _sweep(out)
    assert [(r['cell'].name, r['seed']) for r in runs] == [
        ('resnet18_cifar', 42), ('resnet18_cifar', 43), ('resnet18_spa', 42), ('resnet18_spa', 43)]
    for run in runs:
        assert (run['folder'] / 'results.json').is_file()
    data = json.loads((out / 'report.json').read_text())
    assert [r['test_top1']['n'] for r in data['rows']] == [2, 2]
    for row in data['rows']:
        values = row['test_top1']['values']
        assert row['test_top1']['mean'] == pytest.approx(sum(values) / 2)
        assert row['paper'] is None  # the paper has no digits numbers
    text = (out / 'report.md').read_text()
    assert '+-' in text and '(n=2)' in text and 'scikit-learn digits' in text and '1 epochs' in text
    assert (out / 'report.png').stat().st_size > 0
    # the report again, from the run directories alone
    assert sweep.report(out)['rows'] == data['rows']
    # any folder of runs, one of them still training: that model is listed and marked, not dropped
    loose = tmp_path / 'loose'
    shutil.copytree(runs[0]['folder'], loose / 'finished')
    (loose / 'training').mkdir()
    (loose / 'training' / 'args.json').write_text(json.dumps(dict(model='resnet18_gc', epochs=1)))
    assert [(r['cell'], r['test_top1']['n']) for r in sweep.report(loose)['rows']] == [
        ('resnet18_cifar', 1), ('resnet18_gc', 0)]
    assert '| resnet18_gc | not run yet |' in (loose / 'report.md').read_text()
    # started again: nothing to do
    capsys.readouterr()
    _sweep(out)
    assert capsys.readouterr().out.count(': finished') == 4


def _records(folder: Path, model: str, top1s) -> None:
    """Made-up seeds of `model`: copies of its committed v2 release record (results.json only, as docs/runs keeps
    them) with other run ids and test top-1s."""
    record = json.loads((ROOT / 'docs' / 'runs' / 'cifar10-v2-e30' / f'v2-{model}-e30' / 'results.json').read_text())
    for seed, top1 in enumerate(top1s):
        run = folder / model / f'seed{seed}'
        run.mkdir(parents=True)
        (run / 'results.json').write_text(json.dumps(dict(record, run_id=f'{model}-{seed}', seed=seed, test_top1=top1,
                                                          args=dict(record['args'], seed=seed))))


def test_committed_seed_report_is_what_report_makes_of_its_records(tmp_path):
    """docs/runs/cifar10-v2-e30 keeps the records of one recipe's runs, seeds added as they finish; its report, and
    the table docs/paper-tables.md shows, are what `train.sweep report` makes of those records now: none typed by
    hand, none left behind by a record added or changed since."""
    folder = ROOT / 'docs' / 'runs' / 'cifar10-v2-e30'
    again = tmp_path / folder.name
    shutil.copytree(folder, again)
    sweep.report(again)
    assert (again / 'report.md').read_text() == (folder / 'report.md').read_text()
    fresh, committed = (json.loads((f / 'report.json').read_text()) for f in (again, folder))
    assert dict(fresh, folder=None) == dict(committed, folder=None)
    assert (folder / 'report.md').read_text().split('\n', 1)[1] in (ROOT / 'docs' / 'paper-tables.md').read_text()


def test_report_compares_each_model_with_the_baseline_by_welch_t(tmp_path):
    """Against a hand computation. Equal variances and counts: [89, 90, 91] against [90, 91, 92] is a difference
    of 1, standard error sqrt(1/3 + 1/3) = 0.8165 on 4 degrees of freedom, t(0.975, 4) = 2.776445 from a table, so
    1 +- 2.2670. Unequal ones: [90, 91, 92, 93] against [89, 89.5] has 0.4167 + 0.0625 = 0.4792 as squared error,
    0.4792^2 / (0.4167^2 / 3 + 0.0625^2 / 1) = 3.717 degrees of freedom. One seed: no interval."""
    equal, unequal = tmp_path / 'equal', tmp_path / 'unequal'
    _records(equal, 'resnet18_cifar', [89.0, 90.0, 91.0])
    _records(equal, 'resnet18_spa', [90.0, 91.0, 92.0])
    _records(equal, 'resnet18_nl', [95.0])
    rows = {r['cell']: r for r in sweep.report(equal)['rows']}
    spa = rows['resnet18_spa']['vs_baseline']
    assert spa['difference'] == pytest.approx(1.0) and spa['df'] == pytest.approx(4.0)
    assert (spa['low'], spa['high']) == (pytest.approx(1 - 2.776445 * 0.816497, abs=1e-5),
                                         pytest.approx(1 + 2.776445 * 0.816497, abs=1e-5))
    assert rows['resnet18_spa']['baseline'] == 'resnet18_cifar'
    assert rows['resnet18_spa']['paper_vs_baseline'] == pytest.approx(95.79 - 93.07)
    assert rows['resnet18_nl']['vs_baseline'] is None and rows['resnet18_cifar']['vs_baseline'] is None
    text = (equal / 'report.md').read_text()
    assert '| resnet18_spa | 91.00 +- 1.00 (n=3) |' in text and '| +1.00 [-1.27, +3.27] | +2.72 |' in text
    _records(unequal, 'resnet18_cifar', [89.0, 89.5])
    _records(unequal, 'resnet18_spa', [90.0, 91.0, 92.0, 93.0])
    spa = {r['cell']: r for r in sweep.report(unequal)['rows']}['resnet18_spa']['vs_baseline']
    assert spa['difference'] == pytest.approx(2.25) and spa['df'] == pytest.approx(3.7166, abs=1e-3)


def test_report_pools_only_seeds_of_one_recipe(tmp_path):
    """Mean +- std over seeds is a recipe's: a folder with a run of another recipe (15 epochs beside 30), or a run
    again with a seed it already has, is refused, naming what differs; a run recorded twice counts once."""
    folder = tmp_path / 'runs'
    _records(folder, 'resnet18_cifar', [89.0, 90.0])
    _records(folder, 'resnet18_spa', [90.0, 91.0])
    shutil.copytree(folder / 'resnet18_spa' / 'seed1', folder / 'copy-of-seed1')
    assert {r['cell']: r['test_top1']['n'] for r in sweep.report(folder)['rows']} == \
        dict(resnet18_cifar=2, resnet18_spa=2)
    shorter = json.loads((folder / 'resnet18_spa' / 'seed1' / 'results.json').read_text())
    (folder / 'shorter').mkdir()
    (folder / 'shorter' / 'results.json').write_text(json.dumps(dict(
        shorter, run_id='short', seed=7, epochs=15, args=dict(shorter['args'], seed=7, epochs=15))))
    with pytest.raises(UsageError, match='holds runs of 2 recipes \\(they differ in --epochs\\): a report pools'):
        sweep.report(folder)
    shutil.rmtree(folder / 'shorter')
    (folder / 'again').mkdir()
    (folder / 'again' / 'results.json').write_text(json.dumps(dict(shorter, run_id='again', test_top1=95.0)))
    with pytest.raises(UsageError, match='more than one run of resnet18_spa with seed 1: runs of one seed'):
        sweep.report(folder)


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_table(tmp_path):
    straight, killed = tmp_path / 'straight', tmp_path / 'killed'
    command = [sys.executable, '-m', 'train.sweep', 'custom', '--models', 'resnet18_cifar', 'resnet18_spa', '--seeds',
               '2', *TINY, '--output']
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')  # the same threads for both: the same sums
    done = subprocess.run([*command, str(straight)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    command.append(str(killed))
    for sig, at in ((signal.SIGTERM, '[2/4]'), (signal.SIGKILL, '[3/4]')):  # one run finished (or two)...
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = False
        for line in proc.stdout:
            started = started or line.startswith(at)
            if started and line.startswith('resnet18_'):  # ...and the next one is training
                proc.send_signal(sig)
                break
        err = proc.stderr.read()
        assert proc.wait(timeout=120) in (-sig, 128 + sig), err
        if sig == signal.SIGTERM:
            run = killed / 'resnet18_cifar' / 'seed43'
            assert err.strip() in (f'python -m train.sweep: interrupted (SIGTERM) in {run}: running this sweep '
                                   f'again {again} and runs the rest.' for again in (
                                       'resumes it', 'starts it again (no step was saved)')), err
        assert not (killed / 'report.json').exists()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(': finished') == 2
    assert _table(killed) == _table(straight)


@pytest.mark.slow
def test_a_finished_run_with_other_arguments_is_refused(tmp_path, capsys):
    out = tmp_path / 'sweep'
    sweep.main(['custom', '--models', 'resnet18_cifar', '--output', str(out), *TINY])
    with pytest.raises(SystemExit):
        sweep.main(['custom', '--models', 'resnet18_cifar', '--output', str(out), *TINY, '--lr', '0.2'])
    err = capsys.readouterr().err
    assert 'is a finished run with other arguments than this sweep' in err and '--lr: run 0.1, sweep 0.2' in err
    args, train_argv = sweep.parse(['custom', '--models', 'resnet18_cifar', '--output', str(out), *TINY, '--lr', '.2'])
    with pytest.raises(RunError):
        sweep.status(sweep.plan(sweep.custom(['resnet18_cifar']), args, train_argv)[0])


@pytest.mark.slow
def test_dry_run_lists_and_estimates_without_training(tmp_path, capsys):
    out = tmp_path / 'sweep'
    runs = _sweep(out, '--dry-run')
    printed = capsys.readouterr().out
    assert len(runs) == 4 and printed.count(' new  ~') == 4 and 'estimated time for the 4 runs' in printed
    costs = {}  # a cell is timed once: its seeds cost the same, and the total is their sum
    for line in printed.splitlines():
        if ' new  ~' in line:
            folder, cost = line.split(' new  ~')
            costs.setdefault(Path(folder.strip()).parent.name, set()).add(cost)
    assert len(costs) == 2 and all(len(c) == 1 for c in costs.values())
    assert not out.exists()


@pytest.mark.parametrize('argv,match', [
    (['table1', '--output', 'x', '--model', 'resnet18_spa'], 'the sweep sets the model'),
    (['custom', '--models', 'resnet18_cifar', '--output', 'x', '--seeds', '0'], '--seeds: 0 must be at least 1'),
    (['custom', '--models', 'resnet18_cifar', '--output', 'x', '--epochs', '0'], '--epochs 0 is not allowed'),
    (['report', 'x', '--lr', '0.1'], 'report takes no training flags'),
])
def test_bad_sweep_arguments(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(argv)
    assert exit_info.value.code == 2 and match in capsys.readouterr().err


def test_a_sweep_folder_holds_one_table_and_every_custom_sweeps_models(tmp_path, capsys):
    out = tmp_path / 'sweep'
    out.mkdir()
    (out / 'sweep.json').write_text(json.dumps(dict(table='custom', models=['resnet18_cifar', 'resnet18_spa'])))
    args, train_argv = sweep.parse(['custom', '--models', 'resnet18_nl', 'resnet18_spa', '--output', str(out), *TINY])
    data = dict(name='folder', label=None)
    assert sweep.manifest(out, args, train_argv, data)['models'] == ['resnet18_cifar', 'resnet18_spa', 'resnet18_nl']
    (out / 'sweep.json').write_text('{"table": "cus')  # cut short: the runs below it still say what ran
    assert sweep.manifest(out, args, train_argv, data)['models'] == ['resnet18_nl', 'resnet18_spa']
    (out / 'sweep.json').write_text(json.dumps(dict(table='table1', models=None)))
    before = (out / 'sweep.json').read_text()
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(['table2', '--output', str(out), *TINY])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and 'holds a table1 sweep (sweep.json); a table2 sweep there' in err, err
    assert (out / 'sweep.json').read_text() == before and sorted(p.name for p in out.iterdir()) == ['sweep.json']


@pytest.mark.slow
def test_sweep_under_torchrun_uses_ddp_for_each_run(tmp_path):
    """Two processes (gloo), two runs in one sweep, one process group for both (re-creating it raced on stale keys)."""
    out = tmp_path / 'ddp'
    done = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--standalone', '-m',
         'train.sweep', 'custom', '--models', 'resnet18_cifar', 'resnet18_spa', '--output', str(out), *TINY],
        cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    for cell in ('resnet18_cifar', 'resnet18_spa'):
        results = json.loads((out / cell / 'seed42' / 'results.json').read_text())
        assert results['world_size'] == 2 and results['dataset']['test_images'] == 360
    assert [r['test_top1']['n'] for r in json.loads((out / 'report.json').read_text())['rows']] == [1, 1]
