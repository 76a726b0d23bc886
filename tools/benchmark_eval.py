#!/usr/bin/env python
"""Reference (pycocotools / lvis) vs faster-coco-eval scoring on generated COCO- and LVIS-scale problems.

Prints, per problem, the seconds each backend takes to score (ground-truth loading not included), the speed-up,
and the largest difference over every metric the evaluator reports. Library code:
:mod:`hieradet.evaluation.benchmark`.

    python tools/benchmark_eval.py                       # COCO val scale + LVIS style, boxes
    python tools/benchmark_eval.py --iou-type bbox segm --coco-images 500
"""

from hieradet.evaluation.benchmark import main

if __name__ == "__main__":
    main()
