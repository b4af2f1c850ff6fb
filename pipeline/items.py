"""The item table broadcast to every Beam worker: side fields, popularity and multimodal vectors.

Item side info and embeddings are dimension tables: they are validated once by the launcher (bad
rows dead-lettered), joined, and saved as one ``items.npz`` artifact that each worker loads in
``DoFn.setup``. Lookups are vectorised (``np.searchsorted`` over sorted ids). The table must fit
in one worker's memory, as a Beam side input would; 10M items x 64 floats is about 2.6 GB.
"""
from __future__ import annotations

import dataclasses
import io

import numpy as np


@dataclasses.dataclass
class ItemTable:
    """Items sorted by id, with side fields and L2-normalised vectors aligned to ``ids``.

    Args:
      ids: int64 ``[N]``, sorted and unique.
      fields: side fields (e.g. ``cate_id``), each int64 ``[N]``.
      vectors: float32 ``[N, d]``; a zero row means "no vector" (similarity 0).
      popularity: float64 ``[N]`` interaction counts (used by negative samplers).
    """

    ids: np.ndarray
    fields: dict[str, np.ndarray]
    vectors: np.ndarray
    popularity: np.ndarray

    def __post_init__(self):
        self.ids = np.asarray(self.ids, dtype=np.int64)
        if self.ids.size > 1 and np.any(np.diff(self.ids) <= 0):
            raise ValueError("ItemTable.ids must be sorted and unique")
        n = self.ids.shape[0]
        for name, col in self.fields.items():
            if np.asarray(col).shape != (n,):
                raise ValueError(f"ItemTable field {name!r}: shape {np.asarray(col).shape} != ({n},)")
        if self.vectors.shape[0] != n:
            raise ValueError(f"ItemTable.vectors has {self.vectors.shape[0]} rows for {n} ids")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(self.fields)

    def index(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each id and whether it is known (unknown ids get row 0 and False)."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        if self.ids.size == 0:
            return np.zeros(item_ids.shape, dtype=np.int64), np.zeros(item_ids.shape, dtype=bool)
        pos = np.searchsorted(self.ids, item_ids)
        pos = np.minimum(pos, self.ids.size - 1)
        found = self.ids[pos] == item_ids
        return np.where(found, pos, 0), found

    def save(self, path: str) -> None:
        buf = io.BytesIO()
        arrays = {"ids": self.ids, "vectors": self.vectors, "popularity": self.popularity}
        arrays.update({f"field__{k}": v for k, v in self.fields.items()})
        np.savez(buf, **arrays)
        _write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str) -> "ItemTable":
        with np.load(io.BytesIO(_read_bytes(path))) as z:
            fields = {k[len("field__"):]: z[k] for k in z.files if k.startswith("field__")}
            return cls(ids=z["ids"], fields=fields, vectors=z["vectors"], popularity=z["popularity"])


def _write_bytes(path: str, data: bytes) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as fh:
        fh.write(data)


def _read_bytes(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as fh:
        return fh.read()
