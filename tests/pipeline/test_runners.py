"""Runner selection (tirec.pipeline.runners) and the job's shard count, without a cluster."""
import logging

import pytest

from tirec.pipeline import job, runners
from tirec.pipeline.config import PipelineConfig


def test_direct_runner_is_fnapi_in_memory_without_the_runner_flag():
    with runners.runner_for(["--runner=DirectRunner", "--direct_num_workers", "2"]) as (flags, runner):
        assert type(runner).__name__ == "FnApiRunner"
        assert flags == ["--direct_num_workers", "2", "--direct_running_mode=in_memory"]


def test_dask_with_an_address_starts_no_cluster_and_reads_one_file_per_partition():
    pytest.importorskip("dask.distributed")
    args = ["--runner", "Dask", "--dask_client_address", "tcp://10.1.2.3:8786"]
    with runners.runner_for(args) as (flags, runner):
        assert type(runner).__name__ == "DaskRunner"
        assert flags == ["--dask_client_address", "tcp://10.1.2.3:8786", "--dask_partition_size", "1"]
    with runners.runner_for(args + ["--dask_npartitions", "8"]) as (flags, _):
        assert "--dask_partition_size" not in flags


def test_close_client_cancels_the_tasks_of_a_failed_job():
    calls = []

    class Client:
        def cancel(self, futures):
            calls.append(("cancel", futures))

        def close(self):
            calls.append(("close",))

    class Result:
        client, futures, state = Client(), ["f1"], "FAILED"

    class Pipeline:
        result = Result()

    runners.close_client(Pipeline())
    assert calls == [("cancel", ["f1"]), ("close",)]
    Result.state, calls[:] = "DONE", []
    runners.close_client(Pipeline())
    assert calls == [("close",)]
    runners.close_client(object())  # a pipeline that never ran: nothing to close


class _Plan:
    def __init__(self, events):
        self.events = events


def test_shards_follow_the_planned_events_and_a_large_shard_warns(caplog):
    plan = _Plan({"train": 350_000, "valid": 50_000, "eval": 50_001})
    assert job.num_shards(PipelineConfig(), plan) == 3
    assert job.num_shards(PipelineConfig(), _Plan({"train": 10, "valid": 0, "eval": 5})) == 1
    with caplog.at_level(logging.WARNING):
        assert job.num_shards(PipelineConfig(num_shards=2), _Plan({"train": 3_000_000, "eval": 1})) == 2
    assert "pipeline.num_shards=2: about 1500000 events per shard" in caplog.text
