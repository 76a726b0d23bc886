"""Where a training step's activation memory goes: the tensors autograd keeps for the backward pass, per module.

:func:`saved_activations` runs one forward with autograd on and records every tensor the graph saves (through
``torch.autograd.graph.saved_tensors_hooks``), counting each storage once and charging it to the innermost module
running when it was saved; parameters are not counted. Run as a module for a table::

    python -m hieradet.benchmark.memory hieradet-b --compare vitdet-b --size 1024
"""

import argparse
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..modeling.layers import observer_hook
from .models import Benchmarked, build
from .timing import training_loss

__all__ = ["saved_activations", "main"]


def _storage_key(t: torch.Tensor):
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def saved_activations(model: Benchmarked, batch: int = 1, device: str = "cpu", by: str = "class") -> Dict[str, int]:
    """Bytes autograd saves for backward during one training forward of ``model``, per module.

    Args:
        model: a :func:`hieradet.benchmark.build` result (backbone or whole detector).
        batch: images per forward.
        device: where to run it.
        by: ``"class"`` (innermost module's class name) or ``"name"`` (its qualified name).
    Returns:
        ``{module: bytes}`` plus ``"total"``; each storage is counted once, parameters are left out.
    """
    if by not in ("class", "name"):
        raise ValueError(f"by must be 'class' or 'name', got {by!r}")
    from detectron2.utils.events import EventStorage

    dev = torch.device(device)
    m = model.module.to(dev).train()
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    names = {mod: (name or type(m).__name__) for name, mod in m.named_modules()}
    stack: List[nn.Module] = []
    seen = set()
    sizes: Dict[str, int] = defaultdict(int)

    @observer_hook  # attribution only: the modeling code keeps its fused training paths
    def pre(mod, args):
        stack.append(mod)

    @observer_hook
    def post(mod, args, out):
        stack.pop()

    def pack(t: torch.Tensor):
        key = _storage_key(t)
        if key[0] not in params and key not in seen and t.device.type != "meta":
            seen.add(key)
            owner = stack[-1] if stack else m
            sizes[type(owner).__name__ if by == "class" else names.get(owner, "?")] += key[1]
        return t

    handles = [mod.register_forward_pre_hook(pre) for mod in m.modules()]
    handles += [mod.register_forward_hook(post, always_call=True) for mod in m.modules()]
    inputs = model.inputs(batch, dev, train=True)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), EventStorage(0):
            loss = training_loss(m(inputs))
        del loss
    finally:
        for h in handles:
            h.remove()
        m.eval()
    out = dict(sorted(sizes.items(), key=lambda kv: -kv[1]))
    out["total"] = sum(sizes.values())
    return out


def main(argv: Optional[Sequence[str]] = None):
    ap = argparse.ArgumentParser(description="activation memory saved for backward, per module")
    ap.add_argument("model", help="preset name, LazyConfig .py file or hieradet.model_zoo name")
    ap.add_argument("--compare", nargs="+", default=[])
    ap.add_argument("--part", choices=("backbone", "model"), default="backbone")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--by", choices=("class", "name"), default="class")
    ap.add_argument("--top", type=int, default=12, help="rows per model")
    ap.add_argument("--opts", nargs="*", default=[], help="LazyConfig overrides key=value (config files)")
    args = ap.parse_args(argv)
    results = {}
    for name in [args.model] + list(args.compare):
        torch.manual_seed(0)
        bm = build(name, part=args.part, img_size=args.size, opts=args.opts if name == args.model else ())
        res = saved_activations(bm, batch=args.batch, by=args.by)
        results[name] = res
        print(f"\n{name} ({args.part}, {args.size} px, batch {args.batch}): {res['total'] / 2**20:.0f} MiB saved")
        print("| module | MiB |\n|---|---|")
        for k, v in list(res.items())[: args.top]:
            if k != "total":
                print(f"| {k} | {v / 2**20:.0f} |")
    return results


if __name__ == "__main__":
    main()
