"""The models learn: on synthetic logs with a planted click signal, a short training run of every
registered model (read from the registry when the tests are collected) beats the untrained model
on the eval split by a clear margin, and the same run with its gradients cut fails the same
check."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tirec.compat import keras
from tirec.config import load_config
from tirec.models import train as T
from tirec.models.data import load_data_spec, load_item_vectors
from tirec.models.registry import model_names, model_spec
from tirec.models.train import build_model, evaluate_model, train_run

SETTINGS = ["model.emb_dim=4", "model.daian.att_units=8", "model.daian.att_heads=2", "model.tower=[16,8]",
            "model.daian.uim_hidden=[8]", "model.din_hidden=[8,4]", "model.daian.sim_bins=5",
            "model.gapnet.att_units=8", "model.gapnet.att_heads=2", "model.gapnet.cgdf_hidden=[4]",
            "model.poso.gate_hidden=[4]", "model.mwuf.meta_hidden=[4]",
            "model.dihn.att_units=8", "model.dihn.att_heads=2", "model.dihn.uin_hidden=[8]",
            "model.dian.intent_hidden=[8]", "model.dian.intent_weight=0.1", "model.daian.explicit_buckets=1",
            "model.dei2n.att_units=8", "model.dei2n.att_heads=2", "model.dei2n.ui2m_hidden=[8]",
            "model.dei2n.interaction_hidden=[8]",
            "model.hist_buckets=1", "train.three_stage=false",
            "train.batch_size=256", "train.epochs=1", "train.optimizer=adam", "train.learning_rate=0.01",
            "train.seed=0"]

# Eval AUC a model must exceed. Measured with SETTINGS on the planted data (train.seed 0/1/2;
# see the report of the change that added this test): DIN 0.6145 / 0.6261 / 0.6296, DAIAN
# 0.6982 / 0.7011 / 0.7036 (DAIAN sees the trigger-target similarity the clicks were planted
# on), GAP-Net (reconstructed; rt cut from hist) 0.6098 / 0.6123 / 0.6169; the same models
# untrained 0.47-0.53, a constant 0.5 exactly. POSO (on DIN) 0.6214 / 0.5883 / 0.6171, MWUF
# (on DIN) 0.6141 / 0.6234 / 0.6176. QIN (default settings, qin's own keys untouched)
# 0.5567 / 0.5508 / 0.5995, untrained 0.485 / 0.513 / 0.510: it learns the planted signal more
# slowly than DIN under these shared settings (see the report of the change that added it).
# DIEN 0.6250 / 0.6131 / 0.6204. DIHN 0.5840 / 0.5780 (seeds 0/1). DIAN with
# its auxiliary intent weight 0.1 (the public DIAN code's; the default 1.0 slows its click
# learning on this one epoch: 0.5461 / 0.5597, and 0.6143 with 0): 0.6065 / 0.6134 / 0.6302.
# DEI2N 0.5922 / 0.6118 / 0.6252, TIN 0.6178 / 0.6088 / 0.6121.
MIN_AUC = {"din": 0.58, "daian": 0.65, "gapnet": 0.58, "poso": 0.58, "mwuf": 0.58, "qin": 0.53, "dien": 0.58, "dihn": 0.56,
           "dian": 0.58, "dei2n": 0.57, "tin": 0.58}
DEFAULT_MIN_AUC = 0.58  # a model without its own measured floor
MARGIN = 0.05  # and at least this much above the same model untrained


def learned(auc: float, untrained_auc: float, name: str) -> bool:
    """Whether eval AUC ``auc`` shows that model ``name`` learned: above its floor and ``MARGIN``
    above the untrained model's."""
    return auc > MIN_AUC.get(name, DEFAULT_MIN_AUC) and auc > untrained_auc + MARGIN


def _cut(cfg, scale=1.0):
    """The run's real optimizer, fed zero gradients: every step runs (forward pass, losses,
    gradients, optimizer slots), nothing moves."""
    opt = CUT_OPTIMIZER(cfg, scale)
    apply = opt.apply_gradients
    opt.apply_gradients = lambda pairs, *a, **k: apply([(tf.zeros_like(g), v) for g, v in pairs], *a, **k)
    return opt


CUT_OPTIMIZER = T._optimizer


@pytest.mark.parametrize("name", model_names())
def test_model_learns_the_planted_signal(planted_data, tmp_path, monkeypatch, name):
    cfg = load_config(None, SETTINGS)
    spec = load_data_spec(planted_data)
    ids, vecs, _ = load_item_vectors(planted_data)
    keras.utils.set_random_seed(cfg.train.seed)
    model_cfg = dataclasses.replace(cfg.model, name=name).resolved()  # as train_run builds it
    spec = model_spec(name, spec)
    untrained = build_model(name, spec, model_cfg, ids, vecs)
    base = evaluate_model(untrained, planted_data, spec)["auc"]
    metrics = train_run(planted_data, name, str(tmp_path / name), cfg.model, cfg.train)
    assert learned(metrics["auc"], base, name), (metrics["auc"], base)
    assert np.isfinite(metrics["gauc"])

    # The check has teeth: the same run through the real training path with its gradients
    # zeroed fails it, as does a constant 0.5.
    monkeypatch.setattr(T, "_optimizer", _cut)
    cut = train_run(planted_data, name, str(tmp_path / f"{name}_cut"), cfg.model, cfg.train)
    assert all(h["loss"] for h in cut["history"].values())  # it ran its epoch
    assert not learned(cut["auc"], base, name), (cut["auc"], base)
    constant = build_model(name, spec, model_cfg, ids, vecs)
    constant.forward = lambda inputs, training=False: {
        "ctr": tf.fill([tf.shape(inputs["user_id"])[0], 1], 0.5)}
    auc = evaluate_model(constant, planted_data, spec)["auc"]
    assert auc == pytest.approx(0.5) and not learned(auc, base, name)
