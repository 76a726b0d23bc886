"""Absolute position embeddings at detection sizes: the embedding each method builds, and how alike its windows are.

Bolya et al. 2024 "Window Attention is Bugged" (Fig. 4) measure how well an embedding lines up with the detection
windows by the mean pairwise cosine similarity between its windows: the recursive abs-win embedding repeats the
pretraining-size embedding in every detection window (similarity 1), interpolation stretches it.

* :func:`window_similarity`: the measure; :func:`similarity_table`: it per method and image size;
* :class:`EmbedSource`: an ``AbsWinPosEmbed`` with its token stride, from a LazyConfig (:func:`embed_from_config`)
  or from a checkpoint's tensors alone (:func:`embed_from_checkpoint`);
* :func:`full_embeddings`: the embedding every method builds at one image size.

The pictures are drawn by :mod:`hieradet.analysis.plots`; ``tools/visualize_pos_embed.py`` is the command line.
"""

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "MODES",
    "MODE_LABELS",
    "EmbedSource",
    "embed_from_checkpoint",
    "embed_from_config",
    "embed_in_mode",
    "format_table",
    "full_embeddings",
    "pick_channels",
    "similarity_table",
    "window_similarity",
]

MODES = ("abswin", "abswin_single", "interpolate")
MODE_LABELS = {"abswin": "abs-win (recursive)", "abswin_single": "abs-win (one level)", "interpolate": "interpolated"}


@torch.no_grad()
def embed_in_mode(pos_embed, hw: Tuple[int, int], mode: str) -> torch.Tensor:
    """The (1, C, h, w) embedding ``pos_embed`` builds for an ``hw`` feature map by method ``mode``
    (:meth:`~hieradet.modeling.pos_embed.AbsWinPosEmbed.embed`; the module keeps its own mode)."""
    return pos_embed.embed(hw, mode=mode)


def window_similarity(embed: torch.Tensor, window: int) -> float:
    """Mean pairwise cosine similarity between the non-overlapping ``window`` x ``window`` windows of an
    embedding (only windows that fit entirely; each window is one vector of C * window**2 numbers).

    Args:
        embed (Tensor): (C, H, W) or (1, C, H, W) grid.
        window (int): window side in tokens.
    Returns:
        float: 1.0 when every window is the same; lower the more the windows differ.
    Raises:
        ValueError: fewer than two full windows fit.
    """
    if embed.dim() == 4:
        if embed.shape[0] != 1:
            raise ValueError(f"expected one embedding, got a batch of {embed.shape[0]}")
        embed = embed[0]
    if embed.dim() != 3:
        raise ValueError(f"expected a (C, H, W) embedding, got shape {tuple(embed.shape)}")
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    c, h, w = embed.shape
    nh, nw = h // window, w // window
    if nh * nw < 2:
        raise ValueError(f"a {h}x{w} embedding holds {nh * nw} full {window}x{window} window(s); need at least 2")
    x = embed[:, : nh * window, : nw * window].detach().double()
    x = x.reshape(c, nh, window, nw, window).permute(1, 3, 0, 2, 4).reshape(nh * nw, -1)
    x = torch.nn.functional.normalize(x, dim=1)
    sim = x @ x.T
    n = sim.shape[0]
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


class EmbedSource:
    """A position embedding to analyse.

    Args:
        pos_embed (AbsWinPosEmbed): the module (left as it is: other modes are computed by :func:`embed_in_mode`).
        stride (int): backbone stride of the embedding's tokens (4 for Hiera, 16 for ViT).
        name (str): shown in titles.
    """

    def __init__(self, pos_embed, stride: int, name: str):
        self.pos_embed = pos_embed
        self.stride = int(stride)
        self.name = name

    @property
    def tile(self) -> int:
        """The pretraining token grid: the detection window of the recursive abs-win embedding."""
        return int(self.pos_embed.pretrain_size[0])

    @property
    def window(self) -> Optional[int]:
        """Side of the learned window embedding (None without one)."""
        we = self.pos_embed.window_embed
        return None if we is None else int(we.shape[-1])

    @torch.no_grad()
    def embed(self, mode: str, img_size: int) -> torch.Tensor:
        """(1, C, h, w) embedding for an ``img_size`` square image with method ``mode``."""
        side = math.ceil(img_size / self.stride)
        return embed_in_mode(self.pos_embed, (side, side), mode)


