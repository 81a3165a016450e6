"""The SPA layer against a plain re-computation of the paper's Eq. 3-7 and Alg. 1 (docs/design.md)."""
import copy
import math
from unittest import mock

import pytest
import torch
from conftest import randomize_norm

from timm_spa.layers import (
    SalientPositionsAttention,
    channel_affinity,
    resolve_num_positions,
    select_salient_positions,
    spa,
)
from timm_spa.layers.spa import _scaled_gram


def reference_spa(x, theta_w, theta_b, g_w, g_b, proj_w, bn, k, scale):
    """Eq. 3-7 and Alg. 1 written out with einsum and explicit loops, one image at a time.

    The top-k step ranks positions with Python's sorted() over per-position sums of squares,
    so nothing here shares code with the module under test. `bn` is (weight, bias, mean, var, eps)
    of the last BatchNorm in eval mode.
    """
    B, C, H, W = x.shape
    n = H * W
    outputs = []
    for b in range(B):
        xb = x[b].reshape(C, n)
        q = torch.einsum('oc,cn->on', theta_w, xb) + theta_b[:, None]      # Eq. 3, C' x n
        v = torch.einsum('oc,cn->on', g_w, xb) + g_b[:, None]              # Eq. 4, C' x n
        saliency = [sum(float(q[c, j].detach()) ** 2 for c in range(q.shape[0])) for j in range(n)]  # Alg. 1, 1-2
        idx = sorted(range(n), key=lambda j: -saliency[j])[:min(k, n)]     # Alg. 1, 3
        keys = torch.stack([q[:, j] for j in idx], dim=1)                  # Eq. 5, C' x k
        logits = torch.einsum('ck,dk->cd', keys, keys) * scale
        e = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
        attn = e / e.sum(dim=1, keepdim=True)                              # Eq. 6, row softmax
        y = torch.einsum('cd,dn->cn', attn, v)                              # Eq. 7
        z = torch.einsum('oc,cn->on', proj_w, y)
        weight, bias, mean, var, eps = bn
        z = (z - mean[:, None]) / torch.sqrt(var[:, None] + eps) * weight[:, None] + bias[:, None]
        outputs.append(xb + z)
    return torch.stack(outputs).reshape(B, C, H, W)


def _reference_for(block, x, scale):
    rd = block.rd_channels
    w = block.qv.weight[:, :, 0, 0]
    norm = block.norm
    return reference_spa(
        x, w[:rd], block.qv.bias[:rd], w[rd:], block.qv.bias[rd:], block.proj.weight[:, :, 0, 0],
        (norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.eps), block.k, scale)


# A V runs in the fused attention kernel (n < C' / 4 on CPU) or through a materialised C' x C' softmax;
# MANY has more positions than channels (the early stages, large images)
MANY, FUSED, MATERIALISED = (2, 8, 5, 6), (2, 64, 3, 3), (2, 16, 3, 4)
PATH_SHAPES = [MANY, FUSED, MATERIALISED, (1, 80, 9, 8)]


@pytest.mark.parametrize('shape,fused', [(MANY, False), (FUSED, True), (MATERIALISED, False)])
def test_auto_kernel_reaches_the_forward(shape, fused):
    """attn_impl='auto' runs SDPA's fused kernel only where there are fewer than C' / 4 positions (CPU's rule)."""
    block = SalientPositionsAttention(shape[1]).eval()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with mock.patch('torch.nn.functional.scaled_dot_product_attention', side_effect=sdpa) as kernel:
        block(torch.randn(*shape))
    assert kernel.called == fused


@pytest.mark.parametrize('attn_impl', ['fused', 'materialised'])
@pytest.mark.parametrize('shape', [MANY, FUSED, MATERIALISED, (2, 24, 3, 3)])
def test_forced_attention_kernel_matches_plain_equations(attn_impl, shape):
    # both kernels compute Eq. 6-7 exactly, with W applied to A V or (materialised only) to A
    torch.manual_seed(0)
    block = SalientPositionsAttention(shape[1], k=3, attn_impl=attn_impl).double().eval()
    randomize_norm(block.norm)
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _reference_for(block, x, 1.0), rtol=1e-10, atol=1e-10)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with mock.patch('torch.nn.functional.scaled_dot_product_attention', side_effect=sdpa) as fused:
        block(x)
    assert fused.called == (attn_impl == 'fused')  # the option reaches the forward


