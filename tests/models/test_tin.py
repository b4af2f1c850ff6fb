"""TIN: the target-aware attention and both representations against numpy, the temporal codes,
its config and switches, empty histories, the label-free inputs, request dedup and the export."""
import numpy as np
import pytest
import tensorflow as tf

from tirec.compat import keras
from tirec.config import load_config
from tirec.models.layers.sequence import time_gap_buckets
from tirec.models.tin import TinConfig, target_aware_pool
from tirec.models.train import load_run, train_run
from tirec.serving import export as E
from tirec.serving.verify import offline_scores

SMALL = ["model.emb_dim=4", "model.tower=[16,8]", "model.hist_buckets=1"]
MODEL = "tin"  # make_model builds it


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_target_aware_pool_matches_numpy():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=(3, 5, 6)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 1, 1, 1]], bool)
    pooled, weights = target_aware_pool(q, k, mask)
    for b in range(3):
        alpha = np.zeros(5)
        if mask[b].any():
            alpha[mask[b]] = softmax(k[b, mask[b]] @ q[b] / np.sqrt(6))
        np.testing.assert_allclose(weights.numpy()[b], alpha, atol=1e-6)
        np.testing.assert_allclose(pooled.numpy()[b], alpha @ k[b], atol=1e-5)
    assert np.all(pooled.numpy()[1] == 0) and np.all(weights.numpy()[1] == 0)


@pytest.mark.parametrize("setting, match", [
    ("model.tin.encoding=gap", r"model.tin.encoding: must be position or time; received 'gap'"),
    ("model.tin.representation=both", r"model.tin.representation: must be paper or code; received 'both'"),
    ("model.tin.time_ref=now", r"model.tin.time_ref: must be request or latest; received 'now'"),
    ("model.tin.time_buckets=0", r"model.tin.time_buckets: must be an integer >= 1; received 0"),
])
def test_config_errors_name_the_key_and_value(setting, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [setting])
    t = TinConfig()
    assert (t.encoding, t.representation, t.use_trigger, t.time_buckets) == ("position", "paper", True, 20)


def test_temporal_codes_are_positions_or_time_buckets(tiny_data, first_batch, make_model):
    spec, x, _ = first_batch(tiny_data, 64)
    ts = x["hist_ts"].numpy()
    ts[0, :4] = [90, 0, 70, 60]  # padding between real behaviours: ranks skip it
    x = {**x, "hist_ts": tf.constant(ts)}
    mask = ts > 0
    codes = make_model(tiny_data).temporal_codes(x, mask).numpy()
    assert codes[0, :4].tolist() == [1, 0, 2, 3]
    np.testing.assert_array_equal(codes[mask], (np.cumsum(mask, axis=1))[mask])
    model = make_model(tiny_data, "model.tin.encoding=time", "model.tin.time_buckets=5")
    got = model.temporal_codes(x, mask).numpy()
    want = 1 + time_gap_buckets(ts, x["impression_ts"], 5, 14 * 86400).numpy()
    np.testing.assert_array_equal(got, want)
    assert model.time_table.input_dim == 6 and make_model(tiny_data).time_table.input_dim == 1 + spec.max_seq_len


def _tower_input(model, x):
    model(x)
    seen = []
    call = model.tower.call
    model.tower.call = lambda z, training=None: seen.append(z.numpy()) or call(z, training=training)
    model(x)
    return seen[0]


@pytest.mark.parametrize("representation, scale", [("paper", False), ("code", False), ("paper", True),
                                                    ("code", True)])
