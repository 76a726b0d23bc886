"""Training on a cluster: SLURM (or this machine) through ``submitit``, with preemption handled by an exact
checkpoint and a requeue.

* :func:`submit` builds a submitit executor (:func:`build_executor`: ``"slurm"`` or ``"local"``) and submits a
  :class:`TrainJob`, one task per GPU (one task per node with ``gpus_per_node=0``, on the CPU).
* Each task reads its place in the job from submitit's :class:`submitit.JobEnvironment` (:func:`rendezvous`:
  master address and port, machine rank, local rank), starts ``torch.distributed`` when the job has several tasks,
  and runs :func:`hieradet.engine.do_train` with ``resume=True`` on the config as ``tools/lazyconfig_train_net.py``
  loads it (file or :mod:`hieradet.model_zoo` name, ``--dataset`` registrations, ``key=value`` overrides).
* On the preemption / time-limit signal (submitit's convention: ``USR2``, sent by SLURM ``signal_delay_s`` before
  the end, to every process of the job step), the main process of each task only records it
  (:class:`PreemptionGuard`; data-loader workers, which inherit the handler through ``fork``, ignore it). After the
  current step (at least one step per run), :class:`hieradet.engine.hooks.PreemptionHook` writes an exact
  checkpoint of that iteration (atomic, with the train loader's state) and rank 0 hands over to submitit's own
  handler, which calls :meth:`TrainJob.checkpoint` and requeues the job (``scontrol requeue`` on SLURM; exit code
  144, which the local executor reruns). The requeued run resumes from that checkpoint exactly. The number of
  requeues is capped (``max_requeues``); each run logs the reason of the previous requeue.
"""

import argparse
import hashlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

__all__ = [
    "CLUSTERS",
    "PreemptionGuard",
    "Rendezvous",
    "TrainJob",
    "build_executor",
    "check_request",
    "import_submitit",
    "load_config",
    "rendezvous",
    "submit",
]

logger = logging.getLogger(__name__)

CLUSTERS = ("slurm", "local")


def import_submitit():
    """Imports ``submitit``, or says how to install it."""
    try:
        import submitit
    except ImportError as e:
        raise ImportError(
            "submitting to a cluster needs the `submitit` package, which is not installed: "
            "`pip install 'hieradet[cluster]'` (or `pip install submitit`)"
        ) from e
    return submitit


def check_request(cluster: str, nodes: int, gpus_per_node: int, partition: Optional[str] = None, timeout_min=60):
    """Checks a job request before anything is submitted; raises ``ValueError`` naming the bad argument."""
    if cluster not in CLUSTERS:
        raise ValueError(f"unknown cluster {cluster!r}: choose one of {CLUSTERS}")
    if int(nodes) < 1:
        raise ValueError(f"--nodes must be at least 1, got {nodes}")
    if int(gpus_per_node) < 0:
        raise ValueError(f"--gpus-per-node must be 0 (CPU) or more, got {gpus_per_node}")
    if int(timeout_min) < 1:
        raise ValueError(f"--timeout is in minutes and must be at least 1, got {timeout_min}")
    if cluster == "local":
        if int(nodes) > 1:
            raise ValueError(
                f"--cluster local runs on this machine only (submitit's local executor has one node), got --nodes "
                f"{nodes}: use --nodes 1, or --cluster slurm"
            )
        if partition:
            raise ValueError(
                f"--partition {partition!r} is a SLURM option; the local cluster has no partitions: drop it, "
                "or use --cluster slurm"
            )
        if int(gpus_per_node) > 0:
            import torch

            if int(gpus_per_node) > torch.cuda.device_count():
                raise ValueError(
                    f"--gpus-per-node {gpus_per_node} but this machine has {torch.cuda.device_count()} GPU(s); "
                    "use --gpus-per-node 0 to train on the CPU"
                )


def _resolve(config_file: str) -> str:
    from hieradet.model_zoo import resolve_config_path

    try:
        return resolve_config_path(config_file)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"config file {config_file!r} does not exist (see configs/COCO and configs/LVIS), nor is it a "
            "hieradet.model_zoo name such as 'COCO/mask_rcnn_hieradet_b_100ep.py'"
        ) from None


