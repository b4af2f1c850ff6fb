"""Keras 2 (tf-keras) layers shared by the TIR models (docs/models.md#building-blocks).

Every layer is registered for serialization under the package ``"tirec"`` and has a complete
``get_config``, so a SavedModel reloads without ``custom_objects``. Sequence masks are explicit
call arguments: ``[B, L]`` bool (or 0/1 ints), True at real positions.

* :class:`HashedEmbedding` — raw int ids -> FarmHash bucket -> row-sharded embedding table.
* :class:`Dice` — DIN's data-adaptive activation.
* :class:`DinAttention` — DIN's un-normalised local activation unit.
* :class:`MultiHeadTargetAttention` — softmax target attention, ``[B, dq] x [B, L, dk] -> [B, out]``.
* :class:`MultiHeadSelfAttention` — Transformer self attention with residual and LayerNorm.
* :class:`GateNU` — PEPNet's gate, ``gamma * sigmoid(MLP(x))``, centred at 1.
* :class:`MLP` — the tower (optionally ending in a logit).
* :class:`PAFS` — GAP-Net's SwiGLU pre-attention sifting with residual and LayerNorm.
* :class:`ASGA` — GAP-Net's gated target attention (softmax, entmax-1.5, sparsemax or ReLU
  weights from :mod:`tirec.models.layers.normalizers`, query-guided output gate).
* :class:`QueryCalibration` — one step of GAP-Net's cascading query calibration (GCQC).
* :class:`ContextGatedFusion` — GAP-Net's context-gated fusion of several views (CGDF).
* :class:`FrozenItemTable` — a non-trainable id -> vector lookup saved with the model.

:mod:`tirec.models.layers.sequence` holds exact speed-ups for masked sequence blocks:
compaction of the real positions and length bucketing (DAIAN's explicit branch uses them).
Under a mixed precision policy the layers compute in the policy's dtype; softmaxes, Dice and
LayerNorm statistics stay float32, and embedding tables are float32 variables cast after lookup.
"""
from tirec.models.layers.asga import ASGA
from tirec.models.layers.attention import DinAttention, MultiHeadSelfAttention, MultiHeadTargetAttention
from tirec.models.layers.cascade import ContextGatedFusion, QueryCalibration
from tirec.models.layers.dice import Dice
from tirec.models.layers.embedding import HashedEmbedding, shard_sizes
from tirec.models.layers.gate import GateNU
from tirec.models.layers.item_table import FrozenItemTable
from tirec.models.layers.mlp import MLP
from tirec.models.layers.pafs import PAFS

__all__ = [
    "ASGA",
    "ContextGatedFusion",
    "Dice",
    "DinAttention",
    "FrozenItemTable",
    "GateNU",
    "HashedEmbedding",
    "MLP",
    "MultiHeadSelfAttention",
    "MultiHeadTargetAttention",
    "PAFS",
    "QueryCalibration",
    "shard_sizes",
]
