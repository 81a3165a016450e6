"""Training images/s of the real pipeline (`python -m train`'s loader, augmentation and step), per model.

    python -m benchmarks.train_throughput --data-dir ../shared/data/cifar10-jpeg --amp

Each model trains for `--steps` batches of the data set's training split after `--warmup` batches,
through `train.engine.train_one_epoch`; the table gives images/s, the ratio to the first row,
and the share of step time spent waiting for the data loader. `--settings` measures each model
under several of `python -m train`'s speed flags side by side (they are safe to change on
`--resume`), e.g. `--settings contiguous channels-last compiled` to pick the fastest for a CPU:

    python -m benchmarks.train_throughput --data-dir ../shared/data/cifar10-jpeg --models resnet18_spa \
        --settings contiguous channels-last compiled
"""
import argparse
import json
from pathlib import Path
from typing import List, Optional

import timm
import torch
from timm.optim import create_optimizer_v2
from torch import nn

from train.cli import UsageError, check_model_name, check_torchcompile, positive_int, run_cli
from train.data import DATASETS, TransformedSamples, build_loader, build_transforms, load_dataset
from train.distributed import DistEnv
from train.engine import train_one_epoch
from train.precision import AMP_DTYPES, cpu_flags, describe_flags, describe_precision, resolve_amp_dtype
from train.report import hardware, software

# a setting: (memory format is channels-last, torch.compile'd with inductor), as `python -m train`'s
# --channels-last and --torchcompile
SETTINGS = {
    'contiguous': (False, False),
    'channels-last': (True, False),
    'compiled': (False, True),
    'channels-last+compiled': (True, True),
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', default='cifar10', choices=DATASETS)
    p.add_argument('--data-dir', default=None)
    p.add_argument('--models', nargs='+', default=['resnet18_cifar', 'resnet18_spa', 'resnet18_nl', 'resnet18_gc'])
    p.add_argument('-b', '--batch-size', type=positive_int, default=128)
    p.add_argument('--steps', type=positive_int, default=20)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('-j', '--workers', type=int, default=2)
    p.add_argument('--settings', nargs='+', choices=list(SETTINGS), default=['contiguous'],
                   help='measure every model under each of these (memory format, torch.compile) settings')
    p.add_argument('--amp', action='store_true',
                   help='autocast: float16 on CUDA, bfloat16 only on a CPU that has it natively (else float32)')
    p.add_argument('--amp-dtype', choices=sorted(AMP_DTYPES), default=None, help='force this autocast dtype')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--aa', default=None, metavar='POLICY', help="python -m train's --aa (timm's augmentation policy)")
    p.add_argument('--reprob', type=float, default=0.0, help="python -m train's --reprob (random erasing)")
    p.add_argument('--output-json', default=None, help='also write the rows here, and the table beside it (.md)')
    args = p.parse_args(argv)
    if args.output_json and Path(args.output_json).suffix != '.json':
        p.error(f'--output-json {args.output_json}: give a .json path; the table is written beside it as .md')
    if args.warmup < 0:
        p.error(f'--warmup {args.warmup}: give 0 or more batches')
    args.settings = list(dict.fromkeys(args.settings))
    if any(SETTINGS[setting][1] for setting in args.settings):
        try:
            check_torchcompile('inductor', args.device)
        except UsageError as e:
            p.error(str(e).replace('--torchcompile', 'the compiled settings'))
    return args


def main(argv: Optional[List[str]] = None) -> List[dict]:
    args = parse_args(argv)
    return run_cli('python -m benchmarks.train_throughput', lambda: measure(args))


def measure(args: argparse.Namespace) -> List[dict]:
    for name in args.models:
        check_model_name(name)
    env = DistEnv(device=torch.device(args.device))
    amp_dtype, warning = resolve_amp_dtype(args.amp, args.amp_dtype, env.device)
    if warning:
        print(f'warning: {warning}', flush=True)
    splits = load_dataset(args.dataset, args.data_dir)
    transform = build_transforms(splits, splits.image_size, True, args.aa, args.reprob)
    count = (args.warmup + args.steps) * args.batch_size
    if count > len(splits.train_indices):
        raise UsageError(f'--warmup {args.warmup} + --steps {args.steps} batches of {args.batch_size} need {count:,} '
                         f'train images; {splits.label} has {len(splits.train_indices):,}. Ask for fewer steps.')
    indices = splits.train_indices[:count]
    warm = build_loader(TransformedSamples(splits.train, indices[:args.warmup * args.batch_size], transform),
                        args.batch_size, True, args.workers, 0)
    timed = build_loader(TransformedSamples(splits.train, indices[args.warmup * args.batch_size:], transform),
                         args.batch_size, True, args.workers, 0)
    rows = []
    for name in args.models:
        for setting in args.settings:
            channels_last, compiled = SETTINGS[setting]
            torch.manual_seed(0)
            model = timm.create_model(name, num_classes=splits.num_classes).to(env.device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            optimizer = create_optimizer_v2(model, opt='momentum', lr=0.1, weight_decay=5e-4, momentum=0.9)
            # static shapes as in `python -m train`; the warm-up batches pay for the compilation
            step_model = torch.compile(model, dynamic=False) if compiled else model
            step = dict(optimizer=optimizer, loss_fn=nn.CrossEntropyLoss(), env=env, amp_dtype=amp_dtype,
                        channels_last=channels_last)
            train_one_epoch(step_model, warm, **step)
            stats = train_one_epoch(step_model, timed, **step)
            rows.append(dict(model=name, setting=setting, img_s=stats['img_s'], data_share=stats['data_share']))
            print(f"{name} ({setting}): {stats['img_s']:.1f} img/s, data loading {100 * stats['data_share']:.1f}% "
                  'of step time', flush=True)
    augment = ''.join(f', {flag} {value}' for flag, value in (('--aa', args.aa), ('--reprob', args.reprob)) if value)
    text = table(rows, f"{splits.label}{augment}, batch {args.batch_size}, {args.steps} steps after {args.warmup} "
                       f"warm-up, {describe_precision(amp_dtype)}, {args.workers} loader workers, "
                       f"{hardware(env.device, 1)}"
                       + (f' ({describe_flags(cpu_flags())})' if env.device.type == 'cpu' else ''))
    print(f'\n{text}')
    if args.output_json:
        out = Path(args.output_json)
        out.write_text(json.dumps(dict(rows=rows, args=vars(args), software=software()), indent=2))
        out.with_suffix('.md').write_text(text + '\n')
        print(f'wrote {out} and {out.with_suffix(".md")}')
    return rows


def table(rows: List[dict], context: str) -> str:
    """The rows as the markdown table docs/cost.md shows, under a line saying what was measured where."""
    base = rows[0]['img_s']
    lines = [context, '', '| model | setting | train img/s | step time vs first row | data loading share |',
             '|---|---|---:|---:|---:|']
    lines += [f"| {r['model']} | {r['setting']} | {r['img_s']:.1f} | {base / r['img_s']:.3f}x | "
              f"{100 * r['data_share']:.1f}% |" for r in rows]
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
