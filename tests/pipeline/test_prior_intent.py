"""DAIAN's stage-2 intent input carries no label of the row's own request.

The property: flipping any label of a request (each row's own, or all of them at once) leaves
the ``prior_intent`` of every row of that request unchanged, bit for bit. Checked on synthetic
logs (request ids) and on ml-latest-small users (triggers from behaviours), read and labeled by
the Beam job's own per-file and per-user steps, ``has_trigger = 0`` rows included
(``no_trigger=pad``). Request membership does not depend on impression labels on either data
set, which :func:`_label_users` checks by labeling the users again with every label inverted.
The old stage-2 input (the request's own click distribution minus the row's click) fails the
same check, so the check is known to catch a leak.
"""
import os

import numpy as np
import pytest

from tirec.pipeline import job, labeling, synthetic
from tirec.pipeline.config import PipelineConfig
from tirec.pipeline.formats import get_format

ML_SMALL = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "ml-latest-small")
ML_SMALL = os.path.normpath(os.environ.get("TIREC_ML_SMALL", ML_SMALL))
HALF_LIFE = 3 * 86400


def _invert_labels(tagged: list, hook):
    """Blocks and user hook whose impression labels are all inverted."""
    tagged = [(tag, {**b, "label": 1 - b["label"]} if tag == job.IMP else b) for tag, b in tagged]
    if hook is None:
        return tagged, None

    def inverted(user, behs, items):
        imps, stats = hook(user, behs, items)
        return {**imps, "label": 1 - imps["label"]}, stats

    return tagged, inverted


def _label_users(cfg: PipelineConfig, tmp_path, users: int, read_users) -> list[dict]:
    """Each user's labeled columns (the job's label step), and a check that inverting every
    impression label changes nothing else (requests and triggers do not depend on labels)."""
    prep = get_format(cfg.format).prepare(cfg)
    items_path = str(tmp_path / "items.npz")
    prep.items.save(items_path)
    files = [p for t in ("impressions", "behaviours", "users") for p in prep.files.get(t, [])]
    settings = labeling.LabelSettings(
        intent_levels=cfg.intent_levels, trigger_window_s=cfg.trigger_window_s,
        history_s=cfg.history_s, max_seq_len=cfg.max_seq_len, click_btags=tuple(cfg.click_btags),
        trigger_from=prep.trigger_from, no_trigger=cfg.no_trigger,
        max_events_per_user=cfg.max_events_per_user, eval_from_ts=0,
        item_fields=prep.item_fields, user_fields=prep.user_fields,
        context_fields=prep.context_fields)
    out = []
    for user, tagged in read_users(cfg, prep, files, users).items():
        cols = _label_one(settings, items_path, files, prep.user_hook, user, tagged)
        inv_tagged, inv_hook = _invert_labels(tagged, prep.user_hook)
        inv = _label_one(settings, items_path, files, inv_hook, user, inv_tagged)
        assert set(inv) == set(cols)
        for key in cols:
            want = 1 - cols[key] if key == "label" else cols[key]
            np.testing.assert_array_equal(inv[key], want, err_msg=f"user {user}: {key}")
        out.append(cols)
    return out


def _label_one(settings, items_path, files, hook, user, tagged) -> dict:
    fn = job._LabelFn(settings, items_path, files, hook)
    fn.setup()
    outs = [value for tag, value in fn.process((user, tagged)) if tag == "users"]
    assert len(outs) == 1, f"user {user} has no labeled impression"
    return outs[0]


def _finalize(cols: dict, n: int) -> dict:
    out, _ = labeling.finalize(cols, n, -1.0, 1.0, 1 / 3, prior_half_life_s=HALF_LIFE)
    return out


