"""Time to accuracy of several runs side by side: validation top-1 per epoch with the wall time it took.

    python -m train.compare runs/v1-r18spa runs/v2-pilot-r18spa --output compare.png [--target 92]
        [--at-epochs 5 10 15 30]

Prints a Markdown table (one row per run: the arguments in which the runs differ, where their data lay aside,
validation top-1 and elapsed wall time after each epoch, or after the epoch counts `--at-epochs` names, the best
validation top-1, the test top-1 of finished runs, the training top-1 of the last epoch (on the augmented
images: below validation the recipe underfits, far above it the network fits its training images), the median
training images/s (hours compare only where it is alike: a run that shared its cores took longer) and the
machines each run trained on, with their epochs and hours where it moved) and plots validation top-1 against
epochs and against wall-clock hours (a run started from another's weights drawn after the epochs and hours behind
them). `--target PCT` adds the time to PCT% validation top-1: the epochs and hours of
the run itself up to the first epoch that reaches it, and in all, counting the epochs and hours
behind its `--initial-checkpoint` (the parent's record in the checkpoint). Reads only what each run
directory holds (`args.json`, `summary.csv`, `last.pth.tar`, `results.json`), so it works on runs still
in progress.
"""
import argparse
import json
import math
import statistics
from pathlib import Path
from typing import List, Optional, Tuple

from .checkpoint import load_training_state
from .cli import UsageError, add_debug_flag, run_cli
from .report import hardware_record, pyplot, read_summary
from .run_dir import RunDir, RunError, check_not_a_run_file
from .train import run_arguments

PROG = 'python -m train.compare'
# how loudly or with how many loader workers a run went, and where its data lay (a run recorded '~/data', a later
# one the absolute path; the data set is --dataset); how it was started never reaches run_arguments
IGNORED = ('run_id', 'log_interval', 'progress', 'workers', 'data_dir', 'download')


def _load(path: str) -> dict:
    run = RunDir(path)
    if not run.summary.is_file() or not run.args.is_file():
        raise UsageError(f'{path} is not a run directory with finished epochs (no summary.csv or args.json).')
    try:
        results = run.read_results()
    except RunError:
        results = None  # not finished, or written by another version
    test = results.test_top1 if results else None
    if run.last.is_file():
        parent = load_training_state(run.last).get('parent')
    else:  # a record without its checkpoint (docs/runs): the parent its results name
        parent = (results.lineage or {}).get('parent') if results else None
    rows = read_summary(run.summary)
    if rows and not {'val_top1', 'elapsed_s'} <= set(rows[0]):
        raise UsageError(f'{run.summary} is not a summary.csv of this project (no val_top1 or elapsed_s column).')
    return dict(name=path, args=run_arguments(run.read_args()), rows=rows, test=test, parent=parent)


def _best(rows: List[dict]) -> dict:
    return max(rows, key=lambda row: row['val_top1'])


def time_to(run: dict, target: float) -> str:
    """Epochs and hours until validation top-1 first reached `target`, the run's own and, where it started from
    a parent whose budget is known, in all; or the best so far."""
    rows = run['rows']
    hit = next((row for row in rows if row['val_top1'] >= target), None)
    if hit is None:
        best = _best(rows)
        return f"not reached in {len(rows)} epochs (best {best['val_top1']:.2f} at epoch {best['epoch']})"
    epochs, hours = hit['epoch'] + 1, hit['elapsed_s'] / 3600
    text = f'{epochs} epochs, {hours:.2f} h'
    parent = run['parent']
    if parent is None:
        return text
    if 'total_epochs' not in parent:
        return f"{text} (+ a parent whose budget is unknown)"
    return (f"{text}; in all {epochs + parent['total_epochs']} epochs, "
            f"{hours + parent['total_wall_time_s'] / 3600:.2f} h")


