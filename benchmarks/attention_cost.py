"""What SPA costs against non-local (NL) and global-context (GC) attention, measured side by side.

    python -m benchmarks.attention_cost                 # full run: tables, JSON and PNG
    python -m benchmarks.attention_cost --tiny          # seconds: the same rows, batch 1, one repeat
    python -m benchmarks.attention_cost --device cuda   # on a GPU

Four tables: (1) one attention block, forward+backward time and peak memory at the ResNet-18
CIFAR stage shapes, 64x64x64 and an ImageNet-size 256x56x56; (2) how time and memory grow with
the number of positions (C = 64, H = W from 8 to 128), SPA against NL; (3) whole models, training
step and inference images/s; (4) the two kernels SPA can compute softmax(K K^T) V with when
n <= C', and which one the layer picks. A fifth, with `--released PATH/SPANet.py` (the authors' file,
`git clone https://github.com/likyoo/SPANet`, read at run time): our block against the authors' own
at the ResNet-18 stage shapes, with C' = C and k = 2 as in our models, and on CPU both blocks' time by
operation (convolutions, matrix products, softmax, batch norm, the rest). Times are medians over
repeats, taken in rounds that run every candidate once, so that all candidates see the same machine
state. Peak memory is measured: on CUDA by the caching allocator, on CPU from the profiler's
allocation events; "extra" memory is what a forward+backward allocates on top of the live input and
parameters.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional

os.environ.setdefault('KINETO_LOG_LEVEL', '5')  # the CPU profiler's start/stop lines are noise here

import timm
import torch
from timm.layers import GlobalContext, NonLocalAttn
from torch import nn

from benchmarks.naive_spa import NaiveSalientPositionsAttention
from timm_spa.layers import SalientPositionsAttention, attention_kernel, channel_attention
from train.checkpoint import file_sha256
from train.cli import positive_int
from train.engine import train_step
from train.precision import AMP_DTYPES, autocast_context, describe_precision, resolve_amp_dtype, strict_float32
from train.report import git_commit, hardware, pyplot, software

BLOCK_SHAPES = [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (64, 64, 64), (256, 56, 56)]
BLOCKS = ('spa', 'spa_naive', 'nl', 'gc')
SCALING_SIZES = (8, 16, 32, 64, 96, 128)
SCALING_CHANNELS = 64
MODELS = ('resnet18_cifar', 'resnet18_spa', 'resnet18_nl', 'resnet18_gc',
          'resnet50_cifar', 'resnet50_spa', 'resnet50_nl', 'resnet50_gc')
MODEL_SIZES = (32, 64)
KERNEL_CHANNELS = (64, 128, 256, 512)
KERNEL_POSITIONS = (4, 16, 36, 64, 144, 256)
# kernels first: on CPU the materialised kernel's cost depends on whether the allocator still faults in
# fresh pages for its C' x C' buffers, which glibc stops doing once the heap has grown (after the model table)
TABLES = ('kernels', 'block', 'scaling', 'models', 'released')
RESNET18_SHAPES = BLOCK_SHAPES[:4]


def make_block(kind: str, channels: int, spa: Optional[SalientPositionsAttention] = None) -> nn.Module:
    """A block to measure; 'spa_naive' copies the weights of `spa` so both compute the same function."""
    if kind == 'spa':
        block = SalientPositionsAttention(channels)
        with torch.no_grad():
            block.norm.weight.fill_(1.0)  # an active block: the same work, and outputs worth comparing
        return block
    if kind == 'spa_naive':
        return NaiveSalientPositionsAttention(channels).load_from(spa or make_block('spa', channels))
    if kind == 'nl':
        return NonLocalAttn(channels, rd_ratio=1 / 2)  # as in the paper's models
    if kind == 'gc':
        return GlobalContext(channels, fuse_add=True, fuse_scale=False, rd_ratio=1 / 8)
    raise ValueError(f'unknown block {kind!r}; choose from {BLOCKS}')


def released_block_class(path: Path) -> type:
    """The authors' `SPANet` class from their file at `path` (their repository's SPANet.py), read at run time."""
    spec = importlib.util.spec_from_file_location('released_spanet', path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # whatever a wrong file raises, said in one line before anything is measured
        raise ValueError(f'--released {path}: the file does not run ({type(e).__name__}: {e}); give the SPANet.py '
                         'of git clone https://github.com/likyoo/SPANet') from None
    block = getattr(module, 'SPANet', None)
    if not isinstance(block, type) or not issubclass(block, nn.Module):
        raise ValueError(f'--released {path}: defines no SPANet module; give the SPANet.py of '
                         'git clone https://github.com/likyoo/SPANet')
    return block


def load_released_block(released: type, spa: SalientPositionsAttention) -> nn.Module:
    """The authors' `SPANet` block holding the weights of `spa` (C' = C, k = 2)."""
    block = released(spa.in_channels, inter_channels=spa.rd_channels, k=spa.k)
    rd = spa.rd_channels
    with torch.no_grad():
        block.theta.weight.copy_(spa.qv.weight[:rd])
        block.theta.bias.copy_(spa.qv.bias[:rd])
        block.g.weight.copy_(spa.qv.weight[rd:])
        block.g.bias.copy_(spa.qv.bias[rd:])
        block.W[0].weight.copy_(spa.proj.weight)
        block.W[0].bias.zero_()  # the authors' W has a bias, ours none (the paper's parameter count)
        block.W[1].load_state_dict(spa.norm.state_dict())
    return block


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def median_times(fns: Dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device):
    """Median seconds per call of every fn, measured in interleaved rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def peak_extra_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated by fn beyond what was live when it started."""
    if device.type == 'cuda':
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
        if e.name() == '[memory]' and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


# operation groups of the profile table, matched against aten op names in this order
PROFILE_GROUPS = (('1x1 convolutions', ('convolution',)), ('matrix products', ('bmm', 'mm', 'matmul')),
                  ('softmax', ('softmax', 'attention')), ('batch norm', ('batch_norm',)))


def operation_profile(step: Callable[[], None], steps: int = 5) -> Dict[str, float]:
    """Milliseconds per step in each group of `PROFILE_GROUPS` ('other': the rest), from torch.profiler's self
    times of the aten operations (CPU)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    times = dict.fromkeys([name for name, _ in PROFILE_GROUPS] + ['other'], 0.0)
    for event in prof.key_averages():
        if event.key.startswith('aten::'):
            group = next((name for name, parts in PROFILE_GROUPS if any(p in event.key for p in parts)), 'other')
            times[group] += event.self_cpu_time_total / 1e3 / steps
    return times


