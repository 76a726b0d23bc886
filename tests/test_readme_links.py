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


def _anchors(page: Path) -> set:
    """GitHub's anchors of a markdown page's headings (``-1``, ``-2`` for repeated ones)."""
    builder, seen, out = _builder(), {}, set()
    for heading in re.findall(r"^#{1,6} (.+)$", _without_code(page.read_text()), flags=re.M):
        slug = builder.anchor(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _broken_links(page: Path, root: Path = ROOT) -> list:
    """The relative links and images of ``page`` whose file (inside ``root``), or whose heading in that file, does
    not exist."""
    builder = _builder()
    text = _without_code(page.read_text())
    targets = re.findall(r"!?\[[^\]\n]*\]\(([^)\s]+)", text) + re.findall(r"(?:src|href)=\"([^\"]+)\"", text)
    broken = []
    for target in targets:
        if not (builder.is_relative_link(target) or target.startswith("#")):
            continue
        path, _, frag = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or not dest.is_relative_to(root.resolve()):
            broken.append(target)
        elif frag and dest.suffix == ".md" and frag not in _anchors(dest):
            broken.append(target)  # a link to a heading that does not exist
    return broken


def test_every_relative_link_and_image_in_readme_resolves():
    text = (ROOT / "README.md").read_text()
    assert "](docs/images/" in _without_code(text), "the README shows the demo's pictures"
    broken = _broken_links(ROOT / "README.md")
    assert not broken, f"README.md links to missing files or headings: {broken}"


def test_every_relative_link_of_the_docs_pages_resolves():
    """Every page in docs/ (and the projects' READMEs), with anchors checked against the linked page's headings."""
    pages = sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "projects").glob("*/README.md"))
    assert len(pages) > 10
    broken = {p.relative_to(ROOT).as_posix(): b for p in pages if (b := _broken_links(p))}
    assert not broken, f"links to missing files or headings: {broken}"


def test_the_link_check_finds_broken_anchors_and_files(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# B page\n\n## Part `x`\n\n## Part `x`\n")
    page = tmp_path / "docs" / "a.md"
    page.write_text(
        "# A\n[ok](#a) [no](#nope) [gone](nowhere.md) [part](b.md#part-x-1) [bad part](b.md#part-y) [out](../../x.md)\n"
        "```bash\n[in code](#ignored)\n```\n"
    )
    (tmp_path.parent / "x.md").write_text("outside the checkout")
    assert _broken_links(page, tmp_path) == ["#nope", "nowhere.md", "b.md#part-y", "../../x.md"]


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
