#!/usr/bin/env python
"""Train or evaluate a hieradet LazyConfig, as detectron2's ViTDet project does.

    python tools/lazyconfig_train_net.py --config-file configs/COCO/mask_rcnn_hieradet_b_100ep.py --num-gpus 8 \
        train.init_checkpoint=/path/to/hiera_base_224.pth
    python tools/lazyconfig_train_net.py --config-file configs/COCO/mask_rcnn_hieradet_b_100ep.py --eval-only \
        train.init_checkpoint=output/model_final.pth

``--config-file`` is a file or a :mod:`hieradet.model_zoo` name (``COCO/mask_rcnn_hieradet_b_100ep.py``), which
also works where hieradet was installed without its source tree.

The weights decide the backbone's layout: before the model is built, the file it will load (a raw public
checkpoint, a converted one, or with ``--resume`` the last checkpoint in ``train.output_dir``) sets the fields
its weights need (:func:`hieradet.checkpoint.apply_checkpoint_layout`, one printed line per changed field).

Anything after the options is a ``key=value`` override of the config (``train.max_iter=1000``,
``train.total_batch_size=16``, ``train.device=cpu``, ...). Builtin datasets (``coco_2017_train``,
``lvis_v1_val``, ...) are read from ``$DETECTRON2_DATASETS`` (default ``./datasets``); your own COCO or
LVIS json is registered with ``--dataset NAME JSON IMAGE_ROOT`` and then named in the overrides, e.g.
``dataloader.train.dataset.names=NAME``. Multi-GPU and multi-machine runs go through detectron2's
``launch`` (``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``).
"""

import logging

from detectron2.config import LazyConfig
from detectron2.engine import default_argument_parser, default_setup, launch

import hieradet  # noqa: F401  (registers the backbones)
from hieradet.engine import do_test, do_train, register_json_dataset
from hieradet.engine.train_loop import load_for_eval
from hieradet.model_zoo import resolve_config_path

logger = logging.getLogger("hieradet.tools.lazyconfig_train_net")


def build_parser():
    parser = default_argument_parser(epilog=__doc__.split("\n\n")[-1])
    parser.add_argument(
        "--dataset",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO- or LVIS-format json under NAME (repeatable); use NAME in the config overrides",
    )
    return parser


def setup(args):
    try:
        config_file = resolve_config_path(args.config_file)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"config file {args.config_file!r} does not exist (see configs/COCO and configs/LVIS), nor is it a "
            "hieradet.model_zoo name such as 'COCO/mask_rcnn_hieradet_b_100ep.py'"
        ) from None
    args.config_file = config_file  # default_setup logs (and saves) the file itself
    for name, json_file, image_root in args.dataset:
        fmt = register_json_dataset(name, json_file, image_root)
        logger.info("registered %s dataset %r from %s", fmt, name, json_file)
    cfg = LazyConfig.load(config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        if not cfg.train.init_checkpoint:
            raise ValueError("--eval-only needs the weights to evaluate: add train.init_checkpoint=/path/to/model.pth")
        model = load_for_eval(cfg)
        return do_test(cfg, model)
    return do_train(cfg, resume=args.resume)


def invoke_main() -> None:
    args = build_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
