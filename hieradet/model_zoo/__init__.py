"""The project's LazyConfig recipes by name, as ``detectron2.model_zoo`` gives detectron2's.

Names are paths relative to the checkout's ``configs/`` folder (``"COCO/mask_rcnn_hieradet_b_100ep.py"``) or,
for the HiViT project, relative to ``projects/HiViT/configs/`` with a ``HiViT/`` prefix
(``"HiViT/COCO/mask_rcnn_hivit_b_3x.py"``); the repository-relative paths ``configs/...`` and
``projects/HiViT/configs/...`` work too. A regular ``pip install .`` ships both folders inside this package
(``hieradet/model_zoo/configs``, ``hieradet/model_zoo/projects/HiViT/configs``, see ``setup.py``), in the same
relative layout, so the configs' relative imports (``from ..common.train import train``) still resolve; from a
source checkout the checkout's own folders are used.

Example::

    from hieradet import model_zoo
    cfg = model_zoo.get_config("COCO/mask_rcnn_hieradet_b_100ep.py")
    path = model_zoo.resolve_config_path("COCO/mask_rcnn_hieradet_b_100ep.py")  # a file path or a zoo name
"""

import os
from typing import List

__all__ = ["get_config", "get_config_file", "list_configs", "resolve_config_path", "zoo_root"]

_HIVIT = "HiViT/"
_HIVIT_DIR = os.path.join("projects", "HiViT", "configs")


def zoo_root() -> str:
    """The folder holding ``configs/`` and ``projects/HiViT/configs/``: this package when installed from a
    wheel, else the source checkout that contains this package."""
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isdir(os.path.join(here, "configs")):
        return here
    checkout = os.path.dirname(os.path.dirname(here))
    if os.path.isdir(os.path.join(checkout, "configs", "common")):
        return checkout
    raise RuntimeError(
        f"hieradet's configs are not installed: neither {here}/configs nor {checkout}/configs exists "
        "(reinstall with `pip install .` from a hieradet checkout)"
    )


def _candidates(name: str) -> List[str]:
    name = name.replace("\\", "/").lstrip("/")
    root = zoo_root()
    if name.startswith("configs/") or name.startswith("projects/"):
        return [os.path.join(root, name)]
    if name.startswith(_HIVIT):
        return [os.path.join(root, _HIVIT_DIR, name[len(_HIVIT) :])]
    return [os.path.join(root, "configs", name)]


def get_config_file(config_path: str) -> str:
    """The installed file of recipe ``config_path`` (e.g. ``"COCO/mask_rcnn_hieradet_b_100ep.py"``).

    Raises:
        FileNotFoundError: no such recipe (the message names the folder searched).
    """
    for path in _candidates(config_path):
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{config_path!r} is not in hieradet's model zoo (looked for {_candidates(config_path)[0]}); "
        "names are relative to configs/ (e.g. 'COCO/mask_rcnn_hieradet_b_100ep.py') or start with 'HiViT/'"
    )


def get_config(config_path: str):
    """The LazyConfig of recipe ``config_path``, loaded (``detectron2.config.LazyConfig.load``)."""
    from detectron2.config import LazyConfig

    return LazyConfig.load(get_config_file(config_path))


def resolve_config_path(name_or_path: str) -> str:
    """``name_or_path`` if it is an existing file, else the zoo file of that name; for command lines that
    accept both (``--config-file configs/COCO/x.py`` from a checkout, ``--config-file COCO/x.py`` anywhere)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    try:
        return get_config_file(name_or_path)
    except (FileNotFoundError, RuntimeError) as e:
        raise FileNotFoundError(f"config {name_or_path!r} is neither a file nor a model-zoo name: {e}") from None


def list_configs() -> List[str]:
    """Names of every recipe (``configs/COCO``, ``configs/LVIS`` and the HiViT project's), sorted."""
    root, names = zoo_root(), []
    for base, prefix in (("configs", ""), (_HIVIT_DIR, _HIVIT)):
        top = os.path.join(root, base)
        for dirpath, _, files in os.walk(top):
            rel = os.path.relpath(dirpath, top).replace(os.sep, "/")
            if rel.split("/")[0] in ("COCO", "LVIS"):
                names += [f"{prefix}{rel}/{f}" for f in files if f.endswith(".py")]
    return sorted(names)
