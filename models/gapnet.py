"""GAP-Net (reconstructed) (arXiv 2601.07613): triple-gated attention over real-time, short-term
and long-term behaviour views (docs/models.md#gapnet).

The paper's full text is not available; this is the reconstruction of docs/models.md#gapnet,
and every report calls the model "GAP-Net (reconstructed)". Modules, each with a switch of
:class:`GapNetConfig` (the ``model.gapnet`` config section):

* **Views** — ``rt`` (real-time clicks, trigger first), ``st`` (the records' ``hist``) and
  ``lt`` (long-term). Records without ``rt`` get it cut from ``hist`` (its ``realtime_cut``
  most recent behaviours); a view the records lack otherwise is left out of the cascade. The
  build logs which views are real, cut or absent (docs/models.md#gap-net-views).
* **ASGA** (micro) — PAFS, a SwiGLU sifting block (one for queries, one shared by every
  view's items), then per view a multi-head target attention with a ``softmax``, ``entmax15``,
  ``sparsemax`` or ``relu`` normaliser and the query-guided output gate QAOG
  (docs/models.md#asga).
* **GCQC** (meso) — the query starts as the target and is calibrated view after view,
  ``rt → st → lt``, by trigger-conditioned gates (docs/models.md#gcqc); off: every view reads
  with the target.
* **CGDF** (macro) — per-view context gates (sigmoid), softmax view weights, or a plain
  concatenation of the views' reads (docs/models.md#cgdf).
* **Prediction** — ``σ(Tower([E_u ‖ E_c ‖ e_target ‖ e_trigger ‖ f ‖ q_last ‖ v_din]))``, with
  ``v_din`` DIN's attention read of the short-term view (``din_read``, [X]).

Speed (same outputs up to float rounding, docs/models.md#gap-net-speed): with
``model.request_dedup`` the views' items are sifted once per distinct item and each view is
read once per request by all its candidates (their queries side by side); each view's attention
runs on length groups of rows (``model.hist_buckets``). Outputs ``{"ctr": [B, 1]}``,
float32 under mixed precision too.
"""
from __future__ import annotations

import dataclasses
import logging

import tensorflow as tf

from tirec.features.config_io import Checks
from tirec.compat import keras
from tirec.features.spec import HISTORY, LONG_TERM, REALTIME, FeatureSpec
from tirec.models.base import FeatureEmbedder, TirModel, ctr_tower, din_attention, item_columns
from tirec.models.config import ModelConfig, warn_unread_settings
from tirec.models.layers import ASGA, PAFS, ContextGatedFusion, QueryCalibration
from tirec.models.layers.cascade import FUSIONS
from tirec.models.layers.normalizers import NORMALIZERS
from tirec.models.layers.sequence import (compact_positions, from_groups, group_slots, length_bucketed,
                                          to_groups, unique_rows)
from tirec.models.registry import register_model

log = logging.getLogger(__name__)

# The settings a switch leaves unread: PAFS' multiplier, QAOG's gate bias, the CGDF gate MLP.
UNREAD_WHEN = (("use_pafs", False, ("pafs_mult",)), ("use_qaog", False, ("gate_bias",)),
               ("cgdf", "concat", ("cgdf_hidden",)))

LABEL = "GAP-Net (reconstructed)"
# The cascade's order (most recent intent first) and the record sequence of each view.
VIEW_ORDER = (("rt", REALTIME), ("st", HISTORY), ("lt", LONG_TERM))


@dataclasses.dataclass(frozen=True)
class GapNetConfig:
    """GAP-Net's own settings, the ``model.gapnet`` config section (docs/models.md#gap-net-switches).
    The shared ones (``emb_dim``, ``tower``, ``hist_buckets``, ``request_dedup``, ...) are in the
    common ``model`` section.

    Args:
      att_units / att_heads: ASGA's attention size (and the width of each view's read).
      pafs_mult: PAFS hidden width d' over its input width d.
      use_pafs: sift the query and the views' items with PAFS before attention.
      use_qaog: the query-guided output gate after attention.
      gate_bias: QAOG's initial gate bias (1.0: σ ≈ 0.73, open).
      attention_norm: ``softmax``, ``entmax15``, ``sparsemax`` or ``relu``.
      use_gcqc: calibrate the query view after view; false: the static target query.
      cgdf: ``sigmoid`` (per-view vector gates), ``softmax`` (view weights) or ``concat``.
      cgdf_hidden: hidden widths of CGDF's gate MLPs.
      realtime_cut: on records without the ``rt`` view, the number of most recent ``hist``
        behaviours that stand in for it.
      din_read: add DIN's attention read of the short-term view (target query, un-normalised
        MLP weights over ``[q, k, q-k, q*k]``) to the tower ([X], docs/models.md#gap-net-prediction):
        without it the model does not learn on MovieLens (eval AUC ~0.49, measured).
    """

    att_units: int = 128
    att_heads: int = 4
    pafs_mult: float = 2.0
    use_pafs: bool = True
    use_qaog: bool = True
    gate_bias: float = 1.0
    attention_norm: str = "softmax"
    use_gcqc: bool = True
    cgdf: str = "sigmoid"
    cgdf_hidden: tuple[int, ...] = (64,)
    realtime_cut: int = 5
    din_read: bool = True

    def __post_init__(self) -> None:
        check = Checks("model.gapnet", self)
        check.heads()
        check.counts("realtime_cut")
        check.finite("pafs_mult", above=0)
        check.finite("gate_bias")
        check.flags("use_pafs", "use_qaog", "use_gcqc", "din_read")
        check.one_of("attention_norm", NORMALIZERS)
        check.one_of("cgdf", FUSIONS)
        check.widths("cgdf_hidden", empty="no hidden layer")


