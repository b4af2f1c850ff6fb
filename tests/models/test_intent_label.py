"""The request intent label of DIHN and DIAN (tirec.models.intent_label) and what both models
share: the label, its auxiliary loss and stage, that the click output never reads a label, and
that request dedup changes only the speed."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tirec.compat import keras
from tirec.config import load_config
from tirec.models import registry
from tirec.models.base import joint_stage, model_input_names, request_input_names
from tirec.models.data import load_data_spec, load_item_vectors, make_dataset
from tirec.models.intent_label import (category_target, intent_label, intent_target, level_threshold, related_level,
                                       two_bins)
from tirec.models.layers.sequence import unique_rows
from tirec.models.tasks import IntentTask
from tirec.models.train import build_model, predict_eval, training_stages

SMALL = ["model.emb_dim=4", "model.tower=[16,8]", "model.din_hidden=[8,4]", "model.hist_buckets=1",
         "model.dihn.att_units=8", "model.dihn.att_heads=2", "model.dihn.uin_hidden=[8]",
         "model.dian.intent_hidden=[8]"]
MODELS = ["dihn", "dian"]

DIST = np.array([[0, 0, 0, 0, 0, 0],  # no click: no label
                 [0, 0, 1, 0, 0, 0],  # clicks at level 2 only
                 [0, 0, .5, 0, .5, 0],  # one of two clicks at level 4
                 [0, 0, 0, 0, 0, 1]], np.float32)


def test_intent_label_hand_computed():
    assert intent_label(DIST, 4).numpy()[:, 0].tolist() == [0, 0, 1, 1]
    assert intent_label(DIST, 2).numpy()[:, 0].tolist() == [0, 1, 1, 1]
    np.testing.assert_array_equal(intent_target(DIST, 4).numpy(), [[0, 0], [1, 0], [0, 1], [0, 1]])
    np.testing.assert_array_equal(intent_target(DIST, 5).numpy(), [[0, 0], [1, 0], [1, 0], [0, 1]])


def test_category_target_hand_computed():
    """y_I = 1 where the request clicked in the trigger's category; requests without a click
    (an all-zero distribution) stay unlabelled whatever the count says."""
    clicks = np.array([[0], [0], [2], [1]], np.int64)
    np.testing.assert_array_equal(category_target(DIST, clicks).numpy(), [[0, 0], [1, 0], [0, 1], [0, 1]])
    np.testing.assert_array_equal(category_target(DIST, np.array([[1], [1], [0], [0]])).numpy(),
                                  [[0, 0], [0, 1], [1, 0], [1, 0]])


def test_intent_task_on_the_two_bins_is_the_bce_over_the_labelled_requests():
    p = np.array([[.3], [.2], [.9], [.6]], np.float32)
    loss = float(IntentTask()(intent_target(DIST, 4), two_bins(p)))
    want = -np.mean(np.log([1 - .2, .9, .6]))  # the request without a click is masked out
    assert loss == pytest.approx(want, rel=1e-6)


def test_default_level_is_the_explicit_threshold_level(tiny_data):
    spec = load_data_spec(tiny_data)
    assert spec.intent_levels == 6 and tuple(spec.sim_range) == (-1.0, 1.0)
    assert spec.explicit_threshold == pytest.approx(1 / 3)  # the top 2 levels
    assert related_level(spec, None, "k") == 4 and related_level(spec, 3, "k") == 3
    assert level_threshold(spec, 4) == pytest.approx(1 / 3) and level_threshold(spec, 3) == pytest.approx(0.0)
    for bad in (0, 6):
        with pytest.raises(ValueError, match=rf"model.dian.intent_level: must lie in \[1, 5\] for data with 6 "
                                             rf"similarity levels \(pipeline.intent_levels\); received {bad}"):
            related_level(spec, bad, "model.dian.intent_level")


@pytest.mark.parametrize("setting, match", [
    ("model.dihn.intent_level=0", r"model.dihn.intent_level: must be null .* or an integer >= 1; received 0"),
    ("model.dian.intent_weight=-1", r"model.dian.intent_weight: must be a number >= 0; received -1"),
    ("model.dihn.sub_pooling=max", r"model.dihn.sub_pooling: must be attention or sum; received 'max'"),
    ("model.dihn.related=brand", r"model.dihn.related: must be one of auto, category, similarity; received 'brand'"),
    ("model.dihn.att_units=10", r"model.dihn.att_units: must be divisible by att_heads=4; received 10"),
    ("model.dihn.uin_hidden=[]", r"model.dihn.uin_hidden: must be a non-empty list of layer sizes >= 1; received \[\]"),
    ("model.dihn.intent_rule=leaf", r"model.dihn.intent_rule: must be level or category; received 'leaf'"),
    ("model.dian.intent_rule=null", r"model.dian.intent_rule: expected a string; received None"),
    ("model.dian.eps=0.5", r"model.dian.eps: must be a number in \(0, 0.5\); received 0.5"),
    ("model.dian.intent_hidden=[0]", r"model.dian.intent_hidden: must be a non-empty list of layer sizes >= 1"),
])
def test_config_errors_name_the_key_and_value(setting, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [setting])


@pytest.mark.parametrize("name", MODELS)
def test_training_plans_one_joint_stage_with_the_weighted_intent_loss(name):
    builder = registry.get_builder(name)
    cfg = load_config(None, [f"model.{name}.intent_weight=0.5", "train.three_stage=true"])
    assert training_stages(builder, cfg.train, cfg.model) == [joint_stage(intent_weight=0.5)]
    assert training_stages(builder, cfg.train)[0].tasks == (("ctr", 1.0), ("intent", 1.0))  # the default λ
    off = load_config(None, [f"model.{name}.intent_weight=0"])
    assert training_stages(builder, off.train, off.model)[0].tasks == (("ctr", 1.0),)


def _batch(data, n=64):
    """A batch with every record column the dataset parses (labels and intent columns too)."""
    spec = load_data_spec(data)
    x, y = next(iter(make_dataset(data, "train", spec, n)))
    return spec, dict(x), y


def _model(data, name, *settings):
    spec = load_data_spec(data)
    ids, vecs, _ = load_item_vectors(data)
    return build_model(name, spec, load_config(None, SMALL + list(settings)).model, ids, vecs)


@pytest.mark.parametrize("rule", ["level", "category"])
@pytest.mark.parametrize("name", MODELS)
def test_stage_loss_counts_the_weighted_intent_bce(tiny_data, name, rule):
    spec, x, y = _batch(tiny_data)
    model = _model(tiny_data, name, f"model.{name}.intent_weight=0.5", f"model.{name}.intent_rule={rule}")
    assert model.stage == joint_stage(intent_weight=0.5)
    model.set_stage(3)  # the stage number means the model's own joint stage
    assert model.stage == joint_stage(intent_weight=0.5)
    with pytest.raises(ValueError, match="trains in one joint stage"):
        model.set_stage(1)
    out = model(x)
    loss = float(model.stage_loss(model.stage, model.task_losses(y, out)))
    labelled, y_i = _intent_classes(model, y)
    assert labelled.sum() > 8 and 0 < y_i[labelled].mean() < 1  # both classes present
    assert loss == pytest.approx(_hand_loss(model, out, y, 0.5), rel=1e-4)


def _intent_classes(model, y):
    """Which requests have a click (the intent loss counts only those) and which of them reach
    the model's related level, or with ``intent_rule=category`` clicked in the trigger's
    category (the intent target 1)."""
    dist = np.asarray(y["intent"])
    if model.intent_rule == "category":
        return dist.sum(axis=1) > 0, np.asarray(y["intent_category"])[:, 0] > 0
    return dist.sum(axis=1) > 0, dist[:, model.intent_level:].sum(axis=1) > 0


def _hand_loss(model, out, y, intent_weight):
    """The click BCE plus ``intent_weight`` times the intent BCE over the requests with a click,
    in float64 from the model's outputs and the targets ``y``."""
    ctr, click = out["ctr"].numpy()[:, 0].astype(np.float64), y["ctr"].numpy()[:, 0]
    bce = -np.mean(click * np.log(ctr) + (1 - click) * np.log(1 - ctr))
    p = out["intent"].numpy()[:, 1].astype(np.float64)
    labelled, y_i = _intent_classes(model, y)
    aux = -np.mean(np.where(y_i, np.log(p), np.log(1 - p))[labelled])
    return bce + intent_weight * aux


