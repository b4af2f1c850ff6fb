"""QIN, the Quadratic Interest Network (WWW'25 EReL@MIR MM-CTR challenge; docs/models.md#qin).

Two blocks, rebuilt from the challenge code's description (salmon1802/QIN):

* **Adaptive sparse target attention** — ``score = (e_i W_q)(S W_k)^T / sqrt(d) · mask``,
  ``A = ReLU(score)`` (no softmax: sparse, not normalised), ``o = (A · S W_v) W_o + e_i``; no bias
  on the projections, a single head by default.
* **QNN** (quadratic neural network) on ``x = [E_u ‖ E_c ‖ e_t ‖ e_i ‖ o (‖ o_t)]``; per layer
  ``h = Dropout(x W + b)`` split into R rows, ``x' = x ⊙ Σ_r h_r``, then BN → PReLU → Dropout →
  ``+ x``; a final linear logit.

For TIR the trigger embedding e_t joins the QNN input, and ``model.qin.trigger_attention`` adds a
second attention read with e_t as the query (run once per distinct request) **[X]**.
"""
from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from tirec.features.config_io import Checks, is_finite
from tirec.compat import keras
from tirec.features.spec import FeatureSpec
from tirec.models.base import FeatureEmbedder, TirModel, ctr_tower, warn_shared_unread
from tirec.models.config import ModelConfig
from tirec.models.layers._common import check_positive_int, sequence_mask
from tirec.models.layers.normalizers import attention_weights
from tirec.models.registry import register_model

HEADS = ("linear", "tower")


@dataclasses.dataclass(frozen=True)
class QinConfig:
    """QIN's own settings, the ``model.qin`` config section (docs/models.md#qin). The defaults
    are the challenge code's; its training settings (Adam 2e-3, embedding width 128, batch
    8192) are not forced: ``model.emb_dim`` and ``train.*`` apply as for every model.

    Args:
      att_dim: the attention width d; 0 (default) = 2 x the item embedding width D, as in the code.
      att_heads: heads of the target attention; must divide the width. 1 (default), as in the
        code (single-headed despite its class name).
      trigger_in_qnn: the trigger embedding e_t joins the QNN's feature embeddings (true, the
        TIR use **[X]**); false: the code's input, without the trigger (it still reaches the
        model through ``trigger_attention``, when that is on).
      trigger_attention: a second attention read of the history with the trigger as query,
        its output o_t joining the QNN input **[X]**.
      num_layers: QNN layers.
      num_row: R, the rows of each quadratic layer's projection (x' = x ⊙ Σ_r h_r).
      dropout: QNN dropout (on h and after each PReLU, as in the code).
      batch_norm: BatchNormalization in each QNN layer (statistics synchronised over replicas).
      head: ``linear`` (default, the code's: one Dense to the logit) or ``tower`` (the common
        ``model.tower`` MLP on the QNN output, the tower every other model has) **[X]**.
    """

    att_dim: int = 0
    att_heads: int = 1
    trigger_in_qnn: bool = True
    trigger_attention: bool = False
    num_layers: int = 4
    num_row: int = 4
    dropout: float = 0.1
    batch_norm: bool = True
    head: str = "linear"

    def __post_init__(self) -> None:
        check = Checks("model.qin", self)
        check.counts("att_dim", least=0, note=" (0 = 2 x the item width)")
        check.counts("att_heads", "num_layers", "num_row")
        if self.att_dim and self.att_dim % self.att_heads:
            check.bad("att_dim", f"must be divisible by att_heads={self.att_heads}")
        check.flags("trigger_in_qnn", "trigger_attention", "batch_norm")
        if not is_finite(self.dropout) or not 0.0 <= self.dropout < 1.0:
            check.bad("dropout", "must be in [0, 1)")
        check.one_of("head", HEADS)


