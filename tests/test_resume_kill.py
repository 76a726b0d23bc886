"""``kill -9`` of ``tools/lazyconfig_train_net.py`` at real moments, then ``--resume``: the stock COCO and LVIS
configs, shrunk only by command-line overrides (128 px LSJ, 3 classes, batch 2, fewer proposals and ROI samples),
with the recipe loader (aspect-ratio grouping; 2 workers on this machine) and with ``num_workers=0``.

Each resumed run is compared with one uninterrupted run: every iteration's raw losses and the final weights must
be identical (bit for bit), and no file in the output folder may be incomplete under its final name.

The config file below only loads the stock config and swaps the model class for a subclass that appends each
step's raw losses to ``$RAW_LOSSES`` (and a line to ``$EVAL_MARK`` while evaluating), so that the test can see
every iteration (``metrics.json`` holds smoothed losses) and kill during an evaluation.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from hieradet.data import generate_synthetic_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_ITER = 6
CONFIGS = {"coco": "configs/COCO/mask_rcnn_hieradet_t_100ep.py", "lvis": "configs/LVIS/mask_rcnn_hieradet_b_100ep.py"}

RECORDING_CONFIG = """
import json
import os

from detectron2.config import LazyConfig
from detectron2.modeling import GeneralizedRCNN
from detectron2.utils.events import get_event_storage


def _append(path, row):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\\n").encode())
    finally:
        os.close(fd)


class RecordingRCNN(GeneralizedRCNN):
    def forward(self, batched_inputs):
        if not self.training:
            _append(os.environ["EVAL_MARK"], {{"images": len(batched_inputs)}})
            return super().forward(batched_inputs)
        losses = super().forward(batched_inputs)
        row = {{k: float(v) for k, v in losses.items()}}
        row["iteration"] = get_event_storage().iter
        row["files"] = [os.path.basename(d["file_name"]) for d in batched_inputs]
        _append(os.environ["RAW_LOSSES"], row)
        return losses


if os.environ.get("HIERADET_TEST_PAUSE_WRITE"):  # a test-side hook (tests/pause_write.py), not the library's
    import runpy

    runpy.run_path({pause_helper!r})["install_from_env"]()

_cfg = LazyConfig.load({base!r})
_cfg.model._target_ = RecordingRCNN
model, optimizer, lr_multiplier, dataloader, train = (
    _cfg.model, _cfg.optimizer, _cfg.lr_multiplier, _cfg.dataloader, _cfg.train
)
"""


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Landscape and portrait generated datasets (3 classes) in COCO and LVIS format, as --dataset arguments."""
    args = {}
    for fmt in ("coco", "lvis"):
        names, extra = [], []
        for h, w in ((96, 128), (128, 96)):
            root = tmp_path_factory.mktemp(f"kill_{fmt}_{h}x{w}")
            files = generate_synthetic_dataset(
                str(root), num_train=5, num_val=1, image_size=(h, w), seed=h, fmt=fmt, num_categories=3
            )
            name = f"kill_{fmt}_{h}x{w}"
            # detectron2 finds an LVIS image under image_root by its coco_url's last two parts (split/file)
            for split in ("train", "val"):
                image_root = root if fmt == "lvis" else root / split
                extra += ["--dataset", f"{name}_{split}", files[split], str(image_root)]
            names.append(name)
        args[fmt] = (names, extra)
    return args


