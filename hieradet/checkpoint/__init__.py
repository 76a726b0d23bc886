"""Converting pretrained checkpoints into the detection backbones' state dicts."""

from .convert import grid_from_tokens, official_hiera_to_hieradet, vit_to_abswin_vit

__all__ = ["grid_from_tokens", "official_hiera_to_hieradet", "vit_to_abswin_vit"]
