"""Sparse MAE pretraining (hieradet.pretrain): sparse = dense, masking isolation, learning, the backbone file
loading into the stock detection config, resume, and clear errors on bad input."""

import os

import pytest
import torch

from hieradet.checkpoint import CheckpointError, HieraDetCheckpointer, load_backbone_checkpoint
from hieradet.modeling import HieraDet
from hieradet.modeling.layout_record import strip_layout_records
from hieradet.pretrain import (
    HieraMAE,
    backbone_checkpoint,
    pretrain_encoder_kwargs,
    random_unit_mask,
    units_to_grid,
)
from hieradet.pretrain.data import ImageFolderDataset, list_images
from hieradet.pretrain.engine import pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(embed_dim=16, num_heads=1, stages=(1, 2, 2, 1))


def tiny_mae(img_size=64, pos_embed_type="abswin", mask_ratio=0.5, **kw):
    torch.manual_seed(0)
    enc = HieraDet(**pretrain_encoder_kwargs(None, img_size, pos_embed_type, **TINY))
    return HieraMAE(
        enc, img_size=img_size, mask_ratio=mask_ratio, decoder_dim=32, decoder_depth=1, decoder_heads=2, **kw
    )


@pytest.mark.parametrize("pos_embed_type", ["abswin", "interpolate"])
def test_mask_ratio_zero_sparse_equals_dense(pos_embed_type):
    mae = tiny_mae(96, pos_embed_type, mask_ratio=0.0).eval()
    x = torch.randn(2, 3, 96, 96)
    mask = random_unit_mask(2, 9, 0.0)
    assert bool(mask.all())
    with torch.no_grad():
        sparse, idx = mae.encode(x, mask)
        dense = mae.encoder(x)
    assert idx.tolist() == [list(range(9))] * 2
    for feat, (name, ref) in zip(sparse, dense.items()):
        grid = units_to_grid(feat, (3, 3)).permute(0, 3, 1, 2)
        assert grid.shape == ref.shape, name
        torch.testing.assert_close(grid, ref, atol=1e-5, rtol=1e-5)


def test_deleted_units_never_influence_kept_tokens():
    mae = tiny_mae(96).eval()
    x = torch.randn(2, 3, 96, 96)
    mask = random_unit_mask(2, 9, 0.6, generator=torch.Generator().manual_seed(1))
    pix = mask.view(2, 1, 3, 1, 3, 1).expand(-1, 3, -1, 32, -1, 32).reshape(2, 3, 96, 96)
    y = torch.where(pix, x, torch.randn_like(x) * 5)  # change every deleted pixel
    with torch.no_grad():
        a, _ = mae.encode(x, mask)
        b, _ = mae.encode(y, mask)
        for fa, fb in zip(a, b):
            assert torch.equal(fa, fb)
        # the control: without deleting, the stem convolution and attention do see the change
        da, db = mae.encoder(x), mae.encoder(y)
        unit0 = int(torch.nonzero(mask[0])[0])
        r, c = divmod(unit0, 3)
        dense_unit_a = da["scale2"][0, :, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8]
        dense_unit_b = db["scale2"][0, :, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8]
        assert not torch.equal(dense_unit_a, dense_unit_b)


def test_loss_only_on_deleted_units_and_decreases():
    mae = tiny_mae(64)
    x = torch.randn(4, 3, 64, 64)
    mask = random_unit_mask(4, 4, 0.5, generator=torch.Generator().manual_seed(0))
    out = mae(x, mask=mask)
    assert out["pred"].shape == (4, 4, 4, 16 * 16 * 3)  # stage-3 resolution: one 16-px patch per token
    # the loss ignores the prediction on kept units
    pred = out["pred"].detach().clone()
    kept = mask.view(4, 2, 1, 2, 1).expand(-1, -1, 2, -1, 2).reshape(4, 4, 4)
    target = mae.targets(x)
    err = (pred - target).pow(2).mean(-1)
    torch.testing.assert_close(out["loss"].detach(), err[~kept].mean())
    opt = torch.optim.AdamW(mae.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        loss = mae(x, mask=mask)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses


def test_backbone_file_loads_into_stock_detection_config(tmp_path):
    from detectron2.config import LazyConfig, instantiate

    torch.manual_seed(0)
    # "interpolate" (the full grid) was called "original" before: both names give the same encoder
    assert pretrain_encoder_kwargs("T", 224, "original") == pretrain_encoder_kwargs("T", 224, "interpolate")
    enc = HieraDet(**pretrain_encoder_kwargs("T", 224, "interpolate"))
    ck = backbone_checkpoint(enc, 224, extra={"iteration": 0})
    meta = ck["__hieradet__"]
    assert meta["embed_kwargs"]["pos_embed_window"] == 56 and meta["embed_kwargs"]["pos_embed_global"] is None
    assert meta["size"] == "T" and meta["prefix"] == "backbone.bottom_up."
    path = str(tmp_path / "mae_t.pth")
    torch.save(ck, path)

    cfg = LazyConfig.load(os.path.join(ROOT, "configs/COCO/mask_rcnn_hieradet_t_100ep.py"))
    # the stock config is built for abs-win (8x8 + 7x7): a full-grid file is refused, naming the fix
    model = instantiate(cfg.model).eval()
    with pytest.raises(CheckpointError, match="pos_embed_window=56"):
        HieraDetCheckpointer(model).load(path)
    # set the layout from the metadata (hieradet.checkpoint.apply_checkpoint_layout does this once it lands)
    for k, v in meta["embed_kwargs"].items():
        setattr(cfg.model.backbone.bottom_up, k, v)
    model = instantiate(cfg.model).eval()
    HieraDetCheckpointer(model).load(path)
    loaded = model.backbone.bottom_up.state_dict()
    for k, v in strip_layout_records(enc.state_dict()).items():  # the record describes each model
        assert torch.equal(loaded[k], v), k
    # the detection model tiles the 56x56 pretraining grid (recursive abs-win)
    with torch.no_grad():
        full = model.backbone.bottom_up.pos_embed((112, 112))
    torch.testing.assert_close(full[:, 56:, 56:], full[:, :56, :56])


def test_abswin_backbone_fits_stock_config_and_other_size_is_refused(tmp_path):
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(os.path.join(ROOT, "configs/COCO/mask_rcnn_hieradet_t_100ep.py"))
    model = instantiate(cfg.model)
    # an abs-win file at 224 px (8x8 window + 7x7 global) fits the stock config unchanged
    enc_t = HieraDet(**pretrain_encoder_kwargs("T", 224, "abswin"))
    path_t = str(tmp_path / "mae_t.pth")
    torch.save(backbone_checkpoint(enc_t, 224), path_t)
    HieraDetCheckpointer(model).load(path_t)
    got = model.backbone.bottom_up.state_dict()
    assert all(torch.equal(got[k], v) for k, v in strip_layout_records(enc_t.state_dict()).items())
    # a file of another size is refused
    enc = HieraDet(**pretrain_encoder_kwargs("S", 224, "abswin"))
    ck = backbone_checkpoint(enc, 224)
    assert ck["__hieradet__"]["embed_kwargs"]["pos_embed_window"] == 8
    assert ck["__hieradet__"]["embed_kwargs"]["pos_embed_global"] == 7
    path = str(tmp_path / "mae_s.pth")
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match="size mismatch"):
        HieraDetCheckpointer(model).load(path)


