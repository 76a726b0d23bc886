"""Whole-detector export (boxes, scores, classes, masks): the traceable DetectorGraph equals detectron2's eager
inference exactly, and one exported file (torch.export / ONNX) matches eager at two image sizes; parts it does not
re-implement are refused by name."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import LazyConfig, instantiate
from omegaconf import OmegaConf
from PIL import Image

from hieradet.export import DetectorGraph, ExportError, build_model, export_graph, export_model, load_exported, trace
from hieradet.testing import make_tiny, tiny_mask_rcnn

SIZES = [(256, 256), (224, 320)]  # one file, two sizes
MAX_SIZE = 320

PSEUDO_VAL = "export_detector_pseudo_val"
TINY_CONFIG = """
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader, get_detection_dataset_dicts
from omegaconf import OmegaConf

from hieradet.evaluation import COCOEvaluator
from hieradet.testing import tiny_mask_rcnn

model = tiny_mask_rcnn("hieradet", num_classes=4, img_size=256)
dataloader = OmegaConf.create()
dataloader.test = L(build_detection_test_loader)(  # the images are already at the test size: no resize
    dataset=L(get_detection_dataset_dicts)(names="{name}", filter_empty=False),
    mapper=L(DatasetMapper)(is_train=False, augmentations=[], image_format="BGR"),
    num_workers=0,
)
dataloader.evaluator = L(COCOEvaluator)(dataset_name="{name}", output_dir="{out}")
"""


def _register_pseudo_val(model, pngs):
    """A test set whose ground truth is the eager model's 8 best detections per image (boxes, classes, masks):
    eager AP on it is high, and any change in the exported detections lowers the exported AP."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode
    from pycocotools import mask as mask_util

    records = []
    for i, png in enumerate(pngs):
        bgr = torch.as_tensor(np.array(Image.open(png))).permute(2, 0, 1).flip(0).float()
        inst = _eager(model, bgr)[:8]
        anns = []
        for box, cls, m in zip(inst.pred_boxes.tensor, inst.pred_classes, inst.pred_masks):
            rle = mask_util.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
            anns.append(
                dict(bbox=box.tolist(), bbox_mode=BoxMode.XYXY_ABS, category_id=int(cls), segmentation=rle, iscrowd=0)
            )
        h, w = bgr.shape[1:]
        records.append(dict(file_name=png, image_id=i, height=h, width=w, annotations=anns))
    if PSEUDO_VAL in DatasetCatalog:
        DatasetCatalog.remove(PSEUDO_VAL)
        MetadataCatalog.remove(PSEUDO_VAL)
    DatasetCatalog.register(PSEUDO_VAL, lambda: records)
    MetadataCatalog.get(PSEUDO_VAL).set(thing_classes=["a", "b", "c", "d"])


def _images():
    torch.manual_seed(1)
    return [torch.rand(3, *hw) * 255 for hw in SIZES]


def _eager(model, image):
    with torch.no_grad():  # no height / width: detectron2's postprocess keeps the input size
        return model([{"image": image}])[0]["instances"]


def _cascade_model():
    cfg = make_tiny(LazyConfig.load("configs/COCO/cascade_mask_rcnn_hieradet_t_100ep.py"), 256, num_classes=4)
    cfg.model.backbone.square_pad = 0  # sizes up to 320 (the config pads to one 1024 px square)
    torch.manual_seed(0)
    return instantiate(cfg.model).eval()


def _model(kind):
    if kind == "cascade":
        return _cascade_model()
    torch.manual_seed(0)
    return instantiate(tiny_mask_rcnn("hieradet", img_size=256, mask=kind == "mask_rcnn")).eval()


def assert_matches_eager(out, ref, image):
    """The issue's tolerances: same N and classes, boxes within 0.05 px, scores within 1e-3, mask IoU >= 0.98."""
    n, (h, w) = len(ref), image.shape[1:]
    assert n > 0, "no detections: the comparison would be empty"
    assert out[0].shape == (n, 4) and out[1].shape == (n,) and out[2].shape == (n,)
    assert out[2].dtype == torch.int64 and torch.equal(out[2], ref.pred_classes)
    torch.testing.assert_close(out[0], ref.pred_boxes.tensor, rtol=0, atol=0.05)
    torch.testing.assert_close(out[1], ref.scores, rtol=0, atol=1e-3)
    if ref.has("pred_masks"):
        assert len(out) == 4 and out[3].shape == (n, h, w) and out[3].dtype == torch.bool
        a, b = out[3].flatten(1), ref.pred_masks.flatten(1)
        iou = (a & b).sum(1) / (a | b).sum(1).clamp(min=1)
        assert iou.min() >= 0.98, f"mask IoU {iou.min():.4f}"
        assert b.any(1).all(), "an eager mask is empty: the IoU check would be vacuous"
    else:
        assert len(out) == 3


