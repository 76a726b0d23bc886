"""hieradet.model_zoo: the recipes by name, from a checkout and (slow) from a wheel installed into a fresh venv."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from hieradet import model_zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_names_resolve_to_the_checkouts_files():
    path = model_zoo.get_config_file("COCO/mask_rcnn_hieradet_b_100ep.py")
    assert os.path.samefile(path, os.path.join(ROOT, "configs/COCO/mask_rcnn_hieradet_b_100ep.py"))
    for name in ("configs/COCO/mask_rcnn_hieradet_b_100ep.py",):
        assert os.path.samefile(model_zoo.get_config_file(name), path)
    hivit = os.path.join(ROOT, "projects/HiViT/configs/COCO/mask_rcnn_hivit_b_3x.py")
    assert os.path.samefile(model_zoo.get_config_file("HiViT/COCO/mask_rcnn_hivit_b_3x.py"), hivit)
    assert os.path.samefile(model_zoo.get_config_file("projects/HiViT/configs/COCO/mask_rcnn_hivit_b_3x.py"), hivit)
    with pytest.raises(FileNotFoundError, match="'COCO/nope.py' is not in hieradet's model zoo"):
        model_zoo.get_config_file("COCO/nope.py")


def test_resolve_config_path_takes_files_and_names(tmp_path):
    own = tmp_path / "mine.py"
    own.write_text("x = 1\n")
    assert model_zoo.resolve_config_path(str(own)) == str(own)
    assert model_zoo.resolve_config_path("LVIS/mask_rcnn_vitdet_b_100ep.py").endswith(
        os.path.join("configs", "LVIS", "mask_rcnn_vitdet_b_100ep.py")
    )
    with pytest.raises(FileNotFoundError, match="neither a file nor a model-zoo name"):
        model_zoo.resolve_config_path(str(tmp_path / "missing.py"))


def test_list_configs_names_every_recipe():
    names = model_zoo.list_configs()
    on_disk = []
    for base, prefix in (("configs", ""), ("projects/HiViT/configs", "HiViT/")):
        for dataset in ("COCO", "LVIS"):
            for dirpath, _, files in os.walk(os.path.join(ROOT, base, dataset)):
                rel = os.path.relpath(dirpath, os.path.join(ROOT, base))
                on_disk += [f"{prefix}{rel}/{f}" for f in files if f.endswith(".py")]
    assert sorted(on_disk) == names and "COCO/mask_rcnn_hieradet_b_100ep.py" in names
    assert all(os.path.isfile(model_zoo.get_config_file(n)) for n in names)


def test_get_config_loads_the_recipe():
    cfg = model_zoo.get_config("COCO/mask_rcnn_hieradet_b_100ep.py")
    assert cfg.model.backbone.bottom_up.drop_path_rate == 0.2 and cfg.optimizer.lr == 1.4e-4
    hivit = model_zoo.get_config("HiViT/COCO/mask_rcnn_hivit_b_3x.py")  # relative imports up to configs/common
    assert "HiViT" in str(hivit.model.backbone.bottom_up._target_)


_CHECK_INSTALLED = """
import os, sys
import hieradet
from hieradet import model_zoo
venv = sys.argv[1]
assert os.path.realpath(hieradet.__file__).startswith(os.path.realpath(venv)), hieradet.__file__
path = model_zoo.get_config_file("COCO/mask_rcnn_hieradet_b_100ep.py")
assert os.path.realpath(path).startswith(os.path.realpath(venv)), path
cfg = model_zoo.get_config("COCO/mask_rcnn_hieradet_b_100ep.py")
assert cfg.model.backbone.bottom_up.drop_path_rate == 0.2
hivit = model_zoo.get_config("HiViT/LVIS/mask_rcnn_hivit_b_3x.py")
assert model_zoo.resolve_config_path("COCO/mask_rcnn_vitdet_b_100ep.py").startswith(os.path.realpath(venv))
print("zoo", len(model_zoo.list_configs()), hieradet.__file__)
"""


@pytest.mark.slow  # builds a wheel and a venv: ~1 min
def test_wheel_installed_in_a_fresh_venv_ships_the_recipes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for item in ("setup.py", "pyproject.toml", "MANIFEST.in"):
        shutil.copyfile(os.path.join(ROOT, item), src / item)
    for item in ("hieradet", "configs", "projects"):
        shutil.copytree(os.path.join(ROOT, item), src / item, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    run = dict(
        capture_output=True, text=True, cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)], **run
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = list(dist.glob("hieradet-*.whl"))
    # a fresh venv that sees this environment's packages (torch, detectron2) but not its editable hieradet: the
    # site-packages folder is added as a plain path, so its .pth files (the editable finder) are not run
    venv = tmp_path / "venv"
    proc = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], **run)
    with open(os.path.join(site.stdout.strip(), "shared_env.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", str(wheel)], **run
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = subprocess.run([python, "-c", _CHECK_INSTALLED, str(venv)], **run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(f"zoo {len(model_zoo.list_configs())} ")
