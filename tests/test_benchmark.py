"""tools/benchmark.py and tools/analyze_model.py on tiny models and small images (CPU)."""

import importlib.util
import json
import os
import sys

import pytest
import torch

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def _load(name):
    sys.path.insert(0, TOOLS)
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _load("benchmark")
analyze = _load("analyze_model")


def _tiny_vit(ours: bool, relpos: bool):
    if ours:
        from hieradet.modeling.vit import ViT

        return ViT(
            img_size=64,
            embed_dim=32,
            depth=2,
            num_heads=2,
            window_size=2,
            global_blocks=(1,),
            relpos="all" if relpos else "none",
            pos_embed="interpolate",
        )
    from detectron2.modeling import ViT as D2ViT

    return D2ViT(
        img_size=64,
        embed_dim=32,
        depth=2,
        num_heads=2,
        window_size=2,
        window_block_indexes=[0],
        use_rel_pos=relpos,
        pretrain_img_size=224,
    )


def test_summarize_discards_the_first_quarter():
    times = [10.0, 10.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # s; the two slow warm-ups are discarded
    s = bench.summarize(times, batch=2, discard=0.25)
    assert s["n"] == 6
    assert s["median_ms"] == pytest.approx(175.0)  # median of 0.1..0.6 s = 0.35 s over 2 images
    assert s["min_ms"] == pytest.approx(50.0) and s["max_ms"] == pytest.approx(300.0)
    assert s["p25_ms"] == pytest.approx(112.5) and s["p75_ms"] == pytest.approx(237.5)
    with pytest.raises(ValueError, match="discard"):
        bench.summarize(times, discard=1.0)
    with pytest.raises(ValueError, match="no timed iterations"):
        bench.summarize([])


def test_unknown_names_and_missing_files_are_named():
    with pytest.raises(ValueError, match="unknown model 'hieradet-xl'"):
        bench.build_backbone("hieradet-xl")
    with pytest.raises(FileNotFoundError, match="nope.py"):
        bench.build("configs/nope.py")
    with pytest.raises(ValueError, match="part must be"):
        bench.build("hieradet-t", part="neck")
    with pytest.raises(ValueError, match="SAM 2's trunk has no detection config"):
        bench.build("sam2-hiera-t", part="model", img_size=64)
    with pytest.raises(SystemExit):
        bench.main(["hieradet-t", "--size", "0"])


def test_named_baselines_are_the_published_recipes():
    d2 = bench.build_backbone("d2-vitdet-b", img_size=64)
    assert type(d2).__module__.startswith("detectron2.")
    windowed = [i for i, b in enumerate(d2.blocks) if b.window_size > 0]
    assert windowed == [0, 1, 3, 4, 6, 7, 9, 10] and all(b.window_size == 14 for b in d2.blocks if b.window_size)
    assert all(b.attn.use_rel_pos for b in d2.blocks)
    assert not any(b.attn.use_rel_pos for b in bench.build_backbone("d2-vitdet-b-norelpos", 64).blocks)
    sam = bench.build_backbone("sam2-hiera-b", img_size=64)
    assert type(sam).__module__.startswith("sam2.")
    assert [i for i, b in enumerate(sam.blocks) if b.window_size == 0] == [12, 16, 20]
    ours = bench.build_backbone("hieradet-b", img_size=64)
    assert [i for i, b in enumerate(ours.blocks) if b.window_size == 0] == [12, 16, 20]
    # SAM 2's trunk and ours have the same parameters up to our relpos tables and embedding sizes
    n_sam = sum(p.numel() for p in sam.parameters())
    n_ours = sum(p.numel() for n, p in ours.named_parameters() if "rel_pos" not in n and "pos_embed" not in n)
    n_sam_wo_pos = n_sam - sam.pos_embed.numel() - sam.pos_embed_window.numel()
    assert n_ours == n_sam_wo_pos


def test_alternating_inference_and_json(tmp_path):
    out = tmp_path / "r.json"
    res = bench.main(
        ["hieradet-t", "--compare", "sam2-hiera-t", "--size", "64", "--iters", "4", "--warmup", "1"]
        + ["--threads", "1", "--json", str(out), "--flops"]
    )
    names = [m["name"] for m in res["models"]]
    assert names == ["hieradet-t", "sam2-hiera-t"]
    for m in res["models"]:
        assert m["n"] == 3 and 0 < m["min_ms"] <= m["median_ms"] <= m["max_ms"]
        assert m["gmacs"] > 0 and m["achieved_gflops"] > 0
    r = res["models"][1]["ratio_vs_first"]
    assert r == pytest.approx(res["models"][1]["median_ms"] / res["models"][0]["median_ms"])
    saved = json.loads(out.read_text())
    assert saved["models"][0]["median_ms"] == res["models"][0]["median_ms"]
    assert saved["settings"]["size"] == 64 and "machine" in saved and "date" in saved
    # the results page and the plot are generated from this file
    table = bench.main(["report", str(out)])
    rows = table.splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["hieradet-t", "sam2-hiera-t"]
    assert f"{res['models'][0]['median_ms']:.0f}" == rows[0].split("|")[6].strip()
    assert rows[1].split("|")[9].strip() == f"{r:.2f}x"
    png = tmp_path / "p.png"
    bench.main(["plot", str(out), "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        bench.main(["report", str(bad)])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        bench.main(["plot", str(tmp_path / "missing.json")])


def test_time_inference_alternates_models():
    calls = []

    class Rec(torch.nn.Module):
        def __init__(self, tag):
            super().__init__()
            self.tag = tag

        def forward(self, x):
            calls.append(self.tag)
            return x

    models = [bench.Benchmarked(t, Rec(t), "backbone", 8) for t in ("a", "b")]
    times = bench.time_inference(models, iters=3, warmup=1)
    assert [len(t) for t in times] == [3, 3]
    assert calls == ["a", "b"] * 4
    with pytest.raises(ValueError, match="iters"):
        bench.time_inference(models, iters=0)


def test_training_iterations_and_peak_memory():
    m = bench.Benchmarked("tiny", _tiny_vit(True, True), "backbone", 64)
    r = bench.time_training(m, batch=2, iters=2, warmup=1)
    assert len(r["times"]) == 2 and all(t > 0 for t in r["times"])
    assert r["peak_mem_bytes"] >= 0
    assert all(p.grad is None for p in m.module.parameters())  # zeroed after the step
    with pytest.raises(ValueError, match="timer"):
        bench.time_training(m, iters=1, timer="gpu")


def test_whole_model_inference_runs_the_full_detector():
    m = bench.build("hieradet-t", part="model", img_size=64)
    assert m.kind == "model" and m.module.roi_heads.box_predictor.test_score_thresh == 0.0
    inputs = m.inputs(1, torch.device("cpu"))
    m.module.eval()
    with torch.inference_mode():
        out = m.forward(inputs)
    inst = out[0]["instances"]
    assert len(inst) == m.module.roi_heads.box_predictor.test_topk_per_image  # full detections
    assert inst.pred_masks.shape[-2:] == (64, 64)
    d2 = bench.build("d2-vitdet-b", part="model", img_size=64)
    assert type(d2.module.backbone.net).__module__.startswith("detectron2.")
    assert d2.module.backbone.net.blocks[0].attn.use_rel_pos


def test_sdpa_flops_equal_explicit_attention_flops():
    """Our SDPA attention counts exactly what detectron2's explicit matmuls count."""
    ours = bench.Benchmarked("ours", _tiny_vit(True, False), "backbone", 64)
    d2 = bench.Benchmarked("d2", _tiny_vit(False, False), "backbone", 64)
    f_ours, f_d2 = analyze.count_flops(ours), analyze.count_flops(d2)
    assert f_ours["by_operator"]["scaled_dot_product_attention"] == f_d2["by_operator"]["matmul"]
    assert f_ours["total"] == pytest.approx(f_d2["total"], rel=1e-3)  # layer norms counted alike too
    # hand count of the attention: block 0 = 4 windows of 2x2 tokens, block 1 global over 4x4 tokens
    hd, heads = 16, 2
    expected = heads * (4 * 4 * 4 + 16 * 16) * 2 * hd
    assert f_ours["by_operator"]["scaled_dot_product_attention"] == expected


def test_analyze_model_cli_params_and_flops(tmp_path):
    out = tmp_path / "a.json"
    res = analyze.main(["hieradet-t", "--size", "64", "--json", str(out)])
    m = res["models"][0]
    n = sum(p.numel() for p in bench.build_backbone("hieradet-t", 64).parameters())
    assert m["params"] == n
    assert m["gmacs"] > 0 and m["gmacs_by_module"]["blocks"] < m["gmacs"]
    assert json.loads(out.read_text())["models"][0]["params"] == n


def test_matmul_peak_is_positive():
    assert bench.matmul_peak(n=128, iters=1) > 0


def test_isolate_times_each_model_in_fresh_processes(tmp_path):
    out = tmp_path / "iso.json"
    res = bench.main(
        ["--size", "64", "hieradet-t", "--compare", "sam2-hiera-t", "--iters", "2", "--warmup", "0"]
        + ["--threads", "1", "--discard", "0.5", "--isolate", "--rounds", "2", "--json", str(out)]
    )
    parent = res["pid"]
    seen = set()
    for m in res["models"]:
        # two rounds, one process each, every process keeping 1 of its 2 timed iterations
        assert len(m["pids"]) == 2 and m["n"] == 2 and len(m["times_ms"]) == 2
        assert parent not in m["pids"] and not seen & set(m["pids"])
        seen |= set(m["pids"])
        assert m["median_ms"] == pytest.approx(sorted(m["times_ms"])[0] / 2 + sorted(m["times_ms"])[1] / 2)
    assert res["models"][1]["ratio_vs_first"] == pytest.approx(
        res["models"][1]["median_ms"] / res["models"][0]["median_ms"]
    )
    assert json.loads(out.read_text())["settings"]["isolate"] is True


def test_isolate_child_options_carry_the_settings():
    ns = bench.argparse.Namespace(
        part="model", size=320, batch=2, dtype="bf16", device="cpu", iters=3, warmup=1, discard=0.5,
        threads=2, timer="cpu", seed=7, no_full_detections=True, opts=["model.x=1"],
    )  # fmt: skip
    argv = bench.child_argv(ns)
    assert argv[-2:] == ["--opts", "model.x=1"] and "--no-full-detections" in argv
    assert {"--part=model", "--size=320", "--batch=2", "--dtype=bf16", "--timer=cpu", "--seed=7"} <= set(argv)
    with pytest.raises(SystemExit):
        bench.main(["hieradet-t", "--isolate", "--train"])


def test_results_page_quotes_the_saved_runs():
    """Every median in the results page's target table is the one saved in docs/benchmarks/<run>.json."""
    root = os.path.dirname(TOOLS)
    page = open(os.path.join(root, "docs", "benchmarks.md")).read().splitlines()
    runs = sorted(f for f in os.listdir(os.path.join(root, "docs", "benchmarks")) if f.endswith(".json"))
    assert runs, "docs/benchmarks/ has no saved runs"
    for fname in runs:
        run = fname[: -len(".json")]
        saved = json.load(open(os.path.join(root, "docs", "benchmarks", fname)))
        for m in saved["models"]:
            rows = [r for r in page if r.startswith(f"| {m['name']} |") and f"| {run}" in r]
            assert len(rows) == 1, (run, m["name"], rows)
            cells = [c.strip() for c in rows[0].split("|")]
            assert cells[4] == f"{m['median_ms']:.0f}" and cells[5] == f"{m['p25_ms']:.0f}-{m['p75_ms']:.0f}"
            assert cells[8] == f"{m['achieved_gflops']:.0f}"
