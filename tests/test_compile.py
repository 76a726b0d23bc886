"""``torch.compile`` of the backbones with dynamic image size: one whole graph (no graph break), equal to eager at
several sizes, no recompilation per size; and ``train.compile=True`` in ``do_train``."""

import pytest
import torch
from detectron2.config import instantiate

from hieradet.testing import tiny_mask_rcnn

# every size > 224 px: each stage has at least two windows per side (windows of 224 px in stages 3-4), so one graph
# covers them all; an image with a single window row / column in some stage compiles once more (see _one_window)
SIZES = [(256, 288), (320, 256), (288, 352)]


def _trunk(kind):
    torch.manual_seed(0)
    backbone = instantiate(tiny_mask_rcnn(kind, img_size=256)).eval().backbone
    return backbone.bottom_up if hasattr(backbone, "bottom_up") else backbone.net


class _Graphs:
    """A torch.compile backend that records each graph dynamo hands it and runs it uncompiled."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward


def _compiled_equals_eager(module, sizes, backend, atol=1e-5):
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, dynamic=True, backend=backend)
    torch.manual_seed(1)
    for hw in sizes:
        x = torch.rand(1, 3, *hw)
        with torch.no_grad():
            out, ref = compiled(x), module(x)
        assert out.keys() == ref.keys()
        for name in ref:
            torch.testing.assert_close(out[name], ref[name], rtol=1e-4, atol=atol, msg=f"{name} at {hw}")


@pytest.mark.parametrize(
    "kind", ["hieradet", pytest.param("vit", marks=pytest.mark.slow), pytest.param("hivit", marks=pytest.mark.slow)]
)
def test_backbone_compiles_whole_graph_once_for_all_sizes(kind):
    """fullgraph=True raises on any graph break; the counting backend sees exactly one graph for three sizes."""
    trunk = _trunk(kind)
    graphs = _Graphs()
    _compiled_equals_eager(trunk, SIZES, graphs)
    assert len(graphs.graphs) == 1, f"{kind}: {len(graphs.graphs)} graphs for {len(SIZES)} sizes"
    torch._dynamo.reset()


@pytest.mark.slow
def test_one_window_compiles_once_more_then_reuses():
    """A map with a single window per side in a stage (an image of at most 224 px here) differs in the graph from
    one with several: it takes a second graph, which later small sizes reuse, and the first graph still serves the
    large sizes."""
    trunk = _trunk("hieradet")
    graphs = _Graphs()
    _compiled_equals_eager(trunk, [SIZES[0], (224, 192), (160, 192), SIZES[1]], graphs)
    assert len(graphs.graphs) == 2, len(graphs.graphs)
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def train_name(tmp_path_factory):
    from hieradet.data import generate_synthetic_dataset, register_synthetic_dataset

    root = str(tmp_path_factory.mktemp("compile_data"))
    generate_synthetic_dataset(root, num_train=2, num_val=1, image_size=64, seed=3)
    return register_synthetic_dataset(root, prefix="compile_test")[0]


def _train_losses(train_name, output_dir, **train):
    import json

    from hieradet.engine import do_train
    from hieradet.testing import tiny_train_config

    cfg = tiny_train_config([train_name], None, str(output_dir), num_classes=3, image_size=64, max_iter=2,
                            augment=False)  # fmt: skip
    cfg.train.update(train)
    do_train(cfg, resume=False)
    with open(output_dir / "metrics.json") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{k: v for k, v in r.items() if k.startswith("loss") or k == "total_loss"} for r in rows]


def test_train_compile_gives_the_uncompiled_losses(train_name, tmp_path):
    """``train.compile=True`` (backend "eager": dynamo's graph, run op by op) trains 2 iterations with exactly the
    losses of the uncompiled run.

    ``do_train``, like detectron2's loop, does not seed the model's random initialisation (the command-line tool
    does, in detectron2's ``default_setup``), so each run seeds it here first."""
    from detectron2.utils.env import seed_all_rng

    seed_all_rng(0)
    plain = _train_losses(train_name, tmp_path / "plain")
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    seed_all_rng(0)
    compiled = _train_losses(train_name, tmp_path / "compiled", compile=True, compile_backend="eager")
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]  # dynamo really traced it
    torch._dynamo.reset()
    assert len(plain) == len(compiled) == 2 and "loss_mask" in plain[0]
    assert compiled == plain


def test_train_compile_rejects_an_unknown_backend(train_name, tmp_path):
    with pytest.raises(ValueError, match="compile_backend='nope'.*inductor"):
        _train_losses(train_name, tmp_path / "bad", compile=True, compile_backend="nope")
