"""tools/predict.py on a tiny HieraDet Mask R-CNN (engineer B's model config, shrunk) and generated images."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_CONFIG = os.path.join(REPO, "configs", "common", "models", "mask_rcnn_hieradet.py")

TINY_CONFIG = """
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.layers import ShapeSpec
from omegaconf import OmegaConf

model = LazyConfig.load({model_config!r}).model
bu = model.backbone.bottom_up
bu.embed_dim, bu.num_heads, bu.stages, bu.global_blocks = 16, 1, (1, 1, 2, 1), (3,)
bu.img_size, bu.drop_path_rate = {image_size}, 0.0
model.backbone.out_channels = 32
model.proposal_generator.head.in_channels = 32
model.proposal_generator.pre_nms_topk = (400, 200)
model.proposal_generator.post_nms_topk = (200, 50)
model.roi_heads.num_classes = {num_classes}
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.input_shape = ShapeSpec(channels=32, height=7, width=7)
model.roi_heads.box_head.conv_dims = [32, 32]
model.roi_heads.box_head.fc_dims = [64]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=64)
model.roi_heads.box_predictor.test_topk_per_image = 20
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=32, width=14, height=14)
model.roi_heads.mask_head.conv_dims = [32, 32]

dataloader = OmegaConf.create()
dataloader.test = dict(
    dataset=dict(names={dataset!r}),
    mapper=dict(augmentations=[L(T.ResizeShortestEdge)(short_edge_length={image_size}, max_size={image_size})]),
)
"""


def write_tiny_config(folder, dataset=None, num_classes=4, image_size=128) -> str:
    """A LazyConfig file with a ~0.1M-parameter HieraDet Mask R-CNN and a test resize to ``image_size``."""
    path = os.path.join(str(folder), "tiny_mask_rcnn_hieradet.py")
    with open(path, "w") as f:
        f.write(
            TINY_CONFIG.format(
                model_config=MODEL_CONFIG, image_size=image_size, num_classes=num_classes, dataset=dataset
            )
        )
    return path


def val_images(ds, n):
    from detectron2.data import DatasetCatalog

    return [d["file_name"] for d in DatasetCatalog.get(ds.val_name)[:n]]


@pytest.fixture(scope="module")
def predict(load_tool):
    return load_tool("predict")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, synthetic_coco):
    """A tiny config and a checkpoint of it (random weights, seed 0)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import LazyConfig, instantiate

    folder = tmp_path_factory.mktemp("demo_cfg")
    cfg_path = write_tiny_config(folder, synthetic_coco.val_name, synthetic_coco.num_classes)
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(cfg_path).model)
    DetectionCheckpointer(model, save_dir=str(folder)).save("tiny")
    return cfg_path, os.path.join(str(folder), "tiny.pth"), model


def test_predict_writes_pictures_of_the_models_detections(predict, tiny, synthetic_coco, tmp_path, monkeypatch):
    from detectron2.utils.visualizer import Visualizer

    cfg_path, ckpt, model = tiny
    images = val_images(synthetic_coco, 2)
    out = tmp_path / "vis"
    drawn_text = []  # every label the visualizer writes into the pictures
    draw_text = Visualizer.draw_text

    def recording_draw_text(self, text, *args, **kwargs):
        drawn_text.append(text)
        return draw_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Visualizer, "draw_text", recording_draw_text)
    results = predict.main(
        ["--config-file", cfg_path, "--checkpoint", ckpt, "--input", *images, "--output", str(out)]
        + ["--confidence-threshold", "0.0"]
    )
    monkeypatch.undo()
    assert [r["input"] for r in results] == images
    # the same images with nothing above the threshold: the difference is what was drawn
    blank = predict.main(
        ["--config-file", cfg_path, "--checkpoint", ckpt, "--input", *images, "--output", str(tmp_path / "blank")]
        + ["--confidence-threshold", "1.0"]
    )
    for r, b in zip(results, blank):
        src = np.asarray(Image.open(r["input"]).convert("RGB"))
        vis = np.asarray(Image.open(r["output"]))[..., :3].astype(int)
        undrawn = np.asarray(Image.open(b["output"]))[..., :3].astype(int)
        assert vis.shape[:2] == undrawn.shape[:2] == src.shape[:2]
        assert len(r["instances"]) > 0 and len(b["instances"]) == 0
        assert np.abs(vis - undrawn).mean() > 1.0
    # the tool's detections are the checkpoint's: same as running the saved model directly
    import detectron2.data.transforms as T

    model.eval()
    bgr = np.asarray(Image.open(images[0]).convert("RGB"))[:, :, ::-1]
    h, w = bgr.shape[:2]
    aug = T.ResizeShortestEdge(128, 128).get_transform(bgr)
    rgb = aug.apply_image(np.ascontiguousarray(bgr[:, :, ::-1]))
    with torch.no_grad():
        ref = model([{"image": torch.as_tensor(rgb.transpose(2, 0, 1).copy()), "height": h, "width": w}])[0]
    ref = ref["instances"]
    torch.testing.assert_close(results[0]["instances"].pred_boxes.tensor, ref.pred_boxes.tensor)
    torch.testing.assert_close(results[0]["instances"].scores, ref.scores)
    assert results[0]["instances"].pred_classes.tolist() == ref.pred_classes.tolist()
    # the labels drawn are the registered dataset's class names (with the scores), one per detection
    from detectron2.data import MetadataCatalog

    names = MetadataCatalog.get(synthetic_coco.val_name).thing_classes
    assert len(names) == synthetic_coco.num_classes and all(n and not n.isdigit() for n in names)
    expected = [
        f"{names[c]} {s * 100:.0f}%"
        for r in results
        for c, s in zip(r["instances"].pred_classes.tolist(), r["instances"].scores.tolist())
    ]
    assert sorted(drawn_text) == sorted(expected)


