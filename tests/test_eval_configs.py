"""Every evaluating config uses hieradet's faster-coco-eval evaluators, and the command line opts out."""

import os

import pytest
from detectron2.config import LazyConfig, instantiate

from hieradet.evaluation import COCOEvaluator, LVISEvaluator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path):
    return LazyConfig.load(os.path.join(ROOT, path))


CONFIGS = [
    ("configs/COCO/mask_rcnn_hieradet_b_100ep.py", COCOEvaluator),
    ("configs/COCO/system/cascade_mask_rcnn_hieradet_b_1280_softnms_tta.py", COCOEvaluator),
    ("configs/LVIS/cascade_mask_rcnn_hieradet_b_100ep.py", LVISEvaluator),
    ("projects/HiViT/configs/COCO/mask_rcnn_hivit_b_3x.py", COCOEvaluator),
    ("projects/HiViT/configs/LVIS/mask_rcnn_hivit_b_3x.py", LVISEvaluator),
]


@pytest.mark.parametrize("path,cls", CONFIGS, ids=[p.split("configs/")[-1] for p, _ in CONFIGS])
def test_config_evaluator_is_ours(path, cls):
    cfg = _load(path)
    assert cfg.dataloader.evaluator._target_ is cls
    assert cfg.dataloader.evaluator.dataset_name == cfg.dataloader.test.dataset.names


@pytest.mark.parametrize(
    "path,backend", [(CONFIGS[0][0], "pycocotools"), (CONFIGS[2][0], "lvis"), (CONFIGS[0][0], "faster")]
)
def test_backend_from_the_command_line(path, backend, synthetic_coco, synthetic_lvis):
    cfg = LazyConfig.apply_overrides(_load(path), [f"dataloader.evaluator.backend={backend}"])
    # the generated datasets stand in for COCO / LVIS val (not installed here)
    cfg.dataloader.evaluator.dataset_name = (synthetic_lvis if backend == "lvis" else synthetic_coco).val_name
    cfg.dataloader.evaluator.distributed = False
    evaluator = instantiate(cfg.dataloader.evaluator)
    assert evaluator._backend == backend


def test_unknown_backend_from_the_command_line(synthetic_coco):
    cfg = LazyConfig.apply_overrides(_load(CONFIGS[0][0]), ["dataloader.evaluator.backend=lvis"])
    cfg.dataloader.evaluator.dataset_name = synthetic_coco.val_name
    with pytest.raises(ValueError, match=r"COCO evaluation backend must be one of \('faster', 'pycocotools'\)"):
        instantiate(cfg.dataloader.evaluator)


def test_do_test_scores_with_the_configs_evaluator(synthetic_coco, tmp_path):
    """do_test instantiates the config's evaluator: a tiny model evaluated on the generated val split gives the
    same numbers with faster-coco-eval as with pycocotools."""
    import torch
    from detectron2.config import LazyCall as L

    from hieradet.engine import do_test
    from hieradet.testing import tiny_train_config

    cfg = tiny_train_config(
        [synthetic_coco.train_name], [synthetic_coco.val_name], str(tmp_path), synthetic_coco.num_classes
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model).eval()
    model.roi_heads.box_predictor.test_score_thresh = 0.0  # random weights: keep every detection
    results = {}
    for backend in ("faster", "pycocotools"):
        cfg.dataloader.evaluator = L(COCOEvaluator)(
            dataset_name=synthetic_coco.val_name, output_dir=str(tmp_path / backend), backend=backend
        )
        results[backend] = do_test(cfg, model)
    assert set(results["faster"]) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert results["faster"][task].keys() == results["pycocotools"][task].keys()
        for k, v in results["pycocotools"][task].items():
            assert results["faster"][task][k] == pytest.approx(v, abs=1e-6, nan_ok=True), (task, k)
    assert (tmp_path / "faster" / "coco_instances_results.json").read_text() == (
        tmp_path / "pycocotools" / "coco_instances_results.json"
    ).read_text()
