"""Reliability of checkpoints and file references: a missing, truncated or corrupt checkpoint, a checkpoint of
the wrong model size, a config naming a missing file: each fails with an error naming the file / keys, and
nothing on disk is overwritten."""

import hashlib
import importlib.util
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from hieradet.checkpoint.checkpointer import HieraDetCheckpointer
from hieradet.checkpoint.io import CheckpointError, load_checkpoint_file
from hieradet.data import generate_synthetic_dataset
from hieradet.engine import do_train
from hieradet.testing import tiny_train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "reliability_ckpt_train"


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability_ckpt")
    paths = generate_synthetic_dataset(str(root), num_train=2, num_val=1, image_size=64, seed=1)
    if NAME in DatasetCatalog.list():
        DatasetCatalog.remove(NAME)
        MetadataCatalog.remove(NAME)
    register_coco_instances(NAME, {}, paths["train"], str(root / "train"))
    out = {}
    torch.manual_seed(0)
    for tag, width in (("good", 16), ("wide", 24)):
        cfg = tiny_train_config([NAME], None, "unused", num_classes=4, image_size=64)
        cfg.model.backbone.bottom_up.embed_dim = width
        (root / tag).mkdir()
        DetectionCheckpointer(instantiate(cfg.model), str(root / tag)).save("model_final")
        out[tag] = str(root / tag / "model_final.pth")
    with open(out["good"], "rb") as f:
        data = f.read()
    out["truncated"] = str(root / "truncated.pth")
    with open(out["truncated"], "wb") as f:
        f.write(data[: len(data) // 2])
    out["corrupt"] = str(root / "corrupt.pth")
    with open(out["corrupt"], "wb") as f:
        f.write(bytes(range(256)) * 64)
    out["missing"] = str(root / "no_such_file.pth")
    out["root"] = root
    return out


def _train_cfg(files, tmp_path, **train):
    cfg = tiny_train_config([NAME], None, str(tmp_path / "out"), num_classes=4, image_size=64, max_iter=1)
    cfg.train.update(train)
    return cfg


def _snapshot(files, tmp_path):
    """Digests of every file that must not change, and the output folder's content."""
    digests = {k: _digest(v) for k, v in files.items() if isinstance(v, str) and os.path.isfile(v)}
    return digests, sorted(os.listdir(tmp_path / "out")) if (tmp_path / "out").is_dir() else []


def _assert_untouched(before, files, tmp_path):
    after = _snapshot(files, tmp_path)
    assert after[0] == before[0], "a checkpoint file was modified"
    assert not [f for f in after[1] if f.endswith(".pth") or f == "last_checkpoint"], after[1]


def test_missing_init_checkpoint_is_named(files, tmp_path):
    before = _snapshot(files, tmp_path)
    with pytest.raises((FileNotFoundError, AssertionError), match=r"no_such_file\.pth"):
        do_train(_train_cfg(files, tmp_path, init_checkpoint=files["missing"]))
    _assert_untouched(before, files, tmp_path)


@pytest.mark.parametrize("kind", ["truncated", "corrupt"])
def test_damaged_init_checkpoint_is_named(files, tmp_path, kind):
    before = _snapshot(files, tmp_path)
    with pytest.raises(Exception, match=rf"{kind}\.pth.*(truncated|corrupt)"):
        do_train(_train_cfg(files, tmp_path, init_checkpoint=files[kind]))
    _assert_untouched(before, files, tmp_path)


def test_wrong_model_size_fails_in_training(files, tmp_path):
    # detectron2's own checkpointer would log "Skip loading parameter ..." for every backbone weight and train on
    before = _snapshot(files, tmp_path)
    with pytest.raises(CheckpointError, match=r"patch_embed\.proj\.weight: \(24, 3, 7, 7\) in the checkpoint"):
        do_train(_train_cfg(files, tmp_path, init_checkpoint=files["wide"]))
    _assert_untouched(before, files, tmp_path)


def test_wrong_model_size_names_the_keys(files):
    model = instantiate(tiny_train_config([NAME], None, "unused", num_classes=4, image_size=64).model)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    before = _digest(files["wide"])
    with pytest.raises(CheckpointError, match=r"size mismatch at 'backbone.bottom_up'.*patch_embed\.proj\.weight"):
        HieraDetCheckpointer(model).load(files["wide"])
    assert _digest(files["wide"]) == before
    # the model was not partly loaded either
    assert all(torch.equal(ref[k], v) for k, v in model.state_dict().items())
    # the right size loads
    HieraDetCheckpointer(model).load(files["good"])


@pytest.mark.parametrize("kind", ["truncated", "corrupt"])
def test_checkpointer_names_a_damaged_file(files, kind):
    model = instantiate(tiny_train_config([NAME], None, "unused", num_classes=4, image_size=64).model)
    with pytest.raises(CheckpointError, match=rf"{kind}\.pth.*not a torch checkpoint: truncated or corrupt") as e:
        HieraDetCheckpointer(model).load(files[kind])
    assert "allow_pickle" not in str(e.value)  # a damaged file is not a trust question
    # even when pickles are allowed, random bytes are never unpickled
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        load_checkpoint_file(files[kind], allow_pickle=True)


def test_resume_from_a_damaged_last_checkpoint_is_named(files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    damaged = out / "model_0000004.pth"
    with open(files["truncated"], "rb") as src, open(damaged, "wb") as dst:
        dst.write(src.read())
    (out / "last_checkpoint").write_text("model_0000004.pth")
    before = _digest(damaged)
    with pytest.raises(Exception, match=r"model_0000004\.pth"):
        do_train(_train_cfg(files, tmp_path, max_iter=8), resume=True)
    assert _digest(damaged) == before and (out / "last_checkpoint").read_text() == "model_0000004.pth"
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_0000004.pth"]


def test_missing_dataset_file_is_named(files, tmp_path):
    name = "reliability_missing_json"
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(tmp_path / "gone.json"), str(tmp_path))
    cfg = tiny_train_config([name], None, str(tmp_path / "out"), num_classes=4)
    with pytest.raises(FileNotFoundError, match=r"annotation file '.*gone\.json' does not exist"):
        do_train(cfg)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.pth"))


def test_unregistered_dataset_is_named(tmp_path):
    cfg = tiny_train_config(["no_such_dataset_train"], None, str(tmp_path / "out"), num_classes=4)
    with pytest.raises(KeyError, match=r"dataset 'no_such_dataset_train' is not registered"):
        do_train(cfg)


def test_missing_config_file_is_named(tmp_path):
    spec = importlib.util.spec_from_file_location("_train_net", os.path.join(ROOT, "tools", "lazyconfig_train_net.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = tool.build_parser().parse_args(["--config-file", str(tmp_path / "nope.py")])
    with pytest.raises(FileNotFoundError, match=r"config file '.*nope\.py' does not exist"):
        tool.setup(args)
