"""The layout record inside a backbone's state dict, so that every loader gets the model the weights were made for.

Weights alone do not say how they must be run: SAM 2's 8x8 + 7x7 embeddings load into a model built for the
recursive ``"abswin"`` mode without any shape mismatch, and detectron2's ``DetectionCheckpointer`` skips a
mismatched weight (an official Hiera's 56x56 grid into an 8x8 slot) with a warning only. So every HieraDet, ViT
and HiViT carries a persistent ``layout_record`` buffer: a fixed-size ``uint8`` tensor (:data:`RECORD_BYTES`)
holding a JSON record::

    {"version": 3, "kind": "trained" | "converted", "arch": "HieraDet",
     "architecture": {"embed_dim": 96, "stages": [1, 2, 7, 2]},
     "layout": {"pretrain_img_size": 224, "pos_embed": "abswin_single", "pos_embed_window": 8, ...}}

Its shape never changes, so shape-checking loaders never drop it. ``state_dict()`` writes the module's own layout
(``kind="trained"``: the mode it runs in is binding); converted files carry the conversion's (``kind="converted"``:
the mode is the weights' natural one, which a config may replace on purpose). Loading runs a pre-hook that, before a
single weight is copied:

* when the backbone was built with ``pos_embed="auto"``, adopts the recorded mode and HieraDet's
  ``pretrain_img_size`` and ``pos_embed_antialias`` (they change no weight shape), re-checking window alignment;
* raises :class:`CheckpointError` for another backbone family or size, a trained file's mode contradicted by an
  explicit one, or any other recorded field the built model lacks (a 56x56 grid into an 8x8 slot), naming
  ``hieradet.checkpoint.apply_checkpoint_layout``, which sets those fields on the config before the build;
* for weights without a record (files written before layout version 3): raises when the backbone's mode is
  ``"auto"`` (it cannot know the mode), else warns once and loads.

This module imports nothing else of the package but the backbones' own modules (lazily).
"""

import json
import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

__all__ = [
    "LAYOUT_VERSION",
    "RECORD_KEY",
    "RECORD_BYTES",
    "CheckpointError",
    "backbone_arch",
    "model_layout",
    "plain_value",
    "same_value",
    "same_windows",
    "same_img_size",
    "trained_layout",
    "model_record",
    "layout_conflicts",
    "encode_record",
    "decode_record",
    "install_layout_record",
    "strip_layout_records",
]

logger = logging.getLogger(__name__)

# 3: the record travels inside the state dict (the ``layout_record`` buffer); 2: ``__hieradet__`` file metadata
# with ``layout``; 1: converted files with ``backbone_kwargs`` only
LAYOUT_VERSION = 3
RECORD_KEY = "layout_record"
RECORD_BYTES = 1024

