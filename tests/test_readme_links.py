"""README.md's relative links and images resolve, and tools/build_readme.py rewrites section paths correctly."""

import re
from pathlib import Path

import pytest
from conftest import load_tool_module

ROOT = Path(__file__).resolve().parents[1]


def _builder():
    return load_tool_module("build_readme")


def _without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def test_every_relative_link_and_image_in_readme_resolves():
    builder = _builder()
    text = _without_code((ROOT / "README.md").read_text())
    targets = re.findall(r"!?\[[^\]\n]*\]\(([^)\s]+)", text) + re.findall(r"(?:src|href)=\"([^\"]+)\"", text)
    anchors = {builder.anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}
    relative = [t for t in targets if builder.is_relative_link(t) or t.startswith("#")]
    assert any(t.startswith("docs/images/") for t in relative), "the README shows the demo's pictures"
    broken = []
    for target in relative:
        path, _, frag = target.partition("#")
        if path and not (ROOT / path).exists():
            broken.append(target)
        elif not path and frag not in anchors:
            broken.append(target)  # an in-page link to a heading that does not exist
    assert not broken, f"README.md links to missing files or headings: {broken}"


def test_builder_rewrites_section_paths_relative_to_the_root(tmp_path):
    builder = _builder()
    (tmp_path / "docs" / "readme").mkdir(parents=True)
    (tmp_path / "docs" / "images").mkdir()
    (tmp_path / "docs" / "images" / "x.png").write_bytes(b"png")
    (tmp_path / "docs" / "guide.md").write_text("guide")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "t.py").write_text("")
    section = (
        "![pic](../images/x.png) [guide](../guide.md#part) [tool](tools/t.py) [web](https://x.org/a.png) "
        '[top](#install) <img src="../images/x.png" width="50">\n```bash\n[not a link](../nowhere)\n```\n'
    )
    out = builder.rewrite_links(section, tmp_path / "docs" / "readme", tmp_path)
    assert "![pic](docs/images/x.png)" in out
    assert "[guide](docs/guide.md#part)" in out
    assert "[tool](tools/t.py)" in out  # already relative to the root: kept
    assert "[web](https://x.org/a.png)" in out and "[top](#install)" in out
    assert '<img src="docs/images/x.png" width="50">' in out
    assert "[not a link](../nowhere)" in out  # code blocks are left alone
    with pytest.raises(builder.ReadmeError, match="nowhere.png"):
        builder.rewrite_links("![x](../images/nowhere.png)", tmp_path / "docs" / "readme", tmp_path, "s.md")


def test_builder_includes_sections_with_table_of_contents(tmp_path):
    builder = _builder()
    sections = tmp_path / "docs" / "readme"
    sections.mkdir(parents=True)
    (tmp_path / "docs" / "images").mkdir()
    (tmp_path / "docs" / "images" / "d.png").write_bytes(b"png")
    (sections / "_skeleton.md").write_text("# p\n\nTABLE_OF_CONTENTS\n\nDEMO_SECTION\n\nLATER_SECTION?\n")
    (sections / "demo.md").write_text("## Demo: `make demo`\n\n![d](../images/d.png)\n\n## Demo: `make demo`\n")
    text = builder.build(strict=True, sections=sections, root=tmp_path)
    assert "- [Demo: make demo](#demo-make-demo)\n- [Demo: make demo](#demo-make-demo-1)" in text
    assert "![d](docs/images/d.png)" in text
    assert "LATER" not in text  # an optional section whose file does not exist yet is left out
    (sections / "later.md").write_text("## Later")
    assert builder.build(strict=True, sections=sections, root=tmp_path).rstrip().endswith("## Later")
    (sections / "_skeleton.md").write_text("# p\n\nMISSING_SECTION\n")
    with pytest.raises(builder.ReadmeError, match="missing.md"):
        builder.build(strict=True, sections=sections, root=tmp_path)