@pytest.mark.parametrize("kind", ["mask_rcnn", "faster_rcnn", "cascade"])
def test_detector_graph_equals_detectron2_eager(kind):
    model = _model(kind)
    graph = DetectorGraph(model).eval()
    assert graph.output_names == ["boxes", "scores", "classes"] + (["masks"] if kind != "faster_rcnn" else [])
    for image in _images():
        ref = _eager(model, image)
        with torch.no_grad():
            out = graph(image)
        assert_matches_eager(out, ref, image)
        # the same operations in the same order: bit-identical, not only within the tolerances
        assert torch.equal(out[0], ref.pred_boxes.tensor) and torch.equal(out[1], ref.scores)
        if kind != "faster_rcnn":
            assert torch.equal(out[3], ref.pred_masks)


@pytest.fixture(scope="module")
def cli_pt2(tmp_path_factory, load_tool):
    """tools/export_model.py (no --backbone-only) on a tiny HieraDet Mask R-CNN checkpoint: the one whole-detector
    export of the default suite."""
    tmp = tmp_path_factory.mktemp("det")
    cfg_path = tmp / "tiny.py"
    cfg_path.write_text(TINY_CONFIG.format(name=PSEUDO_VAL, out=tmp / "eval"))
    torch.manual_seed(0)
    model = instantiate(LazyConfig.load(str(cfg_path)).model).eval()
    torch.save({"model": model.state_dict()}, tmp / "model.pth")
    pngs = []
    for i, image in enumerate(_images()):
        pngs.append(str(tmp / f"img{i}.png"))
        Image.fromarray(image.round().byte().permute(1, 2, 0).numpy()).save(pngs[-1])
    _register_pseudo_val(model, pngs)
    tool = load_tool("export_model")
    argv = ["--config-file", str(cfg_path), "--checkpoint", str(tmp / "model.pth"), "--format", "torch_export"]
    argv += ["--output", str(tmp / "out"), "--max-size", str(MAX_SIZE), "--check", *pngs, "--eval"]
    yield tool, argv, pngs, str(tmp / "out" / "model.pt2")
    from detectron2.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.remove(PSEUDO_VAL)
    MetadataCatalog.remove(PSEUDO_VAL)


def test_cli_exports_whole_detector_torch_export_two_sizes_one_file(cli_pt2, capsys):
    """The tool writes the .pt2 and its --check runs that file and eager detectron2 (same checkpoint) on the two
    images, and its --eval the pseudo-labelled test set; the printed differences are held to the issue's
    tolerances (loading a .pt2 again would double the test's time)."""
    tool, argv, pngs, path = cli_pt2
    assert tool.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {path} (detector)" in printed
    pattern = (
        r"\((\d+), (\d+)\): (\d+) detections as eager; max \|boxes diff\| (\S+) px, max \|scores diff\| (\S+), "
        r"(\d+) classes differ, smallest mask IoU (\S+)$"
    )
    for png, hw in zip(pngs, SIZES):
        line = next(x for x in printed.splitlines() if x.startswith(png))
        m = re.search(pattern, line)
        assert m, line
        assert (int(m.group(1)), int(m.group(2))) == hw  # no resize: the images are at the test size
        assert int(m.group(3)) > 0 and int(m.group(6)) == 0, line
        assert float(m.group(4)) <= 0.05 and float(m.group(5)) <= 1e-3 and float(m.group(7)) >= 0.98, line
    for task in ("bbox", "segm"):  # --eval: the same test set through eager and through the file
        m = re.search(rf"^{task} AP: eager (\S+), exported (\S+) \(difference", printed, re.M)
        assert m, printed
        assert float(m.group(1)) > 30 and abs(float(m.group(2)) - float(m.group(1))) <= 0.1, m.group(0)