def test_tower_reads_the_representation_formula(tiny_data, representation, scale, first_batch, make_model):
    spec, x, _ = first_batch(tiny_data, 32)
    keep = np.arange(x["hist_ts"].shape[1])[None, :] < (np.arange(32) % 7)[:, None]  # 0 to 6 behaviours
    x = {**x, "hist_ts": tf.where(keep, x["hist_ts"], tf.zeros_like(x["hist_ts"]))}
    model = make_model(tiny_data, f"model.tin.representation={representation}",
                       f"model.tin.scale_by_count={str(scale).lower()}")
    got = _tower_input(model, x)
    r, e = model.embed.request(x), model.embed.impression(x)
    table = model.time_table.get_weights()[0]
    mask = x["hist_ts"].numpy() > 0
    pi = np.cumsum(mask, axis=1) * mask
    keys = r["hist"].numpy() + table[pi]  # ẽ_k = e_k + p_π(k)
    target = e["target"].numpy()
    query = target + table[0]  # ṽ_t = e_i + p_0
    d = keys.shape[-1]
    pooled = np.zeros_like(query)
    for b in range(len(query)):
        if mask[b].any():
            pooled[b] = softmax(keys[b, mask[b]] @ query[b] / np.sqrt(d)) @ keys[b, mask[b]]
    if scale:  # a weighted sum: times the number of real behaviours
        pooled *= mask.sum(axis=1, keepdims=True)
        assert len(set(mask.sum(axis=1))) > 1
    head = [r["user"].numpy(), e["context"].numpy()]
    trigger = r["trigger"].numpy()
    if representation == "paper":
        want = np.concatenate(head + [target, trigger, pooled * query], axis=1)
    else:
        gamma, beta, mean, var = model.norm.get_weights()
        kernel, bias = model.projection.get_weights()
        u = ((pooled - mean) / np.sqrt(var + model.norm.epsilon) * gamma + beta) @ kernel + bias
        want = np.concatenate(head + [u, query, u * query, trigger], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_without_the_trigger_the_output_ignores_it(tiny_data, first_batch, make_model):
    spec, x, _ = first_batch(tiny_data, 64)
    other = {**x, "trigger_item_id": x["trigger_item_id"] + 7919, "trigger_cate_id": x["trigger_cate_id"] + 1}
    off, on = make_model(tiny_data, "model.tin.use_trigger=false"), make_model(tiny_data)
    np.testing.assert_array_equal(off(x)["ctr"].numpy(), off(other)["ctr"].numpy())
    assert not np.allclose(on(x)["ctr"].numpy(), on(other)["ctr"].numpy(), atol=1e-6)
    width = {m: [v for v in m.trainable_variables if "tower/dense_0/kernel" in v.name][0].shape[0] for m in (off, on)}
    assert width[on] - width[off] == on.embed.item_dim


@pytest.mark.parametrize("representation", ["paper", "code"])
def test_empty_histories_give_finite_outputs_and_zero_interest(tiny_data, representation, first_batch, make_model):
    spec, x, y = first_batch(tiny_data, 64)
    empty = np.arange(64) % 2 == 0
    x = {**x, "hist_ts": tf.where(empty[:, None], tf.zeros_like(x["hist_ts"]), x["hist_ts"])}
    model = make_model(tiny_data, f"model.tin.representation={representation}")
    with tf.GradientTape() as tape:
        out = model(x, training=True)["ctr"]
        loss = tf.reduce_mean(keras.losses.binary_crossentropy(y["ctr"], out))
    grads = tape.gradient(loss, model.trainable_variables)
    assert np.all(np.isfinite(out.numpy()))
    assert all(np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads if g is not None)
    r = model.embed.request(x)
    pooled, weights = target_aware_pool(model.embed.impression(x)["target"], model.encoded_history(x, r), r["mask"])
    assert np.all(pooled.numpy()[empty] == 0) and np.any(pooled.numpy()[~empty] != 0)


def test_labels_and_intent_columns_do_not_reach_the_output(tiny_data, first_batch, make_model):
    spec, x, y = first_batch(tiny_data, 64, columns=True)
    x = {**x, spec.label: y["ctr"][:, 0]}
    flipped = {**x, spec.label: 1.0 - x[spec.label], "intent_counts": x["intent_counts"][:, ::-1] + 3,
               "intent_dist": x["intent_dist"][:, ::-1], "prior_intent": x["prior_intent"][:, ::-1]}
    for settings in ([], ["model.tin.representation=code", "model.tin.encoding=time"]):
        model = make_model(tiny_data, *settings)
        np.testing.assert_array_equal(model(x)["ctr"].numpy(), model(flipped)["ctr"].numpy())


@pytest.mark.parametrize("encoding", ["position", "time"])
def test_request_dedup_changes_only_the_speed(tiny_data, encoding, first_batch, make_model):
    spec, x, y = first_batch(tiny_data, 128)
    outs, weights = [], None
    for dedup in ("false", "true"):
        model = make_model(tiny_data, f"model.request_dedup={dedup}", f"model.tin.encoding={encoding}")
        model(x)
        weights = model.get_weights() if weights is None else weights
        model.set_weights(weights)
        outs.append(model(x)["ctr"].numpy())
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-6)


def test_trains_exports_and_serves_the_same_scores(tiny_data, tmp_path):
    cfg = load_config(None, SMALL + ["model.tin.representation=code", "model.tin.encoding=time",
                                     "train.batch_size=128", "train.steps_per_epoch=2", "train.shuffle_buffer=0"])
    run = str(tmp_path / "run")
    metrics = train_run(tiny_data, "tin", run, cfg.model, cfg.train)
    assert np.isfinite(metrics["auc"])
    exported = E.export_run(run, str(tmp_path / "models"), "tin")
    model, spec, _ = load_run(run)
    records = E.read_eval_records(tiny_data, 64)
    want = offline_scores(model, spec, records)
    got = tf.saved_model.load(exported).signatures["serving_default"](examples=tf.constant(records))
    np.testing.assert_allclose(got["ctr"].numpy(), want["ctr"], atol=1e-6)