def compare(paths: List[str], output: Optional[str] = None, target: Optional[float] = None,
            at_epochs: Optional[List[int]] = None) -> str:
    """The Markdown table (printed and returned) and, with `output`, the figure; `at_epochs` (epochs trained,
    from 1) keeps the table readable where runs are long."""
    if target is not None and not 0 < target <= 100:
        raise UsageError(f'--target {target:g} is not a top-1 in percent; give one in (0, 100], e.g. 92.')
    if at_epochs is not None and min(at_epochs) < 1:
        raise UsageError(f'--at-epochs {min(at_epochs)} is not a number of epochs trained; give counts from 1, '
                         'e.g. --at-epochs 5 10 15.')
    if output:
        check_not_a_run_file(output, '--output')
    runs = [_load(p) for p in paths]
    first = {}
    for r in runs:  # a run named twice (or a copy of it) would be two identical rows, read as agreement
        key = r['args'].get('run_id') or str(Path(r['name']).resolve())
        if key in first:
            raise UsageError(f'{r["name"]} is the same run as {first[key]} (run id {key}): give each run once.')
        first[key] = r['name']
    if target is not None and not all(r['rows'] for r in runs):
        empty = next(r['name'] for r in runs if not r['rows'])
        raise UsageError(f'{empty}/summary.csv holds no finished epoch yet, so it has no time to {target:g}%; wait '
                         'for its first epoch, or leave it out.')
    keys = sorted({k for r in runs for k in r['args']} - set(IGNORED))
    differ = [k for k in keys if len({json.dumps(r['args'].get(k), sort_keys=True) for r in runs}) > 1]
    if at_epochs is None:
        counts = range(1, max(len(r['rows']) for r in runs) + 1)
        titles = [f'val top-1 after epoch {n - 1} (elapsed)' for n in counts]
    else:
        counts = sorted(set(at_epochs))
        titles = [f'val top-1 after {n} epochs (elapsed)' for n in counts]
    header = ['run', *(f'--{k.replace("_", "-")}' for k in differ), *titles, 'best val top-1 (epoch)',
              'test top-1', 'train top-1, last epoch', 'median train img/s', 'trained on',
              *([f'time to {target:g}% val top-1'] if target is not None else [])]
    align = ['---'] * (1 + len(differ)) + ['---:'] * (len(counts) + 4) + ['---'] * (1 + (target is not None))
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(align) + '|']
    for r in runs:
        by_count = {row['epoch'] + 1: row for row in r['rows']}
        cells = [f'`{r["args"].get(k)}`' for k in differ]
        cells += [f"{by_count[n]['val_top1']:.2f} ({by_count[n]['elapsed_s'] / 60:.1f} min)" if n in by_count
                  else '-' for n in counts]
        best = _best(r['rows']) if r['rows'] else None
        cells.append(f"{best['val_top1']:.2f} ({best['epoch']})" if best else '-')
        cells.append(f"{r['test']:.2f}" if r['test'] is not None else '-')
        last_train = r['rows'][-1].get('train_top1', math.nan) if r['rows'] else math.nan  # NaN: not written
        cells.append('-' if math.isnan(last_train) else f'{last_train:.2f}')
        speeds = [row['img_s'] for row in r['rows'] if not math.isnan(row.get('img_s', math.nan))]  # NaN: not written
        cells.append(f'{statistics.median(speeds):.1f}' if speeds else '-')
        cells.append(hardware_record(r['rows']))  # hours compare only on like machines
        if target is not None:
            cells.append(time_to(r, target))
        lines.append(f"| {Path(r['name']).name} | " + ' | '.join(cells) + ' |')
    text = '\n'.join(lines)
    if output:
        _plot(runs, Path(output), target)
    print(text)
    return text


def curve(run: dict) -> Tuple[List[int], List[float], List[float]]:
    """Epochs trained, hours and validation top-1 after each epoch, counting the epochs and hours behind the
    run's `--initial-checkpoint` where its parent's record gives them (a stage that goes on from another run is
    drawn where that run stopped)."""
    parent = run['parent'] or {}
    epochs, seconds = parent.get('total_epochs', 0), parent.get('total_wall_time_s', 0.0)
    rows = run['rows']
    return ([epochs + row['epoch'] + 1 for row in rows], [(seconds + row['elapsed_s']) / 3600 for row in rows],
            [row['val_top1'] for row in rows])


def _plot(runs: List[dict], path: Path, target: Optional[float] = None) -> None:
    """Validation top-1 against epochs (what a recipe buys per epoch) and against hours (what it costs)."""
    plt = pyplot()
    fig, (by_epoch, by_hour) = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for r in runs:
        epochs, hours, top1 = curve(r)
        by_epoch.plot(epochs, top1, 'o-', label=Path(r['name']).name)
        by_hour.plot(hours, top1, 'o-', label=Path(r['name']).name)
    for ax in (by_epoch, by_hour):
        if target is not None:
            ax.axhline(target, color='grey', linestyle='--', linewidth=1, label=f'{target:g}%')
        ax.grid(True, alpha=0.3)
    by_epoch.set_xlabel('epochs trained (with those behind an --initial-checkpoint)')
    by_hour.set_xlabel('wall-clock hours, train + validation (with those behind an --initial-checkpoint)')
    by_epoch.set_ylabel('val top-1 (%)')
    by_hour.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', help='run directories')
    parser.add_argument('--output', default=None, help='PNG of validation top-1 against hours')
    parser.add_argument('--target', type=float, default=None, metavar='PCT',
                        help='add the epochs and hours to this validation top-1, in percent (e.g. 92)')
    parser.add_argument('--at-epochs', type=int, nargs='+', default=None, metavar='N',
                        help='table columns only after these numbers of epochs trained (default: every epoch)')
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_cli(PROG, lambda: compare(args.runs, args.output, args.target, args.at_epochs), args.debug)


if __name__ == '__main__':
    main()
