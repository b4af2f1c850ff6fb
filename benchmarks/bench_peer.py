"""Peer comparison: tirec's DIN against DeepCTR's DIN, in one run, side by side.

    tirec bench peer --out DIR [--data DIR | --dataset movielens|synthetic] [--rounds 10] [--steps 7]
        [--batch-size 4096] [--emb-dim 16] [--attention 80,40] [--tower 512,256,128] [--lr 0.05]
        [--input ../shared/data/ml-latest-small] [--users 1000] [--seed 0]
    (the same as PYTHONPATH=<checkout> python benchmarks/bench_peer.py ...; DeepCTR comes with the
    ``bench`` extra: ``pip install tirec[bench]`` installs ``deepctr==0.9.4``, which runs on this
    TensorFlow under ``TF_USE_LEGACY_KERAS=1``; its import tries a network version check that fails
    harmlessly offline)

Data: a ``tirec pipeline`` output (``--data``), else ``--dataset`` converted into ``OUT/data/`` as
``tirec bench quality`` does (MovieLens from ``--input``, read in place, or the planted synthetic
generator). Both libraries train on the same records: DeepCTR's inputs are the columns our DIN
reads (:func:`peer_columns`), read from the same TFRecord shards into numpy arrays.

Same config for both (defaults: the DIN paper's, which are tirec's defaults): batch 4096, the
spec's sequence length (50 on the standard records), embedding 16 per field, attention FFN 80-40
with sigmoid activations over ``[q, k, q - k, q * k]``, un-normalised scores, tower 512-256-128
ReLU, Adagrad 0.05, no L2 (DeepCTR's ``l2_reg_embedding`` set to 0 as ours has none), no
dropout, no batch norm. The tower reads ``[user ‖ context ‖ target ‖ trigger ‖ attention
pooling]`` in both, every item view as ``[id ‖ side fields]``, with one table per field shared
by the target, the trigger and the history (DeepCTR: ``embedding_name``). DeepCTR gets the table
rows our embedding hashes the raw ids to (precomputed, so DeepCTR does not pay for the hashing
ours does in its graph); it masks the history by id 0, so its ids are those rows + 1 and the
padding (our ``ts == 0``) is 0; every input our
DIN reads can be expressed this way (the DeepCTR model reads nothing ours does not). What differs
is each library's own: initialisers, and how it trains by default.

Variants, each built from the same seed and timed interleaved (one untimed step each for
tracing, then ``--rounds`` rounds of ``--steps`` steps of each in this order, so a change of the
machine's load, shared with other jobs, falls on all of them):

* ``tirec_din_block1``: our DIN, record-level shuffle (``train.shuffle_block=1``: a batch holds
  candidates of ~all different requests, little for ``model.request_dedup`` to share);
* ``tirec_din``: our DIN with the training defaults (``train.shuffle_block=16``);
* ``tirec_din_before``: the first, record-level-shuffle variant without the two speed paths
  tirec added for this comparison (``model.hist_buckets=0``: the attention on every padded
  position; ``model.request_dedup=false``: every row's request-level work done per row): the
  "before" of the profile-and-fix the issue asks for, in the same interleaved run (the split
  first layer of the attention unit has no switch, so it is in both);
* ``deepctr_din``: DeepCTR 0.9.4's ``DIN``, fed as its ``fit(x, y, shuffle=True)`` feeds numpy
  arrays (record indices shuffled every epoch, batches gathered from memory).

Ours reads what ``tirec train`` reads (its tf.data pipeline over the GZIP TFRecords, shuffle
buffer 100k, parsing on the same cores), DeepCTR the arrays in memory. Each variant runs its own
``train_step`` (what ``fit`` runs) on one iterator kept across rounds, full batches; a round's
time ends when its last loss is read. Reported per variant: examples/s and ms/step of the
**fastest** round and the median round, the ratio to DeepCTR (fastest over fastest, and the
median of the per-round ratios), then eval AUC, GAUC (per-user AUC weighted by impressions,
``tirec.models.metrics``) and logloss on the eval split after the same number of steps for each
(``1 + rounds x steps``; the defaults, 71 steps of 4096, are about 2 epochs of the MovieLens
records). For ours also the achieved GFLOP/s on the padded forward FLOP count
(``benchmarks/bench_train.py``: TensorFlow's graph profiler on the padded per-example graph,
a training step counted as 3x forward; the timed graph skips the history's padding, so this is
an effective rate) against the 4096^3 float32 matmul ceiling measured in this run (before and
after the rounds; the higher counts). DeepCTR's own padded count is reported too (it computes
the attention's first layer on the concatenated ``[q, k, q - k, q * k]``, ours in split form).

Prints JSON and writes ``OUT/bench_peer.json`` and ``OUT/bench_peer.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

VARIANTS = ("tirec_din_block1", "tirec_din", "tirec_din_before", "deepctr_din")
SHUFFLE_BLOCK = {"tirec_din_block1": 1, "tirec_din": None, "tirec_din_before": 1}  # None: the training default
MODEL_SETTINGS = {"tirec_din_before": {"hist_buckets": 0, "request_dedup": False}}  # else the defaults
GOALS = {"tirec_din_block1": 3.0, "tirec_din": 4.0}  # examples/s over DeepCTR's (issue 15)
CEILING_GOAL = 0.70  # of the 4096^3 matmul ceiling, record-level shuffle, padded FLOP count


@dataclasses.dataclass(frozen=True)
class PeerConfig:
    """The one config both models train with (defaults: the DIN paper's and tirec's)."""

    batch_size: int = 4096
    emb_dim: int = 16
    attention: tuple[int, ...] = (80, 40)
    tower: tuple[int, ...] = (512, 256, 128)
    lr: float = 0.05
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class PeerColumn:
    """One DeepCTR input: its name (DeepCTR's DIN wants the target's item fields under their
    field name and the history's as ``hist_<field>``), the record column it is read from, the
    embedding table it shares, and for a history column the sequence length and the column of
    behaviour times whose 0 marks padding."""

    name: str
    column: str
    table: str
    vocab: int
    length: int = 0
    time_column: str = ""

    @property
    def is_sequence(self) -> bool:
        return self.length > 0


# ---- the inputs -----------------------------------------------------------------------------------

def peer_columns(spec) -> tuple[list[PeerColumn], list[str]]:
    """The DeepCTR inputs that carry what our DIN reads from records of ``spec``, and the fields
    of the target that DeepCTR's attention queries with (``history_feature_list``).

    Our DIN (``FeatureEmbedder``) embeds the user group's and the context group's table inputs,
    the target's and the trigger's ``[id ‖ side fields]`` and the first history's, masked by its
    behaviour times. Its other model inputs (``has_trigger``, ``impression_ts``) have no table and
    DIN does not read them unless ``model.din.sim_feature`` is on (not compared here).
    """
    from tirec.models.base import history_time, item_columns
    from tirec.models.registry import model_spec

    spec = model_spec("din", spec)
    tables = {t.name: t.num_buckets for t in spec.tables}
    by_name = {f.name: f for f in spec.features}
    history = next(iter(spec.histories()))
    ts = history_time(spec, history)

    def col(name, column, length=0, time_column=""):
        table = by_name[column].table
        return PeerColumn(name, column, table, tables[table] + 1, length, time_column)  # + 1: id 0 is padding

    out = [col(f.name, f.name) for group in ("user", "context")
           for f in spec.select(group=group, model_input=True) if f.table is not None]
    target = item_columns(spec, "target")
    fields = [by_name[c].field for c in target]
    out += [col(field, c) for field, c in zip(fields, target)]
    out += [col(f"trigger_{field}", c) for field, c in zip(fields, item_columns(spec, "trigger"))]
    out += [col(f"hist_{field}", c, by_name[c].length, ts)
            for field, c in zip(fields, item_columns(spec, "history", history))]
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"peer_columns: two DeepCTR inputs would share a name: {names}")
    return out, fields


def to_peer_inputs(columns: list[PeerColumn], records: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """DeepCTR's input arrays (int32) from the record ``columns`` read as numpy: every raw id
    hashed into its table's row exactly as our DIN's embedding does (``HashedEmbedding.bucket``,
    FarmHash64 mod ``num_buckets``, so both models see the same rows and collisions), + 1, and 0
    at the padded history positions (behaviour time 0), which DeepCTR's ``mask_zero`` masks as our
    DIN masks them. (DeepCTR gets the rows precomputed; ours hashes in its graph.)

    Raises:
      ValueError: naming the column when a sequence column's shape is not ``[rows, length]``.
    """
    from tirec.models.layers.embedding import HashedEmbedding

    out = {}
    for c in columns:
        ids = np.asarray(records[c.column]).astype(np.int64)
        if c.is_sequence and (ids.ndim != 2 or ids.shape[1] != c.length):
            raise ValueError(f"{c.column}: expected [rows, {c.length}] ids; received shape {ids.shape}")
        rows = HashedEmbedding(c.vocab - 1, 1).bucket(ids.reshape(ids.shape[0], -1)).numpy() + 1
        if c.is_sequence:
            rows = np.where(np.asarray(records[c.time_column]) > 0, rows, 0)
        out[c.name] = rows.reshape(-1, c.length) if c.is_sequence else rows.reshape(-1)
        out[c.name] = out[c.name].astype(np.int32)
    return out


def read_split(data: str, split: str, spec, columns: list[PeerColumn]) -> tuple[dict, np.ndarray, np.ndarray]:
    """DeepCTR's inputs, the labels and the user ids of a whole split."""
    from tirec.models.base import USER_ID
    from tirec.models.data import read_columns

    names = sorted({c.column for c in columns} | {c.time_column for c in columns if c.time_column}
                   | {spec.label, USER_ID})
    records = read_columns(data, split, spec, names)
    return to_peer_inputs(columns, records), records[spec.label].reshape(-1).astype(np.float32), \
        records[USER_ID].reshape(-1)


# ---- the models -----------------------------------------------------------------------------------

def deepctr_din(columns: list[PeerColumn], fields: list[str], cfg: PeerConfig):
    """DeepCTR's DIN on ``columns`` at ``cfg``, compiled (Adagrad, binary cross-entropy)."""
    from deepctr.feature_column import SparseFeat, VarLenSparseFeat
    from deepctr.models import DIN

    from tirec.compat import keras

    feats = []
    for c in columns:
        sparse = SparseFeat(c.name, c.vocab, embedding_dim=cfg.emb_dim, embedding_name=c.table)
        feats.append(VarLenSparseFeat(sparse, maxlen=c.length) if c.is_sequence else sparse)
    keras.utils.set_random_seed(cfg.seed)
    model = DIN(feats, fields, dnn_hidden_units=cfg.tower, att_hidden_size=cfg.attention,
                att_activation="sigmoid", dnn_activation="relu", l2_reg_embedding=0.0, l2_reg_dnn=0.0,
                dnn_dropout=0.0, seed=cfg.seed)
    model.compile(optimizer=keras.optimizers.Adagrad(cfg.lr), loss="binary_crossentropy")
    return model


def tirec_din(data: str, spec, cfg: PeerConfig, **settings):
    """Our DIN at ``cfg`` (``model.emb_dim``, ``model.din_hidden``, ``model.tower``; the other
    settings their defaults, or ``settings`` of the model section), in its training stage,
    compiled with Adagrad."""
    from tirec.compat import keras
    from tirec.models.config import ModelConfig, TrainConfig
    from tirec.models.data import load_item_vectors
    from tirec.models.registry import model_spec
    from tirec.models.train import build_model, training_stages

    model_cfg = ModelConfig(name="din", emb_dim=cfg.emb_dim, din_hidden=cfg.attention, tower=cfg.tower,
                            **settings).resolved()
    ids, vecs, _ = load_item_vectors(data)
    keras.utils.set_random_seed(cfg.seed)
    model = build_model("din", model_spec("din", spec), model_cfg, ids, vecs)
    model.set_stage(training_stages(model, TrainConfig())[0])
    model.compile(optimizer=keras.optimizers.Adagrad(cfg.lr))
    return model


def tirec_dataset(data: str, spec, cfg: PeerConfig, shuffle_block: int | None):
    """The train split as ``tirec train`` feeds it (its shuffle buffer; ``shuffle_block`` None:
    the training default), narrowed to the model inputs, repeated (full batches)."""
    from tirec.models.base import model_input_names
    from tirec.models.config import TrainConfig
    from tirec.models.data import make_dataset
    from tirec.models.registry import model_spec

    train = TrainConfig()
    names = set(model_input_names(model_spec("din", spec)))
    ds = make_dataset(data, "train", spec, cfg.batch_size, shuffle_buffer=train.shuffle_buffer,
                      shuffle_block=train.shuffle_block if shuffle_block is None else shuffle_block,
                      seed=cfg.seed, repeat=True)
    return ds.map(lambda x, y: ({k: v for k, v in x.items() if k in names}, y))


# ---- timing ---------------------------------------------------------------------------------------

def deepctr_dataset(x: dict, y: np.ndarray, cfg: PeerConfig):
    """DeepCTR's numpy inputs as Keras' ``fit(x, y, shuffle=True)`` feeds them (record indices
    shuffled every epoch, each batch gathered from the in-memory arrays), repeated, full batches."""
    import tensorflow as tf

    xs = {k: tf.constant(v) for k, v in x.items()}
    ys = tf.constant(y.reshape(-1, 1))
    idx = tf.data.Dataset.range(len(y)).shuffle(len(y), seed=cfg.seed, reshuffle_each_iteration=True)
    gather = lambda i: ({k: tf.gather(v, i) for k, v in xs.items()}, tf.gather(ys, i))  # noqa: E731
    return idx.repeat().batch(cfg.batch_size).map(gather).prefetch(tf.data.AUTOTUNE)


def train_function(model, dataset):
    """``run(steps)``: ``steps`` training steps of ``model`` (its own ``train_step``, as ``fit``
    runs it) on the next batches of one iterator over ``dataset`` kept across calls; returns the
    seconds, the loss read at the end (so every step has finished)."""
    import tensorflow as tf

    iterator = iter(dataset)
    step = tf.function(lambda: model.train_step(next(iterator)))

    def run(steps: int) -> float:
        t = time.perf_counter()
        for _ in range(steps):
            logs = step()
        float(logs["loss"])
        return time.perf_counter() - t

    return run


def chunk_rate(seconds: float, steps: int, batch: int) -> dict:
    """Examples/s and ms/step of ``steps`` full batches timed together."""
    if steps < 1 or not seconds > 0:
        raise ValueError(f"chunk_rate: needs steps >= 1 and seconds > 0; received {steps}, {seconds}")
    return {"examples_per_s": steps * batch / seconds, "ms_per_step": seconds * 1000 / steps}


def summarize_rounds(rounds: list[dict]) -> dict:
    """The fastest and the median round's figures of one variant."""
    rates = sorted(r["examples_per_s"] for r in rounds)
    best = max(rounds, key=lambda r: r["examples_per_s"])
    return {"examples_per_s": round(best["examples_per_s"]), "ms_per_step": round(best["ms_per_step"], 1),
            "median_examples_per_s": round(statistics.median(rates)),
            "rounds": [{k: round(v, 1) for k, v in r.items()} for r in rounds]}


def add_ratios(out: dict, ceiling: float, flops: dict) -> None:
    """Adds to each variant of ``out["variants"]`` its examples/s over DeepCTR's: fastest round
    over fastest round (``ratio_vs_deepctr``, what the goals are judged on) and the median of the
    ratios within each round (``median_ratio_vs_deepctr``: the rounds run back to back, so a
    change of the machine's load mostly falls on both), and for ours the GFLOP/s on the padded
    count and its share of ``ceiling``;
    and ``out["goals"]``: each issue-15 goal with the measured figure and whether it is met."""
    variants = out["variants"]
    peer = variants["deepctr_din"]
    for name, v in variants.items():
        v["ratio_vs_deepctr"] = round(v["examples_per_s"] / peer["examples_per_s"], 2)
        paired = [a["examples_per_s"] / b["examples_per_s"] for a, b in zip(v["rounds"], peer["rounds"])]
        v["median_ratio_vs_deepctr"] = round(statistics.median(paired), 2)
        key = "deepctr" if name == "deepctr_din" else "tirec"
        v["forward_mflop_per_example"] = round(flops[key] / 1e6, 3)
        v["train_gflop_per_s"] = round(3 * flops[key] * v["examples_per_s"] / 1e9, 2)
        v["fraction_of_matmul_ceiling"] = round(v["train_gflop_per_s"] / ceiling, 3)
    goals = {}
    for name, factor in GOALS.items():
        v = variants[name]
        goals[f"{name}_speed"] = {"goal": f">= {factor:g}x DeepCTR's examples/s", "measured": v["ratio_vs_deepctr"],
                                  "met": v["ratio_vs_deepctr"] >= factor}
        if "auc" in v and "auc" in peer:
            goals[f"{name}_auc"] = {"goal": "AUC >= DeepCTR's", "measured": round(v["auc"] - peer["auc"], 4),
                                    "met": v["auc"] >= peer["auc"]}
    block1 = variants["tirec_din_block1"]["fraction_of_matmul_ceiling"]
    goals["tirec_din_block1_ceiling"] = {"goal": f">= {CEILING_GOAL:.0%} of the matmul ceiling (padded FLOPs)",
                                         "measured": block1, "met": block1 >= CEILING_GOAL}
    out["goals"] = goals


# ---- outputs --------------------------------------------------------------------------------------

LABELS = {"tirec_din_block1": "tirec DIN, record-level shuffle (`train.shuffle_block=1`)",
          "tirec_din": "tirec DIN, defaults (`train.shuffle_block=16`)",
          "tirec_din_before": "tirec DIN before its speed paths (record-level shuffle, `model.hist_buckets=0`, "
                              "`model.request_dedup=false`)",
          "deepctr_din": "DeepCTR 0.9.4 DIN (`fit(shuffle=True)`)"}


def markdown(out: dict) -> str:
    """The side-by-side table, the goals and the settings, in Markdown."""
    ceiling = out["matmul_4096_gflop_per_s"]
    lines = [f"Data `{out['data']}` ({out['train_records']:,} train / {out['eval_records']:,} eval records); "
             f"{out['rounds']} interleaved rounds of {out['steps_per_round']} steps of each variant; examples/s "
             f"and ms/step of the fastest round (median round in brackets); vs DeepCTR: fastest over fastest "
             f"(median of the per-round ratios in brackets); eval after {out['trained_steps']} steps "
             f"({out['trained_epochs']} epochs) of each. {out['cpus']} CPUs (load average at the end "
             f"{out['load_average'][0]:.1f}); 4096³ float32 matmul ceiling {ceiling:.1f} GFLOP/s in this run.", "",
             "| variant | examples/s | ms/step | vs DeepCTR | eval AUC | GAUC | logloss | padded MFLOP/ex "
             "| GFLOP/s | of ceiling |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, v in out["variants"].items():
        lines.append(f"| {LABELS.get(name, name)} | {v['examples_per_s']:,} ({v['median_examples_per_s']:,}) | "
                     f"{v['ms_per_step']:.1f} | {v['ratio_vs_deepctr']:.2f}x ({v['median_ratio_vs_deepctr']:.2f}x) | "
                     f"{v.get('auc', float('nan')):.4f} | {v.get('gauc', float('nan')):.4f} | "
                     f"{v.get('logloss', float('nan')):.4f} | {v['forward_mflop_per_example']:.3f} | "
                     f"{v['train_gflop_per_s']:.1f} | {v['fraction_of_matmul_ceiling']:.0%} |")
    lines += ["", "| goal | measured | met |", "|---|---|---|"]
    for name, g in out.get("goals", {}).items():
        lines.append(f"| {name}: {g['goal']} | {g['measured']} | {'yes' if g['met'] else 'no'} |")
    c = out["config"]
    lines += ["", f"Config (every variant): batch {c['batch_size']}, sequence {out['seq_len']}, embedding {c['emb_dim']}, "
              f"attention {'-'.join(map(str, c['attention']))} (sigmoid), tower {'-'.join(map(str, c['tower']))} "
              f"(ReLU), Adagrad {c['lr']:g}, seed {c['seed']}. DeepCTR inputs: {', '.join(out['deepctr_inputs'])}."]
    return "\n".join(lines) + "\n"


def write_outputs(out: dict, folder: str) -> str:
    """Writes ``bench_peer.json`` and ``bench_peer.md`` into ``folder``; returns the Markdown."""
    from tirec.features.jsonio import write_json

    os.makedirs(folder, exist_ok=True)
    text = markdown(out)
    with open(os.path.join(folder, "bench_peer.md"), "w") as fh:
        fh.write(text)
    write_json(os.path.join(folder, "bench_peer.json"), out)
    return text


# ---- main -----------------------------------------------------------------------------------------

def _units(ap, flag: str, value: str) -> tuple[int, ...]:
    try:
        units = tuple(int(u) for u in value.split(","))
    except ValueError:
        units = ()
    if not units or any(u < 1 for u in units):
        ap.error(f"{flag} must be comma-separated integers >= 1, e.g. 80,40; received {value!r}")
    return units


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="tirec bench peer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="bench_peer.json / .md (and converted data) go here")
    ap.add_argument("--data", default="", help="a `tirec pipeline` output folder (default: convert --dataset)")
    ap.add_argument("--dataset", choices=("movielens", "synthetic"), default="movielens",
                    help="the data set to convert into OUT/data/ when --data is not given")
    ap.add_argument("--input", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                     "shared", "data", "ml-latest-small"))
    ap.add_argument("--users", type=int, default=1000, help="synthetic users")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved timed rounds")
    ap.add_argument("--steps", type=int, default=7, help="training steps of each variant per round")
    ap.add_argument("--batch-size", type=int, default=PeerConfig.batch_size)
    ap.add_argument("--emb-dim", type=int, default=PeerConfig.emb_dim)
    ap.add_argument("--attention", default="80,40", help="attention FFN units")
    ap.add_argument("--tower", default="512,256,128", help="tower MLP units")
    ap.add_argument("--lr", type=float, default=PeerConfig.lr, help="Adagrad learning rate")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for flag, value in (("--rounds", args.rounds), ("--steps", args.steps), ("--batch-size", args.batch_size),
                        ("--emb-dim", args.emb_dim), ("--users", args.users)):
        if value < 1:
            ap.error(f"{flag} must be >= 1; received {value}")
    if not args.lr > 0:
        ap.error(f"--lr must be > 0; received {args.lr}")
    if args.data and not os.path.exists(os.path.join(args.data, "spec.json")):
        ap.error(f"--data {args.data}: no spec.json there (expected a `tirec pipeline` output folder)")
    args.config = PeerConfig(args.batch_size, args.emb_dim, _units(ap, "--attention", args.attention),
                             _units(ap, "--tower", args.tower), args.lr, args.seed)
    return args


def _data(args) -> str:
    if args.data:
        return args.data
    from bench_quality import prepare

    ns = argparse.Namespace(data={}, out=args.out, input=args.input, users=args.users, tables_only=False)
    return prepare(args.dataset, ns)


def time_interleaved(functions: dict, rounds: int, steps: int, batch: int) -> dict:
    """One untimed step of each variant (tracing), then ``rounds`` rounds of ``steps`` steps of
    each in turn; ``{variant: [chunk_rate per round]}``."""
    for run_steps in functions.values():
        run_steps(1)
    out = {name: [] for name in functions}
    for r in range(rounds):
        for name, run_steps in functions.items():
            out[name].append(chunk_rate(run_steps(steps), steps, batch))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]['examples_per_s']:.0f}" for n, v in out.items())
              + " examples/s", file=sys.stderr)
    return out


