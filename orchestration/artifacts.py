"""Artifacts: typed output folders with an ``artifact.json`` each, and their fingerprints.

An execution's cache key is its component, parameters and inputs' fingerprints
(``cache_key``), so an unchanged rerun finds the same key and reuses the folder; an output's
fingerprint is that key, the output's name and the execution that wrote it, so a component run
again (``--force``) gives new fingerprints and what reads its outputs runs again too. External data (raw logs) is fingerprinted by its files' names,
sizes and modification times.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from tirec.features.jsonio import read_json, write_json

ARTIFACT_FILE = "artifact.json"


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One artifact: its type, folder, fingerprint and span; ``id`` is its metadata row."""

    type: str
    uri: str
    fingerprint: str
    span: int
    id: int = 0


def digest(value) -> str:
    """A short stable hash of a JSON-serialisable value."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_key(component: str, parameters: dict, inputs: dict[str, str]) -> str:
    """The key of an execution: the component, its parameters and its inputs' fingerprints."""
    return digest({"component": component, "parameters": parameters, "inputs": inputs})


def files_fingerprint(paths: list[str], root: str) -> str:
    """The fingerprint of external files: relative names, sizes and modification times."""
    entries = []
    for path in sorted(paths):
        st = os.stat(path)
        entries.append((os.path.relpath(path, root), st.st_size, st.st_mtime_ns))
    return digest(entries)


def write_artifact(artifact: Artifact, producer: str, parameters: dict, inputs: dict[str, str],
                   created: str) -> None:
    """Writes ``artifact.json`` into the artifact's folder."""
    write_json(os.path.join(artifact.uri, ARTIFACT_FILE),
               {"type": artifact.type, "uri": artifact.uri, "producer": producer, "parameters": parameters,
                "inputs": inputs, "fingerprint": artifact.fingerprint, "created": created, "span": artifact.span},
               sort_keys=True)


def is_complete(uri: str) -> bool:
    """Whether ``uri`` holds a written artifact (its ``artifact.json``)."""
    return os.path.exists(os.path.join(uri, ARTIFACT_FILE))


def read_artifact(uri: str) -> dict:
    return read_json(os.path.join(uri, ARTIFACT_FILE))
