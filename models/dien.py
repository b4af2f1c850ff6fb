"""DIEN (Zhou et al., AAAI 2019): interest extractor GRU with an auxiliary loss, and interest
evolving by target attention and AUGRU (docs/models.md#dien).

* **Interest extractor** — a GRU over the behaviours from the oldest to the newest (the records
  hold them most recent first: the real positions are moved to the front and reversed), run
  once per distinct request (``model.request_dedup``); padded steps leave the state unchanged.
* **Auxiliary loss** (training only) — each state h_k scores the next real behaviour e_{k+1}
  against a sampled negative ê (:class:`DienConfig`: ``negatives``, ``aux_score``); the mean
  over the batch's (row, step) pairs, weighted by ``aux_weight``, is added to the step's
  objective with ``add_loss``, so ``tasks.replica_objective`` scales it for the replicas with
  the rest. Serving and evaluation never compute it.
* **Interest evolving** — per candidate, a_k = softmax over the real steps of h_k W e_i, and an
  AUGRU (update gate scaled by a_k) whose state after the last real step, h'_L, joins the tower:
  ``σ(Tower([E_u ‖ E_c ‖ e_i ‖ e_t ‖ h'_L]))`` (e_t with ``trigger_in_tower``).

Outputs ``{"ctr": [B, 1]}``, float32 under mixed precision too.
"""
from __future__ import annotations

import dataclasses
import logging

import tensorflow as tf

from tirec.features.config_io import Checks
from tirec.compat import keras
from tirec.features.spec import FeatureSpec
from tirec.models.base import FeatureEmbedder, TirModel, ctr_tower, history_sum, item_columns
from tirec.models.config import ModelConfig, warn_unread_settings
from tirec.models.layers import MLP
from tirec.models.layers.gru import GATE_SCALES, InterestEvolving, InterestGru
from tirec.models.layers.sequence import compact_positions
from tirec.models.registry import register_model
from tirec.models.tasks import global_batch_mean

log = logging.getLogger(__name__)

# The settings a switch leaves unread: no auxiliary loss (aux_weight 0) reads none of its own,
# the dot score no MLP.
UNREAD_WHEN = (("aux_weight", 0, ("negatives", "negatives_outside_history", "aux_score", "aux_hidden")),
               ("aux_score", "dot", ("aux_hidden",)))

NEGATIVES = ("batch", "table")
AUX_SCORES = ("mlp", "dot")


@dataclasses.dataclass(frozen=True)
class DienConfig:
    """DIEN's own settings, the ``model.dien`` config section (docs/models.md#dien-switches).

    Args:
      gru_units: width of the interest states (extractor GRU and AUGRU); 0 (default) = D, the
        width of one item embedding, as in the paper.
      aux_weight: α, the auxiliary loss weight (0 = off: no auxiliary head is built, so its
        variables neither exist nor count in the parameters).
      negatives: where ê comes from: ``batch`` (default), a distinct target item of the
        replica's batch (id and side fields); ``table``, a uniform id of the frozen item table
        with the positive's side fields. Never the positive's id.
      negatives_outside_history: a drawn negative that is one of the row's real behaviours is
        not used (that step keeps its positive term alone), as the paper asks (ê not in the
        user's history). Default false: the history is not checked [X] (a draw rarely hits one
        of at most L behaviours; the results tables ran without the check).
      aux_score: σ_aux: ``mlp`` (default, the reference code's MLP on [h_k ‖ e], hidden widths
        ``aux_hidden``, sigmoid) or ``dot`` (the paper's inner product h_k · e; needs
        gru_units = D).
      aux_hidden: hidden widths of the ``mlp`` σ_aux.
      trigger_in_tower: e_t joins the tower input (TIR use).
      gate_scale: the AUGRU's update-gate scale: ``softmax`` (default, the paper's a_k) or
        ``count`` (min(1, n·a_k) for n real steps; uniform attention = a plain GRU).
      history_sum: also feed the tower Σ_k e_k and e_i ⊙ Σ_k e_k over the real behaviours,
        as the reference code does (default true, [X]: without it DIEN did not learn on MovieLens,
        eval AUC 0.485, docs/models.md#dien-prediction).
      recurrent: the GRU extractor and the AUGRU (default); false, an ablation (DIEN without
        its GRUs): h_k = e_k and the tower reads the attention pooling Σ_k a_k e_k instead of
        h'_n. It has no interest states, so it needs aux_weight = 0 and gru_units = 0.
    """

    gru_units: int = 0
    aux_weight: float = 1.0
    negatives: str = "batch"
    negatives_outside_history: bool = False
    aux_score: str = "mlp"
    aux_hidden: tuple[int, ...] = (100, 50)
    trigger_in_tower: bool = True
    gate_scale: str = "softmax"
    history_sum: bool = True
    recurrent: bool = True

    def __post_init__(self) -> None:
        check = Checks("model.dien", self)
        check.counts("gru_units", least=0, note=" (0 = the item embedding width D)")
        check.finite("aux_weight", least=0, note=" (0 = no auxiliary loss)")
        check.one_of("negatives", NEGATIVES)
        check.one_of("aux_score", AUX_SCORES)
        check.widths("aux_hidden")
        check.flags("trigger_in_tower", "history_sum", "recurrent", "negatives_outside_history")
        if not self.recurrent and (self.aux_weight > 0 or self.gru_units):
            raise ValueError(f"model.dien.recurrent=false has no interest states: it needs model.dien.aux_weight=0 "
                             f"and model.dien.gru_units=0; received aux_weight={self.aux_weight!r}, "
                             f"gru_units={self.gru_units!r}")
        check.one_of("gate_scale", GATE_SCALES)


