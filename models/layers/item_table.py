"""FrozenItemTable: a non-trainable id -> vector lookup baked into the model (no hash table)."""
from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from tirec.compat import keras

# Fills the id slots of a table whose contents were never set, so that no real id matches.
_UNSET_ID = np.iinfo(np.int64).max


def _check_table(ids, vectors) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids)
    vectors = np.asarray(vectors)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"FrozenItemTable: `ids` must be a 1-D integer array. "
                         f"Received: ids with shape {ids.shape} and dtype {ids.dtype}")
    if vectors.ndim != 2 or vectors.shape[0] != ids.shape[0]:
        raise ValueError(f"FrozenItemTable: `vectors` must be a [len(ids), dim] array. "
                         f"Received: vectors with shape {vectors.shape} for {ids.shape[0]} ids")
    if vectors.size and not np.issubdtype(vectors.dtype, np.number):
        raise ValueError(f"FrozenItemTable: `vectors` must be numeric. Received dtype {vectors.dtype}")
    ids = ids.astype(np.int64)
    order = np.argsort(ids, kind="stable")
    ids, vectors = ids[order], vectors[order].astype(np.float32)
    dup = np.unique(ids[1:][ids[1:] == ids[:-1]])
    if dup.size:
        raise ValueError(f"FrozenItemTable: `ids` must be unique. Received duplicates {dup[:10].tolist()}")
    return ids, vectors


@keras.utils.register_keras_serializable(package="tirec")
class FrozenItemTable(keras.layers.Layer):
    """A frozen ``item id -> vector`` table, e.g. the multimodal item vectors ``m``.

    See docs/models.md#similarity-levels.

    The ids (int64 ``[N]``, kept sorted) and vectors (float32 ``[N, d]``) are non-trainable
    variables, so they are saved with the SavedModel and restored by loading weights; lookup is a
    binary search (``tf.searchsorted``), so no hash-table resource is needed. Ids not in the
    table give a zero vector and ``found=False``. The config holds only ``num_items`` and
    ``dim``; :meth:`set_table` (or loading weights) fills the contents. Until then no id is found.

    Example:
      >>> table = FrozenItemTable(ids=np.array([3, 7]), vectors=np.eye(2, dtype=np.float32))
      >>> vec, found = table(tf.constant([[7, 5]], tf.int64))
      >>> vec.numpy().tolist(), found.numpy().tolist()
      ([[[0.0, 1.0], [0.0, 0.0]]], [[True, False]])

    Args:
      ids: optional int ``[N]`` item ids (any order; sorted on load; must be unique).
      vectors: optional float ``[N, d]`` vectors, row ``k`` belonging to ``ids[k]``.
      num_items: ``N``, needed when ``ids`` is not given (may be 0).
      dim: ``d``, needed when ``vectors`` is not given.
      **kwargs: base ``Layer`` arguments (``trainable`` defaults to False).

    Input shape:
      Integer item ids of any shape ``[...]``.

    Output shape:
      ``(vectors [..., d] float32, found [...] bool)``.
    """

    def __init__(self, ids=None, vectors=None, num_items: int | None = None, dim: int | None = None,
                 **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if (ids is None) != (vectors is None):
            missing = "vectors" if vectors is None else "ids"
            raise ValueError(f"FrozenItemTable: `ids` and `vectors` go together. Received: {missing}=None")
        if ids is not None:
            ids, vectors = _check_table(ids, vectors)
            if num_items is not None and num_items != ids.shape[0]:
                raise ValueError(f"FrozenItemTable: `num_items` disagrees with len(ids)={ids.shape[0]}. "
                                 f"Received: num_items={num_items!r}")
            if dim is not None and dim != vectors.shape[1]:
                raise ValueError(f"FrozenItemTable: `dim` disagrees with vectors.shape[1]={vectors.shape[1]}. "
                                 f"Received: dim={dim!r}")
            num_items, dim = ids.shape[0], vectors.shape[1]
        if isinstance(num_items, bool) or not isinstance(num_items, numbers.Integral) or num_items < 0:
            raise ValueError(f"FrozenItemTable: `num_items` must be a non-negative integer. "
                             f"Received: num_items={num_items!r}")
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise ValueError(f"FrozenItemTable: `dim` must be a positive integer. Received: dim={dim!r}")
        self.num_items, self.dim = int(num_items), int(dim)
        self.item_ids = self.add_weight(
            name="ids", shape=[self.num_items], dtype=tf.int64, trainable=False,
            initializer=keras.initializers.Constant(_UNSET_ID))
        self.item_vectors = self.add_weight(
            name="vectors", shape=[self.num_items, self.dim], dtype=tf.float32, trainable=False,
            initializer="zeros")
        if ids is not None:
            self.set_table(ids, vectors)

    def set_table(self, ids, vectors) -> None:
        """Loads the table contents.

        Args:
          ids: int ``[num_items]`` unique item ids, any order.
          vectors: float ``[num_items, dim]``, row ``k`` for ``ids[k]``.

        Raises:
          ValueError: on a shape that disagrees with ``num_items``/``dim`` or duplicate ids.
        """
        ids, vectors = _check_table(ids, vectors)
        if vectors.shape != (self.num_items, self.dim):
            raise ValueError(f"FrozenItemTable {self.name!r}: `vectors` must have shape "
                             f"{(self.num_items, self.dim)}. Received: vectors with shape {vectors.shape}")
        self.item_ids.assign(ids)
        self.item_vectors.assign(vectors)

    def call(self, inputs):
        ids = tf.convert_to_tensor(inputs)
        if not ids.dtype.is_integer:
            raise TypeError(f"FrozenItemTable {self.name!r}: ids must be integers; "
                            f"received dtype {ids.dtype.name}")
        ids = tf.cast(ids, tf.int64)
        out_shape = tf.concat([tf.shape(ids), [self.dim]], axis=0)
        if self.num_items == 0:
            return tf.zeros(out_shape, tf.float32), tf.zeros(tf.shape(ids), tf.bool)
        flat = tf.reshape(ids, [-1])
        table_ids = tf.convert_to_tensor(self.item_ids)
        pos = tf.minimum(tf.searchsorted(table_ids, flat, side="left", out_type=tf.int64),
                         self.num_items - 1)
        found = tf.equal(tf.gather(table_ids, pos), flat)
        vectors = tf.nn.embedding_lookup(self.item_vectors, pos)
        vectors = tf.where(found[:, None], vectors, tf.zeros([], vectors.dtype))
        return tf.reshape(vectors, out_shape), tf.reshape(found, tf.shape(ids))

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "num_items": self.num_items, "dim": self.dim}