@pytest.mark.parametrize("name", MODELS)
def test_the_category_rule_is_the_evaluated_target_and_needs_its_column(tiny_data, name, caplog):
    """With ``intent_rule=category`` the intent metrics compare against the category label of
    the eval records; on records without ``intent_cate_clicks`` the model refuses to build."""
    spec = load_data_spec(tiny_data)
    # level 5: the level rule's label differs (on the synthetic data the trigger's category and
    # the default level 4 mark nearly the same clicks)
    model = _model(tiny_data, name, f"model.{name}.intent_rule=category", f"model.{name}.intent_level=5")
    assert f"model.{name}.intent_level=5 does not set the intent label under intent_rule=category" in caplog.text
    got = predict_eval(model, tiny_data, spec, 256)
    x, y = next(iter(make_dataset(tiny_data, "eval", spec, 1 << 20)))
    np.testing.assert_array_equal(got["intent_true"], category_target(y["intent"], y["intent_category"]).numpy())
    assert 0 < got["intent_true"][:, 1].sum() < got["intent_true"].sum()  # both label values
    assert not np.array_equal(got["intent_true"], model.intent_target(y["intent"]).numpy())
    old = dataclasses.replace(spec, features=tuple(f for f in spec.features if f.name != "intent_cate_clicks"))
    ids, vecs, _ = load_item_vectors(tiny_data)
    with pytest.raises(ValueError, match=rf"model.{name}.intent_rule=category: the data has no column "
                                         r"'intent_cate_clicks' \(the pipeline writes it"):
        build_model(name, old, load_config(None, SMALL + [f"model.{name}.intent_rule=category"]).model,
                    ids, vecs)


