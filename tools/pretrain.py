#!/usr/bin/env python
"""Sparse MAE pretraining of a Hiera backbone (Ryali et al. 2023) with a full-grid or absolute-win position embedding.

    python tools/pretrain.py --config-file configs/pretrain/mae_hiera_b.py --num-gpus 8 \
        dataloader.dataset.root=/path/to/imagenet/train
    python tools/pretrain.py --config-file configs/pretrain/mae_hiera_toy_shapes.py      # generated images, CPU
    python tools/pretrain.py --config-file ... --resume                                   # continue a run

Writes ``train.output_dir/hieradet_backbone_final.pth``, a detection ``train.init_checkpoint`` (see
docs/pretraining.md). DDP through detectron2's ``launch``; AMP on CUDA.
"""

import logging

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from hieradet.pretrain.engine import pretrain

logger = logging.getLogger("hieradet.pretrain")


def main(args) -> dict:
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="hieradet")
    model = instantiate(cfg.model)
    dataset = instantiate(cfg.dataloader.dataset)
    logger.info("MAE on %d images from %s", len(dataset), getattr(dataset, "root", type(dataset).__name__))
    t = cfg.train
    return pretrain(
        model,
        dataset,
        output_dir=t.output_dir,
        max_iter=t.max_iter,
        batch_size=cfg.dataloader.total_batch_size,
        lr=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.weight_decay,
        betas=tuple(cfg.optimizer.betas),
        warmup_iters=t.warmup_iters,
        checkpoint_period=t.checkpoint_period,
        log_period=t.log_period,
        num_workers=cfg.dataloader.num_workers,
        amp=t.amp,
        resume=args.resume,
        seed=t.seed,
        device=t.get("device"),
    )


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
