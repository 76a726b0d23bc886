"""``do_train`` / ``do_test``: the LazyConfig training and evaluation loop.

A config provides ``model``, ``optimizer`` (whose ``params.model`` is filled in here),
``lr_multiplier``, ``dataloader.{train,test,evaluator}`` and ``train`` (``output_dir``,
``init_checkpoint``, ``max_iter``, ``amp``, ``ddp``, ``checkpointer``, ``eval_period``,
``log_period``, ``device``, optionally ``seed``), as detectron2's ``common/train.py`` defines it.

Besides detectron2's loop, ``do_train``:

* clips the gradient norm at ``train.clip_grad_norm`` (the configs' optimizer does it in its own ``step()``, so
  detectron2's loops clip too; other optimizers are wrapped here) and logs it as ``grad_norm``;
* checks at start-up that the evaluator's scoring package is installed and its dataset registered
  (:func:`check_evaluator`), instead of failing at the first evaluation;
* builds the config inside :func:`hieradet.solver.loop.hieradet_loop`: the configs warn once
  (:class:`hieradet.solver.loop.OutsideLoopWarning`) when another loop builds them, naming what it does not apply;
* trains a box-only model when the training datasets have no masks (:func:`hieradet.engine.box_only.auto_box_only`);
* checks every input batch (:func:`hieradet.engine.guards.install_input_guard`): a NaN/inf image stops the
  run naming the iteration and file, an image larger than the backbone's ``square_pad`` is rejected;
* with ``train.seed`` set and a :class:`hieradet.data.ResumableTrainingSampler` in the train loader, registers
  :class:`hieradet.engine.hooks.DeterministicResumeHook`, so ``--resume`` continues the data stream (with the
  configs' :class:`hieradet.data.ResumableTrainLoader`, exactly as the uninterrupted run; see
  ``docs/training.md``);
* writes checkpoints, ``last_checkpoint`` and ``metrics.json`` lines atomically (:mod:`hieradet.checkpoint.atomic`);
* wraps the model in DDP without ``device_ids`` on the CPU (gloo), which detectron2's
  ``create_ddp_model`` would set to the local rank;
* builds the backbone with the layout of the weights it will load (:func:`checkpoint_for_layout`,
  :func:`hieradet.checkpoint.apply_checkpoint_layout`): ``train.init_checkpoint``, or with ``resume`` the last
  checkpoint in ``train.output_dir``, whose recorded layout wins.
"""

import importlib
import logging
import os
from typing import Dict, Optional

import torch
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.utils import comm
from detectron2.utils.registry import locate

from hieradet.checkpoint import HieraDetCheckpointer, apply_checkpoint_layout
from hieradet.data.samplers import find_sampler
from hieradet.engine.box_only import auto_box_only
from hieradet.engine.guards import install_input_guard
from hieradet.solver.clip import clip_gradient_norm
from hieradet.solver.loop import hieradet_loop
from hieradet.solver.recipes import apply_total_batch_size

from .datasets import check_datasets, config_dataset_names
from .hooks import DeterministicResumeHook, PreemptionHook, default_writers

__all__ = ["build_model", "check_evaluator", "checkpoint_for_layout", "do_test", "do_train", "load_for_eval"]

logger = logging.getLogger(__name__)

_REQUIRED_TRAIN_KEYS = ("output_dir", "init_checkpoint", "max_iter", "device")


def _check_device(cfg) -> str:
    device = str(cfg.train.get("device", "cuda"))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"train.device={device!r} but CUDA is not available on this machine; add `train.device=cpu` to the "
            "command line (CPU runs are for debugging: use small models and images)"
        )
    return device


def build_model(cfg) -> torch.nn.Module:
    """Instantiates ``cfg.model`` on ``cfg.train.device``, with the input guard
    (:func:`hieradet.engine.guards.install_input_guard`) installed."""
    device = _check_device(cfg)
    model = instantiate(cfg.model)
    install_input_guard(model)
    return model.to(device)


