"""Exact offline metrics: brute-force references, hand-computed cases, sklearn/scipy, properties."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy
from sklearn.metrics import log_loss, roc_auc_score

from tirec.models import metrics as M


# ---- brute-force references -------------------------------------------------------------------

def _pairwise_auc(labels, scores):
    """O(n²) definition: P(score_pos > score_neg) + 0.5·P(tie) over all (pos, neg) pairs."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def _loop_gauc(labels, scores, groups):
    """Per-user Python loop: skip single-class users, weight by the number of impressions."""
    num = den = 0.0
    used = imps = 0
    users = np.unique(groups)
    for u in users:
        sel = groups == u
        y = labels[sel]
        if y.min() == y.max():
            continue
        num += sel.sum() * _pairwise_auc(y, scores[sel])
        den += sel.sum()
        used += 1
        imps += int(sel.sum())
    value = num / den if den else math.nan
    return value, {"users_total": len(users), "users_used": used, "impressions_used": imps}


def _random_case(rng, n, users=None, decimals=1):
    labels = (rng.random(n) < 0.3).astype(np.int64)
    scores = np.round(rng.random(n), decimals)  # heavy ties
    groups = rng.integers(0, users, n) if users else None
    return labels, scores, groups


# ---- AUC --------------------------------------------------------------------------------------

def test_auc_hand_computed():
    assert M.auc([0, 1], [0.2, 0.8]) == 1.0
    assert M.auc([1, 0], [0.2, 0.8]) == 0.0
    assert M.auc([0, 1], [0.5, 0.5]) == 0.5
    # pos 0.4 vs neg {0.1, 0.4}: 1 + 0.5; pos 0.9 beats both: 2 → 3.5 / 4
    assert M.auc([0, 1, 0, 1], [0.1, 0.4, 0.4, 0.9]) == 0.875


@pytest.mark.parametrize("seed", range(6))
def test_auc_matches_pair_counting_and_sklearn_with_heavy_ties(seed):
    rng = np.random.default_rng(seed)
    labels, scores, _ = _random_case(rng, int(rng.integers(2, 600)))
    if labels.min() == labels.max():
        labels[0] = 1 - labels[0]
    got = M.auc(labels, scores)
    assert got == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)
    assert got == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_accepts_bool_float_labels_and_float32_scores():
    rng = np.random.default_rng(11)
    labels, scores, _ = _random_case(rng, 300, decimals=2)
    ref = M.auc(labels, scores)
    assert M.auc(labels.astype(bool), scores) == ref
    assert M.auc(labels.astype(np.float32), scores.astype(np.float32)) == pytest.approx(ref)
    assert M.auc(list(labels), list(scores)) == ref


def test_auc_is_nan_for_one_class_or_empty():
    assert math.isnan(M.auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(M.auc([0, 0], [0.1, 0.2]))
    assert math.isnan(M.auc([], []))


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.tuples(st.integers(0, 1), st.integers(-20, 20)), min_size=2,
                     max_size=60),
       f=st.sampled_from([lambda x: 3.0 * x + 1.0, np.exp, lambda x: np.arctan(x / 7.0),
                          lambda x: x ** 3 + x]))
def test_auc_properties_monotone_invariance_and_negation(data, f):
    labels = np.array([d[0] for d in data])
    scores = np.array([d[1] for d in data], dtype=np.float64) / 4.0
    value = M.auc(labels, scores)
    if labels.min() == labels.max():
        assert math.isnan(value)
        return
    assert M.auc(labels, f(scores)) == pytest.approx(value, abs=1e-12)
    assert M.auc(labels, -scores) == pytest.approx(1.0 - value, abs=1e-12)
    assert value == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)


# ---- GAUC -------------------------------------------------------------------------------------

def test_gauc_hand_computed_skips_single_class_user():
    labels = [0, 1, 1, 1, 0, 1, 0]
    scores = [0.2, 0.8, 0.3, 0.9, 0.5, 0.4, 0.6]
    groups = [7, 7, 9, 9, 3, 3, 3]
    # user 7: AUC 1 (2 rows); user 9: all positive → skipped; user 3: pos 0.4 vs negs
    # {0.5, 0.6} → AUC 0 (3 rows). GAUC = (2·1 + 3·0) / 5.
    value, stats = M.gauc(labels, scores, groups)
    assert value == pytest.approx(0.4)
    assert stats == {"users_total": 3, "users_used": 2, "impressions_used": 5}


