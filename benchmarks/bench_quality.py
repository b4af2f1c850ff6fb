"""Quality benchmark: every registered model on MovieLens and planted synthetic data.

    tirec bench quality --out DIR [--models din,daian] [--seeds 1 2 3] [--lrs 0.01 0.05 0.1 0.2]
        [--max-epochs 20] [--patience 3] [--datasets movielens synthetic] [--ablations]
        [--users 1000] [--input ../shared/data/ml-latest-small] [--data NAME=DIR]
        [--latency-runs 50] [--set k=v ...] [--tables-only]
    (the same as PYTHONPATH=<checkout> python benchmarks/bench_quality.py ...)

Data sets (converted once into ``OUT/data/``, with GAP-Net's views; the other models do not read
them). Every model trains on the same records and splits:

* ``movielens``: ``tirec pipeline --format movielens`` of ``--input`` (read in place);
* ``synthetic``: ``tirec generate --users U --seed 1`` -> ``tirec pipeline`` (the planted data:
  clicks follow the trigger-candidate similarity level and the user's long-term interest).

``--data NAME=DIR`` uses an existing pipeline output instead of converting (``NAME`` one of the
data sets; a generator folder ``DIR/../raw`` adds DAIAN's planted-intent column on synthetic).

Training, the same for every model: the paper config (the ``model`` / ``train`` defaults:
emb 16, tower 512-256-128, batch 4096, Adagrad), plus the speed-only switches of
:data:`SPEED` (same outputs up to float rounding) and ``--set`` overrides; at most
``--max-epochs`` epochs per stage, each stage early-stopping on the pipeline's ``valid`` split
(the window just before eval, never eval) with ``--patience``, keeping its best epoch. The
learning rate is picked per (data set, model) from ``--lrs`` on the valid AUC of the first seed
(its final stage's best epoch), then every seed trains at that rate. DAIAN's three stages share
that procedure: each stage early-stops on valid (stage 1 on the intent loss, stages 2-3 on AUC)
under the same cap, and the grid sets ``train.learning_rate``, the base rate of every stage (the
UIM trains at ``train.uim_lr_scale`` times it in stage 3).

Control rows, each with its own LR pick: ``din+sim``, DIN with DAIAN's trigger-target similarity
as one more tower input (``model.din.sim_feature=true``), so the table shows what DAIAN adds
beyond that one feature; ``din+sum``, DIN with the history's sum pooling and its product with the
target in the tower (``model.din.history_sum=true``), the two inputs DIEN, DIHN and DEI2N read by
default (their reference code's), so the table shows what those models add beyond them.

Reported per (data set, model), mean ± std over the seeds: eval AUC, GAUC, logloss, RelaImpr vs
DIN (from the mean AUCs: ``((AUC_m - 0.5) / (AUC_din - 0.5) - 1) * 100``), training seconds
(wall time less any time the process was stopped, see :class:`StopWatch`),
trainable parameters, and the in-process serving latency of one request of 200 candidates: the
median over ``--latency-runs`` calls of the in-memory model's ``rank`` signature (the function
``tirec export`` saves, one context tf.Example + 200 candidate tf.Examples), after warm-up.

After the rows, one per data set, *s_sem alone, untrained*: the trigger-target similarity itself
as the click score (``benchmarks/signal_check.py``), eval AUC and GAUC, so the table shows how
much of a model's AUC that one number already gives (kept from the last tables when
``--tables-only`` runs without the records).

``--ablations``: DAIAN on MovieLens at its picked learning rate, w/o UIM / DIE / SEIN
(``model.daian.use_uim|use_die|use_sein=false``), w/o three-stage (``train.three_stage=false``: one
stage on the click loss plus the UIM's KL at ``model.daian.intent_weight=1``), and n ∈ {2, 4, 6,
8} similarity levels (``pipeline.intent_levels``; the records change, so the pipeline reruns per n,
into ``movielens_levels<n>_tau<tau>``; n = 6 is the default data). The sweep holds the
explicit-intent threshold tau at the default data's (1/3), so that only n moves: the default rule
(the lower edge of the top 2 levels) would move tau with n, to -1 at n = 2. One more row, n = 2 at
tau = -1, shows that case: the explicit subsequence is then the whole history. They get a table of
their own below DAIAN's row, with Δ AUC (their mean AUC minus DAIAN's), and no learning-rate grid.

Why 0.2 is in the grid: in the first procedure every model picked 0.1, the grid's top, and in
this one DIN and ``din+sim`` did again (valid AUC rising with the rate), so the grid did not
bracket the best rate.

Why patience 3 and 20 epochs: with patience 1 and a cap of 10 (this benchmark's first
procedure), DIN at LR 0.1 on MovieLens stopped at epoch 4 on a valid dip of 0.005 (eval AUC
0.5647); the same run with patience 3 peaked at epoch 8 (eval AUC 0.6014), a larger difference
than most between models. An epoch of ml-latest-small is 35 steps of 4,096.

Every run is cached as ``OUT/results/<data set>__<model>__seed<S>__lr<LR>__e<E>p<P>.json``
(``E``, ``P``: ``--max-epochs``, ``--patience``; plus a hash of the ``--set`` overrides when
given): another procedure's runs are other files; a cached file whose settings (``config``) or
records (``data``: a hash of the conversion's spec and counts) differ from the run's is an error. A rerun resumes where it stopped and retrains nothing done (``--tables-only``: trains nothing, tables
of what is cached; a row appears once its LR grid is, with the seeds done so far). Writes ``OUT/bench_quality.md`` (tables),
``OUT/bench_quality.csv`` (one row per data set and model) and ``OUT/bench_quality.json`` (the
picks, the summary and every run's numbers).
"""
from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from robustness import LABELS, _run, _stat  # noqa: E402  (the sibling benchmark's pieces)
from signal_check import COLUMNS as SIGNAL_COLUMNS, read_splits, split_signal  # noqa: E402

