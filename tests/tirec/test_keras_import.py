"""One way to import Keras: ``from tirec.compat import keras``, checked over the tracked files."""
from __future__ import annotations

import ast
import subprocess
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOME = "tirec/compat.py"  # the one module that imports Keras itself
# This file too: it checks that HOME and ``tf.keras`` agree.
ALLOWED = {HOME, str(Path(__file__).resolve().relative_to(ROOT))}
_KERAS_MODULES = ("keras", "tf_keras", "tensorflow.keras")


def _python_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", "*.py"], cwd=ROOT, capture_output=True, check=True)
        return [n for n in out.stdout.decode("utf-8").split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                if not {".git", ".venv", "build"} & set(p.relative_to(ROOT).parts) and not p.is_symlink()]


def _is_keras_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in _KERAS_MODULES)


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def keras_spellings(source: str) -> list[tuple[int, str]]:
    """``(line, spelling)`` of every way ``source`` reaches Keras other than ``tirec.compat``:
    ``import keras`` / ``tf_keras`` / ``tensorflow.keras``, ``from`` those, ``from tensorflow
    import keras``, and attribute access such as ``tf.keras`` or ``tf.compat.v1.keras``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if _is_keras_module(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if _is_keras_module(node.module) or (
                    node.module == "tensorflow" and any(a.name == "keras" for a in node.names)):
                found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Attribute) and node.attr == "keras" \
                and _root_name(node.value) in ("tf", "tensorflow"):
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_spellings_are_recognised():
    source = ("import tf_keras as keras\nimport keras\nfrom tensorflow import keras\n"
              "from tf_keras import layers\nx = tf.keras.layers\ny = tf.compat.v1.keras\n"
              "from tirec.compat import keras\ns = 'tf.keras in a string'\n")
    assert [line for line, _ in keras_spellings(source)] == [1, 2, 3, 4, 5, 6]


def test_every_file_imports_keras_from_tirec_compat():
    files = _python_files()
    assert HOME in files
    bad = []
    for name in files:
        if name in ALLOWED:
            continue
        for line, spelling in keras_spellings((ROOT / name).read_text(encoding="utf-8")):
            bad.append(f"{name}:{line}: {spelling}")
    assert not bad, "import Keras as `from tirec.compat import keras`, not:\n" + "\n".join(bad)


def test_compat_keras_is_tf_keras_and_tf_keras_agrees():
    import tensorflow as tf
    import tf_keras

    from tirec.compat import keras

    assert keras is tf_keras
    assert tf.keras.layers.Layer is keras.layers.Layer  # TensorFlow Recommenders sees the same Keras


def test_another_keras_behind_tf_keras_is_an_import_error(monkeypatch):
    from tirec.compat import check_same_keras

    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "0")
    keras3 = types.SimpleNamespace(__version__="3.12.0", layers=types.SimpleNamespace(Layer=object))
    with pytest.raises(ImportError, match=r"tf.keras is Keras 3.12.0 \(TF_USE_LEGACY_KERAS='0'\)"):
        check_same_keras(keras3)
    with pytest.raises(ImportError, match="TF_USE_LEGACY_KERAS=1"):
        check_same_keras(types.SimpleNamespace())
