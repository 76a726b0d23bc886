"""Clusters through the real ``submitit`` package (``hieradet.engine.cluster``, ``tools/submit.py``).

Fast: bad requests fail before anything is submitted, with errors naming the cause; the rendezvous is read from
submitit's job environment.

Slow: ``tools/submit.py --cluster local`` runs the stock COCO T config shrunk by command-line overrides (128 px
LSJ, 3 classes, batch 2, 2 loader workers with aspect-ratio grouping, 8 iterations) through submitit's local
executor. A job whose task and loader workers are all sent ``USR2`` (submitit's preemption signal) must write an
exact checkpoint, requeue itself through submitit's checkpointing protocol (the local executor reruns a task that
exits with its requeue code) and end with a ``model_final.pth`` identical, bit for bit, to the uninterrupted job's;
the same through submitit's own time-limit path, and with signals during a checkpoint write and an evaluation.
The recording config (as in ``test_resume_kill.py``) appends each step's raw losses to ``$RAW_LOSSES``, so the test
can see the iterations and send the signal at a known point.
"""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from hieradet.data import generate_synthetic_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBMIT = os.path.join(ROOT, "tools", "submit.py")
BASE = os.path.join(ROOT, "configs", "COCO", "mask_rcnn_hieradet_t_100ep.py")
MAX_ITER = 8

RECORDING_CONFIG = """
import json
import os
import signal
import time

from detectron2.config import LazyConfig
from detectron2.modeling import GeneralizedRCNN
from detectron2.utils.events import get_event_storage


def _append(path, row):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\\n").encode())
    finally:
        os.close(fd)


def _first_run_stall(iteration):
    # $STALL=I:S: the first time iteration I runs (a marker file tells the runs apart), wait until the
    # preemption signal has been received (hieradet's PreemptionGuard, the USR2 handler, records it), at most S s
    spec = os.environ.get("STALL", "")
    marker = os.environ["RAW_LOSSES"] + ".stalled"
    if spec and int(spec.split(":")[0]) == iteration and not os.path.exists(marker):
        open(marker, "w").close()
        guard = getattr(signal.getsignal(signal.SIGUSR2), "__self__", None)
        deadline = time.time() + float(spec.split(":")[1])
        while not getattr(guard, "requested", False) and time.time() < deadline:
            time.sleep(0.1)


class RecordingRCNN(GeneralizedRCNN):
    def forward(self, batched_inputs):
        if not self.training:
            _append(os.environ["EVAL_MARK"], {{"pid": os.getpid()}})
            time.sleep(float(os.environ.get("EVAL_SLEEP", "0")))  # an evaluation long enough to be signalled in
            return super().forward(batched_inputs)
        _first_run_stall(get_event_storage().iter)
        losses = super().forward(batched_inputs)
        row = {{k: float(v) for k, v in losses.items()}}
        row["iteration"] = get_event_storage().iter
        row["pid"] = os.getpid()
        _append(os.environ["RAW_LOSSES"], row)
        return losses


_cfg = LazyConfig.load({base!r})
_cfg.model._target_ = RecordingRCNN
model, optimizer, lr_multiplier, dataloader, train = (
    _cfg.model, _cfg.optimizer, _cfg.lr_multiplier, _cfg.dataloader, _cfg.train
)
"""