def run(args) -> dict:
    """Builds the variants, times them interleaved, evaluates them, counts the FLOPs."""
    import tensorflow as tf

    from bench_train import _forward_flops, _matmul_ceiling, _padded_flops
    from tirec.models import metrics as M
    from tirec.models.data import load_data_spec, make_dataset
    from tirec.models.train import evaluate_model

    cfg, data = args.config, _data(args)
    spec = load_data_spec(data)
    columns, fields = peer_columns(spec)
    x_train, y_train, _ = read_split(data, "train", spec, columns)
    x_eval, y_eval, users_eval = read_split(data, "eval", spec, columns)
    models = {name: tirec_din(data, spec, cfg, **MODEL_SETTINGS.get(name, {})) for name in SHUFFLE_BLOCK}
    models["deepctr_din"] = deepctr_din(columns, fields, cfg)
    functions = {name: train_function(models[name], tirec_dataset(data, spec, cfg, block))
                 for name, block in SHUFFLE_BLOCK.items()}
    functions["deepctr_din"] = train_function(models["deepctr_din"], deepctr_dataset(x_train, y_train, cfg))
    ceilings = [_matmul_ceiling()]
    rounds = time_interleaved(functions, args.rounds, args.steps, cfg.batch_size)
    ceilings.append(_matmul_ceiling())
    trained = (1 + args.rounds * args.steps) * cfg.batch_size
    out = {"data": data, "train_records": len(y_train), "eval_records": int(len(y_eval)), "cpus": os.cpu_count(),
           "load_average": [round(x, 2) for x in os.getloadavg()],
           "seq_len": max(c.length for c in columns), "config": dataclasses.asdict(cfg), "rounds": args.rounds,
           "steps_per_round": args.steps, "trained_steps": 1 + args.rounds * args.steps,
           "trained_epochs": round(trained / len(y_train), 2),
           "deepctr_inputs": [c.name for c in columns], "round_order": list(VARIANTS),
           "matmul_4096_gflop_per_s": round(max(ceilings), 1),
           "matmul_4096_gflop_per_s_runs": [round(c, 1) for c in ceilings],
           "variants": {name: summarize_rounds(rounds[name]) for name in VARIANTS}}
    for name in VARIANTS:
        if name == "deepctr_din":
            probs = models[name].predict(x_eval, batch_size=cfg.batch_size, verbose=0).reshape(-1)
            metrics = M.ctr_metrics(y_eval.astype(np.int64), probs, users_eval)
        else:
            metrics = evaluate_model(models[name], data, models[name].spec, cfg.batch_size)
        out["variants"][name].update({k: metrics[k] for k in ("auc", "gauc", "logloss")})
    batch, _ = next(iter(make_dataset(data, "train", spec, 2)))
    flops = {"tirec": _padded_flops(data, "din", spec, batch, {"emb_dim": cfg.emb_dim, "din_hidden": cfg.attention,
                                                                "tower": cfg.tower}),
             "deepctr": _forward_flops(models["deepctr_din"], {k: tf.constant(v[:1]) for k, v in x_train.items()})}
    add_ratios(out, out["matmul_4096_gflop_per_s"], flops)
    return out


def main(argv: list[str] | None = None) -> int:
    import json

    args = parse_args(argv)
    out = run(args)
    print(json.dumps(out, indent=2))
    print(write_outputs(out, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