SPEED = ["model.hist_buckets=1", "model.daian.explicit_buckets=1"]
# Control rows: (label, model, settings) trained and picked like a model of their own, after it.
CONTROLS = {"din": [("din+sim", "din", ["model.din.sim_feature=true"]),
                    ("din+sum", "din", ["model.din.history_sum=true"])]}
ABLATIONS = {"daian w/o UIM": ["model.daian.use_uim=false"], "daian w/o DIE": ["model.daian.use_die=false"],
             "daian w/o SEIN": ["model.daian.use_sein=false"],
             "daian w/o three-stage": ["train.three_stage=false", "model.daian.intent_weight=1"]}
LEVELS = (2, 4, 6, 8)
# n = 2 at tau = -1: the explicit subsequence S' is the whole history (what the default tau rule
# gave at n = 2 before the pipeline refused it), kept as a row of its own.
WHOLE_HISTORY_LEVELS = (2,)
DEFAULT_LEVELS = 6  # pipeline.intent_levels' default: the plain data set
CANDIDATES = 200
COLUMNS = ["dataset", "model", "lr", "seeds", "auc_mean", "auc_std", "gauc_mean", "gauc_std", "logloss_mean",
           "logloss_std", "rela_impr_auc_pct", "ablation_of", "delta_auc_vs_full", "train_seconds_mean", "params",
           "latency_ms_median"]


# ---- DAIAN's intent against the planted preference (synthetic data) -------------------------------

def _eval_predictions(model, data_dir: str, spec, batch_size: int = 4096) -> dict[str, np.ndarray]:
    """DAIAN's intent output on every eval record, with the record's user, request, level and
    ground-truth intent (the records parsed whole, so the meta column ``request_id`` is there)."""
    import tensorflow as tf

    from tirec.models.base import model_input_names
    from tirec.models.data import shard_files

    names = model_input_names(spec)
    parse = spec.parse_example_spec()

    @tf.function
    def step(batch):
        x = tf.io.parse_example(batch, parse)
        out = model({k: v for k, v in x.items() if k in names}, training=False)
        return x, out["intent"]

    cols = {k: [] for k in ("user_id", "request_id", "level", "intent_true", "intent_pred")}
    records = tf.data.TFRecordDataset(shard_files(data_dir, "eval"), compression_type="GZIP")
    for batch in records.batch(batch_size):
        x, intent = step(batch)
        cols["user_id"].append(x["user_id"].numpy().reshape(-1))
        cols["request_id"].append(x["request_id"].numpy().reshape(-1))
        cols["level"].append(x["trigger_target_level"].numpy().reshape(-1))
        cols["intent_true"].append(model.intent_target(x["intent_dist"]).numpy())
        cols["intent_pred"].append(intent.numpy())
    return {k: np.concatenate(v) for k, v in cols.items()}


def reachable_levels(request_ids: np.ndarray, levels: np.ndarray, n_levels: int) -> np.ndarray:
    """``[rows, n]`` bool: the levels that some candidate of the row's request has. A request's
    click distribution can only put mass on these levels."""
    _, req = np.unique(request_ids, return_inverse=True)
    per_request = np.zeros((req.max() + 1 if req.size else 0, n_levels), dtype=bool)
    per_request[req, levels] = True
    return per_request[req]


