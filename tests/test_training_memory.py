"""CPU training keeps no LayerNorm output of a block for backward: ``norm -> (window partition) -> linear`` is one
autograd function (:func:`hieradet.modeling.layers.norm_linear`) that keeps only the norm's input and statistics.

Every check compares with the plain modules (``nn.LayerNorm``, the window partition, ``nn.Linear`` under plain
autograd): outputs bitwise equal, gradients equal within fp32 rounding; and each memory check is first shown to
catch the normalised map on the plain path, so that it cannot pass vacuously.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hieradet.modeling import blocks as B
from hieradet.modeling import layers
from hieradet.modeling.blocks import Block
from hieradet.modeling.windows import window_partition


def _randomise(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _saved(fn, *args):
    """``fn(*args)`` and the tensors autograd keeps for its backward."""
    kept = []

    def pack(t):
        kept.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, kept


def _holds(kept, value: torch.Tensor) -> bool:
    """Whether a kept tensor holds exactly ``value``'s elements in its order (the identity of an activation; a
    linear keeps its input flattened to 2-D)."""
    return any(
        t.numel() == value.numel() and t.dtype == value.dtype and torch.equal(t.reshape(-1), value.reshape(-1))
        for t in kept
    )


def _plain(x, norm, lin, window_size, lin2):
    y = norm(x)
    a = window_partition(y, window_size)[0] if window_size else y
    return lin(a) if lin2 is None else (lin(a), lin2(y))


@pytest.mark.parametrize(
    "window_size,second,bias,dtype",
    [(0, False, True, torch.float32), (4, False, False, torch.float32), (4, True, True, torch.float32),
     (0, True, True, torch.bfloat16)],
)  # fmt: skip
def test_norm_linear_equals_plain_modules_and_keeps_no_normalised_map(window_size, second, bias, dtype):
    torch.manual_seed(0)
    norm, lin = layers.LayerNorm(8), nn.Linear(8, 12, bias=bias)
    lin2 = nn.Linear(8, 6) if second else None
    for m in (norm, lin, lin2):
        if m is not None:
            _randomise(m, seed=len(list(m.parameters())))
            m.to(dtype)
    x = (torch.randn(2, 7, 6, 8) * 2 + 0.5).to(dtype)  # 7 x 6 map: window 4 pads both sides
    assert layers.norm_linear_ok(norm, x.requires_grad_(True), lin, lin2)
    params = [p for m in (norm, lin, lin2) if m is not None for p in m.parameters()]

    got, kept = _saved(layers.norm_linear, x, norm, lin, window_size, lin2)
    ref, kept_ref = _saved(_plain, x, norm, lin, window_size, lin2)
    got, ref = (got, ref) if second else ((got,), (ref,))
    for g, r in zip(got, ref):
        assert torch.equal(g, r)  # the same kernels: bitwise equal

    normalised = norm(x).detach()
    partitioned = window_partition(normalised, window_size)[0] if window_size else normalised
    assert _holds(kept_ref, normalised) or _holds(kept_ref, partitioned)  # the check sees plain autograd's copy
    assert not _holds(kept, normalised) and not _holds(kept, partitioned)
    assert _holds(kept, x.detach())
    assert max(t.numel() for t in kept) == x.numel()  # nothing bigger than the input itself

    ws = [torch.randn(g.shape, dtype=dtype) for g in got]
    grads = torch.autograd.grad(sum((g * w).sum() for g, w in zip(got, ws)), [x] + params)
    ref_grads = torch.autograd.grad(sum((r * w).sum() for r, w in zip(ref, ws)), [x] + params)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **tol)


def test_norm_linear_ok_only_for_cpu_training_of_plain_modules():
    norm, lin = layers.LayerNorm(8), nn.Linear(8, 4)
    x = torch.randn(1, 4, 4, 8)
    assert layers.norm_linear_ok(norm, x, lin)  # trainable weights
    with torch.inference_mode():
        assert not layers.norm_linear_ok(norm, x, lin)  # no autograd: the inference paths
    x.requires_grad_(True)
    assert layers.norm_linear_ok(norm, x, lin)
    with torch.no_grad():
        assert not layers.norm_linear_ok(norm, x, lin)
    frozen = nn.Linear(8, 4).requires_grad_(False)
    assert not layers.norm_linear_ok(layers.LayerNorm(8).requires_grad_(False), x.detach(), frozen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not layers.norm_linear_ok(norm, x, lin)  # autocast casts inside the modules: keep them
    assert not layers.norm_linear_ok(norm, x.to(torch.bfloat16), lin)  # mixed dtypes
    assert not layers.norm_linear_ok(nn.LayerNorm(8, elementwise_affine=False), x, lin)

    class MyLinear(nn.Linear):
        pass

    assert not layers.norm_linear_ok(norm, x, MyLinear(8, 4))  # a subclass may change forward


BLOCKS = {
    "windowed, padded, pooled, proj shortcut": dict(dim=8, dim_out=16, num_heads=2, window_size=4, q_stride=2),
    "windowed, padded": dict(dim=8, dim_out=8, num_heads=2, window_size=4),
    "global relpos": dict(dim=8, dim_out=8, num_heads=2, use_rel_pos=True, rel_pos_size=(7, 6)),
    "global, pooled, proj-free widening": dict(dim=8, dim_out=16, num_heads=2, q_stride=2, expand_proj=False),
}


def _block_norm_outputs(block, x):
    """The plain path's norm1 / norm2 outputs (hooks on the plain modules)."""
    outs = {}
    hs = [getattr(block, n).register_forward_hook(lambda m, a, o, n=n: outs.__setitem__(n, o.detach())) for n in
          ("norm1", "norm2")]  # fmt: skip
    try:
        block(x)
    finally:
        for h in hs:
            h.remove()
    return outs


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_training_equals_plain_path_and_keeps_no_normalised_map(name, monkeypatch):
    torch.manual_seed(0)
    block = Block(**BLOCKS[name]).train()
    _randomise(block, seed=3)
    x = torch.randn(2, 7, 6, 8)
    params = list(block.parameters())

    x1 = x.clone().requires_grad_(True)
    out, kept = _saved(block, x1)
    grads = torch.autograd.grad((out * torch.sin(out.detach())).sum(), [x1] + params)
    with monkeypatch.context() as m:  # the fix removed: plain norm and linear modules
        m.setattr(B, "norm_linear_ok", lambda *a: False)
        x2 = x.clone().requires_grad_(True)
        ref, kept_ref = _saved(block, x2)
        ref_grads = torch.autograd.grad((ref * torch.sin(ref.detach())).sum(), [x2] + params)
        norms = _block_norm_outputs(block, x2)

    assert torch.equal(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    for n, value in norms.items():
        candidates = [value]
        if n == "norm1" and block.window_size:
            candidates.append(window_partition(value, block.window_size)[0])
        assert any(_holds(kept_ref, c) for c in candidates), n  # plain autograd keeps it: the check can fail
        assert not any(_holds(kept, c) for c in candidates), n
    saved_bytes = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in kept}.values())
    saved_ref = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in kept_ref}.values())
    assert saved_bytes < saved_ref


