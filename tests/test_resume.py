"""Resuming: a run killed with SIGKILL between checkpoints and restarted with ``--resume`` continues from the
last checkpoint, and with a fixed seed its losses equal an uninterrupted run's from that iteration on."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import SimpleTrainer, hooks

from hieradet.data import generate_synthetic_dataset
from hieradet.data.samplers import ResumableTrainingSampler, find_sampler
from hieradet.engine.hooks import DeterministicResumeHook
from hieradet.testing import tiny_train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "resume_train"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_data")
    paths = generate_synthetic_dataset(str(root), num_train=5, num_val=1, image_size=64, seed=2)
    if NAME in DatasetCatalog.list():
        DatasetCatalog.remove(NAME)
        MetadataCatalog.remove(NAME)
    register_coco_instances(NAME, {}, paths["train"], str(root / "train"))
    return {"json": paths["train"], "images": str(root / "train")}


def test_sampler_starts_anywhere_in_the_stream():
    full = ResumableTrainingSampler(7, seed=5)
    it = iter(full)
    stream = [next(it) for _ in range(40)]
    assert sorted(stream[:7]) == list(range(7)) and sorted(stream[7:14]) == list(range(7))  # shuffled epochs
    assert stream[:7] != stream[7:14]
    late = ResumableTrainingSampler(7, seed=5)
    late.set_start_iter(3, batch_size_per_rank=4)  # iteration 3 of batch 4 = stream position 12
    it = iter(late)
    assert [next(it) for _ in range(28)] == stream[12:40]
    with pytest.raises(ValueError, match="positive int"):
        ResumableTrainingSampler(0)


def test_sampler_with_repeat_factors_starts_anywhere():
    """LVIS's repeat-factor sampling, resumable: per epoch, image i appears floor(r_i) or ceil(r_i) times
    (r_i on average); the stream started at any iteration continues the uninterrupted one."""
    factors = torch.tensor([1.0, 2.5, 1.0, 0.3, 4.0])
    it = iter(ResumableTrainingSampler(repeat_factors=factors, seed=3))
    stream = [next(it) for _ in range(8800)]
    counts = torch.bincount(torch.tensor(stream), minlength=5).double() / (8800 / float(factors.sum()))
    torch.testing.assert_close(counts, factors.double(), rtol=0.05, atol=0.0)
    epoch0 = ResumableTrainingSampler(repeat_factors=factors, seed=3)._epoch(0)
    assert sorted(set(epoch0)) in ([0, 1, 2, 4], [0, 1, 2, 3, 4]) and epoch0.count(4) == 4
    assert epoch0.count(1) in (2, 3)
    for start_iter in (0, 1, 4, 7, 30):
        late = ResumableTrainingSampler(repeat_factors=factors, seed=3)
        late.set_start_iter(start_iter, batch_size_per_rank=2)
        it = iter(late)
        assert [next(it) for _ in range(40)] == stream[2 * start_iter : 2 * start_iter + 40], start_iter
    with pytest.raises(ValueError, match="at least one factor >= 1"):
        ResumableTrainingSampler(repeat_factors=[0.5, 0.2])
    with pytest.raises(ValueError, match="2 repeat factors for a dataset of 3"):
        ResumableTrainingSampler(3, repeat_factors=[1.0, 1.0])


def test_sampler_seed_follows_train_seed_when_not_given():
    """The configs build the sampler without a seed; DeterministicResumeHook (train.seed) fixes it."""
    drawn = ResumableTrainingSampler(7)
    assert not drawn.seed_given
    drawn.set_seed(5)
    it, ref = iter(drawn), iter(ResumableTrainingSampler(7, seed=5))
    assert [next(it) for _ in range(20)] == [next(ref) for _ in range(20)]
    assert ResumableTrainingSampler(7, seed=-1).seed_given is False  # train.seed=-1 style: random


def _trainer(dataset, tmp_path, seed=0):
    cfg = tiny_train_config([NAME], None, str(tmp_path), num_classes=4, image_size=64, ims_per_batch=2, seed=seed)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    loader = instantiate(cfg.dataloader.train)
    assert find_sampler(loader) is not None
    trainer = SimpleTrainer(model, loader, instantiate(cfg.optimizer))
    os.makedirs(tmp_path, exist_ok=True)
    ckpt = DetectionCheckpointer(model, str(tmp_path), trainer=trainer)
    trainer.register_hooks([DeterministicResumeHook(seed=seed), hooks.PeriodicCheckpointer(ckpt, 2)])
    losses = {}

    def record():
        losses[trainer.iter] = {k: v[0] for k, v in trainer.storage.latest().items() if k.startswith("loss_")}

    trainer.run_step = (lambda step: lambda: (step(), record()))(trainer.run_step)
    return trainer, ckpt, losses


def test_hook_creates_the_loader_iterator_before_the_first_step(dataset, tmp_path):
    """The iterator's creation draws from the global RNG (a loader without its own generator); it must happen in
    before_train, not in the first step after the re-seed (it did in the first step: 6.7e-4 after a resume)."""
    trainer, _, _ = _trainer(dataset, tmp_path)
    trainer.iter = trainer.start_iter = 0
    (hook,) = [h for h in trainer._hooks if isinstance(h, DeterministicResumeHook)]
    assert trainer._data_loader_iter_obj is None
    hook.before_train()
    assert trainer._data_loader_iter_obj is not None


def test_resumed_losses_equal_an_uninterrupted_run(dataset, tmp_path):
    """In-process: 3 iterations straight vs. 2 (checkpoint after iteration 1), a scrambled RNG, then 1 more."""
    trainer, _, straight = _trainer(dataset, tmp_path / "a")
    trainer.train(0, 3)

    trainer, ckpt, first = _trainer(dataset, tmp_path / "b")
    trainer.train(0, 2)
    assert os.path.exists(tmp_path / "b" / "model_0000001.pth")
    torch.manual_seed(1234)  # whatever state the new process has
    trainer, ckpt, resumed = _trainer(dataset, tmp_path / "b")
    ckpt.resume_or_load("", resume=True)
    assert trainer.iter == 1
    trainer.train(trainer.iter + 1, 3)
    assert sorted(resumed) == [2]
    for it in (0, 1):
        assert first[it] == pytest.approx(straight[it], rel=1e-6, abs=1e-7)
    assert resumed[2] == pytest.approx(straight[2], rel=1e-5, abs=1e-6)
    assert resumed[2] != pytest.approx(straight[1], rel=1e-3)  # a different batch: the comparison can fail


# metrics.json holds losses smoothed over up to 20 iterations (detectron2's JSONWriter), whose window restarts at a
# resume; the model wrapper below also records each iteration's raw losses, which must repeat exactly.
CONFIG = """
import json
import os
import random
import torch
from detectron2.config import LazyCall as L
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.utils.events import get_event_storage
from hieradet.testing import tiny_train_config


