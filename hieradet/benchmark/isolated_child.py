"""The process :func:`hieradet.benchmark.isolate.isolated_times` starts for one model:
``python -m hieradet.benchmark.isolated_child SPEC OUT.json SETTINGS_JSON``."""

import json
import sys

from hieradet.benchmark.isolate import time_in_this_process

if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m hieradet.benchmark.isolated_child SPEC OUT.json SETTINGS_JSON")
    spec, out, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    with open(out, "w") as f:
        json.dump(time_in_this_process(spec, settings), f)
