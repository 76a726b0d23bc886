"""Constructor argument checks shared by the backbones, so a bad config value fails at build time
with a message naming the value."""

__all__ = ["check_img_size", "check_square_pad"]


def check_img_size(img_size: int) -> None:
    if img_size <= 0:
        raise ValueError(
            f"img_size must be positive (the detection image size relpos tables are sized for), got {img_size}"
        )


def check_square_pad(square_pad: int, divisor: int) -> None:
    """``square_pad`` must be 0 (off) or a multiple of the backbone's largest stride ``divisor``: detectron2
    would otherwise round the padded size up to the next multiple, silently changing the fixed input size."""
    if square_pad < 0 or square_pad % divisor:
        raise ValueError(f"square_pad={square_pad} must be 0 (no square padding) or a positive multiple of {divisor}")
