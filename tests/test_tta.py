"""GeneralizedRCNNTTA on a tiny HieraDet Mask R-CNN (engineer B's model config, shrunk)."""

import numpy as np
import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.structures import pairwise_iou
from PIL import Image
from test_predict import val_images, write_tiny_config

from hieradet.modeling.tta import GeneralizedRCNNTTA


@pytest.fixture(scope="module")
def model_cfg(tmp_path_factory):
    return LazyConfig.load(write_tiny_config(tmp_path_factory.mktemp("tta_cfg"), num_classes=4)).model


@pytest.fixture(scope="module")
def model(model_cfg):
    torch.manual_seed(0)
    return instantiate(model_cfg).eval()


@pytest.fixture(scope="module")
def image(synthetic_coco):
    """An RGB 128x128 val image cropped to 128x96 (not square)."""
    return np.asarray(Image.open(val_images(synthetic_coco, 1)[0]).convert("RGB"))[:, :96].copy()


def _as_input(img):
    return {"image": torch.as_tensor(img.transpose(2, 0, 1).copy()), "height": img.shape[0], "width": img.shape[1]}


def _plain(model, img, short, max_size):
    resized = ResizeShortestEdge(short, max_size).get_transform(img).apply_image(img)
    inp = _as_input(resized)
    inp["height"], inp["width"] = img.shape[:2]
    with torch.no_grad():
        return model([inp])[0]["instances"]


def test_single_scale_without_flip_equals_plain_inference(model, image):
    # 128x96 stays 128x96 (inside the model's 128 square pad)
    tta = GeneralizedRCNNTTA(model, min_sizes=[96], max_size=400, flip=False).eval()
    with torch.no_grad():
        out = tta([_as_input(image)])[0]["instances"]
    ref = _plain(model, image, 96, 400)
    assert len(ref) > 0 and len(out) == len(ref)
    torch.testing.assert_close(out.pred_boxes.tensor, ref.pred_boxes.tensor, atol=1e-3, rtol=0)
    torch.testing.assert_close(out.scores, ref.scores)
    assert out.pred_classes.tolist() == ref.pred_classes.tolist()
    assert out.pred_masks.shape == ref.pred_masks.shape == (len(ref), 128, 96)
    disagree = (out.pred_masks != ref.pred_masks).float().mean().item()
    assert disagree < 1e-3


def test_flip_tta_is_mirror_symmetric(model, image):
    tta = GeneralizedRCNNTTA(model, min_sizes=[72, 96], max_size=400, flip=True).eval()
    with torch.no_grad():
        a = tta([_as_input(image)])[0]["instances"]
        b = tta([_as_input(image[:, ::-1].copy())])[0]["instances"]
    assert len(a) == len(b) > 0
    w = image.shape[1]
    mirrored = b.pred_boxes.tensor[:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + torch.tensor([w, 0, w, 0])
    # match each detection of the flipped image to the original one
    iou = pairwise_iou(a.pred_boxes, type(a.pred_boxes)(mirrored))
    best = iou.max(dim=0)
    assert (best.values > 0.99).all()
    torch.testing.assert_close(a.scores[best.indices], b.scores, atol=1e-4, rtol=0)
    assert torch.equal(a.pred_classes[best.indices], b.pred_classes)
    flipped_masks = b.pred_masks.flip(-1)
    assert (flipped_masks != a.pred_masks[best.indices]).float().mean() < 0.01


def test_more_augmentations_change_the_result(model, image):
    with torch.no_grad():
        one = GeneralizedRCNNTTA(model, min_sizes=[96], max_size=400, flip=False).eval()([_as_input(image)])
        many = GeneralizedRCNNTTA(model, min_sizes=[72, 96], max_size=400, flip=True).eval()([_as_input(image)])
    one, many = one[0]["instances"], many[0]["instances"]
    assert len(many) > 0
    assert len(one) != len(many) or not torch.allclose(one.scores, many.scores)


def test_square_pad_is_raised_for_large_augmentations(model, image):
    backbone = model.backbone
    assert backbone.padding_constraints["square_size"] == 128
    seen = []
    handle = backbone.bottom_up.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        tta = GeneralizedRCNNTTA(model, min_sizes=[96, 160], max_size=400, flip=False).eval()
        with torch.no_grad():
            tta([_as_input(image)])
    finally:
        handle.remove()
    # 128x96 -> 160x120 or 213x160: detectron2 would crop these to the 128 square; padded to 224 instead
    assert seen and all(s == (224, 224) for s in seen)
    assert backbone.padding_constraints["square_size"] == 128  # restored


def test_soft_nms_merge(model, image):
    with torch.no_grad():
        hard = GeneralizedRCNNTTA(model, [72, 96], 400, merge_method="none").eval()([_as_input(image)])
        soft = GeneralizedRCNNTTA(model, [72, 96], 400, merge_method="linear").eval()([_as_input(image)])
    hard, soft = hard[0]["instances"], soft[0]["instances"]
    assert len(soft) >= len(hard) > 0
    assert soft.scores[0] == hard.scores[0]
    assert (soft.scores[1:] <= soft.scores[:-1]).all()


def test_lazycall_build_and_bare_checkpoint_loading(model_cfg, model, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("bare")
    torch.manual_seed(1)
    tta = instantiate(L(GeneralizedRCNNTTA)(model=model_cfg, min_sizes=[128], max_size=256, flip=True, batch_size=2))
    assert isinstance(tta, GeneralizedRCNNTTA) and tta.batch_size == 2
    key = "backbone.bottom_up.patch_embed.proj.weight"
    assert not torch.equal(tta.model.state_dict()[key], model.state_dict()[key])
    # a checkpoint of the bare model (keys without "model.") loads into the wrapper
    DetectionCheckpointer(tta).load(str(tmp_path / "bare.pth"))
    for k, v in model.state_dict().items():
        assert torch.equal(tta.model.state_dict()[k], v), k
    # and the wrapper's own state dict loads too
    missing, unexpected = tta.load_state_dict(tta.state_dict())
    assert not missing and not unexpected
    # in training mode the wrapper is the model
    tta.train()
    assert tta.model.training


def test_bad_arguments(model):
    with pytest.raises(TypeError, match="GeneralizedRCNN"):
        GeneralizedRCNNTTA(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="min_sizes"):
        GeneralizedRCNNTTA(model, min_sizes=[])
    with pytest.raises(ValueError, match="max_size=100 is smaller"):
        GeneralizedRCNNTTA(model, min_sizes=[128, 160], max_size=100)
    with pytest.raises(ValueError, match="merge_method"):
        GeneralizedRCNNTTA(model, min_sizes=[128], merge_method="soft")