def view_plan(spec: FeatureSpec) -> tuple[tuple[str, str, str], ...]:
    """The views GAP-Net reads from records of ``spec``, in cascade order: ``(view, record
    sequence, how)`` with how = ``real`` (the records carry it) or ``cut`` (``rt`` cut from
    ``hist``). Views the records lack otherwise are left out."""
    have = spec.histories()
    plan = []
    for view, sequence in VIEW_ORDER:
        if sequence in have:
            plan.append((view, sequence, "real"))
        elif view == "rt" and HISTORY in have:
            plan.append((view, HISTORY, "cut"))
    return tuple(plan)


def describe_views(plan, spec: FeatureSpec, realtime_cut: int) -> str:
    """One line naming each view as real, cut or absent."""
    parts, seen = [], {v for v, _, _ in plan}
    for view, sequence, how in plan:
        if how == "cut":
            parts.append(f"{view}: cut from {sequence!r} (its {realtime_cut} most recent)")
        else:
            parts.append(f"{view}: {sequence!r} ({spec.histories()[sequence]})")
    parts += [f"{view}: absent (no {seq!r} sequence)" for view, seq in VIEW_ORDER if view not in seen]
    return "; ".join(parts)


@keras.utils.register_keras_serializable(package="tirec")
class GapNet(TirModel):
    """GAP-Net (reconstructed): ASGA per view, the GCQC cascade, CGDF fusion, the tower.

    Inputs: the raw feature dict of a batch (see ``tirec.models.base.model_input_names``).
    Outputs: ``{"ctr": [B, 1]}`` click probability.
    """

    def __init__(self, spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int,
                 **kwargs):
        super().__init__(spec, model_config, num_items, item_dim, **kwargs)
        c, g = model_config, model_config.section("gapnet")
        self.gapnet_config = g
        warn_unread_settings(log, "gapnet", g, UNREAD_WHEN)
        self.plan = view_plan(spec)
        if not self.plan:
            raise ValueError(f"{LABEL}: the spec has none of the behaviour sequences "
                             f"{[s for _, s in VIEW_ORDER]}; it has {list(spec.histories())}")
        log.info("%s views: %s", LABEL, describe_views(self.plan, spec, g.realtime_cut))
        self.embed = FeatureEmbedder(spec.to_json(), c.emb_dim, c.table_shards, name="embed")
        if g.use_pafs:
            self.pafs_query = PAFS(g.pafs_mult, name="pafs_query")
            self.pafs_items = PAFS(g.pafs_mult, name="pafs_items")
        self.attention = [ASGA(g.att_units, g.att_heads, norm=g.attention_norm, use_gate=g.use_qaog,
                               gate_bias=g.gate_bias, name=f"asga_{view}") for view, _, _ in self.plan]
        if g.use_gcqc:
            self.calibration = [QueryCalibration(self.embed.item_dim, name=f"gcqc_{view}")
                                for view, _, _ in self.plan]
        self.fusion = ContextGatedFusion(len(self.plan), g.att_units, mode=g.cgdf, hidden=g.cgdf_hidden,
                                         name="cgdf")
        if g.din_read:
            self.din_att = din_attention(c, "din_attention")
        self.tower = ctr_tower(c)

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(view for view, _, _ in self.plan)

    def forward(self, inputs, training=False):
        """The steps of docs/models.md#gapnet: the views sifted once per distinct request, the
        cascade per candidate, the fusion and the tower."""
        g = self.gapnet_config
        rows, index = self.request_groups(inputs)
        r = self.embed.request(rows)  # once per distinct request (model.request_dedup)
        e = self.embed.impression(inputs)
        views = self.request_views(rows, r["histories"])
        groups, expand = None, (lambda t: t)
        if index is not None:
            groups, expand = group_slots(index, tf.shape(r["user"])[0]), (lambda t: tf.gather(t, index))
        target, trigger = e["target"], expand(r["trigger"])
        query, reads = target, []
        for k, view in enumerate(self.views):
            keys, mask = views[view]
            read = self.read_view(k, query if g.use_gcqc else target, keys, mask, groups)
            reads.append(read)
            if g.use_gcqc:
                query = self.calibration[k](query, read, trigger)
        context = tf.concat([expand(r["user"]), e["context"], target, trigger], axis=-1)
        fused = self.fusion(context, reads)
        parts = [expand(r["user"]), e["context"], target, trigger, fused, query]
        if g.din_read:  # the target's DIN read of the short-term view (per candidate)
            parts.append(self.din_att(target, expand(r["hist"]), expand(r["mask"]), training=training))
        logit = self.tower(tf.concat([tf.cast(p, self.layer_dtype) for p in parts], axis=-1),
                           training=training)
        return {"ctr": tf.sigmoid(tf.cast(logit, tf.float32))}  # float32 under mixed precision too

    def request_views(self, rows, histories) -> dict:
        """``{view: (keys [U, L, D], mask [U, L])}``: each view's items, PAFS-sifted (one shared
        block), from the request-level inputs ``rows`` and their embedded sequences
        ``histories``; ``rt`` cut from ``hist`` where the plan says."""
        sifted = self.sift_items(rows, histories)
        out = {}
        for view, sequence, how in self.plan:
            keys, mask = sifted[sequence]
            if how == "cut":
                positions, lengths = compact_positions(mask, self.gapnet_config.realtime_cut)
                keys = tf.gather(keys, positions, batch_dims=1)
                mask = tf.sequence_mask(lengths, tf.shape(positions)[1])
            out[view] = (keys, mask)
        return out

    def sift_items(self, rows, histories) -> dict:
        """``{sequence: (PAFS(E_S), mask)}`` for the sequences the views read. PAFS works item
        by item: with ``model.request_dedup`` it runs once per distinct item (id and side
        fields) of the batch's sequences, all views together."""
        sequences = list(dict.fromkeys(s for _, s, _ in self.plan))
        if not self.gapnet_config.use_pafs:
            return {s: histories[s] for s in sequences}
        if not self.model_config.request_dedup:
            return {s: (self.pafs_items(histories[s][0]), histories[s][1]) for s in sequences}
        columns = [item_columns(self.spec, "history", s) for s in sequences]
        ids = [tf.concat([tf.reshape(rows[cols[i]], [-1]) for cols in columns], axis=0)
               for i in range(len(columns[0]))]
        first, index = unique_rows(ids)
        d = self.embed.item_dim
        flat = tf.concat([tf.reshape(histories[s][0], [-1, d]) for s in sequences], axis=0)
        sifted = tf.gather(self.pafs_items(tf.gather(flat, first)), index)
        sizes = [tf.size(histories[s][1]) for s in sequences]
        parts = tf.split(sifted, tf.stack(sizes), axis=0, num=len(sequences))
        return {s: (tf.reshape(part, tf.shape(histories[s][0])), histories[s][1])
                for s, part in zip(sequences, parts)}

    def read_view(self, k: int, query, keys, mask, groups=None):
        """ASGA_k(query, view) ``[B, units]``: PAFS on the query, then the gated attention.

        Args:
          query: ``[B, D]`` per candidate.
          keys, mask: the view, ``[B, L, D]`` and ``[B, L]``, or with ``groups`` one row per
            distinct request, ``[U, L, D]`` and ``[U, L]``.
          groups: None, or ``group_slots`` of the candidates' requests: the candidates' folded
            queries are laid out per request, ``[U, C * H, D]``, and each request's view is
            read once by all of them (no per-candidate copy of the view).

        The per-position pooling runs on length groups of rows (``model.hist_buckets``).
        """
        att, d = self.attention[k], keys.shape[-1]
        sifted = self.pafs_query(query) if self.gapnet_config.use_pafs else query
        if not att.built:  # its variables under its own name, before any tf.cond branch
            att(sifted[:1], keys[:1], mask[:1])
        q_keys, q_bias = att.fold_query(sifted, d)
        any_real = tf.reduce_any(mask, axis=1)
        if groups is not None:
            (slots, width), n = groups, tf.shape(keys)[0]
            q_keys = tf.reshape(to_groups(q_keys, slots, n, width), [n, width * att.heads, d])
            q_bias = tf.reshape(to_groups(q_bias, slots, n, width), [n, width * att.heads])
            any_real = tf.gather(any_real, slots[:, 0])

        def pool(rows, sequences, m):
            _, pooled, total = att.pool((rows[0], rows[1]), sequences[0], m)
            return pooled, total

        pooled, total = length_bucketed(pool, [q_keys, q_bias], [keys], mask,
                                        buckets=self.model_config.hist_buckets)
        if groups is not None:
            pooled = from_groups(tf.reshape(pooled, [n, width, att.heads, d]), slots)
            total = from_groups(tf.reshape(total, [n, width, att.heads]), slots)
        return att.project(pooled, total, sifted, any_real)


@register_model("gapnet", GapNetConfig, histories="all",
                description="GAP-Net (reconstructed, arXiv 2601.07613): gated attention over real-time, short- and long-term views")
def build_gapnet(spec: FeatureSpec, model_config: ModelConfig, num_items: int, item_dim: int) -> GapNet:
    return GapNet(spec, model_config, num_items, item_dim, name="gapnet")
