"""A public checkpoint, end to end, with the stock configs and no layout overrides.

For each family a random-weight reference model is saved in its publisher's own file layout; then, from that raw
file and the matching stock COCO config, with only size / dataset shrinking overrides: the converted file loaded by
detectron2's plain ``DetectionCheckpointer`` (our path's exact backbone, or a CheckpointError naming
``apply_checkpoint_layout``), 2 training iterations through ``tools/lazyconfig_train_net.py``, ``--resume`` (one
more), ``--eval-only`` on ``model_final.pth`` and ``tools/predict.py`` on one image. The layout comes from the files
alone.

A family is one :class:`Family` entry: a builder that writes the publisher-format file, the stock config, and
the layout fields the run must end up with. To add one, write its builder and add an entry to ``FAMILIES``.
"""

import dataclasses
import os
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
from conftest import load_tool_module

from hieradet.checkpoint import (
    METADATA_KEY,
    CheckpointError,
    HieraDetCheckpointer,
    apply_checkpoint_layout,
    build_converted_checkpoint,
    convert_state_dict,
    load_checkpoint_file,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 128  # image size of every run


_load_tool = load_tool_module


# ----------------------------------------------------------------------------------------------
# publisher-format files (random weights; the zero-initialised embeddings get random values)


def official_hiera_t(path: str) -> None:
    """``hiera_tiny_224.pth`` as published by facebookresearch/hiera: ``{"model_state": ...}``, 56x56 grid."""
    hiera = pytest.importorskip("hiera")
    torch.manual_seed(0)
    model = hiera.hiera_tiny_224(pretrained=False)
    with torch.no_grad():
        model.pos_embed.normal_(std=0.02)
    torch.save({"model_state": model.state_dict()}, path)


def sam2_t_trunk():
    sam2_hieradet = pytest.importorskip("sam2.modeling.backbones.hieradet")
    torch.manual_seed(0)
    trunk = sam2_hieradet.Hiera(  # sam2.1_hiera_t.yaml
        embed_dim=96,
        num_heads=1,
        stages=(1, 2, 7, 2),
        global_att_blocks=(5, 7, 9),
        window_pos_embed_bkg_spatial_size=(7, 7),
    )
    with torch.no_grad():
        trunk.pos_embed.normal_(std=0.5)
        trunk.pos_embed_window.normal_(std=0.5)
    return trunk.eval()


def sam2_t(path: str) -> None:
    """A full ``sam2.1_hiera_tiny.pt``: ``{"model": {"image_encoder.trunk.*", neck, mask decoder, ...}}``."""
    full = {"image_encoder.trunk." + k: v for k, v in sam2_t_trunk().state_dict().items()}
    full["image_encoder.neck.convs.0.conv.weight"] = torch.randn(256, 768, 1, 1)
    full["sam_mask_decoder.iou_token.weight"] = torch.randn(1, 256)
    torch.save({"model": full}, path)


def mae_vit_b(path: str) -> None:
    """``mae_pretrain_vit_base.pth``: ``{"model": ...}`` with MAE's encoder keys (timm's names, no head)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    sd = timm.create_model("vit_base_patch16_224", pretrained=False).state_dict()
    torch.save({"model": {k: v for k, v in sd.items() if not k.startswith("head.")}}, path)


def timm_hiera_s_abswin(path: str) -> None:
    """timm's ``hiera_small_abswin_256`` as Hugging Face serves it: a bare state dict in ``model.safetensors``."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("hiera_small_abswin_256", pretrained=False)
    sd = model.state_dict()
    with torch.no_grad():  # zero / near-zero initialised: give them values a test can see
        for k, v in sd.items():
            if k.startswith("pos_embed") or k.endswith("gamma"):
                v.normal_(std=0.1 if k.endswith("gamma") else 0.5)
    save_file({k: v.contiguous() for k, v in sd.items()}, path)


def official_hivit_t(path: str) -> None:
    """An official HiViT-T classification file (github zhangxiaosong18/hivit): ``{"model": ...}``."""
    from test_hivit_convert import _official_state_dict

    torch.save({"model": _official_state_dict(dim=384, depths=(1, 1, 10), heads=6)}, path)


# ----------------------------------------------------------------------------------------------


# Fewer proposals, sampled RoIs and kept detections: at SIZE px the box and mask heads (1000 test proposals, 100
# masks per image) are most of a run's time, and nothing asserted here depends on how many there are.
HEADS = [
    "model.proposal_generator.post_nms_topk=[100,50]",
    "model.roi_heads.batch_size_per_image=64",
    "model.roi_heads.box_predictor.test_topk_per_image=10",
]


def _lsj(backbone: str) -> List[str]:
    """Shrinks the LSJ loader of configs/common/coco_loader_lsj.py (and the square padding) to SIZE px."""
    return [
        f"dataloader.train.mapper.augmentations.1.target_height={SIZE}",
        f"dataloader.train.mapper.augmentations.1.target_width={SIZE}",
        f"dataloader.train.mapper.augmentations.2.crop_size=[{SIZE},{SIZE}]",
        f"dataloader.test.mapper.augmentations.0.short_edge_length={SIZE}",
        f"dataloader.test.mapper.augmentations.0.max_size={SIZE}",
        f"model.backbone.{backbone}.img_size={SIZE}",
    ]


def _multiscale() -> List[str]:
    """Shrinks HiViT's multi-scale loader (projects/HiViT/configs/common/coco_multiscale.py) to SIZE px."""
    return [
        f"dataloader.train.mapper.augmentations.1.short_edge_length=[{SIZE}]",
        f"dataloader.train.mapper.augmentations.1.max_size={SIZE}",
        f"dataloader.test.mapper.augmentations.0.short_edge_length={SIZE}",
        f"dataloader.test.mapper.augmentations.0.max_size={SIZE}",
        f"model.backbone.bottom_up.img_size={SIZE}",
    ]


@dataclasses.dataclass
class Family:
    write: Callable[[str], None]  # writes the publisher-format file
    config: str  # the stock COCO config
    shrink: List[str]  # size-only overrides
    layout: Dict[str, object]  # what the run's backbone must end up with (from the file alone)
    # the converted file in plain DetectionCheckpointer: None = our exact backbone, else the fields its
    # CheckpointError must name; plain_door=False: checked elsewhere (SAM 2-T: at 512 px in the default suite)
    plain_refused: Optional[Tuple[str, ...]] = None
    plain_door: bool = True
    convert: Dict[str, object] = dataclasses.field(default_factory=dict)  # convert_state_dict's arguments
    file_name: str = "publisher_file.pth"


FAMILIES = {
    "official_hiera_t": Family(
        official_hiera_t,
        "configs/COCO/mask_rcnn_hieradet_t_100ep.py",
        _lsj("bottom_up"),
        dict(pos_embed="abswin", pos_embed_window=56, pos_embed_global=None, pretrain_img_size=224),
        plain_refused=("pos_embed_window=56",),
    ),
    "sam2_t": Family(
        sam2_t,
        "configs/COCO/mask_rcnn_hieradet_t_100ep.py",
        _lsj("bottom_up"),
        dict(pos_embed="abswin_single", pos_embed_window=8, pos_embed_global=7, pretrain_img_size=1024),
        plain_door=False,  # test_sam2_t_trunk_outputs_at_512_px_equal_sam2
    ),
    "mae_vit_b": Family(
        mae_vit_b,
        "configs/COCO/mask_rcnn_vitdet_b_100ep.py",
        _lsj("net"),
        dict(pos_embed="abswin", window_size=14, pretrain_img_size=224),
        convert=dict(num_heads=12),
    ),
    "timm_hiera_s_abswin": Family(
        timm_hiera_s_abswin,
        "configs/COCO/mask_rcnn_hieradet_s_100ep.py",
        _lsj("bottom_up"),
        dict(
            pos_embed="abswin",
            pos_embed_window=8,
            pos_embed_global=16,
            pos_embed_antialias=True,
            pretrain_img_size=256,
            window_size=[8, 4, 16, 8],
            expand_proj=False,
        ),
        plain_refused=("window_size=(8, 4, 16, 8)", "expand_proj=False"),
        file_name="model.safetensors",
    ),
    "official_hivit_t": Family(
        official_hivit_t,
        "projects/HiViT/configs/COCO/mask_rcnn_hivit_t_3x.py",
        _multiscale(),
        dict(pos_embed="abswin", window_size=14, pretrain_img_size=224),
        convert=dict(num_heads=6),
    ),
}


def _net(model):
    backbone = model.backbone
    return backbone.bottom_up if hasattr(backbone, "bottom_up") else backbone.net


def _convert(raw: str, tmp_path, **convert) -> str:
    """``raw`` converted as ``tools/convert_checkpoint.py`` converts it; the converted file's path."""
    path = str(tmp_path / "converted.pth")
    torch.save(build_converted_checkpoint(convert_state_dict(load_checkpoint_file(raw), **convert)), path)
    return path


def _plain_loader_door(family: Family, raw: str, tmp_path) -> None:
    """detectron2's own ``DetectionCheckpointer`` loads the converted file into the stock config (shrunk as the run
    is): our path's exact backbone, or a CheckpointError naming the conflict and ``apply_checkpoint_layout``."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate

    converted = _convert(raw, tmp_path, **family.convert)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(os.path.join(ROOT, family.config)), family.shrink)
    plain = instantiate(cfg.model)
    if family.plain_refused is not None:
        with pytest.raises(CheckpointError) as e:
            DetectionCheckpointer(plain).load(converted)
        assert "apply_checkpoint_layout(cfg, checkpoint)" in str(e.value), str(e.value)
        assert all(field in str(e.value) for field in family.plain_refused), str(e.value)
        return
    DetectionCheckpointer(plain).load(converted)
    ours = _stock(family.config, converted, family.shrink)
    assert _net(plain).pos_embed.mode == _net(ours).pos_embed.mode
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out_plain, out_ours = _net(plain.eval())(x), _net(ours)(x)
    assert sorted(out_plain) == sorted(out_ours) and all(torch.equal(out_plain[k], out_ours[k]) for k in out_ours)


def _run_family(family: Family, ds, tmp_path, capsys):
    train_net, predict = _load_tool("lazyconfig_train_net"), _load_tool("predict")
    raw = str(tmp_path / family.file_name)
    family.write(raw)
    if family.plain_door:
        _plain_loader_door(family, raw, tmp_path)  # 0. detectron2's own checkpointer, given the converted file
    out = str(tmp_path / "out")
    data = (
        [
            f"dataloader.train.dataset.names={ds.train_name}",
            f"dataloader.test.dataset.names={ds.val_name}",
            f"dataloader.evaluator.dataset_name={ds.val_name}",
            f"dataloader.evaluator.output_dir={tmp_path / 'eval'}",
            "dataloader.train.total_batch_size=2",
            "dataloader.train.num_workers=0",
            "dataloader.test.num_workers=0",
            f"model.roi_heads.num_classes={ds.num_classes}",
            "train.device=cpu",
            f"train.output_dir={out}",
        ]
        + family.shrink
        + HEADS
    )

    def tool(*options, overrides):
        args = train_net.build_parser().parse_args(["--config-file", os.path.join(ROOT, family.config), *options])
        args.opts = data + overrides
        return train_net.main(args)

    # 1. fine-tune from the raw public file: the layout comes from it
    tool(overrides=[f"train.init_checkpoint={raw}", "train.max_iter=2"])
    printed = capsys.readouterr().out
    assert "[checkpoint layout]" in printed and "'auto' -> " in printed
    final = os.path.join(out, "model_final.pth")
    meta = torch.load(final, weights_only=True)[METADATA_KEY]
    assert meta["kind"] == "trained"
    for field, value in family.layout.items():
        assert meta["layout"][field] == value, (field, meta["layout"])
    assert meta["layout"]["img_size"] == SIZE

    # 2. --resume: the last checkpoint's recorded layout wins (the raw file stays the init checkpoint)
    tool("--resume", overrides=[f"train.init_checkpoint={raw}", "train.max_iter=3"])
    printed = capsys.readouterr().out
    assert f"'auto' -> {family.layout['pos_embed']!r} (the mode it was trained in, from model_final.pth)" in printed
    assert torch.load(final, weights_only=True)["iteration"] == 2  # iterations 0, 1, 2

    # 3. --eval-only on model_final.pth
    results = tool("--eval-only", overrides=[f"train.init_checkpoint={final}"])
    assert "bbox" in results  # (an untrained model may have no masks to score)

    # 4. tools/predict.py on one image
    from detectron2.data import DatasetCatalog

    image = DatasetCatalog.get(ds.val_name)[0]["file_name"]
    shown = predict.main(
        ["--config-file", os.path.join(ROOT, family.config), "--checkpoint", final, "--input", image]
        + ["--output", str(tmp_path / "vis"), "--confidence-threshold", "0.0"]
        + [o for o in family.shrink if o.startswith("dataloader.test") or ".img_size=" in o]
        + HEADS
        + [f"model.roi_heads.num_classes={ds.num_classes}"]
    )
    assert len(shown) == 1 and os.path.isfile(shown[0]["output"])
    return meta


def test_official_hiera_t_end_to_end(synthetic_coco, tmp_path, capsys):
    _run_family(FAMILIES["official_hiera_t"], synthetic_coco, tmp_path, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sam2_t", "mae_vit_b", "official_hivit_t", "timm_hiera_s_abswin"])
def test_public_checkpoint_end_to_end(name, synthetic_coco, tmp_path, capsys):
    _run_family(FAMILIES[name], synthetic_coco, tmp_path, capsys)


# ----------------------------------------------------------------------------------------------
# equivalence right after loading the raw file into the stock config


def _stock(config: str, raw: str, overrides: List[str] = ()):
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.apply_overrides(LazyConfig.load(os.path.join(ROOT, config)), list(overrides))
    apply_checkpoint_layout(cfg, raw, log=lambda _: None)
    model = instantiate(cfg.model).eval()
    HieraDetCheckpointer(model).load(raw)
    return model


def test_sam2_t_trunk_outputs_at_512_px_equal_sam2(tmp_path):
    """Our path from the raw file, and detectron2's plain ``DetectionCheckpointer`` given the converted file (the
    record in the weights switches the stock config's ``"auto"`` to ``abswin_single``), both give SAM 2's trunk."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate

    config = "configs/COCO/mask_rcnn_hieradet_t_100ep.py"
    raw = str(tmp_path / "sam2.1_hiera_tiny.pt")
    sam2_t(raw)
    backbone = _stock(config, raw).backbone.bottom_up
    rel = [p for n, p in backbone.named_parameters() if "rel_pos" in n]
    assert rel and all(torch.count_nonzero(p) == 0 for p in rel)  # new tables start at zero
    plain = instantiate(LazyConfig.load(os.path.join(ROOT, config)).model).eval()
    DetectionCheckpointer(plain).load(_convert(raw, tmp_path))
    assert plain.backbone.bottom_up.pos_embed.mode == backbone.pos_embed.mode == "abswin_single"
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        ref, ours, theirs = sam2_t_trunk()(x), backbone(x), plain.backbone.bottom_up(x)
    for ref_nchw, name in zip(ref, ["scale2", "scale3", "scale4", "scale5"]):
        torch.testing.assert_close(ours[name], ref_nchw, rtol=0, atol=1e-4)
        assert torch.equal(theirs[name], ours[name]), name


def test_official_hiera_t_every_56x56_tile_is_the_pretrained_grid(tmp_path):
    raw = str(tmp_path / "hiera_tiny_224.pth")
    official_hiera_t(raw)
    backbone = _stock("configs/COCO/mask_rcnn_hieradet_t_100ep.py", raw).backbone.bottom_up
    grid = torch.load(raw, weights_only=True)["model_state"]["pos_embed"].reshape(56, 56, 96)
    with torch.no_grad():
        embed = backbone.pos_embed((128, 128))[0]  # the stride-4 map of a 512 px image
    for top in range(0, 128, 56):
        for left in range(0, 128, 56):
            tile = embed[top : top + 56, left : left + 56]
            torch.testing.assert_close(tile, grid[: tile.shape[0], : tile.shape[1]], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# bad cases: a clear error, and nothing written


def test_bad_files_fail_before_anything_is_written(synthetic_coco, tmp_path):
    train_net = _load_tool("lazyconfig_train_net")
    raw = str(tmp_path / "hiera_tiny_224.pth")
    official_hiera_t(raw)
    with open(raw, "rb") as f:
        data = f.read()
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    base = [
        f"dataloader.train.dataset.names={synthetic_coco.train_name}",
        f"dataloader.test.dataset.names={synthetic_coco.val_name}",
        "train.device=cpu",
        f"train.output_dir={out}",
    ]

    def run(config, *overrides):
        args = train_net.build_parser().parse_args(["--config-file", os.path.join(ROOT, config)])
        args.opts = base + list(overrides)
        return train_net.main(args)

    # a wrong-size checkpoint: Hiera-T weights for the stock Hiera-B config
    with pytest.raises(CheckpointError, match=r"size mismatch: .*HieraDet-T .* config builds HieraDet"):
        run("configs/COCO/mask_rcnn_hieradet_b_100ep.py", f"train.init_checkpoint={raw}")
    # a damaged file
    with pytest.raises(CheckpointError, match=r"damaged\.pth.*truncated or corrupt"):
        run("configs/COCO/mask_rcnn_hieradet_t_100ep.py", f"train.init_checkpoint={damaged}")
    # a layout conflict: a mode the config names against a trained file's
    trained = tmp_path / "trained"
    trained.mkdir()
    cfg = _stock_cfg("configs/COCO/mask_rcnn_hieradet_t_100ep.py", raw)
    from detectron2.config import instantiate

    HieraDetCheckpointer(instantiate(cfg.model), str(trained)).save("model_final")
    with pytest.raises(CheckpointError, match=r"trained with pos_embed='abswin'.*names pos_embed='interpolate'"):
        run(
            "configs/COCO/mask_rcnn_hieradet_t_100ep.py",
            f"train.init_checkpoint={trained / 'model_final.pth'}",
            "model.backbone.bottom_up.pos_embed=interpolate",
        )
    assert not [p for p in out.rglob("*.pth")] and not (out / "last_checkpoint").exists()


def _stock_cfg(config: str, raw: str):
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(os.path.join(ROOT, config))
    return apply_checkpoint_layout(cfg, raw, log=lambda _: None)