def test_block_under_autocast_and_activation_checkpointing():
    """bf16 autocast keeps the plain modules (and trains); checkpointed blocks give the un-checkpointed gradients."""
    torch.manual_seed(0)
    kw = BLOCKS["windowed, padded, pooled, proj shortcut"]
    block, ckpt = Block(**kw).train(), Block(**kw, use_act_checkpoint=True).train()
    _randomise(block, seed=1)
    ckpt.load_state_dict(block.state_dict())
    x = torch.randn(2, 7, 6, 8)
    grads = []
    for m in (block, ckpt):
        xi = x.clone().requires_grad_(True)
        m(xi).square().mean().backward()
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    for g, r in zip(*grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)
    block.zero_grad()
    xa = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(xa)
    assert out.dtype == torch.bfloat16
    ref = Block(**kw).train()
    ref.load_state_dict(block.state_dict())
    torch.testing.assert_close(out.float(), ref(x), rtol=5e-2, atol=5e-2)
    out.float().square().mean().backward()
    assert torch.isfinite(xa.grad).all() and all(torch.isfinite(p.grad).all() for p in block.parameters())


def test_mlp_and_attention_take_a_precomputed_projection():
    """``Mlp(h, hidden=True)`` / ``Attention(qkv, projected=True)`` are the modules after fc1 / qkv (what the block
    passes them when it fuses those projections with the norm before them)."""
    from hieradet.modeling.attention import Attention

    mlp, attn = layers.Mlp(6, 10), Attention(6, 8, 2, q_stride=2)
    _randomise(mlp, seed=2)
    _randomise(attn, seed=4)
    x = torch.randn(2, 4, 5, 6, requires_grad=True)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            assert torch.equal(mlp(x), mlp(mlp.fc1(x), hidden=True))
            assert torch.equal(attn(x), attn(attn.qkv(x), projected=True))
    with torch.no_grad():
        assert torch.equal(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))))


