"""Evaluate a model on a split of a supported data set: top-1 and top-5, printed and written as JSON.

    python -m train.validate --model resnet18_spa --checkpoint runs/r18/model_best.safetensors \\
        --dataset cifar10 --data-dir DATA --split test
    python -m train.validate --model resnet18_spa.cifar10 --pretrained --dataset cifar10 --data-dir DATA
    python -m train.validate --run runs/r18 --split test     # a finished run: its model, data and weights
    python -m train.validate --model resnet18_spa --checkpoint runs/r18/last.pth.tar --use-ema ...
"""
import argparse
import json
from pathlib import Path
from typing import List, Optional

import timm
import torch

import timm_spa  # noqa: F401  registers the models
from timm_spa.models import PretrainedWeightsUnavailable, WeightsDownloadError

from .checkpoint import load_weights
from .cli import (
    ModelKwargs,
    UsageError,
    add_debug_flag,
    check_device,
    check_model_name,
    int_at_least,
    positive_int,
    run_cli,
)
from .data import DATASETS, DataError, TransformedSamples, build_loader, build_transforms, load_dataset
from .distributed import DistEnv
from .engine import evaluate
from .precision import AMP_DTYPES, describe_precision, resolve_amp_dtype
from .run_dir import RunDir, check_not_a_run_file

PROG = 'python -m train.validate'
SPLITS = ('test', 'val', 'train')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--run', default=None, help='a finished training run directory: model, data set and best weights')
    p.add_argument('--model', default=None, help='model name, hf-hub:ORG/NAME or local-dir:PATH')
    p.add_argument('--checkpoint', default=None,
                   help='weights: .safetensors, or a PyTorch file (weights_only), e.g. a run\'s last.pth.tar')
    p.add_argument('--use-ema', action='store_true', help="a checkpoint's EMA weights (state_dict_ema), as timm's")
    p.add_argument('--pretrained', action='store_true')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ModelKwargs)
    p.add_argument('--dataset', default=None, choices=DATASETS)
    p.add_argument('--data-dir', default=None)
    p.add_argument('--split', default='test', choices=SPLITS)
    p.add_argument('--val-size', type=int, default=None)
    p.add_argument('--val-split-seed', type=int, default=None)
    p.add_argument('--img-size', type=positive_int, default=None)
    p.add_argument('-b', '--batch-size', type=positive_int, default=256)
    p.add_argument('-j', '--workers', type=int_at_least(0), default=2)
    p.add_argument('--amp', action='store_true', help='autocast where it pays (bfloat16 only on a CPU that has it)')
    p.add_argument('--amp-dtype', choices=sorted(AMP_DTYPES), default=None, help='force this autocast dtype')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--output-json', default=None, help='where to write the metrics (default: printed only)')
    add_debug_flag(p)
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> dict:
    if args.output_json:  # before the evaluation, not after it
        check_not_a_run_file(args.output_json, '--output-json')
    recorded = None
    if args.run:
        finished = RunDir(args.run).read_finished(check_checkpoint=False)
        finished.fill_unset(args)
        recorded = finished.results.dataset
    if not args.model or not args.dataset:
        raise UsageError('name a --model and a --dataset (or a --run directory that records both).')
    check_model_name(args.model)
    check_device(args.device)
    env = DistEnv(device=torch.device(args.device))
    amp_dtype, warning = resolve_amp_dtype(args.amp, args.amp_dtype, env.device)
    if warning:
        print(f'warning: {warning}', flush=True)
    splits = load_dataset(args.dataset, args.data_dir, args.val_size, args.val_split_seed or 0)
    if recorded is not None and recorded.fingerprint and recorded.name == args.dataset and \
            splits.fingerprint() != recorded.fingerprint:  # a changed copy of its own data set: not its number
        raise DataError(f'--run {args.run} was trained and tested on other images or labels than {args.dataset} at '
                        f'{args.data_dir} holds (fingerprint {recorded.fingerprint[:12]}, here '
                        f'{splits.fingerprint()[:12]}). Point --data-dir at the data set the run used, or evaluate '
                        'the weights without --run (--model and --checkpoint), under this data set\'s name.')
    model = timm.create_model(args.model, pretrained=args.pretrained, num_classes=splits.num_classes,
                              **args.model_kwargs)
    if args.checkpoint:
        load_weights(model, args.checkpoint, args.model, use_ema=args.use_ema)
    samples, indices = splits.split(args.split)
    dataset = TransformedSamples(samples, indices, build_transforms(splits, args.img_size or splits.image_size, False))
    metrics = evaluate(model.to(env.device), build_loader(dataset, args.batch_size, False, args.workers, 0), env,
                       amp_dtype)
    report = dict(model=args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, dataset=splits.label,
                  split=args.split, images=metrics['count'], top1=metrics['top1'], top5=metrics['top5'],
                  loss=metrics['loss'], precision=describe_precision(amp_dtype))
    print(f"{args.model} on {splits.label} [{args.split}]: top-1 {metrics['top1']:.2f} top-5 {metrics['top5']:.2f} "
          f"({metrics['count']} images, {describe_precision(amp_dtype)})")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=2))
    return report


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    return run_cli(PROG, lambda: validate(args), args.debug, (PretrainedWeightsUnavailable, WeightsDownloadError))


if __name__ == '__main__':
    main()
