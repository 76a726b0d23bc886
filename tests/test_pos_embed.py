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
