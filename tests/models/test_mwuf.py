"""MWUF on DIN: the warm embedding against numpy, the recent-users state (hand-computed
running means, updated only after a training step's forward pass, saved with the weights), the
alternating updates, the trigger switch, the config and the label-flip checks."""
import numpy as np
import pytest
import tensorflow as tf

from tirec.compat import keras
from tirec.config import load_config
from tirec.features.spec import tir_feature_spec
from tirec.models.base import model_input_names
from tirec.models.data import load_data_spec, load_item_vectors, make_dataset
from tirec.models.mwuf import MWUF, RecentUsers
from tirec.models.train import build_model

SMALL = ["model.emb_dim=4", "model.tower=[8,6]", "model.din_hidden=[8,4]", "model.hist_buckets=1",
         "model.mwuf.meta_hidden=[5]"]


def _model(data, *extra, n=128):
    spec = load_data_spec(data)
    ids, vecs, _ = load_item_vectors(data)
    model = build_model("mwuf", spec, load_config(None, SMALL + list(extra)).model, ids, vecs)
    x, y = next(iter(make_dataset(data, "train", spec, n)))
    x = {k: v for k, v in x.items() if k in model_input_names(spec)}
    model(x)
    return model, x, y


def _randomise_meta(model, seed=0):
    """Non-identity meta nets and a non-empty recent-users state (both start neutral)."""
    rng = np.random.default_rng(seed)
    for layer in (model.scaling, model.shifting):
        layer.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()])
    model.recent.mean.assign(rng.normal(size=model.recent.mean.shape).astype(np.float32))
    model.recent.count.assign(np.full(model.recent.count.shape, 5.0, np.float32))


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def _bce(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_recent_users_running_mean_by_hand():
    state = RecentUsers(buckets=4, dim=2, capacity=3)
    state.build()
    u = {7: [1.0, 2.0], 8: [3.0, 4.0], 9: [5.0, 0.0], 10: [-1.0, 1.0]}

    def update(rows, users, weights):
        state.update(tf.constant(rows, tf.int64), tf.constant(users, tf.int64),
                     tf.constant([u[k] for k in users], tf.float32), tf.constant(weights, tf.float32))

    # bucket 1: users 7, 8 (7 twice: counts once); bucket 2: user 7; user 9 has weight 0
    update([1, 1, 1, 2, 3], [7, 8, 7, 7, 9], [1, 1, 1, 1, 0])
    np.testing.assert_allclose(state.count.numpy(), [0, 2, 1, 0])
    np.testing.assert_allclose(state.mean.numpy(), [[0, 0], [2, 3], [1, 2], [0, 0]])
    # bucket 1 reaches K = 3 with user 9: the exact mean of 7, 8, 9
    update([1], [9], [1])
    np.testing.assert_allclose(state.mean.numpy()[1], [3, 2])
    # past K: weight k / K per new user (one user: 1/3)
    update([1], [10], [1])
    np.testing.assert_allclose(state.count.numpy()[1], 3)
    np.testing.assert_allclose(state.mean.numpy()[1], np.array([3, 2]) + (np.array([-1, 1]) - [3, 2]) / 3, rtol=1e-6)
    # more new users in one batch than K: the batch's mean replaces the row
    update([2, 2, 2, 2], [7, 8, 9, 10], [1, 1, 1, 1])
    np.testing.assert_allclose(state.mean.numpy()[2], np.mean([u[k] for k in (7, 8, 9, 10)], axis=0), rtol=1e-6)
    np.testing.assert_allclose(state.count.numpy()[2], 3)
    assert not state.trainable_weights


def test_meta_nets_start_as_the_identity_and_warm_matches_numpy(tiny_data):
    model, x, _ = _model(tiny_data)
    np.testing.assert_array_equal(model(x)["ctr"].numpy(), model(x, warm=False)["ctr"].numpy())
    _randomise_meta(model)
    assert not np.array_equal(model(x)["ctr"].numpy(), model(x, warm=False)["ctr"].numpy())

    e = model.embed.impression(x)
    got = model.warm(e["target"], x["target_item_id"]).numpy()
    item, d = e["target"].numpy(), 4
    rows = model.embed.tables["item"].bucket(x["target_item_id"]).numpy()
    mean = model.recent.mean.numpy()[rows]
    (w1, b1), (w2, b2) = [(l.kernel.numpy(), l.bias.numpy()) for l in model.scaling.hidden_layers
                          + [model.scaling.output_layer]]
    tau_s = 2.0 * _sigmoid(np.maximum(item[:, d:] @ w1 + b1, 0) @ w2 + b2)
    (v1, c1), (v2, c2) = [(l.kernel.numpy(), l.bias.numpy()) for l in model.shifting.hidden_layers
                          + [model.shifting.output_layer]]
    tau_h = np.maximum(mean @ v1 + c1, 0) @ v2 + c2
    np.testing.assert_allclose(got[:, :d], tau_s * item[:, :d] + tau_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[:, d:], item[:, d:])  # the side fields stay


@pytest.mark.parametrize("recent_from", ["impressions", "clicks"])
def test_a_step_predicts_before_it_updates_the_state_and_ignores_its_labels(tiny_data, recent_from):
    """The loss of a training step is the BCE of the predictions made from the state before
    the step (so the step's own rows, and its labels, never enter its own prediction); the
    state changes after it, with the batch's labels only under recent_from=clicks."""
    states = {}
    for flip in (False, True):
        keras.utils.set_random_seed(3)  # the same initial weights both times
        model, x, y = _model(tiny_data, f"model.mwuf.recent_from={recent_from}")
        _randomise_meta(model)
        y = {**y, "ctr": 1.0 - y["ctr"]} if flip else y
        before = model(x)["ctr"].numpy()
        model.compile(optimizer=keras.optimizers.SGD(0.1), run_eagerly=True)
        logs = model.train_step((x, y))
        assert float(logs["loss"]) == pytest.approx(_bce(y["ctr"].numpy(), before), rel=1e-5)
        states[flip] = [w.numpy().copy() for w in model.recent.weights]
        assert not np.array_equal(model(x)["ctr"].numpy(), before)
    same = all(np.array_equal(a, b) for a, b in zip(states[False], states[True]))
    assert same == (recent_from == "impressions")


def test_the_two_updates_follow_their_own_losses(tiny_data):
    """One SGD step: base variables move by the gradient of the loss on the original
    embeddings, the meta nets by the gradient of the loss on e_warm."""
    model, x, y = _model(tiny_data)
    _randomise_meta(model)
    meta = {id(v) for v in model.meta_variables()}
    variables = model.trainable_variables
    bce = keras.losses.BinaryCrossentropy()
    with tf.GradientTape(persistent=True) as tape:
        cold, warm = bce(y["ctr"], model(x, warm=False)["ctr"]), bce(y["ctr"], model(x)["ctr"])
    want = []
    for v in variables:
        g = tape.gradient(warm if id(v) in meta else cold, v)
        g = tf.convert_to_tensor(g) if g is not None else tf.zeros_like(v)
        want.append(v.numpy() - 0.5 * g.numpy())
    model.compile(optimizer=keras.optimizers.SGD(0.5), run_eagerly=True)
    model.train_step((x, y))
    for v, w in zip(variables, want):
        np.testing.assert_allclose(v.numpy(), w, rtol=1e-4, atol=1e-6, err_msg=v.name)
    # not vacuous: the warm loss would move the base variables another way
    base = [v for v in variables if id(v) not in meta and "tower" in v.name][0]
    assert not np.allclose(tape.gradient(cold, base).numpy(), tape.gradient(warm, base).numpy())


def test_warm_trigger_switch(tiny_data):
    """With warm_trigger the recent users of a row's trigger change its output, without it
    only those of its target do."""
    for warm_trigger in (True, False):
        model, x, _ = _model(tiny_data, f"model.mwuf.warm_trigger={str(warm_trigger).lower()}", n=512)
        _randomise_meta(model)
        bucket = model.embed.tables["item"].bucket
        triggers = bucket(x["trigger_item_id"]).numpy()
        rows = ~np.isin(bucket(x["target_item_id"]).numpy(), triggers) & (x["has_trigger"].numpy() == 1)
        assert rows.sum() > 10
        before = model(x)["ctr"].numpy()[rows]
        mean = model.recent.mean.numpy()
        mean[np.unique(triggers)] += 3.0
        model.recent.mean.assign(mean)
        after = model(x)["ctr"].numpy()[rows]
        assert np.array_equal(after, before) != warm_trigger


def test_recent_users_setting_reaches_the_state(tiny_data):
    """``model.mwuf.recent_users`` is the state's K (20 by default); with K = 1 no item bucket
    counts more than one user after an update over a batch that touches many."""
    assert _model(tiny_data)[0].recent.capacity == 20
    model, x, y = _model(tiny_data, "model.mwuf.recent_users=1")
    assert model.recent.capacity == 1
    model.update_recent_users(x, y)
    count = model.recent.count.numpy()
    assert count.max() == 1 and (count == 1).sum() > 10


def test_state_is_saved_with_the_weights(tiny_data, tmp_path):
    model, x, y = _model(tiny_data)
    model.compile(optimizer=keras.optimizers.SGD(0.1), run_eagerly=True)
    model.train_step((x, y))
    assert model.recent.count.numpy().sum() > 0
    model.save_weights(str(tmp_path / "w"))
    again, _, _ = _model(tiny_data)
    again.load_weights(str(tmp_path / "w"))
    np.testing.assert_array_equal(again.recent.mean.numpy(), model.recent.mean.numpy())
    np.testing.assert_array_equal(again(x)["ctr"].numpy(), model(x)["ctr"].numpy())
    before = [w.numpy().copy() for w in model.recent.weights]
    model.evaluate(tf.data.Dataset.from_tensors((x, y)), verbose=0)  # frozen outside training
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, model.recent.weights))


