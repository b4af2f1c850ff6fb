"""The models learn: on synthetic logs with a planted click signal, a short training run beats a
constant predictor on the eval split by a clear margin, and a model that does not learn fails
the same check."""
import numpy as np
import pytest
import tensorflow as tf

from tirec.compat import keras
from tirec.config import load_config
from tirec.models.data import load_data_spec, load_item_vectors
from tirec.models.train import build_model, evaluate_model, train_run
from tirec.pipeline import job, synthetic
from tirec.pipeline.config import PipelineConfig

SETTINGS = ["model.emb_dim=4", "model.daian.att_units=8", "model.daian.att_heads=2", "model.tower=[16,8]",
            "model.daian.uim_hidden=[8]", "model.din_hidden=[8,4]", "model.daian.sim_bins=5",
            "model.gapnet.att_units=8", "model.gapnet.att_heads=2", "model.gapnet.cgdf_hidden=[4]",
            "model.dei2n.att_units=8", "model.dei2n.att_heads=2", "model.dei2n.ui2m_hidden=[8]",
            "model.dei2n.interaction_hidden=[8]",
            "model.daian.explicit_buckets=1", "model.hist_buckets=1", "train.three_stage=false",
            "train.batch_size=256", "train.epochs=1", "train.optimizer=adam", "train.learning_rate=0.01",
            "train.seed=0"]

# Eval AUC a model must exceed. Measured with SETTINGS on the planted data (train.seed 0/1/2;
# see the report of the change that added this test): DIN 0.6145 / 0.6261 / 0.6296, DAIAN
# 0.6982 / 0.7011 / 0.7036 (DAIAN sees the trigger-target similarity the clicks were planted
# on), GAP-Net (reconstructed; rt cut from hist) 0.6098 / 0.6123 / 0.6169; the same models
# untrained 0.47-0.53, a constant 0.5 exactly. DEI2N 0.5922 / 0.6118 / 0.6252, TIN 0.6178 /
# 0.6088 / 0.6121.
MIN_AUC = {"din": 0.58, "daian": 0.65, "gapnet": 0.58, "dei2n": 0.57, "tin": 0.58}


@pytest.fixture(scope="module")
def planted_data(tmp_path_factory):
    """100 users, CTR 0.2: ~15.6k train and ~2k eval rows (~440 eval clicks), one-day eval."""
    base = tmp_path_factory.mktemp("planted")
    raw, out = str(base / "raw"), str(base / "tfr")
    synthetic.generate(synthetic.GeneratorConfig(users=100, seed=11, target_ctr=0.2), raw)
    job.run(PipelineConfig(input=raw, format="synthetic", out=out, max_seq_len=10))
    return out


def learned(model, data, name):
    """(whether ``model``'s eval AUC clears ``MIN_AUC[name]``, the AUC)."""
    auc = evaluate_model(model, data, load_data_spec(data))["auc"]
    return auc > MIN_AUC[name], auc


@pytest.mark.parametrize("name", ["din", "daian", "gapnet", "dei2n", "tin"])
def test_model_learns_the_planted_signal(planted_data, tmp_path, name):
    cfg = load_config(None, SETTINGS)
    metrics = train_run(planted_data, name, str(tmp_path / name), cfg.model, cfg.train)
    assert metrics["auc"] > MIN_AUC[name], metrics["auc"]

    # The check sees a model that does not learn: a constant 0.5, and the untrained model (what
    # a run whose updates never arrive ends with), score below the threshold.
    spec = load_data_spec(planted_data)
    ids, vecs, _ = load_item_vectors(planted_data)
    keras.utils.set_random_seed(cfg.train.seed)
    untrained = build_model(name, spec, cfg.model, ids, vecs)
    ok, auc = learned(untrained, planted_data, name)
    assert not ok, auc
    constant = build_model(name, spec, cfg.model, ids, vecs)
    constant.forward = lambda inputs, training=False: {
        "ctr": tf.fill([tf.shape(inputs["user_id"])[0], 1], 0.5)}
    ok, auc = learned(constant, planted_data, name)
    assert not ok and auc == pytest.approx(0.5)
    assert np.isfinite(metrics["gauc"])