@pytest.mark.parametrize('scale', [1.0, 'inv_channels'])
@pytest.mark.parametrize('k,rd_ratio,shape', [
    (2, 1.0, (2, 8, 5, 6)), (7, 0.5, (3, 12, 4, 4)), (1, 1.0, (1, 4, 3, 7)),  # n > C'
    (2, 1.0, FUSED), (5, 0.5, (2, 96, 3, 3)), (1, 1.0, (1, 8, 1, 1)),  # n < C' / 4: fused attention
    (2, 1.0, MATERIALISED), (5, 0.5, (2, 24, 3, 3)), (3, 1.0, (1, 96, 9, 9)),  # C' / 4 <= n <= C': materialised
])
def test_matches_plain_equations(scale, k, rd_ratio, shape):
    torch.manual_seed(0)
    block = SalientPositionsAttention(shape[1], k=k, rd_ratio=rd_ratio, scale=scale).double().eval()
    randomize_norm(block.norm)
    x = torch.randn(*shape, dtype=torch.float64)
    expected_scale = 1.0 if scale == 1.0 else 1.0 / block.rd_channels
    with torch.no_grad():
        torch.testing.assert_close(block(x), _reference_for(block, x, expected_scale), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('attn_impl', ['auto', 'materialised', 'fused'])
@pytest.mark.parametrize('shape', [MANY, FUSED, MATERIALISED, (2, 8, 4, 2), (2, 8, 3, 3)])
def test_projection_is_applied_to_the_affinity_where_positions_outnumber_channels(shape, attn_impl):
    """W (A V) = (W A) V: `proj` maps A (B, C', C', 1) where n > C (cheaper), else A V (B, C', H, W); never A
    with the fused kernel, which exists not to store A. Hooks on `proj` see what it computed."""
    block = SalientPositionsAttention(shape[1], attn_impl=attn_impl).eval()
    seen = []
    block.proj.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0].shape, output.shape)))
    block(torch.randn(*shape))
    batch, channels, height, width = shape
    folded = height * width > channels and attn_impl != 'fused'
    operand = (batch, channels, channels, 1) if folded else (batch, channels, height, width)
    assert seen == [(operand, operand)]


