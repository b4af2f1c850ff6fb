"""How much of the click signal one number, the trigger-target similarity, carries: no training.

    python benchmarks/signal_check.py --data DATA [--ratings RATINGS_CSV] [--out FILE.json]

DATA is a ``tirec pipeline`` output. For each split: rows, CTR, and the eval metrics a model is
judged by, of two untrained scores, the multimodal cosine ``trigger_target_sim`` (s_sem, which
DAIAN's tower and ``din+sim`` read) and its level ``trigger_target_level`` (what DAIAN's intent
blocks read): AUC and user GAUC (``tirec.models.metrics``), plus the CTR per level.

``--ratings`` (MovieLens ``ratings.csv``; only for ``--format movielens`` data, whose
``user_id`` / ``target_item_id`` are MovieLens' ``userId`` / ``movieId``): splits every row into
*rated* (the user rated the movie: a click when the rating is high enough, else a negative) and
*sampled* (a popularity-sampled movie the user never rated: always a negative), and reports the
similarity's AUC for these questions: liked vs rated-but-not-liked (the preference signal among
movies the user chose to watch), rated vs sampled (all rows: taste and sampling mixed), and,
among the negatives only, rated-but-not-liked vs sampled (the artifact of how negatives are
drawn, without taste). Prints a Markdown table and
writes the numbers to ``--out``.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

SPLITS = ("train", "valid", "eval")
COLUMNS = ["label", "user_id", "target_item_id", "trigger_target_sim", "trigger_target_level"]


def rated_pairs(ratings_csv: str):
    """The (userId, movieId) pairs of ``ratings_csv``, as a pandas MultiIndex (read once)."""
    import pandas as pd

    r = pd.read_csv(ratings_csv, usecols=["userId", "movieId"])
    return pd.MultiIndex.from_arrays([r["userId"].to_numpy(np.int64), r["movieId"].to_numpy(np.int64)])


def rated_mask(pairs, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """True where (user, item) is one of the rated ``pairs`` (:func:`rated_pairs`)."""
    import pandas as pd

    return np.asarray(pd.MultiIndex.from_arrays([users, items]).isin(pairs))


def read_splits(data: str, spec, splits=SPLITS) -> dict[str, dict[str, np.ndarray]]:
    """:data:`COLUMNS` of each of ``splits`` that ``data`` has (a missing split is skipped)."""
    from tirec.models.data import read_columns

    out = {}
    for split in splits:
        try:
            out[split] = read_columns(data, split, spec, COLUMNS)
        except FileNotFoundError:  # no such split (e.g. no valid window)
            continue
    return out


def split_signal(cols: dict[str, np.ndarray], rated: np.ndarray | None) -> dict:
    """The untrained scores' metrics on one split's columns."""
    from tirec.models.metrics import auc, gauc

    y, sim, level = cols["label"].astype(np.int64), cols["trigger_target_sim"], cols["trigger_target_level"]
    out = {"rows": int(len(y)), "ctr": float(y.mean()),
           "sim_auc": auc(y, sim), "sim_gauc": gauc(y, sim, cols["user_id"])[0],
           "level_auc": auc(y, level), "level_gauc": gauc(y, level, cols["user_id"])[0],
           "ctr_by_level": {int(v): [float(y[level == v].mean()), int((level == v).sum())]
                            for v in np.unique(level)}}
    if rated is not None:
        if np.any(y[~rated] == 1):
            raise SystemExit("--ratings: a click whose (user_id, target_item_id) is not a rating in the file: "
                             "these records are not this MovieLens release's conversion")
        negative = y == 0
        out.update(rated_share=float(rated.mean()), sim_auc_liked_vs_rated=auc(y[rated], sim[rated]),
                   sim_auc_rated_vs_sampled=auc(rated.astype(np.int64), sim),
                   sim_auc_negatives_rated_vs_sampled=auc(rated[negative].astype(np.int64), sim[negative]))
    return out


def markdown(results: dict) -> str:
    if not results:
        raise SystemExit("no split to read: the --data folder has no train, valid or eval shards")
    rated = "rated_share" in next(iter(results.values()))
    head = "| split | rows | CTR | s_sem AUC | s_sem GAUC | level AUC | level GAUC |"
    if rated:
        head += (" rated | s_sem AUC liked vs rated, not liked | s_sem AUC rated vs sampled | s_sem AUC rated, "
                 "not liked vs sampled |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for split, r in results.items():
        line = (f"| {split} | {r['rows']:,} | {r['ctr']:.3f} | {r['sim_auc']:.4f} | {r['sim_gauc']:.4f} | "
                f"{r['level_auc']:.4f} | {r['level_gauc']:.4f} |")
        if rated:
            line += (f" {r['rated_share']:.3f} | {r['sim_auc_liked_vs_rated']:.4f} | "
                     f"{r['sim_auc_rated_vs_sampled']:.4f} | {r['sim_auc_negatives_rated_vs_sampled']:.4f} |")
        lines.append(line)
    lines += ["", "CTR (rows) per similarity level:", ""]
    lines += [f"- {split}: " + ", ".join(f"{lv}: {c:.3f} ({n:,})" for lv, (c, n) in r["ctr_by_level"].items())
              for split, r in results.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a tirec pipeline output folder")
    ap.add_argument("--ratings", help="MovieLens ratings.csv (movielens records only)")
    ap.add_argument("--out", help="write the numbers here (JSON)")
    args = ap.parse_args(argv)
    from tirec.models.data import load_data_spec

    spec = load_data_spec(args.data)
    missing = [c for c in COLUMNS if c not in spec.parse_example_spec()]
    if missing:
        raise SystemExit(f"--data {args.data}: the records have no {missing} (a TIR conversion with a trigger "
                         f"and item vectors has them)")
    pairs = rated_pairs(args.ratings) if args.ratings else None
    results = {split: split_signal(cols, None if pairs is None else
                                   rated_mask(pairs, cols["user_id"], cols["target_item_id"]))
               for split, cols in read_splits(args.data, spec).items()}
    print(markdown(results))
    if args.out:
        from tirec.features.jsonio import write_json

        write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
