"""The feature job on Beam's DaskRunner (a local ``dask.distributed`` cluster of 2 worker
processes) writes what DirectRunner writes on the same input: the records of every split, the
dead letters, ``spec.json`` and ``stats.json`` (order-insensitive; only the run time differs)."""
import glob
import json
import os

import pytest

pytest.importorskip("dask.distributed")

from tirec.pipeline import job, synthetic  # noqa: E402
from tirec.pipeline.config import PipelineConfig  # noqa: E402

DASK = ["--runner", "dask", "--direct_num_workers", "2"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """A CSV log of 30 users in two impression files, with rows for every stage's dead letters:
    the read step (malformed line, bad label, bad timestamp), the labeling step (items not in
    the item table, a user's second profile row)."""
    base = tmp_path_factory.mktemp("dask_raw")
    raw = str(base / "raw")
    synthetic.generate(synthetic.GeneratorConfig(users=30, seed=9, format="csv"), raw)
    imp = sorted(glob.glob(f"{raw}/impressions/*.csv"))[0]
    lines = open(imp).read().splitlines()
    header, rows = lines[0], lines[1:]
    half = len(rows) // 2
    with open(imp, "w") as fh:
        fh.write("\n".join([header] + rows[:half]) + "\n")
    cols = header.split(",")
    bad = dict(zip(cols, rows[half].split(",")))
    with open(f"{raw}/impressions/part-00001.csv", "w") as fh:
        fh.write("\n".join([header] + rows[half:]) + "\n")
        fh.write("1,2,3\n")                                                          # malformed_line
        fh.write(",".join({**bad, "label": "7"}.get(c) for c in cols) + "\n")        # bad_label
        fh.write(",".join({**bad, "item_id": "987654"}.get(c) for c in cols) + "\n")  # unknown_item
    beh = sorted(glob.glob(f"{raw}/behaviours/*.csv"))[0]
    with open(beh, "a") as fh:
        fh.write(f"{bad['user_id']},987654,{bad['ts']},click\n")                   # unknown_item
        fh.write(f"{bad['user_id']},{bad['item_id']},-7,click\n")                  # bad_timestamp
    users = open(f"{raw}/users.csv").read().splitlines()
    with open(f"{raw}/users.csv", "a") as fh:
        fh.write(users[1] + "\n")                                                    # duplicate_id
    return raw


def _run(raw: str, out: str, beam_args: list[str], **settings) -> str:
    job.run(PipelineConfig(input=raw, format="synthetic", out=out, max_seq_len=10, chunk_rows=200,
                           num_shards=2, **settings), beam_args)
    return out


def _records(out: str, split: str) -> list[bytes]:
    """The split's records, each re-serialized deterministically, sorted."""
    import tensorflow as tf

    files = sorted(glob.glob(f"{out}/{split}/*.tfrecord.gz"))
    return sorted(tf.train.Example.FromString(r.numpy()).SerializeToString(deterministic=True)
                  for r in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def _dead_letters(out: str) -> list[dict]:
    lines = [line for path in glob.glob(f"{out}/deadletter/*.jsonl") for line in open(path).read().splitlines()]
    return sorted((json.loads(line) for line in lines), key=lambda d: json.dumps(d, sort_keys=True))


def _stats(out: str) -> dict:
    stats = json.load(open(f"{out}/stats.json"))
    stats.pop("seconds")
    return stats


@pytest.mark.parametrize("sim_range", ["fixed", "quantile"])
def test_dask_writes_what_direct_runner_writes(raw, tmp_path, sim_range):
    """``quantile`` adds the job's one side input (the train-set similarity range)."""
    direct = _run(raw, str(tmp_path / "direct"), [], sim_range=sim_range)
    dask = _run(raw, str(tmp_path / "dask"), DASK, sim_range=sim_range)
    for split in ("train", "valid", "eval"):
        want = _records(direct, split)
        assert want, split
        assert _records(dask, split) == want, split
        assert sorted(map(os.path.basename, glob.glob(f"{dask}/{split}/*"))) == [
            "part-00000-of-00002.tfrecord.gz", "part-00001-of-00002.tfrecord.gz"]
    dead = _dead_letters(direct)
    reasons = {(d["table"], d["reason"]) for d in dead}
    assert {("impressions", "malformed_line"), ("impressions", "bad_label"), ("impressions", "unknown_item"),
            ("behaviours", "unknown_item"), ("behaviours", "bad_timestamp"), ("users", "duplicate_id")} <= reasons, reasons
    assert _dead_letters(dask) == dead
    assert json.load(open(f"{dask}/spec.json")) == json.load(open(f"{direct}/spec.json"))
    assert _stats(dask) == _stats(direct)
    assert _stats(direct)["accounting"]["balanced"]
