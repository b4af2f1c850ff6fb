"""DIHN (Shen et al., WWW 2022): Deep Interest Highlight Network (docs/models.md#dihn).

* **UIN** — the user intent network: ``p = σ(MLP([DinAttention(e_t, E_S) ‖ E_u ‖ e_t]))``, the
  probability that the request is about the trigger, trained on the request intent label y_I
  (``tirec.models.intent_label``, an auxiliary BCE weighted by ``intent_weight``). Once per
  distinct request; ``p = 0`` without a trigger [X].
* **FEM** — the fused query ``e_f = p·e_t + (1 − p)·e_i`` (``p`` behind a stop-gradient with
  ``fem_stop_gradient``, [X]).
* **HIEM** — ``v_1 = MHTA(e_f, MHSA(E_S))`` over the whole history (the self-attention once per
  request), and ``v_2`` over the behaviours related to the trigger: DinAttention with ``e_f`` as
  query, or their sum (``sub_pooling``, [X]). Related = in the trigger's category
  (``hist_cate_id == trigger_cate_id``), or, on data without a category (``related``, [X]), at a
  similarity level to the trigger of at least the intent label's level, computed in the graph
  from the frozen multimodal table.
* **Prediction** — ``σ(Tower([E_u ‖ E_c ‖ e_i ‖ e_t ‖ v_1 ‖ v_2 ‖ Σ_b e_b ‖ e_i ⊙ Σ_b e_b]))``;
  the history sums (``history_sum``, as the authors' code, [X]) are tirec's default.

Outputs ``{"ctr": [B, 1], "intent": [B, 2]}`` (``[1 − p, p]``), float32.
"""
from __future__ import annotations

import dataclasses
import logging

import tensorflow as tf

from tirec.features.config_io import Checks
from tirec.compat import keras
from tirec.features.spec import FeatureSpec
from tirec.models.base import (CATEGORY, RELATED_RULES, FeatureEmbedder, ctr_tower, din_attention, history_sum,
                               item_columns, related_rule, trigger_present)
from tirec.models.config import ModelConfig
from tirec.models.intent_label import RequestIntentModel, check_intent_settings, level_threshold, two_bins
from tirec.models.layers import MLP, MultiHeadSelfAttention, MultiHeadTargetAttention
from tirec.models.layers.sequence import trigger_related_mask
from tirec.models.registry import register_model

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DihnConfig:
    """DIHN's own settings, the ``model.dihn`` config section (docs/models.md#dihn).

    Args:
      intent_level: the first similarity level whose click makes a request's intent label 1
        (docs/models.md#request-intent-label); null (default): the level of the FeatureSpec's
        explicit-intent threshold.
      intent_weight: λ, the weight of the UIN's loss BCE(y_I, p) beside the click loss (1.0).
      intent_rule: how y_I is read (docs/models.md#request-intent-label): ``level`` (default,
        [X]: a click at ``intent_level`` or above) or ``category`` (the paper's: a click in the
        trigger's category; the data needs the column ``intent_cate_clicks``).
      uin_hidden: the UIN MLP's hidden widths (ReLU), then one logit.
      fem_stop_gradient: the FEM reads sg(p), so that only the intent loss trains the UIN (False:
        the click loss trains it too, as the paper's end-to-end model).
      att_units / att_heads: the size of the HIEM's MHSA and MHTA (128 x 4, as every model).
      sub_pooling: ``attention`` (DinAttention(e_f, related behaviours), default) or ``sum``.
      related: which behaviours v_2 reads: ``category`` (the trigger's category; the data
        needs ``cate_id`` on trigger and history), ``similarity`` (similarity level to the
        trigger >= the intent level) or ``auto`` (default: category when the data has it).
      history_sum: also feed the tower Σ_b e_b and e_i ⊙ Σ_b e_b over the real behaviours, as
        the reference code does (default true, [X]: docs/models.md#dihn-modules).
    """

    intent_level: int | None = None
    intent_weight: float = 1.0
    intent_rule: str = "level"
    uin_hidden: tuple[int, ...] = (256, 128)
    fem_stop_gradient: bool = False
    att_units: int = 128
    att_heads: int = 4
    sub_pooling: str = "attention"
    related: str = "auto"
    history_sum: bool = True

    def __post_init__(self) -> None:
        check_intent_settings("dihn", self.intent_level, self.intent_weight, self.intent_rule)
        check = Checks("model.dihn", self)
        check.widths("uin_hidden")
        check.heads()
        check.one_of("sub_pooling", ("attention", "sum"))
        check.one_of("related", RELATED_RULES)
        check.flags("history_sum")