def test_a_projection_swapped_for_one_with_a_bias_is_applied_to_a_v():
    """(W A) V = W (A V) holds for W without a bias only: a `proj` swapped for a biased one must not be folded."""
    torch.manual_seed(0)
    block = SalientPositionsAttention(MANY[1], k=3).double().eval()
    biased = torch.nn.Conv2d(MANY[1], MANY[1], 1, bias=True).double()
    with torch.no_grad():
        biased.weight.copy_(block.proj.weight)
        biased.bias.uniform_(-1, 1)
    block.proj, block.norm = biased, torch.nn.Identity()
    x = torch.randn(*MANY, dtype=torch.float64)
    ones, zeros = torch.ones(MANY[1], dtype=torch.float64), torch.zeros(MANY[1], dtype=torch.float64)
    rd = block.rd_channels
    w = block.qv.weight[:, :, 0, 0]
    expected = reference_spa(x, w[:rd], block.qv.bias[:rd], w[rd:], block.qv.bias[rd:], biased.weight[:, :, 0, 0],
                             (ones, zeros, zeros, ones, 0.0), 3, 1.0)  # a BatchNorm that changes nothing
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected + biased.bias[:, None, None], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('shape', [MANY, FUSED, MATERIALISED])
def test_channels_last_input_gives_channels_last_output(shape):
    """Channels-last training keeps its layout through the block (a copy back and forth costs every step)."""
    torch.manual_seed(0)
    block = SalientPositionsAttention(shape[1]).double().eval()
    randomize_norm(block.norm)
    x = torch.randn(*shape, dtype=torch.float64)
    expected = block(x)
    block = block.to(memory_format=torch.channels_last)
    out = block(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_timm_fused_attention_switch_keeps_auto_off_the_fused_kernel():
    """timm's own switch (TIMM_FUSED_ATTN=0, set_fused_attn(False), set_exportable) is read when a block is built,
    as timm's attention layers read it: 'auto' then never calls SDPA; a forced 'fused' still does."""
    from timm.layers import set_fused_attn, use_fused_attn
    before = use_fused_attn()
    set_fused_attn(False)
    try:
        blocks = [SalientPositionsAttention(FUSED[1], attn_impl=impl).eval() for impl in ('auto', 'fused')]
    finally:
        set_fused_attn(before)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    x = torch.randn(*FUSED)
    for block, fused in zip(blocks, (False, True), strict=True):
        with mock.patch('torch.nn.functional.scaled_dot_product_attention', side_effect=sdpa) as kernel:
            block(x)
        assert kernel.called == fused
    assert SalientPositionsAttention(FUSED[1]).fused_attn == before


def test_inverse_channel_scale_changes_output():
    # guards against a scale option that is accepted but ignored
    torch.manual_seed(0)
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    outs = []
    for scale in (1.0, 'inv_channels'):
        torch.manual_seed(1)
        block = SalientPositionsAttention(16, scale=scale).double().eval()
        randomize_norm(block.norm)
        outs.append(block(x))
    assert not torch.allclose(outs[0], outs[1])


def test_selected_indices_are_the_k_largest_squared_norms():
    torch.manual_seed(0)
    query = torch.randn(3, 10, 6, 7)
    keys, indices, saliency = select_salient_positions(query, 5)
    flat = query.flatten(2)
    for b in range(3):
        norms = [float((flat[b, :, j] ** 2).sum()) for j in range(42)]
        top = sorted(range(42), key=lambda j: -norms[j])[:5]
        assert sorted(indices[b].tolist()) == sorted(top)
        assert saliency[b].tolist() == pytest.approx(norms, rel=1e-5)
        for slot, j in enumerate(indices[b].tolist()):
            assert torch.equal(keys[b, :, slot], flat[b, :, j])
    assert saliency.dtype == torch.float32
    assert not saliency.requires_grad


def test_selection_saliency_is_float32_for_half_queries():
    query = torch.full((1, 4, 2, 2), 300.0, dtype=torch.float16)  # 300^2 * 4 overflows float16
    query[0, :, 1, 1] = 200.0
    _, indices, saliency = select_salient_positions(query, 3)
    assert torch.isfinite(saliency).all()
    assert 3 not in indices[0].tolist()


def test_identity_at_init():
    torch.manual_seed(0)
    block = SalientPositionsAttention(32)
    x = torch.randn(4, 32, 8, 8)
    block.train()
    assert torch.equal(block(x), x)
    block.eval()
    assert torch.equal(block(x), x)


@pytest.mark.parametrize('k', [64, 1000])
def test_k_at_least_n_uses_all_positions(k):
    torch.manual_seed(0)
    block = SalientPositionsAttention(8, k=k).double().eval()
    randomize_norm(block.norm)
    x = torch.randn(2, 8, 4, 4, dtype=torch.float64)  # n = 16 <= k
    assert block.num_positions(4, 4) == 16
    with torch.no_grad():
        torch.testing.assert_close(block(x), _reference_for(block, x, 1.0))


def test_k_ratio_is_adaptive():
    block = SalientPositionsAttention(8, k_ratio=16)
    assert block.num_positions(32, 32) == 64
    assert block.num_positions(8, 8) == 4
    assert block.num_positions(2, 2) == 1  # never zero positions
    assert resolve_num_positions(100, 2) == 2
    assert resolve_num_positions(100, 2, k_ratio=3.5) == 28
    assert resolve_num_positions(1, 5) == 1
    # the rule used in forward: compare with the reference at the adaptive k
    torch.manual_seed(0)
    block = SalientPositionsAttention(8, k_ratio=4.0).double().eval()
    randomize_norm(block.norm)
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    block.select.k = 9  # the reference reads block.k; 36 // 4 = 9
    expected = _reference_for(block, x, 1.0)
    block.select.k = 2  # forward must ignore the fixed k when k_ratio is set
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize('observed', [False, True], ids=['qv-weights-read', 'qv-called'])
@pytest.mark.parametrize('scale', [1.0, 'inv_channels'])
@pytest.mark.parametrize('shape', PATH_SHAPES)
def test_gradients_reach_theta_g_and_w_and_match_reference(shape, scale, observed):
    """Both ways the forward computes theta and g: from `qv`'s weights (a backward follows, nothing observes
    `qv`) and by calling `qv` (a hook on it)."""
    torch.manual_seed(0)
    block = SalientPositionsAttention(shape[1], k=3, scale=scale).double().eval()
    randomize_norm(block.norm)
    calls = []
    if observed:
        block.qv.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    block(x).pow(2).sum().backward()
    assert len(calls) == observed
    got = {name: p.grad.clone() for name, p in block.named_parameters()}
    got_x = x.grad.clone()

    # the reference on leaf copies of the same weights, through autograd
    rd = block.rd_channels
    qv_w = block.qv.weight.detach()[:, :, 0, 0].clone().requires_grad_()
    qv_b = block.qv.bias.detach().clone().requires_grad_()
    proj_w = block.proj.weight.detach()[:, :, 0, 0].clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    norm = block.norm
    bn = (norm.weight.detach(), norm.bias.detach(), norm.running_mean, norm.running_var, norm.eps)
    ref = reference_spa(x2, qv_w[:rd], qv_b[:rd], qv_w[rd:], qv_b[rd:], proj_w, bn, 3, block.scale)
    ref.pow(2).sum().backward()

    torch.testing.assert_close(got['qv.weight'][:, :, 0, 0], qv_w.grad)
    torch.testing.assert_close(got['qv.bias'], qv_b.grad)
    torch.testing.assert_close(got['proj.weight'][:, :, 0, 0], proj_w.grad)
    torch.testing.assert_close(got_x, x2.grad)
    for grad in (got['qv.weight'][:rd], got['qv.weight'][rd:], got['proj.weight']):  # theta, g, W
        assert grad.abs().sum() > 0


def _train_step(block, x):
    """Output, input gradient, parameter gradients and BN running statistics after one training step."""
    block.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    out = block(x)
    out.pow(2).sum().backward()
    return [out, x.grad, *(p.grad for p in block.parameters()), *block.norm.buffers()]


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('shape', PATH_SHAPES + [(3, 32, 8, 8)])
def test_training_reads_qv_weights_unless_observed_and_computes_the_same(shape, channels_last):
    """Training with nothing on `qv` computes theta and g from its weights (theta's gradient at the k positions
    only; g folded into W A where W maps A) and never calls it; a hook on `qv` gets it called. Both give the same
    outputs, gradients and BN statistics, and keep a channels-last input's layout."""
    torch.manual_seed(0)
    block = SalientPositionsAttention(shape[1], k=3).double().train()
    randomize_norm(block.norm)
    with torch.no_grad():
        block.qv.bias.uniform_(-1, 1)
    x = torch.randn(*shape, dtype=torch.float64)
    if channels_last:
        block, x = block.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    state = copy.deepcopy(block.state_dict())
    with mock.patch.object(block.qv, 'forward', side_effect=AssertionError('qv called')):
        from_weights = _train_step(block, x)
    block.load_state_dict(state)
    calls = []
    block.qv.register_forward_hook(lambda *args: calls.append(1))
    called = _train_step(block, x)
    assert calls == [1]
    for a, b in zip(from_weights, called, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for out in (from_weights[0], called[0]):
        assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class _CountingConv(torch.nn.Conv2d):
    """A module swapped in for `qv` (as LoRA or quantisation swap `nn.Conv2d`s), counting its calls."""
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


def _observe_qv(how, block, calls):
    if how == 'forward hook':
        return block.qv.register_forward_hook(lambda *args: calls.append(1))
    if how == 'forward pre-hook':
        return block.qv.register_forward_pre_hook(lambda *args: calls.append(1))
    if how == 'backward hook':
        return block.qv.register_full_backward_hook(lambda *args: calls.append(1))
    if how == 'global forward hook':
        return torch.nn.modules.module.register_module_forward_hook(
            lambda module, *args: calls.append(1) if module is block.qv else None)
    swapped = _CountingConv(block.qv.in_channels, block.qv.out_channels, 1)
    swapped.load_state_dict(block.qv.state_dict())
    block.qv, _CountingConv.calls = swapped, 0
    return None


@pytest.mark.parametrize('how', ['forward hook', 'forward pre-hook', 'backward hook', 'global forward hook', 'swap'])
def test_what_observes_qv_sees_it_called_in_training(how):
    block = SalientPositionsAttention(MANY[1]).train()
    calls = []
    handle = _observe_qv(how, block, calls)
    try:
        block(torch.randn(*MANY, requires_grad=True)).sum().backward()
    finally:
        if handle is not None:
            handle.remove()
    assert len(calls) == 1 if handle is not None else _CountingConv.calls == 1


def test_tracing_in_training_records_the_qv_call():
    """FX and TorchScript tracing record `qv` as a call, whatever the mode: a graph is for any later use."""
    block = SalientPositionsAttention(MANY[1]).train()
    graph = torch.fx.symbolic_trace(block).graph
    assert [node.target for node in graph.nodes if node.op == 'call_module'][0] == 'qv'
    traced = torch.jit.trace(block, torch.randn(*MANY, requires_grad=True), check_trace=False)
    lines = str(traced.graph).splitlines()
    [qv] = [line.split(':')[0].strip() for line in lines if 'GetAttr[name="qv"]' in line]
    assert any('CallMethod[name="forward"]' in line and f'({qv},' in line for line in lines)


@pytest.mark.parametrize('shape', PATH_SHAPES)
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_gives_finite_outputs_on_large_inputs(dtype, shape):
    torch.manual_seed(0)
    block = SalientPositionsAttention(shape[1])
    randomize_norm(block.norm)
    block.train()
    x = torch.randn(*shape) * 1e3
    calls, attention, affinity = [], spa.channel_attention, spa.channel_affinity

    def recorded_attention(keys, value, *args):  # what the forward itself computes for A V, and from what
        calls.append((keys, value, attention(keys, value, *args)))
        return calls[-1][-1]

    def recorded_affinity(keys, *args):  # A alone, where W is applied to A (more positions than channels)
        calls.append((keys, None, affinity(keys, *args)))
        return calls[-1][-1]

    with torch.autocast('cpu', dtype=dtype), mock.patch.object(spa, 'channel_attention', recorded_attention), \
            mock.patch.object(spa, 'channel_affinity', recorded_affinity):
        out = block(x)
    [(keys, value, computed)] = calls
    assert (value is None) == (shape is MANY)
    # A alone and the fused kernel's A V come out in float32; the materialised A V in the values' dtype, its logits
    # and softmax in float32 and A rounded to that dtype for the product with V (no overflow: A's rows sum to 1)
    low_precision_product = value is not None and shape is not FUSED
    assert computed.dtype == (dtype if low_precision_product else torch.float32)
    assert torch.isfinite(computed).all() and torch.isfinite(out).all()
    keys64 = keys.double()  # the same A (V) in float64 from the same (low-precision) keys and values
    expected = torch.softmax(keys64 @ keys64.transpose(1, 2) * block.scale, dim=-1)
    if value is not None:
        expected = expected @ value.double()
    if low_precision_product:  # A and A V each rounded once to the values' dtype
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(computed.double(), expected, rtol=eps, atol=2 * eps * value.abs().max().item())
    else:
        torch.testing.assert_close(computed.double(), expected, rtol=1e-4, atol=1e-3 * expected.abs().max().item())
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


def _plain_attention(keys, value, scale):
    return torch.softmax(keys @ keys.transpose(1, 2) * scale, dim=-1) @ value


@pytest.mark.parametrize('scale', [1.0, 0.3])
def test_chunked_attention_backward_matches_finite_differences(scale):
    """The hand-written backward of the autocast path, across chunk boundaries (5 images, 2 per chunk)."""
    keys = torch.randn(5, 6, 2, dtype=torch.float64, requires_grad=True)
    value = torch.randn(5, 6, 7, dtype=torch.float64, requires_grad=True)
    with mock.patch.object(spa, '_CHUNK_BYTES', 4 * 6 * 6 * 2):
        torch.testing.assert_close(spa._ChannelAttention.apply(keys, value, scale),
                                   _plain_attention(keys, value, scale))
        assert torch.autograd.gradcheck(lambda k, v: spa._ChannelAttention.apply(k, v, scale), (keys, value))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('transposed', [False, True])
def test_autocast_training_attention_matches_float64(dtype, transposed):
    """Low-precision values with gradient (autocast training) take the chunked path: A V and the gradients of K and
    V as float64 computes them from the same rounded inputs, within the rounding of A, dA and the outputs; values
    laid out as channels-last ones are (transposed) give the same numbers."""
    torch.manual_seed(0)
    keys64, value64 = torch.randn(5, 32, 2, dtype=torch.float64) * 3, torch.randn(5, 32, 24, dtype=torch.float64)
    grad64 = torch.randn(5, 32, 24, dtype=torch.float64)
    keys = keys64.to(dtype).requires_grad_()
    value = (value64.transpose(1, 2).contiguous().transpose(1, 2) if transposed else value64).to(dtype)
    value.requires_grad_()
    with mock.patch.object(spa, '_CHUNK_BYTES', 4 * 32 * 32 * 2):
        out = spa.channel_attention(keys, value, 0.5, 'materialised')
    assert type(out.grad_fn).__name__ == '_ChannelAttentionBackward' and out.dtype == dtype
    out.backward(grad64.to(dtype))
    ref_keys, ref_value = (t.detach().double().requires_grad_() for t in (keys, value))
    expected = _plain_attention(ref_keys, ref_value, 0.5)
    expected.backward(grad64.to(dtype).double())
    eps = torch.finfo(dtype).eps
    for got, want in ((out, expected), (keys.grad, ref_keys.grad), (value.grad, ref_value.grad)):
        torch.testing.assert_close(got.double(), want.detach(), rtol=4 * eps, atol=4 * eps * want.abs().max().item())


def test_float64_attention_stays_twice_differentiable():
    keys = torch.randn(2, 6, 2, dtype=torch.float64, requires_grad=True)
    value = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda k, v: spa.channel_attention(k, v, 1.0, 'materialised'), (keys, value))


@pytest.mark.parametrize('scale', [1.0, 0.3])
def test_gram_backward_matches_finite_differences(scale):
    # K K^T has a hand-written backward (k x C' products); check it and its double backward numerically
    keys = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_scaled_gram, (keys, scale))
    assert torch.autograd.gradgradcheck(_scaled_gram, (keys, scale))


