"""Crash-safe writes (hieradet.checkpoint.atomic): a process killed mid-write leaves no incomplete file under the
final name; checkpoints and last_checkpoint are replaced whole; metrics.json never holds a torn line."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.utils.events import EventStorage

from hieradet.checkpoint import HieraDetCheckpointer
from hieradet.checkpoint.atomic import AtomicJSONWriter, atomic_open, atomic_torch_save, remove_partial_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_atomic_open_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(str(path), "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["results.json"]
    with atomic_open(str(path), "w") as f:
        f.write("new")
        assert path.read_text() == "old"  # not visible before the rename
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["results.json"]
    atomic_torch_save({"a": torch.arange(3)}, str(tmp_path / "x.pth"))
    assert torch.equal(torch.load(tmp_path / "x.pth")["a"], torch.arange(3))


KILLED_SAVE = """
import runpy, sys, torch
from hieradet.checkpoint import HieraDetCheckpointer
assert runpy.run_path(sys.argv[2])["install_from_env"]()  # tests/pause_write.py: the library has no test hook
model = torch.nn.Linear(200, 200)
ckpt = HieraDetCheckpointer(model, sys.argv[1])
ckpt.save("model_0000001")
ckpt.save("model_0000003")  # paused after 64 KiB by HIERADET_TEST_PAUSE_WRITE, then killed
"""


def test_checkpoint_killed_mid_write_leaves_the_previous_one(tmp_path):
    """A real SIGKILL in the middle of torch.save of model_0000003.pth: no file of that name, last_checkpoint still
    names the previous checkpoint, and resume_or_load removes the half-written temporary file and loads it."""
    env = dict(os.environ, PYTHONPATH=ROOT, HIERADET_TEST_PAUSE_WRITE="model_0000003.pth:300")
    helper = os.path.join(ROOT, "tests", "pause_write.py")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(tmp_path), helper], env=env, cwd=str(tmp_path))
    deadline = time.time() + 300
    try:
        while not [p for p in glob.glob(str(tmp_path / ".model_0000003.pth.*.partial")) if os.path.getsize(p) > 65536]:
            assert proc.poll() is None and time.time() < deadline, "the save did not reach its pause"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert sorted(os.listdir(tmp_path))[1:] == ["last_checkpoint", "model_0000001.pth"]  # [0]: the temporary file
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    model = torch.nn.Linear(200, 200)
    HieraDetCheckpointer(model, str(tmp_path)).resume_or_load("", resume=True)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    saved = torch.load(tmp_path / "model_0000001.pth", weights_only=False)["model"]
    assert torch.equal(model.weight, saved["weight"])


def test_metrics_json_lines_are_whole(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 0, "loss": 1.0}\n{"iteration": 1, "lo')  # an older writer killed mid-line
    writer = AtomicJSONWriter(str(path))
    with EventStorage(2) as storage:
        storage.put_scalar("loss", 0.5, smoothing_hint=False)
        writer.write()
        storage.step()
        storage.put_scalar("loss", 0.25, smoothing_hint=False)
        writer.write()
    writer.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"iteration": 0, "loss": 1.0}, {"iteration": 2, "loss": 0.5}, {"iteration": 3, "loss": 0.25}]


def test_remove_partial_files_only_removes_temporaries(tmp_path):
    (tmp_path / ".model_0000003.pth.123.abcd1234.partial").write_bytes(b"x")
    (tmp_path / "model_0000001.pth").write_bytes(b"y")
    assert len(remove_partial_files(str(tmp_path))) == 1
    assert os.listdir(tmp_path) == ["model_0000001.pth"]
