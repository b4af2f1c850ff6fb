"""The spread of a ParameterServer run's eval AUC: the PS run of
``tests/models/test_cluster_processes.py`` (chief + 2 workers + 2 parameter servers, DIN on
the planted data) repeated on one cluster of processes, then the same run in one process.

    python benchmarks/ps_auc_spread.py OUT [--epochs 2] [--steps 60] [--runs 3]

Start two at once (different OUT) to see it with the 2 cores shared, as ``make test-slow``'s
``-n 2`` runs the slow files.
"""
import argparse
import os
import pathlib
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests", "models"))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import test_cluster_processes as T  # noqa: E402  (the test's own cluster helpers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    from tirec.pipeline import job, synthetic
    from tirec.pipeline.config import PipelineConfig

    data = os.path.join(args.out, "tfr")
    if not os.path.exists(data):  # the planted_data fixture of tests/conftest.py
        synthetic.generate(synthetic.GeneratorConfig(users=100, seed=11, target_ctr=0.2), os.path.join(args.out, "raw"))
        job.run(PipelineConfig(input=os.path.join(args.out, "raw"), format="synthetic", out=data, max_seq_len=10))
    servers = T.ps_cluster.__wrapped__()
    cluster, tasks = next(servers)
    try:
        for i in range(args.runs):
            start, run = time.time(), os.path.join(args.out, f"ps_{i}")
            chief = T._chief(cluster, data, run, args.epochs, args.steps)
            assert chief.finish() == 0, chief.output()[-3000:]
            print(f"PS run {i}: eval AUC {T._auc(pathlib.Path(run)):.4f} ({time.time() - start:.0f} s)",
                  flush=True)
    finally:
        for task in tasks.values():
            task.kill()
    run = os.path.join(args.out, "one")
    one = T.Task(T._train_args(data, run, "default", args.epochs, args.steps), None)
    assert one.finish() == 0, one.output()[-3000:]
    print(f"one process: eval AUC {T._auc(pathlib.Path(run)):.4f}")


if __name__ == "__main__":
    main()
