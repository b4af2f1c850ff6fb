"""Hand-computed tests of the pure labeling functions."""
import numpy as np
import pytest

from tirec.features import transforms as T

H = 3600


def test_cosine_similarity_known_values_and_zero_vector():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [3.0, 4.0]])
    b = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [-3.0, -4.0]])
    np.testing.assert_allclose(T.cosine_similarity(a, b), [0.0, 1.0, 0.0, -1.0], atol=1e-6)


def test_bin_edges_and_index_six_levels():
    np.testing.assert_allclose(T.bin_edges(6), [-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1])
    sims = np.array([-1.0, -0.9, -2 / 3, -0.5, 0.0, 0.32, 1 / 3 + 1e-9, 0.99, 1.0, 1.5, -1.5])
    np.testing.assert_array_equal(T.bin_index(sims, 6), [0, 0, 1, 1, 3, 3, 4, 5, 5, 5, 0])


def test_bin_index_custom_range():
    # [0, 1] in 4 levels: edges 0, .25, .5, .75, 1
    np.testing.assert_array_equal(T.bin_index([0.0, 0.2499, 0.25, 0.74, 0.75, 1.0], 4, 0.0, 1.0),
                                  [0, 0, 1, 2, 3, 3])


def test_bin_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_levels"):
        T.bin_index([0.1], 0)
    with pytest.raises(ValueError, match="lo < hi"):
        T.bin_index([0.1], 6, 1.0, 1.0)


def test_quantile_range():
    lo, hi = T.quantile_range(np.linspace(0, 1, 1001), 0.1, 0.9)
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.9)
    with pytest.raises(ValueError, match="collapse"):
        T.quantile_range(np.ones(10))


def test_explicit_threshold_is_lower_edge_of_top_two_levels():
    assert T.explicit_threshold(6) == pytest.approx(1 / 3)
    assert T.explicit_threshold(4, 1, 0.0, 1.0) == pytest.approx(0.75)
    with pytest.raises(ValueError, match=r"top_levels must be in \[1, n_levels=6\]; received top_levels=7"):
        T.explicit_threshold(6, 7)
    with pytest.raises(ValueError, match="explicit_threshold: needed with top_levels=4 of n_levels=4"):
        T.explicit_threshold(4, 4)


def test_intent_distribution_hand_computed():
    levels = np.array([5, 5, 3, 0, 5, 1])
    labels = np.array([1, 1, 1, 0, 0, 0])
    np.testing.assert_allclose(T.intent_distribution(levels, labels, 6), [0, 0, 0, 1 / 3, 0, 2 / 3])
    np.testing.assert_array_equal(T.intent_distribution(levels, np.zeros(6, int), 6), np.zeros(6))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        T.intent_distribution(levels, np.array([2, 0, 0, 0, 0, 0]), 6)


