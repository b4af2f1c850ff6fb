"""JSON files: the one reader and writer of the project's ``*.json`` outputs and inputs.

Every package writes its small JSON files (``stats.json``, ``config.json``, ``metrics.json``,
``best.json``, ``meta.json``, a request) through :func:`write_json` and reads them through
:func:`read_json`, so they agree on the encoding (UTF-8, numpy scalars and arrays as plain
numbers and lists) and on atomicity: a local file is written to a temporary name next to it and
renamed into place, so a reader (or a run killed mid-write) sees the old file or the new one,
never half of one. A remote path (``gs://``, ``s3://``, ``hdfs://``) goes through the filesystem
layer registered with :func:`use_filesystem` (the pipeline registers Beam's ``FileSystems``, which
it writes its records with, so every store the job can write to works here too), else through
TensorFlow's ``tf.io.gfile``, imported only then. Object stores publish an object whole when it
is closed. This module sits in ``features/``, the bottom layer, so every package may import it.
"""
from __future__ import annotations

import json
import os
import uuid
from typing import Any

import numpy as np


def is_remote(path: str) -> bool:
    """True for a URI (``gs://...``, ``s3://...``): a path for a filesystem layer, not ``open``."""
    return "://" in str(path)


_REMOTE = None  # the registered remote filesystem layer (use_filesystem), else tf.io.gfile


def use_filesystem(filesystems) -> None:
    """Sends remote paths through ``filesystems``: an object with Beam ``FileSystems``' ``exists``,
    ``open`` and ``create`` (binary streams). The Beam pipeline registers Beam's own, so this
    bottom layer need not import Beam."""
    global _REMOTE
    _REMOTE = filesystems


def _beam_filesystems():
    """The registered remote filesystem layer, or None (then ``tf.io.gfile``)."""
    return _REMOTE


def exists(path: str) -> bool:
    """True when the local or remote file or folder ``path`` exists."""
    if not is_remote(path):
        return os.path.exists(path)
    fs = _beam_filesystems()
    if fs is not None:
        return fs.exists(path)
    import tensorflow as tf

    return tf.io.gfile.exists(path)


def read_text(path: str) -> str:
    """The UTF-8 text of a local or remote file."""
    if not is_remote(path):
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    fs = _beam_filesystems()
    if fs is not None:
        with fs.open(path) as fh:
            return fh.read().decode("utf-8")
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "r") as fh:
        return fh.read()


def _write_remote(path: str, text: str) -> None:
    fs = _beam_filesystems()
    if fs is not None:
        with fs.create(path) as fh:
            fh.write(text.encode("utf-8"))
        return
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as fh:
        fh.write(text)


def write_text(path: str, text: str) -> None:
    """Writes ``text`` as UTF-8, atomically for a local file (temporary file, then rename)."""
    path = str(path)
    if is_remote(path):
        _write_remote(path, text)
        return
    # A unique name in the same folder (os.replace is atomic within a file system), created
    # with the usual permissions (the umask's, as a plain open() would give).
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def dumps(obj: Any, indent: int | None = 2, sort_keys: bool = False) -> str:
    """``obj`` as JSON text; numpy scalars and arrays become numbers and lists, and any other
    value JSON cannot hold its ``str()`` (as the run records always wrote paths and names)."""
    return json.dumps(obj, indent=indent, sort_keys=sort_keys, default=_default)


def write_json(path: str, obj: Any, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Writes ``obj`` as a JSON file (see :func:`dumps`), atomically when local, ending in a
    newline."""
    write_text(path, dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def read_json(path: str) -> Any:
    """The JSON value in a local or remote file.

    Raises:
      ValueError: naming the file when it is not valid JSON.
    """
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def _default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