def _run_submit(args, env=None, timeout=60):
    env = dict(env or os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, SUBMIT, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _submit_tool():
    """``tools/submit.py`` as a module, to call its ``main(argv)`` in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hieradet_tools_submit", SUBMIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------- bad requests
@pytest.mark.parametrize(
    "args,message",
    [
        (["--nodes", "0"], "--nodes must be at least 1, got 0"),
        (["--cluster", "local", "--nodes", "2"], "local executor has one node"),
        (["--cluster", "local", "--partition", "gpu"], "--partition 'gpu' is a SLURM option"),
        (["--cluster", "local", "--gpus-per-node", "-1"], "--gpus-per-node must be 0 (CPU) or more"),
        (["--cluster", "local", "--timeout", "0"], "--timeout is in minutes and must be at least 1"),
    ],
)
def test_bad_request_is_refused(args, message, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        _submit_tool().main(["--config-file", BASE, "--gpus-per-node", "0", *args, f"train.output_dir={tmp_path}"])
    assert not os.listdir(tmp_path)  # nothing was submitted


def test_unknown_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file 'COCO/no_such_config.py' does not exist"):
        _submit_tool().main(["--config-file", "COCO/no_such_config.py", "--cluster", "local", "--gpus-per-node", "0"])


def test_cli_prints_the_error(tmp_path, monkeypatch, capsys):
    """``python tools/submit.py`` (run as the main script, in this process) exits with ``submit.py: error: ...``."""
    import runpy

    argv = [SUBMIT, "--config-file", BASE, "--cluster", "local", "--nodes", "2", f"train.output_dir={tmp_path}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        runpy.run_path(SUBMIT, run_name="__main__")
    assert str(e.value.code) == (
        "submit.py: error: --cluster local runs on this machine only (submitit's local executor has one node), got "
        "--nodes 2: use --nodes 1, or --cluster slurm"
    )
    monkeypatch.setattr(sys, "argv", [SUBMIT, "--config-file", BASE, "train.max_iter=2", "--nodes", "1"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(SUBMIT, run_name="__main__")
    assert e.value.code == 2 and "options come before the key=value overrides" in capsys.readouterr().err


def test_missing_submitit_is_named(monkeypatch):
    from hieradet.engine import cluster

    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` now raises ImportError
    with pytest.raises(ImportError, match=r"needs the `submitit` package.*pip install 'hieradet\[cluster\]'"):
        cluster.submit(BASE, ["train.output_dir=/nonexistent"], cluster="local", gpus_per_node=0)


def test_rendezvous_from_slurm_environment(monkeypatch):
    """submitit's SLURM job environment (its real class, reading SLURM's variables) gives the rendezvous."""
    from submitit.slurm.slurm import SlurmJobEnvironment

    from hieradet.engine.cluster import rendezvous

    for k, v in dict(
        SLURM_JOB_ID="4242", SLURM_NTASKS="16", SLURM_JOB_NUM_NODES="2", SLURM_NODEID="1", SLURM_PROCID="11",
        SLURM_LOCALID="3", SLURM_JOB_NODELIST="gpu[017-018]",
    ).items():  # fmt: skip
        monkeypatch.setenv(k, v)
    r = rendezvous(SlurmJobEnvironment())
    assert (r.world_size, r.rank, r.num_machines, r.machine_rank, r.local_rank) == (16, 11, 2, 1, 3)
    assert r.tasks_per_machine == 8 and re.fullmatch(r"tcp://gpu017:\d{5}", r.dist_url), r.dist_url
    assert rendezvous(SlurmJobEnvironment()).dist_url == r.dist_url  # every task and a requeued run agree
    assert rendezvous(SlurmJobEnvironment(), port=29500).dist_url == "tcp://gpu017:29500"
    monkeypatch.setenv("SLURM_NTASKS", "15")
    with pytest.raises(ValueError, match="15 tasks on 2 nodes"):
        rendezvous(SlurmJobEnvironment())


# ------------------------------------------------------------------------------ the signal, in this process
def test_guard_records_the_signal_and_forked_workers_ignore_it():
    """The USR2 handler records the signal in the process that installed it; a forked child (as a data-loader
    worker) that gets the signal neither dies nor records it; hand_over calls the handler installed before
    (submitit's, in a job)."""
    from hieradet.engine.cluster import PreemptionGuard

    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    guard = PreemptionGuard(signal.SIGUSR2).install()
    try:
        pid = os.fork()
        if pid == 0:  # the "worker"
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.05)
            os._exit(3 if guard.requested or calls else 0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status  # alive, nothing recorded
        assert not guard.requested
        os.kill(os.getpid(), signal.SIGUSR2)
        deadline = time.time() + 5
        while not guard.requested and time.time() < deadline:
            time.sleep(0.01)
        assert guard.requested and guard.received_at is not None and calls == []
        guard.hand_over()  # -> the previous handler, and the guard is uninstalled
        assert calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is not guard._handle
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_requeues_are_capped_and_the_reason_is_logged(caplog):
    """submitit's checkpointing protocol: TrainJob.checkpoint gives the next run (one more requeue counted, the
    reason kept), and None once max_requeues requeues were made (submitit then ends the job), logging why."""
    import logging

    from submitit.helpers import DelayedSubmission

    from hieradet.engine.cluster import PreemptionGuard, TrainJob

    job = TrainJob(BASE, ["train.max_iter=8"], max_requeues=2, requeues=1)
    job._guard, job._preempted_at = PreemptionGuard(signal.SIGUSR2), 5
    job._guard.received_at = 0.0
    with caplog.at_level(logging.WARNING, logger="hieradet.engine.cluster"):
        nxt = job.checkpoint()
    assert isinstance(nxt, DelayedSubmission) and isinstance(nxt.function, TrainJob)
    assert (nxt.function.requeues, nxt.function.max_requeues, nxt.function.opts) == (2, 2, ["train.max_iter=8"])
    assert nxt.function.last_reason == "SIGUSR2 received at 1970-01-01 00:00:00 UTC, checkpoint after iteration 5"
    nxt.function._guard, nxt.function._preempted_at = PreemptionGuard(signal.SIGUSR2), 7
    with caplog.at_level(logging.WARNING, logger="hieradet.engine.cluster"):
        assert nxt.function.checkpoint() is None
    assert "not requeued: the job was already requeued 2 times (max_requeues=2); last reason: SIGUSR2" in caplog.text
    assert "checkpoint after iteration 7" in caplog.text


class _SignalAfter:
    """Stands for an installed PreemptionGuard whose signal came during iteration ``it``."""

    def __init__(self, it):
        self.it = it

    @property
    def requested(self):
        from detectron2.utils.events import get_event_storage

        return get_event_storage().iter >= self.it


def test_preemption_checkpoint_then_resume_equals_the_uninterrupted_run(tmp_path):
    """do_train with a preemption after iteration 1: the checkpoint of iteration 1 is written (the periodic
    checkpointer would not have written one), Preempted is raised; --resume then ends with the uninterrupted run's
    weights, bit for bit."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    from hieradet.engine import do_train
    from hieradet.engine.hooks import Preempted
    from hieradet.testing import tiny_train_config

    files = generate_synthetic_dataset(str(tmp_path / "data"), num_train=6, num_val=1, image_size=64, seed=5)
    if "cluster_inproc_train" in DatasetCatalog.list():
        DatasetCatalog.remove("cluster_inproc_train")
    register_coco_instances("cluster_inproc_train", {}, files["train"], str(tmp_path / "data" / "train"))

    def cfg(out):
        torch.manual_seed(0)  # the same initial weights in every run (default_setup seeds a tool's process so)
        return tiny_train_config(["cluster_inproc_train"], None, str(out), num_classes=4, image_size=64, max_iter=4)

    torch.set_num_threads(1)
    do_train(cfg(tmp_path / "ref"))
    out = tmp_path / "preempted"
    with pytest.raises(Preempted) as e:
        do_train(cfg(out), resume=True, preemption=_SignalAfter(1))
    assert e.value.iteration == 1 and e.value.checkpoint == str(out / "model_0000001.pth")
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (out / "model_final.pth").exists()
    do_train(cfg(out), resume=True)
    a = torch.load(out / "model_final.pth", weights_only=False)
    b = torch.load(tmp_path / "ref" / "model_final.pth", weights_only=False)
    assert a["iteration"] == b["iteration"] == 3
    diff = max((a["model"][k] - b["model"][k]).abs().max().item() for k in b["model"])
    assert diff == 0.0
    start = torch.load(out / "model_0000001.pth", weights_only=False)["model"]
    assert any(not torch.equal(start[k], b["model"][k]) for k in start)  # iterations 2-3 changed the weights


# ---------------------------------------------------------------------------------------- local executor jobs
def _descendants(pid: int):
    """The processes under ``pid`` (from ``/proc``): a local job's task under its controller, and the task's
    data-loader workers."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [int(pid)]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Landscape and portrait generated COCO datasets (3 classes), as --dataset arguments and their names."""
    names, extra = [], []
    for h, w in ((96, 128), (128, 96)):
        root = tmp_path_factory.mktemp(f"cluster_{h}x{w}")
        files = generate_synthetic_dataset(
            str(root), num_train=5, num_val=1, image_size=(h, w), seed=h, num_categories=3
        )
        name = f"cluster_{h}x{w}"
        for split in ("train", "val"):
            extra += ["--dataset", f"{name}_{split}", files[split], str(root / split)]
        names.append(name)
    return names, extra


def _job_args(tmp_path, datasets, out, cluster="local", timeout=10, signal_delay=5, options=()):
    config = tmp_path / "recording_coco.py"
    config.write_text(RECORDING_CONFIG.format(base=BASE))
    names, extra = datasets
    args = ["--config-file", str(config), "--cluster", cluster, "--gpus-per-node", "0", "--wait"]
    args += ["--timeout", str(timeout), "--signal-delay", str(signal_delay), "--job-dir", os.path.join(out, "jobs")]
    args += [*options, *extra]
    args += [
        "dataloader.train.dataset.names=[" + ",".join(f"{n}_train" for n in names) + "]",
        f"dataloader.test.dataset.names={names[0]}_val",
        "model.roi_heads.num_classes=3",
        "model.backbone.bottom_up.img_size=128",
        "dataloader.train.mapper.augmentations.1.target_height=128",
        "dataloader.train.mapper.augmentations.1.target_width=128",
        "dataloader.train.mapper.augmentations.2.crop_size=[128,128]",
        "dataloader.test.mapper.augmentations.0.short_edge_length=128",
        "dataloader.test.mapper.augmentations.0.max_size=128",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=2",
        "dataloader.train.aspect_ratio_grouping=True",
        "dataloader.test.num_workers=0",
        "model.proposal_generator.post_nms_topk=[200,100]",
        "model.roi_heads.batch_size_per_image=64",
        f"train.max_iter={MAX_ITER}",
        "train.checkpointer.period=5",
        "train.eval_period=6",
        "train.seed=0",
        "train.log_period=1",
        f"train.output_dir={out}",
    ]
    env = dict(
        os.environ,
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
        RAW_LOSSES=os.path.join(out, "raw_losses.jsonl"),
        EVAL_MARK=os.path.join(out, "eval_mark.jsonl"),
    )
    os.makedirs(out, exist_ok=True)
    return args, env


def _lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


class _Job:
    """``tools/submit.py ... --wait`` running in the background."""

    def __init__(self, args, env, out):
        self.out, self.env = out, env
        self.log = os.path.join(out, "submit.log")
        with open(self.log, "w") as f:
            self.proc = subprocess.Popen([sys.executable, SUBMIT, *args], env=env, stdout=f, stderr=subprocess.STDOUT)

    def text(self):
        with open(self.log) as f:
            return f.read()

    @property
    def job_id(self):
        m = re.search(r"^submitted job (\S+)$", self.text(), re.M)
        return m.group(1) if m else None

    def wait_for(self, ready, what, timeout=900):
        deadline = time.time() + timeout
        while not ready():
            assert self.proc.poll() is None, f"the job ended before {what}:\n{self.text()[-3000:]}\n{self.task_logs()}"
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    def task_logs(self):
        text = ""
        for path in sorted(glob.glob(os.path.join(self.out, "jobs", "*_0_log.*"))):
            with open(path) as f:
                text += f.read()
        return text

    def finish(self, timeout=1200):
        try:
            rc = self.proc.wait(timeout)
        finally:
            self.proc.kill()
        assert rc == 0, self.text()[-3000:] + "\n" + self.task_logs()[-6000:]
        return self.task_logs()


def _signal_local_job(job) -> list:
    """Sends USR2 to the task and every loader worker of a local job (not to submitit's controller, whose pid is
    the job id). Returns the signalled pids."""
    pids = _descendants(int(job.job_id))
    for pid in pids:
        os.kill(pid, signal.SIGUSR2)
    return pids


def _final_weights(out):
    return torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)["model"]


