"""DEI2N (Xiao et al., WSDM 2024, arXiv 2401.07769): instant vs. general interest for TIR
(docs/models.md#dei2n).

Only a review and the authors' code were available; the formulas are tirec's reading of them,
each [X] choice a switch of :class:`Dei2nConfig` (the ``model.dei2n`` config section):

* **Time gaps** — every behaviour's item embedding gets the embedding of its log-scale time-gap
  bucket concatenated, ``k_b = [e_b ‖ Emb_time(bucket(gap_b))]`` (docs/models.md#time-gap-buckets);
  the gap is to the request time (``time_ref=request``) or to the most recent behaviour
  (``time_ref=latest``).
* **Trigger-related sub-sequence** S_t — the behaviours in the trigger's category, or, on records
  without a category field, those whose multimodal similarity to the trigger reaches the spec's
  explicit threshold (``related``; the build logs which).
* **UI2M** — ``(p_inst, p_gen) = softmax(Dense_2(MLP([E_u ‖ E_c ‖ e_t ‖ Σ_{b∈S_t} e_b])))``.
* **Interest** — ``v_inst = MHTA(e_t, MHSA(K_{S_t}))``, ``v_gen = MHTA(e_i, MHSA(K_S))``
  (``self_attention=false``: MHTA on K directly), ``v = p_inst v_inst + p_gen v_gen``
  (``combine=concat``: ``v = [p_inst v_inst ‖ p_gen v_gen]``).
* **Interaction** — ``z_int = MLP([e_t ‖ e_i ‖ e_t ⊙ e_i ‖ e_t − e_i])`` (``interaction_hidden=[]``: none).
* **Prediction** — ``σ(Tower([E_u ‖ E_c ‖ e_i ‖ e_t ‖ v ‖ z_int ‖ Σ_b e_b ‖ e_i ⊙ Σ_b e_b]))``,
  BCE only; the history sums (``history_sum``, as the authors' code) are tirec's default.

The request-level blocks (the time codes, UI2M, both self-attentions, v_inst) run once per
distinct (request, context) with ``model.request_dedup``; the self-attentions run on the real
positions in length groups (``model.hist_buckets``). An empty history or sub-sequence reads
exact zeros. Outputs ``{"ctr": [B, 1]}``, float32 under mixed precision too.
"""
from __future__ import annotations

import dataclasses
import logging

import tensorflow as tf

from tirec.features.config_io import Checks
from tirec.compat import keras
from tirec.features.spec import FeatureSpec
from tirec.models.base import (CATEGORY, RELATED_RULES, FeatureEmbedder, TirModel, check_time_settings,
                               context_input_names, ctr_tower, history_gap_buckets, history_sum, item_columns,
                               related_rule, trigger_present, warn_shared_unread)
from tirec.models.config import ModelConfig
from tirec.models.layers import MLP, MultiHeadSelfAttention, MultiHeadTargetAttention
from tirec.models.layers.sequence import length_bucketed, real_lengths, trigger_related_mask
from tirec.models.registry import register_model

log = logging.getLogger(__name__)

COMBINES = ("mixture", "concat")


@dataclasses.dataclass(frozen=True)
class Dei2nConfig:
    """DEI2N's own settings, the ``model.dei2n`` config section (docs/models.md#dei2n-switches).
    The shared ones (``emb_dim``, ``tower``, ``hist_buckets``, ``request_dedup``, ...) are in the
    common ``model`` section.

    Args:
      att_units / att_heads: size of the attention blocks (two MHSA, two MHTA; the two MHTA alone
        with ``self_attention=false``).
      time_ref: the reference of the behaviours' time gaps: ``request`` (the request time, the
        paper's) or ``latest`` (the row's most recent behaviour).
      time_buckets: number of log-scale time-gap buckets.
      time_max_gap_days: the gap (days) where the last bucket starts.
      related: the trigger-related sub-sequence: ``category`` (behaviours in the trigger's
        category), ``similarity`` (multimodal similarity to the trigger at or above the spec's
        explicit threshold) or ``auto`` (category when the records have the field).
      ui2m_hidden: hidden widths (ReLU) of UI2M's MLP.
      ui2m_context: the context fields E_c join UI2M's input, standing in for the paper's page
        number and scroll depth (true, the default, [X]); false drops the field, the other
        choice for data without a page number (docs/models.md#dei2n-interest).
      interaction_hidden: widths (ReLU) of the trigger-target interaction MLP; ``[]`` leaves
        z_int out of the tower input (an ablation).
      history_sum: also feed the tower Σ_b e_b and e_i ⊙ Σ_b e_b over the real behaviours, as
        the reference code does (default true, [X]: without it DEI2N did not learn on MovieLens,
        docs/models.md#dei2n-prediction).
      self_attention: each interest read runs on a self-attention of its sequence, MHTA(q,
        MHSA(K)) (true, the review's [X]); false: the target attentions read the time-coded
        behaviours K directly.
      combine: how the two reads join the tower: ``mixture`` (default [X], v = p_inst v_inst +
        p_gen v_gen) or ``concat`` (v = [p_inst v_inst ‖ p_gen v_gen]: UI2M still scales each
        read, and the tower weighs them apart).
    """

    att_units: int = 128
    att_heads: int = 4
    time_ref: str = "request"
    time_buckets: int = 20
    time_max_gap_days: float = 14.0
    related: str = "auto"
    ui2m_hidden: tuple[int, ...] = (64,)
    ui2m_context: bool = True
    interaction_hidden: tuple[int, ...] = (64,)
    history_sum: bool = True
    self_attention: bool = True
    combine: str = "mixture"

    def __post_init__(self) -> None:
        check = Checks("model.dei2n", self)
        check.heads()
        check_time_settings("dei2n", self)
        check.one_of("related", RELATED_RULES)
        check.widths("ui2m_hidden")
        check.widths("interaction_hidden", empty="no interaction MLP")
        check.flags("ui2m_context", "history_sum", "self_attention")
        check.one_of("combine", COMBINES)


