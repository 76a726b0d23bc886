#!/usr/bin/env python
"""Prints the recipe of every detection config (configs/COCO, configs/LVIS, ablations, system-level,
projects/*/configs), read from the configs themselves, as a markdown table (hieradet.solver.recipe_table).

    python tools/recipe_table.py                      # print the table
    python tools/recipe_table.py --write docs/recipes.md   # replace the table between its markers
    python tools/recipe_table.py --check docs/recipes.md   # fail if that table is out of date
"""

import argparse
import sys

from hieradet.solver.recipe_table import recipe_table, update_markdown


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="MARKDOWN", help="replace the table between the markers of this file")
    group.add_argument("--check", metavar="MARKDOWN", help="exit 1 if the table in this file is out of date")
    parser.add_argument("configs", nargs="*", help="config paths relative to the repository root (default: all)")
    return parser


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    table = recipe_table(None, args.configs or None)
    if args.write:
        update_markdown(args.write, table)
        print(f"wrote the recipe table into {args.write}")
    elif args.check:
        if not update_markdown(args.check, table, check=True):
            fix = f"python tools/recipe_table.py --write {args.check}"
            sys.exit(f"{args.check}: the recipe table is out of date; run `{fix}`")
        print(f"{args.check}: recipe table up to date")
    else:
        print(table, end="")


if __name__ == "__main__":
    main()