def _fwd_bwd(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step():
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).sum().backward()
    return step


def _nl_bytes(batch: int, channels: int, positions: int) -> int:
    # n x n logits, softmax output and their two gradients, float32
    return 4 * 4 * batch * positions * positions + 16 * batch * channels * positions


def _fits(nbytes: int, budget: int) -> bool:
    return nbytes <= budget


def _memory_budget(device: torch.device, fraction: float) -> int:
    if device.type == 'cuda':
        return int(torch.cuda.mem_get_info(device)[0] * fraction)
    try:  # MemAvailable counts reclaimable page cache; free pages alone shrink after reading data sets
        with open('/proc/meminfo') as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:'))
    except (OSError, StopIteration):
        available = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES')
    return int(available * fraction)


def _compare_blocks(kinds, channels: int, size: int, batch: int, args, device: torch.device, budget: int,
                    profiled: tuple = ()) -> List[dict]:
    torch.manual_seed(0)
    x = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
    modules, rows = {}, []
    for kind in kinds:
        if kind == 'nl' and not _fits(_nl_bytes(batch, channels, size * size), budget):
            rows.append(dict(block=kind, skipped=f'needs ~{_nl_bytes(batch, channels, size * size) / 2**30:.1f} GiB'))
            continue
        if kind == 'spa_released':
            modules[kind] = load_released_block(args.released_block, modules['spa']).to(device).train()
            continue
        modules[kind] = make_block(kind, channels, spa=modules.get('spa')).to(device).train()
    for kind in ('spa_naive', 'spa_released'):  # a baseline must compute the same function
        if 'spa' in modules and kind in modules:
            with torch.no_grad():
                ours, theirs = modules['spa'].eval()(x), modules[kind].eval()(x)
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
            modules['spa'].train(), modules[kind].train()
    steps = {kind: _fwd_bwd(m, x) for kind, m in modules.items()}
    times = median_times(steps, args.repeats, args.warmup, device)
    for kind, step in steps.items():
        rows.append(dict(block=kind, time_ms=times[kind] * 1e3, peak_extra_mib=peak_extra_bytes(step, device) / 2**20))
        if kind in profiled and device.type == 'cpu':  # on CUDA the profiler's CPU times are launch overheads
            rows[-1]['profile_ms'] = operation_profile(step)
    for row in rows:
        row.update(channels=channels, height=size, width=size, batch=batch)
    return rows


