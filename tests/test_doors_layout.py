"""Every loader gets the model our own path builds, or a clear error: the layout record travels inside the state dict
(tiny random models, no downloads). "Our path" is apply_checkpoint_layout on the config, then HieraDetCheckpointer."""

import logging

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from omegaconf import OmegaConf

from hieradet.checkpoint import (
    METADATA_KEY,
    CheckpointError,
    HieraDetCheckpointer,
    apply_checkpoint_layout,
    build_converted_checkpoint,
    convert_state_dict,
    read_checkpoint_layout,
)
from hieradet.modeling import HieraDet
from hieradet.modeling.layout_record import (
    LAYOUT_VERSION,
    RECORD_BYTES,
    decode_record,
    encode_record,
    strip_layout_records,
)
from hieradet.testing import tiny_mask_rcnn

TINY = dict(embed_dim=32, num_heads=1, stages=(1, 1, 4, 1), global_blocks=(3, 4, 5))  # SAM 2 cannot pool a global block
X = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _cfg(backbone="hieradet", **bb):
    cfg = OmegaConf.create()
    kw = dict(TINY, pos_embed="auto") if backbone == "hieradet" else dict(pos_embed="auto")
    kw.update(bb)
    cfg.model = tiny_mask_rcnn(backbone, img_size=128, **kw)
    return cfg


def _net(model):
    bb = model.backbone
    return bb.bottom_up if hasattr(bb, "bottom_up") else bb.net


@torch.no_grad()
def _features(model):
    model.eval()
    out = _net(model)(X)
    return out[sorted(out)[-1]]


def _ours(path, cfg=None):
    cfg = cfg or _cfg()
    apply_checkpoint_layout(cfg, path, log=lambda line: None)
    model = instantiate(cfg.model)
    HieraDetCheckpointer(model).load(path)
    return model


def _plain(path, cfg=None):
    model = instantiate((cfg or _cfg()).model)
    DetectionCheckpointer(model).load(path)
    return model