def _raw_losses(out):
    rows = {}
    for r in _lines(os.path.join(out, "raw_losses.jsonl")):
        r.pop("pid")
        rows[r.pop("iteration")] = r  # the last record: a requeued run may repeat an unfinished iteration
    return rows


@pytest.fixture(scope="module")
def reference(datasets, tmp_path_factory):
    """The uninterrupted local job."""
    out = str(tmp_path_factory.mktemp("reference"))
    job = _Job(*_job_args(tmp_path_factory.mktemp("cfg"), datasets, out), out)
    logs = job.finish()
    assert "requeue" not in logs.lower()
    losses = _raw_losses(out)
    assert sorted(losses) == list(range(MAX_ITER))
    weights = _final_weights(out)
    shutil.rmtree(out)  # what the comparisons need is in memory; its checkpoints are 1-2 GB of disk
    return losses, weights


def _compare(out, reference, logs):
    ref_losses, ref_weights = reference
    losses = _raw_losses(out)
    assert sorted(losses) == list(range(MAX_ITER))
    for it in range(MAX_ITER):
        assert losses[it] == ref_losses[it], it
    weights = _final_weights(out)
    assert weights.keys() == ref_weights.keys()
    diff = max((weights[k].double() - ref_weights[k].double()).abs().max().item() for k in weights)
    print(f"max final weight difference to the uninterrupted job: {diff}")
    assert diff == 0.0
    assert not glob.glob(os.path.join(out, ".*.partial"))


