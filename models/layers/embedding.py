"""HashedEmbedding: raw int64 ids -> FarmHash bucket -> row of a (row-sharded) embedding table."""
from __future__ import annotations

import tensorflow as tf

from tirec.compat import keras
from tirec.features.spec import TableSpec
from tirec.models.layers._common import check_positive_int, fresh_initializer

HASHINGS = ("fingerprint", "mod")


def shard_sizes(num_buckets: int, shards: int) -> list[int]:
    """Rows per shard in the contiguous ("div") split used by ``tf.nn.embedding_lookup``.

    The first ``num_buckets % shards`` shards hold one extra row: 10 rows over 3 shards are
    ``[4, 3, 3]`` (rows 0-3, 4-6, 7-9). ``tf.distribute`` ShardedVariables split the same way.
    """
    base, extra = divmod(num_buckets, shards)
    return [base + (1 if k < extra else 0) for k in range(shards)]


def _under_parameter_server_strategy() -> bool:
    return isinstance(tf.distribute.get_strategy(), tf.distribute.experimental.ParameterServerStrategy)


def _multi_replica() -> bool:
    """Whether gradients are all-reduced over several replicas (not under ParameterServerStrategy)."""
    if not tf.distribute.has_strategy() or _under_parameter_server_strategy():
        return False
    return tf.distribute.get_strategy().num_replicas_in_sync > 1


def _touch_every_variable(params, dtype) -> tf.Tensor:
    """An exact zero that reads row 0 of every shard, so no shard's gradient is empty.

    Under MirroredStrategy / MultiWorkerMirroredStrategy the CollectiveAllReduce of an
    IndexedSlices gradient that has no rows on any replica crashes the process (TF 2.21, a
    segmentation fault in the all-gather). A shard no id of the global batch hashes to gets such a
    gradient; with this term it gets row 0 with a zero value instead, which leaves Adagrad, SGD
    and Adam updates unchanged.
    """
    rows = [tf.reduce_sum(tf.gather(p, [0])) for p in params]
    return tf.cast(tf.add_n(rows), dtype) * tf.zeros([], dtype)