def test_grouped_intent_counts_per_request():
    group = np.array([0, 0, 1, 1, 1, 2])
    levels = np.array([5, 4, 4, 4, 0, 3])
    labels = np.array([1, 0, 1, 1, 0, 0])
    counts = T.grouped_intent_counts(group, levels, labels, 6)
    np.testing.assert_array_equal(counts[0], [0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(counts[1], counts[0])
    np.testing.assert_array_equal(counts[2], [0, 0, 0, 0, 2, 0])
    np.testing.assert_array_equal(counts[5], np.zeros(6))
    dist = T.counts_to_distribution(counts)
    np.testing.assert_allclose(dist.sum(axis=1), [1, 1, 1, 1, 1, 0])


def test_explicit_mask():
    sims = np.array([[0.9, 0.2, 0.5, 0.34], [0.4, 0.0, 0.0, 0.0]])
    valid = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
    np.testing.assert_array_equal(T.explicit_mask(sims, valid, 1 / 3), [[1, 0, 1, 0], [1, 0, 0, 0]])


def test_trigger_window_boundary_is_inclusive_at_exactly_4h():
    clicks = np.array([1000, 2000])
    q = np.array([2000 + 4 * H, 2000 + 4 * H + 1, 2000, 2001, 999, 1500])
    # exactly 4 h after the click: still the trigger; one second later: none; a click at the
    # same second as the impression is not strictly earlier; before any click: none.
    np.testing.assert_array_equal(T.assign_triggers(clicks, q, 4 * H), [1, -1, 0, 1, -1, 0])


def test_assign_triggers_validates():
    with pytest.raises(ValueError, match="window"):
        T.assign_triggers(np.array([1]), np.array([2]), 0)
    with pytest.raises(ValueError, match="sorted"):
        T.assign_triggers(np.array([5, 1]), np.array([6]), 10)


def test_history_is_strictly_earlier_most_recent_first_and_truncated():
    ev = np.array([10, 20, 30, 30, 40, 50])
    q = np.array([30, 51, 10, 45])
    start, end = T.history_window(ev, q, horizon=1000, max_len=3)
    # query 30 sees only 10, 20 (the two events at 30 are not strictly earlier)
    np.testing.assert_array_equal(start, [0, 3, 0, 2])
    np.testing.assert_array_equal(end, [2, 6, 0, 5])
    hist = T.gather_history(ev, start, end, 3)
    np.testing.assert_array_equal(hist, [[20, 10, 0], [50, 40, 30], [0, 0, 0], [40, 30, 30]])


def test_history_horizon():
    ev = np.array([0, 100, 200])
    start, end = T.history_window(ev, np.array([300]), horizon=200, max_len=10)
    # 300 - 200 = 100: the event at exactly the horizon is kept, the one at 0 is not.
    np.testing.assert_array_equal(T.gather_history(ev, start, end, 4), [[200, 100, 0, 0]])


def test_decayed_level_distribution_hand_computed():
    # Half-life 10 s. Clicks: t=0 level 0, t=10 level 1, t=20 level 1, t=30 level 2.
    click_ts, levels = np.array([30, 0, 20, 10]), np.array([2, 0, 1, 1])
    queries = np.array([20, 0, 31, 10, 5])
    got = T.decayed_level_distribution(queries, click_ts, levels, 3, 10)
    # T=20: clicks 0 and 10 (20 is not strictly earlier): weights 1/4, 1/2 -> [1/3, 2/3, 0].
    # T=0: none. T=31: 2^-3.1 (level 0), 2^-2.1 + 2^-1.1 (level 1), 2^-0.1 (level 2).
    # T=10: click 0 only -> [1, 0, 0]. T=5: click 0 only -> [1, 0, 0].
    w31 = np.array([2 ** -3.1, 2 ** -2.1 + 2 ** -1.1, 2 ** -0.1])
    want = np.array([[1 / 3, 2 / 3, 0], [0, 0, 0], w31 / w31.sum(), [1, 0, 0], [1, 0, 0]])
    assert got.dtype == np.float32 and got.shape == (5, 3)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_decayed_level_distribution_ignores_clicks_at_or_after_the_query():
    rng = np.random.default_rng(0)
    click_ts = rng.integers(0, 10**6, 500) + 1_700_000_000
    levels = rng.integers(0, 6, 500)
    queries = rng.integers(0, 10**6, 50) + 1_700_000_000
    base = T.decayed_level_distribution(queries, click_ts, levels, 6, 86400)
    for q in range(0, 50, 7):
        # Change or drop every click at or after query q: its row stays the same, bit for bit.
        late = click_ts >= queries[q]
        other_levels = np.where(late, (levels + 1) % 6, levels)
        moved = T.decayed_level_distribution(queries, click_ts, other_levels, 6, 86400)
        kept = T.decayed_level_distribution(queries, click_ts[~late], levels[~late], 6, 86400)
        np.testing.assert_array_equal(moved[q], base[q])
        np.testing.assert_array_equal(kept[q], base[q])
    sums = base.sum(axis=1)
    np.testing.assert_allclose(sums[sums > 0], 1.0, atol=1e-6)


def test_decayed_level_distribution_long_histories_and_bad_arguments():
    # 20 years of clicks with a one-hour half-life: no overflow or underflow to all zeros.
    ts = np.array([0, 20 * 365 * 86400])
    got = T.decayed_level_distribution(ts + 1, ts, np.array([0, 1]), 2, 3600)
    np.testing.assert_array_equal(got, [[1, 0], [0, 1]])
    assert T.decayed_level_distribution(np.array([5]), np.zeros(0), np.zeros(0), 4, 10).tolist() == [[0] * 4]
    with pytest.raises(ValueError, match="half_life_s"):
        T.decayed_level_distribution([1], [0], [0], 2, 0)
    with pytest.raises(ValueError, match="level 2 is outside"):
        T.decayed_level_distribution([1], [0], [2], 2, 10)
    with pytest.raises(ValueError, match="same shape"):
        T.decayed_level_distribution([1], [0, 1], [0], 2, 10)