@keras.utils.register_keras_serializable(package="tirec")
class DIHN(RequestIntentModel):
    """DIHN: UIN + FEM + HIEM, the trigger and the target in the tower."""

    intent_section = "dihn"

    def __init__(self, spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int,
                 **kwargs):
        super().__init__(spec, model_config, num_items, item_dim, **kwargs)
        c, d = model_config, model_config.section("dihn")
        self.dihn_config = d
        self.related = related_rule(spec, d.related, "model.dihn.related")
        self._columns(spec)
        self.embed = FeatureEmbedder(spec.to_json(), c.emb_dim, c.table_shards, name="embed")
        self.uin_att = din_attention(c, "uin_attention")
        self.uin_mlp = MLP(d.uin_hidden, output_logit=True, name="uin")
        self.hiem_mhsa = MultiHeadSelfAttention(d.att_units, d.att_heads, name="hiem_mhsa")
        self.hiem_mhta = MultiHeadTargetAttention(d.att_units, d.att_heads, name="hiem_mhta")
        if d.sub_pooling == "attention":
            self.sub_att = din_attention(c, "related_attention")
        self.tower = ctr_tower(c)
        log.info("DIHN: trigger-related behaviours by %s", self._describe_related(spec))

    def _columns(self, spec: FeatureSpec) -> None:
        self.has_trigger_col = trigger_present(spec, "DIHN")
        first = next(iter(spec.histories()))
        if self.related == "category":
            self.trigger_key = spec.select(group="trigger", field=CATEGORY, model_input=True)[0].name
            self.hist_key = spec.select(group="history", history=first, field=CATEGORY, model_input=True)[0].name
        else:
            self.trigger_key = item_columns(spec, "trigger")[0]
            self.hist_key = item_columns(spec, "history", first)[0]
            self.related_threshold = level_threshold(spec, self.intent_level)

    def _describe_related(self, spec: FeatureSpec) -> str:
        if self.related == "category":
            return f"category ({self.hist_key} == {self.trigger_key})"
        return (f"similarity (no {CATEGORY!r} in the data or related=similarity): cos(m_t, m_b) >= "
                f"{self.related_threshold:.4g}, the lower edge of level {self.intent_level} of "
                f"{spec.intent_levels}")

    def related_mask(self, rows, mask) -> tf.Tensor:
        """bool [U, L]: the real behaviours related to the trigger, on rows with a trigger."""
        if self.related == "category":
            return trigger_related_mask(rows[self.hist_key], rows[self.trigger_key], mask,
                                        rows[self.has_trigger_col])
        m_hist, _ = self.items(rows[self.hist_key])
        m_t, _ = self.items(rows[self.trigger_key])
        sim = tf.reduce_sum(m_hist * m_t[:, None, :], axis=-1)
        present = tf.cast(rows[self.has_trigger_col], tf.bool)[:, None]
        return mask & present & (sim >= self.related_threshold)

    def user_intent(self, rows, r, training=False) -> tf.Tensor:
        """UIN: p = σ(MLP([DinAttention(e_t, E_S) ‖ E_u ‖ e_t])) float32 [U, 1], 0 without a trigger."""
        h = self.uin_att(r["trigger"], r["hist"], r["mask"], training=training)
        logit = self.uin_mlp(tf.concat([h, r["user"], r["trigger"]], axis=-1), training=training)
        present = tf.cast(rows[self.has_trigger_col], tf.float32)[:, None]
        return tf.sigmoid(tf.cast(logit, tf.float32)) * present

    def hybrid_interest(self, e_f, rows, r, expand, training=False):
        """HIEM: ``(v_1, v_2)`` per candidate for the fused query ``e_f`` [B, D]; ``rows``, ``r``
        are the request-level inputs and embeddings, ``expand`` maps them to the candidates.

        v_1 = MHTA(e_f, MHSA(E_S)), the self-attention once per request; v_2 pools the
        trigger-related behaviours (:meth:`related_mask`): DinAttention(e_f, ·) or their sum."""
        v_1 = self.hiem_mhta(e_f, expand(self.hiem_mhsa(r["hist"], r["mask"])), expand(r["mask"]))
        related = self.related_mask(rows, r["mask"])
        if self.dihn_config.sub_pooling == "attention":
            return v_1, self.sub_att(e_f, expand(r["hist"]), expand(related), training=training)
        pooled = tf.reduce_sum(r["hist"] * tf.cast(related, r["hist"].dtype)[:, :, None], axis=1)
        return v_1, expand(pooled)

    def forward(self, inputs, training=False):
        """UIN and the history's self-attention once per distinct request; FEM, the two
        interest reads and the tower per candidate (docs/models.md#dihn)."""
        d = self.dihn_config
        rows, expand = self.request_rows(inputs)
        r = self.embed.request(rows)
        e = self.embed.impression(inputs)
        p = expand(self.user_intent(rows, r, training))
        q = tf.cast(tf.stop_gradient(p) if d.fem_stop_gradient else p, self.layer_dtype)
        e_t = expand(r["trigger"])
        e_f = q * e_t + (1.0 - q) * e["target"]  # FEM
        v_1, v_2 = self.hybrid_interest(e_f, rows, r, expand, training)
        parts = [expand(r["user"]), e["context"], e["target"], e_t, v_1, v_2]
        parts += history_sum(r, e["target"], expand) if d.history_sum else []
        logit = self.tower(tf.concat([tf.cast(t, self.layer_dtype) for t in parts], axis=-1), training=training)
        return {"ctr": tf.sigmoid(tf.cast(logit, tf.float32)), "intent": two_bins(p)}


@register_model("dihn", DihnConfig,
                description="DIHN (WWW 2022): user intent network, fused trigger/target query, "
                            "hybrid interest over the history and the trigger's category")
def build_dihn(spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int) -> DIHN:
    return DIHN(spec, model_config, num_items, item_dim, name="dihn")


build_dihn.intent_section = DIHN.intent_section  # lets training plan its stage before building
