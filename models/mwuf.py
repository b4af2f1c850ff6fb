"""MWUF (Zhu et al., SIGIR 2021), the Meta Warm-Up Framework, on DIN (docs/models.md#mwuf).

The id embeddings of the target and (``model.mwuf.warm_trigger``) the trigger are warmed up
before DIN reads them (:meth:`tirec.models.din.DIN.tower_input`):

    e_warm = τ_s ⊙ e_id + τ_h
    τ_s = γ · σ(MLP_s(e_side))          Meta Scaling Net, on the item's side-field embeddings
    τ_h = MLP_h(ū_item)                 Meta Shifting Net, on the mean user-id embedding of the
                                        item's recent users

Both nets start as the identity (zero output layers: τ_s = γ/2 = 1, τ_h = 0). ū_item comes
from :class:`RecentUsers`, a non-trainable per-item-bucket running mean **[X]**: the records do
not carry an item's recent users, so the model keeps them itself, from earlier training
batches only (updated after a step's forward pass, frozen outside training, saved and exported
with the weights). Training alternates the two updates in every step **[X]**: the base model and
the embeddings on L_CTR with the original embeddings, the meta nets on L_CTR with e_warm (base
frozen), both gradients taken at the step's weights and applied together. Inference uses
e_warm. Outputs ``{"ctr": [B, 1]}``, float32 under mixed precision too.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from tirec.features.config_io import Checks
from tirec.compat import keras
from tirec.features.spec import FeatureSpec
from tirec.models.base import USER_ID, item_columns
from tirec.models.config import ModelConfig
from tirec.models.din import DIN
from tirec.models.layers import GateNU
from tirec.models.layers.sequence import unique_rows
from tirec.models.registry import register_model
from tirec.models.tasks import CTR, replica_objective

RECENT_FROM = ("impressions", "clicks")


@dataclasses.dataclass(frozen=True)
class MwufConfig:
    """MWUF's own settings, the ``model.mwuf`` config section (docs/models.md#mwuf). The tower,
    DIN attention and embedding sizes are the common ``model`` section's.

    Args:
      warm_trigger: warm up the trigger's id embedding too (the target's always is).
      scale_gamma: the bound of the Meta Scaling Net, τ_s ∈ (0, scale_gamma) (2: centred at 1).
      meta_hidden: hidden (ReLU) widths of each meta net (may be empty).
      recent_users: K: an item bucket's mean is the exact mean of its first K users, then a
        running mean with weight 1/K per new user (a window of about K users).
      recent_from: which training rows make a user "recent" for the target item: every
        impression (default, label-free) or only the clicks (label 1) of earlier batches. A
        request's trigger always counts (it is the user's own earlier click).
    """

    warm_trigger: bool = True
    scale_gamma: float = 2.0
    meta_hidden: tuple[int, ...] = (16,)
    recent_users: int = 20
    recent_from: str = "impressions"

    def __post_init__(self) -> None:
        check = Checks("model.mwuf", self)
        check.flags("warm_trigger")
        check.finite("scale_gamma", above=0)
        check.widths("meta_hidden", empty="no hidden layer")
        check.counts("recent_users")
        check.one_of("recent_from", RECENT_FROM)


@keras.utils.register_keras_serializable(package="tirec")
class RecentUsers(keras.layers.Layer):
    """Per item bucket, the running mean of the embeddings of its recent users, and their count
    (at most K): non-trainable state that only :meth:`update` changes (docs/models.md#mwuf).

    A batch's distinct (bucket, user) pairs, k of them for a bucket with count n and mean m
    (the users' mean ū), give ``n' = min(n + k, K)`` and ``m' = m + min(1, k / n') (ū - m)``:
    the exact mean of the first K users, then a window of about K. Under a distribution
    strategy every replica gathers the global batch's pairs and applies the same update, so
    the state equals the single-device one.

    Args:
      buckets: rows (the item table's bucket count: an item's row is its embedding row).
      dim: width of a user embedding.
      capacity: K.
    """

    def __init__(self, buckets: int, dim: int, capacity: int = 20, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.buckets, self.dim, self.capacity = int(buckets), int(dim), int(capacity)

    def build(self, input_shape=None):
        state = {"initializer": "zeros", "trainable": False,
                 "synchronization": tf.VariableSynchronization.ON_WRITE,
                 "aggregation": tf.VariableAggregation.ONLY_FIRST_REPLICA}
        self.mean = self.add_weight(name="mean", shape=[self.buckets, self.dim], **state)
        self.count = self.add_weight(name="count", shape=[self.buckets], **state)
        super().build(input_shape)

    def call(self, rows):
        """The mean user embedding of each item row (zeros for a row no user reached)."""
        return tf.gather(self.mean, rows)

    def update(self, rows, user_ids, users, weights) -> None:
        """Adds the pairs (``rows[j]``, user ``user_ids[j]`` embedded ``users[j]``) whose
        ``weights[j]`` is 1; a pair repeated in the global batch counts once."""
        keep = weights > 0
        rows, user_ids = tf.boolean_mask(rows, keep), tf.boolean_mask(user_ids, keep)
        users = tf.cast(tf.boolean_mask(users, keep), tf.float32)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            rows, user_ids, users = ctx.all_gather([rows, user_ids, users], axis=0)
        first, _ = unique_rows([rows, tf.cast(user_ids, tf.int64)])
        rows, users = tf.gather(rows, first), tf.gather(users, first)
        keys, slot = tf.unique(rows)
        k = tf.math.unsorted_segment_sum(tf.ones_like(rows, tf.float32), slot, tf.size(keys))
        mean_new = tf.math.unsorted_segment_sum(users, slot, tf.size(keys)) / k[:, None]
        n = tf.minimum(tf.gather(self.count, keys) + k, float(self.capacity))
        m = tf.gather(self.mean, keys)
        rate = tf.minimum(1.0, k / tf.maximum(n, 1.0))[:, None]
        self.mean.scatter_update(tf.IndexedSlices(m + rate * (mean_new - m), keys))
        self.count.scatter_update(tf.IndexedSlices(n, keys))

    def get_config(self):
        return {**super().get_config(), "buckets": self.buckets, "dim": self.dim, "capacity": self.capacity}


@keras.utils.register_keras_serializable(package="tirec")
class MetaShift(keras.layers.Layer):
    """The Meta Shifting Net: ReLU hidden layers, then a linear output of ``dim`` that starts
    at zero (zero kernel and bias), so that τ_h = 0 before training."""

    def __init__(self, hidden_units, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units, self.dim = tuple(hidden_units), int(dim)
        self.hidden_layers = [keras.layers.Dense(u, activation="relu", name=f"hidden_{i}")
                              for i, u in enumerate(self.hidden_units)]
        self.output_layer = keras.layers.Dense(self.dim, kernel_initializer="zeros", name="shift")

    def call(self, inputs):
        x = inputs
        for layer in self.hidden_layers:
            x = layer(x)
        return self.output_layer(x)

    def get_config(self):
        return {**super().get_config(), "hidden_units": list(self.hidden_units), "dim": self.dim}


@keras.utils.register_keras_serializable(package="tirec")
class MWUF(DIN):
    """DIN whose target (and trigger) id embeddings are warmed up by MWUF's meta nets.

    Inputs: the raw feature dict of a batch (see ``tirec.models.base.model_input_names``).
    Outputs: ``{"ctr": [B, 1]}`` click probability.
    """

    reads_din_section = False  # model.din.* switches are DIN's alone

    def __init__(self, spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int,
                 **kwargs):
        super().__init__(spec, model_config, num_items, item_dim, **kwargs)
        m, d = model_config.section("mwuf"), model_config.emb_dim
        self.mwuf_config = m
        if self.embed.item_dim == d:
            raise ValueError("MWUF: the Meta Scaling Net reads the item side fields (category, brand, ...), "
                             "and the records' items have none besides the id")
        table_of = {f.name: f.table for f in spec.features}
        self._target_id, self._trigger_id = item_columns(spec, "target")[0], item_columns(spec, "trigger")[0]
        self._item_table, self._user_table = table_of[self._target_id], table_of[USER_ID]
        self.scaling = GateNU(m.meta_hidden, d, gamma=m.scale_gamma, output_kernel_initializer="zeros",
                              name="meta_scaling")
        self.shifting = MetaShift(m.meta_hidden, d, name="meta_shifting")
        self.recent = RecentUsers(spec.table(self._item_table).num_buckets, d, m.recent_users,
                                  name="recent_users")

    def meta_variables(self) -> list:
        """The meta nets' variables: the ones the warm-embedding loss trains."""
        return list(self.scaling.trainable_variables) + list(self.shifting.trainable_variables)

    def warm(self, item, ids):
        """``[τ_s ⊙ e_id + τ_h ‖ e_side]`` of embedded items ``item`` ``[N, D]`` with raw ids
        ``ids`` ``[N]``."""
        d = self.model_config.emb_dim
        e_id, side = item[:, :d], item[:, d:]
        mean = self.recent(self.embed.tables[self._item_table].bucket(ids))
        e_warm = self.scaling(side) * e_id + self.shifting(tf.cast(mean, e_id.dtype))
        return tf.concat([e_warm, side], axis=-1)

    def forward(self, inputs, training=False, warm=True):
        """DIN's prediction, on e_warm (``warm=True``, inference) or on the original id
        embeddings (``warm=False``: the base model's training loss)."""
        rows, expand = self.request_rows(inputs)
        r = self.embed.request(rows)  # once per distinct request (model.request_dedup)
        e = self.embed.impression(inputs)
        if warm:
            e = {**e, "target": self.warm(e["target"], inputs[self._target_id])}
            if self.mwuf_config.warm_trigger:
                r = {**r, "trigger": self.warm(r["trigger"], rows[self._trigger_id])}
        logit = self.tower(self.tower_input(r, e, expand, training), training=training)
        return {"ctr": tf.sigmoid(tf.cast(logit, tf.float32))}  # float32 under mixed precision too

    def train_step(self, data):
        """Both MWUF updates from the step's weights: base and embeddings on L_CTR with the
        original embeddings, the meta nets on L_CTR with e_warm; then the recent users."""
        x, y = data
        stage = self.stage
        with tf.GradientTape(persistent=True) as tape:
            cold = self(x, training=True, warm=False)
            outputs = self(x, training=True)
            variables = self.trained_variables(stage)  # after the forward pass has built them
            meta_ids = {id(v) for v in self.meta_variables()}
            base = [v for v in variables if id(v) not in meta_ids]
            meta = [v for v in variables if id(v) in meta_ids]
            base_loss = self.stage_loss(stage, {CTR: self.tasks[CTR](y["ctr"], cold["ctr"], compute_metrics=False)})
            loss = self.stage_loss(stage, self.task_losses(y, outputs))  # the metrics follow e_warm
            base_reg, meta_reg = self.regularization_loss(base), self.regularization_loss(meta)
            base_objective = replica_objective(base_loss, base_reg)
            meta_objective = replica_objective(loss, meta_reg)
        grads = dict(zip([id(v) for v in base], tape.gradient(base_objective, base)))
        grads.update(zip([id(v) for v in meta], tape.gradient(meta_objective, meta)))
        del tape
        self.update_recent_users(x, y)  # with the user embeddings the step read
        self._apply_gradients(stage, [grads[id(v)] for v in variables])
        return self._update_metrics(loss, self.regularization_loss(variables))

    def update_recent_users(self, x, y) -> None:
        """Adds the batch's users to the recent users of its target items (every row, or the
        clicked ones with ``recent_from=clicks``) and of its triggers (rows with one)."""
        users = self.embed.tables[self._user_table](x[USER_ID])
        if self.mwuf_config.recent_from == "clicks":
            on_target = tf.reshape(tf.cast(y["ctr"], tf.float32), [-1])
        else:
            on_target = tf.ones_like(users[:, 0], tf.float32)
        on_trigger = tf.reshape(tf.cast(x["has_trigger"], tf.float32), [-1])
        bucket = self.embed.tables[self._item_table].bucket
        rows = tf.concat([bucket(x[self._target_id]), bucket(x[self._trigger_id])], axis=0)
        self.recent.update(rows, tf.concat([x[USER_ID], x[USER_ID]], axis=0),
                           tf.concat([users, users], axis=0), tf.concat([on_target, on_trigger], axis=0))


@register_model("mwuf", MwufConfig,
                description="MWUF (SIGIR 2021) on DIN: meta scaling/shifting nets warm up target and trigger ids")
def build_mwuf(spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int) -> MWUF:
    return MWUF(spec, model_config, num_items, item_dim, name="mwuf")