def _leave_one_out(out: dict, labels: np.ndarray, n: int) -> np.ndarray:
    """The old stage-2 input: the request's click counts minus the row's own click, normalised."""
    counts = out["intent_counts"].astype(np.float64)
    counts = counts - np.eye(n)[out["trigger_target_level"]] * labels[:, None]
    total = counts.sum(axis=1, keepdims=True)
    return np.where(total != 0, counts / np.where(total != 0, total, 1.0), 0.0).astype(np.float32)


def _check_flips(users: list[dict], n: int, per_user: int, seed: int) -> dict:
    """Flips each row's label, then all labels, of ``per_user`` sampled requests per user (all
    has_trigger = 0 requests among them); asserts prior_intent of the request's rows is
    unchanged. Returns how many flips were checked and how many moved the old input."""
    rng = np.random.default_rng(seed)
    seen = {"flips": 0, "no_trigger_rows": 0, "clicked_rows": 0, "old_input_moved": 0,
            "requests": 0, "with_prior": 0}
    for cols in users:
        base = _finalize(cols, n)
        req = cols["_request"]
        no_trig = np.unique(req[cols["has_trigger"] == 0])
        others = np.setdiff1d(np.unique(req), no_trig)
        pick = np.concatenate([rng.permutation(no_trig)[:per_user], rng.permutation(others)[:per_user]])
        for r in pick:
            rows = np.flatnonzero(req == r)
            seen["requests"] += 1
            seen["with_prior"] += int(base["prior_intent"][rows[0]].sum() > 0)
            for flip in [rows[i:i + 1] for i in range(len(rows))] + [rows]:
                labels = cols["label"].copy()
                labels[flip] = 1 - labels[flip]
                got = _finalize({**cols, "label": labels}, n)
                np.testing.assert_array_equal(got["prior_intent"][rows], base["prior_intent"][rows])
                seen["flips"] += 1
                old = _leave_one_out(base, cols["label"], n)[rows]
                seen["old_input_moved"] += int(not np.array_equal(_leave_one_out(got, labels, n)[rows], old))
            seen["no_trigger_rows"] += int((cols["has_trigger"][rows] == 0).sum())
            seen["clicked_rows"] += int(cols["label"][rows].sum())
    return seen


@pytest.fixture(scope="module")
def synthetic_raw(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("prior") / "raw")
    synthetic.generate(synthetic.GeneratorConfig(users=12, seed=11), raw)
    return raw


@pytest.mark.parametrize("no_trigger", ["drop", "pad"])
def test_prior_intent_ignores_the_own_request_labels_synthetic(synthetic_raw, tmp_path, no_trigger, read_users):
    # A 20-minute trigger window leaves some requests without a trigger (padded or dropped).
    cfg = PipelineConfig(input=synthetic_raw, format="synthetic", no_trigger=no_trigger,
                         trigger_window="20m", max_seq_len=10)
    users = _label_users(cfg, tmp_path, 12, read_users)
    seen = _check_flips(users, cfg.intent_levels, per_user=6, seed=1)
    assert seen["requests"] >= 50 and seen["with_prior"] >= 25 and seen["clicked_rows"] >= 10, seen
    assert (seen["no_trigger_rows"] > 0) == (no_trigger == "pad"), seen
    assert seen["old_input_moved"] > 0, seen  # the old leave-one-out input fails the same check


@pytest.mark.skipif(not os.path.isdir(ML_SMALL),
                    reason=f"MovieLens ml-latest-small not found at {ML_SMALL} (set TIREC_ML_SMALL)")
def test_prior_intent_ignores_the_own_request_labels_movielens(tmp_path, read_users):
    cfg = PipelineConfig(input=ML_SMALL, format="movielens", no_trigger="pad", max_seq_len=10)
    users = _label_users(cfg, tmp_path, 30, read_users)
    seen = _check_flips(users, cfg.intent_levels, per_user=4, seed=2)
    assert seen["requests"] >= 100 and seen["with_prior"] >= 50 and seen["clicked_rows"] >= 20, seen
    assert seen["no_trigger_rows"] > 0, seen
    assert seen["old_input_moved"] > 0, seen