def _command(tmp_path, fmt, datasets, out, workers, eval_period=0, resume=False):
    base = CONFIGS[fmt]
    config = tmp_path / f"recording_{fmt}.py"
    helper = os.path.join(ROOT, "tests", "pause_write.py")
    config.write_text(RECORDING_CONFIG.format(base=os.path.join(ROOT, base), pause_helper=helper))
    names, extra = datasets[fmt]
    train = "[" + ",".join(f"{n}_train" for n in names) + "]"
    opts = [
        f"dataloader.train.dataset.names={train}",
        f"dataloader.test.dataset.names={names[0]}_val",
        "model.roi_heads.num_classes=3",
        "model.backbone.bottom_up.img_size=128",
        "dataloader.train.mapper.augmentations.1.target_height=128",
        "dataloader.train.mapper.augmentations.1.target_width=128",
        "dataloader.train.mapper.augmentations.2.crop_size=[128,128]",
        "dataloader.test.mapper.augmentations.0.short_edge_length=128",
        "dataloader.test.mapper.augmentations.0.max_size=128",
        "dataloader.train.total_batch_size=2",
        f"dataloader.train.num_workers={workers}",
        "dataloader.train.aspect_ratio_grouping=True",
        "dataloader.test.num_workers=0",
        # fewer proposals and ROI samples: CPU speed; the data path and training loop are the stock ones
        "model.proposal_generator.post_nms_topk=[200,100]",
        "model.roi_heads.batch_size_per_image=64",
        f"train.max_iter={MAX_ITER}",
        "train.checkpointer.period=2",
        "train.seed=0",
        "train.device=cpu",
        f"train.eval_period={eval_period}",
        "train.log_period=1",
        f"train.output_dir={out}",
    ]
    if fmt == "lvis":
        opts += ["model.backbone.bottom_up.embed_dim=96", "model.backbone.bottom_up.stages=[1,2,7,2]"]
        opts += ["model.backbone.bottom_up.global_blocks=[5,7,9]"]  # LVIS has no T config: T by overrides
        opts += ["model.roi_heads.box_predictor.fed_loss_num_classes=2"]  # of 3 classes
    cmd = [sys.executable, os.path.join(ROOT, "tools", "lazyconfig_train_net.py"), "--config-file", str(config)]
    cmd += extra + (["--resume"] if resume else []) + opts
    env = dict(
        os.environ,
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
        RAW_LOSSES=os.path.join(out, "raw_losses.jsonl"),
        EVAL_MARK=os.path.join(out, "eval_mark.jsonl"),
    )
    return cmd, env


def _run(cmd, env):
    os.makedirs(env["RAW_LOSSES"].rsplit(os.sep, 1)[0], exist_ok=True)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout + result.stderr