def _find_pos_embed(module):
    from hieradet.modeling.pos_embed import AbsWinPosEmbed

    pe = getattr(module, "pos_embed", None)
    return pe if isinstance(pe, AbsWinPosEmbed) else None


def _stride_of(backbone) -> int:
    proj = getattr(getattr(backbone, "patch_embed", None), "proj", None)
    if proj is None or not hasattr(proj, "stride"):
        raise ValueError(f"cannot find the patch embedding stride of {type(backbone).__name__}")
    return int(proj.stride[0])


def embed_from_config(
    config_file: str, opts: Sequence[str] = (), checkpoint: Optional[str] = None, allow_pickle: bool = False
) -> EmbedSource:
    """Builds the backbone of a LazyConfig model (``model.backbone.bottom_up`` for FPN models,
    ``model.backbone.net`` for SimpleFeaturePyramid, or ``model.backbone``) and returns its embedding,
    optionally with the weights of ``checkpoint`` (a detectron2 / converted checkpoint of the model or
    of the backbone alone)."""
    from detectron2.config import LazyConfig, instantiate

    from hieradet.model_zoo import resolve_config_path

    config_file = resolve_config_path(config_file)
    cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), list(opts))
    if "model" not in cfg:
        raise ValueError(f"{config_file} defines no `model`")
    node, path = None, None
    for path in ("backbone.bottom_up", "backbone.net", "backbone"):
        node = cfg.model
        for part in path.split("."):
            node = node.get(part) if hasattr(node, "get") else None
            if node is None:
                break
        if node is not None and "pos_embed" in node:
            break
        node = None
    if node is None:
        raise ValueError(
            f"{config_file}: no backbone with a `pos_embed` option under model.backbone.bottom_up, "
            "model.backbone.net or model.backbone"
        )
    backbone = instantiate(node)
    pe = _find_pos_embed(backbone)
    if pe is None:
        raise ValueError(f"model.{path} ({type(backbone).__name__}) has no AbsWinPosEmbed `pos_embed` module")
    name = f"{os.path.basename(config_file)} ({type(backbone).__name__}, random init)"
    if checkpoint:
        state = _load_state_dict(checkpoint, allow_pickle)
        prefix = _embed_prefix(state, checkpoint)
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        _copy_into(pe, sub, checkpoint)
        name = f"{os.path.basename(config_file)} + {os.path.basename(checkpoint)}"
    return EmbedSource(pe, _stride_of(backbone), name)


def _load_state_dict(path: str, allow_pickle: bool = False) -> Dict[str, torch.Tensor]:
    from hieradet.checkpoint import load_checkpoint_file, unwrap_state_dict

    state, _ = unwrap_state_dict(load_checkpoint_file(path, allow_pickle), source=f"checkpoint {path}")
    return state


def _embed_prefix(state: Dict[str, torch.Tensor], path: str) -> str:
    """The key prefix in front of ``window_embed`` / ``global_embed`` (e.g. ``backbone.bottom_up.pos_embed.``)."""
    prefixes = sorted(
        {k[: -len(s)] for k in state for s in ("window_embed", "global_embed") if k.endswith("pos_embed." + s)}
    )
    if not prefixes:
        found = [k for k in state if "pos_embed" in k][:5]
        raise ValueError(
            f"checkpoint {path} has no `...pos_embed.window_embed` / `...pos_embed.global_embed` tensors"
            + (f" (pos-embed keys found: {found}; convert it with tools/convert_checkpoint.py)" if found else "")
        )
    if len(prefixes) > 1:
        raise ValueError(f"checkpoint {path} holds several position embeddings: {prefixes}; pass --prefix")
    return prefixes[0]


def _copy_into(pe, sub: Dict[str, torch.Tensor], path: str) -> None:
    for name in ("window_embed", "global_embed"):
        param, value = getattr(pe, name), sub.get(name)
        if (param is None) != (value is None):
            have = "no" if param is None else f"a {tuple(param.shape)}"
            got = "none" if value is None else f"{tuple(value.shape)}"
            raise ValueError(f"checkpoint {path}: the model has {have} {name}, the checkpoint has {got}")
        if param is not None:
            if param.shape != value.shape:
                raise ValueError(
                    f"checkpoint {path}: {name} has shape {tuple(value.shape)}, the config's model expects "
                    f"{tuple(param.shape)}"
                )
            with torch.no_grad():
                param.copy_(value)


