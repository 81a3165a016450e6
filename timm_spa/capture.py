"""Capture what the attention blocks of a model computed during a forward pass.

    with capture_attention(model) as captures:
        logits = model(images)
    for block in captures:          # one AttentionCapture per attention block, in forward order
        block.kind, block.name, block.stride, block.arrays.keys()

Forward hooks on the blocks' own submodules record what the forward pass computed: SPA's `select`
(the keys, positions and saliency it chose), non-local's theta and phi convs (`t`, `p`), global
context's `conv_attn`. The hooks return nothing, so the model's outputs are unchanged. Only the last
softmax is formed here from those tensors, since the blocks' fused kernels never store it:
softmax(K K^T * scale) for SPA, softmax(theta^T phi * scale) for NL, softmax over positions for GC.

- SPA: `indices` (B, k) of the selected salient positions, `positions` (B, k, 2) their (row, col) in
  the feature map, `saliency` (B, H, W) squared norms, `affinity` (B, C', C').
- NL: `affinity` (B, n, n), row q is the attention map of query position q (the paper's Fig. 1, 2).
- GC: `mask` (B, H, W), the global context attention over positions.
"""
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import torch
from timm.layers import GlobalContext, NonLocalAttn
from torch import nn

from .layers import SalientPositionsAttention, channel_affinity

__all__ = ['AttentionCapture', 'attention_blocks', 'capture_attention', 'position_to_image']


@dataclass
class AttentionCapture:
    name: str  # module path, e.g. 'layer3.2'
    kind: str  # 'spa', 'nl' or 'gc'
    feature_size: Tuple[int, int]  # (H, W) of the block's input
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)

    def stride(self, image_size: Tuple[int, int]) -> Tuple[float, float]:
        """Image pixels per feature-map cell, for an input image of `image_size` (H, W)."""
        return image_size[0] / self.feature_size[0], image_size[1] / self.feature_size[1]

    def salient_pixels(self, image_size: Tuple[int, int]) -> np.ndarray:
        """(B, k, 2) image coordinates (y, x) of the centres of the selected salient positions (SPA only)."""
        return position_to_image(self.arrays['positions'], self.stride(image_size))


def position_to_image(positions: np.ndarray, stride: Tuple[float, float]) -> np.ndarray:
    """Centres, in image pixel coordinates (y, x), of feature-map cells given as (..., 2) (row, col)."""
    return (np.asarray(positions, dtype=np.float64) + 0.5) * np.asarray(stride)


KINDS = ((SalientPositionsAttention, 'spa'), (NonLocalAttn, 'nl'), (GlobalContext, 'gc'))


def attention_blocks(model: nn.Module) -> List[Tuple[str, nn.Module, str]]:
    """(name, module, kind) of every SPA, non-local and global-context block, in registration order."""
    found = []
    for name, module in model.named_modules():
        for cls, kind in KINDS:
            if isinstance(module, cls):
                found.append((name, module, kind))
    return found


# the submodules each kind is read from; a block's own forward hook then turns their outputs into arrays
TAPS = {'spa': ('select',), 'nl': ('t', 'p'), 'gc': ('conv_attn',)}


def _spa(block: SalientPositionsAttention, x: torch.Tensor, taps: Dict[str, Any]) -> Dict[str, np.ndarray]:
    B, _, H, W = x.shape
    keys, indices, saliency = taps['select']
    rows, cols = indices // W, indices % W
    return dict(indices=indices.cpu().numpy(), positions=torch.stack([rows, cols], -1).cpu().numpy(),
                saliency=saliency.reshape(B, H, W).float().cpu().numpy(),
                affinity=channel_affinity(keys, block.scale).float().cpu().numpy())


def _nl(block: NonLocalAttn, x: torch.Tensor, taps: Dict[str, Any]) -> Dict[str, np.ndarray]:
    B = x.shape[0]
    t = taps['t'].reshape(B, block.t.out_channels, -1).transpose(1, 2).float()
    p = taps['p'].reshape(B, block.p.out_channels, -1).float()
    return dict(affinity=torch.softmax(torch.bmm(t, p) * block.scale, dim=2).cpu().numpy())


def _gc(block: GlobalContext, x: torch.Tensor, taps: Dict[str, Any]) -> Dict[str, np.ndarray]:
    B, _, H, W = x.shape
    if 'conv_attn' not in taps:
        mask = torch.full((B, H, W), 1.0 / (H * W))  # use_attn=False: plain average pooling
    else:
        mask = taps['conv_attn'].reshape(B, -1).float().softmax(dim=-1).reshape(B, H, W)
    return dict(mask=mask.cpu().numpy())


ARRAYS = {'spa': _spa, 'nl': _nl, 'gc': _gc}


def _keep_output(taps: Dict[str, Any], tap: str):
    """A forward hook that stores its module's output (detached) as `taps[tap]`."""
    def hook(_module, _inputs, output):
        taps[tap] = tuple(t.detach() for t in output) if isinstance(output, tuple) else output.detach()
    return hook


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[List[AttentionCapture]]:
    """Record the internals of every attention block for the forward passes run inside the block.

    Raises ValueError if the model has no SPA, non-local or global-context block.
    """
    blocks = attention_blocks(model)
    if not blocks:
        raise ValueError(
            f'{type(model).__name__} has no SPA, non-local or global-context block to show. Models with one: '
            "resnet18_spa, resnet50_spa, resnet18_nl, resnet50_nl, resnet18_gc, resnet50_gc (any attn_stages).")
    captures: List[AttentionCapture] = []
    handles = []
    for name, block, kind in blocks:
        taps: Dict[str, Any] = {}
        for tap in TAPS[kind]:
            module = getattr(block, tap, None)
            if module is not None:  # GlobalContext(use_attn=False) has no conv_attn
                handles.append(module.register_forward_hook(_keep_output(taps, tap)))

        def record(module, inputs, _output, name=name, kind=kind, taps=taps):
            with torch.no_grad():
                x = inputs[0]
                captures.append(AttentionCapture(name, kind, tuple(x.shape[-2:]), ARRAYS[kind](module, x, taps)))
            taps.clear()
        handles.append(block.register_forward_hook(record))
    try:
        yield captures
    finally:
        for handle in handles:
            handle.remove()