def test_mwuf_ctr_ignores_the_intent_columns(tiny_data):
    spec = load_data_spec(tiny_data)
    model, _, _ = _model(tiny_data)
    _randomise_meta(model)
    x, _ = next(iter(make_dataset(tiny_data, "train", spec, 128)))  # every column of the records
    flipped = {**x, "intent_counts": x["intent_counts"][:, ::-1] + 1, "intent_dist": 1.0 - x["intent_dist"]}
    np.testing.assert_array_equal(model(x)["ctr"].numpy(), model(flipped)["ctr"].numpy())


def test_mwuf_needs_item_side_fields():
    spec = tir_feature_spec(item_fields=(), max_seq_len=5)
    with pytest.raises(ValueError, match="Meta Scaling Net reads the item side fields"):
        MWUF(spec, load_config(None, SMALL).model, 1, 4)


@pytest.mark.parametrize("key,value,message", [
    ("scale_gamma", "0", "must be a finite number > 0"),
    ("meta_hidden", "[0]", "layer sizes >= 1 ([] = no hidden layer); received [0]"),
    ("recent_users", "0", "integer >= 1"),
    ("recent_from", "views", "must be impressions or clicks"),
    ("warm_trigger", "1", "expected"),
])
def test_mwuf_config_names_the_bad_key(key, value, message):
    with pytest.raises(ValueError, match=f"model.mwuf.{key}") as info:
        load_config(None, [f"model.mwuf.{key}={value}"])
    assert message in str(info.value)