def block_table(args, device: torch.device, budget: int) -> List[dict]:
    rows = []
    for channels, size, _ in BLOCK_SHAPES:
        rows += _compare_blocks(BLOCKS, channels, size, args.batch, args, device, budget)
        _print_progress(rows[-len(BLOCKS):])
    return rows


def released_table(args, device: torch.device, budget: int) -> List[dict]:
    """Our block, the naive one and the authors' released block side by side at the ResNet-18 stage shapes."""
    if args.released is None:
        print('  skipped: no --released PATH (the SPANet.py of git clone https://github.com/likyoo/SPANet)')
        return []
    rows = []
    for channels, size, _ in RESNET18_SHAPES:
        rows += _compare_blocks(('spa', 'spa_naive', 'spa_released'), channels, size, args.batch, args, device, budget,
                                profiled=('spa', 'spa_released'))
        _print_progress(rows[-3:])
    return rows


def scaling_table(args, device: torch.device, budget: int) -> List[dict]:
    rows = []
    for size in args.scaling_sizes:
        rows += _compare_blocks(('spa', 'nl'), SCALING_CHANNELS, size, args.scaling_batch, args, device, budget)
        _print_progress(rows[-2:])
    return rows


def _model_rates(names: List[str], size: int, args, device: torch.device) -> Dict[str, Dict[str, float]]:
    """Training-step and inference images/s of each model, measured side by side."""
    models = {n: timm.create_model(n).to(device) for n in names}
    optimizers = {n: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for n, m in models.items()}
    x = torch.randn(args.model_batch, 3, size, size, device=device)
    target = torch.randint(0, 10, (args.model_batch,), device=device)

    def step(name):
        train_step(models[name].train(), x, target, optimizer=optimizers[name], loss_fn=nn.functional.cross_entropy,
                   device=device, amp_dtype=args.amp_dtype)

    @torch.no_grad()
    def infer(name):
        with autocast_context(device, args.amp_dtype):
            models[name].eval()(x)

    train = median_times({n: partial(step, n) for n in names}, args.repeats, args.warmup, device)
    test = median_times({n: partial(infer, n) for n in names}, args.repeats, args.warmup, device)
    return {n: dict(train_img_s=args.model_batch / train[n], infer_img_s=args.model_batch / test[n]) for n in names}


def model_table(args, device: torch.device) -> List[dict]:
    rows = []
    for size in MODEL_SIZES:
        for depth in ('resnet18', 'resnet50'):
            names = [m for m in MODELS if m.startswith(depth + '_')]
            rates = _model_rates(names, size, args, device)
            rows += [dict(model=n, size=size, batch=args.model_batch, **rates[n]) for n in names]
            _print_progress(rows[-len(names):])
    return rows


def _kernel_step(attn_impl: str, keys: torch.Tensor, value: torch.Tensor) -> None:
    keys.grad = value.grad = None
    channel_attention(keys, value, 1.0, attn_impl).sum().backward()


def kernel_table(args, device: torch.device) -> List[dict]:
    """softmax(K K^T) V forward+backward (k = 2): a materialised C' x C' softmax against SDPA's fused kernel,
    each forced through the layer's public `attn_impl` choice."""
    kernels = ('materialised', 'fused')
    rows = []
    for channels in KERNEL_CHANNELS:
        for positions in (n for n in KERNEL_POSITIONS if n <= channels):
            torch.manual_seed(0)
            keys = torch.randn(args.batch, channels, 2, device=device, requires_grad=True)
            value = torch.randn(args.batch, channels, positions, device=device, requires_grad=True)
            steps = {name: partial(_kernel_step, name, keys, value) for name in kernels}
            times = median_times(steps, args.repeats, args.warmup, device)
            row = dict(channels=channels, positions=positions, batch=args.batch,
                       layer_uses=attention_kernel(positions, channels, 'auto', device.type))
            for name, step in steps.items():
                row.update({f'{name}_ms': times[name] * 1e3,
                            f'{name}_peak_extra_mib': peak_extra_bytes(step, device) / 2**20})
            rows.append(row)
        _print_progress(rows[-1:])
    return rows