@keras.utils.register_keras_serializable(package="tirec")
class QinAttention(keras.layers.Layer):
    """QIN's adaptive sparse target attention (docs/models.md#qin-attention). Per head h
    (``d_h = units / heads``)::

        A_h = ReLU((q W_h^Q)(K W_h^K)^T / sqrt(d_h)) at real positions, 0 at padded ones
        o   = [A_1 K W_1^V ‖ ... ‖ A_H K W_H^V] W^O + b^O + q

    No bias on the Q, K, V projections; the weights are not normalised, so a row may put weight
    nowhere (and a row without a real position reads ``b^O + q``). The query is folded into the
    key projection and the keys are pooled before the value projection (exact: no biases), so a
    batch of candidates against the same history forms no ``[B, L, units]`` tensor.

    Args:
      units: attention width d.
      heads: heads; must divide ``units``.
      **kwargs: base ``Layer`` arguments.

    Call arguments:
      query: ``[B, D]``. keys: ``[B, L, dk]``. mask: ``[B, L]`` bool or None.
      return_scores: also return the float32 weights ``[B, heads, L]``.

    Output shape:
      ``[B, D]`` (the query's width: the residual adds the query).
    """

    def __init__(self, units: int, heads: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.units = check_positive_int("QinAttention", "units", units)
        self.heads = check_positive_int("QinAttention", "heads", heads)
        if self.units % self.heads:
            raise ValueError(f"QinAttention: `heads` must divide units={self.units}. Received: heads={heads!r}")
        self.query_dense = keras.layers.Dense(self.units, use_bias=False, name="query")
        self.key_dense = keras.layers.Dense(self.units, use_bias=False, name="key")
        self.value_dense = keras.layers.Dense(self.units, use_bias=False, name="value")
        self.output_dense = None

    def build(self, input_shape):
        query_dim = int(input_shape[-1])
        # made here (the query's width is known now) under this layer's policy, not the global one
        self.output_dense = keras.layers.Dense(query_dim, name="output", dtype=self.dtype_policy)
        super().build(input_shape)

    def call(self, query, keys, mask=None, return_scores=False):
        dtype, heads, dh = self.compute_dtype, self.heads, self.units // self.heads
        query, keys = tf.cast(query, dtype), tf.cast(keys, dtype)
        mask = sequence_mask(mask, keys)
        key_dim = keys.shape[-1]
        for dense in (self.key_dense, self.value_dense):
            if not dense.built:
                dense(tf.zeros([0, key_dim], dtype))
        q = tf.reshape(self.query_dense(query), [-1, heads, dh]) * tf.cast(1.0 / math.sqrt(dh), dtype)
        w_k = tf.reshape(tf.cast(self.key_dense.kernel, dtype), [key_dim, heads, dh])
        scores = tf.einsum("bhd,bld->bhl", tf.einsum("bhe,dhe->bhd", q, w_k), keys)  # [B, H, L]
        weights = attention_weights(scores, mask[:, None, :], "relu")  # float32, 0 at padding
        pooled = tf.matmul(tf.cast(weights, dtype), keys)  # [B, H, dk]
        w_v = tf.reshape(tf.cast(self.value_dense.kernel, dtype), [key_dim, heads, dh])
        values = tf.reshape(tf.einsum("bhd,dhe->bhe", pooled, w_v), [-1, self.units])
        output = self.output_dense(values) + query
        return (output, weights) if return_scores else output

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "units": self.units, "heads": self.heads}


