"""The command blocks of README.md and of the pages in docs/ run as written: every ``bash`` / ``python`` block either
says what it needs beyond a CPU (a first comment line ``# needs: ...``), is a test-suite command CI runs (``pytest``
on test files that exist, ``make`` targets of the Makefile), or is run below, in a scratch folder that sees the
checkout's ``.venv``, ``tools`` and ``configs``, shrunk only by arguments appended to its commands."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# pages whose blocks record how a figure was measured (benchmark runs, profiles, the demo's tuning log): re-running
# them is a measurement, not a use of the project, so they are not checked here
MEASUREMENT_LOGS = (
    "docs/benchmarks.md", "docs/benchmarks_peers.md", "docs/benchmarks_cpu_inference.md", "docs/demo_tuning.md",
    "docs/pos_embed_analysis.md",
)  # fmt: skip
PAGES = ("README.md",) + tuple(
    sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md") if p.name != "README.md")
)
FENCE = re.compile(r"^```(bash|python)\n(.*?)^```", re.M | re.S)

# a stock HieraDet config at 64 px with a 5-block, 16-channel backbone (LazyConfig overrides)
TINY_MODEL = [
    "model.backbone.bottom_up.embed_dim=16",
    "model.backbone.bottom_up.num_heads=1",
    "model.backbone.bottom_up.stages=[1,1,2,1]",
    "model.backbone.bottom_up.global_blocks=[3]",
    "model.backbone.bottom_up.img_size=64",
    "model.backbone.square_pad=64",
    "dataloader.test.mapper.augmentations.0.short_edge_length=64",
    "dataloader.test.mapper.augmentations.0.max_size=64",
]
# appended to a command line whose tool path ends with the key (argparse and LazyConfig overrides: the last value
# wins); the first matching key is used
SHRINK = {
    "generate_dataset.py": ["--num-train", "4", "--num-val", "2", "--image-size", "64"],
    "pretrain.py": ["dataloader.dataset.num_images=8", "dataloader.total_batch_size=4", "train.max_iter=2"],
    "lazyconfig_train_net.py": [
        "train.init_checkpoint=",  # the block's /path/to/converted.pth is a placeholder; train from scratch
        *TINY_MODEL,
        "dataloader.train.mapper.augmentations.1.target_height=64",
        "dataloader.train.mapper.augmentations.1.target_width=64",
        "dataloader.train.mapper.augmentations.2.crop_size=[64,64]",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "train.max_iter=2",
        "train.eval_period=0",
        "train.device=cpu",
    ],
}


def _blocks():
    """``[(page, language, text)]`` of the checked pages' code blocks (pages relative to the repository root)."""
    out = []
    for page in PAGES:
        if page in MEASUREMENT_LOGS:
            continue
        for lang, text in FENCE.findall((ROOT / page).read_text()):
            out.append((page, lang, text))
    return out


def _block(page: str, must_contain: str) -> str:
    found = [t for p, _, t in _blocks() if p == page and must_contain in t]
    assert len(found) == 1, f"{page}: {len(found)} blocks contain {must_contain!r}"
    return found[0]


RUN_HERE = {  # (page, a string that identifies the block): what runs it
    ("docs/dataset.md", "tools/generate_dataset.py"): "test_dataset_blocks_generate_and_train",
    ("README.md", "--dataset mine_train"): "test_dataset_blocks_generate_and_train",
    ("docs/dataset.md", "--dataset mine_train"): "test_blocks_shown_on_two_pages_are_the_same",
    ("docs/detectron2_tools.md", "convert_state_dict"): "test_blocks_shown_on_two_pages_are_the_same",
    ("README.md", "convert_state_dict"): "test_the_backbone_snippet_gives_sam2s_trunk",
    ("docs/inference.md", "generate_synthetic_dataset"): "test_the_predict_block_draws_predictions",
    ("docs/recipes.md", "use_soft_nms"): "test_the_soft_nms_and_tta_fragment_in_a_config",
    ("docs/recipes.md", "check_finite_inputs"): "test_the_input_guard_timing_block",
    ("docs/recipes.md", "recipe_table.py --write"): "test_configs.py::test_readme_recipe_table_is_the_generated_one",
    ("docs/backbones.md", "model_zoo.list_configs"): "test_the_model_zoo_block",
    ("docs/backbones.md", "hieradet_kwargs("): "test_the_backbone_blocks_build_and_load",
    ("docs/backbones.md", "apply_checkpoint_layout(model_cfg"): "test_the_backbone_blocks_build_and_load",
    ("README.md", "add_hieradet_config"): "test_readme.py::test_backbone_snippet_builds_a_working_mask_rcnn[yacs]",
    ("docs/backbones.md", "hivit_kwargs"): "test_the_backbone_blocks_build_and_load",
    ("docs/pretraining.md", "mae_hiera_toy_shapes.py"): "test_the_toy_pretraining_block",
    ("README.md", "tools/build_readme.py"): "test_readme.py::test_readme_is_assembled_from_its_sections",
}


