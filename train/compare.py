"""Time to accuracy of several runs side by side: validation top-1 per epoch with the wall time it took.

    python -m train.compare runs/v1-r18spa runs/v2-pilot-r18spa --output compare.png [--target 92]

Prints a Markdown table (one row per run: the arguments in which the runs differ, validation top-1
and elapsed wall time after each epoch, the test top-1 of finished runs and the machines each run
trained on, with their epochs and hours where it moved) and plots validation top-1 against epochs and
against wall-clock hours. `--target PCT` adds the time to PCT% validation top-1: the epochs and hours of
the run itself up to the first epoch that reaches it, and in all, counting the epochs and hours
behind its `--initial-checkpoint` (the parent's record in the checkpoint). Reads only what each run
directory holds (`args.json`, `summary.csv`, `last.pth.tar`, `results.json`), so it works on runs still
in progress.
"""
import argparse
import json
from pathlib import Path
from typing import List, Optional

from .checkpoint import load_training_state
from .cli import UsageError, add_debug_flag, run_cli
from .report import hardware_record, pyplot, read_summary
from .run_dir import RunDir, RunError, check_not_a_run_file

PROG = 'python -m train.compare'
IGNORED = ('output', 'resume', 'overwrite', 'run_id', 'log_interval', 'progress', 'workers', 'debug')


def _load(path: str) -> dict:
    run = RunDir(path)
    if not run.summary.is_file() or not run.args.is_file():
        raise UsageError(f'{path} is not a run directory with finished epochs (no summary.csv or args.json).')
    try:
        test = run.read_results().test_top1
    except RunError:
        test = None  # not finished, or written by another version
    parent = load_training_state(run.last).get('parent') if run.last.is_file() else None
    rows = read_summary(run.summary)
    if rows and not {'val_top1', 'elapsed_s'} <= set(rows[0]):
        raise UsageError(f'{run.summary} is not a summary.csv of this project (no val_top1 or elapsed_s column).')
    return dict(name=path, args=run.read_args(), rows=rows, test=test, parent=parent)


def time_to(run: dict, target: float) -> str:
    """Epochs and hours until validation top-1 first reached `target`, the run's own and, where it started from
    a parent whose budget is known, in all; or the best so far."""
    rows = run['rows']
    hit = next((row for row in rows if row['val_top1'] >= target), None)
    if hit is None:
        best = max(rows, key=lambda row: row['val_top1'])
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


def compare(paths: List[str], output: Optional[str] = None, target: Optional[float] = None) -> str:
    if target is not None and not 0 < target <= 100:
        raise UsageError(f'--target {target:g} is not a top-1 in percent; give one in (0, 100], e.g. 92.')
    if output:
        check_not_a_run_file(output, '--output')
    runs = [_load(p) for p in paths]
    if target is not None and not all(r['rows'] for r in runs):
        empty = next(r['name'] for r in runs if not r['rows'])
        raise UsageError(f'{empty}/summary.csv holds no finished epoch yet, so it has no time to {target:g}%; wait '
                         'for its first epoch, or leave it out.')
    keys = sorted({k for r in runs for k in r['args']} - set(IGNORED))
    differ = [k for k in keys if len({json.dumps(r['args'].get(k), sort_keys=True) for r in runs}) > 1]
    epochs = max(len(r['rows']) for r in runs)
    header = ['run', *(f'--{k.replace("_", "-")}' for k in differ),
              *(f'val top-1 after epoch {e} (elapsed)' for e in range(epochs)), 'test top-1', 'trained on',
              *([f'time to {target:g}% val top-1'] if target is not None else [])]
    align = ['---'] * (1 + len(differ)) + ['---:'] * (epochs + 1) + ['---'] * (1 + (target is not None))
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(align) + '|']
    for r in runs:
        cells = [f'`{r["args"].get(k)}`' for k in differ]
        cells += [f"{row['val_top1']:.2f} ({row['elapsed_s'] / 60:.1f} min)" for row in r['rows']]
        cells += ['-'] * (epochs - len(r['rows']))
        cells.append(f"{r['test']:.2f}" if r['test'] is not None else '-')
        cells.append(hardware_record(r['rows']))  # hours compare only on like machines
        if target is not None:
            cells.append(time_to(r, target))
        lines.append(f"| {Path(r['name']).name} | " + ' | '.join(cells) + ' |')
    text = '\n'.join(lines)
    if output:
        _plot(runs, Path(output), target)
    print(text)
    return text


def _plot(runs: List[dict], path: Path, target: Optional[float] = None) -> None:
    """Validation top-1 against epochs (what a recipe buys per epoch) and against hours (what it costs)."""
    plt = pyplot()
    fig, (by_epoch, by_hour) = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for r in runs:
        top1 = [row['val_top1'] for row in r['rows']]
        by_epoch.plot([row['epoch'] + 1 for row in r['rows']], top1, 'o-', label=Path(r['name']).name)
        by_hour.plot([row['elapsed_s'] / 3600 for row in r['rows']], top1, 'o-', label=Path(r['name']).name)
    for ax in (by_epoch, by_hour):
        if target is not None:
            ax.axhline(target, color='grey', linestyle='--', linewidth=1, label=f'{target:g}%')
        ax.grid(True, alpha=0.3)
    by_epoch.set_xlabel('epochs trained')
    by_hour.set_xlabel('wall-clock hours of the run itself (train + validation)')
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
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_cli(PROG, lambda: compare(args.runs, args.output, args.target), args.debug)


if __name__ == '__main__':
    main()
