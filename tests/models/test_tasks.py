"""Tasks own the losses (CTR: BCE + AUC on tfrs' Ranking; intent: masked KL), and a training
stage is data: switching stages needs no compile, and each stage moves exactly its variables."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tirec.compat import keras

from tirec.config import load_config
from tirec.models import registry
from tirec.models.base import DIE_PRETRAIN, STAGE_DIE, STAGE_JOINT, STAGE_UIM, UIM_PRETRAIN, Stage, \
    joint_stage, model_input_names, precision_scope
from tirec.models.data import load_data_spec, load_item_vectors, make_dataset
from tirec.models.tasks import CtrTask, IntentTask, replica_objective
from tirec.models.train import build_model, training_stages

SMALL = ["model.emb_dim=4", "model.daian.att_units=8", "model.daian.att_heads=2", "model.tower=[16,8]",
         "model.daian.uim_hidden=[8]", "model.din_hidden=[8,4]", "model.daian.sim_bins=5",
         "model.daian.explicit_buckets=1", "model.hist_buckets=1"]


def _cfg(*extra):
    return load_config(None, SMALL + list(extra))


def _model_and_batch(data, name="daian", n=128, *settings):
    spec = load_data_spec(data)
    ids, vecs, _ = load_item_vectors(data)
    model = build_model(name, spec, _cfg(*settings).model, ids, vecs)
    x, y = next(iter(make_dataset(data, "train", spec, n)))
    x = {k: v for k, v in x.items() if k in set(model_input_names(spec)) | {"prior_intent"}}
    model({k: v for k, v in x.items() if k != "prior_intent"})  # build
    return model, x, y


def test_ctr_task_is_a_ranking_task_with_mean_bce_and_auc():
    labels = tf.constant([[1.0], [0.0], [1.0], [0.0]])
    probs = tf.constant([[0.9], [0.2], [0.4], [0.6]])
    task = CtrTask()
    assert isinstance(task, tfrs.tasks.Ranking)
    loss = float(task(labels, probs))
    p, t = probs.numpy()[:, 0], labels.numpy()[:, 0]
    want = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    assert loss == pytest.approx(want, rel=1e-5)
    assert float(task.auc.result()) == pytest.approx(0.75, abs=1e-3)  # 3 of 4 pairs ranked right


def test_intent_task_masks_requests_without_clicks():
    labels = tf.constant([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    pred = tf.constant([[0.25, 0.25, 0.5], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2]])
    task = IntentTask()
    kl = [0.5 * np.log(2.0) * 2, np.log(1 / 0.6)]  # rows 0 and 2; row 1 has no label
    assert float(task(labels, pred)) == pytest.approx(np.mean(kl), rel=1e-5)
    assert float(task.kl.result()) == pytest.approx(np.mean(kl), rel=1e-5)
    assert float(IntentTask()(tf.zeros([2, 3]), pred[:2])) == 0.0  # nothing labelled: 0, not NaN


def test_tasks_compute_in_float32_under_mixed_precision():
    with precision_scope("mixed_bfloat16"):
        ctr, intent = CtrTask(), IntentTask()
    assert ctr.compute_dtype == intent.compute_dtype == "float32"
    labels = tf.constant([[0.3, 0.7]])  # not representable in bfloat16 as 0.3 exactly
    pred = tf.constant([[0.4, 0.6]])
    want = 0.3 * np.log(0.3 / 0.4) + 0.7 * np.log(0.7 / 0.6)
    assert float(intent(labels, pred)) == pytest.approx(want, rel=1e-5)


def test_replica_objective_is_the_sum_on_one_device():
    assert float(replica_objective(tf.constant(0.5), tf.constant(0.25))) == 0.75


def test_stage_weights_pick_the_counted_tasks(tiny_data):
    """A stage's data loss is the weighted sum of the tasks it names: a joint stage that also
    counts the intent KL at 0.5 reports BCE + 0.5 KL; the plain joint stage BCE only."""
    model, x, y = _model_and_batch(tiny_data)
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    outputs = model.stage_forward(x)
    bce = float(tf.reduce_mean(keras.losses.binary_crossentropy(y["ctr"], outputs["ctr"])))
    true = model.intent_target(y["intent"]).numpy()
    labelled = true.sum(axis=1) > 0
    pred = np.clip(outputs["intent"].numpy(), 1e-8, 1.0)
    ratio = np.where(true > 0, true * (np.log(np.maximum(true, 1e-8)) - np.log(pred)), 0.0)
    kl = float(ratio.sum(axis=1)[labelled].mean())
    both = dataclasses.replace(joint_stage(), name="joint_with_intent", tasks=(("ctr", 1.0), ("intent", 0.5)))
    for stage, want in ((joint_stage(), bce), (both, bce + 0.5 * kl), (UIM_PRETRAIN, kl)):
        model.set_stage(stage)
        model.reset_metrics()
        assert float(model.test_step((x, y))["loss"]) == pytest.approx(want, rel=1e-4), stage.name
    din, _, _ = _model_and_batch(tiny_data, "din")
    with pytest.raises(ValueError, match=r"stage s: DIN has no task \['intent'\]"):
        din.set_stage(Stage(3, "s", tasks=(("intent", 1.0),), train=(("main", 1.0),)))
    with pytest.raises(ValueError, match=r"unknown variable group\(s\) \['tower'\]"):
        model.set_stage(Stage(3, "s", tasks=(("ctr", 1.0),), train=(("tower", 1.0),)))


def test_daian_in_one_stage_keeps_the_uim_on_its_intent_loss(tiny_data):
    """``train.three_stage=false`` ablates the schedule, not the UIM's supervision: one stage on
    BCE + λ KL, λ = ``model.daian.intent_weight`` (1 by default; 0: the click loss alone).
    Fitting that stage brings the UIM's intent toward the labels; the click loss alone does not."""
    builder = registry.get_builder("daian")
    assert training_stages(builder, _cfg().train) == [UIM_PRETRAIN, DIE_PRETRAIN, joint_stage(0.1)]
    for weight, tasks in ((None, (("ctr", 1.0), ("intent", 1.0))), ("0.25", (("ctr", 1.0), ("intent", 0.25))),
                          ("0", (("ctr", 1.0),))):
        cfg = _cfg("train.three_stage=false", *([f"model.daian.intent_weight={weight}"] if weight else []))
        assert [s.tasks for s in training_stages(builder, cfg.train, cfg.model)] == [tasks]
    start, kl = None, {}
    for weight in ("1", "0"):
        model, x, y = _model_and_batch(tiny_data, "daian", 128, f"model.daian.intent_weight={weight}")
        start = start or model.get_weights()
        model.set_weights(start)
        (stage,) = training_stages(model, _cfg("train.three_stage=false").train)  # the model's own λ
        model.set_stage(stage)
        model.compile(optimizer=keras.optimizers.Adagrad(0.05))
        model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(20), epochs=1, verbose=0)
        model.set_stage(UIM_PRETRAIN)  # its loss: the KL of the UIM's intent
        model.reset_metrics()
        kl[weight] = float(model.test_step((x, y))["loss"])
    model.set_weights(start)
    model.reset_metrics()
    kl["start"] = float(model.test_step((x, y))["loss"])
    assert kl["1"] < 0.8 * kl["start"] and kl["1"] < 0.8 * kl["0"], kl


