#!/usr/bin/env python
"""Toy reproduction of "Window Attention is Bugged" (Bolya et al. 2024) on generated images, on a CPU.

MAE-pretrains a tiny Hiera at 64 px with the full-grid and the abs-win position embedding, fine-tunes each on a
shape x quadrant classification task (8 classes) at 64 and 128 px (the full grid interpolated = the bug, vs abs-win)
over several seeds, and writes results.json, table.md and window_similarity.png. The code is the ``reproduce_bug``
package beside this file (it uses hieradet as a library); run this file from anywhere:

    python projects/ReproduceBug/reproduce.py --output output/reproduce_bug          # the full run (README.md)
    python projects/ReproduceBug/reproduce.py --quick --output /tmp/reproduce_quick  # well under a minute, for tests
    python projects/ReproduceBug/reproduce.py --pretrain-only --pretrain-iters 600   # pretraining + window similarity
"""

import argparse
import sys

from reproduce_bug import FULL, QUICK, run_reproduction, settings_from


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/reproduce_bug", help="folder for results.json, table.md, the figure")
    p.add_argument("--quick", action="store_true", help="tiny settings (tests); the numbers mean nothing")
    p.add_argument("--seeds", type=int, nargs="+", help="fine-tuning seeds (default 0 1 2)")
    p.add_argument("--pretrain-iters", type=int)
    p.add_argument("--pretrain-batch", type=int)
    p.add_argument("--finetune-iters", type=int)
    p.add_argument("--finetune-batch", type=int)
    p.add_argument("--train-images", type=int)
    p.add_argument("--test-images", type=int)
    p.add_argument("--pretrain-only", action="store_true", help="only pretrain and measure the window similarity")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    return p


def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    base = QUICK if args.quick else FULL
    st = settings_from(
        base,
        seeds=tuple(args.seeds) if args.seeds else None,
        pretrain_iters=args.pretrain_iters,
        pretrain_batch=args.pretrain_batch,
        finetune_iters=args.finetune_iters,
        finetune_batch=args.finetune_batch,
        train_images=args.train_images,
        test_images=args.test_images,
        threads=args.threads,
        pretrain_only=args.pretrain_only or None,
    )
    for name in ("pretrain_iters", "pretrain_batch", "finetune_iters", "finetune_batch", "train_images", "test_images"):
        if getattr(st, name) <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {getattr(st, name)}")
    if len(st.seeds) < 2:
        raise SystemExit("give at least two --seeds (the table reports mean ± std over seeds)")
    command = ["projects/ReproduceBug/reproduce.py"] + list(argv if argv is not None else sys.argv[1:])
    st.extra["command"] = " ".join(command)
    return run_reproduction(st, args.output)


if __name__ == "__main__":
    main()
