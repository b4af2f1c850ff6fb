"""DIAN (Xia et al., WWW'23 Companion, arXiv 2211.08650): Deep Intention-Aware Network
(docs/models.md#dian).

The click probability is a mixture over the user's entering intention I:
``P(y|x) = P(I=trig|x)·P(y|x, trig) + P(I=free|x)·P(y|x, free)``. Only the abstract is
available; the nets are reconstructions [X]:

* **Intent net** — ``p_I = σ(MLP([E_u ‖ h_t ‖ e_t ‖ E_c]))`` with ``h_t = DinAttention(e_t, E_S)``
  (once per distinct request; without ``E_c`` the whole net runs per request,
  ``intent_context=false``), trained on the request intent label y_I
  (``tirec.models.intent_label``, an auxiliary BCE weighted by ``intent_weight``). ``p_I = 0``
  without a trigger.
* **Trigger-aware net** — ``ŷ_trig = σ(Tower_trig([E_u ‖ E_c ‖ e_i ‖ e_t ‖ e_t⊙e_i ‖ h_t ‖ v_i]))``
  with ``v_i = DinAttention(e_i, E_S)`` (``trigger_net_target_read=false``: without v_i).
* **Trigger-free net** — a DIN without the trigger: ``ŷ_free = σ(Tower_free([E_u ‖ E_c ‖ e_i ‖ v_i]))``
  (``free_net=sum``: the sum of the real behaviours ``Σ_k e_k`` in place of v_i, the base model
  of the DIN paper).
* **Output** — ``ŷ = clip(p_I·ŷ_trig + (1 − p_I)·ŷ_free, ε, 1 − ε)``, a probability as every
  model's ``ctr``; the loss is ``BCE(y, ŷ) + λ·BCE(y_I, p_I)``.

Outputs ``{"ctr": [B, 1], "intent": [B, 2]}`` (``[1 − p_I, p_I]``), float32.
"""
from __future__ import annotations

import dataclasses
import numbers

import tensorflow as tf

from tirec.features.config_io import Checks
from tirec.compat import keras
from tirec.features.spec import FeatureSpec
from tirec.models.base import FeatureEmbedder, ctr_tower, din_attention, history_sum, trigger_present
from tirec.models.config import ModelConfig
from tirec.models.intent_label import RequestIntentModel, check_intent_settings, two_bins
from tirec.models.layers import MLP
from tirec.models.registry import register_model


FREE_NETS = ("din", "sum")


@dataclasses.dataclass(frozen=True)
class DianConfig:
    """DIAN's own settings, the ``model.dian`` config section (docs/models.md#dian).

    Args:
      intent_level: the first similarity level whose click makes a request's intent label 1
        (docs/models.md#request-intent-label); null (default): the level of the FeatureSpec's
        explicit-intent threshold.
      intent_weight: λ, the weight of BCE(y_I, p_I) beside the click loss (1.0).
      intent_rule: how y_I is read (docs/models.md#request-intent-label): ``level`` (default,
        [X]: a click at ``intent_level`` or above) or ``category`` (the paper's: a click in the
        trigger's category; the data needs the column ``intent_cate_clicks``).
      intent_hidden: the intent net's hidden widths (ReLU), then one logit.
      intent_context: the intent net reads the context E_c (true, the reconstruction's input list); false:
        user, trigger and history only, so the whole net runs once per distinct request.
      trigger_net_target_read: the trigger-aware net reads the target's attention over the
        history v_i (true, the reconstruction's input list [X]); false: it reads the history
        through the trigger only (h_t), and v_i belongs to the trigger-free net.
      free_net: the trigger-free net's history read [X]: ``din`` (default, v_i) or ``sum``
        (Σ_k e_k over the real behaviours, no attention).
      eps: the mixture is clipped to [eps, 1 - eps].
    """

    intent_level: int | None = None
    intent_weight: float = 1.0
    intent_rule: str = "level"
    intent_hidden: tuple[int, ...] = (256, 128)
    intent_context: bool = True
    trigger_net_target_read: bool = True
    free_net: str = "din"
    eps: float = 1e-7

    def __post_init__(self) -> None:
        check_intent_settings("dian", self.intent_level, self.intent_weight, self.intent_rule)
        check = Checks("model.dian", self)
        check.widths("intent_hidden")
        check.flags("intent_context", "trigger_net_target_read")
        check.one_of("free_net", FREE_NETS)
        if isinstance(self.eps, bool) or not isinstance(self.eps, numbers.Real) or not 0 < self.eps < 0.5:
            raise ValueError(f"model.dian.eps: must be a number in (0, 0.5); received {self.eps!r}")


