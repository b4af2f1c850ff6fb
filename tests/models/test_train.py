"""Training runs: a run's metrics and reload, DAIAN's stages do what they say, runs resume."""
import collections
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tirec.compat import keras
from tirec.config import load_config
from tirec.features.spec import FeatureSpec
from tirec.models import registry
from tirec.models.base import STAGE_DIE, STAGE_JOINT, STAGE_UIM, model_input_names
from tirec.models.data import load_data_spec, load_item_vectors, make_dataset
from tirec.models.train import build_model, evaluate_run, load_run, train_run, warn_unread_run_settings


SMALL = ["model.emb_dim=4", "model.daian.att_units=8", "model.daian.att_heads=2", "model.tower=[16,8]",
         "model.daian.uim_hidden=[8]", "model.din_hidden=[8,4]", "model.daian.sim_bins=5",
         "model.gapnet.att_units=8", "model.gapnet.att_heads=2", "model.gapnet.cgdf_hidden=[4]",
         "model.qin.num_layers=2", "model.qin.num_row=2", "model.qin.trigger_attention=true",
         "model.qin.dropout=0",  # the equality checks below compare training-mode forwards
         "model.dihn.att_units=8", "model.dihn.att_heads=2", "model.dihn.uin_hidden=[8]",
         "model.dian.intent_hidden=[8]",
         "train.batch_size=256", "train.shuffle_buffer=1000",
         # one compacted group: the 16-bucket graphs trace 16 copies (slow to build in tiny runs);
         # test_daian_explicit_buckets_equal_the_padded_path and
         # test_hist_buckets_equal_the_padded_path check the buckets
         "model.daian.explicit_buckets=1", "model.hist_buckets=1"]


def _cfg(*extra):
    return load_config(None, SMALL + list(extra))


def _batch(data, spec, n=64):
    ds = make_dataset(data, "train", spec, n)
    x, y = next(iter(ds))
    return x, y


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown model 'dinn'; valid models: "
                       + re.escape(str(registry.model_names()))):
        registry.get_builder("dinn")


