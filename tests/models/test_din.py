"""DIN's ``model.din.sim_feature`` control row: off (default) DIN is unchanged; on, the tower
reads the trigger-target multimodal similarity, computed from the frozen item table as DAIAN
computes it (the records' ``trigger_target_sim``). ``model.din.history_sum`` adds the history's
sum pooling and its product with the target to the tower input; ``model.din.attention_softmax``
normalises the attention's scores."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tirec.compat import keras
from tirec.config import load_config
from tirec.models.base import history_sum, model_input_names
from tirec.models.data import load_data_spec, load_item_vectors, make_dataset
from tirec.models.train import build_model

SMALL = ["model.emb_dim=4", "model.tower=[16,8]", "model.din_hidden=[8,4]", "model.hist_buckets=1"]


def _build(data, *settings, spec=None, vecs=None):
    """DIN built with ``settings`` and its variables made from seed 3 (on a first batch)."""
    cfg = load_config(None, SMALL + list(settings))
    spec = spec or load_data_spec(data)
    ids, table, _ = load_item_vectors(data)
    keras.utils.set_random_seed(3)
    model = build_model("din", spec, cfg.model, ids, table if vecs is None else vecs)
    model(_inputs(data, 8, spec)[1])
    return model


def _inputs(data, n=128, spec=None):
    spec = spec or load_data_spec(data)
    x, _ = next(iter(make_dataset(data, "train", spec, n)))
    return x, {k: v for k, v in x.items() if k in model_input_names(spec)}


def test_sim_feature_off_is_din_as_before(tiny_data):
    """The default and an explicit false build the same variables from the same seed and give
    bit-identical outputs; on adds one tower input row and no variable."""
    _, x = _inputs(tiny_data)
    default, off, on = (_build(tiny_data, *s) for s in ([], ["model.din.sim_feature=false"],
                                                        ["model.din.sim_feature=true"]))
    outs = [m(x, training=False)["ctr"].numpy() for m in (default, off, on)]
    assert not default.sim_feature and not off.sim_feature and on.sim_feature
    shapes = [[(v.name, tuple(v.shape)) for v in m.weights] for m in (default, off, on)]
    assert shapes[0] == shapes[1]
    for v, w in zip(default.get_weights(), off.get_weights()):
        np.testing.assert_array_equal(v, w)
    np.testing.assert_array_equal(outs[0], outs[1])
    width = default.tower.weights[0].shape[0]  # the tower's first kernel: [input width, 16]
    assert tuple(on.tower.weights[0].shape) == (width + 1, 16)
    assert [n for n, _ in shapes[2]] == [n for n, _ in shapes[0]]
    assert not np.allclose(outs[0], outs[2])


def test_sim_feature_reads_the_trigger_target_similarity(tiny_data, tmp_path):
    x_all, x = _inputs(tiny_data)
    ids, vecs, _ = load_item_vectors(tiny_data)
    on = _build(tiny_data, "model.din.sim_feature=true")
    # the similarity the tower reads is the records' trigger_target_sim (0 without a trigger)
    s_sem = on.trigger_target_similarity(x, "test").numpy()[:, 0]
    assert (x["has_trigger"].numpy() == 1).any() and np.abs(s_sem).max() > 0.1
    np.testing.assert_allclose(s_sem, x_all["trigger_target_sim"].numpy(), atol=1e-5)
    # other multimodal vectors (other similarities, same ids) change the output only when on
    other = np.roll(vecs, 1, axis=0)
    for setting, moves in (("model.din.sim_feature=true", True), ("model.din.sim_feature=false", False)):
        a = _build(tiny_data, setting)(x, training=False)["ctr"].numpy()
        b = _build(tiny_data, setting, vecs=other)(x, training=False)["ctr"].numpy()
        assert (not np.array_equal(a, b)) == moves, setting
    # the tower sees exactly s_sem: its kernel's last row times s_sem is the only change
    want = on(x, training=False)["ctr"].numpy()
    kernel = on.tower.weights[0]
    kernel.assign(tf.concat([kernel[:-1], tf.zeros([1, kernel.shape[1]])], axis=0))
    flat = on(x, training=False)["ctr"].numpy()
    np.testing.assert_array_equal(flat == want, s_sem[:, None] == 0)
    # a served model needs only the raw ids: it reads no trigger_target_sim input, and round-trips
    assert "trigger_target_sim" not in x
    on.save(str(tmp_path / "sm"))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(loaded(x, training=False)["ctr"].numpy(), flat, atol=1e-6)


def test_sim_feature_needs_the_trigger_flag(tiny_data):
    spec = load_data_spec(tiny_data)
    lacking = dataclasses.replace(spec, features=tuple(f for f in spec.features if f.name != "has_trigger"))
    _build(tiny_data, spec=lacking)  # DIN itself does not read it
    with pytest.raises(ValueError, match=r"model.din.sim_feature=true needs a trigger input of field "
                                         r"'present' \(has_trigger"):
        _build(tiny_data, "model.din.sim_feature=true", spec=lacking)


def test_sim_feature_key_is_model_din_sim_feature():
    assert load_config(None, ["model.din.sim_feature=true"]).model.section("din").sim_feature is True
    assert load_config(None, []).model.section("din").sim_feature is False
    with pytest.raises(ValueError, match=r"model: unknown key\(s\) \['sim_feature'\].*'din\.\*'"):
        load_config(None, ["model.sim_feature=true"])
    with pytest.raises(ValueError, match="model.din.sim_feature: expected true/false; received 1"):
        load_config(None, ["model.din.sim_feature=1"])


def test_history_sum_is_the_masked_sum_and_its_product_with_the_target():
    rng = np.random.default_rng(0)
    hist = rng.normal(size=(3, 4, 2)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
    target = rng.normal(size=(3, 2)).astype(np.float32)
    total, product = history_sum({"hist": tf.constant(hist), "mask": tf.constant(mask)}, target, lambda t: t)
    want = (hist * mask[..., None]).sum(axis=1)
    np.testing.assert_allclose(total.numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(product.numpy(), target * want, rtol=1e-6)


def test_history_sum_widens_the_tower_input_only(tiny_data):
    """On, the tower reads 2 D more inputs and nothing else changes: with those kernel rows at zero
    the outputs are DIN's; with them set, they move."""
    _, x = _inputs(tiny_data)
    off, on = _build(tiny_data), _build(tiny_data, "model.din.history_sum=true")
    assert not off.history_sum and on.history_sum
    width, d = off.tower.weights[0].shape[0], off.embed.item_dim
    assert tuple(on.tower.weights[0].shape) == (width + 2 * d, 16)
    names = [v.name for v in off.weights]
    assert [v.name for v in on.weights] == names
    for v, w in zip(on.weights, off.weights):
        v.assign(tf.concat([w, tf.zeros([2 * d, 16])], axis=0) if v.shape != w.shape else w)
    np.testing.assert_allclose(on(x)["ctr"].numpy(), off(x)["ctr"].numpy(), rtol=1e-6, atol=1e-7)
    kernel = on.tower.weights[0]
    kernel.assign(tf.concat([kernel[:width], tf.ones([2 * d, 16]) * 0.1], axis=0))
    assert not np.allclose(on(x)["ctr"].numpy(), off(x)["ctr"].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="model.din.history_sum: expected true/false; received 1"):
        load_config(None, ["model.din.history_sum=1"])


