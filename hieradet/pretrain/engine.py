"""The MAE pretraining loop: AdamW with linear warmup + cosine decay, AMP on CUDA, DDP (under detectron2's
``launch``), periodic checkpoints with resume, progress with ETA, and the detection-ready backbone file.

Files written to ``train.output_dir``:

* ``mae_{iter:07d}.pth``: the whole training state (MAE model, optimizer, grad scaler, iteration) for resume;
  ``last_checkpoint`` names the newest one;

every file is written through :mod:`hieradet.checkpoint.atomic` (complete under its name, or absent); a resume
removes the temporary files of a write that was killed.
* ``hieradet_backbone_{iter:07d}.pth`` and ``hieradet_backbone_final.pth``: the encoder alone with
  ``__hieradet__`` metadata (:func:`hieradet.pretrain.checkpoint.backbone_checkpoint`), a detection
  ``train.init_checkpoint``.
"""

import datetime
import logging
import math
import os
import time
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..checkpoint.atomic import atomic_open, atomic_torch_save, remove_partial_files
from .checkpoint import backbone_checkpoint
from .mae import HieraMAE

__all__ = ["mae_param_groups", "cosine_lr", "pretrain", "last_checkpoint"]

logger = logging.getLogger(__name__)


def mae_param_groups(model: nn.Module, weight_decay: float = 0.05) -> List[Dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms (1-D tensors), position embeddings and the mask token."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or "pos_embed" in name or "mask_token" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def cosine_lr(it: int, max_iter: int, warmup_iters: int, min_factor: float = 0.0) -> float:
    """Learning-rate factor at iteration ``it``: linear warmup, then cosine decay to ``min_factor``."""
    if warmup_iters > 0 and it < warmup_iters:
        return (it + 1) / warmup_iters
    t = (it - warmup_iters) / max(1, max_iter - warmup_iters)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def last_checkpoint(output_dir: str) -> Optional[str]:
    """The newest training-state file in ``output_dir`` (from ``last_checkpoint``), or None."""
    marker = os.path.join(output_dir, "last_checkpoint")
    if not os.path.exists(marker):
        return None
    with open(marker) as f:
        name = f.read().strip()
    path = os.path.join(output_dir, name)
    return path if os.path.exists(path) else None


def _fmt_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(0, seconds))))


def pretrain(
    model: HieraMAE,
    dataset,
    output_dir: str,
    max_iter: int,
    batch_size: int,
    lr: float = 8e-4,
    weight_decay: float = 0.05,
    betas=(0.9, 0.95),
    warmup_iters: int = 0,
    checkpoint_period: int = 1000,
    log_period: int = 20,
    num_workers: int = 4,
    amp: bool = True,
    resume: bool = False,
    seed: int = 0,
    device: Optional[str] = None,
    progress=None,
) -> Dict[str, Any]:
    """Pretrains ``model`` and writes the files listed in the module doc.

    Args:
        model (HieraMAE): the MAE (on CPU; moved to ``device``).
        dataset: a map-style dataset of normalised (3, H, W) image tensors.
        output_dir (str): where checkpoints go (created).
        max_iter (int): iterations; batch_size (int): images per iteration over all processes.
        lr, weight_decay, betas: AdamW; the lr follows :func:`cosine_lr` with ``warmup_iters``.
        checkpoint_period (int): save every this many iterations (and at the end).
        log_period (int): log loss / lr / ETA every this many iterations.
        num_workers (int): data loader workers per process.
        amp (bool): mixed precision (CUDA only; ignored on CPU).
        resume (bool): continue from ``output_dir/last_checkpoint`` when it exists.
        seed (int): sampler seed.
        device (str or None): default ``cuda`` (this process's GPU) when available, else ``cpu``.
        progress (callable or None): called with a dict after every logged iteration.
    Returns:
        dict with ``losses`` (per iteration, this run), ``start_iter``, ``backbone`` (path of the final file).
    """
    from detectron2.data.samplers import TrainingSampler
    from detectron2.utils import comm
    from torch.utils.data import DataLoader

    if max_iter <= 0:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    world = comm.get_world_size()
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} is not divisible by the {world} processes")
    if len(dataset) == 0:
        raise ValueError("the pretraining dataset is empty")
    if device is None:
        device = f"cuda:{comm.get_local_rank()}" if torch.cuda.is_available() else "cpu"
    use_amp = amp and str(device).startswith("cuda")
    os.makedirs(output_dir, exist_ok=True)
    model = model.to(device)
    optimizer = torch.optim.AdamW(mae_param_groups(model, weight_decay), lr=lr, betas=tuple(betas))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    start_iter = 0
    if resume:
        if comm.is_main_process():
            remove_partial_files(output_dir)
        path = last_checkpoint(output_dir)
        if path is not None:
            state = torch.load(path, map_location=device, weights_only=False)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            start_iter = int(state["iteration"]) + 1
            logger.info("resumed from %s at iteration %d", path, start_iter)
    ddp_model = model
    if world > 1:
        on_gpu = str(device).startswith("cuda")
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[comm.get_local_rank()] if on_gpu else None)
    # a resumed run draws a fresh (but deterministic) image order
    sampler = TrainingSampler(len(dataset), shuffle=True, seed=seed + start_iter)
    loader = DataLoader(
        dataset,
        batch_size=batch_size // world,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=str(device).startswith("cuda"),
        persistent_workers=num_workers > 0,
    )
    data = iter(loader)
    ddp_model.train()
    losses: List[float] = []
    t0, timed = time.perf_counter(), 0
    final_backbone = os.path.join(output_dir, "hieradet_backbone_final.pth")
    for it in range(start_iter, max_iter):
        factor = cosine_lr(it, max_iter, warmup_iters)
        for g in optimizer.param_groups:
            g["lr"] = lr * factor
        images = next(data).to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
            loss = ddp_model(images)["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"MAE loss became {loss.item()} at iteration {it}")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
        timed += 1
        done = it + 1
        if done % log_period == 0 or done == max_iter:
            per_iter = (time.perf_counter() - t0) / timed
            info = dict(iter=done, max_iter=max_iter, loss=losses[-1], lr=lr * factor, sec_per_iter=per_iter)
            info["eta"] = _fmt_eta(per_iter * (max_iter - done))
            if comm.is_main_process():
                logger.info(
                    "iter %d/%d  loss %.4f  lr %.3g  %.3f s/iter  eta %s",
                    done, max_iter, info["loss"], info["lr"], per_iter, info["eta"],
                )  # fmt: skip
            if progress is not None:
                progress(info)
        if comm.is_main_process() and (done % checkpoint_period == 0 or done == max_iter):
            name = f"mae_{it:07d}.pth"
            state = dict(
                model=model.state_dict(), optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), iteration=it
            )
            atomic_torch_save(state, os.path.join(output_dir, name))
            with atomic_open(os.path.join(output_dir, "last_checkpoint"), "w") as f:
                f.write(name)
            extra = dict(iteration=done, mask_ratio=model.mask_ratio, mask_unit=model.mask_unit)
            ck = backbone_checkpoint(model.encoder, model.img_size[0], source_file=name, extra=extra)
            atomic_torch_save(ck, os.path.join(output_dir, f"hieradet_backbone_{it:07d}.pth"))
            if done == max_iter:
                atomic_torch_save(ck, final_backbone)
    comm.synchronize()
    return {"losses": losses, "start_iter": start_iter, "backbone": final_backbone}
