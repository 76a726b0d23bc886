#!/usr/bin/env python
"""The end-to-end demo: generate a shapes dataset, train a small HieraDet Mask R-CNN from scratch on the CPU,
evaluate COCO box and mask AP on the generated val split, and write the results.

    python tools/demo_train.py --output-dir output/demo            # what `make demo` runs
    python tools/demo_train.py --output-dir output/demo_short --max-iter 100

Writes under ``--output-dir``:
    metrics.json        box/mask AP (COCO metrics), iterations, wall time per phase
    loss_curve.png      training losses per iteration
    predictions.png     ground truth (left) and predictions scoring >= --vis-score (right) on val images
    data/               the generated dataset (reused when the same dataset options are asked for again)
    train/              detectron2's log, event files, metrics.json and the final checkpoint

Nothing is downloaded: the model trains from random initialisation. Extra ``key=value`` arguments override the
config (``configs/demo/mask_rcnn_hieradet_shapes.py``), e.g. ``optimizer.lr=5e-4``.
"""

import argparse
import json
import logging
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "demo", "mask_rcnn_hieradet_shapes.py")
logger = logging.getLogger("hieradet.demo")

# The demo's dataset: an easy, quickly learnable task (3 categories of distinct shape and colour, solid fills,
# moderate sizes, little clutter or occlusion). The generator's defaults are much harder (textures, clutter,
# occlusion, small objects); the tests use those.
DATA_OPTIONS = dict(
    num_categories=3,
    textures=("solid",),
    size_range=(0.1, 0.25),
    clutter=2,
    max_objects=4,
    min_visible=0.8,
    category_colours=True,
)


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class _ConsoleFilter(logging.Filter):
    """Console shows the demo's own messages, detectron2's training/inference progress (with ETA) and the
    evaluation tables, and any warning; everything goes to the log file."""

    _SHOW = ("hieradet.demo", "detectron2.utils.events", "detectron2.evaluation", "d2.utils.events", "d2.evaluation")

    def filter(self, record):
        return record.levelno >= logging.WARNING or record.name.startswith(self._SHOW)


class _DropRandomInitWarning(logging.Filter):
    """Drops ``do_train``'s "train.init_checkpoint is empty" warning: training from scratch is the demo's point."""

    def filter(self, record):
        return not str(record.msg).startswith("train.init_checkpoint is empty")


