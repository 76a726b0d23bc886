"""Running a LazyConfig detector on single images (detectron2's ``DefaultPredictor`` reads only yacs configs)."""

import os
from typing import Optional

import numpy as np
import torch

__all__ = ["LazyPredictor"]


class LazyPredictor:
    """Builds ``cfg.model`` with the layout its weights need, loads them, and maps one BGR image to the
    model's output dict.

    The weights go through :func:`hieradet.checkpoint.apply_checkpoint_layout` (before the model is built)
    and :class:`hieradet.checkpoint.HieraDetCheckpointer`, so a raw public checkpoint, a converted file and a
    training checkpoint all run as they were trained, and weights that do not fit are an error, not a warning.

    Args:
        cfg: a LazyConfig with ``model`` (and optionally ``dataloader.test.mapper.augmentations``, the test
            resize; an empty list means no resize; without the key the short edge goes to 800). Changed in place
            by the layout.
        checkpoint (str or None): weights to load; None: the config's ``train.init_checkpoint`` if set, else
            the random initialisation.
        device (str): ``"cpu"`` or ``"cuda"``.
    Raises:
        FileNotFoundError: no such checkpoint.
        hieradet.checkpoint.CheckpointError: a damaged checkpoint, or one that does not fit the config.
    """

    def __init__(self, cfg, checkpoint: Optional[str] = None, device: str = "cpu"):
        import detectron2.data.transforms as T
        from detectron2.config import instantiate

        from ..checkpoint import HieraDetCheckpointer, apply_checkpoint_layout

        if "model" not in cfg:
            raise ValueError("the config defines no `model`")
        if checkpoint is None:
            checkpoint = cfg.get("train", {}).get("init_checkpoint", "") or None
        if checkpoint:
            if "://" not in checkpoint and not os.path.isfile(checkpoint):
                raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
            apply_checkpoint_layout(cfg, checkpoint)
        self.model = instantiate(cfg.model)
        self.model.to(device).eval()
        if checkpoint:
            HieraDetCheckpointer(self.model).load(checkpoint)
        self.checkpoint = checkpoint
        inner = getattr(self.model, "model", self.model)  # a TTA wrapper holds the detector as .model
        self.input_format = getattr(inner, "input_format", "BGR")
        augs = None
        try:
            augs = cfg.dataloader.test.mapper.augmentations
        except (AttributeError, KeyError):
            pass
        # an empty list is a config's way to say "no resize" (e.g. the demo's fixed-size images), not "no config"
        self.aug = T.AugmentationList(instantiate(augs) if augs is not None else [T.ResizeShortestEdge(800, 1333)])
        self.tta = hasattr(self.model, "tta_mapper")

    @torch.no_grad()
    def __call__(self, image_bgr: np.ndarray) -> dict:
        """Args: image_bgr: an HWC uint8 image in BGR order (as ``cv2.imread`` gives). Returns: the model's
        output for it (``{"instances": Instances}`` in the original image's coordinates)."""
        import detectron2.data.transforms as T

        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        h, w = image.shape[:2]
        if not self.tta:  # the TTA wrapper resizes the original image itself
            image = T.AugInput(image)
            self.aug(image)
            image = image.image
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return self.model([{"image": tensor, "height": h, "width": w}])[0]