@pytest.mark.parametrize("seed", range(6))
def test_gauc_matches_per_user_loop(seed):
    rng = np.random.default_rng(100 + seed)
    labels, scores, groups = _random_case(rng, int(rng.integers(50, 800)),
                                          users=int(rng.integers(1, 40)))
    value, stats = M.gauc(labels, scores, groups)
    ref_value, ref_stats = _loop_gauc(labels, scores, groups)
    assert stats == ref_stats
    if math.isnan(ref_value):
        assert math.isnan(value)
    else:
        assert value == pytest.approx(ref_value, abs=1e-12)


def test_gauc_string_keys_and_unsorted_input_match_integer_keys():
    rng = np.random.default_rng(3)
    labels, scores, groups = _random_case(rng, 400, users=15)
    names = np.array([f"user-{g}" for g in groups])
    perm = rng.permutation(len(labels))
    ref = M.gauc(labels, scores, groups)
    for got in (M.gauc(labels, scores, names), M.gauc(labels[perm], scores[perm], groups[perm])):
        assert got[1] == ref[1]
        assert got[0] == pytest.approx(ref[0], abs=1e-12)


def test_gauc_one_group_equals_auc():
    rng = np.random.default_rng(4)
    labels, scores, _ = _random_case(rng, 500)
    value, stats = M.gauc(labels, scores, np.zeros(500, dtype=np.int64))
    assert value == pytest.approx(M.auc(labels, scores), abs=1e-12)
    assert stats == {"users_total": 1, "users_used": 1, "impressions_used": 500}


def test_gauc_nan_when_no_user_has_both_classes():
    value, stats = M.gauc([1, 1, 0], [0.1, 0.2, 0.3], [1, 1, 2])
    assert math.isnan(value)
    assert stats == {"users_total": 2, "users_used": 0, "impressions_used": 0}
    value, stats = M.gauc([], [], [])
    assert math.isnan(value) and stats["users_total"] == 0


# ---- logloss, RelaImpr ------------------------------------------------------------------------

def test_logloss_matches_sklearn():
    rng = np.random.default_rng(5)
    labels = (rng.random(1000) < 0.4).astype(np.int64)
    probs = rng.uniform(0.01, 0.99, 1000)
    assert M.logloss(labels, probs) == pytest.approx(log_loss(labels, probs), rel=1e-12)


def test_logloss_hand_computed_and_clipped():
    assert M.logloss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    # p = 0 for a positive and 1 for a negative are clipped to eps: finite -log(eps).
    assert M.logloss([1, 0], [0.0, 1.0], eps=1e-7) == pytest.approx(-math.log(1e-7), rel=1e-6)
    assert math.isnan(M.logloss([], []))


def test_rela_impr_models_md_example():
    assert round(M.rela_impr(0.6382, 0.6432), 2) == -3.49
    assert M.rela_impr(0.7, 0.6) == pytest.approx(100.0)
    assert M.rela_impr(0.6, 0.6) == 0.0
    assert math.isnan(M.rela_impr(0.6, 0.5))
    assert math.isnan(M.rela_impr(float("nan"), 0.6))


# ---- KL / JS / intent -------------------------------------------------------------------------

def _random_dists(rng, rows, n, zeros=True):
    x = rng.random((rows, n))
    if zeros:
        x[rng.random((rows, n)) < 0.3] = 0.0
        x[:, 0] += 1e-3  # keep every row non-empty
    return x / x.sum(axis=1, keepdims=True)


