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
