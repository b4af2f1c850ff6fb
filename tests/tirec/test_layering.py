"""Imports run one way: features <- pipeline, features <- models <- serving, and only the
orchestration layer and the CLI (``tirec/``) may import all of them. Checked on every import
statement of the code folders (module level and inside functions)."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
# folder -> the tirec packages its code may import
ALLOWED = {"features": {"features"},
           "pipeline": {"features", "pipeline"},
           "models": {"compat", "features", "models"},
           "serving": {"compat", "features", "models", "serving"},
           "orchestration": {"compat", "config", "features", "pipeline", "models", "serving", "orchestration"}}


def _imports(path: pathlib.Path) -> set[str]:
    """The tirec subpackages ``path`` imports (``tirec.models.x`` -> ``models``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        out |= {n.split(".")[1] for n in names if n.startswith("tirec.") and n.count(".") >= 1}
    return out


def test_imports_run_one_way():
    bad = []
    for folder, allowed in ALLOWED.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            extra = _imports(path) - allowed
            if extra:
                bad.append(f"{path.relative_to(ROOT)} imports tirec.{', tirec.'.join(sorted(extra))}")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    code = tmp_path / "x.py"
    code.write_text("def f():\n    from tirec.orchestration import runner\n    import tirec.serving.export\n")
    assert _imports(code) == {"orchestration", "serving"}