class RecordLosses(torch.nn.Module):
    def __init__(self, model, path):
        super().__init__()
        self.model, self.path = model, path

    def forward(self, batched_inputs):
        losses = self.model(batched_inputs)
        if self.training:
            row = {{k: float(v) for k, v in losses.items()}}
            with open(self.path, "a") as f:
                f.write(json.dumps(dict(iteration=get_event_storage().iter, **row)) + "\\n")
        return losses


if "{name}" not in DatasetCatalog.list():
    register_coco_instances("{name}", {{}}, "{json}", "{images}")
_cfg = tiny_train_config(["{name}"], None, "{out}", num_classes=4, image_size=64, max_iter={max_iter},
                         checkpoint_period=2, seed=7)
_cfg.model = L(RecordLosses)(model=_cfg.model, path=os.path.join("{out}", "raw_losses.jsonl"))
model, optimizer, lr_multiplier, dataloader, train = (
    _cfg.model, _cfg.optimizer, _cfg.lr_multiplier, _cfg.dataloader, _cfg.train
)
"""


def _cli(config, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "tools", "lazyconfig_train_net.py"), "--config-file", config, *extra]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return cmd, env


def _raw_losses(out):
    """Each iteration's raw losses (the last record of an iteration: a resumed run re-runs the killed one)."""
    rows = {}
    with open(os.path.join(out, "raw_losses.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            rows[r.pop("iteration")] = r
    return rows


def _losses(out):
    rows = {}
    with open(os.path.join(out, "metrics.json")) as f:
        for line in f:
            r = json.loads(line)
            if "total_loss" in r or "loss_cls" in r:
                rows[r["iteration"]] = {k: v for k, v in r.items() if k.startswith("loss_")}
    return rows


@pytest.mark.slow
def test_sigkill_then_resume_from_the_command_line(dataset, tmp_path):
    max_iter = 30
    runs = {}
    for tag in ("straight", "killed"):
        out = tmp_path / tag
        config = tmp_path / f"{tag}_cfg.py"
        config.write_text(CONFIG.format(name=NAME, out=out, max_iter=max_iter, **dataset))
        runs[tag] = (str(config), str(out))

    cmd, env = _cli(runs["straight"][0])
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    straight = _losses(runs["straight"][1])
    assert sorted(straight) == list(range(max_iter))

    # killed between checkpoints: soon after model_0000003.pth (iteration 3), long before the end
    cmd, env = _cli(runs["killed"][0])
    out = runs["killed"][1]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(out, "model_0000003.pth")):
        assert proc.poll() is None and time.time() < deadline, "training ended before its second checkpoint"
        time.sleep(0.05)
    time.sleep(0.3)  # a little into iteration 4
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    with open(os.path.join(out, "last_checkpoint")) as f:
        last = f.read().strip()
    assert last.startswith("model_0") and last != "model_final.pth", last
    resume_from = int(last[6:13]) + 1
    assert 3 < resume_from < max_iter

    cmd, env = _cli(runs["killed"][0], "--resume")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Starting training from iteration {resume_from}" in result.stderr + result.stdout
    assert os.path.exists(os.path.join(out, "model_final.pth"))
    killed = _losses(out)
    assert sorted(killed) == list(range(max_iter)), "every iteration ran (before the kill or after the resume)"
    # do_train registers DeterministicResumeHook (train.seed=7): the losses after the resume are the straight run's
    straight, killed = _raw_losses(runs["straight"][1]), _raw_losses(out)
    assert sorted(straight) == sorted(killed) == list(range(max_iter))
    for it in range(max_iter):
        assert killed[it] == pytest.approx(straight[it], rel=1e-5, abs=1e-6), it
    assert straight[resume_from] != pytest.approx(straight[resume_from - 1], rel=1e-3)  # the comparison can fail


@pytest.fixture(scope="module")
def mixed_shapes(tmp_path_factory):
    """Two registered generated datasets, of landscape (128x96) and portrait (96x128) images: aspect-ratio
    grouping has both groups to fill."""
    from hieradet.data import register_synthetic_dataset

    names = []
    for shape in ((96, 128), (128, 96)):
        root = tmp_path_factory.mktemp(f"mixed_{shape[0]}x{shape[1]}")
        generate_synthetic_dataset(str(root), num_train=7, num_val=2, image_size=shape, seed=shape[0], num_categories=3)
        names.append(register_synthetic_dataset(str(root), prefix=f"resume_mixed_{root.name}")[0])
    return tuple(names)


def _lsj_loader(names, num_workers, grouping, seed=3, batch=2, size=64):
    """The stock configs' train loader (hieradet.data.build_resumable_train_loader with LSJ), shrunk."""
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(os.path.join(ROOT, "configs/COCO/mask_rcnn_hieradet_t_100ep.py"))
    dl = cfg.dataloader.train
    dl.dataset.names = names
    dl.mapper.augmentations[1].target_height = dl.mapper.augmentations[1].target_width = size
    dl.mapper.augmentations[2].crop_size = (size, size)
    dl.total_batch_size, dl.num_workers, dl.aspect_ratio_grouping = batch, num_workers, grouping
    dl.sampler.seed = seed
    return instantiate(dl)


def _fingerprint(batch):
    return [(d["file_name"], tuple(d["image"].shape), float(d["image"].double().sum())) for d in batch]


@pytest.mark.parametrize("num_workers,grouping", [(0, True), (2, True), (0, False)])
def test_loader_restarts_from_its_state(mixed_shapes, num_workers, grouping):
    """The configs' loader: batches (images after the random LSJ resize + crop and flip) restart exactly from
    the state saved after any batch, aspect-ratio groups included, with or without worker processes; and the
    augmentations do not depend on the number of workers or on the caller's RNG."""
    names = mixed_shapes
    reference = _lsj_loader(names, 0, grouping)
    torch.manual_seed(0)
    rng = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    it = iter(reference)
    batches, states = [], []
    for _ in range(9):
        batches.append(_fingerprint(next(it)))
        states.append(reference.state_dict())
    # creating and drawing from the loader leaves the caller's RNGs alone (a resumed first step draws the same)
    assert torch.equal(torch.get_rng_state(), rng[0]) and (np.random.get_state()[1] == rng[1]).all()
    assert random.getstate() == rng[2]
    if grouping:
        assert any(any(s["waiting"]) for s in states), "no image ever waited in a group: the test cannot fail"
    for k in (0, 3, 6):
        torch.manual_seed(k + 100)  # whatever RNG state the resumed process has
        resumed = _lsj_loader(names, num_workers, grouping)
        resumed.load_state_dict(states[k])
        it = iter(resumed)
        assert [_fingerprint(next(it)) for _ in range(9 - k - 1)] == batches[k + 1 :], k
    assert batches[1] != batches[0]
