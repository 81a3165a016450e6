"""Capture what a model's attention blocks do on a few images, and draw it (the logic of `python -m visualize`).

Images come from files (transformed as timm does for the model: `resolve_model_data_config` and
`create_transform`) or from a data set split (transformed as in training). What is drawn is what
the model saw: the network input, un-normalised.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import create_transform, resolve_model_data_config

from timm_spa.capture import capture_attention
from train.checkpoint import load_weights
from train.cli import UsageError
from train.data import build_transforms, load_dataset
from train.run_dir import RunDir

from .render import render


class VisualizeError(ValueError):
    """Bad input to the visualisation: named, with what is allowed."""


@dataclass
class Request:
    """What to draw: a model (name, or a finished run), and images (files, or N drawn from a data set split)."""
    model: Optional[str] = None
    run: Optional[str] = None
    checkpoint: Optional[str] = None
    pretrained: bool = False
    model_kwargs: dict = field(default_factory=dict)
    images: Optional[Sequence[str]] = None
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    split: str = 'test'
    val_size: Optional[int] = None
    val_split_seed: Optional[int] = None
    num_images: int = 4
    seed: int = 0
    img_size: Optional[int] = None
    queries: Optional[List[Tuple[int, int]]] = None
    output: str = 'attention.png'


def parse_query(text: str) -> Tuple[int, int]:
    try:
        row, col = (int(v) for v in text.split(','))
    except ValueError:
        raise UsageError(f'--query {text!r} must be ROW,COL in feature-map cells, e.g. 3,4.') from None
    return row, col


def _unnormalise(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    images = batch * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def _dataset_images(req: Request, splits):
    size = req.img_size or splits.image_size
    samples, indices = splits.split(req.split)
    picked = np.random.default_rng(req.seed).choice(indices, size=min(req.num_images, len(indices)), replace=False)
    loaded = [samples.load(int(i)) for i in picked]
    transform = build_transforms(splits, size, False)
    batch = torch.stack([transform(image) for image, _ in loaded])
    return batch, [label for _, label in loaded], list(splits.class_names), \
        _unnormalise(batch, splits.mean, splits.std), [samples.name_fn(int(i)) for i in picked]


def _file_images(req: Request, model):
    config = resolve_model_data_config(model)
    if req.img_size:
        config['input_size'] = (3, req.img_size, req.img_size)
    transform = create_transform(**config, is_training=False)
    batch = []
    for path in req.images:
        try:
            batch.append(transform(Image.open(path).convert('RGB')))
        except (OSError, UnidentifiedImageError) as e:
            raise VisualizeError(f'cannot read image {path}: {e}') from None
    batch = torch.stack(batch)
    names = list(model.pretrained_cfg.get('label_names') or [str(i) for i in range(model.num_classes)])
    return batch, [None] * len(batch), names, _unnormalise(batch, config['mean'], config['std']), list(req.images)


def draw_attention(req: Request) -> dict:
    """Run the model on the images with its attention captured; write the PNG and the .npz beside it."""
    if req.run:
        RunDir(req.run).read_finished(check_checkpoint=False).fill_unset(req, data=not req.images)
    if not req.model:
        raise UsageError('name a --model, or a finished --run directory.')
    if not req.images and not req.dataset:
        raise UsageError('give --images FILE ... or --dataset NAME (with --data-dir) to draw images from.')
    splits = None
    if req.dataset and not req.images:
        splits = load_dataset(req.dataset, req.data_dir, req.val_size, req.val_split_seed or 0)
    kwargs = dict(req.model_kwargs, **({'num_classes': splits.num_classes} if splits else {}))
    model = timm.create_model(req.model, pretrained=req.pretrained, **kwargs).eval()
    if req.checkpoint:
        load_weights(model, req.checkpoint, req.model)
    batch, labels, names, display, sources = _dataset_images(req, splits) if splits else _file_images(req, model)
    with capture_attention(model) as captures:
        with torch.no_grad():
            probs = model(batch).softmax(dim=-1)
    for block in captures:
        if block.kind == 'nl' and req.queries:
            H, W = block.feature_size
            for row, col in req.queries:
                if not (0 <= row < H and 0 <= col < W):
                    raise VisualizeError(
                        f'query position ({row}, {col}) is outside the {H}x{W} feature map of block {block.name} '
                        f'(rows 0-{H - 1}, cols 0-{W - 1}).')
    confidence, predicted = probs.max(dim=-1)
    result = dict(captures=captures, predictions=predicted.numpy(), probabilities=confidence.numpy(),
                  labels=labels, class_names=names, images=display, sources=sources, queries=req.queries,
                  model=req.model)
    out = Path(req.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    render(result, out)
    arrays = {f'{c.name}/{key}': value for c in captures for key, value in c.arrays.items()}
    np.savez_compressed(out.with_suffix('.npz'), images=display, probabilities=probs.numpy(),
                        predictions=predicted.numpy(),
                        labels=np.array([-1 if v is None else v for v in labels]), **arrays)
    return result
