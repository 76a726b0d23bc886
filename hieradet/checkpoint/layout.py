"""The layout record: the backbone constructor fields that must agree with a checkpoint's weights.

Weights alone do not say how they must be run. An official Hiera's 56x56 grid and a SAM 2 trunk's 8x8 + 7x7
embeddings fit models built in several ways, and only one of them reproduces the pretrained network (SAM 2:
the one-level embedding at 1024 px; SAM 2-L: windows 16/8). Every file the project writes (converted
checkpoints, ``model_*.pth`` and ``model_final.pth`` of a training run) therefore carries, under the
``__hieradet__`` metadata key::

    {"version": 2,
     "kind": "converted" | "trained",
     "arch": "HieraDet" | "ViT" | "HiViT",
     "size": "T" | ... | None,                  # preset name, None for a custom size
     "prefix": "backbone.bottom_up.",           # where the backbone's keys sit in "model"
     "architecture": {"embed_dim": 96, "stages": [1, 2, 7, 2]},   # the weights' shapes (checked, never set)
     "layout": {"pretrain_img_size": 224, "pos_embed": "abswin", "pos_embed_window": 56, ...},
     ...}

Trained files also record ``img_size`` when the global blocks have relative position tables (it sizes them);
converted files also keep ``source_format``, ``backbone_kwargs``, ``embed_kwargs``, ``new_keys``.

:func:`apply_checkpoint_layout` sets ``layout`` on a config's backbone before the model is built (a raw public
file gets its record from :func:`~hieradet.checkpoint.convert.convert_state_dict`). The ``pos_embed`` of a
converted file is the weights' natural mode, which a config may replace on purpose (the ``interpolate``
ablations); the mode of a trained file is the one it was trained in, and binding.
"""

import inspect
import logging
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from torch import nn

from .convert import (
    METADATA_KEY,
    ConversionResult,
    backbone_classes,
    checkpoint_layout_from_conversion,
    convert_state_dict,
    detect_format,
)
from .io import CheckpointError, load_checkpoint_file, unwrap_state_dict

__all__ = [
    "LAYOUT_VERSION",
    "LAYOUT_FIELDS",
    "ARCHITECTURE_FIELDS",
    "apply_checkpoint_layout",
    "check_model_layout",
    "find_backbone_configs",
    "find_backbones",
    "model_layout",
    "read_checkpoint_layout",
    "record_from_metadata",
    "training_metadata",
]

logger = logging.getLogger(__name__)

LAYOUT_VERSION = 2

# constructor fields that must agree with the weights (apply_checkpoint_layout sets them)
LAYOUT_FIELDS = {
    "HieraDet": (
        "pretrain_img_size",
        "pos_embed",
        "pos_embed_window",
        "pos_embed_global",
        "pos_embed_antialias",
        "window_size",
        "global_blocks",
        "expand_proj",
    ),
    "ViT": ("pretrain_img_size", "pos_embed", "patch_size", "window_size", "global_blocks"),
    "HiViT": ("pretrain_img_size", "pos_embed", "patch_size", "window_size", "global_blocks", "out_norm"),
}
# constructor fields that give the weights their shapes: a config that differs is the wrong size (an error)
ARCHITECTURE_FIELDS = {
    "HieraDet": ("embed_dim", "stages"),
    "ViT": ("embed_dim", "depth"),
    "HiViT": ("embed_dim", "depths"),
}

_PREFIX_LINE = "[checkpoint layout]"


def _plain(v: Any) -> Any:
    """JSON-like value: tuples and ListConfigs become lists."""
    if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig":
        return [_plain(x) for x in v]
    return v


def _same(a: Any, b: Any) -> bool:
    return _plain(a) == _plain(b)


# ----------------------------------------------------------------------------------------------
# the layout of a built model


def _stage_of(block: int, ends: Tuple[int, ...]) -> int:
    return sum(1 for e in ends if e < block)


def _first_window(module: nn.Module, blocks: List[int]) -> Optional[int]:
    """The window of the first non-global block among ``blocks``; None when every one is global (the
    configured window is then never used, and any value builds the same model)."""
    for i in blocks:
        if i not in module.global_blocks:
            return int(module.blocks[i].window_size)
    return None


