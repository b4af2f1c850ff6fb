"""DAIAN (arXiv 2602.13971): distribution-aware intent modeling on top of DIN.

Modules (docs/models.md#daian, with the paper's equation numbers; [X] marks reconstructions, each a switch of :class:`DaianConfig`, the
``model.daian`` config section):

* **UIM** (Eq. 2-5) — its own embedding tables; ``h_S = DinAttention(e_t, E_S)`` (or
  ``MHTA(e_t, E_S)`` with ``uim_attention=mhta``, [X], cheaper),
  ``ŷ = softmax(MLP([E_u ‖ h_S ‖ e_t]))`` over the n similarity levels. ``use_uim=False``
  replaces it by a scalar sigmoid intent (DIHN style) read as the 2-bin distribution
  [below tau, at/above tau].
* **I2E** (Eq. 6-8) — ``q_I = W[e_t ‖ ŷ]`` (``i2e_fusion=concat``) or ``e_t + Wŷ`` (``add``);
  ``v_imp = MHTA(q_I, E_S)``.
* **Explicit intent** (Eq. 9-10) — behaviours whose multimodal similarity to the trigger is >= tau
  (computed in the graph from the frozen multimodal table, tau from the FeatureSpec), at most
  ``explicit_len`` of them (the most recent); ``v_exp = MHTA(e_i, MHSA(E_S'))``, 0 when S' is
  empty. ``S'`` is compacted and the samples grouped by ``|S'|`` (``explicit_buckets``), which
  changes only the speed (``tirec.models.layers.sequence``).
* **Hybrid similarity enhancer** (Eq. 11-14) — ``s_sem = cos(m_t, m_i)``;
  ``h_id = p_t ⊙ p_i`` with ``p_x = MLP(sg(e_x^id))``; ``e_s = Emb(bucket(s_sem))``; norm-ratio fusion
  ``α = ‖sg(h_id)‖ / (‖sg(h_id)‖ + ‖e_s‖ + ε)``, ``e_sim = α h_id + (1-α) e_s``.
* **IA2N** (Eq. 15-18) — Gate NU over ``[e_sim ‖ sg(ŷ)]`` gives ``[w_exp ‖ w_imp]``;
  ``u_exp = w_exp ⊙ v_exp``, ``u_imp = w_imp ⊙ v_imp``.
* **Stage 2** (training, Eq. 19-21) — I2E and IA2N read the record's ``prior_intent`` (which
  the stage feeds to ``forward``) instead of ``ŷ`` [X]: the user's time-decayed click levels before the request, which holds no
  label of the row's own request (feeding the request's own ground truth, even minus the row's
  click, leaks the label: docs/models.md#prior-intent).
* **Prediction** [X] — ``σ(Tower([E_u ‖ E_c ‖ e_i ‖ e_t ‖ v_DIN ‖ u_exp ‖ u_imp ‖ e_sim ‖ s_sem]))``.

Outputs ``{"ctr": [B, 1], "intent": [B, k]}`` (k = n, or 2 without the UIM), float32 under
mixed precision too. Losses and training stages are handled by :class:`tirec.models.base.TirModel`.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow as tf

from tirec.features.config_io import Checks
from tirec.compat import keras
from tirec.features import transforms
from tirec.features.spec import FeatureSpec
from tirec.models.base import FeatureEmbedder, TirModel, ctr_tower, din_attention, item_columns, trigger_present
from tirec.models.config import ModelConfig, warn_unread_settings
from tirec.models.intent_label import check_intent_settings
from tirec.models.layers import (MLP, DinAttention, GateNU, MultiHeadSelfAttention,
                                 MultiHeadTargetAttention)
from tirec.models.layers.sequence import keep_first, length_bucketed, real_lengths
from tirec.models.registry import register_model

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DaianConfig:
    """DAIAN's own settings, the ``model.daian`` config section (validated when built). The
    settings it shares with every model (``emb_dim``, ``tower``, ``din_hidden``,
    ``hist_buckets``, ``request_dedup``, ...) are in the common ``model`` section.

    Args:
      att_units / att_heads: multi-head attention size (I2E, explicit branch, the IA2N gate and
        the UIM's ``mhta`` pooling).
      use_uim / use_die / use_sein: ablation switches (docs/models.md#ablation-switches).
      uim_hidden: UIM MLP sizes (then n levels).
      uim_attention: the UIM's history pooling ``h_S`` (docs/models.md#uim): ``din``
        (DinAttention(e_t, E_S), default) or ``mhta`` ([X] MultiHeadTargetAttention with
        att_units x att_heads; 10-17 % less DAIAN step time at the paper config, other
        numerics).
      i2e_fusion: ``concat`` (q = W[e_t ‖ y]) or ``add`` (q = e_t + W y), docs/models.md#i2e.
      sim_bins: buckets of the semantic similarity embedding
        (docs/models.md#hybrid-similarity-enhancer).
      sim_fusion: ``norm_ratio`` or ``additive`` (the same section's variant).
      gate_inputs: ``intent`` (x = [e_sim ‖ sg(y)]) or ``intent_interest`` (also sg(v_imp), sg(v_exp)).
      gamma: Gate NU scale.
      gate_shift: IA2N's Eq.16 [X]: ``none`` (w = δ, the default) or ``mlp`` (w =
        MLP_shift(δ ⊙ x') with x' = [v_exp ‖ v_imp] and MLP_shift one linear layer of
        ``2 * att_units``; docs/models.md#ia2n).
      explicit_len: [X] cap on the explicit subsequence ``S'``
        (docs/models.md#explicit-intent-subsequence, ``L' = 50``):
        keep its first (most recent) ``explicit_len`` behaviours. At or above the sequence
        length it changes nothing.
      explicit_buckets: how the explicit branch (MHSA + MHTA over ``S'``) runs; the outputs
        are the same up to float rounding: ``0`` on the padded history (the straightforward
        path), ``1`` on ``S'`` compacted to the batch's longest, ``k > 1`` on ``k`` groups of
        samples of similar ``|S'|`` (the fastest; see ``tirec.models.layers.sequence``).
      intent_weight: [X] λ, the weight of the UIM's intent loss KL(y^I ‖ ŷ^I) beside the click
        loss in the one stage of ``train.three_stage=false`` (1.0): the schedule is ablated, the
        UIM's supervision kept. 0: the click loss alone, so nothing tells the UIM what intent is.
        The three stages do not read it (stage 1 trains the KL alone, stages 2 and 3 the click
        loss; docs/models.md#three-training-stages).
    """

    att_units: int = 128
    att_heads: int = 4
    use_uim: bool = True
    use_die: bool = True
    use_sein: bool = True
    uim_hidden: tuple[int, ...] = (256, 128)
    uim_attention: str = "din"
    i2e_fusion: str = "concat"
    sim_bins: int = 20
    sim_fusion: str = "norm_ratio"
    gate_inputs: str = "intent"
    gamma: float = 2.0
    gate_shift: str = "none"
    explicit_len: int = 50
    explicit_buckets: int = 16
    intent_weight: float = 1.0

    def __post_init__(self) -> None:
        check = Checks("model.daian", self)
        check.heads()
        check.widths("uim_hidden")
        choices = {"uim_attention": ("din", "mhta"), "i2e_fusion": ("concat", "add"),
                   "sim_fusion": ("norm_ratio", "additive"), "gate_inputs": ("intent", "intent_interest"),
                   "gate_shift": ("none", "mlp")}
        for field, allowed in choices.items():
            check.one_of(field, allowed)
        check.counts("sim_bins", least=2)
        check.counts("explicit_len")
        check.counts("explicit_buckets", least=0, note=" (0 = no compaction)")
        check_intent_settings("daian", None, self.intent_weight)


@keras.utils.register_keras_serializable(package="tirec")
class UserIntentModel(keras.layers.Layer):
    """UIM: predicts the request's intent distribution from user, trigger and history.

    Has its own embedding tables (its objective differs from the CTR objective). ``attention``
    picks ``h_S``: ``din`` (DinAttention, the default) or ``mhta`` (MultiHeadTargetAttention with
    ``att_units`` x ``att_heads``), the two options of docs/models.md#uim.
    """

    def __init__(self, spec_json: str, emb_dim: int, shards: int, hidden: tuple, out_dim: int,
                 scalar: bool = False, attention: str = "din", att_units: int = 128,
                 att_heads: int = 4, length_buckets: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.spec_json, self.emb_dim, self.shards = spec_json, emb_dim, shards
        self.hidden, self.out_dim, self.scalar = tuple(hidden), out_dim, scalar
        self.attention, self.att_units, self.att_heads = attention, att_units, att_heads
        self.length_buckets = length_buckets
        self.embed = FeatureEmbedder(spec_json, emb_dim, shards, context=False, name="uim_embed")
        if attention == "mhta":
            self.att = MultiHeadTargetAttention(att_units, att_heads, name="uim_attention")
        else:
            self.att = DinAttention(length_buckets=length_buckets, name="uim_attention")
        self.mlp = MLP(self.hidden, output_logit=False, name="uim_mlp")
        self.head = keras.layers.Dense(1 if scalar else out_dim, name="uim_head")

    def call(self, inputs, training=False):
        e = self.embed.request(inputs)  # reads only the request-level inputs
        if self.attention == "mhta":
            h = self.att(e["trigger"], e["hist"], e["mask"])
        else:
            h = self.att(e["trigger"], e["hist"], e["mask"], training=training)
        z = self.head(self.mlp(tf.concat([e["user"], h, e["trigger"]], axis=-1), training=training))
        z = tf.cast(z, tf.float32)  # the intent distribution is float32 under mixed precision
        if self.scalar:
            p = tf.sigmoid(z)
            return tf.concat([1.0 - p, p], axis=-1)
        return tf.nn.softmax(z, axis=-1)

    def get_config(self):
        return {**super().get_config(), "spec_json": self.spec_json, "emb_dim": self.emb_dim,
                "shards": self.shards, "hidden": list(self.hidden), "out_dim": self.out_dim,
                "scalar": self.scalar, "attention": self.attention, "att_units": self.att_units,
                "att_heads": self.att_heads, "length_buckets": self.length_buckets}


@dataclasses.dataclass(frozen=True)
class _Columns:
    target: str
    trigger: str
    history: str
    has_trigger: str


def _read_columns(spec: FeatureSpec) -> _Columns:
    """The columns DAIAN reads besides the embedder's, found by group and field: the item ids
    of the target, the trigger and the first behaviour sequence (the one the embedder's mask
    describes), and the trigger's ``present`` flag."""
    first = next(iter(spec.histories()))
    return _Columns(target=item_columns(spec, "target")[0], trigger=item_columns(spec, "trigger")[0],
                    history=item_columns(spec, "history", first)[0], has_trigger=trigger_present(spec, "DAIAN"))


@keras.utils.register_keras_serializable(package="tirec")
class DAIAN(TirModel):
    """DAIAN: UIM + DIE (I2E, explicit intent) + SEIN (hybrid similarity enhancer, IA2N)."""

    has_intent = True
    three_stages = True  # trains in the three stages unless train.three_stage=false
    intent_section = "daian"  # holds the intent loss weight of that one stage

    def __init__(self, spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int,
                 **kwargs):
        super().__init__(spec, model_config, num_items, item_dim, **kwargs)
        c, d = model_config, model_config.section("daian")
        self.daian_config = d  # DAIAN's own settings (model.daian.*)
        warn_unread_settings(log, "daian", d, UNREAD_WHEN)
        self.columns = _read_columns(spec)
        n = spec.intent_levels
        lo, hi = spec.sim_range
        self.tau = float(spec.explicit_threshold)
        self.sim_lo, self.sim_hi = lo, hi
        # Projection of the n-level ground truth onto the UIM's output space.
        if d.use_uim:
            proj = np.eye(n, dtype=np.float32)
        else:
            level_lo = transforms.bin_edges(n, lo, hi)[:-1]
            top = (level_lo >= self.tau - 1e-9).astype(np.float32)
            proj = np.stack([1.0 - top, top], axis=1)
        self.intent_projection = tf.constant(proj)
        k = proj.shape[1]
        self.embed = FeatureEmbedder(spec.to_json(), c.emb_dim, c.table_shards, name="embed")
        self.uim = UserIntentModel(spec.to_json(), c.emb_dim, c.table_shards, d.uim_hidden, k,
                                   scalar=not d.use_uim, attention=d.uim_attention,
                                   att_units=d.att_units, att_heads=d.att_heads,
                                   length_buckets=c.hist_buckets, name="uim")
        self.din_att = din_attention(c, "din_attention")
        if d.use_die:
            self.i2e_query = keras.layers.Dense(self.embed.item_dim, name="i2e_query")
            self.i2e_att = MultiHeadTargetAttention(d.att_units, d.att_heads, name="i2e_mhta")
            self.exp_self = MultiHeadSelfAttention(d.att_units, d.att_heads, name="explicit_mhsa")
            self.exp_target = MultiHeadTargetAttention(d.att_units, d.att_heads, name="explicit_mhta")
        if d.use_sein:
            self.proj = MLP((item_dim, item_dim), output_logit=False, name="id_projection")
            self.sim_bins = keras.layers.Embedding(d.sim_bins, item_dim, name="sim_bin_embedding")
            if d.use_die:
                self.gate = GateNU((d.att_units,), 2 * d.att_units, gamma=d.gamma, name="ia2n_gate")
                self.gate_shift = (keras.layers.Dense(2 * d.att_units, name="ia2n_shift")
                                   if d.gate_shift == "mlp" else None)
        self.tower = ctr_tower(c)

    def intent_target(self, dist: tf.Tensor) -> tf.Tensor:
        """The ground-truth distribution in the UIM's output space."""
        return tf.matmul(tf.cast(dist, tf.float32), self.intent_projection)

    def _explicit_pool(self, rows, sequences, mask):
        """Per-position part of v_exp = MHTA(e_i, MHSA(E_S')) for a group of samples
        (docs/models.md#explicit-intent): the target attention's pooled keys over the
        self-attended S'."""
        (q_keys, q_bias), (hist,) = rows, sequences
        _, pooled = self.exp_target.pool((q_keys, q_bias), self.exp_self(hist, mask), mask)
        return pooled

    def _explicit_interest(self, target, hist, explicit, max_len):
        """v_exp with one row per sample: MHSA and pooling per group of rows of similar |S'|."""
        c = self.daian_config
        self._build_explicit(hist, explicit)
        # The per-row steps of the target attention run once on the whole batch; only the
        # self-attention and the pooling run per group of rows of similar |S'|.
        q_keys, q_bias = self.exp_target.fold_query(target, self.exp_self.units)
        if q_bias is None:
            q_bias = tf.zeros(tf.shape(q_keys)[:2], q_keys.dtype)
        pooled = length_bucketed(self._explicit_pool, [q_keys, q_bias], [hist], explicit,
                                 buckets=c.explicit_buckets, max_len=max_len)
        return self.exp_target.project(pooled, tf.reduce_any(explicit, axis=1))

    def _build_explicit(self, hist, explicit):
        if not self.exp_self.built:  # build outside length_bucketed's tf.cond branches
            self.exp_self(hist[:1], explicit[:1])

    def _explicit_sequences(self, hist, explicit, max_len):
        """MHSA(E_S') of every row: ``([n, W, units], mask [n, W])``, S' compacted to the front
        (W = the longest |S'|) unless ``explicit_buckets=0`` (then the padded positions)."""
        c = self.daian_config
        self._build_explicit(hist, explicit)
        if c.explicit_buckets == 0:
            mask = keep_first(explicit, max_len)
            return self.exp_self(hist, mask), mask
        lengths = real_lengths(explicit, max_len)
        width = tf.maximum(tf.reduce_max(tf.concat([lengths, [0]], axis=0)), 1)

        def self_attend(rows, sequences, mask):
            out = self.exp_self(sequences[0], mask)
            return tf.pad(out, [[0, 0], [0, width - tf.shape(out)[1]], [0, 0]])

        seq = length_bucketed(self_attend, [], [hist], explicit, buckets=c.explicit_buckets,
                              max_len=max_len)
        return seq, tf.sequence_mask(lengths, width)

    def forward(self, inputs, training=False, prior_intent=None):
        """The outputs for a batch, in the steps of docs/models.md#daian.

        1. Request-level embeddings and the UIM's intent ŷ, once per distinct request with
           ``model.request_dedup`` (``expand`` gathers them back to the candidates).
        2. The semantic similarity ``s_sem`` of trigger and target (Eq. 11, docs/models.md#hybrid-similarity-enhancer).
        3. The DIN interest ``v_DIN`` (the base model).
        4. DIE: the implicit interest ``v_imp`` (docs/models.md#i2e) and the explicit one ``v_exp`` (docs/models.md#explicit-intent).
        5. SEIN: the enhanced similarity ``e_sim`` (docs/models.md#hybrid-similarity-enhancer) and the IA2N gate on v_exp, v_imp (docs/models.md#ia2n).
        6. The tower (docs/models.md#daian-prediction).

        Args:
          prior_intent: [B, n] the intent I2E and IA2N read instead of ŷ: stage 2 feeds the
            record's label-free ``prior_intent`` (``TirModel.stage_forward``); None: ŷ.
        """
        c = self.daian_config
        rows, expand = self.request_rows(inputs)  # 1.
        r = self.embed.request(rows)
        e = self.embed.impression(inputs)
        pred_intent_r = self.uim(rows, training=training)
        pred_intent = expand(pred_intent_r)
        sample = {k: expand(r[k]) for k in ("hist", "mask", "trigger")}  # per candidate
        s_sem = self._semantic_similarity(inputs)  # 2.
        v_din = self.din_att(e["target"], sample["hist"], sample["mask"], training=training)  # 3.
        parts = [expand(r["user"]), e["context"], e["target"], sample["trigger"], v_din]
        intent = pred_intent
        if c.use_die:  # 4.
            intent, v_imp = self._implicit_interest(r, sample, expand, pred_intent_r, prior_intent)
            v_exp = self._explicit_interest_of(rows, r, e, sample, expand)
            u_exp, u_imp = v_exp, v_imp
        if c.use_sein:  # 5.
            e_sim = self._enhanced_similarity(r, e, expand, s_sem, training)
            parts.append(e_sim)
            if c.use_die:
                u_exp, u_imp = self._ia2n(e_sim, intent, v_imp, v_exp)
        if c.use_die:
            parts += [u_exp, u_imp]
        parts.append(s_sem)
        logit = self.tower(tf.concat([tf.cast(p, self.layer_dtype) for p in parts], axis=-1),  # 6.
                           training=training)
        return {"ctr": tf.sigmoid(tf.cast(logit, tf.float32)), "intent": pred_intent}

    def intent_forward(self, inputs, training=False):
        """Stage 1's output: the UIM's intent ŷ alone (step 1 of :meth:`forward`), without the
        click path the stage neither trains nor reports."""
        rows, expand = self.request_rows(inputs)
        return {"intent": expand(self.uim(rows, training=training))}

    def _semantic_similarity(self, inputs):
        """s_sem = cos(m_t, m_i) [B, 1] (0 without a trigger) from the frozen multimodal table
        (``TirModel.trigger_target_similarity``, which DIN's ``model.din.sim_feature`` reads too).

        Unknown items have a zero vector, hence similarity 0. Float32 whatever the precision,
        so the explicit mask and the buckets do not move.
        """
        return self.trigger_target_similarity(inputs, "DAIAN")

    def _implicit_interest(self, r, sample, expand, pred_intent_r, prior_intent):
        """(the intent fed to I2E and IA2N per sample, v_imp = MHTA(q_I, E_S))
        (docs/models.md#i2e); ``r`` holds the request-level embeddings, ``sample`` their per-candidate copies.

        With ``prior_intent`` (stage 2) I2E runs per sample: the prior intent is per request,
        but requests with equal model inputs may differ in it (e.g. no trigger and no history
        at two times). Otherwise it runs once per request on ŷ.
        """
        if prior_intent is not None:
            intent = self.intent_target(prior_intent)
            query = self._i2e_query(sample["trigger"], intent)
            return intent, self.i2e_att(query, sample["hist"], sample["mask"])
        v_imp = self.i2e_att(self._i2e_query(r["trigger"], pred_intent_r), r["hist"], r["mask"])
        return expand(pred_intent_r), expand(v_imp)

    def _explicit_interest_of(self, rows, r, e, sample, expand):
        """v_exp = MHTA(e_i, MHSA(E_S')) (docs/models.md#explicit-intent): S' = the behaviours whose
        multimodal similarity to the trigger is >= tau, at most ``explicit_len`` of them."""
        c = self.daian_config
        col = self.columns
        m_hist, _ = self.items(rows[col.history])
        m_t_r, _ = self.items(rows[col.trigger])
        hist_sim = tf.reduce_sum(m_hist * m_t_r[:, None, :], axis=-1)
        explicit = r["mask"] & (hist_sim >= self.tau) & tf.cast(rows[col.has_trigger], tf.bool)[:, None]
        max_len = c.explicit_len if c.explicit_len < self.spec.max_seq_len else None
        if not self.model_config.request_dedup:
            return self._explicit_interest(e["target"], sample["hist"], explicit, max_len)
        # MHSA(E_S') once per request; the target attention per sample.
        seq, seq_mask = self._explicit_sequences(r["hist"], explicit, max_len)
        seq, seq_mask = expand(seq), expand(seq_mask)
        folded = self.exp_target.fold_query(e["target"], self.exp_self.units)
        _, pooled = self.exp_target.pool(folded, seq, seq_mask)
        return self.exp_target.project(pooled, tf.reduce_any(seq_mask, axis=1))

    def _enhanced_similarity(self, r, e, expand, s_sem, training):
        """e_sim (docs/models.md#hybrid-similarity-enhancer): h_id = p_t ⊙ p_i with
        p_x = MLP(sg(e_x^id)) (Eq.12), e_s = the embedding of s_sem's bucket (Eq.13), fused by their norms (Eq.14, ``sim_fusion``)."""
        c = self.daian_config
        p_t = self.proj(tf.stop_gradient(expand(r["trigger_id"])), training=training)
        p_i = self.proj(tf.stop_gradient(e["target_id"]), training=training)
        h_id = p_t * p_i
        bucket = tf.clip_by_value(
            tf.cast(tf.floor((s_sem[:, 0] - self.sim_lo) / (self.sim_hi - self.sim_lo) * c.sim_bins),
                    tf.int32), 0, c.sim_bins - 1)
        e_s = self.sim_bins(bucket)
        n_id = tf.norm(tf.stop_gradient(tf.cast(h_id, tf.float32)), axis=-1, keepdims=True)
        n_s = tf.norm(tf.cast(e_s, tf.float32), axis=-1, keepdims=True)
        if c.sim_fusion == "norm_ratio":
            alpha = tf.cast(n_id / (n_id + n_s + 1e-8), self.layer_dtype)
            return alpha * h_id + (1.0 - alpha) * e_s
        return h_id + tf.cast(tf.math.divide_no_nan(n_id, n_s), self.layer_dtype) * e_s

    def _ia2n(self, e_sim, intent, v_imp, v_exp):
        """(u_exp, u_imp) = (w_exp ⊙ v_exp, w_imp ⊙ v_imp), [w_exp ‖ w_imp] = w the Gate NU δ over
        [e_sim ‖ sg(intent)] (+ sg(v_imp), sg(v_exp) with ``gate_inputs=intent_interest``), or
        MLP_shift(δ ⊙ [v_exp ‖ v_imp]) with ``gate_shift=mlp`` (docs/models.md#ia2n)."""
        gate_in = [e_sim, tf.stop_gradient(tf.cast(intent, self.layer_dtype))]
        if self.daian_config.gate_inputs == "intent_interest":
            gate_in += [tf.stop_gradient(v_imp), tf.stop_gradient(v_exp)]
        w = self.gate(tf.concat(gate_in, axis=-1))  # δ
        if self.gate_shift is not None:  # Eq.16's w = MLP_shift(δ ⊙ x'), x' = [v_exp ‖ v_imp]
            w = self.gate_shift(w * tf.concat([v_exp, v_imp], axis=-1))
        w_exp, w_imp = tf.split(w, 2, axis=-1)
        return w_exp * v_exp, w_imp * v_imp

    def _i2e_query(self, trigger, intent):
        """I2E's query (docs/models.md#i2e): W[e_t ‖ ŷ] or e_t + Wŷ."""
        intent = tf.cast(intent, self.layer_dtype)
        if self.daian_config.i2e_fusion == "concat":
            return self.i2e_query(tf.concat([trigger, intent], axis=-1))
        return trigger + self.i2e_query(intent)


# The settings of the blocks an ablation switch removes (docs/models.md#ablation-switches).
UNREAD_WHEN = (("use_die", False, ("i2e_fusion", "explicit_len", "explicit_buckets", "gate_inputs", "gamma",
                                   "gate_shift")),
               ("use_sein", False, ("sim_bins", "sim_fusion", "gate_inputs", "gamma", "gate_shift")))


@register_model("daian", DaianConfig,
                description="DAIAN (arXiv 2602.13971): intent distribution over trigger-target similarity levels, three-stage training")
def build_daian(spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int) -> DAIAN:
    return DAIAN(spec, model_config, num_items, item_dim, name="daian")


# Let training plan its stages before building.
build_daian.has_intent, build_daian.three_stages = DAIAN.has_intent, DAIAN.three_stages
build_daian.intent_section = DAIAN.intent_section
