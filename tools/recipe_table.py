#!/usr/bin/env python
"""Prints the recipe of every detection config (configs/COCO, configs/LVIS, ablations, system-level,
projects/*/configs), read from the configs themselves, as a markdown table.

    python tools/recipe_table.py                      # print the table
    python tools/recipe_table.py --write docs/readme/configs.md   # replace the table between its markers
    python tools/recipe_table.py --check docs/readme/configs.md   # fail if that table is out of date
"""

import argparse
import sys
from pathlib import Path

from hieradet.solver.recipe_table import recipe_table, replace_table

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="MARKDOWN", help="replace the table between the markers of this file")
    group.add_argument("--check", metavar="MARKDOWN", help="exit 1 if the table in this file is out of date")
    parser.add_argument("configs", nargs="*", help="config paths relative to the repository root (default: all)")
    args = parser.parse_args()
    table = recipe_table(ROOT, args.configs or None)
    target = args.write or args.check
    if target is None:
        print(table, end="")
        return
    text = Path(target).read_text()
    updated = replace_table(text, table)
    if args.check:
        if updated != text:
            sys.exit(f"{target}: the recipe table is out of date; run `python tools/recipe_table.py --write {target}`")
        print(f"{target}: recipe table up to date")
        return
    Path(target).write_text(updated)
    print(f"wrote the recipe table into {target}")


if __name__ == "__main__":
    main()