def load_config(config_file: str, opts: Sequence[str] = (), datasets: Sequence[Sequence[str]] = ()):
    """The config as ``tools/lazyconfig_train_net.py`` builds it: ``config_file`` (a file or a model-zoo name)
    with ``--dataset NAME JSON ROOT`` registrations and ``key=value`` overrides. Returns ``(cfg, path)``."""
    from detectron2.config import LazyConfig

    from .datasets import register_json_dataset

    path = _resolve(config_file)
    for name, json_file, image_root in datasets:
        fmt = register_json_dataset(name, json_file, image_root)
        logger.info("registered %s dataset %r from %s", fmt, name, json_file)
    cfg = LazyConfig.load(path)
    cfg = LazyConfig.apply_overrides(cfg, list(opts))
    return cfg, path


@dataclass
class Rendezvous:
    """Where a task sits in its job: ``torch.distributed`` is started with ``dist_url``, ``world_size`` and
    ``rank`` when ``world_size > 1``."""

    dist_url: str
    world_size: int
    rank: int
    num_machines: int
    machine_rank: int
    local_rank: int
    tasks_per_machine: int


def _port(job_id: str) -> int:
    """A port in [20000, 40000) that every task of one job derives alike (and a requeued run again)."""
    return 20000 + int(hashlib.sha1(str(job_id).encode()).hexdigest(), 16) % 20000


def rendezvous(env=None, port: Optional[int] = None) -> Rendezvous:
    """Reads the rendezvous from the job's environment (``submitit.JobEnvironment()``: SLURM's variables, or
    the local executor's): the first host of the job is the master, ``port`` (default: derived from the job id)
    its port; ranks are submitit's."""
    if env is None:
        env = import_submitit().JobEnvironment()
    tasks, nodes = env.num_tasks, env.num_nodes
    if nodes < 1 or tasks % nodes:
        raise ValueError(f"the job has {tasks} tasks on {nodes} nodes: need the same number of tasks on every node")
    hosts = list(env.hostnames)
    if len(hosts) != nodes:
        raise ValueError(f"the job lists {len(hosts)} hosts ({hosts}) for {nodes} nodes")
    master = hosts[0]
    return Rendezvous(
        dist_url=f"tcp://{master}:{port or _port(env.job_id)}",
        world_size=tasks,
        rank=env.global_rank,
        num_machines=nodes,
        machine_rank=env.node,
        local_rank=env.local_rank,
        tasks_per_machine=tasks // nodes,
    )


def _init_distributed(rdv: Rendezvous) -> None:
    """Starts the process group as detectron2's ``launch`` does for one of its workers."""
    import torch
    import torch.distributed as dist
    from detectron2.utils import comm

    if rdv.world_size == 1:
        return
    cuda = torch.cuda.is_available()
    logger.info("rendezvous %s: rank %d of %d (machine %d)", rdv.dist_url, rdv.rank, rdv.world_size, rdv.machine_rank)
    dist.init_process_group(
        backend="nccl" if cuda else "gloo", init_method=rdv.dist_url, world_size=rdv.world_size, rank=rdv.rank
    )
    comm.create_local_process_group(rdv.tasks_per_machine)
    if cuda:
        torch.cuda.set_device(rdv.local_rank)
    comm.synchronize()


class PreemptionGuard:
    """Records the preemption signal in the process that installed it; other processes that inherit the
    handler through ``fork`` (data-loader workers) ignore the signal. Nothing else happens in the handler:
    :class:`hieradet.engine.hooks.PreemptionHook` acts on :attr:`requested` after the current step.

    Args:
        signum: the signal (default: submitit's, ``USR2`` unless ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise).
    """

    def __init__(self, signum: Optional[int] = None):
        if signum is None:
            signum = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
        self.signum = signum
        self.requested = False
        self.received_at: Optional[float] = None
        self.previous = None
        self._pid = None

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked data-loader worker: neither checkpoint nor die
        self.requested = True
        if self.received_at is None:
            self.received_at = time.time()

    def install(self) -> "PreemptionGuard":
        self._pid = os.getpid()
        self.previous = signal.signal(self.signum, self._handle)
        return self

    def uninstall(self) -> None:
        if self._pid == os.getpid() and self.previous is not None:
            signal.signal(self.signum, self.previous)

    def hand_over(self) -> None:
        """Calls the handler that was installed before (submitit's: checkpoint, requeue, exit). Raises
        ``RuntimeError`` when there was none (not in a submitit job): nothing can requeue the run."""
        self.uninstall()
        if not callable(self.previous):
            raise RuntimeError(
                "preempted, but no submitit signal handler was installed (not a submitit job): the run is not "
                "requeued; resume it by hand (the same command with --resume, or submit it again)"
            )
        self.previous(self.signum, None)


