"""hieradet.benchmark, tools/benchmark.py and tools/analyze_model.py on tiny models and small images (CPU)."""

import json
import os

import pytest
import torch

import hieradet.benchmark as bench
from hieradet.modeling import HIERA_SIZES, default_global_blocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cli(load_tool):
    return load_tool("benchmark")


@pytest.fixture(scope="module")
def analyze(load_tool):
    return load_tool("analyze_model")


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


def test_unknown_names_and_missing_files_are_named(cli):
    with pytest.raises(ValueError, match="unknown model 'hieradet-xl'"):
        bench.build_backbone("hieradet-xl")
    with pytest.raises(FileNotFoundError, match="nope.py"):
        bench.build("configs/nope.py")
    with pytest.raises(ValueError, match="part must be"):
        bench.build("hieradet-t", part="neck")
    with pytest.raises(ValueError, match="SAM 2's trunk has no detection config"):
        bench.build("sam2-hiera-t", part="model", img_size=64)
    with pytest.raises(SystemExit):
        cli.main(["hieradet-t", "--size", "0"])


def test_presets_follow_the_size_tables():
    assert {f"hieradet-{s.lower()}" for s in HIERA_SIZES} <= set(bench.PRESETS)
    for size in ("T", "S", "B", "B+", "L"):
        kw = bench.presets.sam2_hiera_kwargs(size)
        for key in ("embed_dim", "num_heads", "stages"):
            assert kw[key] == HIERA_SIZES[size][key]
        assert kw["global_att_blocks"] == default_global_blocks(HIERA_SIZES[size]["stages"])
    # SAM 2's own layouts: L's wider stage-3/4 windows, B+'s 14x14 background embedding, T/S/L 7x7
    assert bench.presets.sam2_hiera_kwargs("L")["window_spec"] == (8, 4, 16, 8)
    assert bench.presets.sam2_hiera_kwargs("T")["window_spec"] == (8, 4, 14, 7)
    assert bench.presets.sam2_hiera_kwargs("B+")["window_pos_embed_bkg_spatial_size"] == (14, 14)
    assert bench.presets.sam2_hiera_kwargs("S")["window_pos_embed_bkg_spatial_size"] == (7, 7)
    assert bench.parse_preset("hieradet-b+") == ("hieradet", "B+")
    assert bench.parse_preset("d2-vitdet-b-norelpos") == ("d2-vitdet-norelpos", "B")
    with pytest.raises(ValueError, match="unknown model 'sam2-hiera-h'"):
        bench.parse_preset("sam2-hiera-h")


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