def _setup_logging(log_file: str) -> None:
    from detectron2.utils.logger import setup_logger

    setup_logger(output=log_file, name="detectron2", abbrev_name="d2", configure_stdout=False)
    setup_logger(output=log_file, name="hieradet", configure_stdout=False)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))
    handler.addFilter(_ConsoleFilter())
    for name in ("detectron2", "hieradet"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("fvcore").setLevel(logging.WARNING)


def prepare_data(data_dir: str, num_train: int, num_val: int, image_size: int, seed: int) -> None:
    """Generates the demo dataset into ``data_dir`` unless the same one is already there."""
    from hieradet.data import generate_synthetic_dataset

    options = dict(num_train=num_train, num_val=num_val, image_size=image_size, seed=seed, fmt="coco", **DATA_OPTIONS)
    stamp = os.path.join(data_dir, "demo_dataset_options.json")
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if json.load(f) == json.loads(json.dumps(options)):  # tuples come back as lists
                logger.info("dataset in %s is up to date (%d train / %d val images)", data_dir, num_train, num_val)
                return
    start = time.perf_counter()

    def progress(split, done, total):
        if done % 50 == 0 or done == total:
            elapsed = time.perf_counter() - start
            done_all = done + (num_train if split == "val" else 0)
            eta = elapsed / done_all * (num_train + num_val - done_all)
            logger.info("generating %s images %d/%d  elapsed %s  eta %s", split, done, total, _fmt(elapsed), _fmt(eta))

    generate_synthetic_dataset(data_dir, progress=progress, **options)
    with open(stamp, "w") as f:
        json.dump(options, f)


def plot_losses(train_metrics: str, out_png: str) -> int:
    """Plots the losses detectron2's JSONWriter logged; returns the number of logged points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    with open(train_metrics) as f:
        for line in f:
            row = json.loads(line)
            if "total_loss" in row:
                rows.append(row)
    if not rows:
        raise RuntimeError(f"{train_metrics} has no training losses to plot")
    its = [r["iteration"] + 1 for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(its, [r["total_loss"] for r in rows], color="black", lw=2, label="total_loss")
    for key in sorted(k for k in rows[0] if k.startswith("loss_")):
        ax.plot(its, [r.get(key, float("nan")) for r in rows], lw=1, label=key)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (median over the log period)")
    ax.set_title("demo: HieraDet Mask R-CNN from scratch on generated shapes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return len(rows)


def draw_predictions(predictor, val_name: str, out_png: str, num_images: int, score_thresh: float = 0.5) -> None:
    """Ground truth (left) and the predictions of ``predictor`` (a :class:`hieradet.engine.LazyPredictor`, the
    one ``tools/demo.py`` uses) scoring at least ``score_thresh`` (right), for the first val images."""
    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer
    from PIL import Image

    meta = MetadataCatalog.get(val_name)
    rows = []
    for d in DatasetCatalog.get(val_name)[:num_images]:
        img = read_image(d["file_name"], format="BGR")
        inst = predictor(img)["instances"]
        inst = inst[inst.scores >= score_thresh].to("cpu")
        rgb = img[:, :, ::-1]
        gt = Visualizer(rgb, meta, scale=1.5).draw_dataset_dict(d).get_image()
        pred = Visualizer(rgb, meta, scale=1.5).draw_instance_predictions(inst).get_image()
        rows.append(np.concatenate([gt, np.full((gt.shape[0], 6, 3), 255, np.uint8), pred], 1))
    grid = []
    for i in range(0, len(rows), 2):  # two pairs per row
        pair = rows[i : i + 2]
        if len(pair) == 1:
            pair.append(np.full_like(pair[0], 255))
        grid.append(np.concatenate([pair[0], np.full((pair[0].shape[0], 16, 3), 255, np.uint8), pair[1]], 1))
    Image.fromarray(np.concatenate(grid, 0)).save(out_png)


def run_demo(
    output_dir: str,
    config: str = DEFAULT_CONFIG,
    num_train: int = 1000,
    num_val: int = 50,
    image_size: int = 192,
    max_iter: int = None,
    data_dir: str = None,
    seed: int = 0,
    num_vis: int = 4,
    vis_score: float = 0.7,
    overrides=(),
) -> dict:
    """Runs the whole demo and returns the metrics written to ``<output_dir>/metrics.json``."""
    import torch
    from detectron2.config import LazyConfig
    from detectron2.utils.env import seed_all_rng

    from hieradet.data import register_synthetic_dataset
    from hieradet.engine import do_train
    from hieradet.engine.predictor import LazyPredictor

    t0 = time.perf_counter()
    os.makedirs(output_dir, exist_ok=True)
    data_dir = data_dir or os.path.join(output_dir, "data")
    train_dir = os.path.join(output_dir, "train")
    os.makedirs(train_dir, exist_ok=True)
    _setup_logging(os.path.join(train_dir, "log.txt"))

    logger.info("[1/4] dataset: %d train + %d val images of %dx%d px in %s", num_train, num_val, image_size,
                image_size, data_dir)  # fmt: skip
    prepare_data(data_dir, num_train, num_val, image_size, seed)
    train_name, val_name = register_synthetic_dataset(data_dir, prefix="synthetic_demo")
    t_data = time.perf_counter() - t0

    cfg = LazyConfig.load(config)
    cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    if max_iter is not None:
        if cfg.train.eval_period == cfg.train.max_iter:  # "evaluate at the end" stays at the end
            cfg.train.eval_period = max_iter
        cfg.train.max_iter = max_iter
    if cfg.train.eval_period <= 0 or cfg.train.eval_period > cfg.train.max_iter:
        cfg.train.eval_period = cfg.train.max_iter
    cfg.train.output_dir = train_dir
    cfg.dataloader.train.dataset.names = train_name
    cfg.dataloader.test.dataset.names = val_name
    cfg.dataloader.evaluator.dataset_name = val_name
    cfg.dataloader.evaluator.output_dir = os.path.join(train_dir, "inference")
    for key in ("bottom_up", "net"):
        if key in cfg.model.backbone and cfg.model.backbone[key].get("img_size") is not None:
            cfg.model.backbone[key].img_size = image_size
    LazyConfig.save(cfg, os.path.join(output_dir, "config.yaml"))
    seed_all_rng(seed)

    logger.info("[2/4] training %d iterations on %d CPU threads (progress and eta every %d iterations)",
                cfg.train.max_iter, torch.get_num_threads(), cfg.train.log_period)  # fmt: skip
    if not cfg.train.init_checkpoint:
        logger.info("the model starts from random weights (nothing is downloaded)")
    t1 = time.perf_counter()
    quiet = _DropRandomInitWarning()
    engine_logger = logging.getLogger("hieradet.engine.train_loop")
    engine_logger.addFilter(quiet)
    try:
        results = do_train(cfg, resume=False)  # evaluates on the val split at the end (train.eval_period)
    finally:
        engine_logger.removeFilter(quiet)
    t_train_eval = time.perf_counter() - t1
    if not results or "bbox" not in results:
        raise RuntimeError(f"the demo's evaluation returned no COCO metrics ({results!r}); see {train_dir}/log.txt")

    logger.info("[3/4] drawing the loss curve and predictions on %d val images", num_vis)
    t2 = time.perf_counter()
    n_points = plot_losses(os.path.join(train_dir, "metrics.json"), os.path.join(output_dir, "loss_curve.png"))
    predictor = LazyPredictor(cfg, os.path.join(train_dir, "model_final.pth"), device=str(cfg.train.device))
    draw_predictions(predictor, val_name, os.path.join(output_dir, "predictions.png"), num_vis, vis_score)
    t_vis = time.perf_counter() - t2

    metrics = {
        "bbox": {k: float(v) for k, v in results["bbox"].items()},
        "segm": {k: float(v) for k, v in results.get("segm", {}).items()},
        "iterations": int(cfg.train.max_iter),
        "batch_size": int(cfg.dataloader.train.total_batch_size),
        "dataset": {
            "train": num_train,
            "val": num_val,
            "image_size": image_size,
            "seed": seed,
            "root": data_dir,
            **{k: list(v) if isinstance(v, tuple) else v for k, v in DATA_OPTIONS.items()},
        },
        "loss_points": n_points,
        "wall_time_s": {
            "data": round(t_data, 1),
            "train_and_eval": round(t_train_eval, 1),
            "plots": round(t_vis, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
        "cpu_threads": torch.get_num_threads(),
        "vis_score": vis_score,
    }
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    logger.info("[4/4] done in %s: box AP %.1f, mask AP %.1f (COCO AP on %d generated val images). Wrote "
                "%s/{metrics.json,loss_curve.png,predictions.png}", _fmt(metrics["wall_time_s"]["total"]),
                metrics["bbox"]["AP"], metrics["segm"].get("AP", float("nan")), num_val, output_dir)  # fmt: skip
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="output/demo")
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: OUTPUT_DIR/data)")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--max-iter", type=int, default=None, help="default: the config's train.max_iter")
    parser.add_argument("--num-vis", type=int, default=4, help="val images drawn in predictions.png")
    parser.add_argument("--vis-score", type=float, default=0.7, help="score threshold of predictions.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    if args.image_size % 32:
        parser.error(f"--image-size must be a multiple of 32, got {args.image_size}")
    if args.max_iter is not None and args.max_iter < 1:
        parser.error(f"--max-iter must be positive, got {args.max_iter}")
    if not os.path.isfile(args.config):
        parser.error(f"config file {args.config!r} does not exist")
    run_demo(
        args.output_dir,
        config=args.config,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        max_iter=args.max_iter,
        data_dir=args.data_dir,
        seed=args.seed,
        num_vis=args.num_vis,
        vis_score=args.vis_score,
        overrides=args.overrides,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