def checkpoint_for_layout(cfg, resume: bool = False) -> Optional[str]:
    """The file whose weights ``do_train(cfg, resume)`` will load: with ``resume`` the last checkpoint in
    ``train.output_dir`` when there is one (as detectron2's ``resume_or_load`` decides), else
    ``train.init_checkpoint``; None when neither is set."""
    if resume:
        from detectron2.utils.file_io import PathManager

        marker = os.path.join(cfg.train.output_dir, "last_checkpoint")
        if PathManager.exists(marker):
            with PathManager.open(marker) as f:
                name = f.read().strip()
            if name:
                return os.path.join(cfg.train.output_dir, name)
    return cfg.train.init_checkpoint or None


def _apply_layout(cfg, path: Optional[str]) -> None:
    if path:
        log = None if comm.is_main_process() else (lambda _: None)
        apply_checkpoint_layout(cfg, path, log=log)


def _check_trainable(cfg) -> None:
    """Test-time-augmentation configs wrap the detector for evaluation only; say so before building it."""
    target = cfg.model.get("_target_") if hasattr(cfg.model, "get") else None
    if isinstance(target, str):
        target = locate(target)
    # detectron2's wrapper and ours (a subclass of it)
    if isinstance(target, type) and issubclass(target, GeneralizedRCNNWithTTA):
        raise ValueError(
            f"this config's model is a test-time augmentation wrapper ({target.__name__}), which only evaluates: "
            "run it with --eval-only and the weights of its single-scale config (the one it imports), "
            "or train with that config"
        )


def _wrap_ddp(cfg, model: torch.nn.Module, **kwargs) -> torch.nn.Module:
    """detectron2's ``create_ddp_model``, with ``device_ids=None`` off CUDA (it would pass the local rank,
    which DDP rejects for CPU modules)."""
    if not str(cfg.train.get("device", "cuda")).startswith("cuda"):
        kwargs.setdefault("device_ids", None)
    return create_ddp_model(model, **kwargs)


def _train_seed(cfg) -> Optional[int]:
    seed = cfg.train.get("seed", None)
    return None if seed is None or int(seed) < 0 else int(seed)


def _auto_box_only(cfg) -> None:
    """Makes the config box-only if the training datasets have no masks (reads the datasets once more)."""
    heads = cfg.model.get("roi_heads") if hasattr(cfg.model, "get") else None
    if not hasattr(heads, "get") or heads.get("mask_head") is None:
        return  # no mask branch (already box-only, or not an R-CNN config): masks do not matter
    train = cfg.dataloader.get("train")
    dataset = train.get("dataset") if train is not None else None
    names = dataset.get("names") if hasattr(dataset, "get") else None
    if not names:
        return  # not a get_detection_dataset_dicts(names=...) loader: nothing to inspect
    auto_box_only(cfg, names)  # logs what it changed


def do_test(cfg, model) -> Dict[str, Dict[str, float]]:
    """Runs ``cfg.dataloader.test`` through ``model`` and ``cfg.dataloader.evaluator``.

    Returns the evaluator's results (e.g. ``{"bbox": {"AP": ...}, "segm": {...}}``), or ``{}`` when
    the config has no evaluator.
    """
    if "evaluator" not in cfg.dataloader or cfg.dataloader.evaluator is None:
        logger.warning("config has no dataloader.evaluator; skipping evaluation")
        return {}
    check_datasets(config_dataset_names(cfg, splits=("test",)))
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process() and results:
        print_csv_format(results)
    return results or {}


def _build_optimizer(cfg) -> torch.optim.Optimizer:
    """``instantiate(cfg.optimizer)``, clipping the gradient norm at ``train.clip_grad_norm`` (None or 0: off). The
    configs' optimizers (:class:`hieradet.solver.AdamW` / :class:`~hieradet.solver.SGD`) read that setting and clip
    in their own ``step()``; other optimizers are wrapped here (:func:`hieradet.solver.clip_gradient_norm`), once."""
    optimizer = instantiate(cfg.optimizer)
    clip = cfg.train.get("clip_grad_norm", None)
    clips_at = getattr(optimizer, "_hieradet_clip", None)
    if clips_at is not None:
        if clip and float(clip) != clips_at:
            raise ValueError(
                f"optimizer.clip_grad_norm={clips_at} and train.clip_grad_norm={clip} disagree; set only "
                "train.clip_grad_norm (the configs' optimizer reads it)"
            )
    elif clip:
        optimizer = clip_gradient_norm(optimizer, clip)
    return optimizer