def test_alternating_inference_and_json(cli, tmp_path):
    out = tmp_path / "r.json"
    res = cli.main(
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
    table = cli.main(["report", str(out)])
    rows = table.splitlines()[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["hieradet-t", "sam2-hiera-t"]
    assert f"{res['models'][0]['median_ms']:.0f}" == rows[0].split("|")[6].strip()
    assert rows[1].split("|")[9].strip() == f"{r:.2f}x"
    png = tmp_path / "p.png"
    cli.main(["plot", str(out), "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        cli.main(["report", str(bad)])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        cli.main(["plot", str(tmp_path / "missing.json")])


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


def test_training_inputs_are_polygon_masks_of_the_boxes():
    """Training inputs carry polygon masks, as the stock data pipeline does, each the outline of its box."""
    from detectron2.structures import PolygonMasks

    m = bench.Benchmarked("tiny", torch.nn.Identity(), "model", 96)
    inst = m.inputs(2, torch.device("cpu"), train=True)[1]["instances"]
    assert isinstance(inst.gt_masks, PolygonMasks) and len(inst.gt_masks) == len(inst) == 4
    torch.testing.assert_close(inst.gt_masks.get_bounding_boxes().tensor, inst.gt_boxes.tensor)
    assert (inst.gt_masks.area() > 0).all()


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
    f_ours, f_d2 = bench.count_flops(ours), bench.count_flops(d2)
    assert f_ours["by_operator"]["scaled_dot_product_attention"] == f_d2["by_operator"]["matmul"]
    assert f_ours["total"] == pytest.approx(f_d2["total"], rel=1e-3)  # layer norms counted alike too
    # hand count of the attention: block 0 = 4 windows of 2x2 tokens, block 1 global over 4x4 tokens
    hd, heads = 16, 2
    expected = heads * (4 * 4 * 4 + 16 * 16) * 2 * hd
    assert f_ours["by_operator"]["scaled_dot_product_attention"] == expected


def test_analyze_model_cli_params_and_flops(analyze, tmp_path):
    out = tmp_path / "a.json"
    res = analyze.main(["hieradet-t", "--size", "64", "--json", str(out)])
    m = res["models"][0]
    n = sum(p.numel() for p in bench.build_backbone("hieradet-t", 64).parameters())
    assert m["params"] == n
    assert m["gmacs"] > 0 and m["gmacs_by_module"]["blocks"] < m["gmacs"]
    assert json.loads(out.read_text())["models"][0]["params"] == n


def test_matmul_peak_is_positive():
    assert bench.matmul_peak(n=128, iters=1) > 0


@pytest.mark.slow  # four fresh processes, each importing torch and detectron2: ~100 s on a loaded 2-core machine
def test_isolate_times_each_model_in_fresh_processes(cli, tmp_path):
    out = tmp_path / "iso.json"
    res = cli.main(
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


def test_isolate_child_settings_carry_the_options(cli):
    args = cli.get_parser().parse_args(
        ["m", "--part=model", "--size=320", "--batch=2", "--dtype=bf16", "--iters=3", "--warmup=1", "--discard=0.5"]
        + ["--threads=2", "--timer=cpu", "--seed=7", "--no-full-detections", "--opts", "model.x=1", "--json=x"]
        + ["--weights=w.pth"]
    )
    settings = bench.child_settings(args)
    assert settings == dict(
        part="model", size=320, batch=2, dtype="bf16", device=args.device, iters=3, warmup=1, discard=0.5,
        threads=2, timer="cpu", seed=7, no_full_detections=True, opts=["model.x=1"], model="m", weights="w.pth",
    )  # fmt: skip
    assert json.loads(json.dumps(settings)) == settings  # passed to the child process as JSON
    with pytest.raises(SystemExit):
        cli.main(["hieradet-t", "--isolate", "--train"])


def test_results_page_quotes_the_saved_runs():
    """Every median in the results page's target table is the one saved in docs/benchmarks/<run>.json."""
    root = ROOT
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


TINY_CONFIG = """
from hieradet.testing import tiny_mask_rcnn

model = tiny_mask_rcnn("{backbone}", num_classes=3, img_size=64)
"""


@pytest.mark.parametrize("backbone", ["hieradet", "vit"])
def test_training_a_whole_detector_runs_in_an_event_storage(cli, tmp_path, backbone):
    """`--part model --train` ran the RPN outside an EventStorage and crashed; each step now runs inside one."""
    cfg = tmp_path / f"tiny_{backbone}.py"
    cfg.write_text(TINY_CONFIG.format(backbone=backbone))
    out = tmp_path / "train.json"
    res = cli.main(
        [str(cfg), "--part", "model", "--train", "--size", "64", "--iters", "2", "--warmup", "1", "--discard", "0"]
        + ["--threads", "1", "--json", str(out)]
    )
    (m,) = res["models"]
    assert m["name"] == str(cfg) and m["iter"]["n"] == 2 and m["it_per_s"] > 0 and m["peak_mem_mb"] >= 0
    assert json.loads(out.read_text())["settings"]["train"] is True


def test_training_steps_log_to_the_event_storage():
    from detectron2.config import instantiate

    from hieradet.testing import tiny_mask_rcnn

    model = bench.Benchmarked("tiny", instantiate(tiny_mask_rcnn("hieradet", num_classes=3, img_size=64)), "model", 64)
    r = bench.time_training(model, batch=2, iters=2, warmup=1)
    assert len(r["times"]) == 2 and all(t > 0 for t in r["times"])
    assert not model.module.training  # back in eval mode
    with pytest.raises(ValueError, match="iters"):
        bench.time_training(model, iters=0)


def test_training_a_preset_detector(cli):
    res = cli.main(["hieradet-t", "--part", "model", "--train", "--size", "64", "--iters", "1", "--warmup", "0"])
    assert res["models"][0]["name"] == "hieradet-t" and res["models"][0]["it_per_s"] > 0


def test_model_zoo_names_and_the_config_hook():
    tiny = ["model.backbone.bottom_up.embed_dim=16", "model.backbone.bottom_up.stages=[1,1,2,1]"]
    tiny += ["model.backbone.bottom_up.global_blocks=[3]"]
    m = bench.build("COCO/mask_rcnn_hieradet_t_100ep.py", part="backbone", opts=tiny)
    assert type(m.module).__name__ == "HieraDet" and len(m.module.blocks) == 5
    cfg = bench.load_config("COCO/mask_rcnn_hieradet_t_100ep.py", tiny)
    assert cfg.model.backbone.bottom_up.embed_dim == 16
    with pytest.raises(FileNotFoundError, match="neither a file nor a model-zoo name"):
        bench.load_config("COCO/no_such_config.py")


def test_weights_set_the_layout_and_are_loaded(tmp_path):
    """``--weights``: the checkpoint's recorded layout is applied to the config before the model is built (a 56x56
    full-grid embedding where the stock config has 8x8 + 7x7), and its weights are loaded."""
    from detectron2.config import instantiate

    from hieradet.benchmark.models import bottom_up
    from hieradet.checkpoint import HieraDetCheckpointer

    tiny = ["model.backbone.bottom_up.embed_dim=16", "model.backbone.bottom_up.stages=[1,1,2,1]"]
    tiny += ["model.backbone.bottom_up.global_blocks=[3]"]
    name = "COCO/mask_rcnn_hieradet_t_100ep.py"
    full_grid = ["model.backbone.bottom_up.pos_embed_window=56", "model.backbone.bottom_up.pos_embed_global=null"]
    torch.manual_seed(1)
    source = instantiate(bench.load_config(name, tiny + full_grid).model)
    HieraDetCheckpointer(source, str(tmp_path)).save("trained")
    path = str(tmp_path / "trained.pth")

    plain = bench.build(name, part="model", img_size=64, opts=tiny)
    assert tuple(bottom_up(plain.module).pos_embed.window_embed.shape[-2:]) == (8, 8)
    loaded = bench.build(name, part="model", img_size=64, opts=tiny, weights=path)
    pe = bottom_up(loaded.module).pos_embed
    assert tuple(pe.window_embed.shape[-2:]) == (56, 56) and pe.global_embed is None
    assert torch.equal(pe.window_embed, bottom_up(source).pos_embed.window_embed)
    with pytest.raises(ValueError, match="need a LazyConfig"):
        bench.build("hieradet-t", weights=path)


def test_profile_lists_the_ops_of_one_forward(cli):
    res = cli.main(["hieradet-t", "--size", "64", "--iters", "1", "--warmup", "0", "--threads", "1", "--profile", "6"])
    rows = res["models"][0]["profile"]
    assert len(rows) == 6
    assert [r["self_ms"] for r in rows] == sorted((r["self_ms"] for r in rows), reverse=True)
    assert all(0 < r["share"] <= 1 and r["calls"] >= 1 for r in rows)
    assert sum(r["share"] for r in rows) <= 1 + 1e-6
    # the linear layers run as addmm on (tokens, in_features) inputs: 4 per block (qkv, proj, fc1, fc2) + 3
    # shortcut projections at most
    widths = {
        m.in_features for m in bench.build("hieradet-t", img_size=64).module.modules() if hasattr(m, "in_features")
    }
    addmm = [r for r in rows if r["op"] == "aten::addmm"]
    assert addmm and sum(r["calls"] for r in addmm) <= 4 * 12 + 3
    assert all(any(len(s) == 2 and s[1] in widths for s in r["shapes"]) for r in addmm)
    with pytest.raises(SystemExit):
        cli.main(["hieradet-t", "--size", "64", "--profile", "3", "--train"])
    with pytest.raises(ValueError, match="top must be >= 1"):
        bench.profile_inference(bench.build("hieradet-t", img_size=64), top=0)
