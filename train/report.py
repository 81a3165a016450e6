"""What a run leaves behind: a per-epoch CSV, training curves, and the results file the hub reads."""
import csv
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import timm
import torch
import torchvision

import timm_spa

from .checkpoint import atomic_write
from .precision import cpu_capability

CHECKOUT = Path(__file__).resolve().parent.parent  # the timm-spa source tree this code runs from
TEXT_COLUMNS = ('precision', 'hardware')  # summary.csv columns that are not numbers


def hardware(device: torch.device, world_size: int) -> str:
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    else:
        try:
            with open('/proc/cpuinfo') as f:
                name = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
        except (OSError, StopIteration):
            name = platform.processor() or 'CPU'
        cores, threads = os.cpu_count(), torch.get_num_threads()
        name = (f"{name} ({cores} core{'s' * (cores != 1)}, {threads} thread{'s' * (threads != 1)}; "
                f'{cpu_capability()})')
    return f'{world_size} x {name}' if world_size > 1 else name


def hardware_record(rows: List[Dict[str, Any]]) -> str:
    """What the epochs of `summary.csv` trained on: one machine's description, or, for a run resumed on other
    machines, each one with its epochs and hours in order (a blank row: an epoch from before the column)."""
    spans: List[List[Any]] = []  # [hardware, first epoch, last epoch, seconds]
    for row in rows:
        name = row.get('hardware') or ''
        if spans and spans[-1][0] == name:
            spans[-1][2:] = [row['epoch'], spans[-1][3] + row['epoch_s']]
        else:
            spans.append([name, row['epoch'], row['epoch'], row['epoch_s']])
    if len(spans) == 1 and spans[0][0]:
        return spans[0][0]
    return '; '.join(f"{name or 'not recorded'} for epoch{f's {first}-{last}' if last > first else f' {first}'} "
                     f'({seconds / 3600:.2f} h)' for name, first, last, seconds in spans)


def software() -> Dict[str, str]:
    return dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
                timm=timm.__version__, timm_spa=timm_spa.__version__)


def git_commit() -> str:
    """The commit the code ran from, with '+dirty' if the tree had changes; 'unknown' outside git."""
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=CHECKOUT, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=CHECKOUT,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return 'unknown'
    return commit + ('+dirty' if dirty else '')


def write_summary(path: Path, rows: List[Dict[str, Any]]) -> None:
    if not rows:
        return

    def write(tmp: Path) -> None:
        with open(tmp, 'w', newline='') as f:
            columns = list(dict.fromkeys(key for row in rows for key in row))  # a column added later: blank before
            writer = csv.DictWriter(f, fieldnames=columns, restval='')
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def _summary_value(key: str, value: str) -> Any:
    """A cell as its type; a blank number (a column an earlier version did not write) is NaN."""
    return int(value) if key == 'epoch' else value if key in TEXT_COLUMNS else float(value or 'nan')


def read_summary(path: Path) -> List[Dict[str, Any]]:
    """The rows of a summary.csv ([] where there is none); a file that is not one is named (ValueError)."""
    if not path.is_file():
        return []
    try:
        with open(path, newline='') as f:
            rows = [{k: _summary_value(k, v) for k, v in row.items()} for row in csv.DictReader(f)]
    except (ValueError, TypeError, csv.Error, UnicodeDecodeError) as e:
        raise ValueError(f'{path} is not a summary.csv of this project ({e}); it was edited or cut short.') from None
    missing = {'epoch'} - set(rows[0]) if rows else set()
    if missing or any(None in row or None in row.values() for row in rows):  # a row longer or shorter than the header
        raise ValueError(f'{path} is not a summary.csv of this project (columns missing or rows cut short: '
                         f'{", ".join(sorted(missing)) or "a short row"}); it was edited or cut short.')
    return rows


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed), imported on first use: the
    figures are an optional extra, and importing matplotlib costs about a second."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_curves(path: Path, rows: List[Dict[str, Any]], title: str) -> None:
    plt = pyplot()
    epochs = [r['epoch'] for r in rows]
    hours = [r['elapsed_s'] / 3600 for r in rows]
    fig, (loss_ax, acc_ax, time_ax) = plt.subplots(1, 3, figsize=(14, 3.8))
    loss_ax.plot(epochs, [r['train_loss'] for r in rows], 'o-', label='train')
    loss_ax.plot(epochs, [r['val_loss'] for r in rows], 's-', label='val (held out of train)')
    acc_ax.plot(epochs, [r['train_top1'] for r in rows], 'o-', label='train')
    acc_ax.plot(epochs, [r['val_top1'] for r in rows], 's-', label='val (held out of train)')
    time_ax.plot(hours, [r['val_top1'] for r in rows], 's-', color='C1', label='val (held out of train)')
    for ax, x_label, y_label in ((loss_ax, 'epoch', 'loss'), (acc_ax, 'epoch', 'top-1 (%)'),
                                 (time_ax, 'wall-clock hours (train + validation)', 'val top-1 (%)')):
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
