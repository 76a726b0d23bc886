#!/usr/bin/env python
"""Assembles README.md from the skeleton in docs/readme/_skeleton.md and the section files in docs/readme/.

Each ``NAME_SECTION`` placeholder line of the skeleton is replaced by ``docs/readme/<name>.md`` (lower case).
A section whose file does not exist yet is left out with a warning (``--strict`` makes that an error).

    python tools/build_readme.py [--check]
"""

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKELETON = ROOT / "docs" / "readme" / "_skeleton.md"


def build(strict: bool = False) -> str:
    def section(m: re.Match) -> str:
        path = ROOT / "docs" / "readme" / f"{m.group(1).lower()}.md"
        if not path.is_file():
            if strict:
                raise SystemExit(f"README section file missing: {path}")
            print(f"warning: {path} does not exist; section left out", file=sys.stderr)
            return ""
        return path.read_text().strip()

    text = re.sub(r"^([A-Z]+)_SECTION$", section, SKELETON.read_text(), flags=re.M)
    return re.sub(r"\n{3,}", "\n\n", text)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if README.md is not up to date")
    parser.add_argument("--strict", action="store_true", help="fail if a section file is missing")
    args = parser.parse_args()
    text = build(args.strict)
    readme = ROOT / "README.md"
    if args.check:
        if readme.read_text() != text:
            sys.exit("README.md is out of date: run `python tools/build_readme.py`")
        return
    readme.write_text(text)
    print(f"wrote {readme}")


if __name__ == "__main__":
    main()