def _is_ci_block(text: str) -> bool:
    """True for a block of test-suite commands only: ``pytest`` on test files that exist, ``make`` targets that the
    Makefile defines (CI runs them: ``make test``, ``make test-slow``, ``make lint``)."""
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    try:
        commands = _commands(text)
    except ValueError:  # not a list of one-line shell commands (e.g. a multi-line `python -c "..."`)
        return False
    for argv in commands:
        if argv[:3] == [".venv/bin/python", "-m", "pytest"]:
            files = [a.split("::")[0] for a in argv[3:] if a.startswith("tests/")]
            if not files or not all(list(ROOT.glob(f)) for f in files):
                return False
        elif not (argv[0] == "make" and len(argv) == 2 and argv[1] in targets):
            return False
    return bool(commands)


def test_every_block_is_run_here_or_says_what_it_needs():
    unaccounted, blocks = [], _blocks()
    assert {p for p, _, _ in blocks} >= {"README.md", "docs/install.md", "docs/training.md", "docs/dataset.md"}
    for page, lang, text in blocks:
        if text.lstrip().startswith("# needs:") or (lang == "bash" and _is_ci_block(text)):
            continue
        if not any(p == page and key in text for p, key in RUN_HERE):
            unaccounted.append(f"{page}: {text.splitlines()[0]!r}")
    assert not unaccounted, "blocks neither run by this test nor marked '# needs: ...': " + "; ".join(unaccounted)


def test_every_run_here_entry_names_one_block():
    """A moved or edited block must not leave its entry pointing at nothing (the block would go unchecked)."""
    for page, key in RUN_HERE:
        _block(page, key)


def test_blocks_shown_on_two_pages_are_the_same():
    """The README's own-dataset command and six-line backbone snippet are also on their docs pages: the one run here
    stands for both."""
    assert _block("README.md", "--dataset mine_train") == _block("docs/dataset.md", "--dataset mine_train")
    assert _block("README.md", "convert_state_dict") == _block("docs/detectron2_tools.md", "convert_state_dict")


def test_measurement_logs_exist():
    assert all((ROOT / p).is_file() for p in MEASUREMENT_LOGS)


def _commands(block: str):
    """The block's commands, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out.append(shlex.split(line))
    return out


@pytest.fixture
def scratch(tmp_path):
    for name in (".venv", "tools", "configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


def _run(argv, cwd, timeout=900, shrink=None):
    """Runs one command of a block (``python``, ``.venv/bin/python``: this interpreter) with ``shrink`` appended
    (default: the ``SHRINK`` entry of its tool)."""
    if shrink is None:
        tool = next((k for k in SHRINK if argv[1].endswith(k)), None)
        shrink = SHRINK[tool] if tool else []
    argv = [sys.executable] + argv[1:] + shrink
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv[:4])} ... failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_dataset_blocks_generate_and_train(scratch):
    """The generator block, then the own-dataset block (train + val sets, num_classes): 2 iterations and an
    evaluation of a shrunk HieraDet-B Mask R-CNN on 64 px images."""
    for argv in _commands(_block("docs/dataset.md", "tools/generate_dataset.py")):
        _run(argv, scratch)
    ((argv),) = _commands(_block("README.md", "--dataset mine_train"))
    proc = _run(argv, scratch)
    assert (scratch / "output" / "mine" / "model_final.pth").is_file()
    out = proc.stdout + proc.stderr
    # evaluated on the own val set; after 2 iterations the model may detect nothing, and detectron2 then scores the
    # bbox task alone (it reads the tasks from the predictions), so the task is not asserted
    assert re.search(r"Evaluation results for (bbox|segm)", out) and "Start inference on 2 batches" in out
    assert "coco_2017_val" not in out


@pytest.mark.slow
def test_the_backbone_snippet_gives_sam2s_trunk(scratch, monkeypatch):
    sam2_hieradet = pytest.importorskip("sam2.modeling.backbones.hieradet")
    torch.manual_seed(0)
    trunk = sam2_hieradet.Hiera(
        embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
        window_spec=(8, 4, 14, 7), window_pos_embed_bkg_spatial_size=(7, 7),
    ).eval()  # fmt: skip
    with torch.no_grad():
        trunk.pos_embed.normal_()
        trunk.pos_embed_window.normal_()
    state = {"model": {"image_encoder.trunk." + k: v for k, v in trunk.state_dict().items()}}
    torch.save(state, scratch / "sam2.1_hiera_tiny.pt")  # a random file in the published format
    monkeypatch.chdir(scratch)
    snippet = _block("README.md", "convert_state_dict")
    assert len(snippet.strip().splitlines()) == 6
    scope = {}
    with torch.no_grad():
        exec(compile(snippet, "README snippet", "exec"), scope)
        expected = trunk(torch.zeros(1, 3, 512, 512))[-1]
    assert scope["backbone"].pos_embed.mode == "abswin_single"
    torch.testing.assert_close(scope["features"]["scale5"], expected, rtol=0, atol=1e-4)


def _exec(block: str, scope: dict) -> dict:
    exec(compile(block, "README block", "exec"), scope)
    return scope


def test_the_soft_nms_and_tta_fragment_in_a_config(tmp_path):
    """The configs section's fragment, placed after a stock config's ``model`` in a config file of one's own."""
    from detectron2.config import LazyConfig

    from hieradet.modeling.soft_nms import SoftNMSFastRCNNOutputLayers
    from hieradet.modeling.tta import GeneralizedRCNNTTA

    own = tmp_path / "my_config.py"
    own.write_text(
        "from hieradet.model_zoo import get_config\n\n"
        "model = get_config('COCO/mask_rcnn_hieradet_b_100ep.py').model\n" + _block("docs/recipes.md", "use_soft_nms")
    )
    model = LazyConfig.load(str(own)).model
    assert model._target_ is GeneralizedRCNNTTA and model.flip and model.max_size == 1920
    predictor = model.model.roi_heads.box_predictor
    assert predictor._target_ is SoftNMSFastRCNNOutputLayers and predictor.soft_nms_method == "linear"


