#!/usr/bin/env python
"""Pictures and window-similarity numbers of a backbone's absolute position embedding.

For a HieraDet / ViT LazyConfig (random init, or with ``--checkpoint`` weights) or for a checkpoint
alone, writes

* ``pos_embed_channels.png``: a few channels of the window embedding, the global embedding, the
  embedding at the pretraining size (224 px) and the full embedding at ``--img-size`` made by the
  recursive abs-win method, by one-level abs-win and by bicubic interpolation (the bug), side by side,
  with the detection-window grid drawn on the full embeddings (Bolya et al. 2024, Fig. 1, 3 and 6);
* ``window_similarity.png`` and ``window_similarity.json``: the mean pairwise cosine similarity between
  the embedding's windows (Fig. 4) against image size, per method, for the detection window (the
  224 px tile: 56 tokens at stride 4, 14 at stride 16) and for the window embedding's own size (Hiera's
  8x8 mask units); the table is also printed.

Examples::

    python tools/visualize_pos_embed.py --config-file configs/common/models/mask_rcnn_hieradet.py \\
        --img-size 1024 --output output/pos_embed
    python tools/visualize_pos_embed.py --checkpoint hieradet_b.pth --output output/pos_embed_ckpt
"""

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = [
    "window_similarity",
    "EmbedSource",
    "embed_from_config",
    "embed_from_checkpoint",
    "full_embeddings",
    "similarity_table",
    "plot_channels",
    "plot_similarity",
    "main",
]

