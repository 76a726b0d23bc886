"""Converting pretrained checkpoints into the detection backbones' state dicts, and loading them.

* :func:`convert_state_dict` turns an MAE ViT, official / timm Hiera, timm abs-win Hiera, SAM 2 or official
  HiViT checkpoint into backbone weights (:class:`ConversionResult`); :func:`build_converted_checkpoint`
  makes the file ``tools/convert_checkpoint.py`` writes (full model keys + ``__hieradet__`` metadata).
* :func:`apply_checkpoint_layout` sets the backbone fields a checkpoint's weights need (its *layout*, recorded
  in every file the project writes, see :mod:`hieradet.checkpoint.layout`) on a config before the model is built.
* :class:`HieraDetCheckpointer` loads such a file (or a raw pretrained one) into a detectron2 model and
  refuses backbone weights that do not fit, instead of skipping them; :func:`load_backbone_checkpoint` does the
  same for a bare backbone. Both convert raw files with :func:`convert_state_dict`, the one conversion path.
"""

from .checkpointer import HieraDetCheckpointer, check_backbone_state_dict, load_backbone_checkpoint
from .convert import (
    METADATA_KEY,
    SOURCE_FORMATS,
    ConversionResult,
    build_converted_checkpoint,
    config_overrides,
    convert_state_dict,
    default_prefix,
    detect_format,
    grid_from_tokens,
    summarize,
    vit_to_abswin_vit,
)
from .formats import FORMATS, SourceFormat, register_format, unregister_format
from .io import CheckpointError, load_checkpoint_file, unwrap_state_dict
from .keymaps import official_hivit_layout
from .layout import (
    LAYOUT_FIELDS,
    apply_checkpoint_layout,
    check_model_layout,
    find_backbone_configs,
    find_backbones,
    model_layout,
    read_checkpoint_layout,
    training_metadata,
)

__all__ = [
    "CheckpointError",
    "FORMATS",
    "SourceFormat",
    "register_format",
    "unregister_format",
    "LAYOUT_FIELDS",
    "apply_checkpoint_layout",
    "check_model_layout",
    "find_backbone_configs",
    "model_layout",
    "read_checkpoint_layout",
    "training_metadata",
    "ConversionResult",
    "HieraDetCheckpointer",
    "METADATA_KEY",
    "SOURCE_FORMATS",
    "build_converted_checkpoint",
    "check_backbone_state_dict",
    "config_overrides",
    "convert_state_dict",
    "default_prefix",
    "detect_format",
    "find_backbones",
    "grid_from_tokens",
    "load_backbone_checkpoint",
    "load_checkpoint_file",
    "official_hivit_layout",
    "summarize",
    "unwrap_state_dict",
    "vit_to_abswin_vit",
]
