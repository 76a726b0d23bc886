"""Images for MAE pretraining: an ImageNet-style folder (class sub-folders, as torchvision's ``ImageFolder``
reads them, or a flat folder) or the project's generated images (:mod:`hieradet.data.synthetic`).

Augmentation as in Ryali et al. 2023 (Tab. 14a): random resized crop with scale [0.2, 1], horizontal flip;
then ImageNet mean / std normalisation (RGB), the statistics the detection configs use.
"""

import os
from typing import List, Sequence, Tuple

import torch
from torch.utils.data import Dataset

__all__ = [
    "ImageFolderDataset",
    "GeneratedImageDataset",
    "generated_image_folder",
    "list_images",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def list_images(root: str) -> List[str]:
    """All image files under ``root`` (recursively, sorted). Raises ``FileNotFoundError`` for a missing folder
    and ``ValueError`` for a folder without images."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist (or is not a folder)")
    files = []
    for dirpath, dirnames, names in os.walk(root, followlinks=True):
        dirnames.sort()
        files.extend(os.path.join(dirpath, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"image folder {root!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


class ImageFolderDataset(Dataset):
    """Unlabelled images from a folder tree, augmented for MAE.

    Args:
        root (str): a folder of images, or of class folders of images (ImageNet's ``train/``).
        img_size (int): output size (square).
        crop_scale (tuple): area range of the random resized crop; ``None`` for a plain resize.
        hflip (bool): random horizontal flip.
        mean, std (tuple): RGB normalisation, in [0, 1] units.
    """

    def __init__(
        self,
        root: str,
        img_size: int = 224,
        crop_scale: Tuple[float, float] = (0.2, 1.0),
        hflip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        from torchvision import transforms as T

        self.root = root
        self.files = list_images(root)
        ops = []
        if crop_scale is None:
            ops.append(T.Resize((img_size, img_size), interpolation=T.InterpolationMode.BICUBIC))
        else:
            ops.append(
                T.RandomResizedCrop(img_size, scale=tuple(crop_scale), interpolation=T.InterpolationMode.BICUBIC)
            )
        if hflip:
            ops.append(T.RandomHorizontalFlip())
        ops += [T.ToTensor(), T.Normalize(mean, std)]
        self.transform = T.Compose(ops)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB"))


def generated_image_folder(root: str, num_images: int = 512, image_size: int = 128, seed: int = 0) -> str:
    """Writes ``num_images`` generated images (:func:`hieradet.data.synthetic.generate_synthetic_dataset`) under
    ``root`` once and returns the folder of the images (``root/train``); an existing complete folder is reused."""
    from ..data.synthetic import generate_synthetic_dataset

    folder = os.path.join(root, "train")
    done = os.path.join(root, f".complete_{num_images}_{image_size}_{seed}")
    if not os.path.exists(done):
        generate_synthetic_dataset(root, num_train=num_images, num_val=1, image_size=image_size, seed=seed)
        with open(done, "w") as f:
            f.write("ok\n")
    return folder


class GeneratedImageDataset(ImageFolderDataset):
    """:class:`ImageFolderDataset` over images the project's generator writes under ``root`` on first use.

    Args:
        root (str): cache folder for the generated images.
        num_images (int): how many to generate.
        image_size (int): size of the generated images (before the crop).
        seed (int): generator seed.
        img_size, crop_scale, hflip: as in :class:`ImageFolderDataset`.
    """

    def __init__(
        self,
        root: str,
        num_images: int = 512,
        image_size: int = 128,
        seed: int = 0,
        img_size: int = 224,
        crop_scale: Tuple[float, float] = (0.2, 1.0),
        hflip: bool = True,
    ):
        folder = generated_image_folder(root, num_images, image_size, seed)
        super().__init__(folder, img_size=img_size, crop_scale=crop_scale, hflip=hflip)