@keras.utils.register_keras_serializable(package="tirec")
class QuadraticNetwork(keras.layers.Layer):
    """QIN's QNN body (docs/models.md#qnn): ``num_layers`` quadratic layers on ``x`` [B, n]::

        h  = Dropout(x W + b) ∈ R^{R×n}        (W: n x R·n, rows h_1..h_R)
        x' = x ⊙ Σ_r h_r
        x  = x + Dropout(PReLU(BN(x')))

    BN (with ``batch_norm``) normalises with the batch's statistics in training (all replicas'
    rows together: ``synchronized``) and with moving averages (momentum 0.9, ε = 1e-5, PyTorch's
    defaults as in the code) at inference. PReLU has one slope per layer, starting at 0.25.

    Args:
      num_layers: quadratic layers. num_row: R. dropout: rate of both dropouts.
      batch_norm: use BN. **kwargs: base ``Layer`` arguments.

    Output shape: ``[B, n]``, the input's.
    """

    def __init__(self, num_layers: int = 4, num_row: int = 4, dropout: float = 0.1,
                 batch_norm: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.num_layers = check_positive_int("QuadraticNetwork", "num_layers", num_layers)
        self.num_row = check_positive_int("QuadraticNetwork", "num_row", num_row)
        self.dropout, self.batch_norm = float(dropout), bool(batch_norm)
        self.linears, self.norms, self.prelus, self.drops = [], [], [], []

    def build(self, input_shape):
        n = int(input_shape[-1])
        policy = self.dtype_policy  # the sublayers made here take this layer's policy, not the global one
        for i in range(self.num_layers):
            self.linears.append(keras.layers.Dense(n * self.num_row, name=f"quadratic_{i}", dtype=policy))
            if self.batch_norm:
                self.norms.append(keras.layers.BatchNormalization(
                    momentum=0.9, epsilon=1e-5, synchronized=True, name=f"bn_{i}", dtype=policy))
            self.prelus.append(keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25),
                                                  shared_axes=[1], name=f"prelu_{i}", dtype=policy))
        self.drops = [keras.layers.Dropout(self.dropout, dtype=policy) for _ in range(2)] if self.dropout > 0 else []
        super().build(input_shape)

    def call(self, x, training=False):
        x = tf.cast(x, self.compute_dtype)
        n = x.shape[-1]
        for i in range(self.num_layers):
            h = self.linears[i](x)
            if self.drops:
                h = self.drops[0](h, training=training)
            y = x * tf.reduce_sum(tf.reshape(h, [-1, self.num_row, n]), axis=1)
            if self.batch_norm:
                y = self.norms[i](y, training=training)
            y = self.prelus[i](y)
            if self.drops:
                y = self.drops[1](y, training=training)
            x = x + y
        return x

    def get_config(self):
        return {**super().get_config(), "num_layers": self.num_layers, "num_row": self.num_row,
                "dropout": self.dropout, "batch_norm": self.batch_norm}


@keras.utils.register_keras_serializable(package="tirec")
class QIN(TirModel):
    """QIN with the trigger among its feature embeddings (``trigger_in_qnn``, docs/models.md#qin).

    Inputs: the raw feature dict of a batch (see ``tirec.models.base.model_input_names``).
    Outputs: ``{"ctr": [B, 1]}`` click probability, float32.
    """

    shared_unread = ("din_hidden", "hist_buckets")  # it has no DIN attention unit

    def __init__(self, spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int,
                 **kwargs):
        super().__init__(spec, model_config, num_items, item_dim, **kwargs)
        c, q = model_config, model_config.section("qin")
        self.qin_config = q
        self.embed = FeatureEmbedder(spec.to_json(), c.emb_dim, c.table_shards, name="embed")
        units = q.att_dim or 2 * self.embed.item_dim
        if units % q.att_heads:
            raise ValueError(f"model.qin.att_heads: must divide the attention width {units} "
                             f"(model.qin.att_dim=0: 2 x the item width); received {q.att_heads}")
        self.target_att = QinAttention(units, q.att_heads, name="target_attention")
        self.trigger_att = (QinAttention(units, q.att_heads, name="trigger_attention")
                            if q.trigger_attention else None)
        self.qnn = QuadraticNetwork(q.num_layers, q.num_row, q.dropout, q.batch_norm, name="qnn")
        self.head = (keras.layers.Dense(1, name="head") if q.head == "linear"
                     else ctr_tower(c))
        if q.head == "linear":
            warn_shared_unread(c, ("tower", "activation", "dropout"), "QIN with model.qin.head=linear")

    def forward(self, inputs, training=False):
        rows, expand = self.request_rows(inputs)
        r = self.embed.request(rows)  # once per distinct request (model.request_dedup)
        e = self.embed.impression(inputs)
        o = self.target_att(e["target"], expand(r["hist"]), expand(r["mask"]))
        parts = [expand(r["user"]), e["context"]]
        parts += [expand(r["trigger"])] if self.qin_config.trigger_in_qnn else []
        parts += [e["target"], o]
        if self.trigger_att is not None:
            parts.append(expand(self.trigger_att(r["trigger"], r["hist"], r["mask"])))
        x = self.qnn(tf.concat([tf.cast(p, self.layer_dtype) for p in parts], axis=-1), training=training)
        logit = self.head(x, training=training)
        return {"ctr": tf.sigmoid(tf.cast(logit, tf.float32))}  # float32 under mixed precision too


@register_model("qin", QinConfig,
                description="QIN (WWW'25 MM-CTR): ReLU sparse target attention and a quadratic network")
def build_qin(spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int) -> QIN:
    return QIN(spec, model_config, num_items, item_dim, name="qin")
