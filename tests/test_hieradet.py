import math

import pytest
import torch

from hieradet.modeling import HIERA_SIZES, HieraDet, default_global_blocks, hieradet_kwargs
from hieradet.modeling.hieradet import stage_ends
from hieradet.modeling.layout_record import strip_layout_records

# Ryali et al. 2023 (Hiera), Tab. 2: parameters in millions, with the ImageNet classifier, at 224 px.
PAPER_PARAMS_M = {"T": 28, "S": 35, "B": 52, "B+": 70, "L": 214, "H": 673}


def _small(size, **kw):
    return HieraDet(**hieradet_kwargs(size, **kw))


@pytest.mark.parametrize("size", ["T", "S", "B", "B+"])
@pytest.mark.parametrize("hw", [(333, 517), (1024, 1024)])
def test_shapes_strides_channels(size, hw):
    model = _small(size, img_size=max(hw)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *hw))
    c = HIERA_SIZES[size]["embed_dim"]
    for k, name in enumerate(["scale2", "scale3", "scale4", "scale5"]):
        stride = 4 * 2**k
        assert model.output_shape()[name].stride == stride
        assert model.output_shape()[name].channels == c * 2**k
        assert out[name].shape == (1, c * 2**k, math.ceil(hw[0] / stride), math.ceil(hw[1] / stride))
        assert torch.isfinite(out[name]).all()


@pytest.mark.slow
@pytest.mark.parametrize("size", ["L", "H"])
def test_shapes_large_sizes(size):
    model = _small(size).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 333, 517))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(84, 130), (42, 65), (21, 33), (11, 17)]


def test_global_blocks_follow_the_paper():
    assert default_global_blocks(HIERA_SIZES["B"]["stages"]) == (12, 16, 20)
    assert default_global_blocks(HIERA_SIZES["B+"]["stages"]) == (12, 16, 20)
    assert default_global_blocks(HIERA_SIZES["L"]["stages"]) == (23, 33, 43)
    assert default_global_blocks(HIERA_SIZES["H"]["stages"]) == (23, 33, 43)
    assert default_global_blocks(HIERA_SIZES["T"]["stages"]) == (5, 7, 9)
    assert default_global_blocks(HIERA_SIZES["S"]["stages"]) == (7, 10, 13)
    # always in stage 3, the last one ending it
    for size, cfg in HIERA_SIZES.items():
        ends = stage_ends(cfg["stages"])
        g = default_global_blocks(cfg["stages"])
        assert g[-1] == ends[2] and g[0] > ends[1], size


def test_windows_lag_and_relpos_only_on_global_blocks():
    model = _small("B")
    windows = [blk.window_size for blk in model.blocks]
    # stage 1 (0-1): 8; stage 2 (2-4): first block still 8, then 4; stage 3 (5-20): first 4, then 14
    # except the global 12/16/20; stage 4 (21-23): first 14, then 7
    assert windows == [8, 8, 8, 4, 4, 4] + [14] * 6 + [0, 14, 14, 14, 0, 14, 14, 14, 0] + [14, 7, 7]
    assert [i for i, blk in enumerate(model.blocks) if blk.q_stride > 1] == [2, 5, 21]
    relpos_blocks = sorted({int(n.split(".")[1]) for n, _ in model.named_parameters() if "rel_pos" in n})
    assert relpos_blocks == [12, 16, 20]
    # global-block tables are sized for the 1024 px stride-16 map (64 tokens -> 127 distances)
    assert model.blocks[12].attn.rel_pos_h.shape == (127, 384 // 4)  # stage 3: 384 wide, 4 heads
    assert not model.blocks[12].attn.rel_pos_h.detach().any()  # zero init


def test_relpos_modes():
    assert sum("rel_pos" in n for n, _ in _small("T", relpos="none").named_parameters()) == 0
    n_all = sum("rel_pos_h" in n for n, _ in _small("T", relpos="all").named_parameters())
    assert n_all == sum(HIERA_SIZES["T"]["stages"])


def test_abswin_invariant_in_the_backbone():
    model = _small("T")
    for hw, invariant in [((256, 384), True), ((1024, 1024), True)]:
        embed = model.pos_embed(hw)
        e = embed[0]
        ref = e[:56, :56]
        tiles = [e[y : y + 56, x : x + 56] for y in range(0, hw[0] - 55, 56) for x in range(0, hw[1] - 55, 56)]
        assert all(torch.equal(t, ref) for t in tiles) == invariant
    bugged = _small("T", pos_embed="interpolate")
    bugged.load_state_dict(strip_layout_records(model.state_dict()))  # another mode on purpose
    e = bugged.pos_embed((256, 256))[0]
    assert not torch.equal(e[:56, :56], e[56:112, 56:112])


def _classifier_params(size: str) -> int:
    c4 = HIERA_SIZES[size]["embed_dim"] * 8
    return 2 * c4 + c4 * 1000 + 1000  # final LayerNorm + linear head of the 1000-class classifier


def _param_count_rows(load_tool):
    """The rows printed by tools/param_counts.py (the tool users run), loaded from its file."""
    return {row["model"]: row for row in load_tool("param_counts").hiera_rows()}


def test_param_counts_match_paper(load_tool):
    """Backbone configured as the original Hiera (56x56 embedding, no relpos), classifier excluded.

    The paper reports whole classifiers rounded to 1M, so we compare with its figure minus the
    classifier's exact size (final norm + 1000-way linear) and allow 0.5M, the paper's rounding.
    """
    rows = _param_count_rows(load_tool)
    assert len(rows) == len(PAPER_PARAMS_M)
    for size, paper in PAPER_PARAMS_M.items():
        n = rows[f"HieraDet-{size}"]["original (M)"] * 1e6
        assert abs(n - (paper * 1e6 - _classifier_params(size))) <= 0.5e6, (size, n)
        # the detection variant differs only by its embedding layout and the 3 relpos blocks
        assert abs(rows[f"HieraDet-{size}"]["detection (M)"] * 1e6 - n) < 1e6
