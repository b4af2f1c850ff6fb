"""setup.py says only true things: the files it packages exist, and the models its description
names are registered."""
import ast
import importlib
import os
import pathlib
import re

from tirec.models import registry

ROOT = pathlib.Path(__file__).resolve().parents[2]
SETUP = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))


def _literal(name: str):
    """A literal assigned at the top of setup.py or passed to setup(name=...)."""
    for node in ast.walk(SETUP):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == name:
            return ast.literal_eval(node.value)
        if isinstance(node, ast.keyword) and node.arg == name:
            return ast.literal_eval(node.value)
    raise KeyError(name)


def test_every_package_data_file_exists():
    package_dir = _literal("_FOLDERS")
    missing = [f"{package_dir[pkg]}/{pattern}" for pkg, patterns in _literal("package_data").items()
               for pattern in patterns if not list((ROOT / package_dir[pkg]).glob(pattern))]
    assert not missing, f"setup.py package_data names files that do not exist: {missing}"


def test_description_names_only_registered_models():
    description = _literal("description")
    known = {"DIN": "din", "DAIAN": "daian", "GAP-Net": "gapnet", "DIEN": "dien", "DIHN": "dihn",
             "DIAN": "dian", "DEI2N": "dei2n", "POSO": "poso", "MWUF": "mwuf", "TIN": "tin", "QIN": "qin"}
    named = {word for word in known if re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", description)}
    assert named, f"no model named in {description!r}"
    unregistered = sorted(w for w in named if known[w] not in registry.model_names())
    assert not unregistered, f"setup.py's description names unregistered models {unregistered}"


def test_a_wheel_holds_every_package_of_the_code_folders():
    """`pip install .` (the trainer and Beam images) installs only the packages setup() lists: every
    folder with an __init__.py under a code folder must be one (a missing models/layers/ once
    made `import tirec.models` fail outside an editable install), at the folder it comes from."""
    importlib.import_module("setuptools")  # first: then distutils is setuptools' own, as in pip's build
    from distutils.core import run_setup

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        dist = run_setup("setup.py", stop_after="init")
    finally:
        os.chdir(cwd)
    want = {}
    for name, folder in _literal("_FOLDERS").items():
        for init in sorted((ROOT / folder).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / folder)
            want[".".join((name,) + rel.parts)] = init.parent
    listed = {pkg: ROOT / dist.package_dir[pkg] for pkg in dist.packages}
    assert "tirec.models.layers" in want
    assert listed == want, {"missing": sorted(set(want) - set(listed)), "extra": sorted(set(listed) - set(want))}
