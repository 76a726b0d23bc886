"""hieradet.analysis and tools/visualize_pos_embed.py: the window-similarity measure (Bolya et al. 2024, Fig. 4)
and the pictures."""

import json
import os

import pytest
import torch
from PIL import Image

from hieradet import analysis
from hieradet.analysis import pos_embed as lib
from hieradet.modeling import HieraDet
from hieradet.modeling.pos_embed import AbsWinPosEmbed
from hieradet.modeling.vit import ViT

TINY = [
    "model.backbone.bottom_up.embed_dim=16",
    "model.backbone.bottom_up.stages=[1,1,2,1]",
    "model.backbone.bottom_up.global_blocks=[3]",
]


MODEL_CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs/common/models/mask_rcnn_hieradet.py")


@pytest.fixture(scope="module")
def tool(load_tool):
    return load_tool("visualize_pos_embed")


def test_window_similarity_hand_cases():
    a = torch.randn(3, 4, 4)
    assert lib.window_similarity(a.tile(1, 2, 3), 4) == pytest.approx(1.0, abs=1e-12)
    assert lib.window_similarity(torch.cat([a, -a], dim=2), 4) == pytest.approx(-1.0, abs=1e-12)
    # two orthogonal windows -> 0; with a third equal to the first: mean of (0, 1, 0) = 1/3
    e0, e1 = torch.zeros(1, 2, 2), torch.zeros(1, 2, 2)
    e0[0, 0, 0], e1[0, 1, 1] = 1.0, 2.0
    assert lib.window_similarity(torch.cat([e0, e1], dim=2), 2) == pytest.approx(0.0)
    assert lib.window_similarity(torch.cat([e0, e1, e0], dim=2)[None], 2) == pytest.approx(1 / 3)
    # partial windows at the edges are ignored
    assert lib.window_similarity(a.tile(1, 2, 3)[:, :7, :10], 4) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="need at least 2"):
        lib.window_similarity(a, 4)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        lib.window_similarity(torch.zeros(4, 4), 2)


@pytest.mark.parametrize("img_size", [448, 512, 1024])
def test_recursive_abswin_similarity_is_one_and_interpolation_is_not(img_size):
    torch.manual_seed(0)
    pe = AbsWinPosEmbed(8, pretrain_size=56, window_size=8, global_size=7, mode="abswin")
    src = lib.EmbedSource(pe, stride=4, name="test")
    emb = lib.full_embeddings(src, img_size)
    assert set(emb) == {"abswin", "abswin_single", "interpolate"}
    assert emb["abswin"].shape == (1, 8, img_size // 4, img_size // 4)
    assert lib.window_similarity(emb["abswin"], 56) == pytest.approx(1.0, abs=1e-9)
    assert lib.window_similarity(emb["interpolate"], 56) < 0.9
    assert lib.window_similarity(emb["abswin_single"], 56) < 0.9
    assert pe.mode == "abswin"  # restored


def test_embed_in_mode_equals_a_module_built_in_that_mode_and_leaves_the_module_alone():
    torch.manual_seed(0)
    pe = AbsWinPosEmbed(8, pretrain_size=56, window_size=8, global_size=7, mode="abswin")
    for mode in analysis.MODES:
        other = AbsWinPosEmbed(8, pretrain_size=56, window_size=8, global_size=7, mode=mode)
        other.load_state_dict(pe.state_dict())
        got = analysis.embed_in_mode(pe, (100, 76), mode)
        torch.testing.assert_close(got, other((100, 76)).permute(0, 3, 1, 2))
        assert pe.mode == "abswin"


def test_similarity_table():
    torch.manual_seed(0)
    src = lib.EmbedSource(AbsWinPosEmbed(8, 56, 8, 7), 4, "t")
    rows = lib.similarity_table(src, [224, 448])
    by = {(r["img_size"], r["method"]): r for r in rows}
    assert by[(224, "abswin")]["tile_56"] is None  # a single 56x56 window at 224 px
    # at the pretraining size every method gives the same embedding
    assert by[(224, "abswin")]["window_8"] == pytest.approx(by[(224, "interpolate")]["window_8"])
    assert by[(448, "abswin")]["tile_56"] == pytest.approx(1.0)
    assert by[(448, "interpolate")]["tile_56"] < 0.9


def test_from_config_writes_pictures_and_numbers(tool, tmp_path, capsys):
    out = tmp_path / "pe"
    res = tool.main(
        ["--config-file", MODEL_CONFIG, "--img-size", "512", "--sizes", "224", "448", "512"]
        + ["--channels", "0", "3", "--output", str(out)]
        + TINY
    )
    src = res["source"]
    assert src.stride == 4 and src.tile == 56 and src.window == 8
    assert src.pos_embed.window_embed.shape == (1, 16, 8, 8) and src.pos_embed.global_embed.shape == (1, 16, 7, 7)
    for f in res["files"].values():
        assert os.path.getsize(f) > 0
    w, h = Image.open(res["files"]["channels"]).size
    assert w > h > 200  # 2 rows x 6 panels
    saved = json.loads((out / "window_similarity.json").read_text())
    assert saved["rows"] == res["rows"]
    rec = [r for r in saved["rows"] if r["method"] == "abswin" and r["img_size"] >= 448]
    assert [round(r["tile_56"], 6) for r in rec] == [1.0, 1.0]
    printed = capsys.readouterr().out
    assert "window similarity" in printed and "interpolate" in printed


def _tiny_hieradet():
    torch.manual_seed(0)
    return HieraDet(embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), global_blocks=(3,), img_size=128)


