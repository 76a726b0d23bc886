"""tools/lazyconfig_train_net.py end to end on generated COCO-format data: train a few iterations,
write checkpoints, resume, evaluate; and its error for a missing dataset."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "lazyconfig_train_net.py"

# A user config derived from one of ours, shrunk for CPU (what `make_tiny` changes: depth, widths, proposals).
TINY_CONFIG = """
from detectron2.config import LazyConfig

from hieradet.testing import make_tiny

_cfg = make_tiny(LazyConfig.load({base!r}), image_size=128, num_classes=4)
model, dataloader, optimizer, lr_multiplier, train = (
    _cfg.model, _cfg.dataloader, _cfg.optimizer, _cfg.lr_multiplier, _cfg.train
)
"""


@pytest.fixture(scope="module")
def coco_rle(tmp_path_factory):
    from hieradet.data import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("train_net_data")
    # RLE masks: LSJ's crop of polygon masks needs shapely, which this stack does not install
    files = generate_synthetic_dataset(str(root), num_train=8, num_val=4, image_size=128, fmt="coco", mask_format="rle")
    return files


def _iterations(metrics_json: Path):
    its = []
    for line in metrics_json.read_text().splitlines():
        rec = json.loads(line)
        if "total_loss" in rec:
            its.append(rec["iteration"])
    return its


def test_train_resume_and_evaluate(load_tool, coco_rle, tmp_path):
    tool = load_tool("lazyconfig_train_net")
    cfg_file = tmp_path / "tiny_mask_rcnn_hieradet.py"
    cfg_file.write_text(TINY_CONFIG.format(base=str(ROOT / "configs/COCO/mask_rcnn_hieradet_b_100ep.py")))
    out = tmp_path / "out"
    common = [
        "--config-file",
        str(cfg_file),
        "--dataset",
        "train_net_train",
        coco_rle["train"],
        os.path.join(coco_rle["image_root"], "train"),
        "--dataset",
        "train_net_val",
        coco_rle["val"],
        os.path.join(coco_rle["image_root"], "val"),
    ]
    overrides = [
        "dataloader.train.dataset.names=train_net_train",
        "dataloader.test.dataset.names=train_net_val",
        "dataloader.train.mapper.instance_mask_format=bitmask",
        "train.device=cpu",
        f"train.output_dir={out}",
        "train.checkpointer.period=1",
        "train.eval_period=0",
        "train.log_period=1",
        "train.seed=0",
    ]
    parser = tool.build_parser()

    # 1) two iterations from scratch: checkpoints after each, then the final one and an evaluation
    res1 = tool.main(
        parser.parse_args(common + overrides + ["train.max_iter=2", f"dataloader.evaluator.output_dir={out}"])
    )
    assert {"bbox", "segm"} <= set(res1)
    assert (out / "model_0000000.pth").is_file() and (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 1 and "optimizer" in ckpt["trainer"]  # resumable: optimizer state saved
    assert _iterations(out / "metrics.json") == [0, 1]

    # A model of two iterations scores about 0 AP on the generated labels, so an equality of two evaluations would
    # prove little. The val images labelled with this model's own detections make a set it scores well on, and
    # which the one more iteration below changes only a little: the AP compared in 3) is a real one.
    pseudo = _pseudo_labelled(coco_rle["val"], out / "coco_instances_results.json", tmp_path / "pseudo_val.json")
    common += ["--dataset", "train_net_pseudo_val", pseudo, os.path.join(coco_rle["image_root"], "val")]
    overrides[1] = "dataloader.test.dataset.names=train_net_pseudo_val"

    # 2) --resume continues at iteration 2 (not 0) and stops at the new max_iter
    res2 = tool.main(parser.parse_args(common + ["--resume"] + overrides + ["train.max_iter=3"]))
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 2
    assert _iterations(out / "metrics.json") == [0, 1, 2]
    # measured with train.seed=0: segm AP 26.2, box AP 59.0 (about 0 on the generated labels)
    assert res2["segm"]["AP"] > 10 and res2["bbox"]["AP"] > 10, res2

    # 3) --eval-only on the final weights reproduces the end-of-training evaluation
    res3 = tool.main(
        parser.parse_args(common + ["--eval-only"] + overrides + [f"train.init_checkpoint={out / 'model_final.pth'}"])
    )
    for task in ("bbox", "segm"):
        for metric in ("AP", "AP50", "AP75"):
            assert res3[task][metric] == pytest.approx(res2[task][metric], abs=1e-9), (task, metric)


def _pseudo_labelled(val_json: str, results_json: Path, out_json: Path) -> str:
    """``val_json`` with its annotations replaced by the detections in ``results_json`` (non-empty masks)."""
    import pycocotools.mask as mask_util

    with open(val_json) as f:
        data = json.load(f)
    dets = json.loads(results_json.read_text())
    anns = []
    for d in dets:
        area = float(mask_util.area(d["segmentation"]))
        if area > 0:
            anns.append(dict(d, id=len(anns) + 1, area=area, iscrowd=0))
            del anns[-1]["score"]
    assert len(anns) >= len(data["images"]), "the model made too few detections to label the images with"
    data["annotations"] = anns
    out_json.write_text(json.dumps(data))
    return str(out_json)


def test_eval_only_without_weights_is_an_error(load_tool, coco_rle, tmp_path):
    tool = load_tool("lazyconfig_train_net")
    args = tool.build_parser().parse_args(
        [
            "--config-file",
            str(ROOT / "configs/COCO/mask_rcnn_hieradet_t_100ep.py"),
            "--eval-only",
            f"train.output_dir={tmp_path}",
        ]
    )
    with pytest.raises(ValueError, match="train.init_checkpoint"):
        tool.main(args)


def test_missing_config_file_is_an_error(load_tool, tmp_path):
    tool = load_tool("lazyconfig_train_net")
    args = tool.build_parser().parse_args(["--config-file", str(tmp_path / "nope.py")])
    with pytest.raises(FileNotFoundError, match="nope.py"):
        tool.main(args)


def test_config_file_may_be_a_model_zoo_name(load_tool, tmp_path):
    tool = load_tool("lazyconfig_train_net")
    args = tool.build_parser().parse_args(
        ["--config-file", "COCO/mask_rcnn_hieradet_t_100ep.py", f"train.output_dir={tmp_path}"]
    )
    cfg = tool.setup(args)
    assert tuple(cfg.model.backbone.bottom_up.stages) == (1, 2, 7, 2)
    args = tool.build_parser().parse_args(["--config-file", "COCO/no_such_recipe.py"])
    with pytest.raises(FileNotFoundError, match="nor is it a hieradet.model_zoo name"):
        tool.setup(args)


def test_missing_builtin_dataset_names_the_expected_path(tmp_path):
    env = dict(
        os.environ,
        DETECTRON2_DATASETS=str(tmp_path / "no_datasets_here"),
        PYTHONWARNINGS="ignore",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            "--config-file",
            str(ROOT / "configs/COCO/mask_rcnn_hieradet_b_100ep.py"),
            "train.device=cpu",
            f"train.output_dir={tmp_path / 'out'}",
        ],
        env=env,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    expected = str(tmp_path / "no_datasets_here" / "coco" / "annotations" / "instances_train2017.json")
    assert f"annotation file {expected!r} does not exist" in proc.stderr
    assert "DETECTRON2_DATASETS" in proc.stderr and "cocodataset.org" in proc.stderr


def test_dataset_option_registers_coco_and_lvis_json(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from hieradet.data import generate_synthetic_dataset
    from hieradet.engine import FedLossClassWeights, register_json_dataset

    lvis = generate_synthetic_dataset(str(tmp_path / "lvis"), num_train=6, num_val=2, image_size=64, fmt="lvis")
    assert register_json_dataset("train_net_lvis", lvis["train"], lvis["image_root"]) == "lvis"
    records = DatasetCatalog.get("train_net_lvis")
    assert len(records) == 6 and all(os.path.isfile(r["file_name"]) for r in records)
    with open(lvis["train"]) as f:
        cats = json.load(f)["categories"]
    counts = torch.tensor([float(c["image_count"]) for c in sorted(cats, key=lambda c: c["id"])])
    assert torch.allclose(FedLossClassWeights("train_net_lvis")(), counts**0.5)
    assert len(MetadataCatalog.get("train_net_lvis").thing_classes) == len(cats)

    coco = generate_synthetic_dataset(str(tmp_path / "coco"), num_train=3, num_val=2, image_size=64, fmt="coco")
    train_root = os.path.join(coco["image_root"], "train")
    assert register_json_dataset("train_net_coco", coco["train"], train_root) == "coco"
    with open(coco["train"]) as f:
        names = [c["name"] for c in sorted(json.load(f)["categories"], key=lambda c: c["id"])]
    assert MetadataCatalog.get("train_net_coco").thing_classes == names  # before the first load
    assert len(DatasetCatalog.get("train_net_coco")) == 3
    # the one rule of hieradet.data's registration: the same files again are a no-op, other files an error
    assert register_json_dataset("train_net_coco", coco["train"], train_root) == "coco"
    with pytest.raises(ValueError, match="'train_net_coco' is already registered for"):
        register_json_dataset("train_net_coco", coco["val"], os.path.join(coco["image_root"], "val"))
    assert len(DatasetCatalog.get("train_net_coco")) == 3

    with pytest.raises(FileNotFoundError, match="missing.json"):
        register_json_dataset("train_net_bad", str(tmp_path / "missing.json"), train_root)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid json"):
        register_json_dataset("train_net_bad", str(bad), train_root)