def _same_windows(model: Any, recorded: Any, global_ok: bool = False) -> bool:
    """Window sizes agree, a None (unused window) matching anything; with ``global_ok`` a model window of 0
    (global attention, which no tile can be misaligned with) matches too."""

    def ok(m, r):
        return m is None or r is None or m == r or (global_ok and m == 0)

    model, recorded = _plain(model), _plain(recorded)
    if isinstance(model, list) and isinstance(recorded, list):
        return len(model) == len(recorded) and all(ok(m, r) for m, r in zip(model, recorded))
    return ok(model, recorded)


def _merged_windows(current: Any, recorded: Any) -> Any:
    """The recorded windows, keeping the config's value where the record has None (unused)."""
    if isinstance(recorded, list) and isinstance(current, list) and len(current) == len(recorded):
        return [c if r is None else r for c, r in zip(current, recorded)]
    return current if recorded is None else recorded


def _expand_proj(module: nn.Module) -> bool:
    """False when a block widens the stream without a ``proj`` linear layer (timm's ``use_expand_proj=False``)."""
    sd = module.state_dict()
    for i in range(len(module.blocks)):
        n1, n2 = sd.get(f"blocks.{i}.norm1.weight"), sd.get(f"blocks.{i}.norm2.weight")
        if n1 is not None and n2 is not None and n1.shape != n2.shape and f"blocks.{i}.proj.weight" not in sd:
            return False
    return True


def _relpos_img_size(arch: str, module: nn.Module) -> Optional[int]:
    """The image size the global blocks' relative position tables are sized for (their grid side times the
    block's input stride), None without such tables. Another ``img_size`` with the same grid builds the same
    tables."""
    stride = int(module.patch_embed.proj.stride[0]) * (4 if arch == "HiViT" else 1)
    for blk in module.blocks:
        attn = blk.attn
        if blk.window_size == 0 and getattr(attn, "use_rel_pos", False):
            return (int(attn.rel_pos_h.shape[0]) + 1) // 2 * stride
        if arch == "HieraDet":
            stride *= int(blk.q_stride)
    return None


