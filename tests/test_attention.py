"""The optimised attention paths against plain reference computations written here.

The references use no code of :mod:`hieradet.modeling.attention` besides the (unchanged) relative
position table lookup: explicit softmax attention, NCHW max pooling, windows cut out by slicing.
"""

import pytest
import torch
import torch.nn.functional as F

from hieradet.modeling import attention as A
from hieradet.modeling import layers
from hieradet.modeling import windows as W
from hieradet.modeling.attention import Attention, rel_pos_bias, rel_pos_lookup
from hieradet.modeling.blocks import Block
from hieradet.modeling.windows import pool_hw


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def ref_pool(x: torch.Tensor, s: int) -> torch.Tensor:
    if s == 1:
        return x
    return F.max_pool2d(x.permute(0, 3, 1, 2), s, s, ceil_mode=True).permute(0, 2, 3, 1)


def ref_bias(q, table_h, table_w, q_hw, k_hw):
    """bias[b, n, (qy, qx), (ky, kx)] = q . Rh[qy, ky] + q . Rw[qx, kx], element by element."""
    (qh, qw), (kh, kw) = q_hw, k_hw
    Rh, Rw = rel_pos_lookup(qh, kh, table_h), rel_pos_lookup(qw, kw, table_w)
    B, nh, _, _ = q.shape
    out = torch.zeros(B, nh, qh * qw, kh * kw, dtype=q.dtype)
    for qy in range(qh):
        for qx in range(qw):
            qv = q[:, :, qy * qw + qx]  # (B, nh, hd)
            for ky in range(kh):
                for kx in range(kw):
                    out[:, :, qy * qw + qx, ky * kw + kx] = qv @ Rh[qy, ky] + qv @ Rw[qx, kx]
    return out


def ref_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    B, H, W, _ = x.shape
    nh, hd = attn.num_heads, attn.head_dim
    D = nh * hd
    qkv = x @ attn.qkv.weight.t() + attn.qkv.bias
    q, k, v = qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]
    q = ref_pool(q, attn.q_stride)
    qh, qw = q.shape[1:3]
    q = q.reshape(B, qh * qw, nh, hd).transpose(1, 2)
    k = k.reshape(B, H * W, nh, hd).transpose(1, 2)
    v = v.reshape(B, H * W, nh, hd).transpose(1, 2)
    logits = (q * hd**-0.5) @ k.transpose(-2, -1)
    if attn.use_rel_pos:
        logits = logits + ref_bias(q, attn.rel_pos_h, attn.rel_pos_w, (qh, qw), (H, W))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, qh, qw, D)
    return out @ attn.proj.weight.t() + attn.proj.bias


