"""The analysis package's arrows point one way: planner/ -> costmodel/ -> hlo/. Read from every
import statement (function-level ones too), so a shortcut back fails here, not in review."""

import ast
from pathlib import Path

ANALYSIS = Path(__file__).resolve().parent.parent / "helix_jax" / "analysis"
# what each part must never import
FORBIDDEN = {"hlo": ("costmodel", "planner", "partitioners"), "costmodel": ("planner",
                                                                            "partitioners")}


def imported(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_the_analysis_parts_import_one_way():
    broken = []
    for part, never in FORBIDDEN.items():
        files = sorted((ANALYSIS / part).glob("*.py"))
        assert files, part
        for f in files:
            for name in imported(f):
                if any(name.startswith(f"helix_jax.analysis.{n}") for n in never):
                    broken.append(f"{part}/{f.name} imports {name}")
    assert not broken, broken


def test_the_checker_sees_a_shortcut(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from helix_jax.analysis.planner.search import plan\n")
    assert "helix_jax.analysis.planner.search" in imported(bad)