def _runs(out):
    """The task pids that trained, in order (one per run of the job)."""
    pids = []
    for r in _lines(os.path.join(out, "raw_losses.jsonl")):
        if not pids or pids[-1] != r["pid"]:
            pids.append(r["pid"])
    return pids


def _check_one_requeue(out, reference, logs):
    """A job preempted once after iteration 3: one requeued run, resumed after the preempted iteration, whose final
    weights equal the uninterrupted ``reference``."""
    m = re.search(r"preempted after iteration (\d+)", logs)
    assert m, logs[-4000:]
    stop = int(m.group(1))
    assert 3 <= stop < MAX_ITER - 1
    assert f"Starting training from iteration {stop + 1}" in logs
    assert "requeued run 1 (at most 20); why: SIGUSR2 received" in logs
    assert len(_runs(out)) == 2
    _compare(out, reference, logs)


@pytest.mark.slow
def test_local_job_preempted_after_iteration_3_is_identical(datasets, reference, tmp_path):
    out = str(tmp_path / "out")
    job = _Job(*_job_args(tmp_path, datasets, out), out)
    raw = os.path.join(out, "raw_losses.jsonl")
    job.wait_for(lambda: any(r["iteration"] == 3 for r in _lines(raw)), "iteration 3")
    signalled = _signal_local_job(job)
    assert len(signalled) >= 3, signalled  # the task and its 2 loader workers
    _check_one_requeue(out, reference, job.finish())