def _raw_losses(out):
    rows = {}
    with open(os.path.join(out, "raw_losses.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            rows[r.pop("iteration")] = r  # the last record: a resumed run re-runs the killed iteration
    return rows


def _final_weights(out):
    return torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)["model"]


def _max_weight_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _kill_when(cmd, env, ready, what):
    os.makedirs(os.path.dirname(env["RAW_LOSSES"]), exist_ok=True)
    log = os.path.join(os.path.dirname(env["RAW_LOSSES"]), "killed_run.log")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.time() + 1200
    try:
        while not ready():
            if proc.poll() is not None:
                with open(log) as f:
                    raise AssertionError(f"training ended before {what}:\n" + f.read()[-4000:])
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def _lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def _check_files_complete(out):
    """Every file under a final name is complete: checkpoints load, last_checkpoint names one, metrics.json parses;
    no temporary file is left (the resume removed them)."""
    for path in glob.glob(os.path.join(out, "model_*.pth")):
        torch.load(path, map_location="cpu", weights_only=False)
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert os.path.isfile(os.path.join(out, f.read().strip()))
    with open(os.path.join(out, "metrics.json")) as f:
        for line in f:
            json.loads(line)
    assert not glob.glob(os.path.join(out, ".*.partial"))


@pytest.fixture(scope="module")
def reference(datasets, tmp_path_factory):
    """One uninterrupted run per dataset format (no workers; the batches do not depend on the worker count)."""
    runs = {}

    def get(fmt, eval_period=0):
        key = (fmt, eval_period)
        if key not in runs:
            out = str(tmp_path_factory.mktemp(f"reference_{fmt}_{eval_period}"))
            _run(*_command(tmp_path_factory.mktemp("cfg"), fmt, datasets, out, workers=0, eval_period=eval_period))
            losses = _raw_losses(out)
            assert sorted(losses) == list(range(MAX_ITER))
            runs[key] = (losses, _final_weights(out))
            shutil.rmtree(out)  # what the comparisons need is in memory; its checkpoints are 2 GB of disk
        return runs[key]

    return get


def _resume_and_compare(tmp_path, fmt, datasets, out, workers, reference, expect_start, eval_period=0):
    log = _run(*_command(tmp_path, fmt, datasets, out, workers, eval_period, resume=True))
    assert f"Starting training from iteration {expect_start}" in log
    _check_files_complete(out)
    ref_losses, ref_weights = reference(fmt, eval_period)
    losses = _raw_losses(out)
    assert sorted(losses) == list(range(MAX_ITER))
    for it in range(MAX_ITER):
        assert losses[it] == ref_losses[it], it  # same images, same losses, bit for bit
    assert ref_losses[expect_start] != ref_losses[expect_start - 1]  # the comparison can fail
    diff = _max_weight_diff(_final_weights(out), ref_weights)
    print(f"{fmt} workers={workers}: max final weight difference after the resume: {diff}")
    assert diff == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("fmt,workers", [("coco", 0), ("coco", 2), ("lvis", 2)])
def test_kill_in_the_middle_of_a_step(datasets, reference, tmp_path, fmt, workers):
    """Killed inside iteration 4 (its forward has run, backward and the update have not finished)."""
    out = str(tmp_path / "out")
    cmd, env = _command(tmp_path, fmt, datasets, out, workers)
    _kill_when(cmd, env, lambda: any(r["iteration"] == 4 for r in _lines(env["RAW_LOSSES"])), "iteration 4")
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000003.pth"
    _resume_and_compare(tmp_path, fmt, datasets, out, workers, reference, expect_start=4)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2])
def test_kill_in_the_middle_of_a_checkpoint_write(datasets, reference, tmp_path, workers):
    """Killed while model_0000003.pth is being written (the write pauses after 64 KiB: tests/pause_write.py,
    installed by the recording config): only a hidden temporary file holds the half-written bytes, last_checkpoint still
    names model_0000001.pth, and the resume starts at iteration 2."""
    out = str(tmp_path / "out")
    cmd, env = _command(tmp_path, "coco", datasets, out, workers)
    env["HIERADET_TEST_PAUSE_WRITE"] = "model_0000003.pth:600"

    def writing():
        partial = glob.glob(os.path.join(out, ".model_0000003.pth.*.partial"))
        return any(os.path.getsize(p) >= 64 * 1024 for p in partial)

    _kill_when(cmd, env, writing, "the write of model_0000003.pth")
    assert not os.path.exists(os.path.join(out, "model_0000003.pth"))
    assert glob.glob(os.path.join(out, ".model_0000003.pth.*.partial"))  # the killed write, under a temporary name
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000001.pth"
    env.pop("HIERADET_TEST_PAUSE_WRITE")
    _resume_and_compare(tmp_path, "coco", datasets, out, workers, reference, expect_start=2)


@pytest.mark.slow
def test_kill_in_the_middle_of_an_evaluation(datasets, reference, tmp_path):
    """Killed while evaluating after iteration 3 (train.eval_period=4; the checkpoint of iteration 3 was written
    before): the resume starts at iteration 4 (that evaluation is not repeated) and training is identical."""
    out = str(tmp_path / "out")
    cmd, env = _command(tmp_path, "coco", datasets, out, 2, eval_period=4)
    _kill_when(cmd, env, lambda: len(_lines(env["EVAL_MARK"])) > 0, "the evaluation after iteration 3")
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000003.pth"
    _resume_and_compare(tmp_path, "coco", datasets, out, 2, reference, expect_start=4, eval_period=4)
