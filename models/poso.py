"""POSO (Dai et al., 2021), MLP variant, on DIN: personalised gates on every tower layer
(docs/models.md#poso).

DIN's representation (:meth:`tirec.models.din.DIN.tower_input`) feeds the common tower; each
hidden layer l is gated by the personalisation code x_pc of the request:

    x̂_l = C · σ(MLP_l(x_pc)) ⊙ act(W_l x_{l-1})

(``C = model.poso.gate_scale``, one gate MLP per layer, :class:`tirec.models.layers.GateNU`).
x_pc = [sg(E_pc) ‖ onehot(activity bucket)] **[X]**: the embeddings of the user-group fields
``model.poso.pc_fields`` (default: every user profile field of the spec; MovieLens has none),
stop-gradient with ``model.poso.pc_stop_gradient``, and a user-activity bucket of the history
length (its real positions, = the records' ``hist_len``) split at ``model.poso.activity_edges``.
x_pc depends only on the request, so the gates run once per distinct request.

Outputs ``{"ctr": [B, 1]}``, float32 under mixed precision too.
"""
from __future__ import annotations

import dataclasses
import logging

import tensorflow as tf

from tirec.features.config_io import Checks, is_count
from tirec.compat import keras
from tirec.features.spec import FeatureSpec
from tirec.models.base import USER_ID
from tirec.models.config import ModelConfig
from tirec.models.din import DIN
from tirec.models.layers import GateNU
from tirec.models.registry import register_model

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PosoConfig:
    """POSO's own settings, the ``model.poso`` config section (docs/models.md#poso). The tower,
    DIN attention and embedding sizes are the common ``model`` section's.

    Args:
      gate_scale: C, the scale of every sigmoid gate (2: gates in (0, 2), centred at 1).
      gate_hidden: hidden (ReLU) widths of each layer's gate MLP (may be empty: one Dense).
      pc_fields: the user-group columns whose embeddings enter x_pc (e.g. ``user_age_level``);
        None (default): every embedded user column of the spec other than ``user_id``.
      pc_stop_gradient: stop the gates' gradient into the x_pc embeddings (they still train
        through the tower input).
      activity_edges: increasing history lengths splitting users into activity buckets: a
        request with h real history positions is in bucket ``#{edges <= h}``; empty: no
        activity bucket in x_pc.
    """

    gate_scale: float = 2.0
    gate_hidden: tuple[int, ...] = (64,)
    pc_fields: tuple[str, ...] | None = None
    pc_stop_gradient: bool = True
    activity_edges: tuple[int, ...] = (1, 3, 10, 30)

    def __post_init__(self) -> None:
        check = Checks("model.poso", self)
        check.finite("gate_scale", above=0)
        check.widths("gate_hidden", empty="no hidden layer")
        if self.pc_fields is not None and (not all(isinstance(f, str) and f for f in self.pc_fields)
                                           or len(set(self.pc_fields)) != len(self.pc_fields)):
            check.bad("pc_fields", "must be null or a list of distinct column names")
        check.flags("pc_stop_gradient")
        edges = self.activity_edges
        if not all(is_count(e) for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
            check.bad("activity_edges", "must be strictly increasing integers >= 1 (may be empty)")


def pc_columns(spec: FeatureSpec, pc_fields) -> list[str]:
    """The user-group columns whose embeddings enter x_pc: ``pc_fields``, or by default every
    embedded user column but ``user_id``.

    Raises:
      ValueError: naming ``model.poso.pc_fields`` and a column the spec's user group lacks.
    """
    profile = [f.name for f in spec.select(group="user", model_input=True)
               if f.table is not None and f.name != USER_ID]
    if pc_fields is None:
        return profile
    unknown = [f for f in pc_fields if f not in profile]
    if unknown:
        raise ValueError(f"model.poso.pc_fields: {unknown} are not embedded user profile columns of the "
                         f"records; they have {profile}")
    return list(pc_fields)


def activity_bucket(lengths: tf.Tensor, edges) -> tf.Tensor:
    """int32 ``[B]``: the number of ``edges`` at or below each history length."""
    lengths = tf.cast(lengths, tf.int32)[:, None]
    return tf.reduce_sum(tf.cast(lengths >= tf.constant(list(edges), tf.int32)[None, :], tf.int32), axis=1)


@keras.utils.register_keras_serializable(package="tirec")
class POSO(DIN):
    """DIN whose tower layers are gated by the personalisation code (POSO's MLP variant).

    Inputs: the raw feature dict of a batch (see ``tirec.models.base.model_input_names``).
    Outputs: ``{"ctr": [B, 1]}`` click probability.
    """

    reads_din_section = False  # model.din.* switches are DIN's alone

    def __init__(self, spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int,
                 **kwargs):
        super().__init__(spec, model_config, num_items, item_dim, **kwargs)
        p = model_config.section("poso")
        self.poso_config = p
        self.pc_columns = pc_columns(spec, p.pc_fields)
        self._pc_tables = {f.name: f.table for f in spec.features if f.name in self.pc_columns}
        if not self.pc_columns and not p.activity_edges:
            raise ValueError("POSO: the personalisation code is empty: the records have no user profile "
                             "column (model.poso.pc_fields) and model.poso.activity_edges is empty")
        log.info("POSO personalisation code: %s%s",
                 ", ".join(self.pc_columns) or "no user profile column",
                 f" + activity bucket at history lengths {list(p.activity_edges)}" if p.activity_edges
                 else "")
        self.gates = [GateNU(p.gate_hidden, units, gamma=p.gate_scale, name=f"poso_gate_{i}")
                      for i, units in enumerate(model_config.tower)]

    def personalisation_code(self, rows, mask) -> tf.Tensor:
        """x_pc ``[U, d_pc]`` of request rows ``rows`` (their history mask ``mask``)."""
        p, parts = self.poso_config, []
        for name in self.pc_columns:
            e = self.embed.tables[self._pc_tables[name]](rows[name])
            parts.append(tf.stop_gradient(e) if p.pc_stop_gradient else e)
        if p.activity_edges:
            bucket = activity_bucket(tf.reduce_sum(tf.cast(mask, tf.int32), axis=1), p.activity_edges)
            parts.append(tf.one_hot(bucket, len(p.activity_edges) + 1, dtype=self.layer_dtype))
        return tf.concat([tf.cast(t, self.layer_dtype) for t in parts], axis=-1)

    def forward(self, inputs, training=False):
        rows, expand = self.request_rows(inputs)
        r = self.embed.request(rows)  # once per distinct request (model.request_dedup)
        e = self.embed.impression(inputs)
        x_pc = self.personalisation_code(rows, r["mask"])
        gates = [expand(gate(x_pc)) for gate in self.gates]  # per request, then per row
        logit = self.tower(self.tower_input(r, e, expand, training), training=training, gates=gates)
        return {"ctr": tf.sigmoid(tf.cast(logit, tf.float32))}  # float32 under mixed precision too


@register_model("poso", PosoConfig,
                description="POSO (Dai et al. 2021, MLP variant) on DIN: tower layers gated by a user-group code")
def build_poso(spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int) -> POSO:
    return POSO(spec, model_config, num_items, item_dim, name="poso")
