"""hieradet.benchmark.memory: the activation memory a training forward keeps for backward, per module."""

import pytest
import torch

from hieradet.benchmark.memory import saved_activations
from hieradet.benchmark.models import Benchmarked
from hieradet.modeling import HieraDet, hieradet_kwargs


def _tiny(relpos: str = "global") -> Benchmarked:
    torch.manual_seed(0)
    kw = hieradet_kwargs("T", embed_dim=8, stages=(1, 1, 2, 1), global_blocks=(3,), img_size=64)
    return Benchmarked("tiny", HieraDet(**kw, relpos=relpos), "backbone", 64)


def test_saved_activations_counts_each_storage_once_per_module():
    bm = _tiny()
    by_class = saved_activations(bm)
    by_name = saved_activations(bm, by="name")
    assert by_class["total"] == sum(v for k, v in by_class.items() if k != "total") > 0
    assert by_name["total"] == by_class["total"]  # the same storages, grouped differently
    # Block: the norms' inputs (CPU training runs norm -> linear as one function of the block)
    assert {"Attention", "Mlp", "Block"} <= set(by_class)
    assert "blocks.3.attn" in by_name and "blocks.3.mlp" in by_name
    # stage 1 (16 x 16 tokens of 8 channels): the MLP keeps exactly fc1's output, 16 * 16 * 32 floats
    assert by_name["blocks.0.mlp"] == 16 * 16 * 32 * 4
    assert not bm.module.training  # left in eval mode, as the timing functions do


def test_saved_activations_rejects_unknown_grouping():
    with pytest.raises(ValueError, match="by must be"):
        saved_activations(_tiny(), by="op")