def add_ratios(report: dict) -> None:
    """Ratios against the row each claim is about: naive SPA and NL per shape, the baseline per model."""
    def by_shape(rows):
        out = {}
        for row in rows:
            out.setdefault((row['channels'], row['height'], row['batch']), {})[row['block']] = row
        return out.values()

    for group in [*by_shape(report['block']), *by_shape(report['scaling']), *by_shape(report.get('released', []))]:
        spa = group.get('spa')
        for ref in ('spa_naive', 'nl', 'spa_released'):
            if spa and ref in group and 'time_ms' in group[ref]:
                spa[f'time_vs_{ref}'] = spa['time_ms'] / group[ref]['time_ms']
                spa[f'memory_vs_{ref}'] = spa['peak_extra_mib'] / max(group[ref]['peak_extra_mib'], 1e-9)
    for row in report['models']:
        base = next(r for r in report['models']
                    if r['size'] == row['size'] and r['model'] == row['model'].split('_')[0] + '_cifar')
        row['train_time_vs_baseline'] = base['train_img_s'] / row['train_img_s']
        row['infer_time_vs_baseline'] = base['infer_img_s'] / row['infer_img_s']


def _fmt(value, spec):
    return format(value, spec) if isinstance(value, (int, float)) else '-'


def _table(title: str, header: str, align: str, rows: List[str]) -> List[str]:
    return [title, '', header, align, *rows]


def _block_markdown(report: dict) -> List[str]:
    return _table(
        '### Block: forward+backward, batch {}'.format(report['config']['batch']),
        '| C x H x W | block | time (ms) | peak extra (MiB) | time vs naive SPA | time vs NL | memory vs NL |',
        '|---|---|---:|---:|---:|---:|---:|',
        [f"| {r['channels']}x{r['height']}x{r['width']} | {r['block']} | {_fmt(r.get('time_ms'), '.2f')} | "
         f"{_fmt(r.get('peak_extra_mib'), '.1f')} | {_fmt(r.get('time_vs_spa_naive'), '.2f')} | "
         f"{_fmt(r.get('time_vs_nl'), '.3f')} | {_fmt(r.get('memory_vs_nl'), '.3f')} |"
         + (f" skipped: {r['skipped']}" if 'skipped' in r else '') for r in report['block']])


def _scaling_markdown(report: dict) -> List[str]:
    rows = []
    for size in sorted({r['height'] for r in report['scaling']}):
        spa = next(r for r in report['scaling'] if r['height'] == size and r['block'] == 'spa')
        nl = next(r for r in report['scaling'] if r['height'] == size and r['block'] == 'nl')
        rows.append(
            f"| {size} | {size * size} | {_fmt(spa.get('time_ms'), '.2f')} | {_fmt(nl.get('time_ms'), '.2f')} | "
            f"{_fmt(spa.get('peak_extra_mib'), '.1f')} | {_fmt(nl.get('peak_extra_mib'), '.1f')} | "
            f"{_fmt(spa.get('time_vs_nl'), '.3f')} | {_fmt(spa.get('memory_vs_nl'), '.4f')} |")
    return _table(
        f"### Scaling with positions: C = {SCALING_CHANNELS}, batch {report['config']['scaling_batch']}",
        '| H = W | n | SPA ms | NL ms | SPA MiB | NL MiB | time SPA/NL | memory SPA/NL |',
        '|---:|---:|---:|---:|---:|---:|---:|---:|', rows)


def _models_markdown(report: dict) -> List[str]:
    return _table(
        '### Models: images/s, batch {}, {}'.format(report['config']['model_batch'], report['config']['precision']),
        '| model | input | train img/s | infer img/s | train step vs baseline | inference vs baseline |',
        '|---|---:|---:|---:|---:|---:|',
        [f"| {r['model']} | {r['size']}x{r['size']} | {r['train_img_s']:.1f} | {r['infer_img_s']:.1f} | "
         f"{r['train_time_vs_baseline']:.3f}x | {r['infer_time_vs_baseline']:.3f}x |" for r in report['models']])


def _kernels_markdown(report: dict) -> List[str]:
    return _table(
        "### SPA's attention kernels for n <= C': forward+backward, batch {}, k = 2".format(report['config']['batch']),
        "| C' | n | materialised ms | fused ms | time fused / materialised | materialised MiB | fused MiB "
        "| layer uses |",
        '|---:|---:|---:|---:|---:|---:|---:|---|',
        [f"| {r['channels']} | {r['positions']} | {r['materialised_ms']:.2f} | {r['fused_ms']:.2f} | "
         f"{r['fused_ms'] / r['materialised_ms']:.2f} | {r['materialised_peak_extra_mib']:.1f} | "
         f"{r['fused_peak_extra_mib']:.1f} | {r['layer_uses']} |" for r in report['kernels']])


