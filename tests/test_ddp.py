"""Distributed training on CPU: 2 processes (gloo) started by detectron2's ``launch``.

One DDP step on a batch of 4 (2 per rank) must give the same gradients and updated parameters as one
single-process step on the same 4 images; and ``hieradet.engine.do_train`` must run a few iterations in
2 processes."""

import json
import os

import pytest
import torch
from detectron2.config import instantiate
from detectron2.engine import create_ddp_model, launch
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from hieradet.testing import tiny_mask_rcnn

pytestmark = pytest.mark.filterwarnings("ignore")


def _batch(n=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(n):
        inst = Instances((size, size))
        x0, y0 = 4 + 3 * k, 6 + 2 * k
        inst.gt_boxes = Boxes(torch.tensor([[x0, y0, x0 + 30.0, y0 + 24.0], [30.0, 28.0, 60.0, 62.0]]))
        inst.gt_classes = torch.tensor([k % 4, (k + 1) % 4])
        img = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g)
        out.append({"image": img, "instances": inst, "height": size, "width": size})
    return out


def _model():
    cfg = tiny_mask_rcnn("hieradet", num_classes=4, img_size=64, mask=False)
    # use every labelled anchor / proposal: no random subsampling, so 1 and 2 processes see the same samples
    cfg.proposal_generator.batch_size_per_image = 100_000
    cfg.roi_heads.batch_size_per_image = 100_000
    torch.manual_seed(0)
    return instantiate(cfg)


def _step(model, batch):
    """One SGD step; returns (grads, params) of the (unwrapped) model after the step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with EventStorage(0):
        losses = model(batch)
    sum(losses.values()).backward()
    inner = model.module if hasattr(model, "module") else model
    grads = {n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None}
    opt.step()
    return grads, {n: p.detach().clone() for n, p in inner.named_parameters()}


def _ddp_worker(out_file):
    torch.set_num_threads(1)
    model = _model()
    rank, world = comm.get_rank(), comm.get_world_size()
    assert world == 2 and torch.distributed.get_backend() == "gloo"
    ddp = create_ddp_model(model, broadcast_buffers=False, device_ids=None)
    grads, params = _step(ddp, _batch()[rank * 2 : rank * 2 + 2])
    if rank == 0:
        torch.save({"grads": grads, "params": params}, out_file)
    comm.synchronize()


def test_ddp_step_matches_single_process(tmp_path):
    out_file = str(tmp_path / "ddp.pt")
    launch(_ddp_worker, 2, dist_url="auto", args=(out_file,))
    ddp = torch.load(out_file)
    grads, params = _step(_model(), _batch())
    assert ddp["grads"].keys() == grads.keys() and len(grads) > 50
    for n, g in grads.items():
        torch.testing.assert_close(ddp["grads"][n], g, rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"grad of {n}: {m}")
    for n, p in params.items():
        torch.testing.assert_close(ddp["params"][n], p, rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
    moved = sum(float((params[n] - p).abs().sum()) for n, p in _model().named_parameters())
    assert moved > 0  # the step did something, so the comparison can fail


def _train_worker(root):
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    from hieradet.engine import do_train
    from hieradet.testing import tiny_train_config

    torch.set_num_threads(1)
    if "ddp_train" not in DatasetCatalog.list():
        register_coco_instances(
            "ddp_train", {}, os.path.join(root, "annotations", "instances_train.json"), os.path.join(root, "train")
        )
    cfg = tiny_train_config(
        ["ddp_train"], None, os.path.join(root, "out"), num_classes=4, image_size=64, max_iter=2, ims_per_batch=2
    )
    do_train(cfg)


@pytest.mark.slow
def test_do_train_runs_in_two_cpu_processes(tmp_path):
    from hieradet.data import generate_synthetic_dataset

    paths = generate_synthetic_dataset(str(tmp_path), num_train=4, num_val=1, image_size=64, seed=4)
    assert paths["train"] == os.path.join(str(tmp_path), "annotations", "instances_train.json")
    launch(_train_worker, 2, dist_url="auto", args=(str(tmp_path),))  # train.device=cpu: DDP without device_ids
    with open(tmp_path / "out" / "metrics.json") as f:
        rows = [json.loads(line) for line in f]
    assert [r["iteration"] for r in rows if "loss_cls" in r] == [0, 1]


# ------------------------------------------------------------------ two "machines" through the training tool
DDP_CONFIG = """
import torch
from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

from hieradet.data.loader import build_resumable_train_loader
from hieradet.testing import tiny_train_config

_cfg = tiny_train_config(["ddp_machines_train"], None, "unused", num_classes=4, image_size=64, max_iter=4,
                         ims_per_batch=4, augment=False, mask=False, checkpoint_period=2)
