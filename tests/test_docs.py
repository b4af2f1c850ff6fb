"""The project documents its own models in docs/models.md, and the code points there only.

Static checks over the tracked files (no TensorFlow): nothing outside ``docs/`` points at notes
outside the repository (``../shared/docs``, ``MODELS.md`` or its section numbers); every
``docs/models.md#anchor`` used anywhere, and every ``(#anchor)`` link inside docs/models.md,
names one of its headings; every config key docs/models.md names (in code spans and code
blocks) exists in the config dataclasses; every registered model has its own section.
"""
from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "models.md"
THIS = Path(__file__).resolve()

# Pointers at notes outside the repository: the shared folder, the old spec file by name, and
# its "§1.4"-style section numbers.
OUTSIDE = re.compile(r"shared/docs|\b(?:MODELS|STYLE)\.md|§\s*\d")
ANCHOR_USE = re.compile(r"docs/models\.md#([\w-]+)")
LOCAL_LINK = re.compile(r"\]\(#([\w-]+)\)")
CONFIG_KEY = re.compile(r"(?<![\w./-])(model|train|pipeline)((?:\.\w+)+)")
_SKIP_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache"}


def _tracked_files() -> list[Path]:
    """The repository's tracked files (``git ls-files``), or every file outside the usual build
    and environment folders when this is not a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        names = [n for n in out.stdout.decode("utf-8").split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not p.is_symlink()
                 and not _SKIP_DIRS & set(p.relative_to(ROOT).parts)]
    return [ROOT / n for n in names if (ROOT / n).is_file()]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # binary files (fixtures, images) hold no pointers


def _doc() -> str:
    assert DOC.is_file(), f"{DOC.relative_to(ROOT)} is missing"
    return DOC.read_text(encoding="utf-8")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces -> '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    """The anchors of the document's headings (outside code fences), GitHub's way, duplicates
    numbered ``-1``, ``-2``..."""
    anchors: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if m and not fenced:
            slug, k = _slug(m.group(1)), 1
            unique = slug
            while unique in anchors:
                unique, k = f"{slug}-{k}", k + 1
            anchors.add(unique)
    return anchors


def _config_classes(paths, keep) -> dict[str, set[str]]:
    """Field names of the ``@dataclass`` classes in ``paths`` whose names ``keep`` accepts."""
    classes: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.ClassDef) and keep(node.name)
                    and any("dataclass" in ast.unparse(d) for d in node.decorator_list)):
                classes.setdefault(node.name, set()).update(
                    s.target.id for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name))
    return classes


def _registered_models() -> set[str]:
    """Names given to ``register_model(...)`` in models/ (read from the source, no import)."""
    names = set()
    for path in (ROOT / "models").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) \
                    == "register_model" and node.args and isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
    return names


def _sections() -> dict[str, tuple[set[str], set[str]]]:
    """Per config section: (field names of its dataclasses, names that may stand between the
    section and a field, i.e. sub-sections). The model section accepts ``model.<field>`` and
    ``model.<registered model>.<field>`` alike (per-model sub-sections)."""
    model = set().union(*_config_classes(
        (ROOT / "models").rglob("*.py"),
        lambda n: n.endswith("Config") and n != "TrainConfig").values())
    train = set().union(*_config_classes(
        list((ROOT / "models").rglob("*.py")) + list((ROOT / "tirec").glob("*.py")),
        lambda n: n == "TrainConfig").values())
    pipeline = set().union(*_config_classes([ROOT / "pipeline" / "config.py"],
                                            lambda n: n.endswith("Config")).values())
    return {"model": (model, model | _registered_models()), "train": (train, train),
            "pipeline": (pipeline, pipeline)}


def test_nothing_points_outside_the_repository():
    bad = []
    for path in _tracked_files():
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "docs" or path.resolve() == THIS:
            continue
        for i, line in enumerate((_text(path) or "").splitlines(), 1):
            if OUTSIDE.search(line):
                bad.append(f"{rel}:{i}: {line.strip()}")
    assert not bad, ("these lines point at notes outside the repository; link the matching "
                     "section of docs/models.md (docs/models.md#<anchor>) instead:\n" + "\n".join(bad))


def test_every_docs_models_anchor_exists():
    anchors = _anchors(_doc())
    used = {}
    for path in _tracked_files():
        if path.resolve() == THIS:
            continue
        for i, line in enumerate((_text(path) or "").splitlines(), 1):
            for anchor in ANCHOR_USE.findall(line):
                used.setdefault(anchor, []).append(f"{path.relative_to(ROOT)}:{i}")
    for i, line in enumerate(_doc().splitlines(), 1):
        for anchor in LOCAL_LINK.findall(line):
            used.setdefault(anchor, []).append(f"docs/models.md:{i}")
    assert used, "no file links a section of docs/models.md"
    missing = {a: where for a, where in used.items() if a not in anchors}
    assert not missing, f"links to sections docs/models.md does not have: {missing}; its sections: {sorted(anchors)}"


def test_every_config_key_in_docs_exists():
    sections = _sections()
    code = re.findall(r"`([^`]+)`", _doc())  # inline code spans ...
    code += [line for line in _doc().splitlines() if line.startswith("    ")]  # ... and code blocks
    keys = {section + rest for span in code for section, rest in CONFIG_KEY.findall(span)}
    assert {"model.daian.use_uim", "model.daian.i2e_fusion", "train.three_stage", "pipeline.intent_levels"} <= keys, \
        sorted(keys)
    bad = []
    for key in sorted(keys):
        section, *parts = key.split(".")
        fields, between = sections[section]
        if parts[-1] not in fields or any(p not in between for p in parts[:-1]):
            bad.append(key)
    assert not bad, f"docs/models.md names config keys that do not exist: {bad}"


def test_every_registered_model_has_a_section():
    models = _registered_models()
    assert {"din", "daian"} <= models, models
    missing = sorted(m for m in models if m not in _anchors(_doc()))
    assert not missing, f"registered models without a section (## <name>) in docs/models.md: {missing}"
