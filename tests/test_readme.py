"""Runs the Python snippets of the README that are marked ``<!-- readme-test: NAME -->``."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
_SNIPPET = re.compile(r"<!-- readme-test: (\S+) -->\s*```python\n(.*?)```", re.S)


def _snippets():
    return dict(_SNIPPET.findall(README.read_text()))


def test_readme_has_the_backbone_snippets():
    assert {"lazyconfig", "yacs"} <= set(_snippets())


@pytest.mark.parametrize("name", ["lazyconfig", "yacs"])
def test_backbone_snippet_builds_a_working_mask_rcnn(name):
    scope = {}
    exec(compile(_snippets()[name], f"README:{name}", "exec"), scope)
    model = scope["model"].eval()
    assert type(model.backbone.bottom_up).__name__ == "HieraDet"
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 96, 128), dtype=torch.uint8), "height": 96, "width": 128}])
    inst = out[0]["instances"]
    assert inst.image_size == (96, 128)
    assert inst.has("pred_masks") and inst.has("pred_boxes")


def test_readme_is_assembled_from_its_sections(load_tool):
    """README.md is generated from docs/readme/ (python tools/build_readme.py); the two must not drift apart."""
    assert README.read_text() == load_tool("build_readme").build(strict=True)
