"""Show what SPA, non-local and global-context blocks attend to, for any model of ours.

    python -m visualize --run runs/r18 --num-images 4 --output spa.png     # a finished run, its data set
    python -m visualize --model resnet18_spa --checkpoint runs/r18/model_best.safetensors \\
        --dataset cifar10 --data-dir ../shared/data/cifar10-jpeg --num-images 4 --output spa.png
    python -m visualize --model resnet18_nl.cifar10 --pretrained --images cat.png --query 2,3 --output nl.png

One PNG (a row per image) and the same data as arrays in a .npz beside it: for SPA blocks the k
selected salient positions drawn at their image location, the saliency map and the C' x C' channel
affinity; for non-local blocks the attention maps of the query positions (paper Fig. 1) and the
n x n affinity (Fig. 2); for global-context blocks the context mask; and each image's prediction, its
probability and whether it was right (Fig. 7).
"""
import argparse
from pathlib import Path
from typing import List, Optional

from timm_spa.models import PretrainedWeightsUnavailable, WeightsDownloadError
from train.cli import ModelKwargs, UsageError, add_debug_flag, positive_int, run_cli
from train.data import DATASETS

from .figure import Request, draw_attention, parse_query

PROG = 'python -m visualize'


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default=None, help='model name, hf-hub:ORG/NAME or local-dir:PATH')
    p.add_argument('--run', default=None, help='a finished training run: its model, weights and data set')
    p.add_argument('--checkpoint', default=None)
    p.add_argument('--pretrained', action='store_true')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ModelKwargs)
    p.add_argument('--images', nargs='+', default=None, help='image files')
    p.add_argument('--dataset', default=None, choices=DATASETS, help='draw images from a data set split instead')
    p.add_argument('--data-dir', default=None)
    p.add_argument('--split', default='test', choices=('test', 'val', 'train'))
    p.add_argument('--val-size', type=int, default=None)
    p.add_argument('--num-images', type=positive_int, default=4)
    p.add_argument('--seed', type=int, default=0, help='which images are drawn from the split')
    p.add_argument('--img-size', type=int, default=None)
    p.add_argument('--query', action='append', default=None, metavar='ROW,COL',
                   help='non-local query position in feature-map cells (repeatable; default: four spread cells)')
    p.add_argument('--output', default='attention.png', help='PNG to write; the .npz goes beside it')
    add_debug_flag(p)
    return p.parse_args(argv)


def request(args: argparse.Namespace) -> Request:
    return Request(
        model=args.model, run=args.run, checkpoint=args.checkpoint, pretrained=args.pretrained,
        model_kwargs=dict(args.model_kwargs), images=args.images, dataset=args.dataset, data_dir=args.data_dir,
        split=args.split, val_size=args.val_size, num_images=args.num_images, seed=args.seed, img_size=args.img_size,
        queries=[parse_query(text) for text in args.query] if args.query else None, output=args.output)


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)

    def body():
        output = Path(args.output)
        if output.is_dir() or output.suffix.lower() != '.png':
            what, fix = ('is a folder', output / 'attention.png') if output.is_dir() else \
                ('is not a .png file', output.with_suffix('.png'))
            raise UsageError(f'--output {args.output} {what}: give the PNG file to write, e.g. {fix}.')
        result = draw_attention(request(args))
        print(f'wrote {args.output} and {Path(args.output).with_suffix(".npz")}')
        return result

    return run_cli(PROG, body, args.debug, (PretrainedWeightsUnavailable, WeightsDownloadError))


if __name__ == '__main__':
    main()
