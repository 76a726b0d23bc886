#!/usr/bin/env python
"""Converts an official HiViT checkpoint (MAE pretraining or ImageNet classification, github
zhangxiaosong18/hivit) into a file the project's HiViT configs load with ``train.init_checkpoint``.

A thin wrapper around the project's converter, ``tools/convert_checkpoint.py --source-format hivit``, with the same
options (``--expect-size T|S|B|L``, ``--num-heads``, ``--prefix``, ``--pos-embed``, ``--non-strict``)::

    python projects/HiViT/tools/convert_hivit_checkpoint.py mae_pretrain_hivit_base.pth hivit_b.pth --expect-size B

``tools/convert_checkpoint.py`` detects HiViT files by itself; this entry point only refuses anything else.
"""

import importlib.util
import os
import sys

_TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "tools", "convert_checkpoint.py")


def main(argv=None) -> int:
    spec = importlib.util.spec_from_file_location("convert_checkpoint", os.path.normpath(_TOOL))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    argv = sys.argv[1:] if argv is None else list(argv)
    return tool.main(["--source-format", "hivit", *argv])


if __name__ == "__main__":
    sys.exit(main())
