"""Pictures of a position embedding: channels of every method's full embedding, and window similarity curves
(Bolya et al. 2024, Fig. 1, 3, 4 and 6)."""

from typing import List, Optional, Sequence, Tuple

import torch

from .pos_embed import MODE_LABELS, MODES, EmbedSource, full_embeddings

__all__ = ["plot_channels", "plot_similarity"]


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
