"""train.warm_start: a run starts from another run's last weights (the Trainer of `tirec run`
warm-starts from the blessed model); another model or other settings fail naming the run."""
import os

import numpy as np
import pytest

from tirec.config import load_config
from tirec.features.jsonio import read_json
from tirec.models.base import model_input_names
from tirec.models.data import load_data_spec, load_item_vectors, make_dataset
from tirec.models.registry import model_spec
from tirec.models.train import build_model, load_run, train_run, warm_start

SMALL = ["model.emb_dim=4", "model.tower=[8]", "model.din_hidden=[4]", "model.hist_buckets=1",
         "train.batch_size=256", "train.steps_per_epoch=2", "train.shuffle_buffer=100"]


def _build(data, *settings, name="din"):
    cfg = load_config(None, SMALL + list(settings))
    ids, vecs, _ = load_item_vectors(data)
    spec = model_spec(name, load_data_spec(data))
    model = build_model(name, spec, cfg.model, ids, vecs)
    x, _ = next(iter(make_dataset(data, "eval", spec, 2)))
    model({k: v for k, v in x.items() if k in set(model_input_names(spec))})
    return model


def test_warm_start_restores_every_weight_and_refuses_another_model(tiny_data, tmp_path):
    source = str(tmp_path / "a")
    cfg = load_config(None, SMALL)
    train_run(tiny_data, "din", source, cfg.model, cfg.train)
    trained, _, _ = load_run(source)
    fresh = _build(tiny_data)
    assert not all(np.allclose(a, b) for a, b in zip(fresh.get_weights(), trained.get_weights()))
    restored = warm_start(fresh, source, "din", str(tmp_path))
    assert restored == len(fresh.weights)
    for a, b in zip(fresh.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert read_json(os.path.join(tmp_path, "warm_start.json")) == {"from": source, "restored": restored}
    with pytest.raises(ValueError, match="that run trained 'din', not 'poso'"):
        warm_start(_build(tiny_data, name="poso"), source, "poso", str(tmp_path))
    with pytest.raises(ValueError, match="train.warm_start"):
        warm_start(_build(tiny_data, "model.tower=[8,4]"), source, "din", str(tmp_path))

    # Through train_run: the run records where it started from.
    cfg = load_config(None, SMALL + [f"train.warm_start={source}"])
    train_run(tiny_data, "din", str(tmp_path / "b"), cfg.model, cfg.train)
    assert read_json(os.path.join(tmp_path, "b", "warm_start.json"))["from"] == source


def test_a_mistyped_warm_start_fails_before_the_run_folder_is_written(tiny_data, tmp_path):
    """Else the folder would hold a config naming the typo and refuse the corrected command."""
    run, typo = tmp_path / "r", str(tmp_path / "nope")
    cfg = load_config(None, SMALL + [f"train.warm_start={typo}"])
    with pytest.raises(FileNotFoundError, match=rf"^train.warm_start='{typo}': {typo}: not a `tirec train` run"):
        train_run(tiny_data, "din", str(run), cfg.model, cfg.train)
    assert not run.exists() or not os.listdir(run)
