"""Typed configuration of models and training (the ``model:`` and ``train:`` config sections).

Defaults follow the DAIAN paper (docs/models.md#optimisers-and-defaults): batch 4096, Adagrad
lr 0.05, tower 512-256-128, attention 128 units x 4 heads, sequence length 50 (from the
FeatureSpec).
"""
from __future__ import annotations

import dataclasses

STRATEGIES = ("default", "mirrored", "multiworker", "ps")
PRECISIONS = ("float32", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture settings shared by all registered models.

    Args:
      name: registered model name (``din``, ``daian``).
      emb_dim: width of every id embedding (per field); an item is ``[id ‖ side fields]``.
      table_shards: row shards per embedding table (ParameterServer: the partitioner decides).
      din_hidden: DIN attention FFN sizes.
      att_units / att_heads: multi-head attention size.
      tower: MLP tower sizes.
      activation: ``relu`` or ``dice`` in the tower.
      dropout: tower dropout.
      l2: weight of an L2 penalty ``l2 * sum(W**2)`` on the kernels of the model's Dense
        layers (tower, attention, gate, UIM and I2E projections; not on biases, embedding
        tables or the frozen item table), summed over the kernels the current stage trains and
        added to the stage's data loss. 0 (default) = off.
      use_uim / use_die / use_sein: DAIAN ablation switches (docs/models.md#ablation-switches).
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
      explicit_len: [X] cap on the explicit subsequence ``S'``
        (docs/models.md#explicit-intent-subsequence, ``L' = 50``): keep its first (most
        recent) ``explicit_len`` behaviours. At or above the sequence length it changes nothing.
      hist_buckets: how DIN attention (DIN's, DAIAN's and the UIM's ``din`` pooling) runs over
        the behaviour sequence; the outputs are the same up to float rounding: ``0`` on the
        padded sequence, ``k >= 1`` on the real behaviours compacted into ``k`` groups of
        samples of similar length (faster when histories are shorter than ``L``; not used with
        ``activation=dice``, whose statistics would become per group).
      explicit_buckets: how the explicit branch (MHSA + MHTA over ``S'``) runs; the outputs
        are the same up to float rounding: ``0`` on the padded history (the straightforward
        path), ``1`` on ``S'`` compacted to the batch's longest, ``k > 1`` on ``k`` groups of
        samples of similar ``|S'|`` (the fastest; see ``tirec.models.layers.sequence``).
      request_dedup: run the request-level blocks (history and user embeddings; DAIAN's UIM,
        I2E and explicit self-attention) once per distinct request of the batch and gather
        their outputs back to the candidates; the outputs are the same up to float rounding.
        The saving grows with the candidates per request a batch holds: many with
        ``train.shuffle_block`` > 1 (the default) or ``train.shuffle_buffer=0``, few with a
        record-level shuffle (``train.shuffle_block=1``).
    """

    name: str = "daian"
    emb_dim: int = 16
    table_shards: int = 1
    din_hidden: tuple[int, ...] = (80, 40)
    att_units: int = 128
    att_heads: int = 4
    tower: tuple[int, ...] = (512, 256, 128)
    activation: str = "relu"
    dropout: float = 0.0
    l2: float = 0.0
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
    explicit_len: int = 50
    explicit_buckets: int = 16
    hist_buckets: int = 16
    request_dedup: bool = True

    def validate(self) -> None:
        def bad(field, why):
            raise ValueError(f"model.{field}: {why}; received {getattr(self, field)!r}")

        if self.emb_dim < 1:
            bad("emb_dim", "must be >= 1")
        if self.table_shards < 1:
            bad("table_shards", "must be >= 1")
        if self.att_units % self.att_heads:
            bad("att_units", f"must be divisible by att_heads={self.att_heads}")
        if self.activation not in ("relu", "dice"):
            bad("activation", "must be relu or dice")
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "must be in [0, 1)")
        if isinstance(self.l2, bool) or not isinstance(self.l2, (int, float)) or not 0.0 <= self.l2 < float("inf"):
            bad("l2", "must be a finite number >= 0 (0 = off)")
        if self.uim_attention not in ("din", "mhta"):
            bad("uim_attention", "must be din or mhta")
        if self.i2e_fusion not in ("concat", "add"):
            bad("i2e_fusion", "must be concat or add")
        if self.sim_fusion not in ("norm_ratio", "additive"):
            bad("sim_fusion", "must be norm_ratio or additive")
        if self.gate_inputs not in ("intent", "intent_interest"):
            bad("gate_inputs", "must be intent or intent_interest")
        if self.sim_bins < 2:
            bad("sim_bins", "must be >= 2")
        if not self.tower:
            bad("tower", "needs at least one layer")
        if isinstance(self.explicit_len, bool) or not isinstance(self.explicit_len, int) \
                or self.explicit_len < 1:
            bad("explicit_len", "must be an integer >= 1")
        for field in ("explicit_buckets", "hist_buckets"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                bad(field, "must be an integer >= 0 (0 = no compaction)")
        if not isinstance(self.request_dedup, bool):
            bad("request_dedup", "must be true or false")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Args:
      batch_size: global batch size (split over replicas).
      epochs: epochs per stage (DAIAN trains three stages; ``three_stage=false`` one).
      learning_rate: Adagrad learning rate.
      optimizer: ``adagrad`` or ``adam``.
      three_stage: DAIAN's UIM pretrain -> DIE pretrain -> joint schedule
        (docs/models.md#three-training-stages).
      uim_lr_scale: the UIM's learning-rate factor in stage 3.
      strategy: ``default``, ``mirrored``, ``multiworker`` (TF_CONFIG) or ``ps`` (TF_CONFIG).
      cpu_replicas: logical CPU devices for ``mirrored`` when there is no GPU. 0 (default)
        with ``mirrored`` on a machine without a GPU is an error naming ``--cpu-replicas``
        (1 = knowingly one replica); ignored, with a warning, when there are GPUs.
      steps_per_epoch: cap on steps per epoch (0 = the whole data; ``ps`` needs a value).
      shuffle_buffer: records shuffled before batching (0 = off).
      shuffle_block: consecutive records of a shard that are shuffled as one unit (1 = each
        record alone). The pipeline writes a request's candidates next to each other, so with
        blocks a batch holds a few hundred whole requests instead of thousands of single
        candidates, and ``model.request_dedup`` runs the request-level blocks far fewer times
        (``benchmarks/bench_train.py``: DAIAN 755 -> 426 ms/step against blocks of 1);
        batches hold fewer distinct users.
      early_stopping_patience: epochs without gain on the ``valid`` split (AUC; DAIAN's
        stage 1: intent KL loss) before a stage stops and keeps its best epoch's weights
        (0 = off). Needs the pipeline's ``valid`` split; never selects on ``eval``.
      backup_every_steps: BackupAndRestore frequency; a killed run resumes from the last backup
        step of the interrupted epoch.
      seed: random seed.
      precision: ``float32``, or ``mixed_bfloat16`` (the Keras mixed precision policy: layers
        compute in bfloat16, so matmuls use AMX on CPUs that have it and tensor cores on GPUs;
        variables, embedding tables, the frozen item table, softmaxes, losses, metrics and the
        ``ctr``/``intent`` outputs stay float32).
    """

    batch_size: int = 4096
    epochs: int = 1
    learning_rate: float = 0.05
    optimizer: str = "adagrad"
    three_stage: bool = True
    uim_lr_scale: float = 0.1
    strategy: str = "default"
    cpu_replicas: int = 0
    steps_per_epoch: int = 0
    shuffle_buffer: int = 100_000
    shuffle_block: int = 16
    early_stopping_patience: int = 0
    backup_every_steps: int = 200
    seed: int = 0
    precision: str = "float32"

    def validate(self) -> None:
        def bad(field, why):
            raise ValueError(f"train.{field}: {why}; received {getattr(self, field)!r}")

        if self.batch_size < 1:
            bad("batch_size", "must be >= 1")
        if self.epochs < 1:
            bad("epochs", "must be >= 1")
        if not self.learning_rate > 0:
            bad("learning_rate", "must be > 0")
        if self.optimizer not in ("adagrad", "adam"):
            bad("optimizer", "must be adagrad or adam")
        if self.strategy not in STRATEGIES:
            bad("strategy", f"must be one of {STRATEGIES}")
        if self.cpu_replicas < 0:
            bad("cpu_replicas", "must be >= 0")
        if self.strategy == "ps" and self.steps_per_epoch < 1:
            bad("steps_per_epoch", "ParameterServerStrategy needs steps_per_epoch >= 1")
        if isinstance(self.shuffle_block, bool) or not isinstance(self.shuffle_block, int) \
                or self.shuffle_block < 1:
            bad("shuffle_block", "must be an integer >= 1")
        if isinstance(self.early_stopping_patience, bool) or not isinstance(self.early_stopping_patience, int) \
                or self.early_stopping_patience < 0:
            bad("early_stopping_patience", "must be an integer >= 0 (0 = off)")
        if self.backup_every_steps < 1:
            bad("backup_every_steps", "must be >= 1")
        if not 0 < self.uim_lr_scale <= 1:
            bad("uim_lr_scale", "must be in (0, 1]")
        check_precision(self.precision, "train.precision")


def check_precision(precision, what: str = "precision") -> str:
    """Returns ``precision`` if it is one of :data:`PRECISIONS`, else raises a ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"{what}: must be one of {', '.join(PRECISIONS)}; received {precision!r}")
    return precision


def model_config_from_dict(d: dict) -> ModelConfig:
    """A ModelConfig from a plain dict (JSON lists become the tuples the fields declare)."""
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"model config: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
