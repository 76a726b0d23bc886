#!/usr/bin/env python
"""hieradet: HieraDet, fixed ViTDet and HiViT detection backbones for Detectron2.

torch, torchvision and detectron2 are not listed in install_requires on purpose: detectron2 has no
PyPI release (tools/install.sh installs it, see README), and a torch pin here would fight the user's
CUDA build. ``import hieradet`` checks for them and says how to install them.

The recipes ship with the package, as detectron2 ships its model zoo: ``configs/`` and the HiViT project's
``projects/HiViT/configs/`` are copied into ``hieradet/model_zoo/`` of the build, in the same relative layout, so the
configs' relative imports (``from ..common.train import train``, ``from .....configs.common...``) still resolve
there, and ``hieradet.model_zoo.get_config("COCO/mask_rcnn_hieradet_b_100ep.py")`` works after ``pip install .``.
"""

import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
# recipe folders (relative to the checkout) that go into the package hieradet.model_zoo
ZOO_FOLDERS = ("configs", os.path.join("projects", "HiViT", "configs"))


class BuildWithModelZoo(build_py):
    """``build_py`` that also copies the recipe folders' ``.py`` files into ``hieradet/model_zoo/`` of the build."""

    def run(self):
        super().run()
        zoo = os.path.join(self.build_lib, "hieradet", "model_zoo")
        for folder in ZOO_FOLDERS:
            src = os.path.join(HERE, folder)
            if not os.path.isdir(src):
                raise FileNotFoundError(f"{src} is missing: build hieradet from a complete checkout")
            for dirpath, _, files in os.walk(src):
                out = os.path.join(zoo, folder, os.path.relpath(dirpath, src))
                for f in files:
                    if f.endswith(".py"):
                        os.makedirs(out, exist_ok=True)
                        shutil.copyfile(os.path.join(dirpath, f), os.path.join(out, f))


setup(
    name="hieradet",
    version="0.1.0",
    license="Apache-2.0",
    description="Detectron2 extension: hierarchical and plain ViT backbones with absolute-win position embeddings",
    python_requires=">=3.10",
    packages=find_packages(include=["hieradet", "hieradet.*"]),
    cmdclass={"build_py": BuildWithModelZoo},
    # what the package imports beyond torch, torchvision, detectron2 (see above) and OpenCV, which detectron2 asks its
    # users to bring (opencv-python or opencv-python-headless: naming one would install it beside the other);
    # tests/test_doors_requirements.py checks this list against the imports of the package and of a stock run
    install_requires=[
        "fvcore",
        "iopath",
        "numpy",
        "Pillow",
        "pycocotools",
        "omegaconf",
        "faster-coco-eval>=1.6",  # every stock config's evaluator
        "shapely",  # detectron2 crops polygon masks with it (LSJ)
    ],
    extras_require={
        # lvis 0.5.3 asks for opencv-python (libGL); tools/install.sh installs it with --no-deps instead
        "lvis": ["lvis"],
        "sam2": ["sam2>=1.1"],  # the SAM 2 trunk in the comparison benchmarks (hieradet.benchmark)
        "safetensors": ["safetensors"],  # reading .safetensors checkpoints
        "export": ["onnx>=1.17", "onnxscript", "onnxruntime>=1.20"],
        "cluster": ["submitit>=1.5"],
        "test": ["pytest", "timm", "hiera-transformer"],
    },
)
