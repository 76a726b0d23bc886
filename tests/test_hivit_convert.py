"""Official HiViT checkpoints -> HiViT: key layout, numerical equivalence, errors.

The official implementation (github zhangxiaosong18/hivit) is not installable, so the test builds checkpoints in its
key layout itself and checks the converted backbone against ``_official_forward``: a small functional model of the
official data flow written here from the paper and the official key/shape layout. It keeps the official token
layout, (B, N, 4, 4, C) tokens (N = 16 px patches, 4x4 stride-4 positions inside each) in the stem and (B, N, C) in
the main stage, so it checks our BHWC re-arrangement, the merge order and the position-embedding grid.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hieradet.checkpoint import (
    METADATA_KEY,
    CheckpointError,
    HieraDetCheckpointer,
    build_converted_checkpoint,
    convert_state_dict,
    detect_format,
    load_backbone_checkpoint,
    load_checkpoint_file,
    official_hivit_layout,
)
from hieradet.modeling.hivit import HiViT
from hieradet.modeling.layout_record import strip_layout_records

ROOT = Path(__file__).resolve().parents[1]

DIM, DEPTHS, HEADS = 64, (1, 1, 3), 2  # main width 64: stem 16 and 32


def _official_state_dict(dim=DIM, depths=DEPTHS, heads=HEADS, grid=14, rpe=True, classifier=True, mae=False, seed=0):
    """Random weights under the official HiViT key names and shapes (one stem block = two MLP blocks)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.1):
        return torch.randn(*shape, generator=g) * scale

    def ln(prefix, c):
        return {f"{prefix}.weight": 1 + rnd(c), f"{prefix}.bias": rnd(c)}

    def mlp(prefix, c, ratio):
        h = int(c * ratio)
        return {
            f"{prefix}.fc1.weight": rnd(h, c),
            f"{prefix}.fc1.bias": rnd(h),
            f"{prefix}.fc2.weight": rnd(c, h),
            f"{prefix}.fc2.bias": rnd(c),
        }

    c = dim // 4
    sd = {"patch_embed.proj.weight": rnd(c, 3, 4, 4), "patch_embed.proj.bias": rnd(c)}
    sd.update(ln("patch_embed.norm", c))
    sd["absolute_pos_embed"] = rnd(1, grid * grid, dim, scale=0.5)
    i = 0
    for stage in range(2):
        for _ in range(2 * depths[stage]):
            sd.update(ln(f"blocks.{i}.norm2", c))
            sd.update(mlp(f"blocks.{i}.mlp", c, 3.0))
            i += 1
        sd.update(ln(f"blocks.{i}.norm", 4 * c))
        sd[f"blocks.{i}.reduction.weight"] = rnd(2 * c, 4 * c)
        i += 1
        c *= 2
    for _ in range(depths[2]):
        sd.update(ln(f"blocks.{i}.norm1", dim))
        sd[f"blocks.{i}.attn.qkv.weight"] = rnd(3 * dim, dim)
        sd[f"blocks.{i}.attn.qkv.bias"] = rnd(3 * dim)
        sd[f"blocks.{i}.attn.proj.weight"] = rnd(dim, dim)
        sd[f"blocks.{i}.attn.proj.bias"] = rnd(dim)
        if rpe:
            sd[f"blocks.{i}.attn.relative_position_bias_table"] = rnd((2 * grid - 1) ** 2, heads)
            sd[f"blocks.{i}.attn.relative_position_index"] = torch.zeros(grid**2, grid**2, dtype=torch.long)
        sd.update(ln(f"blocks.{i}.norm2", dim))
        sd.update(mlp(f"blocks.{i}.mlp", dim, 4.0))
        i += 1
    if classifier:
        sd.update(ln("fc_norm", dim))
        sd["head.weight"], sd["head.bias"] = rnd(1000, dim), rnd(1000)
    if mae:  # encoder norm over the 7C "hifeat" features, decoder, mask token
        sd.update(ln("norm", 7 * dim))
        sd["mask_token"] = rnd(1, 1, 32)
        sd["decoder_embed.weight"], sd["decoder_embed.bias"] = rnd(32, 7 * dim), rnd(32)
        sd["decoder_pos_embed"] = rnd(1, grid * grid, 32)
        sd.update(ln("decoder_blocks.0.norm1", 32))
        sd["decoder_pred.weight"] = rnd(16 * 16 * 3, 32)
    return sd


