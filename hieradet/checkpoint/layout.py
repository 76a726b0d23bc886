"""The layout record: the backbone constructor fields that must agree with a checkpoint's weights.

Weights alone do not say how they must be run. An official Hiera's 56x56 grid and a SAM 2 trunk's 8x8 + 7x7
embeddings fit models built in several ways, and only one of them reproduces the pretrained network (SAM 2:
the one-level embedding at 1024 px; SAM 2-L: windows 16/8). Every file the project writes (converted
checkpoints, ``model_*.pth`` and ``model_final.pth`` of a training run) therefore carries, under the
``__hieradet__`` metadata key::

    {"version": 3,
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

Since version 3 the same record (version, kind, arch, architecture, layout) also travels inside the weights, as
each backbone's ``layout_record`` buffer (:mod:`hieradet.modeling.layout_record`), so loaders that never see the
metadata (detectron2's ``DetectionCheckpointer``, ``model.load_state_dict``) check and apply it too; files of
versions 1 and 2 get it from their metadata when our tools load them (:func:`add_layout_record`).
"""

import inspect
import logging
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from torch import nn

from ..modeling.family import families, family_of, get_family
from ..modeling.layout_record import (
    LAYOUT_VERSION,
    RECORD_KEY,
    decode_record,
    encode_record,
    layout_conflicts,
    model_layout,
    plain_value,
    same_img_size,
    same_value,
    trained_layout,
)
from .convert import (
    METADATA_KEY,
    ConversionResult,
    checkpoint_layout_from_conversion,
    convert_state_dict,
    default_prefix,
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
    "state_dict_records",
    "add_layout_record",
    "training_metadata",
]

logger = logging.getLogger(__name__)


class _FamilyFields(Mapping):
    """``{family name: fields}`` read from the registered family declarations (:mod:`hieradet.modeling.family`)."""

    def __init__(self, attribute: str):
        self._attribute = attribute

    def __getitem__(self, arch: str) -> Tuple[str, ...]:
        for fam in families():
            if fam.name == arch:
                return getattr(fam, self._attribute)
        raise KeyError(arch)

    def __iter__(self):
        return iter([fam.name for fam in families()])

    def __len__(self) -> int:
        return len(families())

    def __repr__(self) -> str:
        return repr(dict(self))


# constructor fields that must agree with the weights (apply_checkpoint_layout sets them)
LAYOUT_FIELDS: Mapping[str, Tuple[str, ...]] = _FamilyFields("layout_fields")
# constructor fields that give the weights their shapes: a config that differs is the wrong size (an error)
ARCHITECTURE_FIELDS: Mapping[str, Tuple[str, ...]] = _FamilyFields("architecture_fields")

_PREFIX_LINE = "[checkpoint layout]"


def _merged_windows(current: Any, recorded: Any) -> Any:
    """The recorded windows, keeping the config's value where the record has None (unused)."""
    if isinstance(recorded, list) and isinstance(current, list) and len(current) == len(recorded):
        return [c if r is None else r for c, r in zip(current, recorded)]
    return current if recorded is None else recorded


def find_backbones(model: nn.Module) -> Dict[str, Tuple[str, nn.Module]]:
    """``{key prefix: (arch, module)}`` of every backbone of a registered family (HieraDet, ViT, HiViT, ...) in
    ``model`` (prefix ``""``: the model)."""
    found = {}
    for name, module in model.named_modules():
        fam = family_of(module)
        if fam is not None:
            found[name + "." if name else ""] = (fam.name, module)
    return found


def training_metadata(model: nn.Module) -> Optional[Dict[str, Any]]:
    """The ``__hieradet__`` record of a training checkpoint of ``model`` (None unless it holds exactly one of
    our backbones)."""
    backbones = find_backbones(model)
    if len(backbones) != 1:
        return None
    ((prefix, (arch, module)),) = backbones.items()
    layout, architecture = trained_layout(arch, module), model_layout(arch, module)[1]
    return {
        "version": LAYOUT_VERSION,
        "kind": "trained",
        "arch": arch,
        "size": get_family(arch).size_of(architecture),  # preset name of the size, if it is one
        "prefix": prefix,
        "architecture": architecture,
        "layout": layout,
    }


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


