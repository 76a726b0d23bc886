"""Shared fixtures.

* ``synthetic_coco`` / ``synthetic_lvis``: small generated datasets (COCO and LVIS v1 json) registered in
  detectron2. Each is generated once per test session in a temporary folder (about 0.5 s each): 16 train and 8 val
  images of 128x128 pixels. Use ``ns.train_name`` / ``ns.val_name`` with ``DatasetCatalog`` / evaluators, or the files.
* ``load_tool``: loads a command-line script as a module, e.g. ``load_tool("benchmark").main([...])``.
"""

import importlib.util
import json
import os
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool_module(name: str) -> types.ModuleType:
    """``tools/<name>.py`` (or a repository-relative ``.py`` path) loaded as a fresh module named after the file."""
    path = os.path.join(REPO, name) if name.endswith(".py") else os.path.join(REPO, "tools", f"{name}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tool script {path}")
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_tool():
    """A function loading a tool script as a module: ``load_tool("predict")`` (``tools/predict.py``) or
    ``load_tool("projects/HiViT/tools/convert_hivit_checkpoint.py")``."""
    return load_tool_module


def _make(tmp_path_factory, fmt: str) -> types.SimpleNamespace:
    from hieradet.data import generate_synthetic_dataset, register_synthetic_dataset

    root = tmp_path_factory.mktemp(f"synthetic_{fmt}")
    paths = generate_synthetic_dataset(str(root), num_train=16, num_val=8, image_size=128, seed=0, fmt=fmt)
    # a per-folder prefix: several sessions (or xdist workers) never clash on names
    train_name, val_name = register_synthetic_dataset(str(root), prefix=f"test_{fmt}_{root.name}")
    with open(paths["train"]) as f:
        num_classes = len(json.load(f)["categories"])
    return types.SimpleNamespace(
        root=str(root),
        train_name=train_name,
        val_name=val_name,
        train_json=paths["train"],
        val_json=paths["val"],
        image_root=str(root),
        num_classes=num_classes,
    )


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory):
    """COCO-format generated dataset (4 categories), registered; see the module docstring."""
    return _make(tmp_path_factory, "coco")


@pytest.fixture(scope="session")
def synthetic_lvis(tmp_path_factory):
    """LVIS v1-format generated dataset (10 long-tailed categories, r/c/f), registered."""
    return _make(tmp_path_factory, "lvis")
