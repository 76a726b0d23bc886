"""Converted checkpoints load into detection models; bad files and mismatches give clear errors."""

import argparse
import os

import pytest
import torch
from conftest import load_tool_module
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate

from hieradet.checkpoint import (
    METADATA_KEY,
    CheckpointError,
    HieraDetCheckpointer,
    build_converted_checkpoint,
    convert_state_dict,
    detect_format,
    load_backbone_checkpoint,
    load_checkpoint_file,
)
from hieradet.modeling import HieraDet
from hieradet.modeling.layout_record import strip_layout_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
convert_checkpoint = load_tool_module("convert_checkpoint")

hiera = pytest.importorskip("hiera")

TINY = dict(embed_dim=32, num_heads=1, stages=(1, 1, 3, 1))  # 6 blocks; stage 3 = blocks 2-4


@pytest.fixture(scope="module")
def tiny_hiera(tmp_path_factory):
    """A small official Hiera saved like the published files, and its conversion by the tool."""
    torch.manual_seed(0)
    ref = hiera.Hiera(**TINY)
    d = tmp_path_factory.mktemp("ckpt")
    src, out = d / "hiera_tiny.pth", d / "hiera_tiny_converted.pth"
    torch.save({"model_state": ref.state_dict()}, src)
    assert convert_checkpoint.main([str(src), str(out), "--num-heads", "1"]) == 0
    return ref.state_dict(), src, out


def _mask_rcnn(**bottom_up):
    """detectron2's Mask R-CNN (the project's HieraDet config when present) with a tiny HieraDet."""
    path = os.path.join(ROOT, "configs", "common", "models", "mask_rcnn_hieradet.py")
    if os.path.isfile(path):
        model = LazyConfig.load(path).model
    else:  # pragma: no cover - before engineer B's config exists
        model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
        model.backbone.bottom_up = dict(_target_=HieraDet)
        model.backbone.in_features = ["scale2", "scale3", "scale4", "scale5"]
    kw = dict(TINY, global_blocks=(2, 3, 4), img_size=256, drop_path_rate=0.0)
    kw.update(bottom_up)
    for k, v in kw.items():
        setattr(model.backbone.bottom_up, k, v)
    model.backbone.square_pad = 256
    model.roi_heads.num_classes = 3
    return instantiate(model)


def _embed_overrides(converted):
    return {k: tuple(v) if isinstance(v, list) else v for k, v in converted[METADATA_KEY]["embed_kwargs"].items()}


def test_converted_file_loads_into_mask_rcnn(tiny_hiera):
    src_sd, _, out = tiny_hiera
    converted = torch.load(out, weights_only=True)
    assert converted[METADATA_KEY]["embed_kwargs"]["pos_embed_window"] == 56
    assert converted[METADATA_KEY]["embed_kwargs"]["pos_embed_global"] is None
    model = _mask_rcnn(**_embed_overrides(converted))
    model_sd = model.state_dict()
    # exact keys: nothing unexpected, and the only missing backbone keys are the global blocks' relpos
    assert set(converted["model"]) <= set(model_sd)
    missing = {k for k in model_sd if k.startswith("backbone.bottom_up.") and k not in converted["model"]}
    assert missing == {f"backbone.bottom_up.blocks.{i}.attn.rel_pos_{a}" for i in (2, 3, 4) for a in "hw"}
    assert set(converted[METADATA_KEY]["new_keys"]) == {k[len("backbone.bottom_up.") :] for k in missing}

    for checkpointer in (HieraDetCheckpointer(model), DetectionCheckpointer(model)):
        with torch.no_grad():
            for p in model.backbone.bottom_up.parameters():
                p.zero_()
        checkpointer.load(str(out))
        got = model.state_dict()
        for k, v in strip_layout_records(converted["model"]).items():
            assert torch.equal(got[k], v), k
    grid = src_sd["pos_embed"].reshape(1, 56, 56, 32).permute(0, 3, 1, 2)
    assert torch.equal(model.backbone.bottom_up.pos_embed.window_embed, grid)
    assert torch.equal(model.backbone.bottom_up.blocks[2].mlp.fc1.weight, src_sd["blocks.2.mlp.fc1.weight"])


