"""Time to accuracy of several runs side by side: validation top-1 per epoch with the wall time it took.

    python -m train.compare runs/paper-2ep runs/budget-2ep --output compare.png

Prints a Markdown table (one row per run: the arguments in which the runs differ, validation top-1
and elapsed wall time after each epoch, and the test top-1 of finished runs) and plots validation
top-1 against wall-clock hours. Reads only what each run directory holds (`args.json`, `summary.csv`,
`results.json`), so it works on runs still in progress.
"""
import argparse
import json
from pathlib import Path
from typing import List, Optional

from .cli import UsageError, add_debug_flag, run_cli
from .report import pyplot, read_summary
from .run_dir import RunDir, RunError

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
    return dict(name=path, args=run.read_args(), rows=read_summary(run.summary), test=test)


def compare(paths: List[str], output: Optional[str] = None) -> str:
    runs = [_load(p) for p in paths]
    keys = sorted({k for r in runs for k in r['args']} - set(IGNORED))
    differ = [k for k in keys if len({json.dumps(r['args'].get(k), sort_keys=True) for r in runs}) > 1]
    epochs = max(len(r['rows']) for r in runs)
    lines = ['| run | ' + ' | '.join(f'--{k.replace("_", "-")}' for k in differ) + ' | ' +
             ' | '.join(f'val top-1 after epoch {e} (elapsed)' for e in range(epochs)) + ' | test top-1 |',
             '|---|' + '---|' * len(differ) + '---:|' * epochs + '---:|']
    for r in runs:
        cells = [f'`{r["args"].get(k)}`' for k in differ]
        cells += [f"{row['val_top1']:.2f} ({row['elapsed_s'] / 60:.1f} min)" for row in r['rows']]
        cells += ['-'] * (epochs - len(r['rows']))
        cells.append(f"{r['test']:.2f}" if r['test'] is not None else '-')
        lines.append(f"| {Path(r['name']).name} | " + ' | '.join(cells) + ' |')
    text = '\n'.join(lines)
    if output:
        _plot(runs, Path(output))
    print(text)
    return text


def _plot(runs: List[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in runs:
        ax.plot([row['elapsed_s'] / 3600 for row in r['rows']], [row['val_top1'] for row in r['rows']], 'o-',
                label=Path(r['name']).name)
    ax.set_xlabel('wall-clock hours (train + validation)')
    ax.set_ylabel('val top-1 (%)')
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> str:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', help='run directories')
    parser.add_argument('--output', default=None, help='PNG of validation top-1 against hours')
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_cli(PROG, lambda: compare(args.runs, args.output), args.debug)


if __name__ == '__main__':
    main()