# Every registered model trains, exports and scores from its SavedModel in
# tests/serving/test_every_model_exports.py; here the run folder's metrics and its reload by
# `evaluate_run`, for a click-only model and two with an intent output.
@pytest.mark.parametrize("name", ["din", "daian", "dian"])
def test_run_writes_its_metrics_and_reloads(tiny_data, tmp_path, name, caplog):
    cfg = _cfg("train.three_stage=false", "train.steps_per_epoch=2")
    run = str(tmp_path / name)
    with caplog.at_level("WARNING", logger="tirec.models.train"):
        metrics = train_run(tiny_data, name, run, cfg.model, cfg.train)
    # SMALL sets other models' sections: each is named as not read, the trained one is not
    assert f"model.gapnet.* not read: training {name!r}" in caplog.text
    assert f"model.{name}.* not read" not in caplog.text
    # train.three_stage=false: read by DAIAN alone
    assert ("train.three_stage=false not read: only DAIAN's three stages read it" in caplog.text) == (name != "daian")
    for key in ("auc", "gauc", "logloss"):
        assert np.isfinite(metrics[key]), key
    on_disk = json.load(open(os.path.join(run, "metrics.json")))
    assert on_disk["auc"] == pytest.approx(metrics["auc"])
    if name != "din":  # the intent models
        assert 0.0 <= metrics["intent_js"] <= np.log(2)
    # The run reloads from its folder and scores the same.
    model, spec, _ = load_run(run)
    again = evaluate_run(tiny_data, run)
    assert again["auc"] == pytest.approx(metrics["auc"], abs=1e-6)
    # SavedModel round trip without custom objects.
    x, _ = _batch(tiny_data, spec)
    x = {k: v for k, v in x.items() if k in model_input_names(spec)}
    want = model(x)["ctr"].numpy()
    model.save(str(tmp_path / "sm"))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    got = loaded(x, training=False)["ctr"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("settings,three_stage,message", [
    (["model.daian.intent_weight=0.5"], True, "model.daian.intent_weight not read"),
    (["model.daian.intent_weight=0.5"], False, None),
    (["train.uim_lr_scale=0.5"], False, "train.uim_lr_scale=0.5 not read"),
    (["train.uim_lr_scale=0.5"], True, None),
])
def test_daian_schedule_settings_outside_their_schedule_are_named(caplog, settings, three_stage, message):
    cfg = load_config(None, settings + [f"train.three_stage={str(three_stage).lower()}"])
    with caplog.at_level("WARNING", logger="tirec.models.train"):
        warn_unread_run_settings(cfg.model, cfg.train, "daian", registry.get_builder("daian"))
    assert ("not read" in caplog.text) == (message is not None)
    assert message is None or message in caplog.text


def test_step_backups_fall_back_to_epoch_ends_naming_the_setting(caplog):
    from tirec.models.train import _backup_freq

    cfg = _cfg("train.backup_every_steps=3").train
    with caplog.at_level("WARNING", logger="tirec.models.train"):
        assert _backup_freq(cfg, 5, ps=False) == 3
        assert "not read" not in caplog.text
        assert _backup_freq(cfg, None, ps=False) == "epoch"
        assert "train.backup_every_steps=3 not read: a run whose epoch length is unknown (set " \
               "--steps-per-epoch) backs up at epoch ends" in caplog.text
        assert _backup_freq(cfg, 5, ps=True) == "epoch"
        assert "not read: ParameterServerStrategy backs up at epoch ends" in caplog.text
        caplog.clear()
        assert _backup_freq(_cfg().train, None, ps=False) == "epoch"  # the default: nothing to name
    assert "not read" not in caplog.text


def test_daian_stages_train_the_right_variables(tiny_data):
    spec = load_data_spec(tiny_data)
    ids, vecs, _ = load_item_vectors(tiny_data)
    cfg = _cfg()
    model = build_model("daian", spec, cfg.model, ids, vecs)
    x, y = _batch(tiny_data, spec)
    model(x)  # build
    uim = {id(v) for v in model.uim_variables()}
    rest = [v for v in model.trainable_variables if id(v) not in uim]
    assert uim and rest

    def snapshot():
        return [v.numpy().copy() for v in model.trainable_variables]

    def changed(before):
        return {id(v) for v, b in zip(model.trainable_variables, before)
                if not np.array_equal(v.numpy(), b)}

    for stage, expect_uim, expect_rest in ((STAGE_UIM, True, False), (STAGE_DIE, False, True),
                                           (STAGE_JOINT, True, True)):
        model.set_stage(stage)
        model.compile(optimizer=keras.optimizers.Adagrad(0.5),
                      uim_optimizer=keras.optimizers.Adagrad(0.05))
        before = snapshot()
        model.train_step((x, y))
        moved = changed(before)
        assert bool(moved & uim) == expect_uim, stage
        assert bool(moved - uim) == expect_rest, stage


def test_l2_penalises_the_dense_kernels_the_stage_trains(tiny_data):
    spec = load_data_spec(tiny_data)
    ids, vecs, _ = load_item_vectors(tiny_data)
    model = build_model("daian", spec, _cfg("model.l2=0.1").model, ids, vecs)
    x, y = _batch(tiny_data, spec)
    model(x)  # build
    kernels = model.l2_kernels()
    assert len(kernels) > 10 and all(k.name.endswith("/kernel:0") for k in kernels)
    assert not {id(k) for k in kernels} & {id(w) for w in model.embed.weights + model.items.weights}

    def penalty(variables):
        return 0.1 * sum(float(np.sum(np.square(k.numpy()))) for k in variables)

    uim = {id(v) for v in model.uim_variables()}
    for stage, chosen in ((STAGE_JOINT, kernels), (STAGE_UIM, [k for k in kernels if id(k) in uim]),
                          (STAGE_DIE, [k for k in kernels if id(k) not in uim])):
        model.set_stage(stage)
        trained = model.trained_variables()
        assert 0 < len(chosen) and float(model.regularization_loss(trained)) == pytest.approx(penalty(chosen),
                                                                                               rel=1e-5)
    model.compile(optimizer=keras.optimizers.SGD(0.01), uim_optimizer=keras.optimizers.SGD(0.01))
    want = penalty([k for k in kernels if id(k) not in uim])  # stage 2 (the last set), before the update
    logs = model.train_step((x, y))
    assert float(logs["reg_loss"]) == pytest.approx(want, rel=1e-5)
    off = build_model("din", spec, _cfg().model, ids, vecs)
    off(x)
    assert float(off.regularization_loss(off.trainable_variables)) == 0.0
    assert "reg_loss" not in {m.name for m in off.metrics}
    with pytest.raises(ValueError, match="model.l2: must be a finite number >= 0"):
        _cfg("model.l2=-1")


def _fed_intents(model, x, y):
    """The intent tensors DAIAN's I2E receives in a train step and in a validation step."""
    seen = []
    plain = model._i2e_query

    def spy(trigger, intent):
        seen.append(intent.numpy())
        return plain(trigger, intent)

    model._i2e_query = spy
    try:
        model.train_step((x, y))
        model.test_step((x, y))
    finally:
        del model._i2e_query
    return seen


def test_stage2_intent_input_ignores_the_labels(tiny_data):
    """Stage 2 feeds DAIAN the record's prior_intent in training and validation; flipping every
    click label (y["ctr"]) leaves the fed-in intent unchanged (the old leave-one-out input
    changed with the row's own label)."""
    spec = load_data_spec(tiny_data)
    ids, vecs, _ = load_item_vectors(tiny_data)
    model = build_model("daian", spec, _cfg().model, ids, vecs)
    x, y = _batch(tiny_data, spec, n=256)  # every column of the records
    assert float(tf.reduce_sum(y["ctr"])) > 0
    model({k: v for k, v in x.items() if k in model_input_names(spec)})
    model.set_stage(STAGE_DIE)
    model.compile(optimizer=keras.optimizers.Adagrad(0.05))
    flipped = {**y, "ctr": 1.0 - y["ctr"]}
    fed, fed_flipped = _fed_intents(model, x, y), _fed_intents(model, x, flipped)
    assert len(fed) == len(fed_flipped) == 2
    for a, b in zip(fed, fed_flipped):
        np.testing.assert_array_equal(a, b)
    for a in fed:
        np.testing.assert_array_equal(a, x["prior_intent"].numpy())


@pytest.mark.parametrize("switch", ["model.daian.use_uim=false", "model.daian.use_die=false",
                                    "model.daian.use_sein=false", "model.daian.i2e_fusion=add",
                                    "model.daian.sim_fusion=additive", "model.daian.gate_inputs=intent_interest",
                                    "model.daian.uim_attention=mhta", "model.daian.explicit_len=2",
                                    "model.daian.gate_shift=mlp"])
def test_daian_ablations_build_and_step(tiny_data, switch):
    spec = load_data_spec(tiny_data)
    ids, vecs, _ = load_item_vectors(tiny_data)
    cfg = _cfg(switch)
    model = build_model("daian", spec, cfg.model, ids, vecs)
    x, y = _batch(tiny_data, spec)
    out = model(x)
    k = 2 if switch == "model.daian.use_uim=false" else spec.intent_levels
    assert out["intent"].shape == (64, k)
    np.testing.assert_allclose(out["intent"].numpy().sum(axis=1), 1.0, atol=1e-5)
    model.compile(optimizer=keras.optimizers.Adagrad(0.05),
                  uim_optimizer=keras.optimizers.Adagrad(0.005))  # as train_run compiles it
    logs = model.train_step((x, y))
    assert np.isfinite(float(logs["loss"]))


def test_three_stage_run_resumes_and_rejects_other_data(tiny_data, tmp_path):
    cfg = _cfg("train.steps_per_epoch=2", "train.epochs=2", "train.early_stopping_patience=1")
    run = str(tmp_path / "r")
    first = train_run(tiny_data, "daian", run, cfg.model, cfg.train)
    assert set(first["history"]) == {"uim_pretrain", "die_pretrain", "joint"}
    for k in (1, 2, 3):
        assert os.path.exists(os.path.join(run, f"stage_{k}", "done"))
    # every stage validated on valid (stage 1 on its intent KL loss, with no click metric: it
    # computes the UIM alone); the best checkpoint is the final stage's
    for name, stage in first["history"].items():
        want = {"val_loss", "val_intent_kl"} | ({"val_auc"} if name != "uim_pretrain" else set())
        assert want <= set(stage) and 1 <= len(stage["val_loss"]) <= 2, name
    assert "val_auc" not in first["history"]["uim_pretrain"]
    assert first["best_checkpoint"]["stage"] == STAGE_JOINT and first["best_checkpoint"]["monitor"] == "val_auc"
    assert sorted(os.listdir(run)).count("best") == 1 and not os.path.exists(os.path.join(run, "stage_1", "best"))
    again = train_run(tiny_data, "daian", run, cfg.model, cfg.train)
    assert all(h == {"skipped": True} for h in again["history"].values())
    assert again["auc"] == pytest.approx(first["auc"], abs=1e-6)
    assert again["best_checkpoint"] == first["best_checkpoint"]
    other = tmp_path / "other"
    other.mkdir()
    spec = load_data_spec(tiny_data)
    import dataclasses

    dataclasses.replace(spec, intent_levels=4).save(str(other / "spec.json"))
    with pytest.raises(ValueError, match="intent_levels"):
        train_run(tiny_data, "daian", str(other), cfg.model, cfg.train)
    # other settings are refused too (a finished stage is not trained again), the folder kept as it was
    with open(os.path.join(run, "config.json")) as fh:
        recorded = fh.read()
    with pytest.raises(ValueError, match=r"--run .* holds a run with other settings \(train.learning_rate: "
                                         r"[0-9.]+ there, 0.5 now\); resume it with the same settings"):
        train_run(tiny_data, "daian", run, cfg.model, dataclasses.replace(cfg.train, learning_rate=0.5))
    with pytest.raises(ValueError, match=r"model.name: 'daian' there, 'din' now"):
        train_run(tiny_data, "din", run, cfg.model, cfg.train)
    with open(os.path.join(run, "config.json")) as fh:
        assert fh.read() == recorded
    # how it trains and where its data lie may change (the data are checked by their spec)
    resumed = train_run(tiny_data + "/", "daian", run, cfg.model, dataclasses.replace(cfg.train, backup_every_steps=7))
    assert all(h == {"skipped": True} for h in resumed["history"].values())


def test_records_without_prior_intent(tiny_data, tmp_path, caplog):
    """Records written before prior_intent existed: DAIAN's three stages stop before the run
    folder is touched, with one clear line; one-stage DAIAN and DIN still train on them (their
    stages read no new column; DAIAN's stage 3 steps on a batch of old columns)."""
    import dataclasses
    import logging
    import shutil

    from tirec import cli
    from tirec.models.base import check_stage_inputs
    from tirec.models.train import stages_for

    old = tmp_path / "old"
    shutil.copytree(tiny_data, old)
    spec = load_data_spec(tiny_data)
    old_spec = dataclasses.replace(spec, features=tuple(f for f in spec.features if f.name != "prior_intent"))
    old_spec.save(str(old / "spec.json"))
    run = tmp_path / "run"
    sets = [x for o in SMALL + ["train.steps_per_epoch=1"] for x in ("--set", o)]
    assert cli.main(["train", "--data", str(old), "--model", "daian", "--run", str(run)] + sets) == 2
    errors = [r.getMessage() for r in caplog.records if r.name == "tirec" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "['prior_intent']" in errors[0] and "re-run `tirec pipeline`" in errors[0]
    assert not run.exists()
    one_stage = _cfg("train.three_stage=false").train
    assert stages_for(registry.get_builder("daian"), one_stage) == [STAGE_JOINT]
    for name, train_cfg in (("din", _cfg().train), ("daian", one_stage)):
        check_stage_inputs(old_spec, stages_for(registry.get_builder(name), train_cfg))
    # DAIAN's stage 3 (and validation) on a batch of the old columns.
    ids, vecs, _ = load_item_vectors(str(old))
    model = build_model("daian", old_spec, _cfg().model, ids, vecs)
    x, y = _batch(str(old), old_spec)
    assert "prior_intent" not in x
    model.compile(optimizer=keras.optimizers.Adagrad(0.05))
    assert np.isfinite(float(model.train_step((x, y))["loss"]))
    assert np.isfinite(float(model.test_step((x, y))["loss"]))
    model.set_stage(STAGE_DIE)
    with pytest.raises(ValueError, match="re-run `tirec pipeline`"):
        model.test_step((x, y))


def test_evaluate_cli_with_baseline(tiny_data, tmp_path, capsys):
    from tirec import cli
    from tirec.models import metrics as M

    cfg = _cfg("train.three_stage=false", "train.steps_per_epoch=2")
    base = train_run(tiny_data, "din", str(tmp_path / "din"), cfg.model, cfg.train)
    train_run(tiny_data, "daian", str(tmp_path / "daian"), cfg.model, cfg.train)
    capsys.readouterr()  # drop the training progress output
    # the baseline is scored on --data, not read from its metrics.json (which another
    # evaluation, on other data or under noise, may have written)
    stored = json.loads((tmp_path / "din" / "metrics.json").read_text())
    (tmp_path / "din" / "metrics.json").write_text(json.dumps({**stored, "auc": 0.99, "gauc": 0.99}))
    assert cli.main(["evaluate", "--data", tiny_data, "--run", str(tmp_path / "daian"),
                     "--baseline", str(tmp_path / "din")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["baseline_auc"] == pytest.approx(base["auc"], abs=1e-6)
    again = evaluate_run(tiny_data, str(tmp_path / "daian"))  # without a baseline: none in metrics.json
    stored = json.loads((tmp_path / "daian" / "metrics.json").read_text())
    assert "rela_impr_auc" not in again and "rela_impr_auc" not in stored and "baseline" not in stored
    assert out["rela_impr_auc"] == pytest.approx(M.rela_impr(out["auc"], base["auc"]))
    assert out["rela_impr_gauc"] == pytest.approx(M.rela_impr(out["gauc"], base["gauc"]))
    for key in ("auc", "gauc", "logloss", "intent_js"):
        assert key in out


def test_evaluate_on_an_empty_eval_split_says_so(tiny_data, tmp_path):
    import glob
    import gzip
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    for shard in glob.glob(str(data / "eval" / "*.tfrecord.gz")):
        with gzip.open(shard, "wb"):
            pass
    with pytest.raises(ValueError, match=r"eval/ has no records \(\d+ empty shard\(s\)\)"):
        evaluate_run(str(data), str(tmp_path / "any_run"))


def test_a_run_trained_before_the_category_clicks_evaluates_on_records_with_them(tiny_data, tmp_path):
    """A run whose spec.json lacks ``intent_cate_clicks`` (trained on records written before
    it) evaluates on records that have it, to the same metrics; a run that has it does not
    evaluate on records without it."""
    from tirec.models.train import check_run_data

    cfg = _cfg("train.three_stage=false", "train.steps_per_epoch=2")
    run = str(tmp_path / "dian")
    train_run(tiny_data, "dian", run, cfg.model, cfg.train)
    now = evaluate_run(tiny_data, run)
    spec = FeatureSpec.load(f"{run}/spec.json")
    assert "intent_cate_clicks" in spec.names
    spec.without(["intent_cate_clicks"]).save(f"{run}/spec.json")  # as an older run wrote it
    older = evaluate_run(tiny_data, run)
    assert {k: older[k] for k in ("auc", "gauc", "logloss", "intent_js")} == \
        {k: now[k] for k in ("auc", "gauc", "logloss", "intent_js")}
    old_data = tmp_path / "old_data"
    shutil.copytree(tiny_data, old_data)
    FeatureSpec.load(f"{old_data}/spec.json").without(["intent_cate_clicks"]).save(f"{old_data}/spec.json")
    with pytest.raises(ValueError, match=r"the data spec differs .*feature 'intent_cate_clicks' only in "
                                         r"the second spec"):
        check_run_data("dian", str(old_data), spec)
    # the category rule on those records fails before the run folder holds anything
    cat = _cfg("train.three_stage=false", "model.dian.intent_rule=category")
    with pytest.raises(ValueError, match=r"model.dian.intent_rule=category: the data has no column"):
        train_run(str(old_data), "dian", str(tmp_path / "cat"), cat.model, cat.train)
    assert not (tmp_path / "cat").exists() or not os.listdir(tmp_path / "cat")


class _Interrupt(Exception):
    pass


class _StopAt(keras.callbacks.Callback):
    """Counts the batches a fit runs and kills the run at batch ``at`` of epoch ``epoch``."""

    def __init__(self, at=None, epoch=0):
        super().__init__()
        self.at, self.epoch, self.batches, self.current = at, epoch, [], 0

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append((self.current, batch))
        if self.at is not None and self.current == self.epoch and batch == self.at:
            raise _Interrupt()


def test_run_killed_mid_epoch_resumes_from_its_backup(tiny_data, tmp_path):
    cfg = _cfg("train.three_stage=false", "train.epochs=2", "train.backup_every_steps=3",
               "train.batch_size=64", "train.shuffle_buffer=0")
    run = str(tmp_path / "r")
    stop = _StopAt(at=4, epoch=1)  # dies in the second epoch, after the backup at its step 3
    with pytest.raises(_Interrupt):
        train_run(tiny_data, "din", run, cfg.model, cfg.train, callbacks=[stop])
    assert os.path.isdir(os.path.join(run, "backup", "joint"))
    steps = max(b for e, b in stop.batches if e == 0) + 1
    count = _StopAt()
    metrics = train_run(tiny_data, "din", run, cfg.model, cfg.train, callbacks=[count])
    # Only the rest of the interrupted epoch ran: no batch of epoch 0, and epoch 1 not from 0.
    assert all(e == 1 for e, _ in count.batches)
    assert 0 < len(count.batches) < steps
    assert np.isfinite(metrics["auc"])
    import glob

    # the backup checkpoint is deleted once the stage finishes
    assert not glob.glob(os.path.join(run, "backup", "joint", "**", "*.index"), recursive=True)


# ---- exact speed-ups and mixed precision -------------------------------------------------------

def _daian_outputs_and_grads(model, x, y):
    with tf.GradientTape() as tape:
        out = model.stage_forward(x, training=True)  # with the stage's feeds
        loss = model.stage_loss(model.stage, model.task_losses(y, out))  # stage 1: the intent KL
    grads = tape.gradient(loss, model.trainable_variables)
    return out, {v.name: tf.convert_to_tensor(g).numpy() for v, g in zip(model.trainable_variables, grads)
                 if g is not None}


def _assert_variants_match(data, name, variants, stage=STAGE_JOINT):
    """Model ``name`` built with each list of settings in ``variants`` (and the same weights):
    outputs (``ctr``, and ``intent`` when the model has it) and gradients equal to those of
    the first. Returns the batch's features."""
    spec = load_data_spec(data)
    ids, vecs, _ = load_item_vectors(data)
    x_all, y = _batch(data, spec, n=128)
    x = {k: v for k, v in x_all.items() if k in model_input_names(spec)}
    results, weights = [], None
    for settings in variants:
        model = build_model(name, spec, _cfg(*settings).model, ids, vecs)
        model(x)
        if weights is None:
            weights = model.get_weights()
        model.set_weights(weights)
        model.set_stage(stage)
        x_stage = {**x, **({"prior_intent": x_all["prior_intent"]} if stage == STAGE_DIE else {})}
        results.append(_daian_outputs_and_grads(model, x_stage, y))
    want, want_grads = results[0]
    for settings, (got, grads) in zip(variants[1:], results[1:]):
        assert set(got) == set(want)
        for out in got:
            np.testing.assert_allclose(got[out].numpy(), want[out].numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{out} {settings}")
        assert set(grads) == set(want_grads)
        for var, g in grads.items():
            w = want_grads[var]
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * max(1e-3, np.abs(w).max()),
                                       err_msg=f"{var} {settings}")
    return x


def _assert_buckets_match_padded(data, name, key, *settings):
    """``key`` = 0 (the padded path), 1 and 3 length groups (3 groups of >= 32 rows: the
    bucketed path runs) give the same outputs and gradients."""
    return _assert_variants_match(data, name, [[f"{key}={b}", *settings] for b in (0, 1, 3)])


@pytest.mark.parametrize("dedup", [True, False])
@pytest.mark.parametrize("explicit_len", [50, 3])
def test_daian_explicit_buckets_equal_the_padded_path(tiny_data, explicit_len, dedup):
    """explicit_buckets only changes the speed: same outputs and gradients as the padded path
    (explicit_buckets=0), with and without an explicit_len cap, with the self-attention run
    per request (request_dedup) or per sample."""
    _assert_buckets_match_padded(tiny_data, "daian", "model.daian.explicit_buckets",
                                 f"model.daian.explicit_len={explicit_len}", f"model.request_dedup={str(dedup).lower()}")


@pytest.mark.parametrize("name", ["din", "daian"])
def test_hist_buckets_equal_the_padded_path(tiny_data, name):
    """hist_buckets (DIN attention, and DAIAN's UIM pooling, on the compacted history) only
    changes the speed: same outputs and gradients as the padded path (hist_buckets=0)."""
    x = _assert_buckets_match_padded(tiny_data, name, "model.hist_buckets")
    # the tiny data has histories shorter than L, so the compacted path does skip padding
    lengths = np.sum(x["hist_ts"].numpy() > 0, axis=1)  # the models' history mask
    assert lengths.min() < x["hist_ts"].shape[1]


@pytest.mark.parametrize("name,stage", [("din", STAGE_JOINT), ("poso", STAGE_JOINT), ("mwuf", STAGE_JOINT), ("qin", STAGE_JOINT),
                                        ("daian", STAGE_JOINT),
                                        ("daian", STAGE_DIE), ("daian", STAGE_UIM)])
def test_request_dedup_equals_per_sample(tiny_data, name, stage):
    """request_dedup (request-level blocks once per distinct request) only changes the speed:
    same outputs and gradients as running every block per sample, in every DAIAN stage (stage
    2 feeds the records' prior intent to I2E per sample)."""
    from tirec.models.base import request_input_names
    from tirec.models.layers.sequence import unique_rows

    x = _assert_variants_match(tiny_data, name, [["model.request_dedup=false"], ["model.request_dedup=true"],
                                                 ["model.request_dedup=true", "model.daian.explicit_buckets=3",
                                                  "model.hist_buckets=3"]], stage=stage)
    # the batch (records in request order) does hold several samples per request
    spec = load_data_spec(tiny_data)
    first, index = unique_rows([x[n] for n in request_input_names(spec)])
    assert 1 < first.shape[0] < index.shape[0] // 2
    with pytest.raises(ValueError, match="model.request_dedup: expected true/false; received 1"):
        _cfg("model.request_dedup=1")


@pytest.mark.parametrize("dedup", [True, False])
def test_daian_explicit_len_keeps_the_most_recent(tiny_data, dedup):
    """explicit_len=k gives v_exp of the first k (most recent) explicit behaviours."""
    spec = load_data_spec(tiny_data)
    ids, vecs, _ = load_item_vectors(tiny_data)
    x, _ = _batch(tiny_data, spec, n=128)
    x = {k: v for k, v in x.items() if k in model_input_names(spec)}
    model = build_model("daian", spec, _cfg("model.daian.explicit_len=2", f"model.request_dedup={str(dedup).lower()}").model,
                        ids, vecs)
    model(x)
    captured = {}
    attention = model.exp_self.call

    def spy(inputs, mask=None, **kwargs):  # the self-attention over S' sees its mask
        captured["lengths"] = captured.get("lengths", []) + [tf.reduce_sum(tf.cast(mask, tf.int32), 1)]
        return attention(inputs, mask, **kwargs)

    model.exp_self.call = spy
    model(x)
    lengths = np.concatenate([t.numpy() for t in captured["lengths"]])
    assert lengths.max() <= 2 and (lengths == 2).any()
    with pytest.raises(ValueError, match="explicit_len"):
        _cfg("model.daian.explicit_len=0")
    with pytest.raises(ValueError, match="explicit_buckets"):
        _cfg("model.daian.explicit_buckets=-1")
    with pytest.raises(ValueError, match="hist_buckets"):
        _cfg("model.hist_buckets=-1")


def test_train_precision_is_validated():
    with pytest.raises(ValueError, match="train.precision: must be one of float32, mixed_bfloat16"):
        _cfg("train.precision=mixed_float16")
    with pytest.raises(ValueError, match="precision"):
        build_model("din", None, _cfg().model, np.zeros(0), np.zeros([0, 4]), precision="bf16")


# 49 s on CPU, where bf16 is emulated; `make test-slow` (tests/gpu cover bf16 on a GPU)
@pytest.mark.slow
def test_daian_trains_under_mixed_bfloat16_and_reloads(tiny_data, tmp_path):
    cfg = _cfg("train.precision=mixed_bfloat16", "train.steps_per_epoch=2")
    run = str(tmp_path / "mixed")
    metrics = train_run(tiny_data, "daian", run, cfg.model, cfg.train)
    assert set(metrics["history"]) == {"uim_pretrain", "die_pretrain", "joint"}
    for stage in metrics["history"].values():
        assert all(np.isfinite(v).all() for k, v in stage.items() if k.endswith("loss"))
    assert np.isfinite(metrics["auc"]) and np.isfinite(metrics["logloss"])
    assert json.load(open(os.path.join(run, "config.json")))["train"]["precision"] == "mixed_bfloat16"

    spec = load_data_spec(tiny_data)
    x, y = _batch(tiny_data, spec)
    x = {k: v for k, v in x.items() if k in model_input_names(spec)}
    mixed, _, _ = load_run(run, precision=None)  # the run's own precision
    assert mixed.precision == "mixed_bfloat16" and mixed.embed.compute_dtype == "bfloat16"
    out = mixed(x, training=False)
    assert out["ctr"].dtype == tf.float32 and out["intent"].dtype == tf.float32
    assert all(v.dtype == tf.float32 for v in mixed.weights if v.dtype.is_floating)
    full, _, _ = load_run(run)  # default: float32 compute from the same float32 weights
    assert full.precision == "float32"
    np.testing.assert_allclose(out["ctr"].numpy(), full(x, training=False)["ctr"].numpy(), atol=0.03)

    mixed.compile(optimizer=keras.optimizers.Adagrad(0.05), uim_optimizer=keras.optimizers.Adagrad(0.005))
    for _ in range(3):
        logs = mixed.train_step((x, y))
        assert np.isfinite(float(logs["loss"]))
    mixed.save_weights(str(tmp_path / "w" / "weights"))
    full.load_weights(str(tmp_path / "w" / "weights"))
    np.testing.assert_allclose(full(x, training=False)["ctr"].numpy(), mixed(x, training=False)["ctr"].numpy(),
                               atol=0.03)


@pytest.mark.parametrize("block", [1, 4])
def test_shuffle_block_keeps_runs_of_records_and_drops_none(tiny_data, block):
    """shuffle_block=k shuffles runs of k consecutive records of a shard: every record comes
    out exactly once, and (k > 1) in runs of k that are consecutive in the shard."""
    spec = load_data_spec(tiny_data)
    key = ("user_id", "target_item_id", "trigger_item_id", "hist_ts")  # features that name a record

    def records(ds):
        out = []
        for x, _ in ds:
            cols = [[tuple(v) if isinstance(v, list) else v for v in np.asarray(x[k]).tolist()] for k in key]
            out += list(zip(*cols))
        return out

    files = sorted(tf.io.gfile.glob(os.path.join(tiny_data, "train", "*.tfrecord.gz")))
    position, total = {}, 0  # record -> (shard, position in the shard)
    for f, path in enumerate(files):
        ds = tf.data.TFRecordDataset(path, compression_type="GZIP").batch(512).map(
            lambda b: (tf.io.parse_example(b, {k: spec.parse_example_spec()[k] for k in key}), 0))
        for i, r in enumerate(records(ds)):
            position[r] = (f, i)
            total += 1
    assert len(position) == total > 8 * block  # the key names one record
    got = records(make_dataset(tiny_data, "train", spec, 64, shuffle_buffer=100, shuffle_block=block, seed=3))
    assert sorted(got) == sorted(position)  # each record once
    places = [position[r] for r in got]
    assert places != sorted(places)  # shuffled
    if block > 1:
        sizes = collections.Counter(f for f, _ in position.values())
        i = 0
        while i < len(places):  # a run: k consecutive records of one shard (fewer at its end)
            f, start = places[i]
            assert start % block == 0
            n = min(block, sizes[f] - start)
            assert places[i:i + n] == [(f, start + j) for j in range(n)]
            i += n
    with pytest.raises(ValueError, match="shuffle_block must be an integer >= 1; received 0"):
        make_dataset(tiny_data, "train", spec, 64, shuffle_buffer=100, shuffle_block=0)
    with pytest.raises(ValueError, match="train.shuffle_block"):
        _cfg("train.shuffle_block=0")


# ---- validation split, best checkpoint, input checks --------------------------------------------

def test_valid_split_selects_the_best_epoch_never_eval(tiny_data, tmp_path):
    """With a valid split every epoch is validated on it; RUN/best holds the epoch with the best
    val_auc, and that value is the model's AUC on valid (not on eval)."""
    cfg = _cfg("train.three_stage=false", "train.epochs=3", "train.early_stopping_patience=1",
               "train.learning_rate=0.5")
    run = str(tmp_path / "r")
    metrics = train_run(tiny_data, "din", run, cfg.model, cfg.train)
    history = metrics["history"]["joint"]
    assert metrics["valid_split"] is True
    best = json.load(open(os.path.join(run, "best", "best.json")))
    assert best == metrics["best_checkpoint"]
    assert (best["stage"], best["monitor"]) == (STAGE_JOINT, "val_auc")
    assert best["epoch"] == int(np.argmax(history["val_auc"]))
    assert best["value"] == pytest.approx(max(history["val_auc"]))

    def streaming_auc(model, split):
        spec = load_data_spec(tiny_data)
        model.compile(optimizer=keras.optimizers.SGD(0.0))
        ds = make_dataset(tiny_data, split, spec, 256)
        return model.evaluate(ds, verbose=0, return_dict=True)["auc"]

    model, _, _ = load_run(run, checkpoint="best")
    assert streaming_auc(model, "valid") == pytest.approx(best["value"], abs=1e-5)
    assert abs(streaming_auc(model, "eval") - best["value"]) > 1e-3  # valid and eval differ here
    final, _, _ = load_run(run)  # early stopping restored the best epoch's weights
    assert streaming_auc(final, "valid") == pytest.approx(best["value"], abs=1e-5)


def test_no_valid_split_no_best_checkpoint_and_early_stopping_is_an_error(tiny_data_no_valid, tmp_path):
    tiny_data = tiny_data_no_valid
    cfg = _cfg("train.three_stage=false", "train.steps_per_epoch=2")
    run = str(tmp_path / "r")
    metrics = train_run(tiny_data, "din", run, cfg.model, cfg.train)
    assert metrics["valid_split"] is False and "best_checkpoint" not in metrics
    assert not os.path.exists(os.path.join(run, "best"))
    assert not any(k.startswith("val_") for k in metrics["history"]["joint"])  # eval is never a validation set
    with pytest.raises(FileNotFoundError, match="has no best checkpoint.*use --checkpoint last"):
        load_run(run, checkpoint="best")
    stopping = _cfg("train.three_stage=false", "train.early_stopping_patience=2")
    other = str(tmp_path / "other")
    with pytest.raises(ValueError, match=r"train.early_stopping_patience=2 needs a valid split, and .*/valid/ "
                                         r"is absent"):
        train_run(tiny_data, "din", other, stopping.model, stopping.train)
    assert not os.path.exists(other)  # checked before anything was written
    with pytest.raises(ValueError, match="train.early_stopping_patience: must be an integer >= 0"):
        _cfg("train.early_stopping_patience=-1")


def _copy_data(src, dst, change):
    shutil.copytree(src, dst)
    change(dst)
    return str(dst)


def _empty_split(split):
    def change(d):
        for f in os.listdir(os.path.join(d, split)):
            with tf.io.TFRecordWriter(os.path.join(d, split, f), tf.io.TFRecordOptions(compression_type="GZIP")):
                pass
    return change


def _valid_removed(d):
    """The valid split's folder goes while stats.json still counts its records."""
    assert json.load(open(os.path.join(d, "stats.json")))["written"]["valid"] > 0
    shutil.rmtree(os.path.join(d, "valid"))


INPUT_CASES = [
    ("no_dir", None, r"--data .*/no_dir: no such directory"),
    ("no_spec", lambda d: os.remove(os.path.join(d, "spec.json")), r"no_spec/spec.json not found"),
    ("no_train", lambda d: shutil.rmtree(os.path.join(d, "train")), r"no_train/train/ is missing"),
    ("no_shards", lambda d: [os.remove(os.path.join(d, "eval", f)) for f in os.listdir(os.path.join(d, "eval"))],
     r"no_shards/eval/ holds no \*.tfrecord.gz shards"),
    ("empty_train", _empty_split("train"), r"empty_train/train/ has no records \(1 empty shard\(s\)\)"),
    ("empty_eval", _empty_split("eval"), r"empty_eval/eval/ has no records"),
    ("valid_missing", _valid_removed, r"valid_missing/valid/ is missing, but .*stats.json counts \d+ valid records"),
]


@pytest.mark.parametrize("case,change,message", INPUT_CASES, ids=[c[0] for c in INPUT_CASES])
def test_train_cli_checks_its_input_first(tiny_data, tmp_path, caplog, case, change, message):
    """`tirec train` on bad input: exit 2 and one error line, before anything is built or written."""
    from tirec import cli

    data = str(tmp_path / case) if change is None else _copy_data(tiny_data, tmp_path / case, change)
    run = tmp_path / "run"
    caplog.clear()
    assert cli.main(["train", "--data", data, "--model", "din", "--run", str(run)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert re.search(message, errors[0]), errors[0]
    assert not run.exists()


def test_train_cli_rejects_a_run_folder_of_other_data(tiny_data, tmp_path, caplog):
    from tirec import cli

    run = tmp_path / "run"
    run.mkdir()
    import dataclasses

    dataclasses.replace(load_data_spec(tiny_data), intent_levels=4).save(str(run / "spec.json"))
    assert cli.main(["train", "--data", tiny_data, "--model", "din", "--run", str(run)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert f"--run {run} holds a run on other data: its spec.json differs from {tiny_data}/spec.json: " \
           f"intent_levels: 4 != 6" in errors[0]
    assert sorted(os.listdir(run)) == ["spec.json"]  # nothing else written


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="the machine has a GPU to mirror over")
def test_mirrored_without_gpu_needs_cpu_replicas(tiny_data, tmp_path, caplog):
    from tirec import cli

    run = tmp_path / "run"
    assert cli.main(["train", "--data", tiny_data, "--model", "din", "--run", str(run),
                     "--strategy", "mirrored"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    assert "--strategy mirrored: this machine has no GPU, so it would train one replica; pass " \
           "--cpu-replicas N (train.cpu_replicas)" in errors[0]
    assert not run.exists()


def test_a_collapsed_intent_model_is_named_in_a_warning(tiny_data, tmp_path, monkeypatch, caplog):
    """A stage that trains the intent model and ends with its intent KL above log(k), worse than
    a uniform prediction (a saturated softmax, as DAIAN's UIM at LR 0.2 and one seed of the
    synthetic table), is named in a warning and in metrics.json; a learnt one is not."""
    from tirec.models import train as T

    assert T.intent_collapse({"intent_kl": [10.8, 13.2], "val_intent_kl": [13.1, 13.1]}, 6, "uim_pretrain") \
        .startswith("stage uim_pretrain: the intent model's best val_intent_kl is 13.100, above log(6) = 1.792")
    assert T.intent_collapse({"intent_kl": [2.5, 1.1]}, 6, "uim_pretrain") is None
    assert T.intent_collapse({"intent_kl": [2.5, 2.0]}, 6, "joint").startswith("stage joint: the intent model's best "
                                                                              "intent_kl is 2.000")
    assert T.intent_collapse({"intent_kl": [13.0]}, None, "joint") is None
    stages = []

    def fake_stage(model, stage, *args, **kwargs):  # no training: the KL each stage would report
        stages.append(stage.name)
        return {"loss": [1.0], "intent_kl": [13.0 if stage.name == "uim_pretrain" else 0.5]}

    monkeypatch.setattr(T, "_train_stage", fake_stage)
    cfg = _cfg()
    with caplog.at_level("WARNING", logger="tirec.models.train"):
        metrics = train_run(tiny_data, "daian", str(tmp_path / "run"), cfg.model, cfg.train)
    assert stages == ["uim_pretrain", "die_pretrain", "joint"]
    assert len(metrics["warnings"]) == 1 and metrics["warnings"][0].startswith("stage uim_pretrain:")
    assert "stage uim_pretrain: the intent model's best intent_kl is 13.000" in caplog.text