def test_from_checkpoint_infers_the_embedding(tool, tmp_path):
    net = _tiny_hieradet()
    state = {f"backbone.bottom_up.{k}": v for k, v in net.state_dict().items()}
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 10}, path)
    src = lib.embed_from_checkpoint(str(path))
    assert src.stride == 4 and src.tile == 56 and src.window == 8
    for hw in [(56, 56), (100, 76)]:
        torch.testing.assert_close(src.pos_embed(hw), net.pos_embed(hw))
    # a ViT checkpoint: stride 16 from the patch kernel, the 14x14 grid is the window
    torch.manual_seed(0)
    vit = ViT(embed_dim=32, depth=2, num_heads=2, global_blocks=(1,), img_size=224)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    vsrc = lib.embed_from_checkpoint(str(tmp_path / "vit.pth"))
    assert vsrc.stride == 16 and vsrc.tile == 14 and vsrc.pos_embed.global_embed is None
    torch.testing.assert_close(vsrc.pos_embed((28, 42)), vit.pos_embed((28, 42)))
    res = tool.main(["--checkpoint", str(tmp_path / "vit.pth"), "--img-size", "448", "--output", str(tmp_path / "v")])
    assert [r["tile_14"] for r in res["rows"] if r["method"] == "abswin" and r["img_size"] == 448] == [
        pytest.approx(1.0)
    ]


def test_config_plus_checkpoint_loads_the_weights(tmp_path):
    net = _tiny_hieradet()
    torch.save({"model": {f"backbone.bottom_up.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "w.pth")
    src = lib.embed_from_config(MODEL_CONFIG, TINY, str(tmp_path / "w.pth"))
    torch.testing.assert_close(src.pos_embed.window_embed, net.pos_embed.window_embed)
    torch.testing.assert_close(src.pos_embed.global_embed, net.pos_embed.global_embed)
    # the config's model is 16 wide: a 32-wide checkpoint does not fit
    wide = HieraDet(embed_dim=32, num_heads=1, stages=(1, 1, 2, 1), global_blocks=(3,), img_size=128)
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"window_embed has shape \(1, 32, 8, 8\).*expects \(1, 16, 8, 8\)"):
        lib.embed_from_config(MODEL_CONFIG, TINY, str(tmp_path / "wide.pth"))


def test_bad_inputs_are_named(tool, tmp_path):
    torch.save({"model": {"backbone.conv.weight": torch.zeros(2, 2)}}, tmp_path / "nope.pth")
    with pytest.raises(SystemExit, match="no `...pos_embed.window_embed`"):
        tool.main(["--checkpoint", str(tmp_path / "nope.pth"), "--output", str(tmp_path / "o")])
    (tmp_path / "corrupt.pth").write_bytes(b"\x00\x01 not a checkpoint")
    with pytest.raises(SystemExit, match=r"cannot read checkpoint .*corrupt\.pth"):
        tool.main(["--checkpoint", str(tmp_path / "corrupt.pth"), "--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="checkpoint file not found"):
        tool.main(["--checkpoint", str(tmp_path / "missing.pth"), "--output", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="give --config-file, --checkpoint"):
        tool.main(["--output", str(tmp_path / "o")])
    pe_only = {"pos_embed.window_embed": torch.zeros(1, 4, 8, 8)}
    torch.save(pe_only, tmp_path / "pe.pth")
    with pytest.raises(SystemExit, match="cannot infer the patch stride"):
        tool.main(["--checkpoint", str(tmp_path / "pe.pth"), "--output", str(tmp_path / "o")])
    small = ["--img-size", "448", "--sizes", "448", "--output", str(tmp_path / "o")]
    res = tool.main(["--checkpoint", str(tmp_path / "pe.pth"), "--patch-stride", "4"] + small)
    assert res["source"].tile == 56
    with pytest.raises(SystemExit, match=r"channels \[9\] out of range"):
        tool.main(["--checkpoint", str(tmp_path / "pe.pth"), "--patch-stride", "4", "--channels", "9"] + small)