def restrict(dist: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``dist`` with the mass outside ``mask`` removed, renormalised (rows whose mask holds no
    mass of ``dist`` become uniform over the mask)."""
    kept = np.where(mask, dist, 0.0)
    total = kept.sum(axis=1, keepdims=True)
    uniform = mask / np.maximum(mask.sum(axis=1, keepdims=True), 1)
    return np.where(total > 0, kept / np.where(total > 0, total, 1.0), uniform)


def planted_intent_js(data_dir: str, raw_dir: str, run_dir: str) -> dict:
    """DAIAN's intent against the generator's planted per-user preference (the true intent);
    None for a model whose intent output is not a distribution over the similarity levels.

    ``all`` / ``specific`` / ``broad``: JS of the prediction averaged per eval user to the
    user's planted preference over the similarity levels, overall and by user type.

    Per request (what ``tirec evaluate`` reports as ``intent_js``, over rows of requests with a
    click): ``request_js*`` is the model against each request's empirical click distribution
    (1-2 clicks, a noisy draw). Two reference predictors are scored the same way, so the
    model's figure can be read against them; neither is a lower bound for every predictor:

    * ``oracle_request_js*``: the planted preference itself. It is what a request-level
      predictor (the UIM sees user, trigger and history, not the candidates) could know at
      best about the user; it spreads mass over levels that no candidate of the request has.
    * ``oracle_reachable_request_js*``: the planted preference restricted to the levels the
      request's candidates reach, renormalised; what a predictor that also saw the candidates'
      levels could know.
    """
    import pandas as pd

    from tirec.models import metrics as M
    from tirec.models.train import load_run

    model, spec, _ = load_run(run_dir)
    pred = _eval_predictions(model, data_dir, spec)
    users = pred["user_id"]
    uniq, inv = np.unique(users, return_inverse=True)
    n = pred["intent_pred"].shape[1]
    truth = pd.read_parquet(f"{raw_dir}/ground_truth_intent.parquet")
    if n != sum(c.startswith("pref_") for c in truth.columns):
        return None  # not a distribution over the similarity levels (DIHN's, DIAN's [1 - p, p])
    mean_pred = np.zeros((len(uniq), n))
    np.add.at(mean_pred, inv, pred["intent_pred"])
    mean_pred /= np.bincount(inv)[:, None]
    truth = truth.set_index("user_id").loc[uniq]
    planted = truth[[f"pref_{j}" for j in range(n)]].to_numpy()
    js = M.js_divergence(planted, mean_pred)
    out = {"all": float(js.mean()), "users": int(len(uniq))}
    has = pred["intent_true"].sum(axis=1) > 0
    label = pred["intent_true"][has]
    reach = reachable_levels(pred["request_id"], pred["level"], n)[has]
    scores = {
        "request_js": M.js_divergence(label, pred["intent_pred"][has]),
        "oracle_request_js": M.js_divergence(label, planted[inv][has]),
        "oracle_reachable_request_js": M.js_divergence(label, restrict(planted[inv][has], reach)),
    }
    request_type = truth["user_type"].to_numpy()[inv][has]
    for key, values in scores.items():
        out[key] = float(values.mean())
    for kind in ("specific", "broad"):
        sel = (truth["user_type"] == kind).to_numpy()
        out[kind] = float(js[sel].mean()) if sel.any() else float("nan")
        rsel = request_type == kind
        for key, values in scores.items():
            out[f"{key}_{kind}"] = float(values[rsel].mean()) if rsel.any() else float("nan")
    return out


# ---- data ---------------------------------------------------------------------------------------

def level_dataset(name: str, levels: int, tau: float) -> str:
    """The name of data set ``name`` converted with ``levels`` similarity levels and threshold tau."""
    return f"{name}_levels{levels}_tau{tau:.3g}"


def prepare(name: str, args, levels: int = DEFAULT_LEVELS, tau: float | None = None) -> str:
    """The pipeline output folder of data set ``name`` (``movielens`` or ``synthetic``), converted
    unless already there or given with ``--data``; with ``tau``, at ``levels`` similarity levels and
    that explicit-intent threshold (:func:`level_dataset` names it)."""
    if tau is None and levels != DEFAULT_LEVELS:
        raise ValueError(f"prepare: {levels} levels need their tau (the default rule moves it with n)")
    if tau is None and name in args.data:
        return args.data[name]
    folder = name if tau is None else level_dataset(name, levels, tau)
    out = os.path.join(args.out, "data", folder)
    if args.tables_only:
        return os.path.join(out, "tfr")
    if os.path.exists(os.path.join(out, "tfr", "spec.json")):
        if tau is not None:
            _check_levels_data(os.path.join(out, "tfr"), levels, tau)
        return os.path.join(out, "tfr")
    tirec = [sys.executable, "-m", "tirec.cli"]
    sets = ["--views", "--set", "pipeline.seed=0", "--set", f"pipeline.intent_levels={levels}"]
    sets += [] if tau is None else ["--set", f"pipeline.explicit_threshold={tau!r}"]
    t0 = time.time()
    if name == "synthetic":
        _run(tirec + ["generate", "--out", f"{out}/raw", "--users", str(args.users), "--seed", "1"])
        _run(tirec + ["pipeline", "--input", f"{out}/raw", "--format", "synthetic", "--out", f"{out}/tfr"] + sets)
    elif name == "movielens":
        _run(tirec + ["pipeline", "--input", args.input, "--format", "movielens", "--out", f"{out}/tfr"] + sets)
    else:
        raise SystemExit(f"--datasets: unknown data set {name!r}; valid: movielens, synthetic")
    print(f"{folder}: converted in {time.time() - t0:.1f} s", file=sys.stderr)
    return os.path.join(out, "tfr")


def _check_levels_data(data_dir: str, levels: int, tau: float) -> None:
    """Stops when the conversion in ``data_dir`` was made with other levels or another tau than
    its folder's name says (tau is rounded there)."""
    from tirec.features.jsonio import read_json

    spec = read_json(os.path.join(data_dir, "spec.json"))
    made = (spec["intent_levels"], float(spec["explicit_threshold"]))
    if made[0] != levels or abs(made[1] - tau) > 1e-9:
        raise SystemExit(f"{data_dir}: converted with intent_levels={made[0]}, explicit_threshold={made[1]!r}; "
                         f"this run asks for {levels} and {tau!r}: move the folder away to reconvert it")


def untrained_reference(data_dir: str) -> dict | None:
    """The similarity s_sem itself as the score, no training (``benchmarks/signal_check.py``):
    ``{split: metrics}`` of the valid and eval splits there are; None when the records are not
    there or lack the similarity."""
    from tirec.models.data import load_data_spec

    if not os.path.exists(os.path.join(data_dir, "spec.json")):
        return None
    spec = load_data_spec(data_dir)
    if any(c not in spec.parse_example_spec() for c in SIGNAL_COLUMNS):
        return None
    splits = read_splits(data_dir, spec, ("valid", "eval"))  # _check_valid names a missing valid
    return {split: split_signal(cols, None) for split, cols in splits.items()} or None


def data_fingerprint(data_dir: str) -> str:
    """A short hash of what identifies a conversion: its spec and its record counts, clicks,
    split cut-offs and similarity levels (``stats.json``; not its path or timings)."""
    from tirec.features.jsonio import read_json

    stats_path = os.path.join(data_dir, "stats.json")
    stats = read_json(stats_path) if os.path.exists(stats_path) else {}
    split = stats.get("split") or {}
    identity = [read_json(os.path.join(data_dir, "spec.json")), stats.get("written"), stats.get("clicks"),
                split.get("eval_from_ts"), split.get("valid_from_ts"), stats.get("level_histogram_all")]
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _check_valid(dataset: str, data_dir: str) -> None:
    from tirec.models.data import check_data

    if not check_data(data_dir)[1]:
        raise SystemExit(f"data set {dataset} ({data_dir}) has no valid split: early stopping and the "
                         f"learning-rate pick read valid, never eval; rerun the pipeline with its "
                         f"validation window")


# ---- one run ------------------------------------------------------------------------------------

def protocol_tag(args) -> str:
    """The training procedure in a file name: ``e<max epochs>p<patience>``, plus a hash of the
    ``--set`` overrides when there are any. Runs of another procedure are other files."""
    tag = f"e{args.max_epochs}p{args.patience}"
    if args.overrides:
        tag += "_" + hashlib.sha1(" ".join(args.overrides).encode()).hexdigest()[:8]
    return tag


def result_path(out: str, dataset: str, label: str, seed: int, lr: float, tag: str) -> str:
    safe = label.replace("/", "").replace(" ", "_").replace("=", "")
    return os.path.join(out, "results", f"{dataset}__{safe}__seed{seed}__lr{lr:g}__{tag}.json")


def run_config(seed: int, lr: float, sets: list[str], args) -> list[str]:
    """The settings of one run, in order (kept in its result)."""
    return (SPEED + [f"train.epochs={args.max_epochs}", f"train.early_stopping_patience={args.patience}",
                     f"train.seed={seed}", f"train.learning_rate={lr}"] + list(args.overrides) + sets)


def latency_ms(model, spec, data_dir: str, runs: int) -> float:
    """Median ms of one ``rank`` call (1 context + 200 candidate tf.Examples) of ``model``'s
    serving module, in process, outputs materialized, after 3 warm-up calls."""
    import tensorflow as tf

    from tirec.serving.export import ServingModule, read_eval_records

    records = read_eval_records(data_dir, CANDIDATES)
    rank = ServingModule(model, spec).signatures()["rank"]
    context, candidates = tf.constant(records[:1]), tf.constant((records * CANDIDATES)[:CANDIDATES])
    times = []
    for i in range(3 + runs):
        t0 = time.perf_counter()
        _ = {k: v.numpy() for k, v in rank(context=context, candidates=candidates).items()}
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))