@keras.utils.register_keras_serializable(package="tirec")
class HashedEmbedding(keras.layers.Layer):
    """Embedding of raw integer ids through a hash into ``num_buckets`` rows.

    ``bucket(id) = FarmHash64(id) mod num_buckets``: the id's 8 little-endian bytes are
    fingerprinted with ``tf.fingerprint`` and the 64-bit fingerprint is reduced modulo the bucket
    count. ``hashing="mod"`` uses ``floormod(id, num_buckets)`` instead (readable buckets for
    tests and debugging). The table is a ``TableSpec`` of the FeatureSpec; ids stay raw in the
    records and are hashed here, inside the graph, so serving needs no vocabulary.

    Rows are split into ``shards`` variables with the contiguous "div" split of
    ``tf.nn.embedding_lookup`` (see :func:`shard_sizes`), so the gradient of each shard is a
    ``tf.IndexedSlices`` holding only the looked-up rows. Built under a
    ``tf.distribute.experimental.ParameterServerStrategy`` scope, the layer creates ONE
    ``[num_buckets, dim]`` variable instead, which the strategy's ``variable_partitioner`` turns
    into a ShardedVariable spread over the parameter servers. Under a strategy with several
    replicas, every shard also reads its row 0 times an exact zero, so that no shard ever has an
    empty gradient (an empty IndexedSlices all-reduce crashes CollectiveAllReduce in TF 2.21).

    Example:
      >>> table = HashedEmbedding(num_buckets=1000, dim=8, shards=2)
      >>> table(tf.constant([[3, 17, 0]], tf.int64)).shape
      TensorShape([1, 3, 8])

    Args:
      num_buckets: rows of the table (hash buckets).
      dim: embedding width.
      shards: number of row-shard variables (1 <= shards <= num_buckets).
      hashing: ``"fingerprint"`` (FarmHash64, default) or ``"mod"``.
      embeddings_initializer: initializer of the rows.
      **kwargs: base ``Layer`` arguments (``name``...).

    Input shape:
      Integer ids (int32 or int64) of any shape ``[...]``.

    Output shape:
      ``[..., dim]``.
    """

    def __init__(self, num_buckets: int, dim: int, shards: int = 1, hashing: str = "fingerprint",
                 embeddings_initializer="uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_buckets = check_positive_int("HashedEmbedding", "num_buckets", num_buckets)
        self.dim = check_positive_int("HashedEmbedding", "dim", dim)
        self.shards = check_positive_int("HashedEmbedding", "shards", shards)
        if self.shards > self.num_buckets:
            raise ValueError(f"HashedEmbedding: `shards` must not exceed num_buckets={self.num_buckets}. "
                             f"Received: shards={shards!r}")
        if hashing not in HASHINGS:
            raise ValueError(f"HashedEmbedding: `hashing` must be one of {HASHINGS}. "
                             f"Received: hashing={hashing!r}")
        self.hashing = hashing
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    @classmethod
    def from_table_spec(cls, table: TableSpec, dim: int, shards: int = 1, **kwargs) -> "HashedEmbedding":
        """Builds the layer of a :class:`~tirec.features.spec.TableSpec`.

        Args:
          table: the table spec (``num_buckets``; ``name`` becomes the layer name unless
            ``name`` is passed).
          dim: embedding width (a model choice, e.g. ``model.emb_dim``).
          shards: row shards (e.g. ``model.table_shards``), at most ``num_buckets``.
          **kwargs: further constructor arguments (``hashing``, ``embeddings_initializer``...).
        """
        if not isinstance(table, TableSpec):
            raise ValueError(f"HashedEmbedding.from_table_spec: `table` must be a TableSpec. "
                             f"Received: table={table!r}")
        kwargs.setdefault("name", table.name)
        return cls(num_buckets=table.num_buckets, dim=dim, shards=shards, **kwargs)

    def build(self, input_shape=None):
        # Under a mixed precision policy the table stays a float32 variable that is not cast as a
        # whole: rows are looked up in float32 and only the output is cast (as keras Embedding).
        if _under_parameter_server_strategy():
            # One logical variable; the strategy's variable_partitioner shards it over the PS tasks.
            self.add_weight(name="embeddings", shape=[self.num_buckets, self.dim],
                            initializer=fresh_initializer(self.embeddings_initializer), trainable=True,
                            experimental_autocast=False)
        else:
            sizes = shard_sizes(self.num_buckets, self.shards)
            names = ["embeddings"] if self.shards == 1 else [f"embeddings_shard_{k}" for k in range(self.shards)]
            for n, rows in zip(names, sizes):
                self.add_weight(name=n, shape=[rows, self.dim],
                                initializer=fresh_initializer(self.embeddings_initializer), trainable=True,
                                experimental_autocast=False)
        super().build(input_shape)

    @property
    def embedding_variables(self) -> list:
        """The row-shard variables in row order.

        Under ParameterServerStrategy these are the parts of the one partitioned variable (Keras
        lists a ShardedVariable by its parts), split the same "div" way.
        """
        return list(self.weights)

    def bucket(self, ids) -> tf.Tensor:
        """The table row of each raw id.

        Args:
          ids: integer ids of any shape.

        Returns:
          int64 rows in ``[0, num_buckets)``, same shape as ``ids``.
        """
        ids = tf.convert_to_tensor(ids)
        if not ids.dtype.is_integer:
            raise TypeError(f"HashedEmbedding {self.name!r}: ids must be integers; received dtype {ids.dtype.name}")
        ids = tf.cast(ids, tf.int64)
        if self.hashing == "mod":
            return tf.math.floormod(ids, tf.constant(self.num_buckets, tf.int64))
        fingerprints = tf.bitcast(tf.fingerprint(tf.reshape(ids, [-1, 1])), tf.uint64)
        rows = tf.math.floormod(fingerprints, tf.constant(self.num_buckets, tf.uint64))
        return tf.reshape(tf.cast(rows, tf.int64), tf.shape(ids))

    def call(self, inputs):
        rows = self.bucket(inputs)
        params = self.weights
        out = tf.nn.embedding_lookup(params[0] if len(params) == 1 else params, rows)
        if _multi_replica():
            out += _touch_every_variable(params, out.dtype)
        if out.dtype != self.compute_dtype:
            out = tf.cast(out, self.compute_dtype)
        return out

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape).concatenate([self.dim])

    def get_config(self):
        return {**super().get_config(), "num_buckets": self.num_buckets, "dim": self.dim,
                "shards": self.shards, "hashing": self.hashing,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer)}
