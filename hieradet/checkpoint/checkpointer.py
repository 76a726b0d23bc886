"""Loading converted (or raw pretrained) checkpoints into models that contain our backbones.

detectron2's ``DetectionCheckpointer`` skips any weight whose shape differs from the model's with a
log warning, so a 56x56 window embedding loaded into a model built for 8x8 + 7x7 silently leaves the
embedding random. :class:`HieraDetCheckpointer` checks every backbone weight first and raises a
:class:`CheckpointError` that names the mismatch and the config overrides that fix it; it also
converts a raw MAE / Hiera / timm / SAM 2 / HiViT checkpoint on the fly, so ``train.init_checkpoint`` may
point at the original file.
"""

import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from .atomic import AtomicSaveMixin
from .convert import (
    METADATA_KEY,
    build_converted_checkpoint,
    config_overrides,
    convert_state_dict,
    detect_format,
    is_new_by_design,
    summarize,
)
from .io import CheckpointError, load_checkpoint_file, unwrap_state_dict
from .layout import (
    add_layout_record,
    check_model_layout,
    find_backbones,
    model_layout,
    record_from_metadata,
    state_dict_records,
    training_metadata,
)

__all__ = [
    "HieraDetCheckpointer",
    "find_backbones",
    "check_backbone_state_dict",
    "load_backbone_checkpoint",
]

logger = logging.getLogger(__name__)

_EMBED_KEYS = ("pos_embed.window_embed", "pos_embed.global_embed")


def _describe_embed(shapes: Mapping[str, Optional[Tuple[int, ...]]]) -> str:
    win, glob = shapes.get("pos_embed.window_embed"), shapes.get("pos_embed.global_embed")
    parts = []
    parts.append(f"window {win[-2]}x{win[-1]}" if win else "no window embedding")
    parts.append(f"global {glob[-2]}x{glob[-1]}" if glob else "no global embedding")
    return " + ".join(parts)


def _describe_model(arch: str, module: nn.Module) -> str:
    architecture = model_layout(arch, module)[1]
    shape = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in architecture.items())
    return f"{arch}({shape})"


def check_backbone_state_dict(
    arch: str,
    backbone: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    meta: Optional[Mapping[str, Any]] = None,
    where: str = "",
) -> None:
    """Raises :class:`CheckpointError` unless ``state_dict`` (backbone-relative keys) fits ``backbone``.

    Checks the position-embedding layout (window / global grids present and of the same size), then
    every other shape; missing relative position tables are fine (new by design). With ``meta`` (a converted
    file) the keys must match too: checkpoint keys the model lacks, or model keys the checkpoint lacks (a
    deeper model), are a size mismatch.
    """
    model_sd = backbone.state_dict()
    location = f" at '{where.rstrip('.')}'" if where else ""
    ck_embed = {k: tuple(state_dict[k].shape) if k in state_dict else None for k in _EMBED_KEYS}
    md_embed = {k: tuple(model_sd[k].shape) if k in model_sd else None for k in _EMBED_KEYS}
    has_embed = any(v is not None for v in ck_embed.values())
    if has_embed and [v and v[-2:] for v in ck_embed.values()] != [v and v[-2:] for v in md_embed.values()]:
        if meta and meta.get("embed_kwargs"):
            fix = config_overrides(meta["embed_kwargs"], f"model.{where.rstrip('.')}" if where else "<backbone>")
        else:
            win, glob = ck_embed["pos_embed.window_embed"], ck_embed["pos_embed.global_embed"]
            fix = [
                f"pos_embed_window={win[-1] if win else None}",
                f"pos_embed_global={glob[-1] if glob else None}",
            ]
        raise CheckpointError(
            f"position-embedding layout mismatch{location}: the checkpoint has {_describe_embed(ck_embed)}, but the "
            f"model's {arch} was built with {_describe_embed(md_embed)}. Build the backbone to match the checkpoint "
            "(hieradet.checkpoint.apply_checkpoint_layout(cfg, checkpoint) does, as the tools do): " + ", ".join(fix)
        )
    trained = bool(meta) and meta.get("kind") == "trained"  # a training checkpoint has every key, sized as built
    wrong = [
        (k, tuple(v.shape), tuple(model_sd[k].shape))
        for k, v in state_dict.items()
        if k in model_sd and tuple(v.shape) != tuple(model_sd[k].shape) and ("rel_pos" not in k or trained)
    ]
    extra = [k for k in state_dict if k not in model_sd]
    lacking = []
    if meta is not None:
        lacking = [k for k in model_sd if k not in state_dict and (trained or not is_new_by_design(k))]
    if wrong or (meta is not None and (extra or lacking)):
        ck = "the checkpoint's backbone"
        if meta:  # e.g. HiViT-custom (embed_dim=64, depths=(1, 1, 10))
            shape = ", ".join(
                f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in meta.get("architecture", {}).items()
            )
            ck = f"{meta.get('arch')}-{meta.get('size') or 'custom'}" + (f" ({shape})" if shape else "")
        detail = "; ".join(f"{k}: {a} in the checkpoint vs {b} in the model" for k, a, b in wrong[:3])
        if extra:
            detail += ("; " if detail else "") + f"{len(extra)} checkpoint keys the model lacks, e.g. {extra[:3]}"
        if lacking:
            detail += ("; " if detail else "") + f"{len(lacking)} model keys the checkpoint lacks, e.g. {lacking[:3]}"
        raise CheckpointError(
            f"size mismatch{location}: {ck} does not fit the model's {_describe_model(arch, backbone)} ({detail}). "
            "Use a config of the checkpoint's size, or the checkpoint of the config's size."
        )