@pytest.mark.parametrize("rule", ["level", "category"])
@pytest.mark.parametrize("name", MODELS)
def test_ctr_reads_no_label_of_the_request(tiny_data, name, rule):
    """Flipping every label and intent column of the records leaves ``ctr`` bit-identical, while
    the training loss (the labels as targets) changes."""
    spec, x, y = _batch(tiny_data)
    model = _model(tiny_data, name, f"model.{name}.intent_rule={rule}")
    flipped = dict(x)
    for col in ("intent_counts", "intent_dist", "prior_intent"):
        flipped[col] = x[col][:, ::-1]
    flipped["intent_cate_clicks"] = tf.cast(x["intent_cate_clicks"] == 0, tf.int64)
    assert not np.array_equal(flipped["intent_dist"].numpy(), x["intent_dist"].numpy())
    flipped["label"] = 1 - y["ctr"][:, 0]  # also present as a column: still not read
    out, out_flipped = model(x), model(flipped)
    np.testing.assert_array_equal(out["ctr"].numpy(), out_flipped["ctr"].numpy())
    np.testing.assert_array_equal(out["intent"].numpy(), out_flipped["intent"].numpy())
    y_flipped = {"ctr": 1 - y["ctr"], "intent": flipped["intent_dist"],
                 "intent_category": tf.reshape(flipped["intent_cate_clicks"], [-1, 1])}
    losses = [float(model.stage_loss(model.stage, model.task_losses(t, out))) for t in (y, y_flipped)]
    want = [_hand_loss(model, out, t, 1.0) for t in (y, y_flipped)]  # the default intent weight
    assert want[0] != want[1]  # an untrained model's outputs sit near 0.5: the two differ only a little
    assert losses == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name, extra", [("dihn", ()), ("dihn", ("model.dihn.sub_pooling=sum",)),
                                         ("dian", ()), ("dian", ("model.dian.intent_context=false",))])