def test_export_refuses_a_roi_head_part_it_does_not_reimplement(tmp_path):
    from hieradet.modeling.soft_nms import SoftNMSFastRCNNOutputLayers

    cfg = OmegaConf.create({"model": tiny_mask_rcnn("hieradet", img_size=256)})
    cfg.model.roi_heads.box_predictor._target_ = SoftNMSFastRCNNOutputLayers
    with pytest.raises(ExportError, match=r"box predictor .*SoftNMSFastRCNNOutputLayers.*--backbone-only"):
        export_model(cfg, None, "torch_export", str(tmp_path))
    assert not (tmp_path / "model.pt2").exists()
    cfg.model.roi_heads.box_predictor._target_ = "detectron2.modeling.roi_heads.FastRCNNOutputLayers"
    model = build_model(cfg)
    model.roi_heads.keypoint_on = True
    with pytest.raises(ExportError, match="keypoint heads.*--backbone-only"):
        DetectorGraph(model)


def test_exported_detector_runs_with_zero_and_one_detection():
    """torchvision declares NMS keeps >= 2 boxes while tracing; the exported program must still run (and match
    eager) when an image has no detection or a single one. The score threshold is set between the images' scores
    so that one image has none above it and the other exactly one."""
    model = _model("mask_rcnn")
    predictor = model.roi_heads.box_predictor
    predictor.test_score_thresh = 0.0
    images = _images()
    top = [_eager(model, image).scores[:2].tolist() for image in images]
    a, b = sorted(range(2), key=lambda i: top[i][0])  # a: the lower best score
    predictor.test_score_thresh = max(top[a][0], (top[b][0] + top[b][1]) / 2)
    program = trace(DetectorGraph(model).eval(), torch.rand(3, 256, 256) * 255, 65, MAX_SIZE).module()
    for i, n in ((a, 0), (b, 1)):
        image = images[i]
        ref = _eager(model, image)
        with torch.no_grad():
            out = program(image)
        assert len(ref) == n and [tuple(o.shape) for o in out] == [(n, 4), (n,), (n,), (n, *image.shape[1:])]
        if n:
            assert_matches_eager(out, ref, image)


class _NeedsOver64(torch.nn.Module):
    """A graph that only holds for image sides over 64 px (as a convolution on a 1 px stride-64 map does in the
    detector): torch.export narrows the accepted range to 65.. and adds a runtime check."""

    size_divisibility, square_size, output_names = 1, 0, ["y"]

    def forward(self, image):
        torch._check(image.shape[1] > 64)
        return (F.max_pool2d(image[None], 1, stride=64).sum(),)


def test_export_refuses_a_narrower_size_range_than_asked(tmp_path):
    with pytest.raises(ExportError, match=r"accepts image sides of 65\.\.320 px only, not the requested 64\.\.320"):
        export_graph(_NeedsOver64(), "torch_export", str(tmp_path), min_size=64, max_size=320)
    assert not (tmp_path / "model.pt2").exists()
    ep = trace(_NeedsOver64(), torch.rand(3, 128, 128), 65, 320)  # inside the bound: accepted
    torch.export.save(ep, str(tmp_path / "model.pt2"))
    run = load_exported(str(tmp_path / "model.pt2"))  # the runner reads the bounds from the program
    assert run(torch.rand(3, 65, 300))[0].shape == ()
    with pytest.raises(ValueError, match=r"outside the exported range 65\.\.320"):
        run(torch.rand(3, 64, 300))


@pytest.mark.slow
def test_torch_export_cascade_two_sizes_one_program():
    """The cascade's program (the .pt2 round trip is the default suite's CLI test; loading costs as much as
    tracing)."""
    model = _cascade_model()
    program = trace(DetectorGraph(model).eval(), torch.rand(3, 256, 256) * 255, 65, MAX_SIZE).module()
    for image in _images():
        with torch.no_grad():
            assert_matches_eager(program(image), _eager(model, image), image)


@pytest.mark.slow
def test_onnx_mask_rcnn_two_sizes_one_file(tmp_path):
    import onnx

    model = _model("mask_rcnn")
    path = export_graph(DetectorGraph(model).eval(), "onnx", str(tmp_path), max_size=MAX_SIZE)
    m = onnx.load(path)
    assert [o.name for o in m.graph.output] == ["boxes", "scores", "classes", "masks"]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 3 and dims[1].dim_param and dims[2].dim_param  # H and W symbolic
    run = load_exported(path, MAX_SIZE)
    for image in _images():
        assert_matches_eager(run(image), _eager(model, image), image)
