#!/usr/bin/env python
"""Submit a hieradet LazyConfig training to SLURM (or run it on this machine) through submitit.

    python tools/submit.py --config-file configs/COCO/mask_rcnn_vitdet_h_75ep.py --nodes 8 --gpus-per-node 8 \
        --partition learn --timeout 4320 train.init_checkpoint=/path/to/mae_pretrain_vit_huge.pth
    python tools/submit.py --config-file COCO/mask_rcnn_hieradet_t_100ep.py --cluster local --gpus-per-node 0 \
        --wait train.max_iter=8 train.output_dir=output/t_cpu

Each task runs the same ``do_train`` as ``tools/lazyconfig_train_net.py`` (config files or model-zoo names,
``--dataset NAME JSON IMAGE_ROOT``, ``key=value`` overrides) with ``--resume``: a requeued run continues from the
last checkpoint in ``train.output_dir``. The rendezvous (master address and port, ranks) comes from the job's
environment. On the preemption / time-limit signal (USR2, ``--signal-delay`` seconds before the limit) the job
finishes its step, writes an exact checkpoint and requeues itself, at most ``--max-requeues`` times. Logs go to
``--job-dir`` (default ``train.output_dir/submitit``), one ``<job id>_<task>_log.out`` / ``.err`` per task.
"""

import argparse
import sys

from hieradet.engine.cluster import CLUSTERS, submit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[-1])
    p.add_argument("--config-file", required=True, metavar="FILE", help="config file or hieradet.model_zoo name")
    p.add_argument("--cluster", choices=CLUSTERS, default="slurm", help="slurm, or local (this machine, one node)")
    p.add_argument("--nodes", type=int, default=1, help="machines (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs (= tasks) per machine; 0: one CPU task")
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--timeout", type=int, default=60, metavar="MIN", help="time limit of each run in minutes")
    p.add_argument("--job-dir", default=None, help="submitit's folder (default: train.output_dir/submitit)")
    p.add_argument("--wait", action="store_true", help="return when the job (with its requeued runs) has finished")
    p.add_argument("--cpus-per-task", type=int, default=8, help="SLURM CPUs per task (default 8)")
    p.add_argument("--signal-delay", type=int, default=120, metavar="S", help="USR2 this long before the limit")
    p.add_argument("--max-requeues", type=int, default=20, help="the most requeues (preemptions and time limits)")
    p.add_argument("--port", type=int, default=None, help="rendezvous port (default: derived from the job id)")
    p.add_argument(
        "--dataset",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_ROOT"),
        help="register a COCO- or LVIS-format json under NAME (repeatable); use NAME in the config overrides",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    late = [o for o in args.opts if o.startswith("--")]
    if late:
        parser.error(f"options come before the key=value overrides: move {late} before {args.opts[0]!r}")
    job, job_dir = submit(
        args.config_file,
        args.opts,
        cluster=args.cluster,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        partition=args.partition,
        timeout_min=args.timeout,
        job_dir=args.job_dir,
        datasets=args.dataset,
        max_requeues=args.max_requeues,
        port=args.port,
        cpus_per_task=args.cpus_per_task,
        signal_delay_s=args.signal_delay,
    )
    print(f"submitted job {job.job_id}", flush=True)
    print(f"logs: {job_dir}", flush=True)
    if args.wait:
        result = job.results()[0]
        print(f"job {job.job_id} finished: {result.get('model_final')}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, ImportError, KeyError) as e:
        sys.exit(f"submit.py: error: {e}")