def _official_forward(sd, x, depths=DEPTHS, heads=HEADS):
    """The official HiViT forward (without relative position bias, like the authors' detection config) in the
    official token layout. Returns the stride-4 and stride-8 stem outputs and the main-stage output, as BHWC maps."""

    def ln(t, p):
        return F.layer_norm(t, t.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)

    def mlp(t, p):
        return F.linear(
            F.gelu(F.linear(t, sd[f"{p}.fc1.weight"], sd[f"{p}.fc1.bias"])), sd[f"{p}.fc2.weight"], sd[f"{p}.fc2.bias"]
        )

    B = x.shape[0]
    y = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=4)
    C, hp, wp = y.shape[1], y.shape[2] // 4, y.shape[3] // 4
    # (B, C, hp*4, wp*4) -> (B, N, 4 rows, 4 columns, C)
    y = y.reshape(B, C, hp, 4, wp, 4).permute(0, 2, 4, 3, 5, 1).reshape(B, hp * wp, 4, 4, C)
    y = ln(y, "patch_embed.norm")
    i, stem = 0, []
    for stage in range(2):
        for _ in range(2 * depths[stage]):
            y = y + mlp(ln(y, f"blocks.{i}.norm2"), f"blocks.{i}.mlp")
            i += 1
        stem.append(y)
        cells = [y[..., 0::2, 0::2, :], y[..., 1::2, 0::2, :], y[..., 0::2, 1::2, :], y[..., 1::2, 1::2, :]]
        y = F.linear(ln(torch.cat(cells, dim=-1), f"blocks.{i}.norm"), sd[f"blocks.{i}.reduction.weight"])
        i += 1
    y = y[..., 0, 0, :] + sd["absolute_pos_embed"]  # (B, N, C)
    N, C = y.shape[1:]
    hd = C // heads
    for _ in range(depths[2]):
        qkv = F.linear(ln(y, f"blocks.{i}.norm1"), sd[f"blocks.{i}.attn.qkv.weight"], sd[f"blocks.{i}.attn.qkv.bias"])
        q, k, v = qkv.reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4)
        attn = ((q * hd**-0.5) @ k.transpose(-2, -1)).softmax(-1)
        a = (attn @ v).transpose(1, 2).reshape(B, N, C)
        y = y + F.linear(a, sd[f"blocks.{i}.attn.proj.weight"], sd[f"blocks.{i}.attn.proj.bias"])
        y = y + mlp(ln(y, f"blocks.{i}.norm2"), f"blocks.{i}.mlp")
        i += 1

    def stem_map(t, inner):
        c = t.shape[-1]
        return t.reshape(B, hp, wp, inner, inner, c).permute(0, 1, 3, 2, 4, 5).reshape(B, hp * inner, wp * inner, c)

    return stem_map(stem[0], 4), stem_map(stem[1], 2), y.reshape(B, hp, wp, C)


def _detection_model(**kw):
    # the detection variant: windows 14, global blocks with (zero-init) relpos, sized for 448 px
    args = dict(embed_dim=DIM, depths=DEPTHS, num_heads=HEADS, img_size=448, global_blocks=(2,), out_norm=False)
    args.update(kw)
    return HiViT(**args).eval()


def _detector(**kw):
    """A module holding a HiViT where the project's detectors have it (``backbone.bottom_up``)."""
    detector = nn.Module()
    detector.backbone = nn.Module()
    detector.backbone.bottom_up = _detection_model(**kw)
    return detector