def test_predict_folder_threshold_and_name_collisions(predict, tiny, synthetic_coco, tmp_path):
    cfg_path, ckpt, _ = tiny
    folder_a, folder_b = tmp_path / "a", tmp_path / "b"
    folder_a.mkdir()
    folder_b.mkdir()
    src = val_images(synthetic_coco, 1)[0]
    Image.open(src).save(folder_a / "x.png")
    Image.open(src).save(folder_b / "x.png")
    (folder_a / "notes.txt").write_text("not an image")
    results = predict.main(
        ["--config-file", cfg_path, "--checkpoint", ckpt, "--input", str(folder_a), str(folder_b)]
        + ["--output", str(tmp_path / "out"), "--confidence-threshold", "1.0"]
    )
    # the .txt is not picked up from a folder; same file names get distinct outputs
    assert sorted(os.path.basename(r["output"]) for r in results) == ["x.png", "x_1.png"]
    assert all(len(r["instances"]) == 0 for r in results)  # nothing scores >= 1.0
    assert [np.asarray(Image.open(r["output"])).shape[:2] for r in results] == [(128, 128)] * 2


def test_predict_unreadable_images_are_named(predict, tiny, synthetic_coco, tmp_path):
    cfg_path, ckpt, _ = tiny
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    good = val_images(synthetic_coco, 1)
    base = ["--config-file", cfg_path, "--checkpoint", ckpt, "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match=r"cannot read image .*broken\.jpg"):
        predict.main(base + ["--input", *good, str(broken)])
    with pytest.raises(SystemExit, match=r"cannot read image .*empty\.png: the file is empty"):
        predict.main(base + ["--input", str(empty)])
    results = predict.main(base + ["--input", str(broken), *good, "--skip-unreadable"])
    assert [r["input"] for r in results] == good


def test_predict_bad_arguments(predict, tiny, tmp_path):
    cfg_path, ckpt, _ = tiny
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(img)
    out = ["--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="config file not found"):
        predict.main(["--config-file", str(tmp_path / "nope.py"), "--input", str(img)] + out)
    with pytest.raises(SystemExit, match="checkpoint not found"):
        predict.main(["--config-file", cfg_path, "--checkpoint", str(tmp_path / "w.pth"), "--input", str(img)] + out)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(SystemExit, match="contains no images"):
        predict.main(["--config-file", cfg_path, "--input", str(tmp_path / "empty_dir")] + out)
    with pytest.raises(SystemExit, match="not found"):
        predict.main(["--config-file", cfg_path, "--input", str(tmp_path / "missing*.jpg")] + out)
    bad_ckpt = tmp_path / "bad.pth"
    bad_ckpt.write_bytes(b"garbage")
    with pytest.raises(SystemExit, match=r"cannot load checkpoint .*bad\.pth"):
        predict.main(["--config-file", cfg_path, "--checkpoint", str(bad_ckpt), "--input", str(img)] + out)


def test_predict_with_tta(predict, tiny, synthetic_coco, tmp_path):
    cfg_path, ckpt, _ = tiny
    image = val_images(synthetic_coco, 1)
    results = predict.main(
        ["--config-file", cfg_path, "--checkpoint", ckpt, "--input", *image, "--output", str(tmp_path / "t")]
        + ["--tta", "--tta-sizes", "96", "128", "--confidence-threshold", "0.0"]
    )
    inst = results[0]["instances"]
    h, w = np.asarray(Image.open(image[0])).shape[:2]
    assert len(inst) > 0 and inst.pred_masks.shape[1:] == (h, w)
    assert os.path.isfile(results[0]["output"])


def test_predict_class_names_from_a_coco_json(predict, tmp_path):
    """--metadata FILE.json: the class names of a COCO annotation file (in category-id order), e.g. the demo's own
    generated val json, whose dataset is registered only inside tools/demo_train.py's process."""
    ann = tmp_path / "val.json"
    ann.write_text(json.dumps({"categories": [{"id": 3, "name": "triangle"}, {"id": 1, "name": "circle"}]}))
    assert predict._metadata(None, str(ann)).thing_classes == ["circle", "triangle"]
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="no COCO 'categories'"):
        predict._metadata(None, str(empty))
    broken = tmp_path / "broken.json"
    broken.write_text('{"categories": [')
    with pytest.raises(ValueError, match="not valid json"):
        predict._metadata(None, str(broken))