# every labelled anchor and proposal is used (no random subsampling), so 1 and 2 processes see the same samples
_cfg.model.proposal_generator.batch_size_per_image = 100000
_cfg.model.roi_heads.batch_size_per_image = 100000
_cfg.model.roi_heads.proposal_append_gt = False
# the configs' loader (a ResumableTrainLoader: its state, per rank, goes into the checkpoint), in stream order
_cfg.dataloader.train._target_ = build_resumable_train_loader
_cfg.optimizer = L(torch.optim.SGD)(params=L(get_default_optimizer_params)(), lr=0.02, momentum=0.9)
model, optimizer, lr_multiplier, dataloader, train = (
    _cfg.model, _cfg.optimizer, _cfg.lr_multiplier, _cfg.dataloader, _cfg.train
)
"""


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tool(config, dataset, out, machines=1, rank=0, port=0, resume=False, max_iter=4):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, os.path.join(root, "tools", "lazyconfig_train_net.py"), "--config-file", config]
    cmd += ["--dataset", "ddp_machines_train", *dataset, "--num-gpus", "1"]
    if machines > 1:
        cmd += ["--num-machines", str(machines), "--machine-rank", str(rank), "--dist-url", f"tcp://127.0.0.1:{port}"]
    cmd += ["--resume"] if resume else []
    cmd += ["train.device=cpu", f"train.output_dir={out}", f"train.max_iter={max_iter}"]
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_all(procs):
    outs = [p.communicate(timeout=900)[0] for p in procs]
    return [p.returncode for p in procs], outs


@pytest.mark.slow
def test_two_machines_equal_one_process_and_resume_at_another_world_size(tmp_path):
    """``tools/lazyconfig_train_net.py --num-machines 2 --machine-rank 0/1`` (one CPU process each, gloo) against
    one process, the same total batch of 4 for 4 SGD steps: the same final weights within float tolerance
    (rtol 1e-4, atol 1e-6: the two ranks' gradients are summed by gloo's all-reduce, one process sums the batch
    itself, and float32 addition is not associative). Then a resume at another world size (2 -> 1 and 1 -> 2) is
    refused with a message naming both counts."""
    from hieradet.data import generate_synthetic_dataset

    # one object per image, so that every image has as many ROI samples and the per-rank loss means add up
    files = generate_synthetic_dataset(str(tmp_path / "data"), num_train=8, num_val=1, image_size=64, max_objects=1)
    with open(files["train"]) as f:
        assert all(n == 1 for n in _count_annotations(json.load(f)))
    dataset = [files["train"], str(tmp_path / "data" / "train")]
    config = tmp_path / "ddp_config.py"
    config.write_text(DDP_CONFIG)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    port = _free_port()
    codes, logs = _run_all(
        [_tool(str(config), dataset, one)] + [_tool(str(config), dataset, two, 2, r, port) for r in (0, 1)]
    )
    assert codes == [0, 0, 0], "\n".join(log[-3000:] for log in logs)
    a = torch.load(os.path.join(one, "model_final.pth"), weights_only=False)["model"]
    b = torch.load(os.path.join(two, "model_final.pth"), weights_only=False)["model"]
    start = torch.load(os.path.join(one, "model_0000001.pth"), weights_only=False)["model"]
    assert a.keys() == b.keys()
    worst = max(((a[k] - b[k]).abs().max() / (a[k].abs().max() + 1e-12)).item() for k in a if a[k].is_floating_point())
    print(f"2 machines vs 1 process: largest relative difference of a weight tensor {worst:.2e}")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    assert sum(float((a[k] - start[k]).abs().sum()) for k in a) > 0  # training moved the weights
    with open(os.path.join(one, "metrics.json")) as f:
        assert json.loads(f.readline())["loss_cls"] > 0.1  # the box head had samples to learn from

    # 2 -> 1 (in this process, as the tool would run it) and 1 -> 2 (two processes): refused
    from detectron2.config import LazyConfig
    from detectron2.data import DatasetCatalog

    from hieradet.engine import do_train, register_json_dataset

    if "ddp_machines_train" in DatasetCatalog.list():
        DatasetCatalog.remove("ddp_machines_train")
    register_json_dataset("ddp_machines_train", *dataset)
    cfg = LazyConfig.apply_overrides(
        LazyConfig.load(str(config)), ["train.device=cpu", f"train.output_dir={two}", "train.max_iter=6"]
    )
    with pytest.raises(ValueError, match="written by 2 processes .* and this run has 1: an exact resume needs"):
        do_train(cfg, resume=True)
    port = _free_port()
    codes, logs = _run_all([_tool(str(config), dataset, one, 2, r, port, resume=True, max_iter=6) for r in (0, 1)])
    assert codes[0] != 0 and "written by 1 process" in logs[0] and "this run has 2" in logs[0], logs[0][-3000:]


def _count_annotations(coco):
    counts = {im["id"]: 0 for im in coco["images"]}
    for a in coco["annotations"]:
        counts[a["image_id"]] += 1
    return list(counts.values())