@pytest.mark.slow
def test_local_job_signalled_during_a_checkpoint_write_and_an_evaluation(datasets, reference, tmp_path):
    """Preempted twice: first while model_0000004.pth is being written (the write pauses 4 s after 64 KiB, a test
    hook of hieradet.checkpoint.atomic): the write completes and is the checkpoint of the requeue; then, in the
    requeued run, during the evaluation after iteration 5 (train.eval_period=6): the evaluation completes, the
    checkpoint of iteration 5 is written. Each run makes progress; the third run ends identical."""
    out = str(tmp_path / "out")
    args, env = _job_args(tmp_path, datasets, out)
    env.update(HIERADET_TEST_PAUSE_WRITE="model_0000004.pth:4", EVAL_SLEEP="2")
    job = _Job(args, env, out)

    def writing():
        partial = glob.glob(os.path.join(out, ".model_0000004.pth.*.partial"))
        return any(os.path.getsize(p) >= 64 * 1024 for p in partial)

    job.wait_for(writing, "the write of model_0000004.pth")
    _signal_local_job(job)
    marks = os.path.join(out, "eval_mark.jsonl")
    job.wait_for(lambda: len(_runs(out)) == 2 and any(m["pid"] == _runs(out)[1] for m in _lines(marks)), "eval")
    assert len(_signal_local_job(job)) >= 3
    logs = job.finish()
    assert "preempted after iteration 4" in logs and "preempted after iteration 5" in logs, logs[-4000:]
    assert logs.count("Saving checkpoint to " + os.path.join(out, "model_0000004.pth")) == 1  # not written twice
    assert "Starting training from iteration 5" in logs and "Starting training from iteration 6" in logs
    assert "requeued run 2 (at most 20); why: SIGUSR2 received" in logs
    assert len(_runs(out)) == 3
    _compare(out, reference, logs)


@pytest.mark.slow
def test_local_job_through_submitits_time_limit(datasets, reference, tmp_path):
    """submitit's own timeout path: --timeout 1 --signal-delay 25, so the local executor's controller sends USR2
    35 s after each run starts (to the task only). The run that first reaches iteration 3 waits there until the
    signal has come, so that it surely comes before that run's end; the job is requeued (submitit logs it as timed
    out) until it has finished."""
    out = str(tmp_path / "out")
    args, env = _job_args(tmp_path, datasets, out, timeout=1, signal_delay=25)
    env.update(STALL="3:40")
    logs = _Job(args, env, out).finish()
    assert "this job is timed-out" in logs
    # the run that first reaches iteration 3 waits there for the signal (an earlier run may have been signalled
    # before: on a loaded machine the first run can need 35 s to reach its first step; it still finishes one step)
    assert "preempted after iteration 3" in logs, logs[-4000:]
    assert len(_runs(out)) >= 2
    _compare(out, reference, logs)