def test_raw_checkpoint_is_converted_on_load(tiny_hiera):
    src_sd, src, _ = tiny_hiera
    model = _mask_rcnn(pos_embed_window=56, pos_embed_global=None)
    HieraDetCheckpointer(model).load(str(src))  # the original file, not converted
    grid = src_sd["pos_embed"].reshape(1, 56, 56, 32).permute(0, 3, 1, 2)
    assert torch.equal(model.backbone.bottom_up.pos_embed.window_embed, grid)
    assert torch.equal(model.backbone.bottom_up.patch_embed.proj.weight, src_sd["patch_embed.proj.weight"])


def test_embedding_layout_mismatch_is_an_error(tiny_hiera):
    _, _, out = tiny_hiera
    model = _mask_rcnn()  # the config's default: 8x8 window + 7x7 global embedding
    with pytest.raises(CheckpointError) as e:
        HieraDetCheckpointer(model).load(str(out))
    msg = str(e.value)
    assert "window 56x56 + no global embedding" in msg and "window 8x8 + global 7x7" in msg
    assert "model.backbone.bottom_up.pos_embed_window=56" in msg
    assert "model.backbone.bottom_up.pos_embed_global=null" in msg
    # plain detectron2 skips the mismatched embedding before loading; the record in the weights stops it
    before = model.backbone.bottom_up.pos_embed.window_embed.clone()
    with pytest.raises(CheckpointError, match=r"pos_embed_window=56.*apply_checkpoint_layout"):
        DetectionCheckpointer(model).load(str(out))
    assert torch.equal(model.backbone.bottom_up.pos_embed.window_embed, before)
    # a bare backbone too
    with pytest.raises(CheckpointError, match="position-embedding layout mismatch"):
        load_backbone_checkpoint(HieraDet(**TINY, global_blocks=(2, 3, 4)), str(out))


def test_size_mismatch_is_an_error(tiny_hiera):
    _, src, out = tiny_hiera
    with pytest.raises(CheckpointError, match=r"size mismatch: the checkpoint is HieraDet-custom \(embed_dim=32"):
        convert_state_dict(load_checkpoint_file(str(src)), expect_size="B", num_heads=1)
    wider = _mask_rcnn(embed_dim=48, pos_embed_window=56, pos_embed_global=None)
    with pytest.raises(CheckpointError) as e:
        HieraDetCheckpointer(wider).load(str(out))
    assert "size mismatch at 'backbone.bottom_up'" in str(e.value)
    assert "HieraDet(embed_dim=48, stages=(1, 1, 3, 1))" in str(e.value)
    assert "patch_embed.proj.weight: (32, 3, 7, 7) in the checkpoint vs (48, 3, 7, 7)" in str(e.value)
    deeper = HieraDet(
        embed_dim=32, num_heads=1, stages=(1, 1, 5, 1), global_blocks=(4,), pos_embed_window=56, pos_embed_global=None
    )
    with pytest.raises(CheckpointError, match="size mismatch"):
        load_backbone_checkpoint(deeper, str(out))


def test_architecture_mismatch_and_key_prefix(tmp_path, tiny_hiera):
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", depth=2)
    res = convert_state_dict({"model": vit.state_dict()})
    assert res.arch == "ViT" and res.size is None
    model = _mask_rcnn(pos_embed_window=56, pos_embed_global=None)
    vit_file = tmp_path / "vit.pth"
    torch.save(build_converted_checkpoint(res), vit_file)
    with pytest.raises(CheckpointError, match="holds ViT weights but the model's backbone is HieraDet"):
        HieraDetCheckpointer(model).load(str(vit_file))

    # backbone-relative keys (--prefix none) are moved to where the model's HieraDet sits
    _, src, _ = tiny_hiera
    rel = tmp_path / "relative.pth"
    assert convert_checkpoint.main([str(src), str(rel), "--prefix", "none", "--num-heads", "1"]) == 0
    assert "patch_embed.proj.weight" in torch.load(rel, weights_only=True)["model"]
    HieraDetCheckpointer(model).load(str(rel))
    expected = torch.load(rel, weights_only=True)["model"]["blocks.4.attn.qkv.weight"]
    assert torch.equal(model.backbone.bottom_up.blocks[4].attn.qkv.weight, expected)


