"""The layout record: files the project writes carry it, ``apply_checkpoint_layout`` sets it on a config, and a
model built with another layout refuses the weights (tiny random models, no downloads)."""

import pytest
import torch
from detectron2.config import instantiate

from hieradet.checkpoint import (
    METADATA_KEY,
    CheckpointError,
    HieraDetCheckpointer,
    apply_checkpoint_layout,
    build_converted_checkpoint,
    convert_state_dict,
    read_checkpoint_layout,
)
from hieradet.checkpoint.layout import LAYOUT_VERSION
from hieradet.modeling.layout_record import strip_layout_records
from hieradet.testing import tiny_mask_rcnn

hiera = pytest.importorskip("hiera")

TINY = dict(embed_dim=32, num_heads=1, stages=(1, 1, 3, 1), global_blocks=(2, 3, 4))


def _cfg(backbone="hieradet", **bb):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create()
    kw = dict(TINY, pos_embed="auto") if backbone == "hieradet" else dict(pos_embed="auto")
    kw.update(bb)
    cfg.model = tiny_mask_rcnn(backbone, img_size=128, **kw)
    return cfg


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    torch.manual_seed(0)
    ref = hiera.Hiera(embed_dim=32, num_heads=1, stages=(1, 1, 3, 1))
    path = tmp_path_factory.mktemp("layout") / "hiera_tiny_224.pth"
    torch.save({"model_state": ref.state_dict()}, path)  # as the published files
    return str(path)


def _sam2_file(tmp_path, window_spec=(8, 4, 14, 7)):
    sam2_hieradet = pytest.importorskip("sam2.modeling.backbones.hieradet")
    torch.manual_seed(0)
    trunk = sam2_hieradet.Hiera(
        embed_dim=32,
        num_heads=1,
        stages=(1, 1, 3, 1),
        global_att_blocks=(2, 3, 4),
        window_spec=window_spec,
        window_pos_embed_bkg_spatial_size=(7, 7),
    )
    path = tmp_path / "sam2_tiny.pt"
    torch.save({"model": {"image_encoder.trunk." + k: v for k, v in trunk.state_dict().items()}}, path)
    return str(path)


def test_raw_official_hiera_sets_the_full_grid_and_natural_mode(official):
    cfg, lines = _cfg(), []
    apply_checkpoint_layout(cfg, official, log=lines.append)
    bu = cfg.model.backbone.bottom_up
    assert (bu.pos_embed, bu.pos_embed_window, bu.pos_embed_global) == ("abswin", 56, None)
    # one line per changed field, each naming it
    assert len(lines) == 3, lines
    assert any("pos_embed_window: 8 -> 56" in x for x in lines) and any(
        "pos_embed_global: 7 -> None" in x for x in lines
    )
    assert any("pos_embed: 'auto' -> 'abswin' (the checkpoint's natural mode" in x for x in lines)
    model = instantiate(cfg.model)
    HieraDetCheckpointer(model).load(official)
    ref = torch.load(official, weights_only=True)["model_state"]["pos_embed"].reshape(1, 56, 56, 32)
    assert torch.equal(model.backbone.bottom_up.pos_embed.window_embed, ref.permute(0, 3, 1, 2))
    # applying again changes nothing
    again = []
    apply_checkpoint_layout(cfg, official, log=again.append)
    assert again == []


def test_sam2_gets_its_one_level_mode_and_windows_and_a_plain_config_refuses_it(tmp_path):
    path = _sam2_file(tmp_path)
    record = read_checkpoint_layout(path)
    assert record["kind"] == "converted" and record["layout"]["pos_embed"] == "abswin_single"
    assert record["layout"]["pretrain_img_size"] == 1024
    # the weights fit the config's shapes: without the layout they would load and run the wrong embedding
    plain = instantiate(_cfg(pos_embed="abswin").model)
    with pytest.raises(CheckpointError, match=r"layout conflict at 'backbone.bottom_up'.*pretrain_img_size=1024"):
        HieraDetCheckpointer(plain).load(path)
    cfg, lines = _cfg(), []
    apply_checkpoint_layout(cfg, path, log=lines.append)
    bu = cfg.model.backbone.bottom_up
    assert bu.pos_embed == "abswin_single" and bu.pretrain_img_size == 1024
    HieraDetCheckpointer(instantiate(cfg.model)).load(path)


def test_a_mode_named_by_the_config_is_kept_and_said(official):
    cfg, lines = _cfg(pos_embed="interpolate"), []
    apply_checkpoint_layout(cfg, official, log=lines.append)
    assert cfg.model.backbone.bottom_up.pos_embed == "interpolate"
    assert any(
        "keeping 'interpolate', named by the config (the checkpoint's natural mode is 'abswin')" in x for x in lines
    )
    HieraDetCheckpointer(instantiate(cfg.model)).load(official)  # a converted file's mode is a default


