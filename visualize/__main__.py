"""Show what SPA, non-local and global-context blocks attend to, for any model of ours.

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
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import timm
import torch
from PIL import Image, UnidentifiedImageError
from timm.utils import ParseKwargs
from torchvision import transforms

from timm_spa.capture import capture_attention
from train.checkpoint import load_weights
from train.data import DATASETS, DataSplits, build_transforms, load_dataset

from .render import render


class VisualizeError(ValueError):
    """Bad input to the visualisation: named, with what is allowed."""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='python -m visualize', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, help='model name, hf-hub:ORG/NAME or local-dir:PATH')
    p.add_argument('--checkpoint', default=None)
    p.add_argument('--pretrained', action='store_true')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    p.add_argument('--images', nargs='+', default=None, help='image files')
    p.add_argument('--dataset', default=None, choices=DATASETS, help='draw images from a data set split instead')
    p.add_argument('--data-dir', default=None)
    p.add_argument('--split', default='test', choices=('test', 'val', 'train'))
    p.add_argument('--val-size', type=int, default=None)
    p.add_argument('--num-images', type=int, default=4)
    p.add_argument('--seed', type=int, default=0, help='which images are drawn from the split')
    p.add_argument('--img-size', type=int, default=None)
    p.add_argument('--query', action='append', default=None, metavar='ROW,COL',
                   help='non-local query position in feature-map cells (repeatable; default: four spread cells)')
    p.add_argument('--output', default='attention.png', help='PNG to write; the .npz goes beside it')
    return p.parse_args(argv)


def _queries(args: argparse.Namespace) -> Optional[List[Tuple[int, int]]]:
    if not args.query:
        return None
    out = []
    for text in args.query:
        try:
            row, col = (int(v) for v in text.split(','))
        except ValueError:
            raise VisualizeError(f'--query {text!r} must be ROW,COL in feature-map cells, e.g. 3,4.') from None
        out.append((row, col))
    return out


def _load_images(args, model, splits: Optional[DataSplits]
                 ) -> Tuple[torch.Tensor, List[Optional[int]], List[str], np.ndarray, List[str]]:
    """(normalised batch, labels or None, class names, uint8 images for display, where each came from)."""
    if splits is not None:
        size = args.img_size or splits.image_size
        samples, indices = splits.split(args.split)
        picked = np.random.default_rng(args.seed).choice(indices, size=min(args.num_images, len(indices)),
                                                         replace=False)
        loaded = [samples.load(int(i)) for i in picked]
        pil, labels = [im for im, _ in loaded], [label for _, label in loaded]
        tf, names, sources = build_transforms(splits, size, False), splits.class_names, \
            [samples.name_fn(int(i)) for i in picked]
    else:
        cfg = model.pretrained_cfg
        size = args.img_size or cfg['input_size'][-1]
        pil = []
        for path in args.images:
            try:
                pil.append(Image.open(path).convert('RGB'))
            except (OSError, UnidentifiedImageError) as e:
                raise VisualizeError(f'cannot read image {path}: {e}') from None
        labels, sources = [None] * len(pil), list(args.images)
        names = list(cfg.get('label_names') or [str(i) for i in range(model.num_classes)])
        tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                                 transforms.Normalize(cfg['mean'], cfg['std'])])
    display = np.stack([np.asarray(im.resize((size, size), Image.BILINEAR)) for im in pil])
    return torch.stack([tf(im) for im in pil]), labels, names, display, sources


def visualize(args: argparse.Namespace) -> dict:
    if not args.images and not args.dataset:
        raise VisualizeError('give --images FILE ... or --dataset NAME (with --data-dir) to draw images from.')
    splits = load_dataset(args.dataset, args.data_dir, args.val_size) if args.dataset else None
    kwargs = dict(args.model_kwargs, **({'num_classes': splits.num_classes} if splits else {}))
    model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs).eval()
    if args.checkpoint:
        load_weights(model, args.checkpoint, args.model)
    batch, labels, names, display, sources = _load_images(args, model, splits)
    with capture_attention(model) as captures:
        with torch.no_grad():
            probs = model(batch).softmax(dim=-1)
    queries = _queries(args)
    for block in captures:
        if block.kind == 'nl' and queries:
            H, W = block.feature_size
            for row, col in queries:
                if not (0 <= row < H and 0 <= col < W):
                    raise VisualizeError(
                        f'query position ({row}, {col}) is outside the {H}x{W} feature map of block {block.name} '
                        f'(rows 0-{H - 1}, cols 0-{W - 1}).')
    confidence, predicted = probs.max(dim=-1)
    result = dict(captures=captures, predictions=predicted.numpy(), probabilities=confidence.numpy(),
                  labels=labels, class_names=names, images=display, sources=sources, queries=queries,
                  model=args.model)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    render(result, out)
    arrays = {f'{c.name}/{key}': value for c in captures for key, value in c.arrays.items()}
    np.savez_compressed(out.with_suffix('.npz'), images=display, probabilities=probs.numpy(),
                        predictions=predicted.numpy(),
                        labels=np.array([-1 if v is None else v for v in labels]), **arrays)
    print(f'wrote {out} and {out.with_suffix(".npz")}')
    return result


def main(argv: Optional[List[str]] = None) -> None:
    try:
        visualize(parse_args(argv))
    except ValueError as e:  # VisualizeError, DataError, CheckpointError, a model without attention blocks
        sys.exit(f'error: {e}')


if __name__ == '__main__':
    main()
