"""Analyses of trained or random-init backbones (position embeddings at detection sizes); the command line is
``tools/visualize_pos_embed.py``."""

from .pos_embed import (
    MODES,
    EmbedSource,
    embed_from_checkpoint,
    embed_from_config,
    embed_in_mode,
    full_embeddings,
    similarity_table,
    window_similarity,
)

__all__ = [
    "MODES",
    "EmbedSource",
    "embed_from_checkpoint",
    "embed_from_config",
    "embed_in_mode",
    "full_embeddings",
    "similarity_table",
    "window_similarity",
]
