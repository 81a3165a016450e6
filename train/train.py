"""Train a timm-spa model with the paper's recipe, choose the checkpoint on held-out data, test once.

    python -m train --dataset cifar10 --data-dir DATA --model resnet18_spa --output runs/r18spa
    torchrun --nproc_per_node=2 -m train ...          # DDP: NCCL on GPUs, gloo on CPUs

Defaults are the paper's recipe (SGD momentum 0.9, lr 0.1, batch 128, weight decay 5e-4, cosine,
200 epochs, pad-4 crop + flip). The run directory gets `last.pth.tar` (everything needed to resume,
written atomically every epoch), `model_best.safetensors` (best on the validation split held out of
train), `summary.csv`, `curves.png` and `results.json` (the numbers the hub tooling publishes).
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import timm
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, ParseKwargs
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import timm_spa  # noqa: F401  registers the models

from .checkpoint import (
    BEST,
    LAST,
    CheckpointError,
    load_training_state,
    load_weights,
    save_training_state,
    save_weights,
)
from .data import DATASETS, DataError, TransformedSamples, build_loader, build_transforms, load_dataset
from .distributed import barrier, cleanup, init_distributed
from .engine import AMP_DTYPES, evaluate, train_one_epoch
from .report import (
    CURVES,
    RESULTS,
    RESULTS_VERSION,
    SUMMARY,
    git_commit,
    hardware,
    plot_curves,
    read_summary,
    software,
    write_results,
    write_summary,
)

PROG = 'python -m train'
RUN_FILES = (LAST, BEST, RESULTS, SUMMARY, 'args.json')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group('data')
    g.add_argument('--dataset', default='cifar10', choices=DATASETS)
    g.add_argument('--data-dir', default=None, help='data set root (see README for the layouts)')
    g.add_argument('--download', action='store_true', help='download CIFAR into --data-dir if it is not there')
    g.add_argument('--val-size', type=int, default=None,
                   help='images held out of train to choose the checkpoint (default 5000 for CIFAR)')
    g.add_argument('--val-split-seed', type=int, default=0, help='fixes which images are held out')
    g.add_argument('--dataset-label', default=None, help='name to report the data set under, e.g. its caveats')
    g.add_argument('--img-size', type=int, default=None, help='input size (default: the data set native size)')
    g.add_argument('-j', '--workers', type=int, default=2)
    g = p.add_argument_group('model')
    g.add_argument('--model', default='resnet18_spa')
    g.add_argument('--pretrained', action='store_true')
    g.add_argument('--num-classes', type=int, default=None, help='default: the data set class count')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='e.g. attn_stages=(1,) "attn_kwargs={\'k\': 8}"')
    g.add_argument('--channels-last', action='store_true')
    g = p.add_argument_group('recipe')
    g.add_argument('--epochs', type=int, default=200)
    g.add_argument('-b', '--batch-size', type=int, default=128)
    g.add_argument('--opt', default='momentum', help="timm optimizer name ('momentum' = SGD without Nesterov)")
    g.add_argument('--lr', type=float, default=0.1)
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=5e-4)
    g.add_argument('--sched', default='cosine')
    g.add_argument('--min-lr', type=float, default=0.0)
    g.add_argument('--warmup-epochs', type=int, default=0)
    g.add_argument('--model-ema', action='store_true', help='keep an EMA of the weights; it is what gets validated')
    g.add_argument('--model-ema-decay', type=float, default=0.999)
    g.add_argument('--amp', action='store_true', help='mixed precision (autocast)')
    g.add_argument('--amp-dtype', choices=sorted(AMP_DTYPES), default=None,
                   help='default bfloat16 on CPU, float16 on CUDA')
    g.add_argument('--seed', type=int, default=42)
    g = p.add_argument_group('run')
    g.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    g.add_argument('--output', default=None, help='run directory (default runs/<model>-<dataset>-seed<seed>)')
    g.add_argument('--resume', default=None, help='continue the run in this directory (or from its last.pth.tar)')
    g.add_argument('--overwrite', action='store_true', help='allow --output to hold another run')
    g.add_argument('--log-interval', type=int, default=50, help='log every N steps (0: per epoch only)')
    g.add_argument('--progress', action=argparse.BooleanOptionalAction, default=None,
                   help='progress bar (default: when stderr is a terminal)')
    args = p.parse_args(argv)
    if args.amp and args.amp_dtype is None:
        args.amp_dtype = 'float16' if args.device.startswith('cuda') else 'bfloat16'
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    return args


def _run_dir(args: argparse.Namespace) -> Path:
    if args.output:
        out = Path(args.output)
    elif args.resume:
        resume = Path(args.resume)
        out = resume if resume.is_dir() else resume.parent
    else:
        out = Path('runs') / f'{args.model}-{args.dataset}-seed{args.seed}'
    held = [name for name in RUN_FILES if (out / name).exists()]
    if held and not args.resume and not args.overwrite:
        raise SystemExit(f'error: {out} already holds a run ({", ".join(held)}). Pass --resume {out} to continue '
                         'it, --overwrite to replace it, or another --output.')
    return out


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """The random stream of an epoch is a function of (seed, epoch, rank) alone, so a resumed run
    draws exactly what the uninterrupted run drew, for any number of ranks and loader workers."""
    value = (seed * 1_000_003 + epoch * 9_973 + rank) % 2**31
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)


def _arch(args: argparse.Namespace, num_classes: int) -> dict:
    return dict(model=args.model, num_classes=num_classes, model_kwargs=dict(args.model_kwargs))


def _check_resume_arch(saved: dict, wanted: dict, path: str) -> None:
    diffs = [f'{key}: checkpoint {saved.get(key)!r}, this run {wanted[key]!r}'
             for key in wanted if saved.get(key) != wanted[key]]
    if diffs:
        raise CheckpointError(f'--resume {path} was trained with another architecture ({"; ".join(diffs)}). '
                              'Resume with the same --model, --num-classes and --model-kwargs, or start a new run.')


def run(args: argparse.Namespace) -> Optional[dict]:
    env = init_distributed(args.device)
    log = print if env.is_main else (lambda *_: None)
    started = time.time()
    try:
        out = _run_dir(args)
        splits = load_dataset(args.dataset, args.data_dir, args.val_size, args.val_split_seed, args.download,
                              args.dataset_label)
        num_classes = args.num_classes or splits.num_classes
        if num_classes != splits.num_classes:
            raise DataError(f'--num-classes {num_classes} disagrees with the data set: {splits.label} has '
                            f'{splits.num_classes} classes. Drop --num-classes or point --data-dir at the right data.')
        image_size = args.img_size or splits.image_size
        train_set = TransformedSamples(splits.train, splits.train_indices, build_transforms(splits, image_size, True))
        eval_tf = build_transforms(splits, image_size, False)
        val_set = TransformedSamples(splits.train, splits.val_indices, eval_tf)
        test_set = TransformedSamples(splits.test, None, eval_tf)
        loader_args = dict(workers=args.workers, seed=args.seed, rank=env.rank, world_size=env.world_size,
                           pin_memory=env.device.type == 'cuda')
        train_loader = build_loader(train_set, args.batch_size, True, **loader_args)
        val_loader = build_loader(val_set, args.batch_size, False, **loader_args)
        test_loader = build_loader(test_set, args.batch_size, False, **loader_args)

        _seed_epoch(args.seed, -1, 0)  # identical initial weights on every rank
        arch = _arch(args, num_classes)
        model = timm.create_model(args.model, pretrained=args.pretrained, num_classes=num_classes,
                                  **args.model_kwargs).to(env.device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                        momentum=args.momentum)
        scheduler, num_epochs = create_scheduler_v2(optimizer, sched=args.sched, num_epochs=args.epochs,
                                                    min_lr=args.min_lr, warmup_epochs=args.warmup_epochs)
        ema = ModelEmaV3(model, decay=args.model_ema_decay) if args.model_ema else None
        scaler = torch.amp.GradScaler(env.device.type) if args.amp_dtype == 'float16' else None

        start_epoch, best, history = 0, dict(top1=-1.0, epoch=-1), []
        if args.resume:
            state = load_training_state(args.resume)
            _check_resume_arch(state['arch'], arch, args.resume)
            model.load_state_dict(state['model'])
            optimizer.load_state_dict(state['optimizer'])
            scheduler.load_state_dict(state['scheduler'])
            if ema is not None and state.get('ema') is not None:
                ema.load_state_dict(state['ema'])
            if scaler is not None and state.get('scaler') is not None:
                scaler.load_state_dict(state['scaler'])
            start_epoch, best = state['epoch'] + 1, state['best']
            history = [row for row in read_summary(out / SUMMARY) if row['epoch'] < start_epoch]
            log(f'resumed {args.resume} at epoch {start_epoch} (best val top-1 {best["top1"]:.2f} at {best["epoch"]})')
        train_model = DistributedDataParallel(model, device_ids=[env.device] if env.device.type == 'cuda' else None) \
            if env.distributed else model
        eval_model = ema.module if ema is not None else model

        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / 'args.json').write_text(json.dumps(vars(args), indent=2, default=str))
            log(f'{args.model} on {splits.label}: {len(train_set)} train / {len(val_set)} val / {len(test_set)} test '
                f'images, {num_classes} classes, {num_epochs} epochs, {env.world_size} process(es) on '
                f'{env.device.type}; run directory {out}')
        loss_fn = nn.CrossEntropyLoss()
        for epoch in range(start_epoch, num_epochs):
            _seed_epoch(args.seed, epoch, env.rank)
            train_loader.sampler.set_epoch(epoch)
            stats = train_one_epoch(
                train_model, train_loader, optimizer, loss_fn, env, args.amp_dtype, scaler, ema,
                args.channels_last, epoch, args.log_interval, args.progress, log)
            scheduler.step(epoch + 1)
            val = evaluate(eval_model, val_loader, env, args.amp_dtype, args.channels_last)
            row = dict(epoch=epoch, lr=optimizer.param_groups[0]['lr'], **stats,
                       val_loss=val['loss'], val_top1=val['top1'], val_top5=val['top5'])
            history.append(row)
            improved = val['top1'] > best['top1']
            if improved:
                best = dict(top1=val['top1'], top5=val['top5'], epoch=epoch)
            if env.is_main:
                if improved:
                    save_weights(out / BEST, eval_model, metadata=dict(arch=json.dumps(arch), epoch=str(epoch)))
                write_summary(out / SUMMARY, history)
                save_training_state(out / LAST, dict(
                    model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    ema=ema.state_dict() if ema is not None else None,
                    scaler=scaler.state_dict() if scaler is not None else None,
                    epoch=epoch, best=best, arch=arch, args={k: str(v) for k, v in vars(args).items()}))
            log(f"epoch {epoch}: train loss {stats['train_loss']:.4f} top-1 {stats['train_top1']:.2f} | val "
                f"top-1 {val['top1']:.2f} top-5 {val['top5']:.2f} | {stats['img_s']:.1f} img/s, data "
                f"{100 * stats['data_share']:.0f}% of step time{' *best*' if improved else ''}")

        # the checkpoint chosen on the validation split, evaluated once on the test split
        barrier(env)  # rank 0 wrote it
        load_weights(eval_model, out / BEST, args.model)
        # in float32 whatever the training precision: the number anyone reloading the weights reproduces
        test = evaluate(eval_model, test_loader, env, None, args.channels_last)
        if test['count'] != len(test_set):
            raise RuntimeError(f'evaluated {test["count"]} test images, expected {len(test_set)}')
        results = dict(
            results_version=RESULTS_VERSION, model=args.model, tag=splits.tag if num_classes == splits.num_classes
            else None, model_args=arch, param_count=sum(p.numel() for p in model.parameters()),
            dataset=dict(name=args.dataset, label=splits.label, notes=splits.notes, num_classes=num_classes,
                         class_names=splits.class_names, train_images=len(train_set), val_images=len(val_set),
                         test_images=len(test_set), val_split_seed=args.val_split_seed, image_size=image_size,
                         mean=splits.mean, std=splits.std),
            epochs=num_epochs, seed=args.seed, best_epoch=best['epoch'], val_top1=best['top1'],
            val_top5=best.get('top5'), test_top1=test['top1'], test_top5=test['top5'], test_loss=test['loss'],
            checkpoint_selection=f'best validation top-1 on {len(val_set)} images held out of train '
                                 f'(split seed {args.val_split_seed}); test split evaluated once, every image '
                                 'once, in float32',
            wall_time_s=time.time() - started, hardware=hardware(env.device, env.world_size),
            world_size=env.world_size, amp_dtype=args.amp_dtype, software=software(), git_commit=git_commit(),
            args={k: v for k, v in vars(args).items()},
            files=dict(weights=BEST, checkpoint=LAST, summary=SUMMARY, curves=CURVES))
        if env.is_main:
            plot_curves(out / CURVES, history, f'{args.model} on {splits.label}')
            write_results(out / RESULTS, results)
            log(f"test top-1 {test['top1']:.2f} top-5 {test['top5']:.2f} ({test['count']} images) for the "
                f"epoch-{best['epoch']} checkpoint chosen on validation top-1 {best['top1']:.2f}")
            log(f'wrote {out / RESULTS}, {out / BEST}, {out / SUMMARY}, {out / CURVES}')
        return results
    finally:
        cleanup(env)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except (DataError, CheckpointError) as e:
        raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
    main()
