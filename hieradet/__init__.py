"""hieradet: HieraDet, fixed ViTDet and HiViT backbones for Detectron2.

Importing the package registers its backbones in detectron2's ``BACKBONE_REGISTRY`` (for yacs
configs); nothing else happens at import time.
"""

__version__ = "0.1.0"

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without detectron2
    raise ImportError(
        "hieradet needs detectron2, which has no PyPI release. Run `bash tools/install.sh` from the "
        "hieradet checkout (or `make install`), or install it yourself: "
        "pip install 'git+https://github.com/facebookresearch/detectron2.git'"
    ) from e

from . import config  # noqa: F401,E402  (registers the backbones)