def _released_markdown(report: dict) -> List[str]:
    shapes = {}
    for r in report['released']:
        shapes.setdefault((r['channels'], r['height'], r['width']), {})[r['block']] = r
    rows = []
    for (channels, height, width), blocks in shapes.items():
        ours, naive, theirs = blocks['spa'], blocks['spa_naive'], blocks['spa_released']
        rows.append(
            f"| {channels}x{height}x{width} | {ours['time_ms']:.2f} | {naive['time_ms']:.2f} | "
            f"{theirs['time_ms']:.2f} | {ours['time_vs_spa_released']:.2f} | "
            f"{naive['time_ms'] / theirs['time_ms']:.2f} | {ours['peak_extra_mib']:.1f} | "
            f"{theirs['peak_extra_mib']:.1f} |")
    table = _table(
        "### Our block against the authors' released block: forward+backward, batch {}, C' = C, k = 2".format(
            report['config']['batch']),
        "| C x H x W | ours ms | naive ms | authors' ms | ours / authors' | naive / authors' | ours MiB "
        "| authors' MiB |",
        '|---|---:|---:|---:|---:|---:|---:|---:|', rows)
    return table + ([''] + _profile_markdown(report) if any('profile_ms' in r for r in report['released']) else [])


def _profile_markdown(report: dict) -> List[str]:
    """Beside the released table: each block's time by operation group, where the difference goes."""
    groups = [name for name, _ in PROFILE_GROUPS] + ['other']
    names = {'spa': 'ours', 'spa_released': "authors'"}
    return _table(
        "### Where the time goes: ms per forward+backward by operation (torch.profiler, 5 steps), batch {}".format(
            report['config']['batch']),
        '| C x H x W | block | ' + ' | '.join(groups) + ' | all |', '|---|---|' + '---:|' * (len(groups) + 1),
        [f"| {r['channels']}x{r['height']}x{r['width']} | {names[r['block']]} | "
         + ' | '.join(f"{r['profile_ms'][g]:.2f}" for g in groups) + f" | {sum(r['profile_ms'].values()):.2f} |"
         for r in report['released'] if 'profile_ms' in r])


MARKDOWN = dict(block=_block_markdown, scaling=_scaling_markdown, models=_models_markdown,
                kernels=_kernels_markdown, released=_released_markdown)
MARKDOWN_ORDER = ('block', 'scaling', 'models', 'kernels', 'released')


def markdown_tables(report: dict) -> str:
    """The tables a report holds, in reading order (a report from before a table existed has no key for it)."""
    lines = []
    for name in MARKDOWN_ORDER:
        if report.get(name):
            lines += ([''] if lines else []) + MARKDOWN[name](report)
    return '\n'.join(lines)


