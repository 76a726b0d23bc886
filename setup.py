#!/usr/bin/env python
"""hieradet: HieraDet, fixed ViTDet and HiViT detection backbones for Detectron2.

torch, torchvision and detectron2 are not listed in install_requires on purpose: detectron2 has no
PyPI release (tools/install.sh installs it, see README), and a torch pin here would fight the user's
CUDA build. ``import hieradet`` checks for them and says how to install them.
"""

from setuptools import find_packages, setup

setup(
    name="hieradet",
    version="0.1.0",
    description="Detectron2 extension: hierarchical and plain ViT backbones with absolute-win position embeddings",
    python_requires=">=3.10",
    packages=find_packages(include=["hieradet", "hieradet.*"]),
    install_requires=["fvcore", "iopath", "pycocotools", "omegaconf"],
    extras_require={"lvis": ["lvis"], "test": ["pytest", "timm", "hiera-transformer"]},
)
