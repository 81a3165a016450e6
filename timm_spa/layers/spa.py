"""Salient Positions Attention (SPA).

Paper: `Salient Positions based Attention Network for Image Classification` (Fang, Li, Li).

The block projects the input to queries Q = theta(X) and values V = g(X), selects the k positions
of Q with the largest squared norm (Alg. 1), builds a C' x C' channel affinity from those k
positions only (Eq. 6) and mixes the value channels with it (Eq. 7). Cost is O(C'^2 k + n C'^2)
instead of non-local attention's O(n^2 C').

Decisions where the paper is silent are in docs/design.md: C' = C, no phi, logit scale 1.0 by
default, zero-initialised last BN (identity at init), A's logits and softmax in float32 under autocast,
no device handling inside the block.

The block calls its own modules (`qv`, `select`, `proj`, `norm`), so forward hooks, timm's
`AttentionExtract`, quantisation and module swaps (LoRA wrapping `nn.Conv2d`) see every step. Its
speed comes from choosing what each computes: `proj` maps A itself, not A V, where the input has more
positions than channels ((W A) V needs fewer products), A V takes SDPA's fused kernel where that
was measured to pay on the device type in use, and under autocast on a CPU A V is formed a few images at
a time, in bfloat16 products. Where a backward will follow and nothing can see `qv` called (no hook on it,
not swapped, not traced), the forward reads `qv`'s weights itself: theta without gradient for the selection
and with it at the k selected positions only, and, where W maps A, g folded into (W A) W_g, so the products
over all n positions drop from three to one with gradient and one without.
"""
import math
from contextlib import nullcontext
from typing import Optional, Tuple, Type, Union

import torch
from timm.layers import make_divisible, use_fused_attn
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

__all__ = [
    'ATTN_IMPLS', 'SalientPositions', 'SalientPositionsAttention', 'attention_kernel', 'channel_affinity',
    'channel_attention', 'resolve_num_positions', 'select_salient_positions',
]