def test_stage_1_computes_the_intent_alone(tiny_data, monkeypatch):
    """Stage 1 counts only the intent: its step runs DAIAN's UIM, never the click path, gives
    the intent the full forward pass gives, and reports no click metric."""
    model, x, y = _model_and_batch(tiny_data)
    want = model(x, training=False)["intent"].numpy()
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    model.set_stage(UIM_PRETRAIN)
    assert model.stage_tasks() == ("intent",) and model.stage_tasks(DIE_PRETRAIN) == ("ctr", "intent")

    def click_path(*args, **kwargs):
        raise AssertionError("stage 1 ran the whole forward pass")

    monkeypatch.setattr(model, "forward", click_path)
    out = model.stage_forward(x)
    assert set(out) == {"intent"}
    np.testing.assert_allclose(out["intent"].numpy(), want, rtol=1e-5, atol=1e-7)
    model.reset_metrics()
    assert set(model.test_step((x, y))) == {"loss", "intent_kl"}
    monkeypatch.undo()
    model.set_stage(DIE_PRETRAIN)
    assert set(model.test_step((x, y))) == {"loss", "auc", "intent_kl"}


def _moved(model, before):
    """The ids of the trainable variables that differ from ``before`` (their earlier values)."""
    return {id(v) for v, b in zip(model.trainable_variables, before) if not np.array_equal(v.numpy(), b)}


