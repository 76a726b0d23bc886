"""The CPU inference fast paths: the cached position embedding, the contiguous block input, the in-place /
fused residual adds of a block and the workspace projections. Each must give exactly the numbers of the plain
(autograd) path and must not leak state between calls, weights, sizes or dtypes."""

import pytest
import torch
from torch import nn

from hieradet.modeling import HieraDet
from hieradet.modeling import layers as L
from hieradet.modeling.blocks import Block
from hieradet.modeling.hivit import HiViT
from hieradet.modeling.pos_embed import AbsWinPosEmbed
from hieradet.modeling.vit import ViT
from hieradet.testing import tiny_backbone_kwargs

NETS = {"hieradet": HieraDet, "vit": ViT, "hivit": HiViT}


def _embed():
    torch.manual_seed(0)
    return AbsWinPosEmbed(8, pretrain_size=6, window_size=4, global_size=3)


def test_pos_embed_cached_without_autograd_and_equal_to_the_uncached_embedding():
    pe = _embed()
    with torch.no_grad():
        a = pe((10, 7))
        b = pe((10, 7))
    assert a is b and a.is_contiguous() and a.shape == (1, 10, 7, 8)
    torch.testing.assert_close(a, pe.embed((10, 7)).permute(0, 2, 3, 1), rtol=0, atol=0)
    with torch.inference_mode():  # the cached tensor is a normal one, usable in and out of inference mode
        assert pe((10, 7)) is a and not a.is_inference()
    with torch.no_grad():
        assert pe((12, 12)) is not a  # another size
        torch.testing.assert_close(pe((12, 12)), pe.embed((12, 12)).permute(0, 2, 3, 1), rtol=0, atol=0)
        other = pe((12, 12), mode="interpolate")  # another mode
        torch.testing.assert_close(other, pe.embed((12, 12), "interpolate").permute(0, 2, 3, 1), rtol=0, atol=0)


def test_pos_embed_cache_follows_weight_updates_dtype_and_autograd():
    pe = _embed()
    with torch.no_grad():
        before = pe((8, 8)).clone()
        pe.window_embed.add_(1.0)  # an optimizer step (in place)
        after = pe((8, 8))
    torch.testing.assert_close(after, before + 1.0)
    state = {k: torch.zeros_like(v) for k, v in pe.state_dict().items()}
    pe.load_state_dict(state)
    with torch.no_grad():
        assert pe((8, 8)).abs().max() == 0
    pe.window_embed = nn.Parameter(torch.ones_like(pe.window_embed))  # a replaced parameter
    with torch.no_grad():
        assert pe((8, 8)).min() == 1
    pe.double()
    with torch.no_grad():
        assert pe((8, 8)).dtype == torch.float64
    # with autograd: a fresh tensor every call, and gradients reach the weights
    out = pe((8, 8))
    assert out.requires_grad and out is not pe((8, 8))
    out.sum().backward()
    assert pe.window_embed.grad is not None and pe.window_embed.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", sorted(NETS))
def test_backbone_blocks_get_a_contiguous_map_and_inference_equals_autograd(kind):
    torch.manual_seed(0)
    net = NETS[kind](**tiny_backbone_kwargs(kind, img_size=128)).eval()
    for name, p in net.named_parameters():
        if "rel_pos" in name:
            nn.init.normal_(p, std=0.05)
    seen = []
    net.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    x = torch.randn(1, 3, 128, 96)
    with torch.inference_mode():
        fast = net(x)
    slow = net(x.clone().requires_grad_(True))  # autograd: no cache, no in-place adds, no workspace
    assert seen == [True, True]
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k].detach(), rtol=0, atol=0, msg=k)


@pytest.mark.parametrize(
    "window, q_stride, hw",
    [(4, 1, (8, 8)), (4, 1, (9, 6)), (0, 1, (6, 5)), (4, 2, (8, 8)), (4, 2, (7, 9))],
    ids=["windows", "padded-windows", "global", "pooled-windows", "pooled-padded"],
)
def test_block_inference_paths_equal_autograd_and_leave_the_input_alone(window, q_stride, hw):
    torch.manual_seed(0)
    dim_out = 8 if q_stride == 1 else 16
    blk = Block(8, dim_out, 2, q_stride=q_stride, window_size=window, use_rel_pos=True, rel_pos_size=(4, 4))
    blk.eval()
    for name, p in blk.named_parameters():
        if "rel_pos" in name:
            nn.init.normal_(p, std=0.05)
    x = torch.randn(2, *hw, 8)
    x_copy = x.clone()
    with torch.inference_mode():
        fast = blk(x)
    assert torch.equal(x, x_copy)  # the in-place residual adds write the block's own tensors only
    slow = blk(x.clone().requires_grad_(True))
    assert fast.is_contiguous()
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=0)


def test_block_residual_keeps_fp32_under_autocast():
    torch.manual_seed(0)
    blk = Block(8, 8, 2, window_size=0).eval()
    x = torch.randn(1, 4, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.inference_mode():
            fast = blk(x)
        slow = blk(x.clone().requires_grad_(True))
    # the bf16 branch outputs are added to the fp32 stream out of place (an in-place add would round to bf16)
    assert fast.dtype == slow.dtype == torch.float32
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=0)


def test_workspace_linear_reuses_its_slot_and_matches_linear():
    L.clear_workspace()
    torch.manual_seed(0)
    lin = nn.Linear(8, 12)
    x = torch.randn(2, 5, 8)
    with torch.inference_mode():
        a = L.workspace_linear(lin, x, "test")
        torch.testing.assert_close(a, lin(x), rtol=0, atol=0)
        ptr = a.data_ptr()
        b = L.workspace_linear(lin, torch.randn(3, 8), "test")  # a smaller call reuses the same memory
        assert b.data_ptr() == ptr and b.shape == (3, 12)
    # with autograd, a hook or a non-contiguous input: the plain module call
    y = L.workspace_linear(lin, x.requires_grad_(True), "test")
    assert y.requires_grad and y.data_ptr() != ptr
    calls = []
    handle = lin.register_forward_hook(lambda m, i, o: calls.append(1))
    with torch.inference_mode():
        L.workspace_linear(lin, x.detach(), "test")
        handle.remove()
        z = L.workspace_linear(lin, x.detach().transpose(0, 1), "test")
    assert calls == [1] and z.data_ptr() != ptr
    L.set_workspace_enabled(False)
    try:
        with torch.inference_mode():
            assert L.workspace_linear(lin, x.detach(), "test").data_ptr() != ptr
        assert not L._WORKSPACE.buffers
    finally:
        L.set_workspace_enabled(True)
