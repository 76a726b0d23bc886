"""What every backbone here shares: padding constraints for detectron2, the layout record every loader checks
(:mod:`hieradet.modeling.layout_record`), and constructor argument checks, so a bad config value fails at build
time with a message naming the value."""

from typing import Dict

from detectron2.modeling.backbone import Backbone

from .layout_record import install_layout_record

__all__ = ["PaddedBackbone", "check_img_size", "check_square_pad"]


class PaddedBackbone(Backbone):
    """A detectron2 ``Backbone`` whose batches detectron2 pads to a multiple of its largest output stride and,
    when ``self.square_pad > 0``, to that fixed square (ViTDet's ``square_pad``). Subclasses set ``square_pad``
    and ``_out_feature_strides``.

    Its state dict carries a ``layout_record`` buffer (the backbone's layout, see
    :mod:`hieradet.modeling.layout_record`); loading a state dict checks the record it holds against the built
    model, adopts its ``pos_embed`` mode where the model's is ``"auto"``, and raises on anything else that differs.
    """

    square_pad: int = 0

    def __init__(self):
        super().__init__()
        install_layout_record(self)

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides.values())

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self.size_divisibility, "square_size": self.square_pad}


def check_img_size(img_size: int) -> None:
    if img_size <= 0:
        raise ValueError(f"img_size must be positive (the image size the relpos tables are sized for), got {img_size}")


def check_square_pad(square_pad: int, divisor: int) -> None:
    """``square_pad`` must be 0 (off) or a multiple of the backbone's largest stride ``divisor``: detectron2
    would otherwise round the padded size up to the next multiple, silently changing the fixed input size."""
    if square_pad < 0 or square_pad % divisor:
        raise ValueError(f"square_pad={square_pad} must be 0 (no square padding) or a positive multiple of {divisor}")
