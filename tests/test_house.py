"""The layout of clipes (issue 24): ground-floor packages, one package per method, the mmseg wing.

Read with the standard library's ``ast`` (every import statement, also those inside functions):
no import cycle among clipes' modules; nothing below the methods imports a method; a method imports
only earlier methods, never the mmseg wing or the demo; and ``import clipes`` (or any module outside
the wing) imports no mmseg.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clipes"
GROUND = ("backbones", "maps", "store", "data")
METHODS = ("clip_es", "weclip", "weakclip", "weclip_plus", "excel")  # in the order they may build on each other
SHARED_TOP = ("errors", "compat", "runs")  # top-level modules the ground floor and the methods may use


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {_module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    assert len(found) > 40
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The clipes modules a file imports (``from clipes.a import b`` is ``clipes.a.b`` when b is a module)."""
    out = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.startswith("clipes"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("clipes"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if full in modules else base)
    return {name for name in out if name in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    # The top package only re-exports the public API (a facade over the packages below it).
    return {name: _imports(path, modules) - {name} for name, path in modules.items() if name != "clipes"}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_house_has_its_rooms():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert set(GROUND) | {"clip_es", "weclip", "weakclip", "mmseg_ext", "demo"} <= packages
    flat = sorted(p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert flat and set(flat) <= {"runs", "eval_runner", "viz", "errors", "compat"}, flat


def test_no_import_cycle():
    graph = _graph()
    assert graph and any(graph.values())
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1  # on the current path
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2  # done

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_nothing_reaches_up():
    graph = _graph()
    checked = 0
    for module, imported in graph.items():
        room = _room(module)
        rooms = {_room(m) for m in imported}
        if room in GROUND or room in SHARED_TOP:
            bad = rooms & (set(METHODS) | {"mmseg_ext", "demo", "eval_runner", "viz"})
            assert not bad, f"{module} (ground floor) imports {sorted(bad)}"
            checked += 1
        elif room in METHODS:
            later = set(METHODS[METHODS.index(room) + 1:])
            bad = rooms & (later | {"mmseg_ext", "demo"})
            assert not bad, f"{module} (method {room}) imports {sorted(bad)}"
            checked += 1
        elif room == "mmseg_ext":
            assert "demo" not in rooms, module
    assert checked > 30


def test_importing_clipes_and_every_module_outside_the_wing_imports_no_mmseg():
    names = sorted(m for m in _modules() if _room(m) != "mmseg_ext")
    assert "clipes" in names and "clipes.weclip.model" in names
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mmseg', 'mmengine', 'mmcv')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout[-2000:]