def test_attention_softmax_normalises_dins_scores_and_nothing_else(tiny_data):
    """On, the same variables score the same behaviours, softmax-normalised over the real ones:
    the attention output is the softmax-weighted mean of the history, and the clicks move."""
    _, x = _inputs(tiny_data)
    off, on = _build(tiny_data), _build(tiny_data, "model.din.attention_softmax=true")
    assert [v.name for v in on.weights] == [v.name for v in off.weights]
    on.set_weights(off.get_weights())
    rows, expand = off.request_rows(x)
    r, e = off.embed.request(rows), off.embed.impression(x)
    keys, mask = expand(r["hist"]), tf.cast(expand(r["mask"]), tf.bool)
    _, raw = off.din_att(e["target"], keys, mask, return_scores=True)
    got = on.din_att(e["target"], keys, mask).numpy()
    m = mask.numpy()
    weights = np.where(m, np.exp(raw.numpy() - raw.numpy().max(-1, keepdims=True)), 0.0)
    weights /= np.maximum(weights.sum(-1, keepdims=True), 1e-30)
    np.testing.assert_allclose(got, np.einsum("bl,bld->bd", weights, keys.numpy()), rtol=1e-4, atol=1e-5)
    assert m.any(-1).all() and not np.allclose(on(x)["ctr"].numpy(), off(x)["ctr"].numpy(), atol=1e-6)
    assert load_config(None, []).model.section("din").attention_softmax is False
    with pytest.raises(ValueError, match="model.din.attention_softmax: expected true/false; received 1"):
        load_config(None, ["model.din.attention_softmax=1"])


def test_trigger_in_tower_off_drops_e_t_from_the_tower_input_only(tiny_data):
    """Off, the tower reads D inputs fewer: with e_t's kernel rows removed from the default
    model's weights, the outputs are the default model's with those rows at zero."""
    _, x = _inputs(tiny_data)
    on, off = _build(tiny_data), _build(tiny_data, "model.din.trigger_in_tower=false")
    assert on.trigger_in_tower and not off.trigger_in_tower
    d, kernel = on.embed.item_dim, on.tower.weights[0]
    r, e = on.embed.request(on.request_rows(x)[0]), on.embed.impression(x)
    start = sum(int(t.shape[-1]) for t in (r["user"], e["context"], e["target"]))
    assert tuple(off.tower.weights[0].shape) == (kernel.shape[0] - d, 16)
    assert [v.name for v in off.weights] == [v.name for v in on.weights]
    kernel.assign(tf.concat([kernel[:start], tf.zeros([d, 16]), kernel[start + d:]], axis=0))
    off.set_weights([w if w.shape == v.shape else np.delete(w, range(start, start + d), axis=0)
                     for w, v in zip(on.get_weights(), off.weights)])
    np.testing.assert_allclose(off(x)["ctr"].numpy(), on(x)["ctr"].numpy(), rtol=1e-6, atol=1e-7)
    kernel.assign(tf.concat([kernel[:start], tf.ones([d, 16]) * 0.1, kernel[start + d:]], axis=0))
    assert not np.allclose(off(x)["ctr"].numpy(), on(x)["ctr"].numpy(), atol=1e-6)
    assert load_config(None, []).model.section("din").trigger_in_tower is True
    with pytest.raises(ValueError, match="model.din.trigger_in_tower: expected true/false; received 0"):
        load_config(None, ["model.din.trigger_in_tower=0"])


@pytest.mark.parametrize("name", ["poso", "mwuf"])
@pytest.mark.parametrize("setting", ["model.din.history_sum=true", "model.din.sim_feature=true",
                                     "model.din.attention_softmax=true", "model.din.trigger_in_tower=false"])
def test_models_built_on_din_refuse_dins_own_switches(tiny_data, name, setting):
    cfg = load_config(None, SMALL + [setting])
    ids, table, _ = load_item_vectors(tiny_data)
    with pytest.raises(ValueError, match=rf"{setting}: only --model din reads them; {name.upper()} would ignore them"):
        build_model(name, load_data_spec(tiny_data), cfg.model, ids, table)
