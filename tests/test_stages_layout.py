"""The command modules and runners import their shared helpers from rooms of their own (no cycles)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_stage_module_imports_the_cli_back():
    modules = sorted(p for p in (ROOT / "stages").glob("*.py") if p.name not in ("cli.py", "__init__.py"))
    assert len(modules) >= 8
    for path in modules:
        imported = _imported_modules(path)
        assert "stages.cli" not in imported, path.name
    uses_common = [p.name for p in modules if "stages.common" in _imported_modules(p)]
    assert "cams.py" in uses_common and "segment.py" in uses_common


def test_runners_take_shared_pieces_from_runs_not_from_each_other():
    for name in ("clip_es/refine_runner.py", "clip_es/prompt_select.py", "viz.py"):
        imported = _imported_modules(ROOT / "clipes" / name)
        assert not any(m.startswith("clipes.clip_es.cam_runner") for m in imported), name
    imported = _imported_modules(ROOT / "clipes" / "clip_es" / "refine_runner.py")
    assert {"clipes.runs.RunSummary", "clipes.runs.progress_bar", "clipes.runs.resolve_device"} <= imported


def test_one_stage_methods_take_their_shared_flags_from_one_module():
    """train-/predict-/masks- of WeCLIP, WeCLIP+ and ExCEL declare only their own flags."""
    for name in ("weclip.py", "weclip_plus.py", "excel.py"):
        imported = _imported_modules(ROOT / "stages" / name)
        assert {"stages.method_flags.TRAIN_RUN_FLAGS", "stages.method_flags.PREDICT_FLAGS",
                "stages.method_flags.MASKS_FLAGS", "stages.method_flags.infer"} <= imported, name
        assert "--checkpoint-interval" not in (ROOT / "stages" / name).read_text(), name
