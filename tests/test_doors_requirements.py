"""``pip install`` declares what the package imports: every third-party import of the package's modules, and every
module a stock train + evaluation run loads, comes from a declared requirement (or what it pulls in), from the
environment the package documents (torch, torchvision, detectron2 and detectron2's own requirements, OpenCV), or
from a named extra whose missing package gives an error naming the extra."""

import ast
import functools
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# what the package documents as brought by the environment (setup.py's docstring, the README's install section)
BASE = {"torch", "torchvision", "detectron2", "sal-detectron2"}
# detectron2's own setup.py install_requires (it asks users to bring OpenCV themselves)
DETECTRON2_DECLARED = {
    "pillow", "matplotlib", "pycocotools", "termcolor", "yacs", "tabulate", "cloudpickle", "tqdm", "tensorboard",
    "fvcore", "iopath", "omegaconf", "hydra-core", "black", "packaging",
}  # fmt: skip
USER_OPENCV = {"opencv-python", "opencv-python-headless"}
# imported by module name: detectron2 may be copied in without a distribution (tools/install.sh)
BASE_MODULES = {"torch", "torchvision", "detectron2"}
# detectron2's own optional imports (inside try / except ImportError): detectron2.engine.defaults._highlight
DETECTRON2_OPTIONAL = {"pygments"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _norm(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0])


def _setup_requirements():
    """``(install_requires, {extra: [names]})`` read from setup.py's ``setup(...)`` call."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    extras = {e: {_requirement_name(r) for r in reqs} for e, reqs in kw["extras_require"].items()}
    return {_requirement_name(r) for r in kw["install_requires"]}, extras


def _closure(names):
    """``names`` and every distribution they require (installed ones; extras' requirements left out)."""
    seen, todo = set(), [_norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo.extend(_requirement_name(r) for r in reqs if "extra ==" not in r)
    return seen


def _allowed():
    required, _ = _setup_requirements()
    return _closure(required | BASE | DETECTRON2_DECLARED) | USER_OPENCV


def _setuptools_vendored():
    """Modules setuptools ships in ``setuptools/_vendor``: ``pkg_resources`` (which detectron2's model zoo imports)
    puts that folder on ``sys.path``, so they load from there, or from an installed copy, without a requirement."""
    import setuptools

    vendor = Path(setuptools.__file__).parent / "_vendor"
    names = {p.name.split(".")[0].split("-")[0] for p in vendor.iterdir()} if vendor.is_dir() else set()
    return {n for n in names if not n.endswith("_info")}


@functools.cache
def _packages_distributions():
    return metadata.packages_distributions()


def _distributions(module: str):
    return {_norm(d) for d in _packages_distributions().get(module, [])}


def _package_imports():
    """``{top-level module: [(file, lazy)]}`` of the package's third-party imports (``lazy``: inside a function)."""
    found = {}
    for path in sorted((ROOT / "hieradet").rglob("*.py")):
        tree = ast.parse(path.read_text())
        lazy_nodes = {
            id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "hieradet":
                    found.setdefault(top, []).append((str(path.relative_to(ROOT)), id(node) in lazy_nodes))
    return found


def test_every_import_of_the_package_is_declared_or_a_named_lazy_extra():
    allowed, (_, extras) = _allowed(), _setup_requirements()
    undeclared = []
    for module, uses in sorted(_package_imports().items()):
        if module in BASE_MODULES:
            continue
        dists = _distributions(module)
        assert dists, f"{module} (imported by {uses[0][0]}) is not installed here: the audit cannot map it"
        if dists & allowed:
            continue
        extra = next((e for e, names in extras.items() if dists & names), None)
        eager = [f for f, lazy in uses if not lazy]
        if extra is None or eager:
            undeclared.append(f"{module} ({sorted(dists)}) in {sorted({f for f, _ in uses})}")
            continue
        for f in {f for f, _ in uses}:  # the error for a missing extra names it
            assert f"hieradet[{extra}]" in (ROOT / f).read_text(), f"{f} imports {module} without naming [{extra}]"
    assert not undeclared, "imports neither in install_requires nor a lazy extra: " + "; ".join(undeclared)


def test_the_audit_sees_what_it_must():
    required, extras = _setup_requirements()
    assert {"faster-coco-eval", "shapely", "pycocotools", "numpy"} <= required
    assert {"lvis", "sam2", "export", "cluster"} <= set(extras)
    imports = _package_imports()
    assert "faster_coco_eval" in imports and "sam2" in imports and "lvis" in imports
    assert all(lazy for _, lazy in imports["sam2"])


def test_a_missing_extra_or_requirement_names_the_fix(monkeypatch):
    from hieradet.benchmark.presets import build_backbone
    from hieradet.evaluation import patch_lvis_numpy
    from hieradet.evaluation.scoring import load_faster_gt

    monkeypatch.setitem(sys.modules, "lvis", None)
    monkeypatch.setitem(sys.modules, "lvis.eval", None)
    with pytest.raises(ImportError, match=r"hieradet's `lvis` extra.*--no-deps lvis==0.5.3"):
        patch_lvis_numpy()
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    with pytest.raises(ImportError, match=r"pip install 'faster-coco-eval>=1.6'.*backend='pycocotools'"):
        load_faster_gt({"images": [], "annotations": [], "categories": []})
    monkeypatch.setitem(sys.modules, "sam2", None)
    monkeypatch.setitem(sys.modules, "sam2.modeling.backbones.hieradet", None)
    with pytest.raises(ImportError, match=r"pip install 'hieradet\[sam2\]'"):
        build_backbone("sam2-hiera-t")


def undeclared_modules(modules):
    """``{module: [distributions]}`` of the top-level ``modules`` a run loaded that come from no declared
    requirement, nor from the documented environment (``tests/test_doors_wheel.py`` runs a stock train + evaluation
    in a fresh venv from the wheel and checks its ``sys.modules`` with this)."""
    allowed, local = _allowed(), {p.stem for p in (ROOT / "tools").glob("*.py")}
    skip = BASE_MODULES | DETECTRON2_OPTIONAL | _setuptools_vendored() | local | {"hieradet"}
    foreign = {}
    for module in modules:
        if module in sys.stdlib_module_names or module in skip or module.startswith("_"):
            continue
        dists = _distributions(module)
        if dists and not dists & allowed:
            foreign[module] = sorted(dists)
    return foreign


def test_the_run_audit_sees_an_undeclared_module():
    assert undeclared_modules(["os", "torch", "detectron2", "hieradet", "faster_coco_eval", "shapely"]) == {}
    found = undeclared_modules(["timm", "numpy"])
    assert set(found) == {"timm"} and found["timm"] == ["timm"], found
