"""POSO (MLP variant on DIN): the gated tower against a numpy reference, the personalisation
code (profile fields, activity bucket, stop-gradient), its config, and the label-flip check."""
import numpy as np
import pytest
import tensorflow as tf

from tirec.config import load_config
from tirec.models.base import model_input_names
from tirec.models.data import load_data_spec, load_item_vectors, make_dataset
from tirec.models.layers import MLP
from tirec.models.poso import PosoConfig, activity_bucket, pc_columns
from tirec.models.train import build_model

SMALL = ["model.emb_dim=4", "model.tower=[8,6]", "model.din_hidden=[8,4]", "model.hist_buckets=1",
         "model.poso.gate_hidden=[5]"]


def _model(data, *extra, n=64):
    spec = load_data_spec(data)
    ids, vecs, _ = load_item_vectors(data)
    model = build_model("poso", spec, load_config(None, SMALL + list(extra)).model, ids, vecs)
    x, y = next(iter(make_dataset(data, "train", spec, n)))
    model({k: v for k, v in x.items() if k in model_input_names(spec)})
    return model, spec, x, y


def _relu(a):
    return np.maximum(a, 0)


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def test_activity_bucket_counts_the_edges_at_or_below_the_length():
    got = activity_bucket(tf.constant([0, 1, 2, 3, 9, 10, 50]), (1, 3, 10)).numpy()
    np.testing.assert_array_equal(got, [0, 1, 1, 2, 2, 3, 3])


def test_mlp_gates_multiply_each_activated_layer():
    mlp = MLP((3, 2), output_logit=True)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    gates = [np.full((4, 3), 2.0, np.float32), np.full((4, 2), 0.5, np.float32)]
    got = mlp(x, gates=gates).numpy()
    (w0, b0), (w1, b1) = [(d.kernel.numpy(), d.bias.numpy()) for d in mlp.dense_layers]
    h = _relu(_relu(x @ w0 + b0) * 2.0 @ w1 + b1) * 0.5
    want = h @ mlp.logit_layer.kernel.numpy() + mlp.logit_layer.bias.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one entry per hidden layer"):
        mlp(x, gates=gates[:1])


@pytest.mark.parametrize("scale", [2.0, 1.5])
def test_poso_tower_equals_the_numpy_reference(tiny_data, scale):
    """x̂_l = C·σ(MLP_l(x_pc)) ⊙ relu(W_l x̂_{l-1}) on DIN's representation, x_pc =
    [profile embeddings ‖ onehot(activity bucket)], then the linear logit and σ."""
    model, spec, x, _ = _model(tiny_data, f"model.poso.gate_scale={scale}", "model.poso.activity_edges=[2,10]",
                               n=1024)
    inputs = {k: v for k, v in x.items() if k in model_input_names(spec)}
    got = model(inputs)["ctr"].numpy()

    r, e = model.embed.request(inputs), model.embed.impression(inputs)
    z = model.tower_input(r, e, lambda t: t).numpy()
    profile = [model.embed.tables[n](inputs[n]).numpy() for n in model.pc_columns]
    length = (inputs["hist_ts"].numpy() > 0).sum(axis=1)
    onehot = np.eye(3)[np.searchsorted([2, 10], length, side="right")]
    x_pc = np.concatenate(profile + [onehot], axis=1)
    h = z
    for dense, gate in zip(model.tower.dense_layers, model.gates):
        (w1, b1), (w2, b2) = [(d.kernel.numpy(), d.bias.numpy()) for d in gate.hidden_layers + [gate.output_layer]]
        g = scale * _sigmoid(_relu(x_pc @ w1 + b1) @ w2 + b2)
        h = g * _relu(h @ dense.kernel.numpy() + dense.bias.numpy())
    want = _sigmoid(h @ model.tower.logit_layer.kernel.numpy() + model.tower.logit_layer.bias.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert got.shape == (1024, 1) and got.dtype == np.float32
    assert len(set(onehot.argmax(axis=1))) > 1  # the batch spans several activity buckets


def test_personalisation_code_fields_and_stop_gradient(tiny_data):
    spec = load_data_spec(tiny_data)
    profile = pc_columns(spec, None)
    assert profile and "user_id" not in profile and all(n.startswith("user_") for n in profile)
    assert pc_columns(spec, ("user_age_level",)) == ["user_age_level"]
    with pytest.raises(ValueError, match=r"model.poso.pc_fields: \['user_shoe_size'\] are not embedded"):
        pc_columns(spec, ("user_shoe_size",))

    def code_gradient(stop):
        model, _, x, _ = _model(tiny_data, f"model.poso.pc_stop_gradient={str(stop).lower()}",
                                "model.poso.pc_fields=[user_age_level]")
        table = model.embed.tables["user_age_level"]
        with tf.GradientTape() as tape:
            code = model.personalisation_code(x, x["hist_ts"] > 0)
            loss = tf.reduce_sum(model.gates[0](code))
        assert code.shape[1] == 4 + 5  # one profile embedding + 5 activity buckets
        return tape.gradient(loss, table.trainable_variables)[0]

    assert code_gradient(stop=True) is None
    moved = code_gradient(stop=False)
    assert moved is not None and float(tf.reduce_max(tf.abs(tf.convert_to_tensor(moved)))) > 0


def test_poso_without_any_code_is_an_error(tiny_data):
    with pytest.raises(ValueError, match="personalisation code is empty"):
        _model(tiny_data, "model.poso.pc_fields=[]", "model.poso.activity_edges=[]")
    model, _, x, _ = _model(tiny_data, "model.poso.pc_fields=[]")  # the activity bucket alone
    assert model.personalisation_code(x, x["hist_ts"] > 0).shape[1] == len(PosoConfig().activity_edges) + 1


@pytest.mark.parametrize("key,value,message", [
    ("gate_scale", "0", "must be a finite number > 0"),
    ("gate_hidden", "[0]", "layer sizes >= 1 ([] = no hidden layer); received [0]"),
    ("activity_edges", "[3,3]", "strictly increasing"),
    ("activity_edges", "[0]", "strictly increasing integers >= 1"),
    ("pc_stop_gradient", "1", "expected"),
    ("pc_fields", "[a,a]", "distinct column names"),
])
def test_poso_config_names_the_bad_key(key, value, message):
    with pytest.raises(ValueError, match=f"model.poso.{key}") as info:
        load_config(None, [f"model.poso.{key}={value}"])
    assert message in str(info.value)


def test_poso_ctr_ignores_the_labels_and_intent_columns(tiny_data):
    model, _, x, y = _model(tiny_data)
    assert float(tf.reduce_sum(y["ctr"])) > 0
    flipped = {**x, "intent_counts": x["intent_counts"][:, ::-1] + 1, "intent_dist": 1.0 - x["intent_dist"]}
    a = model(x)["ctr"].numpy()
    b = model(flipped)["ctr"].numpy()
    np.testing.assert_array_equal(a, b)
