"""DIN (Zhou et al., KDD 2018): the base model and first TIR baseline (docs/models.md#din).

The user interest vector is a DIN attention pooling of the behaviour sequence with the target
as query (un-normalised weights unless ``model.din.attention_softmax``); for TIR the trigger
embedding joins the tower input (as in DAIAN's baseline). ``model.din.sim_feature`` adds DAIAN's
trigger-target similarity s_sem to the tower input: the control row that shows what DAIAN adds
beyond that one number.
``model.din.history_sum`` adds the sum pooling of the history and its product with the target,
as the DIN baseline of the DIEN authors' code and tirec's DIEN, DIHN and DEI2N read it.
``model.din.attention_softmax`` softmax-normalises the attention scores over the real behaviours.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from tirec.features.config_io import Checks
from tirec.compat import keras
from tirec.features.spec import FeatureSpec
from tirec.models.base import FeatureEmbedder, TirModel, ctr_tower, din_attention, history_sum, trigger_present
from tirec.models.config import ModelConfig, changed_settings
from tirec.models.registry import register_model


@dataclasses.dataclass(frozen=True)
class DinConfig:
    """DIN's own settings, the ``model.din`` config section. Everything else DIN reads
    (``emb_dim``, ``table_shards``, ``din_hidden``, ``hist_buckets``, ``tower``, ``activation``,
    ``dropout``, ``l2``, ``request_dedup``) DAIAN reads too, so it is in the common ``model``
    section.

    Args:
      sim_feature: a control row for DAIAN (docs/models.md#din): the trigger-target
        multimodal similarity s_sem, the one number DAIAN's tower reads that DIN's does not
        otherwise get, joins the tower input. It is computed in the graph from the frozen item
        table exactly as DAIAN computes it (the records' ``trigger_target_sim``, which is not a
        model input). False (default): DIN as ever, the same outputs and checkpoints.
      history_sum: Σ_k e_k and e_i ⊙ Σ_k e_k over the real behaviours join the tower input, as
        in the DIN baseline of the DIEN authors' code ([X]; false, the default, is DIN's paper
        and DeepCTR's). The sum pooling tirec's DIEN, DIHN and DEI2N read by default, so the
        table can tell it apart from what those models add.
      attention_softmax: the attention scores are softmax-normalised over the real behaviours
        (DeepCTR's ``att_weight_normalization``; [X], false, the default, is the paper's
        un-normalised sum), the normalisation DIEN's attention read has, so the table can tell
        the normalisation apart from DIEN's bilinear score.
      trigger_in_tower: the trigger embedding e_t joins the tower input (true, the default: the
        TIR use of DIN, as in DAIAN's baseline, [X]); false gives the paper's DIN, which reads
        no trigger (docs/models.md#din).
    """

    sim_feature: bool = False
    history_sum: bool = False
    attention_softmax: bool = False
    trigger_in_tower: bool = True

    def __post_init__(self) -> None:
        Checks("model.din", self).flags("sim_feature", "history_sum", "attention_softmax", "trigger_in_tower")


@keras.utils.register_keras_serializable(package="tirec")
class DIN(TirModel):
    """DIN with the trigger in the tower (``model.din.trigger_in_tower``); ``model.din.sim_feature``
    adds the trigger-target similarity s_sem, ``history_sum`` the history's sum pooling,
    ``attention_softmax`` normalises the attention weights.

    Inputs: the raw feature dict of a batch (see ``tirec.models.base.model_input_names``).
    Outputs: ``{"ctr": [B, 1]}`` click probability.
    """

    reads_din_section = True  # False in the models built on DIN's tower input (POSO, MWUF)

    def __init__(self, spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int,
                 **kwargs):
        super().__init__(spec, model_config, num_items, item_dim, **kwargs)
        c, din = model_config, model_config.section("din")
        if not self.reads_din_section:
            _refuse_din_switches(din, type(self).__name__)
        self.sim_feature, self.history_sum = din.sim_feature, din.history_sum
        self.trigger_in_tower = din.trigger_in_tower
        if self.sim_feature:  # fail at build time, not in a trace
            trigger_present(spec, "model.din.sim_feature=true")
        self.embed = FeatureEmbedder(spec.to_json(), c.emb_dim, c.table_shards, name="embed")
        self.din_att = din_attention(c, "din_attention", weight_normalization=din.attention_softmax)
        self.tower = ctr_tower(c)

    def forward(self, inputs, training=False):
        rows, expand = self.request_rows(inputs)
        r = self.embed.request(rows)  # once per distinct request (model.request_dedup)
        e = self.embed.impression(inputs)
        z = self.tower_input(r, e, expand, training)
        if self.history_sum:
            z = tf.concat([z] + [tf.cast(t, z.dtype) for t in history_sum(r, e["target"], expand)], axis=-1)
        if self.sim_feature:
            s_sem = self.trigger_target_similarity(inputs, "model.din.sim_feature=true")
            z = tf.concat([z, tf.cast(s_sem, z.dtype)], axis=-1)
        logit = self.tower(z, training=training)
        return {"ctr": tf.sigmoid(tf.cast(logit, tf.float32))}  # float32 under mixed precision too

    def tower_input(self, r, e, expand, training=False):
        """DIN's representation ``[E_u ‖ E_c ‖ e_i ‖ e_t ‖ v_DIN]`` (no ``e_t`` with
        ``model.din.trigger_in_tower=false``), ``v_DIN = DinAttention(e_i, E_S)``, from the
        embedder's request-level ``r`` (expanded to the rows by ``expand``) and per-candidate ``e``
        outputs. The models built on DIN (POSO, MWUF) call it with their own tower, or with
        warmed-up ``e_i`` / ``e_t``."""
        v_din = self.din_att(e["target"], expand(r["hist"]), expand(r["mask"]), training=training)
        trigger = [expand(r["trigger"])] if self.trigger_in_tower else []
        return tf.concat([expand(r["user"]), e["context"], e["target"]] + trigger + [v_din], axis=-1)


def _refuse_din_switches(din: DinConfig, model: str) -> None:
    """The models built on DIN's tower input (POSO, MWUF) read none of ``model.din.*``: a
    setting there is an error naming it, not a silent no-op."""
    changed = changed_settings(din)
    if changed:
        keys = ", ".join(f"model.din.{k}={str(v).lower()}" for k, v in changed.items())
        raise ValueError(f"{keys}: only --model din reads them; {model} would ignore them")


@register_model("din", DinConfig,
                description="DIN (KDD 2018): target attention over the behaviour sequence, trigger in the tower")
def build_din(spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int) -> DIN:
    return DIN(spec, model_config, num_items, item_dim, name="din")