_FIX = (
    "Build the model after hieradet.checkpoint.apply_checkpoint_layout(cfg, checkpoint) (the project's tools do; "
    "with yacs, hieradet.config.apply_yacs_checkpoint_layout), which sets these fields on the config first."
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is of an unknown format, or does not fit the model."""


# ----------------------------------------------------------------------------------------------
# encoding


def encode_record(record: Mapping[str, Any], device=None) -> torch.Tensor:
    """The record as a zero-padded ``(RECORD_BYTES,)`` uint8 tensor of compact JSON."""
    data = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    if len(data) > RECORD_BYTES:
        raise ValueError(f"layout record of {len(data)} bytes does not fit the {RECORD_BYTES}-byte buffer: {record}")
    out = torch.zeros(RECORD_BYTES, dtype=torch.uint8)
    out[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return out if device is None else out.to(device)


def decode_record(tensor: torch.Tensor, where: str = "") -> Optional[Dict[str, Any]]:
    """The record a buffer holds; ``None`` for an all-zero buffer (a model that never wrote one)."""
    location = f" at '{where.rstrip('.')}'" if where else ""
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 1 or tensor.dtype != torch.uint8:
        raise CheckpointError(
            f"the {RECORD_KEY}{location} must be a 1-d uint8 tensor, got "
            f"{getattr(tensor, 'dtype', type(tensor).__name__)} {tuple(getattr(tensor, 'shape', ()))}"
        )
    if tensor.device.type == "meta":
        return None
    data = bytes(tensor.cpu().tolist()).rstrip(b"\0")
    if not data:
        return None
    try:
        record = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"the {RECORD_KEY}{location} is damaged (not a JSON layout record): {e}") from None
    if not isinstance(record, dict) or not {"arch", "layout", "architecture"} <= set(record):
        raise CheckpointError(f"the {RECORD_KEY}{location} lacks arch / layout / architecture: {record!r}")
    return record


def strip_layout_records(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """``state_dict`` without its layout records, e.g. to load one mode's weights into a model built for another on
    purpose (a missing record is then a warning when the model's mode is explicit)."""
    return {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] != RECORD_KEY}


# ----------------------------------------------------------------------------------------------
# the layout of a built backbone


def backbone_arch(module: nn.Module) -> Optional[str]:
    """The family name (``"HieraDet"``, ``"ViT"``, ``"HiViT"``, ... see :mod:`hieradet.modeling.family`) of a
    backbone module, or ``None``."""
    from .family import family_of

    fam = family_of(module)
    return None if fam is None else fam.name


def _token_stride(arch: str) -> int:
    from .family import get_family

    return get_family(arch).token_stride


def plain_value(v: Any) -> Any:
    """JSON-like value: tuples and ListConfigs become lists."""
    if isinstance(v, (list, tuple)) or type(v).__name__ == "ListConfig":
        return [plain_value(x) for x in v]
    return v


def same_value(a: Any, b: Any) -> bool:
    return plain_value(a) == plain_value(b)


def _stage_of(block: int, ends: Tuple[int, ...]) -> int:
    return sum(1 for e in ends if e < block)


def _first_window(module: nn.Module, blocks: List[int]) -> Optional[int]:
    """The window of the first non-global block among ``blocks``; None when every one is global (the
    configured window is then never used, and any value builds the same model)."""
    for i in blocks:
        if i not in module.global_blocks:
            return int(module.blocks[i].window_size)
    return None


def same_windows(model: Any, recorded: Any, global_ok: bool = False) -> bool:
    """Window sizes agree, a None (unused window) matching anything; with ``global_ok`` a model window of 0
    (global attention, which no tile can be misaligned with) matches too."""

    def ok(m, r):
        return m is None or r is None or m == r or (global_ok and m == 0)

    model, recorded = plain_value(model), plain_value(recorded)
    if isinstance(model, list) and isinstance(recorded, list):
        return len(model) == len(recorded) and all(ok(m, r) for m, r in zip(model, recorded))
    return ok(model, recorded)


def _expand_proj(module: nn.Module) -> bool:
    """False when a block widens the stream without a ``proj`` linear layer (timm's ``use_expand_proj=False``)."""
    return all(blk.proj is not None for blk in module.blocks if blk.dim != blk.dim_out)


def _relpos_img_size(arch: str, module: nn.Module) -> Optional[int]:
    """The image size the global blocks' relative position tables are sized for (their grid side times the
    block's input stride), None without such tables."""
    stride = int(module.patch_embed.proj.stride[0]) * _token_stride(arch)
    for blk in module.blocks:
        attn = blk.attn
        if blk.window_size == 0 and getattr(attn, "use_rel_pos", False):
            return (int(attn.rel_pos_h.shape[0]) + 1) // 2 * stride
        if arch == "HieraDet":
            stride *= int(blk.q_stride)
    return None


def same_img_size(arch: str, a: Any, b: Any) -> bool:
    """``img_size`` values that give the stride-16 global blocks tables of the same size."""
    if a is None or b is None:
        return a == b
    side = (lambda x: int(x) // 16) if arch == "ViT" else (lambda x: -(-int(x) // 16))
    return side(a) == side(b)


def model_layout(arch: str, module: nn.Module) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(layout, architecture)`` of a built backbone of family ``arch``, read from the module itself (the family's
    :attr:`~hieradet.modeling.family.BackboneFamily.model_layout`).

    A ``pos_embed="auto"`` model that no checkpoint resolved runs, and is recorded, as ``"abswin"``.
    """
    from .family import get_family

    return get_family(arch).layout(module)


def _embed_layout(module: nn.Module, stride: int) -> Dict[str, Any]:
    pe = module.pos_embed
    mode = "abswin" if pe.mode == "auto" else pe.mode
    return dict(pretrain_img_size=int(pe.pretrain_size[0]) * stride, pos_embed=mode)


def hieradet_layout(module: nn.Module) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """:func:`model_layout` of a HieraDet: per-stage windows, both embedding grids, the global blocks."""
    pe = module.pos_embed
    ends = tuple(module.stage_ends)
    # a stage's first block still attends with the previous stage's window (see HieraDet)
    by_stage: Dict[int, List[int]] = {s: [] for s in range(len(ends))}
    for i in range(len(module.blocks)):
        by_stage[_stage_of(max(i - 1, 0), ends)].append(i)
    layout = _embed_layout(module, int(module.patch_embed.proj.stride[0]))
    layout.update(
        pos_embed_window=None if pe.window_embed is None else int(pe.window_embed.shape[-1]),
        pos_embed_global=None if pe.global_embed is None else int(pe.global_embed.shape[-1]),
        pos_embed_antialias=bool(pe.antialias),
        window_size=[_first_window(module, by_stage[s]) for s in range(len(ends))],
        global_blocks=list(module.global_blocks),
    )
    if not _expand_proj(module):
        layout["expand_proj"] = False
    stages = [e - s for e, s in zip(ends, (-1,) + ends[:-1])]
    return layout, dict(embed_dim=int(module.patch_embed.proj.weight.shape[0]), stages=stages)


def _single_scale_layout(module: nn.Module, token_stride: int) -> Dict[str, Any]:
    patch = int(module.patch_embed.proj.stride[0]) * token_stride
    layout = _embed_layout(module, patch)
    layout.update(
        patch_size=patch,
        window_size=_first_window(module, list(range(len(module.blocks)))),
        global_blocks=list(module.global_blocks),
    )
    return layout


def plain_vit_layout(module: nn.Module) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """:func:`model_layout` of a plain ViT (one stride, ``depth`` blocks, one window size)."""
    dim = int(module.patch_embed.proj.weight.shape[0])
    return _single_scale_layout(module, 1), dict(embed_dim=dim, depth=len(module.blocks))


def hivit_layout(module: nn.Module) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """:func:`model_layout` of a HiViT: its main stage as a plain ViT's, the output norms, the stage depths."""
    layout = _single_scale_layout(module, 4)
    layout["out_norm"] = module.out_norms is not None
    dim = int(module.patch_embed.proj.weight.shape[0])
    return layout, dict(embed_dim=4 * dim, depths=list(module.depths))


def trained_layout(arch: str, module: nn.Module) -> Dict[str, Any]:
    """:func:`model_layout` plus what a trained file's extra weights fix: the relative position tables' size."""
    layout, _ = model_layout(arch, module)
    img_size = _relpos_img_size(arch, module)
    if img_size is not None:
        layout["img_size"] = img_size
    return layout


def model_record(module: nn.Module) -> Dict[str, Any]:
    """The record a backbone writes into its state dict (``kind="trained"``: its mode is binding)."""
    arch = backbone_arch(module)
    return {
        "version": LAYOUT_VERSION,
        "kind": "trained",
        "arch": arch,
        "architecture": model_layout(arch, module)[1],
        "layout": trained_layout(arch, module),
    }


def _mode_is_auto(module: nn.Module) -> bool:
    return getattr(module.pos_embed, "configured_mode", None) == "auto"


def layout_conflicts(record: Mapping[str, Any], arch: str, module: nn.Module) -> List[Tuple[str, Any, Any]]:
    """``[(field, recorded, model's)]`` for each recorded layout field the built ``module`` does not have.

    The mode of a converted record is its natural one, which a model may replace on purpose; the mode of a trained
    record binds, except for a model built with ``pos_embed="auto"`` (a loader adopts the record's mode).
    """
    trained = record.get("kind") == "trained"
    have = trained_layout(arch, module) if trained else model_layout(arch, module)[0]
    wrong = []
    for field, value in record["layout"].items():
        if field == "pos_embed" and (not trained or _mode_is_auto(module)):
            continue
        model_value = have.get(field, True if field == "expand_proj" else None)
        if field == "window_size":
            agree = same_windows(model_value, value, global_ok=not trained)
        elif field == "img_size":
            agree = same_img_size(arch, model_value, value)
        else:
            agree = same_value(model_value, value)
        if not agree:
            wrong.append((field, value, model_value))
    return wrong


def _fmt(v: Any) -> str:
    return str(tuple(v)) if isinstance(v, list) else repr(v)


def _shape(architecture: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in architecture.items())


# ----------------------------------------------------------------------------------------------
# the hooks


def apply_record(module: nn.Module, record: Mapping[str, Any], where: str = "", source: str = "") -> None:
    """Checks ``record`` against the built backbone and sets what a built model can still take (see
    :func:`_adoptable`), as :func:`hieradet.checkpoint.apply_checkpoint_layout` would have set it on the config.

    Raises:
        CheckpointError: a newer record, another family or size, or a layout the model was not built with.
    """
    arch = backbone_arch(module)
    location = f" at '{where.rstrip('.')}'" if where else ""
    source = source or "the state dict"
    if int(record.get("version", 0)) > LAYOUT_VERSION:
        raise CheckpointError(
            f"{source}{location} has layout version {record['version']}, newer than this hieradet's "
            f"{LAYOUT_VERSION}: upgrade hieradet to load it"
        )
    if record["arch"] != arch:
        raise CheckpointError(
            f"{source} holds {record['arch']} weights{location}, but the model's backbone there is a {arch}. "
            f"Build the model from a config of the checkpoint's family ({record['arch']})."
        )
    built = model_layout(arch, module)[1]
    if not all(same_value(built.get(k), v) for k, v in record["architecture"].items()):
        raise CheckpointError(
            f"size mismatch{location}: {source} holds a {arch} ({_shape(record['architecture'])}) but the model's "
            f"{arch} was built with {_shape(built)}. Use the config of the checkpoint's size, or the checkpoint of "
            "the config's size."
        )
    adopt = _adoptable(record, arch, module)
    wrong = [w for w in layout_conflicts(record, arch, module) if w[0] not in adopt]
    if wrong:
        what = "was trained with" if record.get("kind") == "trained" else "records"
        raise CheckpointError(
            f"layout conflict{location}: {source} {what} "
            + ", ".join(f"{f}={_fmt(v)}" for f, v, _ in wrong)
            + f", but the model's {arch} was built with "
            + ", ".join(f"{f}={_fmt(m)}" for f, _, m in wrong)
            + ", which no loader can change once the model is built. "
            + _FIX
        )
    pe = module.pos_embed
    before = (pe.mode, pe.pretrain_size, pe.antialias)
    changes = []
    for field, value in adopt.items():
        old = model_layout(arch, module)[0][field] if field != "pos_embed" else pe.mode
        if field == "pos_embed":
            pe.mode = value
        elif field == "pretrain_img_size":
            grid = int(value) // int(module.patch_embed.proj.stride[0])
            pe.pretrain_size = (grid, grid)
        else:
            pe.antialias = bool(value)
        changes.append(f"{field}: {_fmt(old)} -> {_fmt(value)}")
    try:
        check_alignment(arch, module)
    except ValueError as e:
        pe.mode, pe.pretrain_size, pe.antialias = before
        raise CheckpointError(f"{source}{location}: with the recorded layout, {e} {_FIX}") from None
    for line in changes:
        logger.info("[layout record] %s%s (from %s)", where, line, source)
    mode = record["layout"].get("pos_embed")
    if mode and "pos_embed" not in adopt and pe.mode != mode:
        logger.info(
            "[layout record] %spos_embed: keeping %r, named by the config (the weights' natural mode is %r)",
            where,
            pe.mode,
            mode,
        )


def _adoptable(record: Mapping[str, Any], arch: str, module: nn.Module) -> Dict[str, Any]:
    """The recorded fields a loader sets on a built backbone whose config left ``pos_embed="auto"`` (follow the
    checkpoint), as :func:`hieradet.checkpoint.apply_checkpoint_layout` sets them on a config: the mode, and
    HieraDet's pretraining size and antialiasing (they change no weight shape). A model built with an explicit mode
    takes nothing: any other recorded value is a conflict."""
    layout, have = record["layout"], model_layout(arch, module)[0]
    adopt = {}
    if not _mode_is_auto(module):
        return adopt
    mode = layout.get("pos_embed")
    if mode and module.pos_embed.mode != mode:
        adopt["pos_embed"] = mode
    if arch == "HieraDet":
        for field in ("pretrain_img_size", "pos_embed_antialias"):
            if field in layout and not same_value(layout[field], have[field]):
                adopt[field] = layout[field]
    return adopt


def check_alignment(arch: str, module: nn.Module) -> None:
    """Raises ``ValueError`` unless every attention window of the built backbone lines up with the tiles of its
    position embedding in its current mode (:func:`~hieradet.modeling.pos_embed.check_window_alignment`)."""
    from .pos_embed import check_window_alignment

    patch = int(module.patch_embed.proj.stride[0])
    stride, windows = patch * _token_stride(arch), {}
    for i, blk in enumerate(module.blocks):
        if blk.window_size and i not in module.global_blocks:
            scale = stride // patch if arch == "HieraDet" else 1
            windows.setdefault((int(blk.window_size), scale), i)
        if arch == "HieraDet":
            stride *= int(blk.q_stride)
    check_window_alignment(
        module.pos_embed,
        [(f"block {i}", w, scale) for (w, scale), i in sorted(windows.items(), key=lambda t: t[1])],
        owner=arch,
        unit=f"stride-{patch} tokens" if arch == "HieraDet" else "tokens",
    )


def _state_dict_hook(module: nn.Module, state_dict, prefix: str, local_metadata) -> None:
    key = prefix + RECORD_KEY
    if key not in state_dict or module.layout_record.device.type == "meta":
        return
    with torch.no_grad():
        module.layout_record.copy_(encode_record(model_record(module)))
    value = state_dict[key]
    if value is not module.layout_record:  # keep_vars=False gives a detached view of the same storage
        state_dict[key] = module.layout_record.detach()


def _load_pre_hook(module: nn.Module, state_dict, prefix: str, local_metadata, strict, missing, unexpected, errors):
    key = prefix + RECORD_KEY
    record = decode_record(state_dict[key], prefix) if key in state_dict else None
    if record is not None:
        apply_record(module, record, prefix)
        state_dict[key] = encode_record(model_record(module), state_dict[key].device)
        return
    ours = [k for k in state_dict if k.startswith(prefix) and k != key]
    if not ours:
        return  # nothing of this backbone is being loaded
    location = f"'{prefix.rstrip('.')}'" if prefix else "the backbone"
    if _mode_is_auto(module):
        raise CheckpointError(
            f"the weights loaded into {location} carry no {RECORD_KEY} (a file written before hieradet layout "
            f"version {LAYOUT_VERSION}, or a state dict made by other code), and the model was built with "
            "pos_embed='auto', so the mode the weights need is unknown. Load the file with "
            "hieradet.checkpoint.HieraDetCheckpointer after hieradet.checkpoint.apply_checkpoint_layout(cfg, path) "
            "(both read its __hieradet__ metadata), re-convert it with tools/convert_checkpoint.py, or build the "
            "backbone with an explicit pos_embed."
        )
    if not getattr(module, "_warned_no_record", False):
        logger.warning(
            "the weights loaded into %s carry no %s: their layout is not checked; the model runs as built "
            "(pos_embed=%r)",
            location,
            RECORD_KEY,
            module.pos_embed.mode,
        )
        module._warned_no_record = True
    state_dict[key] = encode_record(model_record(module), module.layout_record.device)


def install_layout_record(module: nn.Module) -> None:
    """Registers the ``layout_record`` buffer and its state-dict / load hooks on a backbone (its base class does)."""
    module.register_buffer(RECORD_KEY, torch.zeros(RECORD_BYTES, dtype=torch.uint8), persistent=True)
    module.register_state_dict_post_hook(_state_dict_hook)
    module.register_load_state_dict_pre_hook(_load_pre_hook)
