"""Loads a script of ``benchmarks/`` (not a package) by its path, for the tests of that script."""
import importlib.util
import pathlib
import sys

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    """The module ``benchmarks/<name>.py``, executed fresh under the name ``<name>_under_test``
    (registered in ``sys.modules``: a script's dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
