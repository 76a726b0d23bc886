"""The classifier fine-tuned in the reproduction: a HieraDet trunk and a (region-)pooled linear head."""

import torch
from torch import nn

from hieradet.modeling.hieradet import HieraDet

__all__ = ["HieraClassifier"]


class HieraClassifier(nn.Module):
    """A HieraDet trunk + mean pool of the last stage + LayerNorm + linear head (Hiera's classifier).

    Args:
        trunk (HieraDet): the backbone; its ``scale5`` output is pooled.
        num_classes (int): outputs of the linear head.
        regions (int): 1 mean-pools the whole last stage (Hiera's head); ``r > 1`` mean-pools it over an
            ``r x r`` grid of cells, normalises each and concatenates them (the same head at every image size).
    """

    def __init__(self, trunk: HieraDet, num_classes: int, regions: int = 1):
        super().__init__()
        if regions < 1:
            raise ValueError(f"regions must be >= 1, got {regions}")
        self.trunk = trunk
        self.regions = regions
        dim = trunk._out_feature_channels["scale5"]
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim * regions * regions, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = nn.functional.adaptive_avg_pool2d(self.trunk(x)["scale5"], self.regions)  # B, C, r, r
        return self.head(self.norm(f.flatten(2).transpose(1, 2)).flatten(1))
