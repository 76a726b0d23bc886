"""End-to-end run of tools/pretrain.py (generated images, CPU; slow). The reproduction's quick run is in
tests/test_reproduce_bug.py."""

import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *args], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_pretrain_tool_on_generated_images_and_resume(tmp_path):
    out = tmp_path / "run"
    common = [
        os.path.join(ROOT, "tools/pretrain.py"),
        "--config-file",
        os.path.join(ROOT, "configs/pretrain/mae_hiera_toy_shapes.py"),
    ]
    opts = [f"train.output_dir={out}", f"dataloader.dataset.root={tmp_path / 'data'}"]
    opts += ["dataloader.dataset.num_images=8", "dataloader.total_batch_size=4", "train.log_period=1"]
    r = _run(common + opts + ["train.max_iter=2", "train.checkpoint_period=2"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "eta" in r.stderr + r.stdout
    r = _run(common + ["--resume"] + opts + ["train.max_iter=3", "train.checkpoint_period=2"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr + r.stdout
    ck = torch.load(out / "hieradet_backbone_final.pth", weights_only=False)
    assert ck["__hieradet__"]["mae"]["iteration"] == 3
    assert ck["__hieradet__"]["embed_kwargs"]["pos_embed_global"] == 2
    # an empty image folder fails with a message naming it
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / ".complete_8_96_0").write_text("ok")
    r = _run(common + [f"train.output_dir={tmp_path / 'x'}", f"dataloader.dataset.root={tmp_path / 'empty'}",
                       "dataloader.dataset.num_images=8"], tmp_path)  # fmt: skip
    assert r.returncode != 0 and "holds no images" in r.stderr