def state_dict_records(state_dict: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """``{key prefix: record}`` of the layout records inside a state dict (see
    :mod:`hieradet.modeling.layout_record`); an all-zero record is left out."""
    found = {}
    for key, value in state_dict.items():
        if key == RECORD_KEY or key.endswith("." + RECORD_KEY):
            prefix = key[: -len(RECORD_KEY)]
            record = decode_record(value, prefix)
            if record is not None:
                found[prefix] = record
    return found


def add_layout_record(state_dict: Dict[str, Any], meta: Mapping[str, Any], prefix: str) -> bool:
    """Puts the record of a file's ``__hieradet__`` metadata into its state dict at ``prefix`` (files written before
    layout version 3 have it only in the metadata), so the backbone's load hook checks it. Returns whether it did."""
    key = prefix + RECORD_KEY
    if key in state_dict:
        return False
    record = record_from_metadata(meta)
    keep = ("version", "kind", "arch", "source_format", "architecture", "layout")
    state_dict[key] = encode_record({k: record[k] for k in keep if k in record})
    return True


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
    inside = state_dict_records(sd)
    if len(inside) == 1:  # written by another loop (detectron2's own tools) from a model with our backbone
        ((prefix, record),) = inside.items()
        return dict(record, prefix=prefix)
    if len(inside) > 1:
        raise CheckpointError(f"{source} holds several backbones' layout records ({list(inside)}); pick one by hand")
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
    fam = family_of(target) if isinstance(target, type) else None
    return None if fam is None else fam.name


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
        fam = family_of(cls)
        if fam is not None:
            arch = {k: _config_value(node, cls, k) for k in fam.architecture_fields}
            value = fam.resolve_global_blocks(dict(arch, global_blocks=None))
    return plain_value(value)


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
    cls = get_family(arch).cls
    built = {k: _config_value(node, cls, k) for k in record["architecture"]}
    if not all(same_value(built[k], v) for k, v in record["architecture"].items()):
        detail = _shape_detail(path, record, node, allow_pickle)
        raise CheckpointError(
            f"size mismatch: {path} holds a {_describe(arch, record.get('size'), record['architecture'])} but the "
            f"config builds {_describe(arch, None, built)} at {where}{detail}. Use the config of the checkpoint's "
            "size, or the checkpoint of the config's size."
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
        if field == "img_size" and same_img_size(arch, current, value):
            continue  # the same relative position tables
        if not same_value(current, value):
            shown = tuple(value) if isinstance(value, list) else value
            log(f"{_PREFIX_LINE} {where}.{field}: {_fmt(current)} -> {_fmt(shown)} (from {name})")
            node[field] = value
    return cfg


def _shape_detail(path: str, record: Mapping[str, Any], node: Any, allow_pickle: bool) -> str:
    """`` (key: shape in the checkpoint vs shape in the model; ...)`` for the first backbone weights whose shapes
    differ, from a free meta-device build of the config's backbone (empty when that fails)."""
    import torch
    from detectron2.config import instantiate

    try:
        with torch.device("meta"):
            model_sd = instantiate(node).state_dict()
        obj = load_checkpoint_file(_local_path(path), allow_pickle)
        sd, _ = unwrap_state_dict(obj, path)
    except Exception:  # the message without the detail is still right
        return ""
    prefix = record.get("prefix") or default_prefix(record["arch"])
    ours = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix) and hasattr(v, "shape")}
    wrong = [
        f"{k}: {tuple(v.shape)} in the checkpoint vs {tuple(model_sd[k].shape)} in the model"
        for k, v in ours.items()
        if k in model_sd and tuple(v.shape) != tuple(model_sd[k].shape)
    ][:3]
    return f" ({'; '.join(wrong)})" if wrong else ""


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
    wrong = layout_conflicts(record, arch, module)
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
