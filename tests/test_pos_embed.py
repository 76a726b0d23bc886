import pytest
import torch

from hieradet.modeling.pos_embed import AbsWinPosEmbed, interpolate_embed, tile_embed


def _tiles_equal(embed_bhwc: torch.Tensor, tile: int) -> bool:
    """True when every full tile x tile block of a (1, H, W, C) map equals the top-left one."""
    e = embed_bhwc[0]
    ref = e[:tile, :tile]
    H, W = e.shape[:2]
    for y in range(0, H - tile + 1, tile):
        for x in range(0, W - tile + 1, tile):
            if not torch.equal(e[y : y + tile, x : x + tile], ref):
                return False
    return True


def test_tile_embed_wraps_and_crops():
    grid = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3)
    out = tile_embed(grid, (7, 5))
    assert out.shape == (1, 2, 7, 5)
    for y in range(7):
        for x in range(5):
            assert torch.equal(out[0, :, y, x], grid[0, :, y % 3, x % 3])


def test_interpolate_identity_at_same_size():
    grid = torch.randn(1, 4, 7, 7)
    assert interpolate_embed(grid, (7, 7)) is grid
    assert interpolate_embed(grid, (9, 11)).shape == (1, 4, 9, 11)


def test_pretrain_embed_is_tiled_window_plus_interpolated_global():
    pe = AbsWinPosEmbed(8, pretrain_size=56, window_size=8, global_size=7)
    expected = tile_embed(pe.window_embed, (56, 56)) + torch.nn.functional.interpolate(
        pe.global_embed, size=(56, 56), mode="bicubic", align_corners=False
    )
    torch.testing.assert_close(pe.pretrain_embed(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("hw", [(84, 130), (256, 256), (61, 97)])
def test_recursive_abswin_tiles_the_pretrain_embedding(hw):
    pe = AbsWinPosEmbed(8, pretrain_size=56, window_size=8, global_size=7, mode="abswin")
    full = pe(hw)
    assert full.shape == (1, hw[0], hw[1], 8)
    assert _tiles_equal(full, 56)
    # the first tile is exactly the pretraining-size embedding
    torch.testing.assert_close(full[0, :56, :56], pe.pretrain_embed()[0].permute(1, 2, 0)[: hw[0], : hw[1]])


def test_interpolate_mode_breaks_the_tiling():
    pe = AbsWinPosEmbed(8, pretrain_size=56, window_size=8, global_size=7, mode="interpolate")
    full = pe((256, 256))
    assert not _tiles_equal(full, 56)
    # at the pretraining size, every mode gives the same embedding
    for mode in ("abswin", "abswin_single", "interpolate"):
        pe.mode = mode
        torch.testing.assert_close(pe((56, 56)), pe.pretrain_embed().permute(0, 2, 3, 1))


def test_single_level_tiles_the_window_only():
    pe = AbsWinPosEmbed(8, pretrain_size=56, window_size=8, global_size=None, mode="abswin_single")
    assert _tiles_equal(pe((100, 64)), 8)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="mode"):
        AbsWinPosEmbed(8, 56, 8, 7, mode="tile")
    with pytest.raises(ValueError, match="window_size"):
        AbsWinPosEmbed(8, 56, 0, 7)
    with pytest.raises(ValueError, match="needs a window_size"):
        AbsWinPosEmbed(8, 56, None, None)


def test_embed_of_another_mode_leaves_the_module_unchanged():
    pe = AbsWinPosEmbed(8, pretrain_size=56, window_size=8, global_size=7, mode="abswin")
    for mode in ("abswin_single", "interpolate"):
        other = AbsWinPosEmbed(8, pretrain_size=56, window_size=8, global_size=7, mode=mode)
        other.load_state_dict(pe.state_dict())
        torch.testing.assert_close(pe((100, 84), mode=mode), other((100, 84)), rtol=0, atol=0)
        torch.testing.assert_close(pe.embed((100, 84), mode=mode), other((100, 84)).permute(0, 3, 1, 2))
        assert pe.mode == "abswin"
    assert _tiles_equal(pe((100, 84)), 56)  # still the recursive embedding
    with pytest.raises(ValueError, match="pos_embed mode must be one of .* got 'tile'"):
        pe((56, 56), mode="tile")


def _tiny_hieradet(**kw):
    from hieradet.modeling.hieradet import HieraDet

    return HieraDet(**{"embed_dim": 8, "num_heads": 1, "stages": (1, 1, 2, 2), "global_blocks": (3,), **kw})


def test_misaligned_hieradet_windows_are_refused():
    with pytest.raises(ValueError) as e:
        _tiny_hieradet(pretrain_img_size=256, window_size=(8, 4, 14, 7))
    assert str(e.value) == (
        "HieraDet (pretrain_img_size=256, window_size=(8, 4, 14, 7)): pos_embed='abswin' tiles the 64x64 "
        "pretraining grid (stride-4 tokens) over the feature map, so every attention window must line up with the "
        "tiles (span a whole number of tiles or a whole fraction of one); stage 3 window 14 spans 56 (14 x 4) "
        "stride-4 tokens, neither a multiple nor a divisor of 64; stage 4 window 7 spans 56 (7 x 8) stride-4 "
        "tokens, neither a multiple nor a divisor of 64. Use e.g. window_size=(8, 4, 16, 8), or "
        "pos_embed='abswin_single' or 'interpolate'."
    )
    with pytest.raises(ValueError, match=r"stage 1 window 6 spans 6 stride-4 tokens, .* of 56\. Use e\.g\. "):
        _tiny_hieradet(window_size=(6, 4, 14, 7))
    # the one-level embedding tiles only the 8x8 window grid
    with pytest.raises(ValueError, match=r"'abswin_single' tiles the 8x8 window embedding .* stage 2 window 6"):
        _tiny_hieradet(pos_embed="abswin_single", window_size=(8, 6, 14, 7))
    with pytest.raises(ValueError, match="tiles the 256x256 pretraining grid"):  # SAM 2's 1024 px, recursively
        _tiny_hieradet(pretrain_img_size=1024, window_size=(8, 4, 14, 7))


def test_aligned_or_unconstrained_hieradet_windows_build():
    _tiny_hieradet(pretrain_img_size=256, window_size=(8, 4, 16, 8))  # one 256 px tile per window
    _tiny_hieradet(pretrain_img_size=256, window_size=(8, 4, 32, 16))  # 2x2 tiles per window
    _tiny_hieradet(pretrain_img_size=256, window_size=(8, 4, 14, 7), pos_embed="interpolate")
    _tiny_hieradet(pretrain_img_size=256, window_size=(8, 4, 14, 7), pos_embed="abswin_single")  # 56 = 7 x 8
    _tiny_hieradet(pretrain_img_size=256, window_size=(8, 4, 0, 0))  # global stages 3-4 (timm's classifier)
    # the only stage-3 window in use is in the first block of stage 4 (window and pooling lag by one block)
    _tiny_hieradet(pretrain_img_size=256, window_size=(8, 4, 14, 0), global_blocks=(2, 3, 4))
    with pytest.raises(ValueError, match="stage 3 window 14"):
        _tiny_hieradet(pretrain_img_size=256, window_size=(8, 4, 14, 0), global_blocks=(2, 3))


def test_misaligned_vit_and_hivit_windows_are_refused():
    from hieradet.modeling.hivit import HiViT
    from hieradet.modeling.vit import ViT

    vit = dict(img_size=256, embed_dim=16, depth=2, num_heads=2, global_blocks=(1,))
    with pytest.raises(ValueError) as e:
        ViT(window_size=16, **vit)
    assert str(e.value) == (
        "ViT (pretrain_img_size=224, patch_size=16, window_size=16): pos_embed='abswin' tiles the 14x14 pretraining "
        "grid (tokens) over the feature map, so every attention window must line up with the tiles (span a whole "
        "number of tiles or a whole fraction of one); the windowed blocks' window 16 spans 16 tokens, neither a "
        "multiple nor a divisor of 14. Use window_size=14 (or a multiple or divisor of it), or "
        "pos_embed='interpolate'."
    )
    with pytest.raises(ValueError, match="'abswin_single' tiles the 14x14 window embedding"):
        ViT(window_size=16, pos_embed="abswin_single", **vit)
    for ok in (dict(window_size=7), dict(window_size=28), dict(window_size=16, pos_embed="interpolate")):
        ViT(**{**vit, **ok})
    ViT(**{**vit, "window_size": 16, "global_blocks": (0, 1)})  # no windowed block

    hivit = dict(img_size=256, embed_dim=16, depths=(1, 1, 2), num_heads=2, global_blocks=(1,))
    with pytest.raises(ValueError, match=r"^HiViT \(pretrain_img_size=256, patch_size=16, window_size=14\): .* 16"):
        HiViT(pretrain_img_size=256, window_size=14, **hivit)
    HiViT(pretrain_img_size=256, window_size=16, **hivit)