MODES = ("abswin", "abswin_single", "interpolate")
MODE_LABELS = {"abswin": "abs-win (recursive)", "abswin_single": "abs-win (one level)", "interpolate": "interpolated"}


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
        pos_embed (AbsWinPosEmbed): the module (its ``mode`` is changed while plotting, then restored).
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
        old = self.pos_embed.mode
        self.pos_embed.mode = mode
        try:
            return self.pos_embed((side, side)).permute(0, 3, 1, 2)
        finally:
            self.pos_embed.mode = old


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

    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file not found: {config_file}")
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
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:
        hint = ""
        if "Weights only" in str(e):
            hint = " (it holds Python objects besides tensors: pass --allow-pickle if you trust it)"
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}{hint}") from e
    for key in ("model", "model_state", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of weights")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"checkpoint {path} contains no tensors")
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


def _format_table(rows: List[dict]) -> str:
    cols = [k for k in rows[0] if k not in ("img_size", "method")]
    head = f"{'img_size':>8}  {'method':<14}" + "".join(f"  {c:>11}" for c in cols)
    lines = [head]
    for r in rows:
        vals = "".join(f"  {'-':>11}" if r[c] is None else f"  {r[c]:11.4f}" for c in cols)
        lines.append(f"{r['img_size']:>8}  {r['method']:<14}{vals}")
    return "\n".join(lines)


def _pick_channels(src: EmbedSource, n: int) -> List[int]:
    with torch.no_grad():
        std = src.pos_embed.pretrain_embed()[0].flatten(1).std(dim=1)
    return [int(i) for i in torch.argsort(std, descending=True)[:n]]


def plot_channels(src: EmbedSource, img_size: int, channels: Sequence[int], out_path: str) -> None:
    """Writes the channel grid (rows: channels; columns: window, global, 224 px, full embeddings)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pe = src.pos_embed
    panels: List[Tuple[str, torch.Tensor, Optional[int]]] = []
    with torch.no_grad():
        if pe.window_embed is not None:
            panels.append((f"window embed {tuple(pe.window_embed.shape[-2:])}", pe.window_embed, None))
        if pe.global_embed is not None:
            panels.append((f"global embed {tuple(pe.global_embed.shape[-2:])}", pe.global_embed, None))
        pre = src.tile * src.stride
        panels.append((f"pretrain size ({pre} px)", pe.pretrain_embed(), src.window))
        for mode, emb in full_embeddings(src, img_size).items():
            panels.append((f"{MODE_LABELS[mode]}, {img_size} px", emb, src.tile))
    dim = panels[0][1].shape[1]
    bad = [c for c in channels if not 0 <= c < dim]
    if bad:
        raise ValueError(f"channels {bad} out of range: the embedding has {dim} channels")
    fig, axes = plt.subplots(
        len(channels), len(panels), figsize=(2.6 * len(panels), 2.6 * len(channels) + 0.6), squeeze=False
    )
    for r, ch in enumerate(channels):
        for c, (title, emb, grid) in enumerate(panels):
            ax = axes[r][c]
            img = emb[0, ch].detach().float().cpu().numpy()
            ax.imshow(img, cmap="viridis", interpolation="nearest")
            if grid:
                for k in range(grid, max(img.shape), grid):
                    ax.axhline(k - 0.5, color="white", lw=0.6, alpha=0.8)
                    ax.axvline(k - 0.5, color="white", lw=0.6, alpha=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"channel {ch}", fontsize=8)
    fig.suptitle(f"{src.name}: white lines = windows", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=60)
    plt.close(fig)


def plot_similarity(rows: List[dict], src: EmbedSource, out_path: str) -> None:
    """Writes window similarity vs image size, one line per method and one panel per window size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [k for k in rows[0] if k not in ("img_size", "method")]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.4), squeeze=False)
    for ax, col in zip(axes[0], cols):
        kind, win = col.split("_")
        for mode in MODES:
            pts = [(r["img_size"], r[col]) for r in rows if r["method"] == mode and r[col] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=MODE_LABELS[mode])
        px = int(win) * src.stride
        what = "detection window" if kind == "tile" else "window embed"
        ax.set_title(f"{what}: {win}x{win} tokens ({px} px)", fontsize=9)
        ax.set_xlabel("image size (px)")
        ax.set_ylabel("mean pairwise cosine sim. of windows")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"window similarity (Fig. 4 measure): {src.name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", help="LazyConfig of a model with a HieraDet or ViT backbone")
    p.add_argument("--checkpoint", help="weights (with --config-file: loaded into it; alone: shapes are inferred)")
    p.add_argument("--prefix", help="checkpoint key prefix of the embedding, e.g. backbone.bottom_up.pos_embed.")
    p.add_argument("--patch-stride", type=int, help="token stride when it cannot be inferred (Hiera 4, ViT 16)")
    p.add_argument("--pretrain-img-size", type=int, default=224, help="pretraining image size (default 224)")
    p.add_argument("--img-size", type=int, default=1024, help="image size of the full embeddings (default 1024)")
    p.add_argument(
        "--sizes", type=int, nargs="+", help="image sizes of the similarity curve (default: 224 to --img-size)"
    )
    p.add_argument("--channels", type=int, nargs="+", help="channels to plot (default: the 3 most varied)")
    p.add_argument("--allow-pickle", action="store_true", help="allow checkpoints with pickled objects")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init of a config's model (default 0)")
    p.add_argument("--output", default="output/pos_embed", help="output directory")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: key=value ...")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    args = get_parser().parse_args(argv)
    if not args.config_file and not args.checkpoint:
        raise SystemExit("visualize_pos_embed: give --config-file, --checkpoint, or both")
    if args.img_size <= 0 or args.pretrain_img_size <= 0:
        raise SystemExit("visualize_pos_embed: --img-size and --pretrain-img-size must be positive")
    torch.manual_seed(args.seed)
    try:
        if args.config_file:
            src = embed_from_config(args.config_file, args.opts, args.checkpoint, args.allow_pickle)
        else:
            src = embed_from_checkpoint(
                args.checkpoint, args.prefix, args.patch_stride, args.pretrain_img_size, args.allow_pickle
            )
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"visualize_pos_embed: {e}") from e
    sizes = args.sizes or [s for s in (224, 320, 448, 512, 640, 768, 896, 1024, 1280) if s < args.img_size] + [
        args.img_size
    ]
    channels = args.channels if args.channels else _pick_channels(src, 3)
    os.makedirs(args.output, exist_ok=True)
    rows = similarity_table(src, sizes)
    files = {
        "channels": os.path.join(args.output, "pos_embed_channels.png"),
        "similarity": os.path.join(args.output, "window_similarity.png"),
        "json": os.path.join(args.output, "window_similarity.json"),
    }
    try:
        plot_channels(src, args.img_size, channels, files["channels"])
    except ValueError as e:
        raise SystemExit(f"visualize_pos_embed: {e}") from e
    plot_similarity(rows, src, files["similarity"])
    with open(files["json"], "w") as f:
        json.dump({"source": src.name, "stride": src.stride, "tile": src.tile, "rows": rows}, f, indent=1)
    print(f"{src.name}: stride {src.stride}, pretrain grid {src.tile}x{src.tile}, window embed {src.window}")
    print("window similarity (mean pairwise cosine similarity of full windows; '-': fewer than 2 windows)")
    print(_format_table(rows))
    for f in files.values():
        print(f"wrote {f}")
    return {"source": src, "rows": rows, "files": files}


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
