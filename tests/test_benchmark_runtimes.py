"""``tools/benchmark.py --runtimes``: the compiled and exported rows run the same network on the same images as
the eager row (so their times compare like with like)."""

import argparse

import pytest
import torch
from detectron2.config import instantiate

from hieradet.benchmark import Benchmarked, run_benchmark, with_runtimes
from hieradet.modeling import HieraDet
from hieradet.testing import tiny_backbone_kwargs, tiny_mask_rcnn


@pytest.mark.slow  # about 25 s: a detector export and a dynamo trace
def test_detector_rows_compiled_and_exported_give_the_eager_detections(tmp_path):
    torch.manual_seed(0)
    model = instantiate(tiny_mask_rcnn("hieradet", num_classes=4, img_size=128)).eval()
    model.roi_heads.box_predictor.test_score_thresh = 0.0  # as the benchmark's full detections: N > 0
    eager = Benchmarked("tiny", model, "model", 128)
    rows = with_runtimes([eager], ["eager", "compiled", "torch_export"], str(tmp_path), compile_backend="eager")
    assert [r.name for r in rows] == ["tiny", "tiny [compiled:eager]", "tiny [torch_export]"]
    assert rows[0] is eager and rows[1].module is not model and rows[2].module is not model
    assert (tmp_path / "0_torch_export" / "model.pt2").is_file()
    inputs = rows[0].inputs(1, torch.device("cpu"))
    assert [r.inputs(1, torch.device("cpu"))[0]["image"].equal(inputs[0]["image"]) for r in rows] == [True] * 3
    with torch.inference_mode():
        ref = rows[0].forward(inputs)[0]["instances"]
        compiled = rows[1].forward(inputs)[0]["instances"]
        boxes, scores, classes, masks = rows[2].forward(inputs)[0]
    assert len(ref) > 0
    torch.testing.assert_close(compiled.pred_boxes.tensor, ref.pred_boxes.tensor, rtol=0, atol=1e-4)
    assert torch.equal(compiled.pred_classes, ref.pred_classes)
    assert len(boxes) == len(ref) and torch.equal(classes, ref.pred_classes)
    torch.testing.assert_close(boxes, ref.pred_boxes.tensor, rtol=0, atol=0.05)
    torch.testing.assert_close(scores, ref.scores, rtol=0, atol=1e-3)
    assert masks.shape == ref.pred_masks.shape and masks.dtype == torch.bool


def test_backbone_row_exported_gives_the_eager_features(tmp_path):
    torch.manual_seed(0)
    backbone = HieraDet(**tiny_backbone_kwargs("hieradet", img_size=128)).eval()
    eager = Benchmarked("tiny-trunk", backbone, "backbone", 128)
    (row,) = with_runtimes([eager], ["torch_export"], str(tmp_path))
    x = eager.inputs(1, torch.device("cpu"))
    with torch.inference_mode():
        ref = backbone(x)
        (out,) = row.forward(x)
    assert len(out) == len(ref) > 1
    for got, name in zip(out, sorted(ref)):
        torch.testing.assert_close(got[None] if got.dim() == 3 else got, ref[name], rtol=1e-4, atol=1e-5)


def test_unknown_runtime_and_runtimes_with_training_are_refused():
    eager = Benchmarked("m", torch.nn.Identity(), "backbone", 32)
    with pytest.raises(ValueError, match="unknown runtime"):
        with_runtimes([eager], ["tensorrt"], "/nonexistent")
    args = argparse.Namespace(runtimes=["eager", "compiled"], train=True, isolate=False)
    with pytest.raises(ValueError, match="cannot be combined with --train or --isolate"):
        run_benchmark(args)
