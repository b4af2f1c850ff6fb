"""DIN's attention unit alone, forward and backward, in the ways it can run: the floor under a DIN step.

    python benchmarks/bench_attention.py [--data DIR] [--batch 4096] [--dim 64] [--units 80,40]
        [--rounds 5] [--steps 3] [--out FILE.json]

Times one gradient step of ``DinAttention`` (queries ``[B, d]``, keys ``[B, L, d]``, a sum of
squares as the loss; gradients of the inputs and the unit's weights) on one fixed batch, in
these variants, built first and then timed interleaved (``--rounds`` rounds of ``--steps``
steps each; the fastest round counts, the median round in brackets):

* ``padded``: every position of the padded sequence (``length_buckets=0``);
* ``groups16``: the real positions only, in 16 length groups (DIN's ``model.hist_buckets``);
* ``padded_xla``: ``padded`` compiled with XLA (``tf.function(jit_compile=True)``);
* ``per_sample_matrix``: the first layer's two per-position products folded into one per-sample
  matrix, ``k (W_k - W_diff + diag(q) W_prod)``, a batched matmul (half the first layer's
  multiply-adds, small matrices).

Every variant computes the same function: the script checks their outputs and gradients against
``padded`` before timing. The sequence lengths are a data set's (``--data``: its train split's
``hist_len``, a seeded sample of ``--batch`` rows; ``L`` is its ``max_seq_len``), else uniform in
``[1, 50]``. Reports ms per step and the rate on the real positions' FLOPs: ``3 x 2 x`` the
forward multiply-adds of the real positions in the library's form of the unit
(``2 d u_1 + u_1 u_2 + u_2`` per position: the split first layer, ``docs/models.md``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tirec.models.layers.attention import DinAttention  # noqa: E402


class PerSampleMatrix(DinAttention):
    """``DinAttention`` whose first layer runs as one batched matmul per sample (same weights)."""

    def _first_layer(self, query, keys):
        dense = self.dense_layers[0]
        if not dense.built:
            dense(tf.zeros([0, 4 * keys.shape[-1]], keys.dtype))
        w_q, w_k, w_diff, w_prod = tf.split(dense.kernel, 4, axis=0)
        per_sample = tf.nn.bias_add(tf.matmul(query, w_q + w_diff), dense.bias)
        matrix = (w_k - w_diff)[None] + query[:, :, None] * w_prod[None]  # [B, d, units]
        return tf.matmul(keys, matrix) + per_sample[:, None, :]


VARIANTS = {"padded": (DinAttention, 0, False), "groups16": (DinAttention, 16, False),
            "padded_xla": (DinAttention, 0, True), "per_sample_matrix": (PerSampleMatrix, 0, False)}


def batch(lengths: np.ndarray, length: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    q = tf.constant(rng.normal(size=(len(lengths), dim)).astype(np.float32))
    k = tf.constant(rng.normal(size=(len(lengths), length, dim)).astype(np.float32))
    return q, k, tf.sequence_mask(lengths, length)


def step_fn(cls, buckets: int, jit: bool, units):
    """A fresh unit and its gradient step, as a ``tf.function`` (XLA-compiled with ``jit``)."""
    att = cls(units, length_buckets=buckets)

    def step(q, k, mask):
        with tf.GradientTape() as tape:
            tape.watch([q, k])
            out = att(q, k, mask)
            loss = tf.reduce_sum(out * out)
        return out, tape.gradient(loss, [q, k] + att.trainable_variables)
    return att, tf.function(step, jit_compile=jit)


def build(inputs, units) -> dict:
    """Every variant, traced once, with ``padded``'s weights."""
    q, k, mask = inputs
    steps, weights = {}, None
    for name, (cls, buckets, jit) in VARIANTS.items():
        att, fn = step_fn(cls, buckets, jit, units)
        att(q[:1], k[:1], mask[:1])
        if weights is None:
            weights = att.get_weights()
        att.set_weights(weights)
        fn(q, k, mask)
        steps[name] = fn
    return steps


def check_same(steps: dict, inputs, rtol: float = 1e-3) -> None:
    """Raises unless every variant's output and gradients match ``padded``'s, to ``rtol`` of each
    tensor's largest magnitude (float32 sums over ~10^5 positions round at that scale)."""
    ref_out, ref_grads = steps["padded"](*inputs)
    for name, fn in steps.items():
        out, grads = fn(*inputs)
        for a, b in zip([ref_out] + ref_grads, [out] + grads):
            a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)  # a gather's gradient: IndexedSlices
            scale = float(tf.reduce_max(tf.abs(a))) or 1.0
            np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=rtol, atol=rtol * scale,
                                       err_msg=f"{name} differs from padded")


def time_interleaved(steps: dict, inputs, rounds: int, per_round: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {n: [] for n in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                out = fn(*inputs)
            out[0].numpy()
            times[name].append((time.perf_counter() - t0) / per_round * 1000.0)
    return times


def real_flops(lengths: np.ndarray, dim: int, units) -> float:
    """Training FLOPs on the real positions: 3 x forward, forward = 2 x multiply-adds."""
    per_position = 2 * dim * units[0] + sum(a * b for a, b in zip(units, list(units[1:]) + [1]))
    return 3 * 2 * float(lengths.sum()) * per_position


def lengths_of(data: str | None, n: int) -> tuple[np.ndarray, int]:
    if not data:
        return np.random.default_rng(1).integers(1, 51, size=n), 50
    from tirec.models.data import load_data_spec, read_columns

    spec = load_data_spec(data)
    lengths = read_columns(data, "train", spec, ["hist_len"])["hist_len"].astype(np.int64)
    if len(lengths) < n:
        raise SystemExit(f"--data {data}: {len(lengths)} train rows, fewer than --batch {n}")
    # a seeded sample: the records are written user by user, so the first rows are few users'
    return np.random.default_rng(0).choice(lengths, size=n, replace=False), int(spec.max_seq_len)


def table(times: dict, flops: float, lengths: np.ndarray, length: int) -> str:
    lines = [f"Batch {len(lengths)}, L = {length}, {lengths.sum():,} real positions "
             f"(mean length {lengths.mean():.1f}); fastest round (median round):", "",
             "| variant | ms/step | GFLOP/s on the real positions |", "|---|---|---|"]
    for name, ts in times.items():
        best, med = min(ts), float(np.median(ts))
        lines.append(f"| {name} | {best:.1f} ({med:.1f}) | {flops / best / 1e6:.1f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="a tirec pipeline output: its history lengths (default: uniform 1-50)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=64, help="query / key width (4 fields x 16 in DIN)")
    ap.add_argument("--units", default="80,40")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", help="write the times here (JSON)")
    args = ap.parse_args(argv)
    try:
        args.units = tuple(int(u) for u in args.units.split(","))
    except ValueError:
        ap.error(f"--units must be comma-separated ints; received {args.units!r}")
    for flag in ("batch", "dim", "rounds", "steps"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be >= 1; received {getattr(args, flag)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    lengths, length = lengths_of(args.data, args.batch)
    inputs = batch(lengths, length, args.dim)
    steps = build(inputs, args.units)
    check_same(steps, inputs)
    times = time_interleaved(steps, inputs, args.rounds, args.steps)
    print(table(times, real_flops(lengths, args.dim, args.units), lengths, length))
    if args.out:
        from tirec.features.jsonio import write_json

        write_json(args.out, {"lengths_sum": int(lengths.sum()), "L": length, "ms": times})
    return 0


if __name__ == "__main__":
    sys.exit(main())
