"""Evaluate a model on a split of a supported data set: top-1 and top-5, printed and written as JSON.

    python -m train.validate --model resnet18_spa --checkpoint runs/r18/model_best.safetensors \\
        --dataset cifar10 --data-dir DATA --split test
    python -m train.validate --model resnet18_spa.cifar10 --pretrained --dataset cifar10 --data-dir DATA
    python -m train.validate --run runs/r18 --split test     # a finished run: its model, data and weights
"""
import argparse
import json
from pathlib import Path
from typing import List, Optional

import timm
import torch
from timm.utils import ParseKwargs

import timm_spa  # noqa: F401  registers the models

from .checkpoint import BEST, CheckpointError, load_weights
from .data import DATASETS, DataError, TransformedSamples, build_loader, build_transforms, load_dataset
from .distributed import DistEnv
from .engine import AMP_DTYPES, evaluate
from .report import RESULTS

PROG = 'python -m train.validate'
SPLITS = ('test', 'val', 'train')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--run', default=None, help='a training run directory: model, data set and best weights')
    p.add_argument('--model', default=None, help='model name, hf-hub:ORG/NAME or local-dir:PATH')
    p.add_argument('--checkpoint', default=None, help='weights: .safetensors, or a PyTorch file (weights_only)')
    p.add_argument('--pretrained', action='store_true')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    p.add_argument('--dataset', default=None, choices=DATASETS)
    p.add_argument('--data-dir', default=None)
    p.add_argument('--split', default='test', choices=SPLITS)
    p.add_argument('--val-size', type=int, default=None)
    p.add_argument('--val-split-seed', type=int, default=0)
    p.add_argument('--img-size', type=int, default=None)
    p.add_argument('-b', '--batch-size', type=int, default=256)
    p.add_argument('-j', '--workers', type=int, default=2)
    p.add_argument('--amp-dtype', choices=sorted(AMP_DTYPES), default=None)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--output-json', default=None, help='where to write the metrics (default: printed only)')
    return p.parse_args(argv)


def _from_run(args: argparse.Namespace) -> None:
    """Fill model, data and weights from a run's results file, leaving explicit flags alone."""
    run = Path(args.run)
    path = run / RESULTS
    if not path.is_file():
        raise DataError(f'{run} has no {RESULTS}: pass a finished training run directory.')
    results = json.loads(path.read_text())
    trained = results['args']
    args.model = args.model or results['model']
    args.model_kwargs = args.model_kwargs or results['model_args']['model_kwargs']
    args.checkpoint = args.checkpoint or str(run / BEST)
    args.dataset = args.dataset or trained['dataset']
    args.data_dir = args.data_dir or trained['data_dir']
    args.val_size = args.val_size or trained['val_size']
    args.val_split_seed = trained['val_split_seed'] if args.val_split_seed == 0 else args.val_split_seed
    args.img_size = args.img_size or trained['img_size']


def validate(args: argparse.Namespace) -> dict:
    if args.run:
        _from_run(args)
    if not args.model or not args.dataset:
        raise DataError('name a --model and a --dataset (or a --run directory that records both).')
    splits = load_dataset(args.dataset, args.data_dir, args.val_size, args.val_split_seed)
    model = timm.create_model(args.model, pretrained=args.pretrained, num_classes=splits.num_classes,
                              **args.model_kwargs)
    if args.checkpoint:
        load_weights(model, args.checkpoint, args.model)
    samples, indices = splits.split(args.split)
    dataset = TransformedSamples(samples, indices, build_transforms(splits, args.img_size or splits.image_size, False))
    env = DistEnv(device=torch.device(args.device))
    metrics = evaluate(model.to(env.device), build_loader(dataset, args.batch_size, False, args.workers, 0), env,
                       args.amp_dtype)
    report = dict(model=args.model, checkpoint=args.checkpoint, pretrained=args.pretrained, dataset=splits.label,
                  split=args.split, images=metrics['count'], top1=metrics['top1'], top5=metrics['top5'],
                  loss=metrics['loss'])
    print(f"{args.model} on {splits.label} [{args.split}]: top-1 {metrics['top1']:.2f} top-5 {metrics['top5']:.2f} "
          f"({metrics['count']} images)")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(report, indent=2))
    return report


def main(argv: Optional[List[str]] = None) -> None:
    try:
        validate(parse_args(argv))
    except (DataError, CheckpointError) as e:
        raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
    main()