class TrainJob:
    """The callable that each submitit task runs: the config's ``do_train`` with ``resume=True`` (so a requeued run
    continues from the last checkpoint in ``train.output_dir``), under a :class:`PreemptionGuard`.

    It follows submitit's checkpointing protocol: :meth:`checkpoint` returns the submission of the requeued run
    (this job with one more requeue counted), or ``None`` once ``max_requeues`` requeues were made.

    Args:
        config_file (str): a config file or a :mod:`hieradet.model_zoo` name.
        opts (list[str]): ``key=value`` overrides.
        datasets (list): ``(NAME, JSON, IMAGE_ROOT)`` of COCO / LVIS jsons to register.
        max_requeues (int): the most requeues (preemptions and time limits together).
        port (int): rendezvous port (default: derived from the job id).
        requeues (int): requeues made so far (set by :meth:`checkpoint`).
        last_reason (str): why the previous run was requeued (set by :meth:`checkpoint`).
    """

    def __init__(
        self,
        config_file: str,
        opts: Sequence[str] = (),
        datasets: Sequence[Sequence[str]] = (),
        max_requeues: int = 20,
        port: Optional[int] = None,
        requeues: int = 0,
        last_reason: str = "",
    ):
        self.config_file = config_file
        self.opts = list(opts)
        self.datasets = [tuple(d) for d in datasets]
        self.max_requeues = int(max_requeues)
        self.port = port
        self.requeues = int(requeues)
        self.last_reason = last_reason
        self._guard: Optional[PreemptionGuard] = None
        self._preempted_at: Optional[int] = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_guard"] = None
        return state

    def _setup(self, rdv: Rendezvous):
        from detectron2.engine import default_setup

        cfg, path = load_config(self.config_file, self.opts, self.datasets)
        args = argparse.Namespace(
            config_file=path, opts=self.opts, resume=True, eval_only=False, num_machines=rdv.num_machines,
            machine_rank=rdv.machine_rank, num_gpus=rdv.tasks_per_machine, dist_url=rdv.dist_url,
        )  # fmt: skip
        default_setup(cfg, args)
        return cfg

    def __call__(self) -> Dict[str, Any]:
        from detectron2.utils import comm

        from .hooks import Preempted
        from .train_loop import do_train

        rdv = rendezvous(port=self.port)
        self._guard = PreemptionGuard().install()  # before any data-loader worker is forked
        _init_distributed(rdv)
        cfg = self._setup(rdv)
        if self.requeues:
            logger.warning("requeued run %d (at most %d); why: %s", self.requeues, self.max_requeues, self.last_reason)
        try:
            results = do_train(cfg, resume=True, preemption=self._guard)
        except Preempted as p:
            self._preempted_at = p.iteration
            if comm.get_rank() == 0:
                logger.warning("%s; handing over to submitit to requeue", p)
                self._guard.hand_over()  # submitit: self.checkpoint(), requeue, exit
            # other ranks: rank 0 requeues the whole job
            raise SystemExit(0) from None
        self._guard.uninstall()
        final = os.path.join(cfg.train.output_dir, "model_final.pth")
        return {"results": results, "model_final": final if os.path.isfile(final) else None}

    def checkpoint(self, *args, **kwargs):
        """submitit's checkpointing protocol: the submission of the requeued run, or ``None`` (not requeued)."""
        submitit = import_submitit()
        guard = self._guard
        reason = signal.Signals(guard.signum).name if guard else "the preemption signal"
        if guard is not None and guard.received_at is not None:
            reason += f" received at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(guard.received_at))} UTC"
        where = f"after iteration {self._preempted_at}" if self._preempted_at is not None else "before training"
        reason += f", checkpoint {where}"
        if self.requeues >= self.max_requeues:
            logger.error(
                "not requeued: the job was already requeued %d times (max_requeues=%d); last reason: %s. Resume by "
                "hand: submit again with the same train.output_dir",
                self.requeues,
                self.max_requeues,
                reason,
            )
            return None
        logger.warning("requeueing (%d of at most %d): %s", self.requeues + 1, self.max_requeues, reason)
        job = TrainJob(
            self.config_file, self.opts, self.datasets, self.max_requeues, self.port, self.requeues + 1, reason
        )
        return submitit.helpers.DelayedSubmission(job)