# ------------------------------------------------------------------------------------------- a real SLURM
_SLURM_CONF = """ClusterName=hieradet
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobRequeue=1
ReturnToService=2
MpiDefault=none
NodeName={host} CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _slurm_missing():
    """Why a one-node SLURM cannot be started here ('' if it can)."""
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo") if not shutil.which(t)]
    missing += [t for t in ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd") if not os.path.exists(t)]
    if missing:
        return f"SLURM is not installed (missing {sorted(set(missing))}): apt-get install -y slurm-wlm munge"
    if os.geteuid() != 0:
        return "starting the one-node SLURM needs root (munged runs as the munge user, slurmd as root)"
    return ""


def _pid(path, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                text = f.read().strip()
            if text:
                return int(text)
        time.sleep(0.1)
    raise AssertionError(f"no pid file {path}")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node SLURM (munged if none runs, slurmctld, slurmd with their own slurm.conf, 2 CPUs, JobRequeue=1),
    stopped again afterwards: only the processes this fixture started. Yields the environment for its clients."""
    why = _slurm_missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the SLURM test: {why} (.ci/run installs it)")
        pytest.skip(why)
    d = str(tmp_path_factory.mktemp("slurm"))
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(d, sub))
    conf = os.path.join(d, "slurm.conf")
    with open(conf, "w") as f:
        f.write(_SLURM_CONF.format(host=socket.gethostname().split(".")[0], d=d))
    env = dict(os.environ, SLURM_CONF=conf)
    started = []
    try:
        if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:  # no munged answers: start one
            subprocess.run(["install", "-d", "-o", "munge", "-g", "munge", "-m", "755", "/run/munge"], check=True)
            pidfile = "/run/munge/munged.pid"
            if os.path.exists(pidfile):
                os.remove(pidfile)  # a stale one (its munged is not answering)
            subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
            started.append(_pid(pidfile))
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([f"/usr/sbin/{daemon}", "-f", conf], env=env, check=True)
            started.append(_pid(os.path.join(d, f"{daemon}.pid")))
        deadline = time.time() + 60
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout:
            assert time.time() < deadline, "the SLURM node did not become idle:\n" + open(f"{d}/slurmctld.log").read()
            time.sleep(0.5)
        yield env
    finally:
        for pid in reversed(started):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)


def _scontrol_show(env, job_id):
    return subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout


def _squeue(env, job_id):
    r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], env=env, capture_output=True, text=True)
    return r.stdout.strip()


@pytest.mark.slow
def test_real_slurm_job_preempted_is_identical(datasets, reference, slurm, tmp_path):
    """tools/submit.py --cluster slurm on the one-node SLURM; after iteration 3 the job gets the signal SLURM sends
    before a preemption or its time limit (``scancel --signal=USR2``: every process of the job step, the loader
    workers included); it requeues itself (``scontrol requeue``, through submitit) and the requeued run ends
    identical to the uninterrupted (local) job."""
    out = str(tmp_path / "out")
    args, env = _job_args(tmp_path, datasets, out, cluster="slurm", options=["--cpus-per-task", "2"])
    env.update(slurm)
    job = _Job(args, env, out)
    raw = os.path.join(out, "raw_losses.jsonl")
    job.wait_for(lambda: any(r["iteration"] == 3 for r in _lines(raw)), "iteration 3", timeout=600)
    assert _squeue(env, job.job_id) == "RUNNING"
    subprocess.run(["scancel", "--signal=USR2", job.job_id], env=env, check=True)
    # SLURM holds a requeued job for about 2 minutes (Reason=BeginTime) before it may start again; as an
    # administrator may, let it start now, so that the test does not wait
    job.wait_for(lambda: "Reason=BeginTime" in _scontrol_show(env, job.job_id), "the requeue", timeout=300)
    subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now"], env=env, check=True)
    _check_one_requeue(out, reference, job.finish())