@pytest.mark.parametrize("hw,stride", [((7, 6), 2), ((9, 8), 3)])
def test_pool_hw_training_keeps_only_the_winning_cell(hw, stride):
    """Max pooling with autograd on CPU: the values of the inference path, the gradient of ``F.max_pool2d``
    (first maximum of a cell on ties), and one byte per output kept instead of the input and the row maxima."""
    from hieradet.modeling import windows

    torch.manual_seed(0)
    x = torch.randn(2, *hw, 5)
    x[0, 0, 0], x[0, 0, 1] = 1.5, 1.5  # a tie inside the first cell
    x1 = x.clone().requires_grad_(True)
    out, kept = _saved(windows.pool_hw, x1, stride)
    assert torch.equal(out, windows._pool_hw(x, stride))
    assert [t.dtype for t in kept] == [torch.uint8] and kept[0].numel() == out.numel()
    _, kept_plain = _saved(windows._pool_hw, x1, stride)  # the chain of maxima keeps float maps
    assert sum(t.numel() for t in kept_plain if t.is_floating_point()) >= x.numel()
    w = torch.randn(out.shape)
    (grad,) = torch.autograd.grad((out * w).sum(), x1)
    x2 = x.clone().requires_grad_(True)
    ref = F.max_pool2d(x2.permute(0, 3, 1, 2), stride, stride, ceil_mode=True).permute(0, 2, 3, 1)
    (ref_grad,) = torch.autograd.grad((ref * w).sum(), x2)
    assert torch.equal(grad, ref_grad)
    assert grad[0, 0, 1].abs().sum() == 0 and grad[0, 0, 0].abs().sum() > 0  # the tie: the first one wins


def test_pooled_attention_training_keeps_no_unpooled_queries(monkeypatch):
    """With query pooling, CPU training keeps k and v but not the unpooled q third of the qkv projection (the
    k / v views would keep the whole projection alive); output bitwise the inference path's, gradients the plain
    path's."""
    from hieradet.modeling.attention import Attention

    torch.manual_seed(0)
    attn = Attention(8, 8, 2, q_stride=2)
    _randomise(attn, seed=6)
    x = torch.randn(2, 6, 6, 8)
    qkv_bytes = 2 * 6 * 6 * 24 * 4
    with torch.no_grad():
        expected = attn(x)
    params = list(attn.parameters())
    x1 = x.clone().requires_grad_(True)
    out, kept = _saved(attn, x1)
    assert torch.equal(out, expected)
    assert max(t.untyped_storage().nbytes() for t in kept) == qkv_bytes * 2 // 3  # k and v only
    grads = torch.autograd.grad((out * torch.cos(out.detach())).sum(), [x1] + params)
    with monkeypatch.context() as m:  # the plain path (as traced graphs run it) keeps the whole projection
        m.setattr(torch.compiler, "is_compiling", lambda: True)
        x2 = x.clone().requires_grad_(True)
        ref, kept_ref = _saved(attn, x2)
        ref_grads = torch.autograd.grad((ref * torch.cos(ref.detach())).sum(), [x2] + params)
    assert max(t.untyped_storage().nbytes() for t in kept_ref) == qkv_bytes
    assert torch.equal(out, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "where", ["norm1", "attn.qkv", "attn", "proj", "norm2", "mlp", "mlp.fc1", "mlp.fc2", "mlp.act"]
)
def test_hooks_see_the_plain_modules_in_cpu_training(where, monkeypatch):
    """A forward hook (feature extraction, adapters) on any fused module sends the block down the plain path:
    the hook fires once with the input the plain modules give that module, and the block's output is unchanged."""
    torch.manual_seed(0)
    block = Block(**BLOCKS["windowed, padded, pooled, proj shortcut"]).train()
    _randomise(block, seed=5)
    x = torch.randn(1, 8, 8, block.dim, requires_grad=True)
    ref = block(x)

    def run():
        seen = []
        handle = block.get_submodule(where).register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
        try:
            return block(x), seen
        finally:
            handle.remove()

    out, seen = run()
    with monkeypatch.context() as m:  # every module called: the input the hook must see
        m.setattr(layers, "has_hooks", lambda *a: True)
        m.setattr(B, "has_hooks", lambda *a: True)
        _, plain = run()
    assert len(seen) == 1, f"the forward hook on {where} did not fire"
    assert len(plain) == 1 and seen[0].shape == plain[0].shape
    assert torch.equal(seen[0], plain[0])
    assert torch.equal(out, ref)


def test_observer_hooks_keep_the_fused_path():
    """Hooks marked with ``observer_hook`` (the memory tool's attribution) do not switch the fused paths off."""
    block = Block(**BLOCKS["windowed, padded"]).train()
    x = torch.randn(1, 8, 8, block.dim, requires_grad=True)
    handles = [m.register_forward_pre_hook(layers.observer_hook(lambda m, a: None)) for m in block.modules()]
    try:
        assert not layers.has_hooks(block.norm1, block.attn, block.attn.qkv, block.mlp, block.mlp.fc1)
        _, kept = _saved(block, x)
    finally:
        for h in handles:
            h.remove()
    hs = [block.norm1.register_forward_hook(lambda m, a, o: None)]
    try:
        assert layers.has_hooks(block.norm1)
        _, kept_plain = _saved(block, x)
    finally:
        hs[0].remove()

    def size(ts):
        return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in ts}.values())

    assert size(kept) < size(kept_plain)  # an ordinary hook on norm1 takes the plain path, which keeps more
