"""benchmarks/gpu_check.sh without a GPU: its dry run measures and writes the summary, its real
run refuses to go on when TensorFlow sees no GPU, and the ``gpu`` tests skip here."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")


def _env(**extra):
    """This interpreter's environment, its folder first on PATH, no GPU visible to TensorFlow."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), **extra)
    env.pop("TIREC_GPU_TESTS_ON_CPU", None)
    return env


def _script(*args, timeout=120, **env):
    return subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow  # 58 s
def test_dry_run_writes_the_speeds_and_the_latency(tmp_path):
    out = tmp_path / "out"
    res = _script("--dry-run", "--out", str(out), "--python", sys.executable, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "nvidia-smi" in res.stdout and "collect only" in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry-run"
    # The gpu tests were collected (not run): every one of them listed.
    assert summary["gpu_tests"]["rc"] == 0 and "collected" in summary["gpu_tests"]["summary"]
    log = (out / "pytest.log").read_text()
    for name in ("test_mirrored_training_float32[din]", "test_mirrored_training_mixed_bfloat16[daian]",
                 "test_export_serving_parity[daian-float32]"):
        assert name in log, log[-2000:]
    speed = summary["train_speed"]
    for model in ("din", "daian"):
        figures = speed["float32"][model]
        assert figures["ms_per_step"] > 0 and figures["examples_per_s"] > 0, figures
    assert speed["float32"]["daian_over_din_step_time"] > 0
    latency = summary["serving_latency"]
    assert (latency["signature"], latency["candidates"]) == ("rank", 200)
    for model in ("din", "daian"):
        assert latency[model]["median_ms"] > 0
    assert summary["devices"]["gpus"] == []
    assert summary["seconds"]["total"] > 0
    # The digest lines after the JSON.
    assert "train float32: din " in res.stdout and "serving rank at 200 candidates" in res.stdout


def test_gpu_tests_skip_without_a_gpu():
    res = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-rs",
                          "-p", "no:cacheprovider"], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "8 skipped" in res.stdout and "passed" not in res.stdout and "failed" not in res.stdout, res.stdout
    assert "no GPU visible to TensorFlow" in res.stdout


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None,
                    reason="with a driver present the real run would install the CUDA wheels")
def test_real_run_without_a_gpu_stops_before_the_tests(tmp_path):
    res = _script("--out", str(tmp_path / "out"), "--python", sys.executable)
    assert res.returncode == 3, res.stdout[-3000:] + res.stderr[-3000:]
    assert "nvidia-smi not found" in res.stdout
    assert "TensorFlow sees no GPU here" in res.stderr
    assert not (tmp_path / "out" / "pytest.log").exists()


def test_arguments():
    res = _script("--help")
    assert res.returncode == 0 and "--dry-run" in res.stdout and "set -euo" not in res.stdout
    res = _script("--bogus")
    assert res.returncode == 2 and "unknown argument --bogus" in res.stderr