def embed_from_checkpoint(
    path: str,
    prefix: Optional[str] = None,
    patch_stride: Optional[int] = None,
    pretrain_img_size: int = 224,
    allow_pickle: bool = False,
) -> EmbedSource:
    """Rebuilds the embedding of a checkpoint from its ``...pos_embed.window_embed`` /
    ``...pos_embed.global_embed`` tensors; their shapes give the window and global sizes. The token
    stride comes from the ``patch_embed.proj.weight`` kernel (7 -> 4 for Hiera, 16 -> 16 for ViT)
    unless ``patch_stride`` is given."""
    from hieradet.modeling.pos_embed import AbsWinPosEmbed

    state = _load_state_dict(path, allow_pickle)
    if prefix is None:
        prefix = _embed_prefix(state, path)
    elif not prefix.endswith("."):
        prefix += "."
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    win, glb = sub.get("window_embed"), sub.get("global_embed")
    if win is None and glb is None:
        raise ValueError(f"checkpoint {path} has no `{prefix}window_embed` or `{prefix}global_embed`")
    for name, t in (("window_embed", win), ("global_embed", glb)):
        if t is not None and t.dim() != 4:
            raise ValueError(f"checkpoint {path}: {prefix}{name} should be (1, C, h, w), got {tuple(t.shape)}")
    if patch_stride is None:
        root = prefix[: -len("pos_embed.")]
        kernel = state.get(root + "patch_embed.proj.weight")
        strides = {7: 4, 16: 16}
        if kernel is None or kernel.shape[-1] not in strides:
            raise ValueError(
                f"checkpoint {path}: cannot infer the patch stride (no {root}patch_embed.proj.weight with a 7 "
                "or 16 kernel); pass --patch-stride"
            )
        patch_stride = strides[kernel.shape[-1]]
    dim = (win if win is not None else glb).shape[1]
    pe = AbsWinPosEmbed(
        dim,
        pretrain_size=pretrain_img_size // patch_stride,
        window_size=None if win is None else tuple(win.shape[-2:]),
        global_size=None if glb is None else tuple(glb.shape[-2:]),
    )
    _copy_into(pe, sub, path)
    return EmbedSource(pe, patch_stride, os.path.basename(path))


def full_embeddings(src: EmbedSource, img_size: int) -> Dict[str, torch.Tensor]:
    """``{method: (1, C, h, w)}`` at ``img_size`` for the three methods (one-level abs-win only when
    there is a global embedding; without one it equals the recursive one)."""
    modes = [m for m in MODES if m != "abswin_single" or src.pos_embed.global_embed is not None]
    return {m: src.embed(m, img_size) for m in modes}


def similarity_table(src: EmbedSource, img_sizes: Sequence[int]) -> List[dict]:
    """Window similarity of every method at every image size, for the detection window (the pretraining
    tile) and for the window embedding's size. Entries that do not hold two full windows are None."""
    windows = {"tile": src.tile}
    if src.window is not None and src.window != src.tile:
        windows["window"] = src.window
    rows = []
    for size in img_sizes:
        for mode, emb in full_embeddings(src, size).items():
            row = {"img_size": int(size), "method": mode}
            for key, win in windows.items():
                try:
                    row[f"{key}_{win}"] = window_similarity(emb, win)
                except ValueError:
                    row[f"{key}_{win}"] = None
            rows.append(row)
    return rows


def format_table(rows: List[dict]) -> str:
    """The rows of :func:`similarity_table` as aligned text (``-``: fewer than two full windows)."""
    cols = [k for k in rows[0] if k not in ("img_size", "method")]
    head = f"{'img_size':>8}  {'method':<14}" + "".join(f"  {c:>11}" for c in cols)
    lines = [head]
    for r in rows:
        vals = "".join(f"  {'-':>11}" if r[c] is None else f"  {r[c]:11.4f}" for c in cols)
        lines.append(f"{r['img_size']:>8}  {r['method']:<14}{vals}")
    return "\n".join(lines)


def pick_channels(src: EmbedSource, n: int) -> List[int]:
    """The ``n`` channels that vary most across the pretraining-size embedding."""
    with torch.no_grad():
        std = src.pos_embed.pretrain_embed()[0].flatten(1).std(dim=1)
    return [int(i) for i in torch.argsort(std, descending=True)[:n]]