def test_kl_matches_scipy_entropy():
    rng = np.random.default_rng(6)
    p, q = _random_dists(rng, 50, 6), _random_dists(rng, 50, 6)
    eps = 1e-8
    ref = np.array([entropy(a + eps, b + eps) for a, b in zip(p, q)])
    np.testing.assert_allclose(M.kl_divergence(p, q, eps), ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(M.kl_divergence(p, p), 0.0, atol=1e-12)
    assert M.kl_divergence(p[0], q[0]).shape == ()


def test_kl_hand_computed_and_unnormalised_rows():
    p, q = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    assert float(M.kl_divergence(p, q, eps=1e-15)) == pytest.approx(expected, rel=1e-9)
    assert float(M.kl_divergence(4 * p, 2 * q, eps=1e-15)) == pytest.approx(expected, rel=1e-9)


def test_js_matches_scipy_symmetric_and_bounded():
    rng = np.random.default_rng(7)
    p, q = _random_dists(rng, 50, 6), _random_dists(rng, 50, 6)
    eps = 1e-8
    js = M.js_divergence(p, q, eps)
    ref = np.array([jensenshannon(a + eps, b + eps) ** 2 for a, b in zip(p, q)])
    np.testing.assert_allclose(js, ref, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(M.js_divergence(q, p, eps), js, rtol=1e-12, atol=1e-15)
    assert np.all(js >= 0.0) and np.all(js <= math.log(2.0))
    disjoint = M.js_divergence([1.0, 0.0], [0.0, 1.0])
    assert float(disjoint) == pytest.approx(math.log(2.0), rel=1e-6)
    assert float(disjoint) <= math.log(2.0)


def test_intent_metrics_skip_rows_without_clicks():
    rng = np.random.default_rng(8)
    t, p = _random_dists(rng, 20, 6), _random_dists(rng, 20, 6)
    t_masked = t.copy()
    t_masked[[1, 4, 9]] = 0.0
    keep = np.ones(20, dtype=bool)
    keep[[1, 4, 9]] = False
    out = M.intent_metrics(t_masked, p)
    assert out["intent_rows"] == 17
    assert out["intent_kl"] == pytest.approx(M.kl_divergence(t[keep], p[keep]).mean())
    assert out["intent_js"] == pytest.approx(M.js_divergence(t[keep], p[keep]).mean())
    empty = M.intent_metrics(np.zeros((3, 6)), p[:3])
    assert empty["intent_rows"] == 0 and math.isnan(empty["intent_kl"])


# ---- ctr_metrics ------------------------------------------------------------------------------

def test_ctr_metrics_bundle():
    rng = np.random.default_rng(9)
    labels, _, groups = _random_case(rng, 600, users=30)
    probs = rng.uniform(0.02, 0.98, 600)
    out = M.ctr_metrics(labels, probs, groups)
    ref_gauc, ref_stats = _loop_gauc(labels, probs, groups)
    assert out["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    assert out["gauc"] == pytest.approx(ref_gauc, abs=1e-12)
    assert out["logloss"] == pytest.approx(log_loss(labels, probs), rel=1e-12)
    assert out["n"] == 600 and out["positives"] == int(labels.sum())
    assert out["gauc_users_total"] == ref_stats["users_total"]
    assert out["gauc_users_used"] == ref_stats["users_used"]
    assert out["gauc_impressions_used"] == ref_stats["impressions_used"]
    assert "intent_kl" not in out
    assert all(type(v) in (int, float) for v in out.values())

    t, p = _random_dists(rng, 600, 6), _random_dists(rng, 600, 6)
    t[::3] = 0.0
    with_intent = M.ctr_metrics(labels, probs, groups, intent_true=t, intent_pred=p)
    assert with_intent["intent_rows"] == 400
    assert with_intent["intent_js"] == pytest.approx(M.intent_metrics(t, p)["intent_js"])


# ---- validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: M.auc([0, 1, 1], [0.1, 0.2]), "scores has length 2 but labels has length 3"),
    (lambda: M.auc([0, 2, 1], [0.1, 0.2, 0.3]), r"labels must be 0 or 1; found 2 at index 1"),
    (lambda: M.auc([0, 0.5], [0.1, 0.2]), r"labels .* 0\.5"),
    (lambda: M.auc([0, 1], [0.1, float("nan")]), r"scores must be finite; found nan"),
    (lambda: M.auc([0, 1], [float("inf"), 0.1]), r"scores must be finite; found inf"),
    (lambda: M.auc([[0, 1]], [[0.1, 0.2]]), "labels must be 1-D"),
    (lambda: M.gauc([0, 1], [0.1, 0.2], [1]), "groups has length 1"),
    (lambda: M.gauc([0, 1], [0.1, 0.2], [1.0, float("nan")]), "groups must be finite"),
    (lambda: M.logloss([0, 1], [0.1, 1.5]), r"probs must lie in \[0, 1\]; found 1\.5"),
    (lambda: M.logloss([0, 1], [0.1, float("nan")]), "probs must be finite"),
    (lambda: M.logloss([0, 1], [0.1, 0.2, 0.3]), "probs has length 3"),
    (lambda: M.ctr_metrics([0, 1], [0.1, -0.2], [1, 1]), r"probs .* -0\.2"),
    (lambda: M.ctr_metrics([0, 1], [0.1, 0.2], [1, 1], intent_true=np.ones((2, 3))),
     "intent_true and intent_pred"),
    (lambda: M.kl_divergence([0.5, 0.5], [1.0]), "p has shape"),
    (lambda: M.js_divergence([0.5, -0.5], [0.5, 0.5]), r"p must be non-negative; found -0\.5"),
    (lambda: M.kl_divergence([0.5, 0.5], [0.5, float("nan")]), "q must be finite"),
    (lambda: M.intent_metrics(np.ones(3), np.ones(3)), "true_dist must be 2-D"),
    (lambda: M.intent_metrics(np.ones((2, 3)), np.ones((2, 4))), "true_dist has shape"),
])
def test_invalid_inputs_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