def test_stages_switch_without_compile_and_move_exactly_their_variables(tiny_data):
    """Compiled once, DAIAN fits one traced step in stage 1, 2, 3 (and 1 again): each moves
    exactly its variable groups (1: the UIM, 2: everything else, 3: all). A train function
    traced in one stage is never reused in another (before, Keras kept the first stage's)."""
    model, x, y = _model_and_batch(tiny_data)
    uim = {id(v) for v in model.uim_variables()}
    every = {id(v) for v in model.trainable_variables}
    names = {id(v): v.name for v in model.trainable_variables}
    assert uim and every - uim
    # stage 3's UIM gradients come through I2E and are tiny: a large UIM rate makes every one of
    # them change its float32 weight
    model.compile(optimizer=keras.optimizers.SGD(0.5), uim_optimizer=keras.optimizers.SGD(20.0))
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(128)
    for stage, want in ((STAGE_UIM, uim), (STAGE_DIE, every - uim), (STAGE_JOINT, every), (STAGE_UIM, uim)):
        model.set_stage(stage)
        before = [v.numpy().copy() for v in model.trainable_variables]
        model.fit(data, epochs=1, verbose=0)
        moved = _moved(model, before)
        assert moved == want, (stage, sorted(names[i] for i in moved ^ want))


def test_each_stage_gets_its_own_optimizers_with_its_learning_rate_scale(tiny_data):
    """With make_optimizer (as train_run compiles), every (stage, variable group) has an
    optimizer of its own at the stage's scale; a stage's scale scales its group's update
    (plain SGD, same weights)."""
    cfg = _cfg("train.uim_lr_scale=0.1").train
    assert training_stages(registry.get_builder("din"), cfg) == [joint_stage(1.0)]
    model, x, y = _model_and_batch(tiny_data)
    stages = training_stages(model, cfg)
    assert stages == [UIM_PRETRAIN, DIE_PRETRAIN, joint_stage(0.1)] and stages[2].train == (("main", 1.0), ("uim", 0.1))
    model.set_stage(stages[0])  # as train_run: compile makes the current stage's optimizers
    model.compile(make_optimizer=lambda scale: keras.optimizers.SGD(0.5 * scale))
    seen = {}
    for stage in stages:
        optimizers = model.stage_optimizers(stage)
        assert set(optimizers) == set(stage.groups)
        seen.update({(stage.name, g): o for g, o in optimizers.items()})
    assert len({id(o) for o in seen.values()}) == len(seen) == 4
    assert float(seen[("joint", "uim")].learning_rate) == pytest.approx(0.05)
    assert float(seen[("uim_pretrain", "uim")].learning_rate) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="stage joint: its uim optimizer was made for learning-rate scale 0.1"):
        model.stage_optimizers(joint_stage(1.0))  # one name, other settings

    start = model.get_weights()
    steps = {}
    for scale in (1.0, 0.1):  # the UIM on its KL loss (large gradients) at two scales
        model.set_weights(start)
        model.set_stage(dataclasses.replace(UIM_PRETRAIN, name=f"uim_at_{scale}", train=(("uim", scale),)))
        model.compile(make_optimizer=lambda s: keras.optimizers.SGD(0.5 * s))
        model.train_step((x, y))
        steps[scale] = [v.numpy() - w for v, w in zip(model.uim_variables(), _uim_start(model, start))]
    for full, scaled, w in zip(steps[1.0], steps[0.1], _uim_start(model, start)):
        ulp = 2 * np.finfo(np.float32).eps * np.abs(w).max()  # w + step - w loses up to this
        np.testing.assert_allclose(scaled, 0.1 * full, rtol=1e-3, atol=ulp)
    assert max(np.abs(s).max() for s in steps[1.0]) > 1e-3


def _uim_start(model, start):
    """The initial values of the UIM's variables within ``model.get_weights()``-ordered ``start``."""
    position = {id(w): i for i, w in enumerate(model.weights)}
    return [start[position[id(v)]] for v in model.uim_variables()]


def test_stage_columns_follow_the_stages_feeds(tiny_data):
    """The columns kept for training and checked before it are those the stages feed, read from
    the spec: a stage without feeds needs no prior_intent; DAIAN's stage 2 needs it."""
    from tirec.models.base import check_stage_inputs, stage_input_names

    spec = load_data_spec(tiny_data)
    old = dataclasses.replace(spec, features=tuple(f for f in spec.features if f.name != "prior_intent"))
    no_feed = Stage(STAGE_DIE, "die_without_feed", tasks=(("ctr", 1.0),), train=(("main", 1.0),))
    check_stage_inputs(old, [no_feed, joint_stage()])
    assert stage_input_names(spec, [no_feed, joint_stage()]) == set()
    assert stage_input_names(spec, [UIM_PRETRAIN, DIE_PRETRAIN]) == {"prior_intent"}
    with pytest.raises(ValueError, match="prior_intent"):
        check_stage_inputs(old, [DIE_PRETRAIN])
