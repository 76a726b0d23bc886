"""README.md stays a short, generated page, and the Python snippets of README.md and docs/ that are marked
``<!-- readme-test: NAME -->`` run."""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 450  # a newcomer reads it in five minutes; the detail is in docs/
_SNIPPET = re.compile(r"<!-- readme-test: (\S+) -->\s*```python\n(.*?)```", re.S)


def _snippets():
    """``{name: code}`` over README.md and docs/*.md; a name used twice is an error (one would go untested)."""
    found = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        found += _SNIPPET.findall(page.read_text())
    names = [name for name, _ in found]
    assert len(names) == len(set(names)), f"a readme-test name is used twice: {names}"
    return dict(found)


def test_readme_has_the_backbone_snippets():
    assert {"lazyconfig", "yacs"} <= set(_snippets())
    assert "<!-- readme-test: yacs -->" in README.read_text()  # the yacs path's block is the README's own


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines (at most {MAX_LINES}): move detail into a page in docs/"


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