_EVAL_PACKAGES = {
    # backend -> (module to import, how to install it)
    "faster": ("faster_coco_eval", "a requirement of hieradet (was it installed with --no-deps?): "
               "pip install 'faster-coco-eval>=1.6'"),
    "pycocotools": ("pycocotools", "a requirement of hieradet: pip install pycocotools"),
    "lvis": ("lvis", "hieradet's lvis extra: pip install --no-deps lvis==0.5.3 (without its opencv-python pin)"),
}  # fmt: skip


def check_evaluator(cfg) -> None:
    """Fails at start-up, not at the first evaluation hours later, when ``cfg.dataloader.evaluator`` cannot run:
    its scoring package (``faster-coco-eval`` for the default backend, ``pycocotools``, and ``lvis`` for an LVIS
    evaluator) is not installed, or its dataset is not registered or lacks its files. Does nothing when the config
    has no evaluator."""
    evaluator = cfg.dataloader.get("evaluator", None) if "dataloader" in cfg else None
    if evaluator is None or not hasattr(evaluator, "get"):
        return
    target = evaluator.get("_target_")
    if isinstance(target, str):
        target = locate(target)
    name = getattr(target, "__name__", "")
    needed = {}  # package -> why
    if name in ("COCOEvaluator", "LVISEvaluator"):
        backend = evaluator.get("backend", "faster" if target.__module__.startswith("hieradet.") else "pycocotools")
        needed[backend] = f"for its backend {backend!r}"
        if name == "LVISEvaluator":
            needed.setdefault("lvis", "to read the LVIS ground truth")
    for package, why in needed.items():
        if package not in _EVAL_PACKAGES:
            continue  # an unknown backend: the evaluator's own check names the choices
        module, install = _EVAL_PACKAGES[package]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(
                f"the config's evaluator ({name}) needs the `{module}` package {why}, which is not installed; it "
                f"is {install}. Checked before training, so the run does not fail at its first evaluation."
            ) from e
    names = config_dataset_names(cfg, splits=("test",))
    dataset = evaluator.get("dataset_name", None)
    if isinstance(dataset, str) and dataset not in names:
        names.append(dataset)
    check_datasets(names)


def do_train(cfg, resume: bool = False, preemption=None) -> Dict[str, Dict[str, float]]:
    """Trains ``cfg.model`` for ``cfg.train.max_iter`` iterations (evaluating every ``eval_period``).

    Args:
        cfg: a loaded LazyConfig.
        resume (bool): continue from the last checkpoint in ``train.output_dir`` (iteration, optimizer,
            scheduler and weights) if there is one; otherwise load ``train.init_checkpoint``.
        preemption: an installed :class:`hieradet.engine.cluster.PreemptionGuard`, or None: on its signal, an
            exact checkpoint after the current step, then :class:`hieradet.engine.hooks.Preempted` is raised.

    Returns:
        The results of the last evaluation (``{}`` if none ran).
    """
    with hieradet_loop():  # the configs' check for settings only this loop applies stays silent
        return _do_train(cfg, resume, preemption)