INV_CHANNELS = 'inv_channels'  # the `scale` value that selects Eq. 6's literal 1 / C'


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_num_positions(num_positions: int, k: int, k_ratio: float = 0.) -> int:
    """Number of salient positions used for `num_positions` input positions.

    `k_ratio > 0` selects the adaptive rule k = max(1, n // k_ratio); otherwise the fixed `k`.
    Never more than the positions that exist, so small inputs and late stages never fail.
    """
    if k_ratio > 0:
        k = max(1, int(num_positions // k_ratio))
    return min(k, num_positions)


def select_salient_positions(query: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Salient Positions Selection (Alg. 1).

    Args:
        query: queries of shape (B, C, N) or (B, C, H, W).
        k: number of positions to keep; clipped to N.

    Returns:
        keys: (B, C, k) queries at the selected positions (Eq. 5), differentiable w.r.t. `query`.
        indices: (B, k) flat positions (row-major over H, W), in no particular order.
        saliency: (B, N) squared norm of every position (Alg. 1, steps 1-2), float32 for half inputs.
    """
    query = query.flatten(2)
    # no autograd graph: indices are constants, and recording pow() would keep Q alive for backward
    saliency = query.detach()
    if saliency.dtype == torch.float16 or saliency.dtype == torch.bfloat16:
        saliency = saliency.float()  # the squares of float16 activations overflow from magnitude ~256 on
    saliency = saliency.pow(2).sum(dim=1)
    k = min(k, saliency.shape[-1])
    # indices are constants for autograd: gradients reach Q through the gathered values only
    indices = saliency.topk(k, dim=-1, sorted=False).indices
    keys = query.gather(2, indices.unsqueeze(1).expand(-1, query.shape[1], -1))
    return keys, indices, saliency


class _ScaledGram(torch.autograd.Function):
    """K K^T * scale for keys K of shape (B, C', k), with a backward shaped for small k.

    Autograd's bmm rule forms the gradient as two (C' x C') @ (C' x k) products, matrix-vector
    shaped for k = 2 and about 6x slower on CPU than the same numbers from the (k x C') @ (C' x C')
    products used here: dK^T = scale * (K^T dL + K^T dL^T). Written in differentiable ops, so double
    backward works.
    """

    @staticmethod
    def forward(ctx, keys: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keys)
        ctx.scale = scale
        gram = torch.bmm(keys, keys.transpose(1, 2))
        return gram if scale == 1.0 else gram.mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:
        keys_t = ctx.saved_tensors[0].transpose(1, 2)
        grad_keys_t = torch.baddbmm(torch.bmm(keys_t, grad), keys_t, grad.transpose(1, 2))
        if ctx.scale != 1.0:
            grad_keys_t = grad_keys_t * ctx.scale
        return grad_keys_t.transpose(1, 2), None


@torch.jit.unused
def _scaled_gram_autograd(keys: torch.Tensor, scale: float) -> torch.Tensor:
    return _ScaledGram.apply(keys, scale)


def _scaled_gram(keys: torch.Tensor, scale: float) -> torch.Tensor:
    if torch.jit.is_scripting():  # TorchScript cannot call autograd Functions; inference needs no backward
        return torch.bmm(keys, keys.transpose(1, 2)) * scale
    return _scaled_gram_autograd(keys, scale)


def _float32_affinity(keys: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(K K^T * scale) in float32 at least (float64 stays float64)."""
    if keys.dtype == torch.float16 or keys.dtype == torch.bfloat16:
        keys = keys.float()
    return _scaled_gram(keys, scale).softmax(dim=-1)


ATTN_IMPLS = ('auto', 'fused', 'materialised')


def attention_kernel(num_positions: int, channels: int, attn_impl: str = 'auto', device_type: str = 'cpu') -> str:
    """The kernel that computes softmax(K K^T) V for n positions and C' inner channels on a device type.

    SDPA's 'fused' kernel never stores the C' x C' matrix but does about twice the products (the keys
    are padded to n dimensions); the 'materialised' one forms the C' x C' softmax. 'auto' applies the
    rule `python -m benchmarks.attention_cost --tables kernels` measured on each device type (docs/cost.md):
    on CPU (an AVX2 EPYC and an AMX Xeon) the fused kernel is the faster while n < C' / 4, where the
    matrix is large next to the products (at n = C' / 4 the kernels' order flips between runs, and
    resnet18_spa's bfloat16 training step, SPA at 256 x 8 x 8, is 4.5% faster materialised); on CUDA
    (H200) both take about a millisecond wherever n <= C' and the fused one needs less memory.
    Device types never measured get the materialised softmax, the plain equations. 'fused' or
    'materialised' forces one kernel.
    """
    if attn_impl != 'auto':
        return attn_impl
    if device_type == 'cuda':
        fused = num_positions <= channels
    elif device_type == 'cpu':
        fused = 4 * num_positions < channels
    else:
        fused = False
    return 'fused' if fused else 'materialised'


def folds_projection(num_positions: int, out_channels: int, attn_impl: str = 'auto', linear: bool = True) -> bool:
    """Whether the block applies W to A rather than to A V: W (A V) = (W A) V, and W A costs C C'^2
    products against A V's C'^2 n, so it is the cheaper order with more positions than output
    channels. Only for a `linear` projection (no bias: a module swapped in with one is applied to A V),
    and never with the 'fused' kernel, which exists not to store A."""
    return linear and attn_impl != 'fused' and num_positions > out_channels


class _ChannelAttention(torch.autograd.Function):
    """softmax(K K^T * scale) V for keys (B, C', k) and low-precision values (B, C', n), a few images at a time.

    Autograd's version writes the batch's C' x C' logits, softmax and their gradients to main memory and reads
    them back (33 MB each at batch 128, C' = 256), in float32; here each chunk of about 4 MB is formed, used
    and dropped while it is still in the cache. Logits and softmax are float32 at least; A is
    rounded to the values' dtype for the two products with V, so that under bfloat16 autocast they run as
    bfloat16 matrix products (float32 accumulation), the way SDPA's fused kernels treat their probabilities.
    The backward needs no second softmax pass: with Y = A V, dS = A (dY V^T - rowsum(dY Y)).
    """

    @staticmethod
    def forward(ctx, keys: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
        keys = keys.to(torch.promote_types(torch.promote_types(keys.dtype, value.dtype), torch.float32))
        value = value.contiguous()  # channels-last values come transposed: bfloat16 bmm then takes a 200x slower path
        batch, channels, _ = value.shape
        step = max(1, _CHUNK_BYTES // (4 * channels * channels))
        out = value.new_empty(value.shape)
        attn = value.new_empty((batch, channels, channels))
        for start in range(0, batch, step):
            chunk = slice(start, start + step)
            logits = torch.bmm(keys[chunk], keys[chunk].transpose(1, 2))
            if scale != 1.0:
                logits.mul_(scale)
            attn[chunk] = logits.softmax(dim=-1)
            torch.bmm(attn[chunk], value[chunk], out=out[chunk])
        ctx.save_for_backward(keys, value, attn, out)
        ctx.scale, ctx.step = scale, step
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, None]:
        keys, value, attn, out = ctx.saved_tensors
        grad = grad.to(value.dtype).contiguous()
        row_dot = (grad.to(keys.dtype) * out.to(keys.dtype)).sum(dim=-1, keepdim=True)  # rowsum(dA * A)
        grad_keys, grad_value = torch.empty_like(keys), torch.empty_like(value)
        for start in range(0, value.shape[0], ctx.step):
            chunk = slice(start, start + ctx.step)
            grad_logits = torch.bmm(grad[chunk], value[chunk].transpose(1, 2)).to(keys.dtype)
            grad_logits.sub_(row_dot[chunk]).mul_(attn[chunk])
            # dK = (dS + dS^T) K, as (k x C') @ (C' x C') products: matrix-vector shaped the other way round
            keys_t = keys[chunk].transpose(1, 2)
            grad_keys_t = torch.baddbmm(torch.bmm(keys_t, grad_logits), keys_t, grad_logits.transpose(1, 2))
            grad_keys[chunk] = grad_keys_t.transpose(1, 2).mul_(ctx.scale)
            torch.bmm(attn[chunk].transpose(1, 2), grad[chunk], out=grad_value[chunk])
        return grad_keys, grad_value, None


_CHUNK_BYTES = 1 << 22  # float32 logits per chunk: the fastest of 256 KB, 1 MB and 4 MB on the AMX Xeon


@torch.jit.unused
def _channel_attention_autograd(keys: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    return _ChannelAttention.apply(keys, value, scale)


def _materialised_attention(keys: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(K K^T * scale) V in the values' dtype; A's logits and softmax in float32 at least. Low-precision
    values with gradient on a CPU (autocast training) go through `_ChannelAttention`, sized for its caches; the rest
    through autograd's own ops, which stay twice differentiable."""
    low_precision = value.dtype == torch.bfloat16 or value.dtype == torch.float16
    if (low_precision and value.device.type == 'cpu' and not torch.jit.is_scripting() and torch.is_grad_enabled()
            and (keys.requires_grad or value.requires_grad)):
        return _channel_attention_autograd(keys, value, scale)
    return torch.bmm(_float32_affinity(keys, scale).to(value.dtype), value)


def _fused_attention(keys: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    # zero key dimensions leave K K^T unchanged, and equal head dims let SDPA take its fused kernel
    pad = value.shape[-1] - keys.shape[-1]
    if pad > 0:
        keys = F.pad(keys, [0, pad])
    keys, value = keys.unsqueeze(1), value.unsqueeze(1)  # one head: (B, 1, C', .), the layout exporters know
    return F.scaled_dot_product_attention(keys, keys, value, scale=scale).squeeze(1)


def _attention(keys: torch.Tensor, value: torch.Tensor, scale: float, attn_impl: str) -> torch.Tensor:
    """softmax(K K^T * scale) V: the fused kernel in float32 at least, the materialised one in the values' dtype
    (its logits and softmax in float32 at least)."""
    if attention_kernel(value.shape[-1], value.shape[1], attn_impl, value.device.type) == 'fused':
        dtype = torch.promote_types(torch.promote_types(keys.dtype, value.dtype), torch.float32)
        return _fused_attention(keys.to(dtype), value.to(dtype), scale)
    return _materialised_attention(keys, value, scale)


@torch.jit.unused
def _outside_autocast(keys: torch.Tensor, value: Optional[torch.Tensor], scale: float, attn_impl: str) -> torch.Tensor:
    # K K^T of float16 keys overflows easily; autocast would run it in low precision
    device = keys.device.type
    with torch.autocast(device_type=device, enabled=False) if torch.is_autocast_enabled(device) else nullcontext():
        return _float32_affinity(keys, scale) if value is None else _attention(keys, value, scale, attn_impl)


def channel_affinity(keys: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """A = softmax(K K^T * scale) (Eq. 6) for keys (B, C', k): (B, C', C') in float32, autocast or not."""
    if torch.jit.is_scripting():
        return _float32_affinity(keys, scale)  # TorchScript has no autocast
    return _outside_autocast(keys, None, scale, 'auto')


def channel_attention(keys: torch.Tensor, value: torch.Tensor, scale: float = 1.0,
                      attn_impl: str = 'auto') -> torch.Tensor:
    """Y = softmax(K K^T * scale) V (Eq. 6, 7) for keys (B, C', k) and values (B, C', N): logits and softmax in
    float32, autocast or not; the products with V in the values' dtype ('materialised') or float32 ('fused')."""
    if torch.jit.is_scripting():
        return _attention(keys, value, scale, attn_impl)
    return _outside_autocast(keys, value, scale, attn_impl)


def _select_in(query: torch.Tensor, k: int, k_ratio: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # the count depends on the input's size: one opaque call in FX graphs (torch.fx.wrap below)
    return select_salient_positions(query, resolve_num_positions(query.shape[-2] * query.shape[-1], k, k_ratio))


def mixing_operand(keys: torch.Tensor, value: torch.Tensor, out_channels: int, scale: float,
                   attn_impl: str, linear: bool) -> torch.Tensor:
    """What the block's projection W is applied to, in the values' dtype: A as a (B, C', C', 1) map where
    `folds_projection` (then `mix_values` forms (W A) V), else A V (Eq. 7) as (B, C', H, W). A's logits and softmax are
    computed in float32."""
    if folds_projection(value.shape[-2] * value.shape[-1], out_channels, attn_impl, linear):
        return channel_affinity(keys, scale).to(value.dtype).unsqueeze(-1)
    return channel_attention(keys, value.flatten(2), scale, attn_impl).to(value.dtype).view_as(value)


def mix_values(projected: torch.Tensor, value: torch.Tensor, attn_impl: str, linear: bool) -> torch.Tensor:
    """W A V from W applied to `mixing_operand`'s result: (W A) V where the projection was folded."""
    batch, rd, height, width = value.shape
    channels = projected.shape[1]
    if not folds_projection(height * width, channels, attn_impl, linear):
        return projected
    weights = projected.flatten(2)  # W A: (B, C, C')
    if value.stride(1) == 1:  # channels-last values: (V^T (W A)^T)^T keeps the output channels-last, without a copy
        mixed = torch.bmm(value.permute(0, 2, 3, 1).reshape(batch, height * width, rd), weights.transpose(1, 2))
        return mixed.view(batch, height, width, channels).permute(0, 3, 1, 2)
    return torch.bmm(weights, value.flatten(2)).view(batch, channels, height, width)


def check_spa_input(x: torch.Tensor, in_channels: int) -> torch.Tensor:
    """`x` if it is (B, in_channels, H, W), else a ValueError that names the shape. Returns `x` so that
    FX graphs keep the check (a call whose result is used is never dropped as dead code)."""
    if x.dim() != 4:
        raise ValueError(
            'SalientPositionsAttention expects a 4D input (B, C, H, W), got shape {}.'.format(list(x.shape)))
    if x.shape[1] != in_channels:
        raise ValueError(
            'SalientPositionsAttention built for in_channels={} got an input with {} channels (shape {}).'.format(
                in_channels, x.shape[1], list(x.shape)))
    return x


def _module_hooks(module: nn.Module) -> bool:
    """Whether a call of `module` would run a hook: its own or one registered for every module."""
    shared = torch.nn.modules.module
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or shared._global_forward_hooks or shared._global_forward_pre_hooks
                or shared._global_backward_hooks or shared._global_backward_pre_hooks)


# shape checks and shape-dependent branches: one opaque call each in FX graphs (torchvision's
# create_feature_extractor, timm's FX features), so the block traces and still checks its input
torch.fx.wrap('check_spa_input')
torch.fx.wrap('_select_in')
torch.fx.wrap('mixing_operand')
torch.fx.wrap('mix_values')


class SalientPositions(nn.Module):
    """Salient Positions Selection (Alg. 1) as a module, so that forward hooks see what a block selected.

    Returns (keys, indices, saliency) as `select_salient_positions` does, for the k positions (or
    max(1, N // k_ratio) when `k_ratio` > 0) of the (B, C', H, W) queries with the largest squared norm.
    """

    def __init__(self, k: int = 2, k_ratio: float = 0.):
        super().__init__()
        self.k = k
        self.k_ratio = float(k_ratio)  # 0 = fixed k; a float attribute keeps TorchScript happy

    def extra_repr(self) -> str:
        return f'k_ratio={self.k_ratio}' if self.k_ratio > 0 else f'k={self.k}'

    def forward(self, query: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _select_in(query, self.k, self.k_ratio)


class SalientPositionsAttention(nn.Module):
    """SPA block: Z = X + BN(W(softmax(K K^T * scale) V)).

    Args:
        in_channels: channels C of the input.
        k: salient positions per image (paper default 2); clipped to H * W.
        k_ratio: if given, k = max(1, H * W // k_ratio) instead (the paper's adaptive variant).
        rd_ratio: inner width C' = rd_ratio * C (1.0 reproduces the paper's parameter counts).
        rd_channels: inner width C' given directly; overrides `rd_ratio`.
        rd_divisor: C' is rounded to a multiple of this.
        scale: affinity logit scale; a float (1.0 as in the authors' code) or 'inv_channels' for 1 / C'.
        norm_layer: normalisation after the output projection; its weight starts at zero.
        attn_impl: kernel for softmax(K K^T) V: 'auto' (the faster one for the input's size on its device
            type, as measured; never fused where timm's `use_fused_attn()` is off when the block is built),
            'fused' (SDPA's kernel: never stores the C' x C' matrix) or 'materialised'.
    """

    def __init__(
            self,
            in_channels: int,
            k: int = 2,
            k_ratio: Optional[float] = None,
            rd_ratio: float = 1.0,
            rd_channels: Optional[int] = None,
            rd_divisor: int = 1,
            scale: Union[float, str] = 1.0,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            attn_impl: str = 'auto',
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if not _is_int(in_channels) or in_channels < 1:
            raise ValueError(f'in_channels must be a positive int, got {in_channels!r}.')
        if not _is_int(k) or k < 1:
            raise ValueError(f'k must be an int >= 1 (number of salient positions), got {k!r}.')
        if k_ratio is not None and not (isinstance(k_ratio, (int, float)) and k_ratio > 0):
            raise ValueError(f'k_ratio must be a number > 0 (k = max(1, H*W // k_ratio)) or None, got {k_ratio!r}.')
        if rd_channels is None:
            if not (isinstance(rd_ratio, (int, float)) and rd_ratio > 0):
                raise ValueError(f'rd_ratio must be a number > 0, got {rd_ratio!r}.')
            rd_channels = make_divisible(in_channels * rd_ratio, divisor=rd_divisor, round_limit=0.)
        if not _is_int(rd_channels) or rd_channels < 1:
            raise ValueError(f'rd_channels must be a positive int, got {rd_channels!r}.')
        if scale == INV_CHANNELS:
            scale = 1.0 / rd_channels
        elif isinstance(scale, str) or not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite number > 0 or '{INV_CHANNELS}' (Eq. 6's 1/C'), got {scale!r}.")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}.')

        self.in_channels = in_channels
        self.rd_channels = rd_channels
        self.scale = float(scale)
        self.attn_impl = attn_impl
        # timm's switch, read as its attention layers read it: TIMM_FUSED_ATTN=0, set_fused_attn(False) or
        # set_exportable(True) before building keep 'auto' on the materialised softmax
        self.fused_attn = use_fused_attn()
        # theta (Eq. 3) and g (Eq. 4) as one conv: output channels [0, C') are Q, [C', 2C') are V
        self.qv = nn.Conv2d(in_channels, 2 * rd_channels, kernel_size=1, bias=True, **dd)
        self.select = SalientPositions(k, k_ratio or 0.)
        self.proj = nn.Conv2d(rd_channels, in_channels, kernel_size=1, bias=False, **dd)
        self.norm = norm_layer(in_channels, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # theta and g each initialised as its own C -> C' conv, the same as two separate layers
        for weight in self.qv.weight.chunk(2, dim=0) + (self.proj.weight,):
            nn.init.kaiming_normal_(weight, mode='fan_out', nonlinearity='relu')
        nn.init.zeros_(self.qv.bias)
        # zero last BN weight: the block starts as the identity, so it can join a trained backbone
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def extra_repr(self) -> str:
        return f'{self.in_channels}, rd_channels={self.rd_channels}, scale={self.scale:g}, attn_impl={self.attn_impl}'

    __jit_unused_properties__ = ['k', 'k_ratio']

    @property
    def k(self) -> int:
        """Salient positions per image (the selection module's)."""
        return self.select.k

    @property
    def k_ratio(self) -> float:
        """0 for a fixed k, else k = max(1, H * W // k_ratio)."""
        return self.select.k_ratio

    def num_positions(self, height: int, width: int) -> int:
        """Salient positions selected for an input of this spatial size."""
        return resolve_num_positions(height * width, self.k, self.k_ratio)

    @torch.jit.unused
    def _reads_qv_weights(self, x: torch.Tensor) -> bool:
        """Whether the forward may compute theta and g from `qv`'s weights instead of calling it: only where
        a backward will follow (without one, both compute the same products) and nothing can see the call."""
        return (not isinstance(x, torch.fx.Proxy) and not torch.jit.is_tracing() and not torch.compiler.is_exporting()
                and torch.is_grad_enabled() and (x.requires_grad or self.qv.weight.requires_grad)
                and type(self.qv) is nn.Conv2d and self.qv.bias is not None and not _module_hooks(self.qv))

    @torch.jit.unused
    def _forward_from_qv_weights(self, x: torch.Tensor, attn_impl: str, linear: bool) -> torch.Tensor:
        """The forward with theta's gradient at the k selected positions only, and g folded into W A where
        W maps A: per position one product with gradient ((W A W_g) X, or g(X) then W A V) and one without
        (theta for the selection), where calling `qv` costs both of theta's and g's with gradient."""
        batch, channels, height, width = x.shape
        weight_query, weight_value = self.qv.weight.split(self.rd_channels)
        bias_query, bias_value = self.qv.bias.split(self.rd_channels)
        with torch.no_grad():  # the selection's indices are constants for autograd
            indices = self.select(F.conv2d(x, weight_query, bias_query))[1]
        picked = x.flatten(2).gather(2, indices.unsqueeze(1).expand(-1, channels, -1))  # X at the k positions
        keys = torch.matmul(weight_query.flatten(1), picked) + bias_query[:, None]  # K = theta(X) there, (B, C', k)
        if not folds_projection(height * width, channels, attn_impl, linear):
            return self._attend(x, keys, F.conv2d(x, weight_value, bias_value), attn_impl, linear)
        mapped = self.proj(channel_affinity(keys, self.scale).to(x.dtype).unsqueeze(-1)).flatten(2)  # W A, (B, C, C')
        folded = torch.matmul(mapped, weight_value.flatten(1))  # W A W_g, (B, C, C)
        shift = torch.matmul(mapped, bias_value)  # W A b_g, (B, C)
        # (W A W_g) X + W A b_g, the shift fused into the product (a separate add cost up to 18% of the block)
        if x.stride(1) == 1:  # channels-last input: (X^T M^T)^T keeps the output channels-last, without a copy
            rows = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
            mixed = torch.baddbmm(shift.unsqueeze(1), rows, folded.transpose(1, 2))
            mixed = mixed.view(batch, height, width, channels).permute(0, 3, 1, 2)
        else:
            mixed = torch.baddbmm(shift.unsqueeze(-1), folded, x.flatten(2)).view_as(x)
        return x + self.norm(mixed)

    def _attend(self, x: torch.Tensor, keys: torch.Tensor, value: torch.Tensor, attn_impl: str,
                linear: bool) -> torch.Tensor:
        """Z = X + BN(W softmax(K K^T) V), W applied to A or to A V, whichever costs less."""
        mixing = mixing_operand(keys, value, self.in_channels, self.scale, attn_impl, linear)
        return x + self.norm(mix_values(self.proj(mixing), value, attn_impl, linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_spa_input(x, self.in_channels)
        attn_impl = self.attn_impl if self.fused_attn or self.attn_impl != 'auto' else 'materialised'
        # W is linear: it maps A V, or A itself where that is cheaper (hooks on `proj` then see W A)
        linear = getattr(self.proj, 'bias', None) is None
        if not torch.jit.is_scripting():
            if self._reads_qv_weights(x):
                return self._forward_from_qv_weights(x, attn_impl, linear)
        query, value = self.qv(x).chunk(2, dim=1)  # Q = theta(X), V = g(X): (B, C', H, W) each
        keys = self.select(query)[0]  # K: Q at the salient positions, (B, C', k)
        return self._attend(x, keys, value, attn_impl, linear)