def test_unreadable_files(tmp_path, tiny_hiera, capsys):
    _, src, _ = tiny_hiera
    data = src.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint_file(str(truncated))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_checkpoint_file(str(garbage))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_checkpoint_file(str(empty))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint_file(str(tmp_path / "nope.pth"))
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, pickled)  # MAE-style
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        load_checkpoint_file(str(pickled))
    assert "args" in load_checkpoint_file(str(pickled), allow_pickle=True)

    # so does the checkpointer (detectron2's own says "PytorchStreamReader failed ..." without the file name)
    with pytest.raises(CheckpointError, match=r"truncated\.pth .*truncated or corrupt"):
        HieraDetCheckpointer(_mask_rcnn(pos_embed_window=56, pos_embed_global=None)).load(str(truncated))

    # the tool reports it and fails
    assert convert_checkpoint.main([str(truncated), str(tmp_path / "o.pth")]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "truncated or corrupt" in err
    assert not (tmp_path / "o.pth").exists()


def test_unknown_and_unsupported_formats(tiny_hiera):
    src_sd, _, out = tiny_hiera
    with pytest.raises(CheckpointError, match="unknown checkpoint format") as e:
        detect_format({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)})
    assert all(f in str(e.value) for f in ("mae_vit", "sam2", "hivit"))  # lists what is supported
    with pytest.raises(CheckpointError, match="requested but the keys look like hiera"):
        convert_state_dict(src_sd, source="hivit")
    with pytest.raises(CheckpointError, match="already in hieradet's format"):
        convert_state_dict(torch.load(out, weights_only=True))
    with pytest.raises(CheckpointError, match="video Hiera"):
        detect_format({**src_sd, "pos_embed_spatial": torch.zeros(1, 4, 8)})
    with pytest.raises(CheckpointError, match="requested but the keys look like hiera"):
        convert_state_dict(src_sd, source="sam2")
    no_proj = {k: v for k, v in src_sd.items() if not k.startswith("blocks.1.proj.")}
    with pytest.raises(CheckpointError, match="use_expand_proj=False"):
        convert_state_dict(no_proj, num_heads=1)
    odd = dict(src_sd, **{"blocks.0.attn.q_norm.weight": torch.ones(32)})
    with pytest.raises(CheckpointError, match="no place in HieraDet"):
        convert_state_dict(odd, num_heads=1)
    res = convert_state_dict(odd, num_heads=1, strict=False)
    assert "blocks.0.attn.q_norm.weight" in res.dropped
    incomplete = {k: v for k, v in src_sd.items() if not k.startswith("blocks.3.mlp.")}
    with pytest.raises(CheckpointError, match="lacks 4 backbone weights"):
        convert_state_dict(incomplete, num_heads=1)


def test_mae_vit_into_vitdet_mask_rcnn(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", depth=2)  # 192 wide, 3 heads: MAE-style keys
    sd = {k: v for k, v in vit.state_dict().items() if not k.startswith("head.")}
    raw = tmp_path / "mae_vit_tiny.pth"
    torch.save({"model": sd}, raw)
    converted = tmp_path / "vit_tiny_converted.pth"
    assert convert_checkpoint.main([str(raw), str(converted)]) == 0
    file = torch.load(converted, weights_only=True)
    assert all(k.startswith("backbone.net.") for k in file["model"])

    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "common", "models", "mask_rcnn_vitdet.py")).model
    for k, v in dict(embed_dim=192, depth=2, num_heads=3, global_blocks=(1,), img_size=256, drop_path_rate=0.0).items():
        setattr(cfg.backbone.net, k, v)
    cfg.backbone.square_pad = 256
    model = instantiate(cfg)
    assert set(file["model"]) <= set(model.state_dict())
    grid = sd["pos_embed"][0, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    # the converted file, and the raw MAE file as detectron2's ViTDet configs name it (with matching heuristics)
    for path in (str(converted), f"{raw}?matching_heuristics=True"):
        with torch.no_grad():
            model.backbone.net.pos_embed.window_embed.zero_()
        HieraDetCheckpointer(model).load(path)
        assert torch.equal(model.backbone.net.pos_embed.window_embed, grid)
        assert torch.equal(model.backbone.net.blocks[1].attn.qkv.weight, sd["blocks.1.attn.qkv.weight"])