@keras.utils.register_keras_serializable(package="tirec")
class DEI2N(TirModel):
    """DEI2N: time-gap embeddings, UI2M, instant and general interest, interaction, tower.

    Inputs: the raw feature dict of a batch (see ``tirec.models.base.model_input_names``).
    Outputs: ``{"ctr": [B, 1]}`` click probability.
    """

    shared_unread = ("din_hidden",)  # it has no DIN attention unit

    def __init__(self, spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int,
                 **kwargs):
        super().__init__(spec, model_config, num_items, item_dim, **kwargs)
        c, d = model_config, model_config.section("dei2n")
        self.dei2n_config = d
        self.related_by = related_rule(spec, d.related, "model.dei2n.related")
        self.has_trigger_col = trigger_present(spec, "DEI2N")
        log.info("DEI2N trigger-related sub-sequence: %s", self._describe_related())
        self.embed = FeatureEmbedder(spec.to_json(), c.emb_dim, c.table_shards, name="embed")
        self.time_embedding = keras.layers.Embedding(d.time_buckets, c.emb_dim, name="time_gap_embedding")
        self.ui2m = MLP(d.ui2m_hidden, output_logit=False, name="ui2m_mlp")
        self.ui2m_head = keras.layers.Dense(2, name="ui2m_head")
        self_attention = (lambda name: MultiHeadSelfAttention(d.att_units, d.att_heads, name=name)
                          if d.self_attention else None)
        self.instant_self = self_attention("instant_mhsa")
        self.instant_target = MultiHeadTargetAttention(d.att_units, d.att_heads, name="instant_mhta")
        self.general_self = self_attention("general_mhsa")
        self.general_target = MultiHeadTargetAttention(d.att_units, d.att_heads, name="general_mhta")
        self.interaction = (MLP(d.interaction_hidden, output_logit=False, name="interaction")
                            if d.interaction_hidden else None)
        self.tower = ctr_tower(c)
        if not d.self_attention:  # the length groups serve only the self-attentions
            warn_shared_unread(c, ("hist_buckets",), "DEI2N with model.dei2n.self_attention=false")

    def _describe_related(self) -> str:
        if self.related_by == "category":
            return f"behaviours in the trigger's category (item field {CATEGORY!r})"
        why = f" (the records have no item field {CATEGORY!r})" if self.dei2n_config.related == "auto" else ""
        return (f"behaviours whose multimodal similarity to the trigger is >= "
                f"{float(self.spec.explicit_threshold):.4g}{why}")

    def forward(self, inputs, training=False):
        """The steps of docs/models.md#dei2n; the request-level ones once per distinct
        (request, context) with ``model.request_dedup``."""
        rows, index = self.request_groups(inputs, context_input_names(self.spec))
        r = self.embed.request(rows)
        e = self.embed.impression(inputs)
        expand, context = (lambda t: t), e["context"]
        if index is not None:
            expand = lambda t: tf.gather(t, index)  # noqa: E731
            first = tf.math.unsorted_segment_min(tf.range(tf.shape(index)[0]), index, tf.shape(r["user"])[0])
            context = tf.gather(e["context"], first)  # the rows of a group share their context
        keys = self.timed_history(rows, r)
        related = self.related_mask(rows, r["mask"])
        p = self.instant_probability(r, context, related, training)
        seq, seq_mask = self.self_attend(self.instant_self, keys, related)
        v_inst = self.instant_target(r["trigger"], seq, seq_mask)
        seq, seq_mask = self.self_attend(self.general_self, keys, r["mask"])
        target, trigger = e["target"], expand(r["trigger"])
        v_gen = self.general_target(target, expand(seq), expand(seq_mask))
        p = tf.cast(expand(p), v_gen.dtype)
        reads = [p[:, :1] * expand(v_inst), p[:, 1:] * v_gen]
        v = reads[0] + reads[1] if self.dei2n_config.combine == "mixture" else tf.concat(reads, axis=-1)
        parts = [expand(r["user"]), e["context"], target, trigger, v]
        if self.interaction is not None:
            parts.append(self.interaction(tf.concat([trigger, target, trigger * target, trigger - target], axis=-1),
                                          training=training))
        parts += history_sum(r, target, expand) if self.dei2n_config.history_sum else []
        logit = self.tower(tf.concat([tf.cast(t, self.layer_dtype) for t in parts], axis=-1), training=training)
        return {"ctr": tf.sigmoid(tf.cast(logit, tf.float32))}  # float32 under mixed precision too

    def timed_history(self, rows, r):
        """``[U, L, D + d]``: each behaviour's item embedding with its time-gap bucket's
        embedding concatenated (docs/models.md#time-gap-buckets)."""
        d = self.dei2n_config
        buckets = history_gap_buckets(self.spec, rows, r["mask"], d.time_ref, d.time_buckets,
                                      d.time_max_gap_days)
        hist = r["hist"]
        return tf.concat([hist, tf.cast(self.time_embedding(buckets), hist.dtype)], axis=-1)

    def related_mask(self, rows, mask):
        """bool ``[U, L]``: the trigger-related sub-sequence S_t (docs/models.md#dei2n-sub-sequence)."""
        spec = self.spec
        first = next(iter(spec.histories()))
        present = rows[self.has_trigger_col]
        if self.related_by == "category":
            hist = spec.select(group="history", history=first, field=CATEGORY, model_input=True)[0].name
            trig = spec.select(group="trigger", field=CATEGORY, model_input=True)[0].name
            return trigger_related_mask(rows[hist], rows[trig], mask, present)
        m_hist, _ = self.items(rows[item_columns(spec, "history", first)[0]])
        m_trig, _ = self.items(rows[item_columns(spec, "trigger")[0]])
        similar = tf.reduce_sum(m_hist * m_trig[:, None, :], axis=-1) >= float(spec.explicit_threshold)
        return mask & similar & tf.not_equal(tf.reshape(present, [-1, 1]), 0)

    def instant_probability(self, r, context, related, training):
        """float32 ``[U, 2]``: UI2M's ``(p_inst, p_gen)`` from the user, the context (unless
        ``model.dei2n.ui2m_context=false``), the trigger and the sum-pool of S_t's item embeddings
        (zeros when S_t is empty)."""
        hist = r["hist"]
        pooled = tf.reduce_sum(tf.where(related[:, :, None], hist, tf.zeros([], hist.dtype)), axis=1)
        parts = [r["user"]] + ([context] if self.dei2n_config.ui2m_context else []) + [r["trigger"], pooled]
        x = tf.concat([tf.cast(t, self.layer_dtype) for t in parts], axis=-1)
        logits = self.ui2m_head(self.ui2m(x, training=training))
        return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)

    def self_attend(self, mhsa, keys, mask):
        """``(MHSA(keys) [n, W, units], mask [n, W])`` over the real positions of ``mask``:
        compacted to the front (W = the longest row) in length groups of rows
        (``model.hist_buckets``; 0: the padded positions). Exact up to float rounding.
        Without ``model.dei2n.self_attention`` (``mhsa`` None): ``(keys, mask)``."""
        if mhsa is None:
            return keys, mask
        buckets = self.model_config.hist_buckets
        if not mhsa.built:  # build outside length_bucketed's tf.cond branches
            mhsa(keys[:1], mask[:1])
        if buckets == 0:
            return mhsa(keys, mask), mask
        lengths = real_lengths(mask)
        width = tf.maximum(tf.reduce_max(tf.concat([lengths, [0]], axis=0)), 1)

        def attend(_, sequences, m):
            out = mhsa(sequences[0], m)
            return tf.pad(out, [[0, 0], [0, width - tf.shape(out)[1]], [0, 0]])

        return length_bucketed(attend, [], [keys], mask, buckets=buckets), tf.sequence_mask(lengths, width)


@register_model("dei2n", Dei2nConfig,
                description="DEI2N (WSDM 2024): time-gap embeddings, instant vs. general interest weighed by UI2M")
def build_dei2n(spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int) -> DEI2N:
    return DEI2N(spec, model_config, num_items, item_dim, name="dei2n")