def plot_scaling(report: dict, path: Path) -> bool:
    if not report['scaling']:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind, style in (('spa', 'o-'), ('nl', 's--')):
        rows = [r for r in report['scaling'] if r['block'] == kind and 'time_ms' in r]
        n = [r['height'] * r['width'] for r in rows]
        axes[0].plot(n, [r['time_ms'] for r in rows], style, label=kind.upper())
        axes[1].plot(n, [r['peak_extra_mib'] for r in rows], style, label=kind.upper())
    for ax, label in zip(axes, ('forward+backward time (ms)', 'peak extra memory (MiB)'), strict=True):
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('positions n = H x W')
        ax.set_ylabel(label)
        ax.legend()
        ax.grid(True, which='both', alpha=0.3)
    meta = report['meta']
    fig.suptitle(f"SPA vs non-local, C = {SCALING_CHANNELS}, batch {report['config']['scaling_batch']} "
                 f"({meta['device_name']}, {meta['date'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _print_progress(rows):
    for row in rows:
        print('  ' + ', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}' for k, v in row.items()),
              flush=True)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch', type=positive_int, default=32, help='batch of the block table')
    parser.add_argument('--scaling-batch', type=positive_int, default=2, help='batch of the scaling table')
    parser.add_argument('--scaling-sizes', type=positive_int, nargs='+', default=list(SCALING_SIZES))
    parser.add_argument('--model-batch', type=positive_int, default=32)
    parser.add_argument('--repeats', type=positive_int, default=9)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--amp', action='store_true',
                        help='autocast in the model table: float16 on CUDA; bfloat16 on a CPU only where native')
    parser.add_argument('--amp-dtype', choices=sorted(AMP_DTYPES), default=None, help='force this autocast dtype')
    parser.add_argument('--memory-fraction', type=float, default=0.6,
                        help='skip NL rows whose attention matrices need more than this share of free memory')
    parser.add_argument('--tables', nargs='+', choices=TABLES, default=list(TABLES), help='which tables to run')
    parser.add_argument('--released', type=Path, default=None,
                        help="the authors' SPANet.py (git clone https://github.com/likyoo/SPANet): the fifth table")
    parser.add_argument('--tiny', action='store_true', help='every row at batch 1, one repeat: a smoke test')
    parser.add_argument('--output', type=Path, default=Path('benchmarks/results'))
    args = parser.parse_args(argv)
    if args.released is not None and not args.released.is_file():  # refused before hours of other tables
        parser.error(f'--released {args.released}: not a file; give the SPANet.py of '
                     'git clone https://github.com/likyoo/SPANet')
    if args.released is None and 'released' in args.tables and set(args.tables) != set(TABLES):
        parser.error('--tables released needs --released PATH: the SPANet.py of '
                     'git clone https://github.com/likyoo/SPANet')
    if args.tiny:
        args.batch = args.scaling_batch = args.model_batch = args.repeats = 1
        args.warmup = 0
        args.scaling_sizes = [8, 16, 32]
    return args


def portable_command(argv: List[str]) -> str:
    """The command as recorded in a committed report: a file given by absolute path is named by its file name
    (the authors' SPANet.py lies wherever a user cloned it; `released_sha256` says which file it was)."""
    return ' '.join(['python -m benchmarks.attention_cost',
                     *(Path(a).name if os.path.isabs(a) and Path(a).is_file() else a for a in argv)])


def main(argv: Optional[List[str]] = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:  # a wrong file is refused before hours of other tables
        args.released_block = released_block_class(args.released) if args.released else None
    except ValueError as e:
        raise SystemExit(f'python -m benchmarks.attention_cost: error: {e}') from None
    device = torch.device(args.device)
    args.amp_dtype, warning = resolve_amp_dtype(args.amp, args.amp_dtype, device)
    if warning:
        print(f'warning: {warning}', flush=True)
    budget = _memory_budget(device, args.memory_fraction)
    report = dict(
        meta=dict(
            date=datetime.now(timezone.utc).isoformat(timespec='seconds'), device=device.type,
            device_name=hardware(device, 1), command=portable_command(argv), commit=git_commit(),
            released_sha256=file_sha256(args.released) if args.released else None, **software()),
        config=dict(batch=args.batch, scaling_batch=args.scaling_batch, model_batch=args.model_batch,
                    repeats=args.repeats, warmup=args.warmup, precision=describe_precision(args.amp_dtype),
                    tiny=args.tiny))
    tables = dict(block=lambda: block_table(args, device, budget), scaling=lambda: scaling_table(args, device, budget),
                  models=lambda: model_table(args, device), kernels=lambda: kernel_table(args, device),
                  released=lambda: released_table(args, device, budget))
    with strict_float32():  # the float32 rows are float32 on CUDA too (TF32 would also fail the SPA == naive check)
        for name in TABLES:
            print(f'{name} table', flush=True)
            report[name] = tables[name]() if name in args.tables else []
    add_ratios(report)

    args.output.mkdir(parents=True, exist_ok=True)
    # a run of some tables only writes files of its own, never over a full run's
    partial_run = '' if set(args.tables) >= set(TABLES) - {'released'} else '_' + '_'.join(args.tables)
    stem = f"attention_cost_{device.type}{partial_run}{'_tiny' if args.tiny else ''}"
    (args.output / f'{stem}.json').write_text(json.dumps(report, indent=2))
    text = markdown_tables(report)
    (args.output / f'{stem}.md').write_text(text + '\n')
    plotted = plot_scaling(report, args.output / f'{stem}.png')
    print()
    print(text)
    print(f"\nwrote {args.output / stem}.json, .md{' and .png' if plotted else ''}")
    return report


if __name__ == '__main__':
    main()