def test_engine_writes_resumable_checkpoints_and_a_backbone_file(tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs" / "class_a"
    folder.mkdir(parents=True)
    for i in range(6):
        Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy()).save(folder / f"{i}.png")
    data = ImageFolderDataset(str(tmp_path / "imgs"), img_size=64)
    assert len(data) == 6 and data[0].shape == (3, 64, 64)
    out = str(tmp_path / "run")
    r1 = pretrain(tiny_mae(64), data, out, max_iter=2, batch_size=2, checkpoint_period=2, num_workers=0, log_period=1)
    assert r1["start_iter"] == 0 and len(r1["losses"]) == 2
    r2 = pretrain(
        tiny_mae(64), data, out, max_iter=4, batch_size=2, checkpoint_period=2, num_workers=0, resume=True, log_period=1
    )
    assert r2["start_iter"] == 2 and len(r2["losses"]) == 2
    assert sorted(f for f in os.listdir(out) if f.startswith("mae_")) == ["mae_0000001.pth", "mae_0000003.pth"]
    ck = torch.load(r2["backbone"], weights_only=False)
    meta = ck["__hieradet__"]
    assert meta["mae"]["iteration"] == 4
    assert meta["embed_kwargs"]["window_size"] == [8, 4, 4, 2]  # 64-px tiles: stage-3/4 windows of 4 and 2
    det = HieraDet(**meta["backbone_kwargs"])
    missing = load_backbone_checkpoint(det, r2["backbone"])
    assert missing and all("rel_pos" in k for k in missing)  # only the detection relpos tables are new
    state = torch.load(os.path.join(out, "mae_0000003.pth"), weights_only=False)
    for k, v in strip_layout_records(det.state_dict()).items():  # the record describes each model
        if k not in missing:
            assert torch.equal(v, state["model"]["encoder." + k]), k


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(str(tmp_path / "missing"))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no images"):
        ImageFolderDataset(str(tmp_path / "empty"))
    for ratio in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
            tiny_mae(64, mask_ratio=ratio)
        with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
            random_unit_mask(1, 4, ratio)
    with pytest.raises(ValueError, match="not a multiple of the 32-px mask unit"):
        tiny_mae(80)
    with pytest.raises(ValueError, match="not a multiple of the 32-px mask unit"):
        pretrain_encoder_kwargs("T", 200)
    with pytest.raises(ValueError, match=r"pos_embed_type must be one of \('abswin', 'interpolate'\)"):
        pretrain_encoder_kwargs("T", 224, "bicubic")
    mae = tiny_mae(64)
    with pytest.raises(ValueError, match="not a multiple of the 32-px mask unit"):
        mae(torch.randn(1, 3, 64, 72))
    with pytest.raises(ValueError, match="same, nonzero number of units"):
        mae(torch.randn(2, 3, 64, 64), mask=torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool))
    # an encoder that cannot run sparsely: stage-3 windows (aligned with the embedding) other than the unit, relpos
    with pytest.raises(ValueError, match="mask-unit windows or global attention"):
        HieraMAE(HieraDet(**pretrain_encoder_kwargs(None, 64, window_size=(8, 4, 1, 0), **TINY)), img_size=64)
    with pytest.raises(ValueError, match="relpos='none'"):
        HieraMAE(
            HieraDet(**pretrain_encoder_kwargs(None, 64, relpos="global", global_blocks=(3,), **TINY)), img_size=64
        )