@keras.utils.register_keras_serializable(package="tirec")
class DIAN(RequestIntentModel):
    """DIAN: intent net, trigger-aware and trigger-free nets, mixed by the intent."""

    intent_section = "dian"

    def __init__(self, spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int,
                 **kwargs):
        super().__init__(spec, model_config, num_items, item_dim, **kwargs)
        c, d = model_config, model_config.section("dian")
        self.dian_config = d
        self.has_trigger_col = trigger_present(spec, "DIAN")
        self.embed = FeatureEmbedder(spec.to_json(), c.emb_dim, c.table_shards, name="embed")
        self.trigger_att = din_attention(c, "trigger_attention")
        reads_target = d.trigger_net_target_read or d.free_net == "din"
        self.target_att = din_attention(c, "target_attention") if reads_target else None
        self.intent_mlp = MLP(d.intent_hidden, output_logit=True, name="intent_net")
        self.tower_trig = ctr_tower(c, "trigger_aware_tower")
        self.tower_free = ctr_tower(c, "trigger_free_tower")

    def _intent(self, parts, present, training):
        """p_I = σ(MLP(parts)) float32 [., 1], 0 without a trigger."""
        logit = self.intent_mlp(tf.concat([tf.cast(t, self.layer_dtype) for t in parts], axis=-1),
                                training=training)
        return tf.sigmoid(tf.cast(logit, tf.float32)) * tf.cast(present, tf.float32)[:, None]

    def forward(self, inputs, training=False):
        """ŷ = clip(p_I·ŷ_trig + (1 − p_I)·ŷ_free, ε, 1 − ε) (docs/models.md#dian)."""
        k = self.components(inputs, training)
        eps = self.dian_config.eps
        y = tf.clip_by_value(k["p"] * k["trig"] + (1.0 - k["p"]) * k["free"], eps, 1.0 - eps)
        return {"ctr": y, "intent": two_bins(k["p"])}

    def components(self, inputs, training=False) -> dict:
        """``{"p": p_I, "trig": ŷ_trig, "free": ŷ_free}``, float32 [B, 1] each. The trigger
        attention (and without ``intent_context`` the intent net) runs once per distinct
        request; the target attention and the two nets per candidate."""
        d = self.dian_config
        rows, expand = self.request_rows(inputs)
        r = self.embed.request(rows)
        e = self.embed.impression(inputs)
        h_t_r = self.trigger_att(r["trigger"], r["hist"], r["mask"], training=training)
        user, e_t, h_t = expand(r["user"]), expand(r["trigger"]), expand(h_t_r)
        if d.intent_context:
            p = self._intent([user, h_t, e_t, e["context"]], inputs[self.has_trigger_col], training)
        else:
            p = expand(self._intent([r["user"], h_t_r, r["trigger"]], rows[self.has_trigger_col], training))
        target = e["target"]
        v_i = (None if self.target_att is None
               else self.target_att(target, expand(r["hist"]), expand(r["mask"]), training=training))
        trig = [user, e["context"], target, e_t, e_t * target, h_t]
        trig += [v_i] if d.trigger_net_target_read else []
        free = [user, e["context"], target, v_i if d.free_net == "din" else history_sum(r, target, expand)[0]]
        return {"p": p, "trig": self._probability(self.tower_trig, trig, training),
                "free": self._probability(self.tower_free, free, training)}

    def _probability(self, tower, parts, training):
        logit = tower(tf.concat([tf.cast(t, self.layer_dtype) for t in parts], axis=-1), training=training)
        return tf.sigmoid(tf.cast(logit, tf.float32))


@register_model("dian", DianConfig,
                description="DIAN (WWW'23 Companion): trigger-aware and trigger-free nets mixed by a "
                            "request intent probability")
def build_dian(spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int) -> DIAN:
    return DIAN(spec, model_config, num_items, item_dim, name="dian")


build_dian.intent_section = DIAN.intent_section  # lets training plan its stage before building
