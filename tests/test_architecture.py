"""The package's shape: every module imports on its own, imports go one way, tools are thin command lines that all
answer ``--help`` and leave ``sys.path`` alone."""

import ast
import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

import hieradet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = sorted(
    [os.path.join("tools", f) for f in os.listdir(os.path.join(ROOT, "tools")) if f.endswith(".py")]
    + [os.path.join("projects", "HiViT", "tools", f) for f in os.listdir(os.path.join(ROOT, "projects/HiViT/tools"))]
)
# tools owned by the checkpoint-layout work, which removes their sys.path edits (drop the marks when merged)


def _modules():
    names = ["hieradet"]
    for info in pkgutil.walk_packages(hieradet.__path__, "hieradet."):
        names.append(info.name)
    return sorted(names)


def _top_level_imports(name: str, path: str, is_pkg: bool, known) -> set:
    """The hieradet modules ``name`` imports when it is imported (module level, including ``if``/``try`` blocks;
    imports inside functions run later and cannot make an import cycle)."""
    package = name if is_pkg else name.rpartition(".")[0]
    deps = set()
    for node in ast.parse(open(path).read()).body:
        for st in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(st, ast.Import):
                deps.update(a.name for a in st.names)
            elif isinstance(st, ast.ImportFrom):
                base = package
                for _ in range(max(st.level - 1, 0)):
                    base = base.rpartition(".")[0]
                mod = (f"{base}.{st.module}" if st.module else base) if st.level else st.module
                deps.add(mod)
                deps.update(f"{mod}.{a.name}" for a in st.names)
    return {d for d in deps if d in known and d != name}


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_module_level_imports_have_no_cycle():
    known = set(_modules())
    graph = {}
    for name in known:
        rel = name.replace(".", os.sep)
        is_pkg = os.path.isdir(os.path.join(ROOT, rel))
        path = os.path.join(ROOT, rel, "__init__.py") if is_pkg else os.path.join(ROOT, rel + ".py")
        graph[name] = _top_level_imports(name, path, is_pkg, known)
    assert "hieradet.config" in graph["hieradet"] and "hieradet.modeling.hieradet" in graph["hieradet.config"]
    assert _cycles(graph) == []


def test_every_module_imports_in_a_fresh_interpreter():
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\nprint('ok')"
    proc = subprocess.run([sys.executable, "-c", code, *_modules()], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_tools_import_the_library_not_each_other():
    tool_names = {os.path.basename(t)[:-3] for t in TOOLS}
    for tool in TOOLS:
        tree = ast.parse(open(os.path.join(ROOT, tool)).read())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & tool_names, (tool, imported & tool_names)


@pytest.mark.parametrize("tool", TOOLS)
def test_tools_leave_sys_path_alone(tool):
    assert "sys.path" not in open(os.path.join(ROOT, tool)).read()


@pytest.mark.slow  # 11 processes importing torch and detectron2: ~30 s each on the loaded 2-core machine
def test_every_tool_answers_help():
    """Each ``tools/*.py`` in a process of its own (two at a time): ``--help`` exits 0 and prints a usage line."""

    def run(tool):
        proc = subprocess.run(
            [sys.executable, os.path.join(ROOT, tool), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=300
        )
        return tool, proc

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, [t for t in TOOLS if t.startswith("tools")]))
    failed = [(t, p.returncode, p.stderr[-800:]) for t, p in results if p.returncode != 0 or "usage:" not in p.stdout]
    assert not failed, failed