def build_executor(
    cluster: str,
    job_dir: str,
    nodes: int = 1,
    gpus_per_node: int = 8,
    partition: Optional[str] = None,
    timeout_min: int = 60,
    cpus_per_task: int = 8,
    signal_delay_s: int = 120,
    max_num_timeout: int = 20,
    job_name: str = "hieradet",
    slurm_parameters: Optional[Dict[str, Any]] = None,
):
    """A submitit executor for ``nodes`` x ``gpus_per_node`` tasks (one task per GPU; one per node on the CPU).

    Args:
        cluster (str): ``"slurm"`` or ``"local"`` (this machine; one node).
        job_dir (str): submitit's folder (job pickles and each task's log, ``%j_%t_log.out`` / ``.err``).
        timeout_min (int): the time limit of each run, in minutes.
        signal_delay_s (int): the preemption / time-limit signal comes this long before the limit.
        max_num_timeout (int): submitit's own cap on time-limit requeues.
        slurm_parameters (dict): more ``SlurmExecutor`` parameters (``account``, ``qos``, ``constraint``,
            ``additional_parameters``, ...).
    """
    check_request(cluster, nodes, gpus_per_node, partition, timeout_min)
    submitit = import_submitit()
    tasks = max(int(gpus_per_node), 1)
    if cluster == "local":
        ex = submitit.LocalExecutor(folder=job_dir, max_num_timeout=max_num_timeout)
        params = dict(timeout_min=int(timeout_min), tasks_per_node=tasks, signal_delay_s=int(signal_delay_s))
        if gpus_per_node:
            params["gpus_per_node"] = int(gpus_per_node)
        ex.update_parameters(**params)
        return ex
    ex = submitit.SlurmExecutor(folder=job_dir, max_num_timeout=max_num_timeout)
    params = dict(
        job_name=job_name,
        nodes=int(nodes),
        ntasks_per_node=tasks,
        cpus_per_task=int(cpus_per_task),
        time=int(timeout_min),
        signal_delay_s=int(signal_delay_s),
    )
    if gpus_per_node:
        params["gpus_per_node"] = int(gpus_per_node)
    if partition:
        params["partition"] = partition
    params.update(slurm_parameters or {})
    ex.update_parameters(**params)
    return ex


def submit(
    config_file: str,
    opts: Sequence[str] = (),
    *,
    cluster: str = "slurm",
    nodes: int = 1,
    gpus_per_node: int = 8,
    partition: Optional[str] = None,
    timeout_min: int = 60,
    job_dir: Optional[str] = None,
    datasets: Sequence[Sequence[str]] = (),
    max_requeues: int = 20,
    port: Optional[int] = None,
    **executor_kwargs,
) -> Tuple[Any, str]:
    """Checks the request and the config, then submits a :class:`TrainJob`. With ``gpus_per_node=0`` the tasks
    train on the CPU (``train.device=cpu`` is added unless the overrides set it).

    Returns:
        ``(job, job_dir)``: the submitit job (``job.job_id``, ``job.result()``) and its log folder.
    """
    check_request(cluster, nodes, gpus_per_node, partition, timeout_min)
    import_submitit()
    opts = list(opts)
    if int(gpus_per_node) == 0 and not any(o.startswith("train.device=") for o in opts):
        opts.append("train.device=cpu")
    cfg, path = load_config(config_file, opts, datasets)  # a bad config or override fails here, not in the job
    if "train" not in cfg or "output_dir" not in cfg.train:
        raise KeyError(f"{path}: the config has no train.output_dir; start from detectron2's common/train.py")
    output_dir = os.path.abspath(str(cfg.train.output_dir))
    opts = [o for o in opts if not o.startswith("train.output_dir=")] + [f"train.output_dir={output_dir}"]
    job_dir = os.path.abspath(job_dir or os.path.join(output_dir, "submitit"))
    ex = build_executor(cluster, job_dir, nodes, gpus_per_node, partition, timeout_min, **executor_kwargs)
    job = ex.submit(TrainJob(path, opts, datasets, max_requeues=max_requeues, port=port))
    return job, job_dir