def test_the_model_zoo_block():
    scope = _exec(_block("docs/backbones.md", "model_zoo.list_configs"), {})
    assert scope["cfg"].model.backbone.bottom_up.embed_dim == 96 and os.path.isfile(scope["path"])
    assert "HiViT/COCO/mask_rcnn_hivit_b_3x.py" in scope["names"] and os.path.isfile(scope["path"])


@pytest.mark.slow
def test_the_backbone_blocks_build_and_load(tmp_path, monkeypatch):
    """The backbones section's LazyConfig build and its load of a raw official Hiera-B file (random weights in the
    published format), and the HiViT section's block, each as written (test_readme.py runs the yacs block and
    the built model)."""
    hiera = pytest.importorskip("hiera")
    from hieradet.modeling import HieraDet
    from hieradet.modeling.hivit import HiViT

    torch.manual_seed(0)
    official = hiera.hiera_base_224(pretrained=False)
    with torch.no_grad():
        official.pos_embed.normal_(std=0.02)
    torch.save({"model_state": official.state_dict()}, tmp_path / "hiera_base_224.pth")
    monkeypatch.chdir(tmp_path)
    scope = _exec(_block("docs/backbones.md", "hieradet_kwargs("), {})
    assert isinstance(scope["model"].backbone.bottom_up, HieraDet)
    _exec(_block("docs/backbones.md", "apply_checkpoint_layout(model_cfg"), scope)
    bottom_up = scope["model"].backbone.bottom_up
    assert bottom_up.pos_embed.mode == "abswin" and bottom_up.pos_embed.window_embed.shape[-2:] == (56, 56)
    assert torch.equal(bottom_up.patch_embed.proj.weight, official.patch_embed.proj.weight)
    scope = _exec(_block("docs/backbones.md", "hivit_kwargs"), {})
    assert isinstance(scope["backbone"], HiViT)


@pytest.mark.slow
def test_the_predict_block_draws_predictions(scratch, monkeypatch, load_tool):
    """The inference page's generated-data block with a tiny HieraDet-B model (random weights, as written)."""
    (scratch / "docs" / "images").mkdir(parents=True)
    generate, predict = _commands(_block("docs/inference.md", "generate_synthetic_dataset"))
    # in this process (two interpreter start-ups were most of the time): the -c code, then the tool's main
    assert generate[:2] == [".venv/bin/python", "-c"] and predict[:2] == [".venv/bin/python", "tools/predict.py"]
    monkeypatch.chdir(scratch)
    exec(compile(generate[2], "docs -c", "exec"), {})
    shown = load_tool("predict").main(predict[2:] + TINY_MODEL)
    assert len(shown) == 2 and len(list((scratch / "docs" / "images" / "tools_demo").iterdir())) == 2


@pytest.mark.slow
def test_the_input_guard_timing_block():
    """The recipes page's timing of the input guard runs as written and prints one line per dtype."""
    # one multi-line `python -c "..."` command (the code has no double quotes of its own)
    code = re.fullmatch(r'\.venv/bin/python -c "\n(.*)\n"\n', _block("docs/recipes.md", "check_finite_inputs"), re.S)
    assert code and '"' not in code.group(1)
    proc = _run([".venv/bin/python", "-c", code.group(1)], ROOT, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["torch.uint8", "torch.float32"]
    assert all(line.endswith("ms per batch of 2") for line in lines)


@pytest.mark.slow
def test_the_toy_pretraining_block(scratch):
    ((argv),) = _commands(_block("docs/pretraining.md", "mae_hiera_toy_shapes.py"))
    _run(argv, scratch)
    assert (scratch / "output" / "mae_hiera_toy_shapes" / "hieradet_backbone_final.pth").is_file()