def ref_block(blk: Block, x: torch.Tensor) -> torch.Tensor:
    s, ws = blk.q_stride, blk.window_size
    y = F.layer_norm(x, (x.shape[-1],), blk.norm1.weight, blk.norm1.bias, eps=1e-6)
    if blk.proj is not None:
        shortcut = ref_pool(y @ blk.proj.weight.t() + blk.proj.bias, s)
    else:
        shortcut = ref_pool(x, s)
    B, H, W, C = y.shape
    if ws:
        Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
        padded = torch.zeros(B, Hp, Wp, C)
        padded[:, :H, :W] = y
        out = torch.zeros(B, Hp // s, Wp // s, blk.dim_out)
        o = ws // s
        for i in range(Hp // ws):
            for j in range(Wp // ws):
                win = padded[:, i * ws : (i + 1) * ws, j * ws : (j + 1) * ws]
                out[:, i * o : (i + 1) * o, j * o : (j + 1) * o] = ref_attention(blk.attn, win)
        attn = out[:, : shortcut.shape[1], : shortcut.shape[2]]
    else:
        attn = ref_attention(blk.attn, y)
    x = shortcut + attn
    z = F.layer_norm(x, (x.shape[-1],), blk.norm2.weight, blk.norm2.bias, eps=1e-6)
    z = F.gelu(z @ blk.mlp.fc1.weight.t() + blk.mlp.fc1.bias) @ blk.mlp.fc2.weight.t() + blk.mlp.fc2.bias
    return x + z


@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (5, 5)])
@pytest.mark.parametrize("stride", [2, 3])
def test_pool_hw_equals_ceil_mode_max_pool(hw, stride):
    x = torch.randn(2, *hw, 6)
    torch.testing.assert_close(pool_hw(x, stride), ref_pool(x, stride), rtol=0, atol=0)
    # a strided view (a slice of a qkv projection) gives the same
    big = torch.randn(2, hw[0] * hw[1], 3, 6)
    view = big[:, :, 1].reshape(2, *hw, 6)
    torch.testing.assert_close(pool_hw(view, stride), ref_pool(view.contiguous(), stride), rtol=0, atol=0)
    assert pool_hw(x, 1) is x


def test_pool_hw_gradient_goes_to_the_max():
    x = torch.randn(1, 4, 4, 3, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    pool_hw(x, 2).sum().backward()
    ref_pool(x_ref, 2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=0)


@pytest.mark.parametrize("q_hw,k_hw", [((4, 5), (4, 5)), ((2, 3), (4, 6)), ((3, 3), (3, 3))])
def test_rel_pos_bias_matches_definition_and_out_buffer(q_hw, k_hw):
    g = torch.Generator().manual_seed(1)
    B, nh, hd = 2, 3, 4
    q = torch.randn(B, q_hw[0] * q_hw[1], nh, hd, generator=g).transpose(1, 2)  # strided, like in Attention
    th = torch.randn(2 * max(q_hw[0], k_hw[0]) - 1, hd, generator=g)
    tw = torch.randn(2 * max(q_hw[1], k_hw[1]) - 1, hd, generator=g)
    expected = ref_bias(q, th, tw, q_hw, k_hw)
    got = rel_pos_bias(q, th, tw, q_hw, k_hw)
    assert got.is_contiguous() and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    buf = torch.full((expected.numel() + 7,), float("nan"))
    got_out = rel_pos_bias(q, th, tw, q_hw, k_hw, out=buf[: expected.numel()])
    assert got_out.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(got_out, got, rtol=0, atol=0)


ATTN_CASES = [
    dict(dim=8, dim_out=8, num_heads=2),
    dict(dim=8, dim_out=8, num_heads=2, use_rel_pos=True, rel_pos_size=(6, 6)),
    dict(dim=8, dim_out=16, num_heads=4, q_stride=2),
    dict(dim=8, dim_out=16, num_heads=2, q_stride=2, use_rel_pos=True, rel_pos_size=(5, 7)),
]


@pytest.mark.parametrize("kw", ATTN_CASES)
@pytest.mark.parametrize("hw", [(6, 6), (5, 7)])
def test_attention_matches_reference_in_every_mode(kw, hw):
    attn = Attention(**kw)
    _randomise(attn)
    x = torch.randn(2, *hw, kw["dim"])
    with torch.no_grad():
        expected = ref_attention(attn, x)
    with torch.inference_mode():
        inference = attn(x)
    with torch.no_grad():
        no_grad = attn(x)
    torch.testing.assert_close(inference, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(no_grad, inference, rtol=0, atol=0)
    # with autograd: same values and the gradients of the plain computation
    x1 = x.clone().requires_grad_(True)
    out = attn(x1)
    torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5)
    w = torch.randn(out.shape)
    grads = torch.autograd.grad((out * w).sum(), [x1] + list(attn.parameters()))
    x2 = x.clone().requires_grad_(True)
    ref_grads = torch.autograd.grad((ref_attention(attn, x2) * w).sum(), [x2] + list(attn.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


BLOCK_CASES = [
    dict(dim=8, dim_out=8, num_heads=2, window_size=4),  # 9x10 map: padded windows
    dict(dim=8, dim_out=16, num_heads=2, window_size=4, q_stride=2),  # stage transition in windows
    dict(dim=8, dim_out=8, num_heads=2, window_size=0, use_rel_pos=True, rel_pos_size=(9, 10)),
    dict(dim=8, dim_out=8, num_heads=2, window_size=3, use_rel_pos=True),  # relpos in every window
    dict(dim=8, dim_out=8, num_heads=1, window_size=0, q_stride=2),  # pooled shortcut without proj
]


@pytest.mark.parametrize("kw", BLOCK_CASES)
def test_block_matches_reference(kw):
    blk = Block(**kw)
    _randomise(blk, seed=3)
    x = torch.randn(2, 9, 10, kw["dim"])
    with torch.no_grad():
        expected = ref_block(blk, x)
    with torch.inference_mode():
        got = blk(x)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    out = blk(x.clone().requires_grad_(True))
    torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5)


def test_workspace_is_reused_only_without_autograd():
    A.clear_workspace()
    attn = Attention(8, 8, 2, use_rel_pos=True, rel_pos_size=(6, 6))
    _randomise(attn)
    x = torch.randn(1, 6, 6, 8)
    with torch.inference_mode():
        first = attn(x)
    buf = A._WORKSPACE.buffers[("relpos", torch.float32)]
    ptr = buf.data_ptr()
    assert buf.numel() == 1 * 2 * 36 * 36 and not buf.is_inference()
    with torch.no_grad():  # a buffer made in inference mode is writable outside it too
        second = attn(x)
    assert A._WORKSPACE.buffers[("relpos", torch.float32)].data_ptr() == ptr
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    # a smaller map reuses the same memory
    with torch.inference_mode():
        attn(torch.randn(1, 4, 4, 8))
    assert A._WORKSPACE.buffers[("relpos", torch.float32)].data_ptr() == ptr
    # with autograd the mask is a fresh tensor: gradients reach the tables
    out = attn(x)
    out.sum().backward()
    assert attn.rel_pos_h.grad is not None and attn.rel_pos_h.grad.abs().sum() > 0
    A.set_workspace_enabled(False)
    try:
        assert not A._WORKSPACE.buffers
        with torch.inference_mode():
            third = attn(x)
        assert not A._WORKSPACE.buffers
        torch.testing.assert_close(third, first, rtol=0, atol=0)
    finally:
        A.set_workspace_enabled(True)
    A.clear_workspace()
    assert not A._WORKSPACE.buffers


def test_workspace_not_captured_by_tracing():
    A.clear_workspace()
    attn = Attention(8, 8, 2, use_rel_pos=True, rel_pos_size=(4, 4)).eval()
    _randomise(attn)
    x = torch.randn(1, 4, 4, 8)
    with torch.no_grad():
        traced = torch.jit.trace(attn, (x,), check_trace=False)
        assert not A._WORKSPACE.buffers
        x2 = torch.randn(1, 4, 4, 8)
        torch.testing.assert_close(traced(x2), attn(x2), rtol=1e-6, atol=1e-6)


def test_window_unpartition_view_equals_copy():
    x = torch.randn(2, 9, 10, 5)
    windows, pad_hw = W.window_partition(x, 4)
    assert windows.shape == (2 * 3 * 3, 4, 4, 5) and pad_hw == (12, 12)
    copy = W.window_unpartition(windows, 4, pad_hw, (9, 10))
    view = W.window_unpartition(windows, 4, pad_hw, (9, 10), contiguous=False)
    assert copy.is_contiguous() and not view.is_contiguous()
    torch.testing.assert_close(view, x, rtol=0, atol=0)
    torch.testing.assert_close(copy, x, rtol=0, atol=0)


def test_mlp_inplace_gelu_only_without_autograd():
    mlp = layers.Mlp(6, 12)
    _randomise(mlp)
    x = torch.randn(3, 6)
    expected = F.gelu(x @ mlp.fc1.weight.t() + mlp.fc1.bias) @ mlp.fc2.weight.t() + mlp.fc2.bias
    with torch.inference_mode():
        torch.testing.assert_close(mlp(x), expected, rtol=1e-6, atol=1e-6)
    out = mlp(x.requires_grad_(True))
    out.sum().backward()  # the out-of-place path keeps what GELU's backward needs
    assert x.grad is not None and torch.isfinite(x.grad).all()
    tanh = layers.Mlp(6, 12, act_layer=lambda: torch.nn.GELU(approximate="tanh"))
    _randomise(tanh)
    with torch.inference_mode():
        got = tanh(x.detach())
    ref = F.gelu(x.detach() @ tanh.fc1.weight.t() + tanh.fc1.bias, approximate="tanh")
    torch.testing.assert_close(got, ref @ tanh.fc2.weight.t() + tanh.fc2.bias, rtol=1e-6, atol=1e-6)


def test_hieradet_inference_equals_autograd_path():
    """Whole backbone: the inference fast paths (workspace, in-place GELU) change no number."""
    from hieradet.modeling import HieraDet, hieradet_kwargs

    torch.manual_seed(0)
    model = HieraDet(**hieradet_kwargs("T", embed_dim=16, stages=(1, 1, 3, 1), global_blocks=(3,), img_size=128)).eval()
    for name, p in model.named_parameters():
        if "rel_pos" in name:
            torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(1, 3, 128, 96)
    with torch.inference_mode():
        fast = model(x)
    slow = model(x)  # autograd on: fresh masks, out-of-place GELU
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k].detach(), rtol=1e-5, atol=1e-5)


def _saved_numels(fn, *args):
    """Element counts of the tensors autograd keeps for backward while ``fn(*args)`` runs (parameters included)."""
    numels = []

    def pack(t):
        numels.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, numels


def test_mlp_training_keeps_no_gelu_output_and_matches_autograd():
    for approximate in ("none", "tanh"):
        mlp = layers.Mlp(6, 40, act_layer=lambda a=approximate: torch.nn.GELU(approximate=a))
        _randomise(mlp, seed=5)
        x = torch.randn(2, 5, 6)
        x1 = x.clone().requires_grad_(True)
        out, numels = _saved_numels(mlp, x1)
        assert numels.count(2 * 5 * 40) == 1  # the fc1 output only; GELU's output is recomputed in backward
        w = torch.randn(out.shape)
        grads = torch.autograd.grad((out * w).sum(), [x1] + list(mlp.parameters()))
        x2 = x.clone().requires_grad_(True)
        h = F.gelu(x2 @ mlp.fc1.weight.t() + mlp.fc1.bias, approximate=approximate)
        ref = h @ mlp.fc2.weight.t() + mlp.fc2.bias
        torch.testing.assert_close(out.detach(), ref.detach(), rtol=1e-6, atol=1e-6)
        ref_grads = torch.autograd.grad((ref * w).sum(), [x2] + list(mlp.parameters()))
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_flash", [True, False])
def test_relpos_training_keeps_no_attention_matrix(use_flash, monkeypatch):
    """CPU training with relpos: nothing of size heads * Lq * Lk is kept for backward (SDPA's math path would);
    values and gradients are the plain computation's, with the flash forward and with the head-by-head one."""
    monkeypatch.setattr(A, "_FLASH_CPU", use_flash)
    attn = Attention(8, 8, 2, use_rel_pos=True, rel_pos_size=(6, 6), q_stride=2)
    _randomise(attn)
    x = torch.randn(2, 6, 6, 8)
    x1 = x.clone().requires_grad_(True)
    out, numels = _saved_numels(attn, x1)
    assert out.shape == (2, 3, 3, 8)
    assert max(numels) < 2 * 2 * 9 * 36  # the (B, heads, Lq, Lk) softmax / mask
    w = torch.randn(out.shape)
    grads = torch.autograd.grad((out * w).sum(), [x1] + list(attn.parameters()))
    x2 = x.clone().requires_grad_(True)
    ref = ref_attention(attn, x2)
    torch.testing.assert_close(out.detach(), ref.detach(), rtol=1e-5, atol=1e-5)
    ref_grads = torch.autograd.grad((ref * w).sum(), [x2] + list(attn.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    assert grads[-1].abs().sum() > 0  # rel_pos_w