def _split_by_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


class HieraDetCheckpointer(AtomicSaveMixin, DetectionCheckpointer):
    """:class:`DetectionCheckpointer` that validates (and if needed converts) backbone weights.

    * A file written by ``tools/convert_checkpoint.py`` (it carries ``__hieradet__`` metadata) loads
      with its keys moved to wherever the model's backbone sits, and must match the backbone exactly
      apart from the relative position tables that are new by design.
    * A raw pretrained file (MAE ViT, official / timm Hiera, SAM 2, official HiViT) is converted in memory first
      (``convert_raw=True``), as the tool would do.
    * Any backbone weight of another shape raises :class:`CheckpointError` instead of being skipped,
      before anything is loaded; an empty, truncated or corrupt file raises one that names the file.
    Other weights (FPN, heads, a resumed optimizer) load as with :class:`DetectionCheckpointer`.

    Args:
        model, save_dir, save_to_disk, checkpointables: as in :class:`DetectionCheckpointer`.
        convert_raw (bool): convert raw pretrained checkpoints on load.
    """

    def __init__(self, model, save_dir="", *, save_to_disk=None, convert_raw: bool = True, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.convert_raw = convert_raw
        self._source = ""

    def save(self, name: str, **kwargs: Any) -> None:
        """Saves as :class:`DetectionCheckpointer` does, with the backbone's layout record under ``__hieradet__``
        (see :mod:`hieradet.checkpoint.layout`), so the file later rebuilds the model it was written from."""
        meta = training_metadata(self.model)
        if meta is not None:
            kwargs.setdefault(METADATA_KEY, meta)
        super().save(name, **kwargs)

    def load(self, path: str, checkpointables=None) -> Dict[str, Any]:
        self._source = path
        return super().load(path, checkpointables)

    def _torch_load(self, f: str) -> Dict[str, Any]:
        # torch files (and .safetensors): an unreadable file raises a CheckpointError naming it
        loaded = load_checkpoint_file(f)
        return loaded if isinstance(loaded, dict) else {"model": loaded}

    def _prepare(self, checkpoint: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Converts / re-prefixes ``checkpoint["model"]`` in place; returns the metadata (or None)."""
        backbones = find_backbones(self.model)
        sd = checkpoint["model"]
        meta = checkpoint.get(METADATA_KEY)
        if isinstance(sd, Mapping) and any(isinstance(v, Mapping) for v in sd.values()):
            # detectron2 wraps a file without a "model" entry as {"model": file}, e.g. {"model_state": ...}
            sd, extra = unwrap_state_dict(sd)
            meta = meta if meta is not None else extra.get(METADATA_KEY)
            checkpoint["model"] = sd
        if not backbones:
            return meta
        if meta is None:  # e.g. a model_final.pth written by detectron2's own tools: the record is in the weights
            records = state_dict_records(sd)
            inside = {p: r for p, r in records.items() if p in backbones}
            if not inside and len(records) == 1:
                # a backbone of ours at another place (e.g. a ViT's weights for a HieraDet model): the record says
                # which; the metadata path below moves the keys or refuses another family, instead of detectron2
                # loading nothing into the backbone without an error
                inside = records
            if len(inside) == 1:
                ((prefix, record),) = inside.items()
                meta = dict(record, prefix=prefix)
        if meta is None and self.convert_raw:
            try:
                detect_format(sd)
            except CheckpointError:
                pass  # not a raw pretrained file (e.g. a detectron2 training checkpoint)
            else:
                result = convert_state_dict(sd)
                prefix = self._target_prefix(result.arch, backbones, None)
                converted = build_converted_checkpoint(result, prefix)
                for line in summarize(result, prefix):
                    logger.info("[HieraDetCheckpointer] %s", line)
                sd, meta = converted["model"], converted[METADATA_KEY]
                checkpoint["matching_heuristics"] = False  # exact keys now, e.g. for "...pth?matching_heuristics=True"
        if meta is not None:
            src_prefix = meta.get("prefix", "")
            prefix = self._target_prefix(meta.get("arch"), backbones, src_prefix)
            if prefix != src_prefix:
                logger.info("[HieraDetCheckpointer] moving backbone keys from %r to %r", src_prefix, prefix)
                sd = {prefix + k[len(src_prefix) :] if k.startswith(src_prefix) else k: v for k, v in sd.items()}
            meta = dict(meta, prefix=prefix)
            if add_layout_record(sd, meta, prefix):
                logger.info("[HieraDetCheckpointer] %s: layout record from its %s metadata", self._source, METADATA_KEY)
        for prefix, (arch, module) in backbones.items():
            part = _split_by_prefix(sd, prefix)
            if part and (meta is None or meta.get("prefix") == prefix):
                check_backbone_state_dict(arch, module, part, meta, where=prefix)
                if meta is not None:
                    check_model_layout(record_from_metadata(meta), arch, module, prefix, self._source)
        checkpoint["model"] = sd
        return meta

    def _target_prefix(self, arch: Optional[str], backbones: Mapping[str, Tuple[str, nn.Module]], current) -> str:
        if current is not None and current in backbones and backbones[current][0] == arch:
            return current
        same = [p for p, (a, _) in backbones.items() if a == arch]
        if len(same) == 1:
            return same[0]
        have = ", ".join(f"{a} at '{p.rstrip('.')}'" for p, (a, _) in backbones.items())
        if not same:
            raise CheckpointError(f"the checkpoint holds {arch} weights but the model's backbone is {have}")
        raise CheckpointError(f"the model has several {arch} backbones ({have}); convert with --prefix to choose one")

    def _load_model(self, checkpoint: Any):
        meta = self._prepare(checkpoint)
        incompatible = super()._load_model(checkpoint)
        if meta is not None and meta.get("prefix") is not None:
            prefix = meta["prefix"]
            unexpected = [k for k in incompatible.unexpected_keys if k.startswith(prefix)]
            trained = meta.get("kind") == "trained"
            missing = [
                k
                for k in incompatible.missing_keys
                if k.startswith(prefix) and (trained or not is_new_by_design(k[len(prefix) :]))
            ]
            reshaped = [k for k, *_ in incompatible.incorrect_shapes if k.startswith(prefix)]
            if unexpected or missing or reshaped:
                raise CheckpointError(
                    f"checkpoint does not match the backbone at '{prefix.rstrip('.')}': "
                    f"missing {missing[:5]}, unexpected {unexpected[:5]}, other shapes {reshaped[:5]}"
                )
        return incompatible


def load_backbone_checkpoint(backbone: nn.Module, checkpoint, allow_pickle: bool = False) -> List[str]:
    """Loads a converted or raw pretrained checkpoint into a bare HieraDet / ViT / HiViT.

    Args:
        backbone: the backbone module.
        checkpoint: a path, or an already loaded checkpoint dict.
        allow_pickle (bool): see :func:`hieradet.checkpoint.io.load_checkpoint_file`.
    Returns:
        the backbone keys that were not in the checkpoint (by design: relative position tables, HiViT's output
        norms).
    Raises:
        CheckpointError: unreadable file, unknown format, another architecture / size / embedding layout.
    """
    backbones = find_backbones(backbone)
    if "" not in backbones:
        raise TypeError(f"load_backbone_checkpoint needs a HieraDet, ViT or HiViT, got {type(backbone).__name__}")
    arch = backbones[""][0]
    source = checkpoint if isinstance(checkpoint, str) else "checkpoint"
    obj = load_checkpoint_file(checkpoint, allow_pickle) if isinstance(checkpoint, str) else checkpoint
    sd, extra = unwrap_state_dict(obj, source)
    meta = extra.get(METADATA_KEY)
    if meta is None:
        result = convert_state_dict(sd)
        meta = build_converted_checkpoint(result, "")[METADATA_KEY]
        sd = result.state_dict
    else:
        sd = _split_by_prefix(sd, meta.get("prefix", ""))
        add_layout_record(sd, meta, "")
    if meta.get("arch") != arch:
        raise CheckpointError(f"{source} holds {meta.get('arch')} weights but the backbone is a {arch}")
    check_backbone_state_dict(arch, backbone, sd, meta)
    check_model_layout(record_from_metadata(meta), arch, backbone, "", source)
    missing, unexpected = backbone.load_state_dict(sd, strict=False)
    bad = [k for k in missing if not is_new_by_design(k)]
    if bad or unexpected:
        raise CheckpointError(f"{source} does not match the {arch}: missing {bad[:5]}, unexpected {unexpected[:5]}")
    return list(missing)