def _same_img_size(arch: str, a: Any, b: Any) -> bool:
    """``img_size`` values that give the stride-16 global blocks tables of the same size."""
    if a is None or b is None:
        return a == b
    side = (lambda x: int(x) // 16) if arch == "ViT" else (lambda x: -(-int(x) // 16))
    return side(a) == side(b)


def model_layout(arch: str, module: nn.Module) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(layout, architecture)`` of a built HieraDet / ViT / HiViT, read from the module itself.

    A ``pos_embed="auto"`` model (built without a checkpoint) runs, and is recorded, as ``"abswin"``.
    """
    pe = module.pos_embed
    mode = "abswin" if pe.mode == "auto" else pe.mode
    win = None if pe.window_embed is None else int(pe.window_embed.shape[-1])
    glob = None if pe.global_embed is None else int(pe.global_embed.shape[-1])
    dim = int(module.patch_embed.proj.weight.shape[0])
    if arch == "HieraDet":
        ends = tuple(module.stage_ends)
        # a stage's first block still attends with the previous stage's window (see HieraDet)
        by_stage: Dict[int, List[int]] = {s: [] for s in range(len(ends))}
        for i in range(len(module.blocks)):
            by_stage[_stage_of(max(i - 1, 0), ends)].append(i)
        stride = int(module.patch_embed.proj.stride[0])
        layout = dict(
            pretrain_img_size=int(pe.pretrain_size[0]) * stride,
            pos_embed=mode,
            pos_embed_window=win,
            pos_embed_global=glob,
            pos_embed_antialias=bool(pe.antialias),
            window_size=[_first_window(module, by_stage[s]) for s in range(len(ends))],
            global_blocks=list(module.global_blocks),
        )
        if not _expand_proj(module):
            layout["expand_proj"] = False
        stages = [e - s for e, s in zip(ends, (-1,) + ends[:-1])]
        return layout, dict(embed_dim=dim, stages=stages)
    patch = int(module.patch_embed.proj.stride[0]) * (4 if arch == "HiViT" else 1)
    layout = dict(
        pretrain_img_size=int(pe.pretrain_size[0]) * patch,
        pos_embed=mode,
        patch_size=patch,
        window_size=_first_window(module, list(range(len(module.blocks)))),
        global_blocks=list(module.global_blocks),
    )
    if arch == "HiViT":
        layout["out_norm"] = module.out_norms is not None
        return layout, dict(embed_dim=4 * dim, depths=list(module.depths))
    return layout, dict(embed_dim=dim, depth=len(module.blocks))


def _trained_layout(arch: str, module: nn.Module) -> Dict[str, Any]:
    """:func:`model_layout` plus what a trained file's extra weights fix: the relative position tables' size."""
    layout, _ = model_layout(arch, module)
    img_size = _relpos_img_size(arch, module)
    if img_size is not None:
        layout["img_size"] = img_size
    return layout


def find_backbones(model: nn.Module) -> Dict[str, Tuple[str, nn.Module]]:
    """``{key prefix: (arch, module)}`` of every HieraDet / ViT / HiViT in ``model`` (prefix ``""``: the model)."""
    classes = backbone_classes()
    found = {}
    for name, module in model.named_modules():
        for arch, cls in classes.items():
            if isinstance(module, cls):
                found[name + "." if name else ""] = (arch, module)
    return found


def training_metadata(model: nn.Module) -> Optional[Dict[str, Any]]:
    """The ``__hieradet__`` record of a training checkpoint of ``model`` (None unless it holds exactly one of
    our backbones)."""
    backbones = find_backbones(model)
    if len(backbones) != 1:
        return None
    ((prefix, (arch, module)),) = backbones.items()
    layout, architecture = _trained_layout(arch, module), model_layout(arch, module)[1]
    from .convert import _match_size  # preset name of the size, if it is one

    size = _match_size(_presets(arch), **{k: tuple(v) if isinstance(v, list) else v for k, v in architecture.items()})
    return {
        "version": LAYOUT_VERSION,
        "kind": "trained",
        "arch": arch,
        "size": size,
        "prefix": prefix,
        "architecture": architecture,
        "layout": layout,
    }


def _presets(arch: str) -> Mapping[str, Mapping[str, Any]]:
    if arch == "HieraDet":
        from ..modeling.hieradet import HIERA_SIZES

        return HIERA_SIZES
    if arch == "ViT":
        from ..modeling.vit import VIT_SIZES

        return VIT_SIZES
    from ..modeling.hivit import HIVIT_SIZES

    return HIVIT_SIZES


# ----------------------------------------------------------------------------------------------
# the layout of a checkpoint


def record_from_metadata(meta: Mapping[str, Any]) -> Dict[str, Any]:
    """The version-2 layout record from any ``__hieradet__`` metadata (version 1 converted files had no ``layout``)."""
    if "layout" in meta:
        return dict(meta)
    kw = dict(meta.get("backbone_kwargs") or {})
    arch = meta.get("arch")
    if arch not in LAYOUT_FIELDS or not kw:
        raise CheckpointError(f"unreadable {METADATA_KEY} metadata (no layout, arch {arch!r})")
    result = ConversionResult(
        state_dict={}, source_format=meta.get("source_format", ""), arch=arch, size=meta.get("size"),
        backbone_kwargs=kw, embed_kwargs=dict(meta.get("embed_kwargs") or {}),
    )  # fmt: skip
    layout, architecture = checkpoint_layout_from_conversion(result)
    return dict(meta, kind="converted", layout=layout, architecture=architecture)


def _local_path(path: str) -> str:
    from detectron2.utils.file_io import PathManager

    return PathManager.get_local_path(path.split("?")[0]) if "://" in path else path.split("?")[0]


def read_checkpoint_layout(checkpoint, allow_pickle: bool = False) -> Optional[Dict[str, Any]]:
    """The layout record (see the module doc) of a checkpoint file (or an already loaded checkpoint dict).

    Files the project wrote carry it; a raw public file (official Hiera, SAM 2, timm, MAE ViT, HiViT) gets it
    from its conversion. Returns ``None`` for a detectron2 checkpoint without a record.

    Raises:
        FileNotFoundError, CheckpointError: no such file; an unreadable, damaged or unknown file.
    """
    source = checkpoint if isinstance(checkpoint, str) else "checkpoint"
    obj = load_checkpoint_file(_local_path(checkpoint), allow_pickle) if isinstance(checkpoint, str) else checkpoint
    meta = obj.get(METADATA_KEY) if isinstance(obj, Mapping) else None
    sd, extra = unwrap_state_dict(obj, source)
    meta = meta if meta is not None else extra.get(METADATA_KEY)
    if meta is not None:
        return record_from_metadata(meta)
    try:
        detect_format(sd)
    except CheckpointError:
        if any(k.startswith(("backbone.", "roi_heads.", "proposal_generator.")) for k in sd):
            return None  # a detectron2 checkpoint written without a record
        raise
    result = convert_state_dict(sd)
    layout, architecture = checkpoint_layout_from_conversion(result)
    return {
        "version": LAYOUT_VERSION,
        "kind": "converted",
        "arch": result.arch,
        "size": result.size,
        "source_format": result.source_format,
        "architecture": architecture,
        "layout": layout,
    }


# ----------------------------------------------------------------------------------------------
# configs


def _target_arch(node: Any) -> Optional[str]:
    target = node.get("_target_") if hasattr(node, "get") else None
    if target is None:
        return None
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            target = locate(target)
        except Exception:
            return None
    for arch, cls in backbone_classes().items():
        if isinstance(target, type) and issubclass(target, cls):
            return arch
    return None


def find_backbone_configs(node: Any, path: str = "model") -> List[Tuple[str, str, Any]]:
    """``[(dotted path, arch, config node)]`` of every HieraDet / ViT / HiViT LazyCall node under ``node``
    (``model.backbone.bottom_up`` under an FPN, ``model.backbone.net`` under ViTDet's pyramid, ...)."""
    found = []
    arch = _target_arch(node)
    if arch is not None:
        return [(path, arch, node)]
    if hasattr(node, "items") and not isinstance(node, (str, bytes)):
        for k, v in node.items():
            if hasattr(v, "items"):
                found.extend(find_backbone_configs(v, f"{path}.{k}"))
    return found


def _config_value(node: Any, cls: type, field: str) -> Any:
    """The value a config node builds with: its own, else the constructor default (global blocks resolved)."""
    if field in node:
        value = node[field]
    else:
        params = inspect.signature(cls.__init__).parameters
        if field not in params:
            return None
        value = params[field].default
    if field == "global_blocks" and value is None:
        if cls.__name__ == "HieraDet":
            from ..modeling.hieradet import default_global_blocks

            value = default_global_blocks(tuple(_config_value(node, cls, "stages")))
        elif cls.__name__ == "HiViT":
            from ..modeling.hivit import default_hivit_global_blocks

            depth = tuple(_config_value(node, cls, "depths"))[2]
            value = default_hivit_global_blocks(depth, min(4, depth))
    return _plain(value)


def _describe(arch: str, size: Optional[str], architecture: Mapping[str, Any]) -> str:
    shape = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in architecture.items())
    return f"{arch}-{size or 'custom'} ({shape})"


def apply_checkpoint_layout(cfg, path: str, allow_pickle: bool = False, log: Optional[Callable[[str], None]] = None):
    """Sets the backbone fields of ``cfg.model`` that must agree with the weights in ``path``, before building.

    ``path`` is any file the project wrote (a converted checkpoint, ``model_final.pth``, a periodic
    ``model_XXXXXXX.pth``) or a raw public checkpoint of a supported format. For each layout field whose value
    differs, the config takes the checkpoint's and one line says so. ``pos_embed="auto"`` becomes the
    checkpoint's natural mode (SAM 2: ``abswin_single``; official Hiera, MAE ViT, HiViT, timm abs-win:
    ``abswin``; a trained file: the mode it was trained in); another mode named by the config is kept for a
    converted file (and the line says so) and refused for a trained one.

    Args:
        cfg: a LazyConfig with ``model`` (or a model / backbone config node itself); changed in place.
        path (str): the checkpoint.
        allow_pickle (bool): see :func:`~hieradet.checkpoint.io.load_checkpoint_file`.
        log: where the lines go (default: ``print``).
    Returns:
        ``cfg``.
    Raises:
        FileNotFoundError, CheckpointError: no such file; a damaged or unknown file; a checkpoint of another
            architecture or size than the config's backbone; a trained file whose mode the config contradicts.
    """
    log = log or (lambda line: print(line, flush=True))
    name = os.path.basename(path.split("?")[0])
    if name.endswith(".pkl"):  # detectron2's pickled (Caffe2-era) model zoo files: none of our backbones
        log(f"{_PREFIX_LINE} {name} is a pickled detectron2 file without a layout record: the config's layout is kept")
        return cfg
    record = read_checkpoint_layout(path, allow_pickle)
    root = cfg.model if hasattr(cfg, "get") and "model" in cfg else cfg
    found = find_backbone_configs(root, "model" if root is not cfg else "cfg")
    if record is None:
        log(f"{_PREFIX_LINE} {name} has no layout record (a detectron2 checkpoint): the config's layout is kept")
        return cfg
    arch = record["arch"]
    same = [(p, n) for p, a, n in found if a == arch]
    if not found:
        raise CheckpointError(f"{path} holds {arch} weights, but the config has no HieraDet, ViT or HiViT backbone")
    if len(same) != 1:
        have = ", ".join(f"{a} at {p}" for p, a, _ in found)
        raise CheckpointError(f"{path} holds {arch} weights, but the config's backbones are: {have}")
    where, node = same[0]
    cls = backbone_classes()[arch]
    built = {k: _config_value(node, cls, k) for k in record["architecture"]}
    if not all(_same(built[k], v) for k, v in record["architecture"].items()):
        raise CheckpointError(
            f"size mismatch: {path} holds a {_describe(arch, record.get('size'), record['architecture'])} but the "
            f"config builds {_describe(arch, None, built)} at {where}. Use the config of the checkpoint's size, "
            "or the checkpoint of the config's size."
        )
    trained = record.get("kind") == "trained"
    for field, value in record["layout"].items():
        current = _config_value(node, cls, field)
        if field == "pos_embed":
            if current == "auto":
                why = "the mode it was trained in" if trained else "the checkpoint's natural mode"
                log(f"{_PREFIX_LINE} {where}.pos_embed: 'auto' -> {value!r} ({why}, from {name})")
                node[field] = value
            elif current != value:
                if trained:
                    raise CheckpointError(
                        f"layout conflict at {where}: {path} was trained with pos_embed={value!r}, but the config "
                        f"names pos_embed={current!r}. Set pos_embed='auto' (or {value!r}) to run it as trained."
                    )
                log(
                    f"{_PREFIX_LINE} {where}.pos_embed: keeping {current!r}, named by the config (the checkpoint's "
                    f"natural mode is {value!r})"
                )
            continue
        if field == "window_size":
            value = _merged_windows(current, value)
        if field == "img_size" and _same_img_size(arch, current, value):
            continue  # the same relative position tables
        if not _same(current, value):
            shown = tuple(value) if isinstance(value, list) else value
            log(f"{_PREFIX_LINE} {where}.{field}: {_fmt(current)} -> {_fmt(shown)} (from {name})")
            node[field] = value
    return cfg


def _fmt(v: Any) -> str:
    return str(tuple(v)) if isinstance(v, list) else repr(v)


# ----------------------------------------------------------------------------------------------
# loading


def check_model_layout(record: Mapping[str, Any], arch: str, module: nn.Module, where: str = "", source: str = ""):
    """Raises :class:`CheckpointError` naming both sides unless the built ``module`` has the recorded layout.

    The mode of a converted file is its natural one, which a model may replace on purpose; every other
    recorded field (and the mode of a trained file) must be the model's.
    """
    trained = record.get("kind") == "trained"
    have = _trained_layout(arch, module) if trained else model_layout(arch, module)[0]
    wrong = []
    for field, value in record["layout"].items():
        if field == "pos_embed" and not trained:
            continue
        model_value = have.get(field, True if field == "expand_proj" else None)
        if field == "window_size":
            agree = _same_windows(model_value, value, global_ok=not trained)
        else:
            agree = _same(model_value, value)
        if not agree:
            wrong.append((field, value, model_value))
    if wrong:
        location = f" at '{where.rstrip('.')}'" if where else ""
        what = "trained with" if trained else "records"
        raise CheckpointError(
            f"layout conflict{location}: {source or 'the checkpoint'} {what} "
            + ", ".join(f"{f}={_fmt(v)}" for f, v, _ in wrong)
            + f", but the model's {arch} was built with "
            + ", ".join(f"{f}={_fmt(m)}" for f, _, m in wrong)
            + ". Build the model after hieradet.checkpoint.apply_checkpoint_layout(cfg, checkpoint), as the tools do."
        )
