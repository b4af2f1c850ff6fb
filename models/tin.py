"""TIN (Zhou et al., WWW 2024, arXiv 2308.08487): Temporal Interest Network (docs/models.md#tin).

Target-aware temporal encoding, attention and representation, after the paper and the authors'
code; every choice is a switch of :class:`TinConfig` (the ``model.tin`` config section):

* **Encoding** — ``ẽ_k = e_k + p_{π(k)}``, ``ṽ_t = e_i + p_{π(t)}`` with a learned table P;
  ``π`` is the behaviour's position among the real behaviours, 1 for the most recent, and 0 for
  the target (``encoding=position``, as in the code), or 1 + its log-scale time-gap bucket
  (``encoding=time``, docs/models.md#time-gap-buckets).
* **Attention** — ``α_k = softmax_k(ṽ_t · ẽ_k / sqrt(D))`` over the real behaviours.
* **Representation** — ``u = Σ_k α_k (ẽ_k ⊙ ṽ_t)`` (``representation=paper``) or
  ``u = Dense_D(BN(Σ_k α_k ẽ_k))`` with the tower reading ``[u ‖ ṽ_t ‖ u ⊙ ṽ_t]``
  (``representation=code``). With ``scale_by_count`` [X] the read ``Σ_k α_k ẽ_k`` is multiplied
  by the number of real behaviours.
* **Prediction** — ``σ(Tower([E_u ‖ E_c ‖ e_i ‖ e_t ‖ u]))`` (paper) or
  ``σ(Tower([E_u ‖ E_c ‖ u ‖ ṽ_t ‖ u ⊙ ṽ_t ‖ e_t]))`` (code); ``e_t`` only with ``use_trigger``.

The history's encoding runs once per distinct request with ``model.request_dedup``; the
attention per candidate. A row without a real behaviour reads exact zeros. Outputs
``{"ctr": [B, 1]}``, float32 under mixed precision too.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import tensorflow as tf

from tirec.features.config_io import Checks
from tirec.compat import keras
from tirec.features.spec import FeatureSpec
from tirec.models.base import (FeatureEmbedder, TirModel, check_time_settings, ctr_tower, history_gap_buckets,
                               request_time)
from tirec.models.config import ModelConfig, warn_unread_settings
from tirec.models.registry import register_model

log = logging.getLogger(__name__)

# The settings ``encoding=position`` leaves unread: the time gaps of ``encoding=time``.
UNREAD_WHEN = (("encoding", "position", ("time_ref", "time_buckets", "time_max_gap_days")),)

ENCODINGS = ("position", "time")
REPRESENTATIONS = ("paper", "code")


@dataclasses.dataclass(frozen=True)
class TinConfig:
    """TIN's own settings, the ``model.tin`` config section (docs/models.md#tin-switches). The
    shared ones (``emb_dim``, ``tower``, ``request_dedup``, ...) are in the common ``model``
    section.

    Args:
      encoding: ``position`` (π = the behaviour's position, the code's) or ``time`` (π = its
        time-gap bucket).
      representation: ``paper`` (``Σ α_k (ẽ_k ⊙ ṽ_t)``) or ``code`` (``Dense(BN(Σ α_k ẽ_k))``
        and the tower input ``[u ‖ ṽ_t ‖ u ⊙ ṽ_t]``).
      use_trigger: the trigger embedding joins the tower input.
      scale_by_count: multiply the attention read by the number of real behaviours (a weighted
        sum instead of a weighted mean), so that the tower sees how much history there is
        (default true, [X]: without it TIN did not learn on MovieLens, docs/models.md#tin).
      time_ref / time_buckets / time_max_gap_days: the time gaps of ``encoding=time`` (as in
        ``model.dei2n``).
    """

    encoding: str = "position"
    representation: str = "paper"
    use_trigger: bool = True
    scale_by_count: bool = True
    time_ref: str = "request"
    time_buckets: int = 20
    time_max_gap_days: float = 14.0

    def __post_init__(self) -> None:
        check = Checks("model.tin", self)
        check.one_of("encoding", ENCODINGS)
        check.one_of("representation", REPRESENTATIONS)
        check.flags("use_trigger", "scale_by_count")
        check_time_settings("tin", self)


def target_aware_pool(query, keys, mask):
    """TIN's target-aware attention (docs/models.md#tin): ``α_k = softmax_k(q · k_k / sqrt(D))``
    over the real positions and ``(Σ_k α_k k_k, α)``.

    Args:
      query: ``[B, D]`` (ṽ_t).
      keys: ``[B, L, D]`` (ẽ).
      mask: bool ``[B, L]``, True at real positions.

    Returns:
      ``([B, D] in the keys' dtype, float32 [B, L])``; a row without a real position gets zero
      weights and a zero output.
    """
    scale = 1.0 / math.sqrt(keys.shape[-1])
    scores = tf.cast(tf.einsum("bd,bld->bl", query, keys), tf.float32) * scale
    scores = tf.where(mask, scores, tf.fill(tf.shape(scores), -1e9))
    weights = tf.where(mask, tf.nn.softmax(scores, axis=-1), tf.zeros([], tf.float32))
    return tf.einsum("bl,bld->bd", tf.cast(weights, keys.dtype), keys), weights


@keras.utils.register_keras_serializable(package="tirec")
class TIN(TirModel):
    """TIN with the trigger in the tower (``model.tin.use_trigger``).

    Inputs: the raw feature dict of a batch (see ``tirec.models.base.model_input_names``).
    Outputs: ``{"ctr": [B, 1]}`` click probability.
    """

    shared_unread = ("din_hidden", "hist_buckets")  # it has no DIN attention unit

    def __init__(self, spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int,
                 **kwargs):
        super().__init__(spec, model_config, num_items, item_dim, **kwargs)
        c, t = model_config, model_config.section("tin")
        self.tin_config = t
        warn_unread_settings(log, "tin", t, UNREAD_WHEN)
        self.embed = FeatureEmbedder(spec.to_json(), c.emb_dim, c.table_shards, name="embed")
        # π: 0 for the target, 1.. for the behaviours (positions 1..L, or 1 + time bucket).
        codes = 1 + (next(iter(spec.histories().values())) if t.encoding == "position" else t.time_buckets)
        self.time_table = keras.layers.Embedding(codes, self.embed.item_dim, name="temporal_embedding")
        if t.representation == "code":
            self.norm = keras.layers.BatchNormalization(name="interest_norm")
            self.projection = keras.layers.Dense(self.embed.item_dim, name="interest_projection")
        self.tower = ctr_tower(c)

    def forward(self, inputs, training=False):
        """The steps of docs/models.md#tin: the encoded history once per distinct request, the
        target-aware attention and the tower per candidate."""
        t = self.tin_config
        extra = [request_time(self.spec)] if t.encoding == "time" and t.time_ref == "request" else []
        rows, expand = self.request_rows(inputs, extra)
        r = self.embed.request(rows)
        e = self.embed.impression(inputs)
        keys = expand(self.encoded_history(rows, r))
        mask = expand(r["mask"])
        target = e["target"]
        query = target + tf.cast(self.time_table(tf.zeros_like(target[:, 0], tf.int32)), target.dtype)
        pooled, _ = target_aware_pool(query, keys, mask)
        if t.scale_by_count:
            pooled *= tf.reduce_sum(tf.cast(mask, pooled.dtype), axis=1, keepdims=True)
        head = [expand(r["user"]), e["context"]]
        trigger = [expand(r["trigger"])] if t.use_trigger else []
        if t.representation == "paper":
            parts = head + [target] + trigger + [pooled * query]
        else:
            u = self.projection(self.norm(pooled, training=training))
            parts = head + [u, query, u * query] + trigger
        logit = self.tower(tf.concat([tf.cast(p, self.layer_dtype) for p in parts], axis=-1), training=training)
        return {"ctr": tf.sigmoid(tf.cast(logit, tf.float32))}  # float32 under mixed precision too

    def temporal_codes(self, rows, mask):
        """int32 ``[U, L]``: π of every behaviour, ``1 + (position among the real behaviours,
        0 = the most recent)`` or ``1 + time-gap bucket`` (padded positions: masked later)."""
        t = self.tin_config
        if t.encoding == "position":
            return tf.cumsum(tf.cast(mask, tf.int32), axis=1) * tf.cast(mask, tf.int32)
        return 1 + history_gap_buckets(self.spec, rows, mask, t.time_ref, t.time_buckets, t.time_max_gap_days)

    def encoded_history(self, rows, r):
        """``[U, L, D]``: ẽ_k = e_k + p_{π(k)}."""
        hist = r["hist"]
        return hist + tf.cast(self.time_table(self.temporal_codes(rows, r["mask"])), hist.dtype)


@register_model("tin", TinConfig,
                description="TIN (WWW 2024): target-aware temporal encoding, attention and representation")
def build_tin(spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int) -> TIN:
    return TIN(spec, model_config, num_items, item_dim, name="tin")