def test_request_dedup_and_buckets_change_only_the_speed(tiny_data, name, extra):
    spec, x, y = _batch(tiny_data, n=96)
    x = {k: v for k, v in x.items() if k in model_input_names(spec)}
    first, index = unique_rows([x[n] for n in request_input_names(spec)])
    assert 1 < first.shape[0] < index.shape[0]  # several candidates per request
    results, weights = [], None
    for dedup, buckets in (("false", 0), ("true", 0), ("true", 2)):
        model = _model(tiny_data, name, f"model.request_dedup={dedup}", f"model.hist_buckets={buckets}", *extra)
        model(x)
        weights = model.get_weights() if weights is None else weights
        model.set_weights(weights)
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = model.stage_loss(model.stage, model.task_losses(y, out))
        grads = tape.gradient(loss, model.trainable_variables)
        results.append((out["ctr"].numpy(), out["intent"].numpy(),
                        {v.name: tf.convert_to_tensor(g).numpy() for v, g in zip(model.trainable_variables, grads)
                         if g is not None}))
    ctr, intent, want = results[0]
    for got_ctr, got_intent, got in results[1:]:
        np.testing.assert_allclose(got_ctr, ctr, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_intent, intent, rtol=1e-5, atol=1e-6)
        assert set(got) == set(want)
        for k, g in got.items():
            np.testing.assert_allclose(g, want[k], rtol=1e-4, atol=1e-4 * max(1e-3, np.abs(want[k]).max()), err_msg=k)


@pytest.mark.parametrize("name", MODELS)
def test_no_trigger_means_no_trigger_intent(tiny_data, name):
    spec, x, _ = _batch(tiny_data)
    x = {k: v for k, v in x.items() if k in model_input_names(spec)}
    none = np.arange(64) % 3 == 0
    x["has_trigger"] = tf.where(none, tf.zeros_like(x["has_trigger"]), x["has_trigger"])
    intent = _model(tiny_data, name)(x)["intent"].numpy()
    np.testing.assert_array_equal(intent[none], np.tile([[1.0, 0.0]], (none.sum(), 1)))
    assert np.all(intent[~none, 1] > 0) and np.allclose(intent.sum(axis=1), 1.0)


@pytest.mark.parametrize("name", MODELS)
def test_intent_weight_zero_leaves_the_intent_net_to_the_click_loss(tiny_data, name):
    """λ = 0: the intent loss adds nothing; the step equals one on the click loss alone."""
    spec, x, y = _batch(tiny_data)
    x = {k: v for k, v in x.items() if k in model_input_names(spec)}
    grads = {}
    for weight in ("0", "1"):
        model = _model(tiny_data, name, f"model.{name}.intent_weight={weight}")
        keras.utils.set_random_seed(0)
        model(x)
        if weight == "0":
            init = model.get_weights()
        model.set_weights(init)
        with tf.GradientTape() as tape:
            loss = model.stage_loss(model.stage, model.task_losses(y, model(x, training=True)))
        grads[weight] = [tf.convert_to_tensor(g).numpy() if g is not None else None
                         for g in tape.gradient(loss, model.trainable_variables)]
        with tf.GradientTape() as tape:
            click = model.task_losses(y, model(x, training=True))["ctr"]
        grads[weight + "_ctr"] = [tf.convert_to_tensor(g).numpy() if g is not None else None
                                  for g in tape.gradient(click, model.trainable_variables)]
    same = [np.allclose(a, b) for a, b in zip(grads["0"], grads["0_ctr"]) if a is not None]
    differ = [not np.allclose(a, b) for a, b in zip(grads["1"], grads["1_ctr"]) if a is not None and b is not None]
    assert all(same) and any(differ)


@pytest.mark.parametrize("name", MODELS)
def test_mixed_precision_outputs_float32(tiny_data, name):
    spec, x, _ = _batch(tiny_data, n=32)
    x = {k: v for k, v in x.items() if k in model_input_names(spec)}
    ids, vecs, _ = load_item_vectors(tiny_data)
    model = build_model(name, spec, load_config(None, SMALL).model, ids, vecs, precision="mixed_bfloat16")
    out = model(x)
    assert out["ctr"].dtype == tf.float32 and out["intent"].dtype == tf.float32
    assert np.all(np.isfinite(out["ctr"].numpy())) and np.allclose(out["intent"].numpy().sum(axis=1), 1.0)
