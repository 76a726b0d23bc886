"""The install block for an environment of your own (docs/install.md), run as written in a fresh venv that holds
only torch, torchvision and detectron2 (with detectron2's own requirements, and the OpenCV it asks its users to bring):
``pip install .`` must bring everything a stock train + evaluation run imports, which then trains 2 iterations and
evaluates on generated data (polygon masks: the LSJ crop needs shapely). The run's ``sys.modules`` is then audited:
every module it loaded comes from a declared requirement or the documented environment, it evaluated with
faster-coco-eval, and ``lvis`` (an extra) stayed unimported.

Cheap by construction: the fresh venv gets the shared environment's torch, torchvision, detectron2, OpenCV and
detectron2's declared requirements as symlinks (no 6 GB reinstall); pip downloads only what hieradet itself adds
(measured: about 55 s in all on the shared 2-core machine)."""

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from test_doors_requirements import DETECTRON2_DECLARED, USER_OPENCV, _closure, undeclared_modules

ROOT = Path(__file__).resolve().parents[1]

TRAIN = r"""
import json, os, sys
import hieradet
assert hieradet.__file__.startswith(sys.prefix), hieradet.__file__  # the installed wheel, not the checkout
sys.argv = ["lazyconfig_train_net"]
sys.path.insert(0, {tools!r})
import lazyconfig_train_net as tool
from hieradet.data import generate_synthetic_dataset

data = generate_synthetic_dataset("data", num_train=2, num_val=2, image_size=64, fmt="coco")  # polygons: shapely
open("tiny.py", "w").write(
    "from detectron2.config import LazyConfig\n"
    "from hieradet.model_zoo import get_config_file\n"
    "from hieradet.testing import make_tiny\n"
    "_c = make_tiny(LazyConfig.load(get_config_file('COCO/mask_rcnn_hieradet_t_100ep.py')), 64, num_classes=4)\n"
    "model, dataloader, optimizer = _c.model, _c.dataloader, _c.optimizer\n"
    "lr_multiplier, train = _c.lr_multiplier, _c.train\n"
)
args = tool.build_parser().parse_args([
    "--config-file", "tiny.py",
    "--dataset", "wheel_train", data["train"], os.path.join(data["image_root"], "train"),
    "--dataset", "wheel_val", data["val"], os.path.join(data["image_root"], "val"),
    "dataloader.train.dataset.names=wheel_train", "dataloader.test.dataset.names=wheel_val",
    "train.device=cpu", "train.max_iter=2", "train.eval_period=0", "train.output_dir=out",
])
results = tool.main(args)
assert {{"bbox", "segm"}} <= set(results), results
json.dump(sorted({{m.split(".")[0] for m in sys.modules}}), open("modules.json", "w"))
print("WHEEL-RUN-OK", sorted(results))
"""


def _link_distribution(name: str, site: Path, done: set) -> None:
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return
    base = Path(dist.locate_file(""))
    tops = {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != ".." and not f.name.endswith(".pth")}
    for top in tops:
        if top in done or not (base / top).exists():
            continue
        (site / top).symlink_to(base / top)
        done.add(top)


def _readme_install_block() -> str:
    text = (ROOT / "docs" / "install.md").read_text()
    return next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "pip install ." in b)


@pytest.mark.slow
def test_the_cluster_install_block_trains_and_evaluates_in_a_fresh_venv(tmp_path):
    block = _readme_install_block()
    commands = [line.split(" #")[0].strip() for line in block.splitlines()]
    commands = [c for c in commands if c and not c.startswith("#")]
    assert commands == ["pip install .", "pip install --no-deps lvis==0.5.3"]

    # a checkout copy (pip builds in it) and the fresh venv
    src = tmp_path / "hieradet"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    done = {p.name for p in site.iterdir()}  # pip, setuptools of the venv itself
    for name in sorted(_closure({"torch", "torchvision"} | DETECTRON2_DECLARED | USER_OPENCV)):
        _link_distribution(name, site, done)
    import detectron2

    (site / "detectron2").symlink_to(Path(detectron2.__file__).parent)  # detectron2, however it was installed
    assert not (site / "faster_coco_eval").exists() and not (site / "shapely").exists()

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    for command in commands:  # as written, from the checkout
        proc = subprocess.run(command, shell=True, cwd=src, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"

    work = tmp_path / "run"
    work.mkdir()
    script = TRAIN.format(tools=str(src / "tools"))
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0 and "WHEEL-RUN-OK" in proc.stdout, proc.stderr[-4000:]
    modules = json.loads((work / "modules.json").read_text())
    assert "faster_coco_eval" in modules and "shapely" in modules  # the stock evaluator's backend, LSJ's crop
    assert "lvis" not in modules  # installed by the block, but an extra: a COCO run never imports it
    foreign = undeclared_modules(modules)
    assert not foreign, f"a stock train + eval run imports undeclared packages: {foreign}"