def test_training_checkpoints_record_the_layout_and_it_binds(official, tmp_path):
    cfg = _cfg()
    apply_checkpoint_layout(cfg, official, log=lambda _: None)
    model = instantiate(cfg.model)
    HieraDetCheckpointer(model, str(tmp_path)).save("model_final", iteration=1)
    meta = torch.load(tmp_path / "model_final.pth", weights_only=True)[METADATA_KEY]
    assert meta["kind"] == "trained" and meta["arch"] == "HieraDet" and meta["prefix"] == "backbone.bottom_up."
    assert meta["architecture"] == {"embed_dim": 32, "stages": [1, 1, 3, 1]}
    assert meta["layout"]["pos_embed_window"] == 56 and meta["layout"]["global_blocks"] == [2, 3, 4]

    assert meta["layout"]["img_size"] == 128  # it sizes the global blocks' relative position tables

    # the stock-style config (auto) becomes exactly the trained model
    fresh, lines = _cfg(), []
    fresh.model.backbone.bottom_up.img_size = 256
    apply_checkpoint_layout(fresh, str(tmp_path / "model_final.pth"), log=lines.append)
    assert any("'auto' -> 'abswin' (the mode it was trained in" in x for x in lines)
    assert any("img_size: 256 -> 128" in x for x in lines)
    HieraDetCheckpointer(instantiate(fresh.model)).load(str(tmp_path / "model_final.pth"))

    # a trained mode is binding: another named mode is refused before building, and at load time
    with pytest.raises(CheckpointError, match=r"trained with pos_embed='abswin'.*names pos_embed='interpolate'"):
        apply_checkpoint_layout(_cfg(pos_embed="interpolate"), str(tmp_path / "model_final.pth"))
    other = instantiate(_cfg(pos_embed="interpolate", pos_embed_window=56, pos_embed_global=None).model)
    with pytest.raises(CheckpointError, match=r"trained with pos_embed='abswin'.*built with pos_embed='interpolate'"):
        HieraDetCheckpointer(other).load(str(tmp_path / "model_final.pth"))


def test_wrong_size_and_wrong_architecture_are_refused_before_building(official):
    with pytest.raises(
        CheckpointError, match=r"size mismatch.*HieraDet-custom \(embed_dim=32, stages=\(1, 1, 3, 1\)\)"
    ):
        apply_checkpoint_layout(_cfg(embed_dim=48), official)
    with pytest.raises(CheckpointError, match=r"holds HieraDet weights.*ViT at model.backbone.net"):
        apply_checkpoint_layout(_cfg("vit"), official)


def test_converted_files_carry_the_record(official, tmp_path):
    result = convert_state_dict(torch.load(official, weights_only=True), num_heads=1)
    meta = build_converted_checkpoint(result)[METADATA_KEY]
    assert meta["version"] == LAYOUT_VERSION == 3 and meta["kind"] == "converted"
    assert meta["layout"] == {
        "pretrain_img_size": 224,
        "pos_embed": "abswin",
        "pos_embed_window": 56,
        "pos_embed_global": None,
        "pos_embed_antialias": False,
        "window_size": [8, 4, 14, 7],
    }
    # a version-1 file (metadata without a layout) is read from its embed_kwargs
    old = dict(meta, version=1)
    old.pop("layout"), old.pop("architecture"), old.pop("kind")
    torch.save({"model": {}, METADATA_KEY: old}, tmp_path / "v1.pth")
    torch.save({"model": {"backbone.bottom_up.x": torch.zeros(1)}, METADATA_KEY: old}, tmp_path / "v1.pth")
    assert read_checkpoint_layout(str(tmp_path / "v1.pth"))["layout"] == meta["layout"]


def test_a_detectron2_file_without_a_record_keeps_the_config(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    model = instantiate(_cfg().model)
    DetectionCheckpointer(model, str(tmp_path)).save("plain")
    plain = torch.load(tmp_path / "plain.pth", weights_only=False)
    torch.save(dict(plain, model=strip_layout_records(plain["model"])), tmp_path / "plain.pth")  # as before v3
    cfg, lines = _cfg(), []
    apply_checkpoint_layout(cfg, str(tmp_path / "plain.pth"), log=lines.append)
    assert len(lines) == 1 and "has no layout record" in lines[0]
    assert cfg.model.backbone.bottom_up.pos_embed == "auto"
