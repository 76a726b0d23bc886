"""Class weights for the federated loss (Zhou et al. 2021) that LVIS configs use."""

from typing import List, Sequence, Union

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["FedLossClassWeights"]


class FedLossClassWeights:
    """Callable giving each class's frequency weight ``image_count ** freq_weight_power``, for
    ``FastRCNNOutputLayers(use_fed_loss=True, get_fed_loss_cls_weights=...)``.

    Unlike a lambda it can live in a LazyConfig (and be saved with it). Counts come from the
    dataset's ``class_image_count`` metadata (LVIS v1); when that is absent (e.g. an LVIS-style json
    registered without it) they are counted from the dataset's annotations.

    Args:
        dataset_names (str or list[str]): training dataset(s); all must share one class list.
        freq_weight_power (float): exponent on the image counts (ViTDet: 0.5).
    """

    def __init__(self, dataset_names: Union[str, Sequence[str]], freq_weight_power: float = 0.5):
        self.dataset_names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
        if not self.dataset_names:
            raise ValueError("FedLossClassWeights needs at least one dataset name")
        self.freq_weight_power = freq_weight_power

    def image_counts(self) -> List[int]:
        """Images containing each class, in contiguous class-id order, summed over the datasets."""
        total = None
        for name in self.dataset_names:
            meta = MetadataCatalog.get(name)
            if meta.get("class_image_count") is not None:
                counts = [c["image_count"] for c in sorted(meta.class_image_count, key=lambda c: c["id"])]
            else:
                if meta.get("thing_classes") is None:
                    DatasetCatalog.get(name)  # loading fills thing_classes for COCO/LVIS json datasets
                num_classes = len(meta.get("thing_classes") or [])
                if num_classes == 0:
                    raise ValueError(f"dataset {name!r} has no thing_classes metadata; cannot compute fed-loss weights")
                counts = [0] * num_classes
                for record in DatasetCatalog.get(name):
                    for c in {a["category_id"] for a in record.get("annotations", [])}:
                        counts[c] += 1
            if total is not None and len(total) != len(counts):
                raise ValueError(f"datasets {self.dataset_names} have different numbers of classes")
            total = counts if total is None else [a + b for a, b in zip(total, counts)]
        return total

    def __call__(self) -> torch.Tensor:
        return torch.tensor(self.image_counts(), dtype=torch.float32) ** self.freq_weight_power

    def __repr__(self) -> str:
        return f"FedLossClassWeights(dataset_names={self.dataset_names}, freq_weight_power={self.freq_weight_power})"