class StopWatch:
    """Wall seconds minus the time the process was stopped (``kill -STOP`` ... ``-CONT``, a
    suspended job): a ticking thread sees a stop as a gap far longer than its tick.

    So a benchmark paused to free the cores for other work still reports its training time.
    Any stall longer than ``gap`` counts as stopped (the result keeps it as ``stopped_seconds``)."""

    def __init__(self, tick: float = 0.5, gap: float = 5.0):
        self.tick, self.gap, self.stopped = tick, gap, 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        last = time.monotonic()
        while not self._done.wait(self.tick):
            now = time.monotonic()
            if now - last > self.gap:
                self.stopped += now - last - self.tick
            last = now

    def __enter__(self):
        self.t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.wall = time.monotonic() - self.t0
        self.seconds = self.wall - self.stopped


def run_one(data_dir: str, dataset: str, label: str, model: str, seed: int, lr: float, sets: list[str],
            args) -> dict:
    """Trains ``model`` (``label``: the model, or DAIAN's ablation) once and measures it."""
    from tirec.compat import keras
    from tirec.config import load_config
    from tirec.features.spec import FeatureSpec
    from tirec.models.train import train_run

    class Keep(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            self.trained = self.model

    path = result_path(args.out, dataset, label, seed, lr, protocol_tag(args))
    run = os.path.join(args.out, "runs", os.path.basename(path)[:-5])
    shutil.rmtree(run, ignore_errors=True)  # a run an interrupted invocation left: retrain it whole
    config = run_config(seed, lr, sets, args)
    cfg = load_config(None, config)
    keep = Keep()
    with StopWatch() as watch:
        metrics = train_run(data_dir, model, run, cfg.model, cfg.train, callbacks=[keep])
    net, spec = keep.trained, FeatureSpec.load(os.path.join(run, "spec.json"))
    result = {"dataset": dataset, "label": label, "model": model, "seed": seed, "lr": lr, "config": config,
              "data": data_fingerprint(data_dir),
              "auc": metrics["auc"], "gauc": metrics["gauc"], "logloss": metrics["logloss"],
              "val_auc": metrics.get("best_checkpoint", {}).get("value"),
              "epochs": {stage: len(h.get("loss", [])) for stage, h in metrics["history"].items()},
              "train_seconds": round(watch.seconds, 1), "stopped_seconds": round(watch.stopped, 1),
              "params": int(sum(np.prod(v.shape) for v in net.trainable_variables)),
              "latency_ms": round(latency_ms(net, spec, data_dir, args.latency_runs), 3)}
    for key in ("intent_js", "intent_kl"):
        if key in metrics:
            result[key] = metrics[key]
    raw = os.path.join(os.path.dirname(data_dir.rstrip("/")), "raw")
    if dataset == "synthetic" and getattr(net, "has_intent", False) \
            and os.path.exists(os.path.join(raw, "ground_truth_intent.parquet")):
        # Per user against the planted preference; the JSON keeps the per-request figures and
        # the two oracle references too (see planted_intent_js).
        planted = planted_intent_js(data_dir, raw, run)
        if planted is not None:
            result["planted_intent"] = planted
            result["planted_intent_js"] = planted["all"]
    return result


def cached(data_dir, dataset, label, model, seed, lr, sets, args) -> dict:
    """The run's cached result, else the run (trained now and cached; None with
    ``--tables-only``)."""
    from tirec.features.jsonio import read_json, write_json

    path = result_path(args.out, dataset, label, seed, lr, protocol_tag(args))
    if os.path.exists(path):
        result, config = read_json(path), run_config(seed, lr, sets, args)
        if result.get("config") != config:
            raise SystemExit(f"{path}: cached with settings {result.get('config')}, this run would use "
                             f"{config}; move the file away to retrain it")
        if "data" in result and not args.tables_only:
            data = data_fingerprint(data_dir)
            if result["data"] != data:
                raise SystemExit(f"{path}: cached on other records (data {result['data']}) than {data_dir} "
                                 f"(data {data}); move the file away to retrain it")
        return result
    if args.tables_only:
        return None
    result = run_one(data_dir, dataset, label, model, seed, lr, sets, args)
    write_json(path, result)
    print(f"{dataset} {label} seed {seed} lr {lr:g}: val AUC {result['val_auc']} eval AUC {result['auc']:.4f} "
          f"GAUC {result['gauc']:.4f} ({result['train_seconds']} s)", file=sys.stderr)
    return result


def rows_of(models: list[str]) -> list[tuple[str, str, list[str]]]:
    """(label, model, settings) of every row: each model, its :data:`CONTROLS` right after it."""
    return [row for m in models for row in [(m, m, [])] + CONTROLS.get(m, [])]


def pick_lr(data_dir, dataset, label, model, sets, args) -> tuple[float | None, dict]:
    """The learning rate of ``--lrs`` with the best valid AUC at the first seed, and that AUC per
    rate (with ``--tables-only``: None unless every rate's run is cached)."""
    runs = {lr: cached(data_dir, dataset, label, model, args.seeds[0], lr, sets, args) for lr in args.lrs}
    if any(r is None for r in runs.values()):
        return None, {}
    grid = {lr: r["val_auc"] for lr, r in runs.items()}
    scored = {lr: v for lr, v in grid.items() if v is not None and np.isfinite(v)}
    if not scored:
        raise SystemExit(f"{dataset} {label}: no valid AUC at any of --lrs {args.lrs}")
    return max(scored, key=scored.get), grid


# ---- tables -------------------------------------------------------------------------------------

def summarize(results: list[dict], picks: dict, seeds: list[int]) -> list[dict]:
    """One row per (data set, model or ablation) at its picked rate, in :data:`COLUMNS`.

    RelaImpr is of the mean AUC over the seeds against DIN's mean AUC on the same data set
    (DAIAN's ablations on ``movielens_levels<n>``: against DIN on ``movielens``); empty without
    a DIN row. An ablation row (its pick names the row it comes ``from``) also carries that row's
    key, ``"<data set>|<model>"`` (``ablation_of``), and its mean AUC minus that row's
    (``delta_auc_vs_full``)."""
    rows = []
    for key, pick in picks.items():
        dataset, label = key.split("|")
        rs = [r for r in results if r["dataset"] == dataset and r["label"] == label
              and r["lr"] == pick["lr"] and r["seed"] in seeds]
        if not rs:
            continue
        (auc, auc_sd), (gauc, gauc_sd), (ll, ll_sd) = (_stat([r[k] for r in rs]) for k in ("auc", "gauc", "logloss"))
        rows.append({"dataset": dataset, "model": label, "lr": pick["lr"], "seeds": len(rs), "auc_mean": auc,
                     "auc_std": auc_sd, "gauc_mean": gauc, "gauc_std": gauc_sd, "logloss_mean": ll,
                     "logloss_std": ll_sd, "rela_impr_auc_pct": None, "ablation_of": None, "delta_auc_vs_full": None,
                     "train_seconds_mean": float(np.mean([r["train_seconds"] for r in rs])),
                     "params": rs[0]["params"], "latency_ms_median": float(np.median([r["latency_ms"] for r in rs])),
                     **({"planted_intent_js": _stat([r["planted_intent_js"] for r in rs])}
                        if all("planted_intent_js" in r for r in rs) else {})})
    base = {r["dataset"]: r["auc_mean"] for r in rows if r["model"] == "din"}
    full = {f"{r['dataset']}|{r['model']}": r for r in rows}
    for r in rows:
        din = base.get(r["dataset"].split("_levels")[0])
        if din is not None:
            r["rela_impr_auc_pct"] = rela_impr(r["auc_mean"], din)
        source = picks[f"{r['dataset']}|{r['model']}"].get("from")
        if source:
            r["ablation_of"] = source
            r["delta_auc_vs_full"] = r["auc_mean"] - full[source]["auc_mean"] if source in full else None
    return rows


def rela_impr(auc: float, auc_din: float) -> float:
    """RelaImpr in percent: ``((auc - 0.5) / (auc_din - 0.5) - 1) * 100``."""
    return ((auc - 0.5) / (auc_din - 0.5) - 1.0) * 100.0


def _pct(value: float | None) -> str:
    """A RelaImpr cell: ``+1.23 %``, or ``—`` without a DIN row."""
    return "—" if value is None else f"{value:+.2f} %"


def _impr(rows: list[dict], dataset: str, auc: float) -> str:
    din = [r["auc_mean"] for r in rows if r["dataset"] == dataset and r["model"] == "din"]
    return _pct(rela_impr(auc, din[0]) if din else None)


def _pm(r: dict, key: str) -> str:
    return f"{r[key + '_mean']:.4f} ± {r[key + '_std']:.4f}"


def _metric_cells(r: dict) -> str:
    """``LR | seeds | AUC | GAUC | logloss`` of a summary row."""
    return f"{r['lr']:g} | {r['seeds']} | {_pm(r, 'auc')} | {_pm(r, 'gauc')} | {_pm(r, 'logloss')}"


def _cost_cells(r: dict) -> str:
    """``RelaImpr | train s | params | latency`` of a summary row."""
    return f"{_pct(r['rela_impr_auc_pct'])} | {r['train_seconds_mean']:.0f} | {r['params']:,} | {r['latency_ms_median']:.2f}"


def markdown(rows: list[dict], picks: dict, args, refs: dict) -> str:
    """The results table, the ablations, the learning-rate grid and the settings, in Markdown."""
    lines = [f"Eval metrics, mean ± std over seeds {args.seeds}; LR picked per (data set, model) from "
             f"{[float(x) for x in args.lrs]} on the valid AUC of seed {args.seeds[0]}, then every seed at that LR "
             f"(ablations: DAIAN's movielens LR). At most {args.max_epochs} epochs per stage, early stopping on "
             f"valid (patience {args.patience}). Latency: in-process `rank` signature of the in-memory model, "
             f"1 request of {CANDIDATES} candidates, median of {args.latency_runs} calls.", "",
             "| data set | model | LR | seeds | AUC | GAUC | logloss | RelaImpr vs DIN (AUC) | train s | params "
             "| latency ms (200 cand.) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dataset']} | {LABELS.get(r['model'], r['model'])} | {_metric_cells(r)} | {_cost_cells(r)} |"
              for r in rows if not r.get("ablation_of")]
    lines += [f"| {dataset} | *s_sem alone, untrained* | — | — | {r['eval']['sim_auc']:.4f} | "
              f"{r['eval']['sim_gauc']:.4f} | — | {_impr(rows, dataset, r['eval']['sim_auc'])} | — | 0 | — |"
              for dataset, r in refs.items() if r]
    pending = pending_rows(rows, args)
    if pending:
        lines += ["", "**Not complete yet** (each row appears once its learning-rate grid is cached, "
                  "with the seeds done so far): " + "; ".join(pending) + "."]
    planted = [r for r in rows if "planted_intent_js" in r]
    if planted:
        lines += ["", "Intent JS (per user) against the generator's planted preference: "
                  + "; ".join(f"{LABELS.get(r['model'], r['model'])} {r['planted_intent_js'][0]:.4f} ± "
                              f"{r['planted_intent_js'][1]:.4f}" for r in planted)]
    lines += _ablation_table(rows) + _grid_table(picks, args)
    lines += ["", f"Settings: {' '.join(SPEED + list(args.overrides)) or 'defaults'} (paper defaults otherwise).",
              "", f"Command (trains what is not cached, then writes these tables): `{command(args)}`"]
    return "\n".join(lines) + "\n"


def command(args) -> str:
    """The ``tirec bench quality`` command line of this procedure (``OUT``: the output folder);
    flags left at their defaults are left out."""
    parts = ["tirec bench quality --out OUT", "--datasets " + " ".join(args.datasets),
             "--models " + ",".join(args.models)]
    defaults = parse_args(["--out", "OUT"])
    for flag in ("seeds", "lrs", "max_epochs", "patience", "users", "latency_runs"):
        value = getattr(args, flag)
        if value != getattr(defaults, flag):
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            parts.append(f"--{flag.replace('_', '-')} {shown}")
    parts += ["--ablations"] if args.ablations else []
    parts += [f"--set {shlex.quote(o)}" for o in args.overrides]
    return " ".join(parts)


def pending_rows(rows: list[dict], args) -> list[str]:
    """``"<data set> <model> (<what is missing>)"`` for each requested (data set, model) row that
    is not complete: no row yet (its learning-rate grid is not all cached) or fewer seeds than
    ``--seeds``."""
    seeds = {(r["dataset"], r["model"]): r["seeds"] for r in rows}
    out = []
    for dataset in args.datasets:
        for label, _, _ in rows_of(args.models):
            done, name = seeds.get((dataset, label)), LABELS.get(label, label)
            if done is None:
                out.append(f"{dataset} {name} (learning-rate grid)")
            elif done < len(args.seeds):
                out.append(f"{dataset} {name} ({done} of {len(args.seeds)} seeds)")
    return out


def _ablation_table(rows: list[dict]) -> list[str]:
    """The ablation rows after the row each ablates, with their AUC minus that row's."""
    ablated = [r for r in rows if r.get("ablation_of")]
    if not ablated:
        return []
    lines = ["", "**Ablations** (each at the LR of the row it ablates, on the data set named; Δ AUC: its mean "
             f"AUC minus that row's; the full row's data has the default n = {DEFAULT_LEVELS} similarity "
             f"levels, so it is also the n sweep's n = {DEFAULT_LEVELS} row)", "",
             "| data set | variant | LR | seeds | AUC | GAUC | logloss | Δ AUC | RelaImpr vs DIN (AUC) | train s "
             "| params | latency ms (200 cand.) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    sources = {r["ablation_of"] for r in ablated}
    for r in rows:
        if f"{r['dataset']}|{r['model']}" in sources:
            lines.append(f"| {r['dataset']} | {LABELS.get(r['model'], r['model'])} (full, n={DEFAULT_LEVELS}) "
                         f"| {_metric_cells(r)} | — | {_cost_cells(r)} |")
    for r in ablated:
        delta = "—" if r["delta_auc_vs_full"] is None else f"{r['delta_auc_vs_full']:+.4f}"
        lines.append(f"| {r['dataset']} | {r['model']} | {_metric_cells(r)} | {delta} | {_cost_cells(r)} |")
    return lines


def _grid_table(picks: dict, args) -> list[str]:
    """Valid AUC per learning rate at the first seed, per picked row (ablations have no grid)."""
    lines = ["", f"**Valid AUC per learning rate (seed {args.seeds[0]})**", "",
             "| data set | model | " + " | ".join(f"LR {x:g}" for x in args.lrs) + " |",
             "|---|---|" + "---|" * len(args.lrs)]
    for key, pick in picks.items():
        if pick.get("from"):
            continue
        dataset, label = key.split("|")
        cells = [("—" if pick["grid"].get(str(lr)) is None else f"{pick['grid'][str(lr)]:.4f}")
                 + (" *" if lr == pick["lr"] else "") for lr in args.lrs]
        lines.append(f"| {dataset} | {label} | " + " | ".join(cells) + " |")
    return lines


def write_outputs(rows: list[dict], picks: dict, results: list[dict], args, refs: dict) -> str:
    from tirec.features.jsonio import write_json

    text = markdown(rows, picks, args, refs)
    with open(os.path.join(args.out, "bench_quality.md"), "w") as fh:
        fh.write(text)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with open(os.path.join(args.out, "bench_quality.csv"), "w") as fh:
        fh.write(buf.getvalue())
    write_json(os.path.join(args.out, "bench_quality.json"),
               {"seeds": args.seeds, "lrs": list(args.lrs), "max_epochs": args.max_epochs,
                "patience": args.patience, "overrides": list(args.overrides), "picks": picks,
                "summary": rows, "untrained_reference": refs, "runs": results})
    return text


# ---- main ---------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="tirec bench quality", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="results, tables (and the converted data) go here")
    ap.add_argument("--models", default="", help="comma list of registered models (default: all)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.05, 0.1, 0.2],
                    help="learning-rate grid (train.learning_rate), picked on valid AUC")
    ap.add_argument("--max-epochs", type=int, default=20, help="epoch cap per stage")
    ap.add_argument("--patience", type=int, default=3, help="early-stopping patience (epochs)")
    ap.add_argument("--datasets", nargs="+", default=["movielens", "synthetic"])
    ap.add_argument("--ablations", action="store_true", help="DAIAN's ablations on movielens")
    ap.add_argument("--users", type=int, default=1000, help="synthetic users")
    ap.add_argument("--input", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                     "shared", "data", "ml-latest-small"))
    ap.add_argument("--data", action="append", default=[], metavar="NAME=DIR",
                    help="use this pipeline output for data set NAME instead of converting")
    ap.add_argument("--latency-runs", type=int, default=50)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides k=v")
    ap.add_argument("--tables-only", action="store_true",
                    help="train nothing: tables of the cached runs (a row once its LR grid is cached)")
    args = ap.parse_args(argv)
    from tirec.models.registry import model_names

    known = model_names()
    args.models = [m for m in args.models.split(",") if m] or known
    unknown = [m for m in args.models if m not in known]
    if unknown:
        ap.error(f"--models: {','.join(unknown)} not registered; registered: {','.join(known)}")
    for flag, value in (("--max-epochs", args.max_epochs), ("--latency-runs", args.latency_runs)):
        if value < 1:
            ap.error(f"{flag} must be >= 1; received {value}")
    if args.patience < 1:
        ap.error(f"--patience must be >= 1 (early stopping is part of the procedure); received {args.patience}")
    if not all(lr > 0 for lr in args.lrs):
        ap.error(f"--lrs must be > 0; received {args.lrs}")
    data = {}
    for item in args.data:
        name, sep, path = item.partition("=")
        if not sep or name not in ("movielens", "synthetic"):
            ap.error(f"--data must be NAME=DIR with NAME movielens or synthetic; received {item!r}")
        data[name] = path
    args.data = data
    if args.ablations and "daian" not in known:
        ap.error("--ablations: DAIAN is not registered")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(os.path.join(args.out, "results"), exist_ok=True)
    picks: dict = {}
    refs: dict = {}
    for dataset in args.datasets:
        data_dir = prepare(dataset, args)
        refs[dataset] = untrained_reference(data_dir)
        if not args.tables_only:
            _check_valid(dataset, data_dir)
        for label, model, sets in rows_of(args.models):
            lr, grid = pick_lr(data_dir, dataset, label, model, sets, args)
            if lr is None:
                continue
            picks[f"{dataset}|{label}"] = {"lr": lr, "grid": {str(k): v for k, v in grid.items()}}
            for seed in args.seeds:
                cached(data_dir, dataset, label, model, seed, lr, sets, args)
    if args.ablations:
        data_dir = prepare("movielens", args)
        lr = picks.get("movielens|daian", {}).get("lr") or pick_lr(data_dir, "movielens", "daian", "daian", [],
                                                                      args)[0]
        if lr is None:  # --tables-only before DAIAN's grid is done
            return finish(picks, args, refs)
        variants = [("movielens", label, sets, data_dir) for label, sets in ABLATIONS.items()]
        variants += level_variants(data_dir, args)
        for dataset, label, sets, ddir in variants:
            picks[f"{dataset}|{label}"] = {"lr": lr, "grid": {}, "from": "movielens|daian"}
            for seed in args.seeds:
                cached(ddir, dataset, label, "daian", seed, lr, sets, args)
    return finish(picks, args, refs)


def level_variants(data_dir: str, args) -> list[tuple[str, str, list[str], str]]:
    """(data set, label, settings, data dir) of DAIAN's n sweep on MovieLens: n in :data:`LEVELS`
    other than the default data's n, at its tau (held fixed, so that only n moves), then
    :data:`WHOLE_HISTORY_LEVELS` at tau = -1. With ``--tables-only`` and no default data, the
    level runs there are in the results folder."""
    from tirec.features.jsonio import read_json

    spec_path = os.path.join(data_dir, "spec.json")
    if os.path.exists(spec_path):
        spec = read_json(spec_path)
        tau, levels = float(spec["explicit_threshold"]), spec["intent_levels"]
        runs = [(n, tau) for n in LEVELS if n != levels] + [(n, -1.0) for n in WHOLE_HISTORY_LEVELS]
    elif args.tables_only:
        runs = cached_level_runs(args)
    else:
        raise SystemExit(f"{data_dir}: no spec.json; the n sweep reads its tau there")
    named = {level_dataset("movielens", n, t): (n, t) for n, t in runs}  # one run per folder
    return [(dataset, f"daian n={n}", [], prepare("movielens", args, n, t)) for dataset, (n, t) in named.items()]


def cached_level_runs(args) -> list[tuple[int, float]]:
    """(n, tau) of the level data sets that have cached runs (tau as rounded in their name), the
    whole-history ones (tau = -1) last."""
    names = {os.path.basename(p).split("__")[0] for p in glob.glob(os.path.join(args.out, "results", "*.json"))}
    found = [re.fullmatch(r"movielens_levels(\d+)_tau(-?[0-9.e+-]+)", name) for name in names]
    runs = [(int(m[1]), float(m[2])) for m in found if m]
    return sorted(runs, key=lambda r: (r[1] == -1.0, r[0], r[1]))


def finish(picks: dict, args, refs: dict) -> int:
    """Writes the tables of every cached run under ``picks``."""
    from tirec.features.jsonio import read_json

    pattern = os.path.join(args.out, "results", f"*__{protocol_tag(args)}.json")  # this procedure's runs
    results = [read_json(p) for p in sorted(glob.glob(pattern))]
    untagged = [p for p in glob.glob(os.path.join(args.out, "results", "*.json"))
                if not re.search(r"__e\d+p\d+(_[0-9a-f]{8})?\.json$", p)]
    if untagged:
        print(f"warning: {len(untagged)} result file(s) without a procedure tag (before e<E>p<P> names, "
              f"e.g. {os.path.basename(untagged[0])}) are not read; rename them with the tag of the "
              f"procedure in their 'config'", file=sys.stderr)
    rows = summarize(results, picks, args.seeds)
    print(write_outputs(rows, picks, results, args, _keep_references(refs, args.out)))
    return 0


def _keep_references(refs: dict, out: str) -> dict:
    """``refs``, with a data set whose records are not here (``--tables-only`` without them) keeping
    the reference the last tables wrote."""
    from tirec.features.jsonio import read_json

    last = os.path.join(out, "bench_quality.json")
    old = read_json(last).get("untrained_reference") or {} if os.path.exists(last) else {}
    return {name: ref if ref is not None else old.get(name) for name, ref in refs.items()}


if __name__ == "__main__":
    sys.exit(main())