def _check_against_official(model, sd, x):
    with torch.no_grad():
        out = model(x)
        ref4, ref8, ref16 = _official_forward(sd, x)
    torch.testing.assert_close(out["scale2"], ref4.permute(0, 3, 1, 2), rtol=0, atol=1e-4)
    torch.testing.assert_close(out["scale3"], ref8.permute(0, 3, 1, 2), rtol=0, atol=1e-4)
    torch.testing.assert_close(out["scale4"], ref16.permute(0, 3, 1, 2), rtol=0, atol=1e-4)


def test_layout_is_read_from_the_keys():
    layout = official_hivit_layout(_official_state_dict())
    assert layout["embed_dim"] == DIM and layout["depths"] == DEPTHS
    assert layout["main_heads"] == HEADS and layout["pretrain_grid"] == 14
    assert layout["kinds"] == ["mlp", "mlp", "merge", "mlp", "mlp", "merge", "main", "main", "main"]
    assert official_hivit_layout(_official_state_dict(depths=(2, 2, 20), rpe=False))["depths"] == (2, 2, 20)
    # the key map refuses what is not an official HiViT
    vit = {"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}
    with pytest.raises(CheckpointError, match="expected 2 patch merges"):
        official_hivit_layout(vit)
    with pytest.raises(CheckpointError, match="no 'blocks.N"):
        official_hivit_layout({"conv1.weight": torch.zeros(1)})


def test_classification_checkpoint_converts_and_matches_the_official_forward():
    sd = _official_state_dict(rpe=True, classifier=True)
    converted = convert_state_dict(sd).state_dict
    assert not any("relative_position" in k or k.startswith(("head.", "fc_norm.")) for k in converted)
    assert converted["pos_embed.window_embed"].shape == (1, DIM, 14, 14)
    # the grid is the official token order (row-major over the 14x14 patches)
    torch.testing.assert_close(converted["pos_embed.window_embed"][0, :, 1, 2], sd["absolute_pos_embed"][0, 16])
    assert torch.equal(converted["patch_embed.stage2.1.norm.weight"], sd["blocks.4.norm2.weight"])
    assert torch.equal(converted["patch_embed.merge2.reduction.weight"], sd["blocks.5.reduction.weight"])
    assert torch.equal(converted["blocks.0.attn.qkv.weight"], sd["blocks.6.attn.qkv.weight"])

    model = _detection_model()
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected
    # all that is new: the zero-initialised relpos of the global block
    assert sorted(missing) == ["blocks.2.attn.rel_pos_h", "blocks.2.attn.rel_pos_w"]
    # at 224 px every 14x14 window is the whole map and the new relpos is zero: exactly the official network
    _check_against_official(model, sd, torch.randn(2, 3, 224, 224))


def test_mae_checkpoint_file_loads_into_the_detector_prefix(tmp_path):
    sd = _official_state_dict(rpe=False, classifier=False, mae=True, seed=1)
    path = tmp_path / "mae_pretrain_hivit_tiny.pth"
    torch.save({"model": sd, "epoch": 1599}, path)

    detector = _detector(out_norm=True)
    HieraDetCheckpointer(detector).load(str(path))  # the raw official file, converted on the fly
    loaded, converted = detector.state_dict(), build_converted_checkpoint(convert_state_dict(sd))["model"]
    assert not converted.keys() - loaded.keys()  # nothing unexpected
    assert all(torch.equal(loaded[k], v) for k, v in strip_layout_records(converted).items())
    assert sorted(loaded.keys() - converted.keys()) == sorted(  # left at their initialisation
        [f"backbone.bottom_up.blocks.2.attn.rel_pos_{a}" for a in "hw"]
        + [f"backbone.bottom_up.out_norms.scale{i}.{p}" for i in range(2, 6) for p in ("weight", "bias")]
    )
    detector.backbone.bottom_up.out_norms = None  # compare the raw features
    _check_against_official(detector.backbone.bottom_up, sd, torch.randn(1, 3, 224, 224))


def test_built_checkpoint_has_detector_keys_and_metadata(tmp_path):
    sd = _official_state_dict(rpe=True)
    path = tmp_path / "hivit.pth"
    torch.save(sd, path)
    ckpt = build_converted_checkpoint(convert_state_dict(load_checkpoint_file(str(path))))
    assert all(k.startswith("backbone.bottom_up.") for k in ckpt["model"])
    meta = ckpt["__hieradet__"]
    assert meta["arch"] == "HiViT" and meta["prefix"] == "backbone.bottom_up." and meta["source_format"] == "hivit"
    assert meta["backbone_kwargs"] == {
        "embed_dim": DIM,
        "depths": [1, 1, 3],
        "num_heads": HEADS,  # read from the relative position bias tables
        "pretrain_img_size": 224,
        "pos_embed": "abswin",
    }
    # what is new by design: relpos of the global blocks (all three in this short stage) and the output norms
    assert sorted(meta["new_keys"]) == sorted(
        [f"blocks.{i}.attn.rel_pos_{a}" for i in range(3) for a in "hw"]
        + [f"out_norms.scale{i}.{p}" for i in range(2, 6) for p in ("weight", "bias")]
    )
    model = _detection_model()
    bare = {k[len("backbone.bottom_up.") :]: v for k, v in ckpt["model"].items()}
    assert not model.load_state_dict(bare, strict=False).unexpected_keys


def test_abswin_detection_windows_reproduce_the_pretrained_model():
    """After conversion, each 224 px quadrant of a 448 px image gives the official 224 px output (abs-win);
    the authors' interpolated embedding does not."""
    sd = _official_state_dict(rpe=False)
    tiles = torch.randn(4, 3, 224, 224)
    big = torch.cat([torch.cat([tiles[0], tiles[1]], dim=2), torch.cat([tiles[2], tiles[3]], dim=2)], dim=1)[None]
    with torch.no_grad():
        ref = _official_forward(sd, tiles)[2]  # (4, 14, 14, C)
    for mode, expect in (("abswin", True), ("interpolate", False)):
        model = _detection_model(global_blocks=(), pos_embed=mode)
        load_backbone_checkpoint(model, build_converted_checkpoint(convert_state_dict(sd, pos_embed=mode), ""))
        with torch.no_grad():
            y = model(big)["scale4"][0].permute(1, 2, 0)
        quads = [y[:14, :14], y[:14, 14:], y[14:, :14], y[14:, 14:]]
        assert all(torch.allclose(q, r, atol=1e-4, rtol=0) for q, r in zip(quads, ref)) == expect, mode


def test_errors_name_the_cause(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_backbone_checkpoint(_detection_model(), str(tmp_path / "missing.pth"))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 this is not a torch file")
    with pytest.raises(CheckpointError, match="truncated or corrupt|not a valid torch file"):
        load_backbone_checkpoint(_detection_model(), str(corrupt))
    # a checkpoint of another size: HiViT-T-like depths (1, 1, 10) into a (1, 1, 3) model
    with pytest.raises(CheckpointError, match=r"depths=\(1, 1, 10\)\) does not fit .*depths=\(1, 1, 3\)"):
        load_backbone_checkpoint(_detection_model(), _official_state_dict(depths=(1, 1, 10)))
    # another width
    with pytest.raises(CheckpointError, match="in the checkpoint vs"):
        load_backbone_checkpoint(_detection_model(), _official_state_dict(dim=128))
    # files that look like a HiViT but are not a complete 3-stage one
    one_merge = {k: v for k, v in _official_state_dict().items() if not k.startswith("blocks.5.reduction.")}
    with pytest.raises(CheckpointError, match="expected 2 patch merges"):
        convert_state_dict(one_merge, source="hivit")
    holey = _official_state_dict()
    for k in [k for k in holey if k.startswith("blocks.3.")]:
        del holey[k]
    with pytest.raises(CheckpointError, match="missing block 3"):
        convert_state_dict(holey, source="hivit")
    # a plain ViT (no patch merges) or something else is not a HiViT
    vit = {"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}
    with pytest.raises(CheckpointError, match="HiViT files have `absolute_pos_embed` and `blocks.N.reduction`"):
        convert_state_dict(vit, source="hivit")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint format: no `patch_embed.proj.weight` / `blocks"):
        convert_state_dict({"conv1.weight": torch.zeros(1)}, source="hivit")


def test_format_is_detected():
    assert detect_format(_official_state_dict()) == "hivit"
    assert detect_format(_official_state_dict(rpe=False, classifier=False, mae=True)) == "hivit"
    # a ViT / Hiera is not a HiViT, and asking for one says what the file is
    vit = {"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "blocks.0.norm1.weight": torch.zeros(8)}
    vit["pos_embed"] = torch.zeros(1, 197, 8)
    assert detect_format(vit) == "mae_vit"
    with pytest.raises(CheckpointError, match="requested but the keys look like mae_vit"):
        convert_state_dict(vit, source="hivit")
    # unknown keys have no place in the HiViT unless strict=False
    odd = dict(_official_state_dict(), **{"blocks.6.attn.q_norm.weight": torch.ones(DIM)})
    with pytest.raises(CheckpointError, match=r"no place in HiViT: \['blocks.6.attn.q_norm.weight'\]"):
        convert_state_dict(odd)
    assert "blocks.6.attn.q_norm.weight" in convert_state_dict(odd, strict=False).dropped


def test_main_tool_converts_official_hivit_and_the_checkpointer_loads_it(load_tool, tmp_path, capsys):
    sd = _official_state_dict(rpe=True, seed=3)
    src, dst = tmp_path / "hivit_official.pth", tmp_path / "hivit_converted.pth"
    torch.save({"model": sd}, src)
    assert load_tool("convert_checkpoint").main([str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "source format : hivit (official HiViT (zhangxiaosong18/hivit))" in out
    assert "target        : HiViT-custom with keys under 'backbone.bottom_up.'" in out
    assert "embedding out : pos_embed.window_embed (1, 64, 14, 14)" in out
    assert "model.backbone.bottom_up.pretrain_img_size=224" in out
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt[METADATA_KEY]["arch"] == "HiViT" and ckpt[METADATA_KEY]["source_format"] == "hivit"
    # the same file as the library's conversion makes
    ref = build_converted_checkpoint(convert_state_dict(sd))["model"]
    assert ckpt["model"].keys() == ref.keys() and all(torch.equal(ckpt["model"][k], ref[k]) for k in ref)

    # the converted file and the raw official file both load through HieraDetCheckpointer and give the official net
    for path in (dst, src):
        detector = _detector(out_norm=True)
        HieraDetCheckpointer(detector).load(str(path))
        backbone = detector.backbone.bottom_up
        assert torch.equal(backbone.blocks[2].attn.qkv.weight, sd["blocks.8.attn.qkv.weight"])
        backbone.out_norms = None  # compare the raw features
        _check_against_official(backbone, sd, torch.randn(1, 3, 224, 224))
    bare = _detection_model()
    assert sorted(load_backbone_checkpoint(bare, str(dst))) == ["blocks.2.attn.rel_pos_h", "blocks.2.attn.rel_pos_w"]


def test_checkpointer_refuses_a_hivit_of_another_size(load_tool, tmp_path, capsys):
    src, dst = tmp_path / "hivit_official.pth", tmp_path / "hivit_converted.pth"
    torch.save(_official_state_dict(rpe=False), src)
    assert load_tool("convert_checkpoint").main([str(src), str(dst), "--num-heads", str(HEADS)]) == 0

    wider = _detector(embed_dim=128, num_heads=4)
    before = wider.backbone.bottom_up.patch_embed.proj.weight.clone()
    for path in (dst, src):  # converted, and raw (converted on the fly)
        with pytest.raises(CheckpointError) as e:
            HieraDetCheckpointer(wider).load(str(path))
        msg = str(e.value)
        assert (
            "size mismatch at 'backbone.bottom_up': HiViT-custom (embed_dim=64, depths=(1, 1, 3)) does not fit" in msg
        )
        assert "HiViT(embed_dim=128, depths=(1, 1, 3))" in msg
        assert "patch_embed.proj.weight: (16, 3, 4, 4) in the checkpoint vs (32, 3, 4, 4) in the model" in msg
    assert torch.equal(wider.backbone.bottom_up.patch_embed.proj.weight, before)  # nothing was loaded

    deeper = _detector(depths=(1, 1, 4), global_blocks=(3,))
    before = deeper.backbone.bottom_up.blocks[0].attn.qkv.weight.clone()
    with pytest.raises(
        CheckpointError, match=r"HiViT\(embed_dim=64, depths=\(1, 1, 4\)\).*model keys the checkpoint lacks"
    ):
        HieraDetCheckpointer(deeper).load(str(dst))
    assert torch.equal(deeper.backbone.bottom_up.blocks[0].attn.qkv.weight, before)

    other_grid = _detector(pretrain_img_size=256, window_size=16)  # a 16x16 window embedding (and windows)
    with pytest.raises(CheckpointError) as e:
        HieraDetCheckpointer(other_grid).load(str(dst))
    assert "the checkpoint has window 14x14 + no global embedding" in str(e.value)
    assert "model.backbone.bottom_up.pretrain_img_size=224" in str(e.value)

    # the tool refuses to convert another size than requested
    assert load_tool("convert_checkpoint").main([str(src), str(tmp_path / "x.pth"), "--expect-size", "B"]) == 1
    err = capsys.readouterr().err
    assert "size mismatch: the checkpoint is HiViT-custom (embed_dim=64, depths=(1, 1, 3)), not HiViT-B" in err
    assert not (tmp_path / "x.pth").exists()


def test_project_tool_wraps_the_main_tool_and_loads_into_the_projects_mask_rcnn(load_tool, tmp_path, capsys):
    from detectron2.config import LazyConfig, instantiate

    cli = load_tool("projects/HiViT/tools/convert_hivit_checkpoint.py").main
    sd = _official_state_dict(rpe=True, seed=2)
    src, dst = tmp_path / "hivit_official.pth", tmp_path / "hivit_converted.pth"
    torch.save({"model": sd}, src)
    assert cli([str(src), str(dst)]) == 0
    assert "source format : hivit" in capsys.readouterr().out

    cfg = LazyConfig.load(str(ROOT / "projects/HiViT/configs/COCO/mask_rcnn_hivit_b_1x.py"))
    cfg.model.backbone.bottom_up.update(embed_dim=DIM, depths=DEPTHS, num_heads=HEADS, global_blocks=(2,), img_size=448)
    model = instantiate(cfg.model)
    HieraDetCheckpointer(model).load(str(dst))
    bu = model.backbone.bottom_up
    assert torch.equal(bu.blocks[1].mlp.fc2.weight, sd["blocks.7.mlp.fc2.weight"])
    assert torch.equal(bu.patch_embed.stage1[1].norm.bias, sd["blocks.1.norm2.bias"])
    bu.out_norms = None
    _check_against_official(bu.eval(), sd, torch.randn(1, 3, 224, 224))

    # not a HiViT, unreadable input: exit code 1 and a message naming the cause
    vit = {"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "blocks.0.norm1.weight": torch.zeros(8)}
    torch.save(dict(vit, pos_embed=torch.zeros(1, 197, 8)), tmp_path / "vit.pth")
    assert cli([str(tmp_path / "vit.pth"), str(tmp_path / "x.pth")]) == 1
    assert "source format hivit (official HiViT (zhangxiaosong18/hivit)) was requested" in capsys.readouterr().err
    assert cli([str(tmp_path / "nope.pth"), str(tmp_path / "x.pth")]) == 1
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()
