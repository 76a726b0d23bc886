"""Speed, memory and FLOPs of backbones and whole detectors (the library behind ``tools/benchmark.py`` and
``tools/analyze_model.py``).

* :mod:`.presets`: named models (``hieradet-b``, ``d2-vitdet-b``, ``sam2-hiera-b``, ...) from the size tables;
* :mod:`.models`: :func:`build` a preset or LazyConfig as a backbone or a whole detector (:class:`Benchmarked`);
* :mod:`.timing`: alternating inference, training steps (inside an ``EventStorage``), peak memory, matmul rate;
* :mod:`.isolate`: every model in fresh processes of its own;
* :mod:`.flops`: fvcore parameter and multiply-add counts; :mod:`.profile`: the ops one forward spends its time in;
* :mod:`.report`: saved results as a markdown table and a plot; :mod:`.run`: one whole run.
"""

from .flops import count_flops, count_params, sdpa_flop_jit
from .isolate import child_settings, isolated_times
from .models import Benchmarked, build, load_config, prepare_config
from .presets import PRESETS, build_backbone, model_config, parse_preset
from .profile import profile_inference
from .report import load_results, markdown_table, plot_results
from .run import machine_description, run_benchmark
from .runtimes import RUNTIMES, with_runtime, with_runtimes
from .timing import PeakRSS, matmul_peak, summarize, time_inference, time_training

__all__ = [
    "RUNTIMES",
    "with_runtime",
    "with_runtimes",
    "PRESETS",
    "Benchmarked",
    "PeakRSS",
    "build",
    "build_backbone",
    "child_settings",
    "count_flops",
    "count_params",
    "isolated_times",
    "load_config",
    "load_results",
    "machine_description",
    "markdown_table",
    "matmul_peak",
    "model_config",
    "parse_preset",
    "plot_results",
    "prepare_config",
    "profile_inference",
    "run_benchmark",
    "sdpa_flop_jit",
    "summarize",
    "time_inference",
    "time_training",
]
