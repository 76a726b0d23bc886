"""Reading checkpoint files with errors that say what is wrong with them.

``torch.load`` reports a truncated download as "PytorchStreamReader failed reading zip archive" and a
pickled object it may not load as a long "Weights only load failed" text; here every such failure
becomes a :class:`CheckpointError` naming the file and the likely cause.
"""

import os
import pickle
import zipfile
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..modeling.layout_record import CheckpointError  # defined with the load hooks that raise it too

__all__ = ["CheckpointError", "load_checkpoint_file", "unwrap_state_dict", "STATE_DICT_CONTAINERS"]

# where the weights sit inside a checkpoint file, in the order they are looked for:
# MAE / SAM 2 / detectron2 ("model"), official Hiera ("model_state"), Lightning-style ("state_dict")
STATE_DICT_CONTAINERS = ("model", "model_state", "state_dict", "module")


def load_checkpoint_file(path: str, allow_pickle: bool = False) -> Any:
    """Loads a ``.pth``/``.pt``/``.pyth``/``.bin`` (torch) or ``.safetensors`` file on the CPU.

    Args:
        path (str): local file.
        allow_pickle (bool): let ``torch.load`` unpickle arbitrary Python objects (only for files you
            trust; some training checkpoints store e.g. an ``argparse.Namespace`` next to the weights).
    Raises:
        FileNotFoundError: no such file.
        CheckpointError: empty, truncated or corrupt file, or one that needs ``allow_pickle``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the download or copy did not complete")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors comes with timm
            raise CheckpointError(
                f"reading {path} needs the `safetensors` package, hieradet's `safetensors` extra: "
                "pip install 'hieradet[safetensors]' (or pip install safetensors)"
            ) from e
        try:
            return load_file(path, device="cpu")
        except Exception as e:
            raise CheckpointError(
                f"cannot read safetensors checkpoint {path} ({size} bytes): the file is truncated or corrupt "
                f"({type(e).__name__}: {e})"
            ) from e
    kind = _torch_file_kind(path)
    if kind is None:
        # checked before unpickling: random bytes would otherwise be reported as "pickled Python objects ...
        # pass allow_pickle=True", sending the user to an unsafe option for a file that is simply damaged
        raise CheckpointError(
            f"cannot read checkpoint {path} ({size} bytes): not a torch checkpoint: truncated or corrupt "
            "(neither a complete zip archive, as torch.save writes, nor a legacy pickle); download or copy it again"
        )
    if kind == "partial zip":
        raise CheckpointError(
            f"cannot read checkpoint {path} ({size} bytes): not a torch checkpoint: truncated or corrupt (a zip "
            "archive without its end record: an incomplete download or copy?); download or copy it again"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise CheckpointError(
                f"checkpoint {path} contains pickled Python objects besides tensors, which are not loaded by "
                "default for safety. If you trust the file, pass allow_pickle=True (tools/convert_checkpoint.py: "
                f"--allow-pickle). Detail: {str(e).splitlines()[0]}"
            ) from e
        raise CheckpointError(
            f"cannot read checkpoint {path} ({size} bytes): not a valid torch file, or corrupt ({e})"
        ) from e
    except Exception as e:  # torch.load raises anything from EOFError to IndexError on a damaged file
        raise CheckpointError(
            f"cannot read checkpoint {path} ({size} bytes): the file is truncated or corrupt "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e


def _torch_file_kind(path: str) -> Optional[str]:
    """What ``path`` looks like: ``"zip"`` (``torch.save`` since torch 1.6), ``"pickle"`` (legacy format:
    first byte ``0x80``, the pickle protocol opcode), ``"partial zip"`` (zip magic but no end record: a
    truncated file) or ``None`` (neither)."""
    if zipfile.is_zipfile(path):
        return "zip"
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == b"\x80":
        return "pickle"
    if head == b"PK\x03\x04":
        return "partial zip"
    return None


def _strip_prefix(state_dict: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Finds the tensor dict inside a loaded checkpoint.

    Returns ``(state_dict, extra)``: the weights (a DataParallel ``module.`` prefix removed) and the
    other top-level entries of the file (e.g. ``__hieradet__`` metadata, ``epoch``).
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a dict of weights")
    extra: Dict[str, Any] = {}
    state = obj
    for key in STATE_DICT_CONTAINERS:
        if isinstance(obj.get(key), Mapping):
            state = obj[key]
            extra = {k: v for k, v in obj.items() if k != key}
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = list(obj.keys())[:8]
        raise CheckpointError(f"{source} contains no tensors (top-level keys: {keys})")
    skipped = [k for k in state if k not in tensors]
    if skipped and state is obj:
        extra = {k: obj[k] for k in skipped}
    return _strip_prefix(tensors, "module."), extra