def _do_train(cfg, resume: bool, preemption) -> Dict[str, Dict[str, float]]:
    missing = [k for k in _REQUIRED_TRAIN_KEYS if k not in cfg.train]
    if missing:
        raise KeyError(f"config `train` lacks {missing}; start from detectron2's common/train.py")
    apply_total_batch_size(cfg)  # train.total_batch_size=N: the recipe at N images per step (lr, schedule)
    if cfg.train.max_iter <= 0:
        raise ValueError(f"train.max_iter must be positive, got {cfg.train.max_iter}")
    _check_trainable(cfg)
    check_datasets(config_dataset_names(cfg))
    check_evaluator(cfg)  # its package and dataset, now rather than at the first evaluation
    _apply_layout(cfg, checkpoint_for_layout(cfg, resume))
    _auto_box_only(cfg)
    model = build_model(cfg)
    logger.info("Model:\n%s", model)
    # --- train.compile (deployment owner): compile the backbone in place (state-dict keys unchanged), whole graph
    # with train.compile_backend (default "inductor"; "eager" / "aot_eager" trace without generating code)
    if cfg.train.get("compile", False):
        backend = cfg.train.get("compile_backend", None) or "inductor"
        if backend not in torch._dynamo.list_backends(exclude_tags=()):
            raise ValueError(
                f"train.compile_backend={backend!r} is not a torch.compile backend; use one of "
                f"{sorted(torch._dynamo.list_backends(exclude_tags=()))}"
            )
        model.backbone.compile(fullgraph=True, backend=backend)
    # --- end train.compile

    cfg.optimizer.params.model = model
    optimizer = _build_optimizer(cfg)
    train_loader = instantiate(cfg.dataloader.train)

    model = _wrap_ddp(cfg, model, **cfg.train.ddp)
    use_amp = bool(cfg.train.amp.enabled)
    if use_amp and not str(cfg.train.device).startswith("cuda"):
        logger.warning("train.amp.enabled=True needs CUDA; training on %s in fp32 instead", cfg.train.device)
        use_amp = False
    trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, train_loader, optimizer)
    checkpointer = HieraDetCheckpointer(model, cfg.train.output_dir, trainer=trainer)

    last_results: Dict[str, Dict[str, float]] = {}

    def evaluate() -> Dict[str, Dict[str, float]]:
        last_results.clear()
        last_results.update(do_test(cfg, model))
        return last_results

    seed = _train_seed(cfg)
    resume_hook = None
    if seed is not None and find_sampler(train_loader) is not None:
        resume_hook = DeterministicResumeHook(seed=seed, checkpoint_period=cfg.train.checkpointer.get("period", 0))
    elif seed is not None:
        logger.info(
            "train.seed is set but the train loader has no ResumableTrainingSampler: a resumed run restarts "
            "the data stream"
        )
    main = comm.is_main_process()
    trainer.register_hooks(
        [
            resume_hook,
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            # after the checkpointer and the evaluation, before the writer (which writes once more when it stops)
            PreemptionHook(checkpointer, preemption) if preemption is not None else None,
            hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
            if main
            else None,
        ]
    )
    if not cfg.train.init_checkpoint and not (resume and checkpointer.has_checkpoint()):
        logger.warning(
            "train.init_checkpoint is empty: the backbone starts from random weights. The papers' recipes fine-tune "
            "a pretrained backbone (convert one with tools/convert_checkpoint.py)."
        )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    if start_iter >= cfg.train.max_iter:
        logger.info("checkpoint is at iteration %d >= train.max_iter=%d: no training", start_iter, cfg.train.max_iter)
    try:
        trainer.train(start_iter, cfg.train.max_iter)
    except ModuleNotFoundError as e:
        if e.name != "shapely":
            raise
        raise ImportError(
            "cropping polygon masks (LSJ's FixedSizeCrop) needs the `shapely` package, which is not installed: "
            "`pip install shapely`, or give the dataset RLE masks and set "
            "dataloader.train.mapper.instance_mask_format=bitmask"
        ) from e
    return dict(last_results)


def load_for_eval(cfg, model: Optional[torch.nn.Module] = None) -> torch.nn.Module:
    """Builds the model (unless given) with the layout ``train.init_checkpoint`` records
    (:func:`hieradet.checkpoint.apply_checkpoint_layout`) and loads those weights into it for evaluation."""
    if model is None:
        _apply_layout(cfg, cfg.train.init_checkpoint)
        model = build_model(cfg)
    model = _wrap_ddp(cfg, model)
    HieraDetCheckpointer(model).load(cfg.train.init_checkpoint)
    return model