def test_affinity_of_float16_keys_whose_products_overflow_float16():
    """Keys of 300 give K K^T = 180,000 (float16 tops out at 65,504): the affinity is still softmax(K K^T),
    recomputed here in float64, because it is computed in float32."""
    keys = torch.full((1, 4, 2), 300.0).half()
    expected = torch.softmax(keys.double() @ keys.double().transpose(1, 2), dim=-1)
    torch.testing.assert_close(channel_affinity(keys).double(), expected)


def test_parameter_layout():
    block = SalientPositionsAttention(256)
    # theta and g with bias, W without bias, then BN: the paper's Table 1 count for C' = C
    assert sum(p.numel() for p in block.parameters()) == 2 * (256 * 256 + 256) + 256 * 256 + 2 * 256
    assert not hasattr(block, 'phi')
    assert SalientPositionsAttention(64, rd_ratio=0.5).rd_channels == 32
    assert SalientPositionsAttention(64, rd_channels=8).rd_channels == 8
    assert SalientPositionsAttention(64, scale='inv_channels').scale == pytest.approx(1 / 64)
    assert math.isclose(SalientPositionsAttention(64, scale=0.25).scale, 0.25)


@pytest.mark.parametrize('kwargs,match', [
    (dict(k=0), 'k must be an int >= 1'),
    (dict(k=-3), 'got -3'),
    (dict(k=2.5), 'k must be an int'),
    (dict(k_ratio=0), 'k_ratio must be a number > 0'),
    (dict(k_ratio=-1.0), 'k_ratio'),
    (dict(rd_ratio=0), 'rd_ratio must be a number > 0'),
    (dict(scale=0.0), 'scale must be a finite number > 0'),
    (dict(scale=float('inf')), 'scale must be a finite number > 0'),
    (dict(scale=float('nan')), 'got nan'),
    (dict(attn_impl='flash'), "attn_impl must be one of \\('auto', 'fused', 'materialised'\\)"),
    (dict(scale='sqrt'), "'inv_channels'"),
])
def test_bad_arguments_fail_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SalientPositionsAttention(16, **kwargs)


def test_bad_input_shapes_name_the_problem():
    block = SalientPositionsAttention(16)
    with pytest.raises(ValueError, match=r'in_channels=16 got an input with 8 channels'):
        block(torch.randn(1, 8, 4, 4))
    with pytest.raises(ValueError, match=r'expects a 4D input \(B, C, H, W\), got shape \[16, 4, 4\]'):
        block(torch.randn(16, 4, 4))
