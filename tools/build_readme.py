#!/usr/bin/env python
"""Assembles README.md from the skeleton in docs/readme/_skeleton.md and the section files in docs/readme/.

Skeleton lines that are replaced:

* ``NAME_SECTION``: the text of ``docs/readme/<name>.md`` (lower case). A missing file is an error with
  ``--strict`` (the README test builds strictly) and a warning otherwise.
* ``NAME_SECTION?``: the same, but an optional section: left out silently while its file does not exist.
* ``TABLE_OF_CONTENTS``: a list of links to every ``##`` heading of the assembled README (but "Contents").

Relative links and images in a section file (``[text](path)``, ``![alt](path)``, ``src="path"``) are written
relative to the section file itself, as GitHub shows that file (``../images/x.png`` is ``docs/images/x.png``);
the builder rewrites them relative to the repository root, where README.md lives. A path that does not exist
next to the section but does from the root is kept as it is; a path that exists from neither is an error.

    python tools/build_readme.py [--check] [--strict]
"""

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ROOT / "docs" / "readme"
SKELETON = SECTIONS / "_skeleton.md"

_INCLUDE = re.compile(r"^([A-Z0-9]+)_SECTION(\??)$", re.M)
# [text](target) and ![alt](target), with an optional "title"; src="target" / href="target" in inline HTML
_MD_LINK = re.compile(r"(!?\[[^\]\n]*\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")
_HTML_LINK = re.compile(r"((?:src|href)=\")([^\"]+)(\")")
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#|/)", re.I)


class ReadmeError(ValueError):
    """A section file is missing or one of its relative links resolves nowhere."""


def is_relative_link(target: str) -> bool:
    """True for a path inside the repository (not a URL, ``mailto:``, ``#anchor`` or absolute path)."""
    return not _EXTERNAL.match(target)


def rewrite_links(text: str, source_dir: Path, root: Path = ROOT, source_name: str = "") -> str:
    """Rewrites the relative links and images of ``text`` (a file in ``source_dir``) relative to ``root``.

    Args:
        text: markdown.
        source_dir: folder of the file ``text`` comes from; its relative links are resolved from there.
        root: folder of the output file (the repository root for README.md).
        source_name: the file's name, for error messages.

    Raises:
        ReadmeError: if a relative link exists neither from ``source_dir`` nor from ``root``.
    """
    root = root.resolve()

    def fix(target: str) -> str:
        if not is_relative_link(target):
            return target
        path, sep, anchor = target.partition("#")
        if not path:
            return target
        from_source = (source_dir / path).resolve()
        if from_source.exists() and from_source.is_relative_to(root):
            new = os.path.relpath(from_source, root).replace(os.sep, "/")
            if path.endswith("/") and not new.endswith("/"):
                new += "/"
            return new + sep + anchor
        if (root / path).exists():
            return target
        raise ReadmeError(
            f"{source_name or source_dir}: link {target!r} points to nothing (neither {from_source} nor "
            f"{root / path} exists); write it relative to the section file"
        )

    def in_fences(func, s):
        # leave code blocks alone: their brackets are code, not links
        parts = re.split(r"(^```.*?^```[^\n]*$)", s, flags=re.M | re.S)
        return "".join(p if i % 2 else func(p) for i, p in enumerate(parts))

    def fix_all(s):
        s = _MD_LINK.sub(lambda m: m.group(1) + fix(m.group(2)) + m.group(3), s)
        return _HTML_LINK.sub(lambda m: m.group(1) + fix(m.group(2)) + m.group(3), s)

    return in_fences(fix_all, text)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def table_of_contents(text: str, skip=("Contents",)) -> str:
    """A bullet list linking every ``## `` heading of ``text`` (outside code blocks) but those named in ``skip``."""
    lines, in_code, seen = [], False, {}
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("## "):
            title = line[3:].strip()
            slug = anchor(title)
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            if title not in skip:
                lines.append(f"- [{re.sub(r'`', '', title)}](#{slug if n == 0 else f'{slug}-{n}'})")
    return "\n".join(lines)


def build(strict: bool = False, sections: Path = SECTIONS, root: Path = ROOT) -> str:
    """The README text: the skeleton with its sections included, links rewritten and the table of contents."""

    def section(m: re.Match) -> str:
        path = sections / f"{m.group(1).lower()}.md"
        if not path.is_file():
            if m.group(2):  # optional section
                return ""
            if strict:
                raise ReadmeError(f"README section file missing: {path} (named by {m.group(0)} in the skeleton)")
            print(f"warning: {path} does not exist; section left out", file=sys.stderr)
            return ""
        return rewrite_links(path.read_text().strip(), path.parent, root, str(path.relative_to(root)))

    skeleton = sections / "_skeleton.md"
    text = rewrite_links(skeleton.read_text(), sections, root, str(skeleton.relative_to(root)))
    text = _INCLUDE.sub(section, text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.replace("TABLE_OF_CONTENTS", table_of_contents(text), 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if README.md is not up to date")
    parser.add_argument("--strict", action="store_true", help="fail if a (non-optional) section file is missing")
    args = parser.parse_args(argv)
    try:
        text = build(args.strict)
    except ReadmeError as e:
        sys.exit(f"error: {e}")
    readme = ROOT / "README.md"
    if args.check:
        if readme.read_text() != text:
            sys.exit("README.md is out of date: run `python tools/build_readme.py`")
        return 0
    readme.write_text(text)
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