def _is_training(training) -> bool:
    """Whether a Python or constant-tensor ``training`` flag is true (the auxiliary loss is
    built only for a training step)."""
    if training is None or isinstance(training, (bool, int)):
        return bool(training)
    return bool(tf.get_static_value(training))


def _hash_index(keys: tf.Tensor, size) -> tf.Tensor:
    """A deterministic index in ``[0, size)`` per row of int64 ``keys`` ``[N, k]`` (FarmHash
    fingerprint of the row), the same on every device and however the batch is split."""
    digest = tf.cast(tf.fingerprint(keys), tf.int64)[:, :7]  # 56 bits: stays non-negative
    value = tf.reduce_sum(digest * tf.constant([1 << (8 * i) for i in range(7)], tf.int64), axis=1)
    return value % tf.cast(size, tf.int64)


def _in_history(drawn, ids, real) -> tf.Tensor:
    """bool ``[U, K]``: whether each drawn id ``[U, K]`` is one of its row's real ids ``[U, W]``."""
    same = tf.equal(drawn[:, :, None], tf.cast(ids, drawn.dtype)[:, None, :])
    return tf.reduce_any(same & real[:, None, :], axis=-1)


@keras.utils.register_keras_serializable(package="tirec")
class DIEN(TirModel):
    """DIEN with the trigger in the tower.

    Inputs: the raw feature dict of a batch (see ``tirec.models.base.model_input_names``).
    Outputs: ``{"ctr": [B, 1]}`` click probability. In training, the auxiliary loss
    ``aux_weight · L_aux`` is added with ``add_loss`` and logged as ``aux_loss`` (unweighted).
    """

    shared_unread = ("din_hidden", "hist_buckets")  # it has no DIN attention unit

    def __init__(self, spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int,
                 **kwargs):
        super().__init__(spec, model_config, num_items, item_dim, **kwargs)
        c, d = model_config, model_config.section("dien")
        self.dien_config = d
        warn_unread_settings(log, "dien", d, UNREAD_WHEN)
        self.embed = FeatureEmbedder(spec.to_json(), c.emb_dim, c.table_shards, name="embed")
        width = self.embed.item_dim
        units = d.gru_units or width
        if d.aux_score == "dot" and d.aux_weight > 0 and units != width:
            raise ValueError(f"model.dien.aux_score=dot scores h_k · e, so model.dien.gru_units must be 0 or "
                             f"the item embedding width D={width}; received gru_units={d.gru_units}")
        if d.negatives == "table" and d.aux_weight > 0 and self.num_items < 2:
            raise ValueError(f"model.dien.negatives=table samples from the frozen item table, which has "
                             f"{self.num_items} item(s); it needs at least 2 (or use negatives=batch)")
        history = next(iter(spec.histories()))
        self._hist_id = item_columns(spec, "history", history)[0]
        self._target_id = item_columns(spec, "target")[0]
        self._id_table = spec.select(name=self._hist_id)[0].table
        self.extractor = InterestGru(units, name="interest_extractor") if d.recurrent else None
        self.evolving = InterestEvolving(units, gate_scale=d.gate_scale, recurrent=d.recurrent,
                                         name="interest_evolving")
        self.aux_mlp = (MLP(d.aux_hidden, activation="sigmoid", output_logit=True, name="aux_mlp")
                        if d.aux_score == "mlp" and d.aux_weight > 0 else None)
        self.tower = ctr_tower(c)
        self.aux_tracker = keras.metrics.Mean(name="aux_loss", dtype="float32")

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, inputs, training=False):
        rows, index = self.request_groups(inputs)
        expand = (lambda t: t) if index is None else (lambda t: tf.gather(t, index))
        r = self.embed.request(rows)  # once per distinct request (model.request_dedup)
        e = self.embed.impression(inputs)
        items, ids, real, lengths = self.oldest_first(r["hist"], rows[self._hist_id], r["mask"])
        # [U, W, H], once per distinct request; h_k = e_k without the GRUs (model.dien.recurrent)
        states = items if self.extractor is None else self.extractor(items, mask=real)
        if self.aux_mlp is not None and not self.aux_mlp.built:  # its variables exist before a step
            self.aux_mlp(tf.zeros([1, states.shape[-1] + items.shape[-1]], states.dtype))
        if _is_training(training) and self.dien_config.aux_weight > 0:
            loss = self.auxiliary_loss(states, items, ids, lengths, self._request_counts(index, lengths),
                                       e, inputs)
            self.aux_tracker.update_state(loss)
            self.add_loss(float(self.dien_config.aux_weight) * loss)
        evolved = self.evolving(e["target"], expand(states), expand(real))
        parts = [expand(r["user"]), e["context"], e["target"]]
        parts += [expand(r["trigger"])] if self.dien_config.trigger_in_tower else []
        parts += history_sum(r, e["target"], expand) if self.dien_config.history_sum else []
        logit = self.tower(tf.concat(parts + [evolved], axis=-1), training=training)
        return {"ctr": tf.sigmoid(tf.cast(logit, tf.float32))}  # float32 under mixed precision too

    @staticmethod
    def oldest_first(hist, ids, mask):
        """The behaviours in time order: ``(items [U, W, D], raw ids [U, W], mask [U, W],
        lengths [U])`` with each row's real positions first, oldest to newest (the records hold
        them most recent first), then padding; W is the batch's longest history (at least 1)."""
        positions, lengths = compact_positions(mask)
        positions = tf.reverse_sequence(positions, lengths, seq_axis=1, batch_axis=0)
        width = tf.shape(positions)[1]
        real = tf.sequence_mask(lengths, width)
        return (tf.gather(hist, positions, batch_dims=1), tf.gather(ids, positions, batch_dims=1),
                real, lengths)

    @staticmethod
    def _request_counts(index, lengths):
        """Rows of the batch per distinct request (1 each without ``model.request_dedup``)."""
        if index is None:
            return tf.ones_like(lengths, tf.float32)
        return tf.math.unsorted_segment_sum(tf.ones_like(index, tf.float32), index, tf.shape(lengths)[0])

    # ---- auxiliary loss -----------------------------------------------------------------------
    def auxiliary_loss(self, states, items, ids, lengths, counts, e, inputs):
        """L_aux over the batch: the mean over every (row, step k) with a real next behaviour of
        ``softplus(-s(h_k, e_{k+1})) + softplus(s(h_k, ê_{k+1}))`` = ``-log σ_aux(pos) -
        log(1 - σ_aux(neg))``, s the logit of σ_aux; each request counts once per row of the
        batch it has (the same mean with or without ``model.request_dedup``)."""
        h, positive, positive_ids = states[:, :-1], items[:, 1:], ids[:, 1:]
        pairs = tf.sequence_mask(lengths - 1, tf.shape(h)[1])  # k + 1 is real
        negative, has_negative = self.negatives(positive, positive_ids, ids[:, :-1], e, inputs,
                                                history=(ids, tf.sequence_mask(lengths, tf.shape(ids)[1])))
        terms = (tf.nn.softplus(-self.aux_logit(h, positive))
                 + tf.where(has_negative, tf.nn.softplus(self.aux_logit(h, negative)), 0.0))
        pairs_f = tf.cast(pairs, tf.float32)
        per_request = tf.reduce_sum(tf.where(pairs, terms, 0.0), axis=1)
        steps = tf.reduce_sum(pairs_f, axis=1)
        return global_batch_mean(tf.math.divide_no_nan(per_request, steps), counts * steps)

    def aux_logit(self, h, e):
        """The logit of σ_aux(h, e), float32 ``[U, K]``: the MLP on ``[h ‖ e]`` or ``h · e``."""
        if self.aux_mlp is None:
            return tf.cast(tf.reduce_sum(h * tf.cast(e, h.dtype), axis=-1), tf.float32)
        x = tf.concat([h, tf.cast(e, h.dtype)], axis=-1)
        return tf.cast(self.aux_mlp(x)[..., 0], tf.float32)

    def _salt(self):
        """The optimizer's step count (0 before ``compile``): new negatives at every step."""
        optimizer = getattr(self, "optimizer", None)
        return tf.cast(optimizer.iterations, tf.int64) if optimizer is not None else tf.constant(0, tf.int64)

    def negatives(self, positive, positive_ids, previous_ids, e, inputs, history=None):
        """``(ê [U, K, D], usable [U, K] bool)``: one negative per (request, step), drawn by a
        hash of (positive id, previous behaviour's id, step, optimizer step), never the
        positive's id: the same draws on one device and on any split over replicas. With
        ``negatives_outside_history`` and ``history`` = (the rows' ids ``[U, W]``, their bool
        mask), a draw among a row's real behaviours is not usable either.

        ``batch``: a distinct target item of the replica's batch (unusable when the batch has
        only the positive's item); ``table``: an id of the frozen item table, embedded with the
        positive's side fields.
        """
        n, k = tf.shape(positive_ids)[0], tf.shape(positive_ids)[1]
        steps = tf.broadcast_to(tf.range(k, dtype=tf.int64)[None, :], [n, k])
        keys = tf.stack([tf.cast(positive_ids, tf.int64), tf.cast(previous_ids, tf.int64), steps,
                         tf.broadcast_to(self._salt(), [n, k])], axis=-1)
        keys = tf.reshape(keys, [-1, 4])
        flat_pos = tf.reshape(tf.cast(positive_ids, tf.int64), [-1])
        if self.dien_config.negatives == "table":
            pool = tf.convert_to_tensor(self.items.item_ids)
            embs = None
        else:
            pool, slot = tf.unique(tf.reshape(tf.cast(inputs[self._target_id], tf.int64), [-1]))
            first = tf.math.unsorted_segment_min(tf.range(tf.shape(slot)[0]), slot, tf.shape(pool)[0])
            embs = tf.gather(e["target"], first)
        size = tf.shape(pool, out_type=tf.int64)[0]
        pick = _hash_index(keys, size)
        pick = tf.where(tf.gather(pool, pick) == flat_pos, (pick + 1) % size, pick)
        usable = tf.reshape(tf.gather(pool, pick) != flat_pos, [n, k])
        if history is not None and self.dien_config.negatives_outside_history:
            usable &= ~_in_history(tf.reshape(tf.gather(pool, pick), [n, k]), *history)
        if embs is not None:
            return tf.reshape(tf.gather(embs, pick), tf.shape(positive)), usable
        id_part = self.embed.tables[self._id_table](tf.reshape(tf.gather(pool, pick), [n, k]))
        dim = self.model_config.emb_dim
        return tf.concat([tf.cast(id_part, positive.dtype), positive[..., dim:]], axis=-1), usable

    # ---- metrics ------------------------------------------------------------------------------
    @property
    def metrics(self):
        return super().metrics + [self.aux_tracker]

    def test_step(self, data):
        logs = super().test_step(data)
        logs.pop(self.aux_tracker.name, None)  # a training loss: validation does not compute it
        return logs


@register_model("dien", DienConfig,
                description="DIEN (AAAI 2019): GRU interest extractor with auxiliary loss, AUGRU "
                            "interest evolving, trigger in the tower")
def build_dien(spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int) -> DIEN:
    return DIEN(spec, model_config, num_items, item_dim, name="dien")