@pytest.fixture(scope="module")
def sam2(tmp_path_factory):
    """A converted SAM 2 file of a tiny trunk and the trunk itself."""
    sam2_hieradet = pytest.importorskip("sam2.modeling.backbones.hieradet")
    torch.manual_seed(0)
    trunk = sam2_hieradet.Hiera(
        embed_dim=32, num_heads=1, stages=(1, 1, 4, 1), global_att_blocks=(3, 4, 5),
        window_spec=(8, 4, 14, 7), window_pos_embed_bkg_spatial_size=(7, 7),
    ).eval()  # fmt: skip
    with torch.no_grad():  # SAM 2 initialises its embeddings at zero: make them matter
        trunk.pos_embed.normal_()
        trunk.pos_embed_window.normal_()
    folder = tmp_path_factory.mktemp("doors")
    raw = {"model": {"image_encoder.trunk." + k: v for k, v in trunk.state_dict().items()}}
    torch.save(build_converted_checkpoint(convert_state_dict(raw)), folder / "sam2_tiny.pth")
    torch.save(build_converted_checkpoint(convert_state_dict(raw, pos_embed="interpolate")), folder / "interp.pth")
    return trunk, str(folder / "sam2_tiny.pth"), str(folder / "interp.pth")


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A converted official Hiera file (its full 56x56 grid)."""
    hiera = pytest.importorskip("hiera")
    torch.manual_seed(0)
    ref = hiera.Hiera(embed_dim=32, num_heads=1, stages=(1, 1, 4, 1))
    path = tmp_path_factory.mktemp("doors") / "hiera_tiny_converted.pth"
    torch.save(build_converted_checkpoint(convert_state_dict({"model_state": ref.state_dict()}, num_heads=1)), path)
    return str(path)


def test_plain_detectron2_checkpointer_gives_our_model_for_a_converted_sam2_file(sam2):
    trunk, path, _ = sam2
    plain, ours = _plain(path), _ours(path)
    assert _net(plain).pos_embed.mode == _net(ours).pos_embed.mode == "abswin_single"
    assert _net(plain).pos_embed.pretrain_size == _net(ours).pos_embed.pretrain_size == (256, 256)  # 1024 px
    with torch.no_grad():
        reference = trunk(X)[-1]
    assert torch.equal(_features(plain), _features(ours))
    torch.testing.assert_close(_features(plain), reference, rtol=0, atol=1e-5)
    # model.load_state_dict is a loader too
    model = instantiate(_cfg().model)
    model.load_state_dict(torch.load(path, weights_only=True)["model"], strict=False)
    assert torch.equal(_features(model), _features(ours))


def test_a_file_converted_as_the_bugged_baseline_runs_as_one(sam2):
    _, _, interp = sam2
    plain, ours = _plain(interp), _ours(interp)
    assert _net(plain).pos_embed.mode == _net(ours).pos_embed.mode == "interpolate"
    assert torch.equal(_features(plain), _features(ours))


def test_an_embedding_that_cannot_fit_stops_every_loader(official):
    model = instantiate(_cfg().model)  # 8x8 + 7x7 slots; the file has a 56x56 grid
    before = _net(model).pos_embed.window_embed.clone()
    # detectron2 drops the mismatched weight before load_state_dict: the record still says what it was
    with pytest.raises(CheckpointError, match=r"pos_embed_window=56.*apply_checkpoint_layout\(cfg, checkpoint\)"):
        DetectionCheckpointer(model).load(official)
    with pytest.raises(CheckpointError, match=r"pos_embed_global=None, pos_embed_window=56"):
        model.load_state_dict(torch.load(official, weights_only=True)["model"], strict=False)
    assert torch.equal(_net(model).pos_embed.window_embed, before)
    # built the way the error says, every loader agrees
    plain = _plain(official, apply_checkpoint_layout(_cfg(), official, log=lambda line: None))
    assert torch.equal(_features(plain), _features(_ours(official)))


def test_a_training_checkpoint_binds_its_mode_in_any_loader(sam2, tmp_path):
    _, path, _ = sam2
    trained = _ours(path)
    HieraDetCheckpointer(trained, str(tmp_path)).save("model_final")  # what our training loop writes
    DetectionCheckpointer(trained, str(tmp_path)).save("d2_final")  # what detectron2's own tools write
    for name in ("model_final.pth", "d2_final.pth"):
        final = str(tmp_path / name)
        record = read_checkpoint_layout(final)
        assert record["kind"] == "trained" and record["layout"]["pos_embed"] == "abswin_single"
        assert torch.equal(_features(_plain(final)), _features(trained))  # pos_embed="auto" takes its mode
        assert torch.equal(_features(_ours(final)), _features(trained))
        with pytest.raises(CheckpointError, match=r"trained with .*pos_embed='abswin_single'.*pos_embed='interpolate'"):
            _plain(final, _cfg(pos_embed="interpolate"))
        with pytest.raises(CheckpointError, match="layout conflict"):  # our path refuses it before building
            apply_checkpoint_layout(_cfg(pos_embed="abswin"), final)


def test_files_without_a_record_load_through_our_tools_and_stop_an_auto_model(sam2, tmp_path):
    _, path, _ = sam2
    legacy = torch.load(path, weights_only=True)
    legacy["model"] = strip_layout_records(legacy["model"])  # a file converted before layout version 3
    legacy[METADATA_KEY]["version"] = 2
    old = str(tmp_path / "legacy.pth")
    torch.save(legacy, old)
    assert torch.equal(_features(_ours(old)), _features(_ours(path)))  # our tools read the metadata
    with pytest.raises(CheckpointError, match=r"carry no layout_record.*HieraDetCheckpointer"):
        _plain(old)
    with pytest.raises(CheckpointError, match="carry no layout_record"):
        instantiate(_cfg().model).load_state_dict(legacy["model"], strict=False)


def test_an_explicit_mode_without_a_record_loads_with_a_warning(caplog):
    src = HieraDet(**TINY, pos_embed="abswin")
    dst = HieraDet(**TINY, pos_embed="interpolate")
    # the handler goes on the logger itself: an earlier test's detectron2 setup_logger("hieradet") stops propagation
    log = logging.getLogger("hieradet.modeling.layout_record")
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="hieradet.modeling.layout_record"):
            dst.load_state_dict(strip_layout_records(src.state_dict()))  # strict: the record is not "missing"
    finally:
        log.removeHandler(caplog.handler)
    assert "carry no layout_record" in caplog.text and "pos_embed='interpolate'" in caplog.text
    assert torch.equal(dst.pos_embed.window_embed, src.pos_embed.window_embed)
    assert dst.pos_embed.mode == "interpolate"


def test_vit_and_hivit_carry_the_record_too(tmp_path):
    vision_transformer = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(0)
    mae = vision_transformer.VisionTransformer(img_size=224, patch_size=16, embed_dim=32, depth=2, num_heads=2)
    result = convert_state_dict({"model": mae.state_dict()}, num_heads=2)
    path = str(tmp_path / "mae_vit_tiny.pth")
    torch.save(build_converted_checkpoint(result), path)
    cfg = lambda **kw: _cfg("vit", **kw)  # noqa: E731
    assert torch.equal(_features(_plain(path, cfg())), _features(_ours(path, cfg())))
    with pytest.raises(CheckpointError, match=r"pretrain_img_size=224.*pretrain_img_size=256"):
        _plain(path, cfg(pretrain_img_size=256, window_size=16))  # a 16x16 slot for the 14x14 grid
    # HiViT: a training checkpoint, loaded by plain detectron2 into another mode, or into another family
    hivit = instantiate(_cfg("hivit", pos_embed="interpolate").model)
    DetectionCheckpointer(hivit, str(tmp_path)).save("hivit_final")
    final = str(tmp_path / "hivit_final.pth")
    assert torch.equal(_features(_plain(final, _cfg("hivit"))), _features(hivit))
    assert _net(_plain(final, _cfg("hivit"))).pos_embed.mode == "interpolate"
    with pytest.raises(CheckpointError, match=r"holds HiViT weights at 'backbone.bottom_up'.*is a HieraDet"):
        _plain(final, _cfg())


def test_size_mismatch_and_damaged_or_newer_records_are_named():
    small, wide = HieraDet(**TINY), HieraDet(**dict(TINY, embed_dim=48))
    with pytest.raises(CheckpointError, match=r"size mismatch.*embed_dim=48.*embed_dim=32"):
        small.load_state_dict(wide.state_dict(), strict=False)
    sd = small.state_dict()
    record = decode_record(sd["layout_record"])
    assert record["version"] == LAYOUT_VERSION and sd["layout_record"].shape == (RECORD_BYTES,)
    with pytest.raises(CheckpointError, match="newer than this hieradet's"):
        small.load_state_dict(dict(sd, layout_record=encode_record(dict(record, version=LAYOUT_VERSION + 1))))
    damaged = sd["layout_record"].clone()
    damaged[0] = 0xFF
    with pytest.raises(CheckpointError, match="layout_record is damaged"):
        small.load_state_dict(dict(sd, layout_record=damaged))
    with pytest.raises(ValueError, match="does not fit the 1024-byte buffer"):
        encode_record({"layout": "x" * RECORD_BYTES})


def test_our_checkpointer_refuses_a_bare_state_dict_of_another_family(tmp_path):
    """A ``torch.save(model.state_dict())`` of a ViT detector, loaded into a HieraDet model by our checkpointer:
    no metadata, no record where the model has its backbone; the ViT's record names the family instead of every
    backbone weight being reported missing and the backbone left at random."""
    torch.manual_seed(0)
    vit = instantiate(_cfg("vit", pos_embed="abswin").model)
    path = str(tmp_path / "vit_state_dict.pth")
    torch.save(vit.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"holds ViT weights but the model's backbone is HieraDet"):
        HieraDetCheckpointer(instantiate(_cfg(pos_embed="abswin").model)).load(path)
    # the same file into a ViT model loads exactly
    other = instantiate(_cfg("vit", pos_embed="abswin").model)
    HieraDetCheckpointer(other).load(path)
    assert torch.equal(_features(other), _features(vit))
