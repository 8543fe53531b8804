"""The benchmarks run end to end at CI size and print their machine-readable last line.

No timing assertions: CI machines are shared and the numbers are for people to read.
"""
import math
import os
import re
import subprocess
import sys

import pytest

from conftest import FASHION_MANUAL_DIR, REPO

pytestmark = pytest.mark.skipif(not FASHION_MANUAL_DIR.exists(),
                                reason="needs ../shared/datasets/fashion_mnist")


def _run_module(module, args, timeout=600):
  """Runs ``python -m module`` from the repo root as a user would; returns CompletedProcess."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", module, *args, "--threads=1",
                         f"--manual_dir={FASHION_MANUAL_DIR}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _last_line(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.strip().splitlines() if l.strip()]
  assert lines, proc.stderr[-3000:]
  return lines[-1]


def test_round_overhead_prints_both_ratios():
  # Conv-2 at batch 60 costs over a minute per iteration in lth_tf's XLA loop on one CPU
  # thread, so the CI size shrinks the batch and Conv-2's data, not only the iterations.
  proc = _run_module("benchmarks.round_overhead", [
      "--repeats=1", "--lenet_iterations=20", "--eval_every=10", "--conv2_iterations=1",
      "--conv2_eval_every=1", "--batch_size=2", "--conv2_sizes=100,50,50"])
  line = _last_line(proc)
  match = re.fullmatch(r"round/plain lenet300_100=(\d+\.\d{3}) conv2=(\d+\.\d{3})", line)
  assert match, line
  assert all(float(v) > 0 for v in match.groups())
  assert "SYNTHETIC" in proc.stdout  # Conv-2's data is said to be synthetic


def test_dst_overhead_prints_both_ratios():
  proc = _run_module("benchmarks.dst_overhead", ["--iterations=200", "--repeats=1",
                                                  "--dst_interval=100"])
  line = _last_line(proc)
  match = re.fullmatch(r"dst set/static=(\d+\.\d{3}) rigl/static=(\d+\.\d{3})", line)
  assert match, line
  assert all(float(v) > 0 for v in match.groups())


def test_round_stability_prints_ratio_and_growth():
  proc = _run_module("benchmarks.round_stability", ["--rounds=2", "--iterations=200"])
  line = _last_line(proc)
  match = re.fullmatch(r"stability time_ratio=(\S+) rss_growth_mb=(\S+)", line)
  assert match, line
  assert float(match.group(1)) > 0
  assert math.isfinite(float(match.group(2)))  # memory may also shrink: any finite number
  assert "round  2:" in proc.stdout


def test_deploy_prints_ratios_at_ci_size(cli_experiment):
  import json
  out, _ = cli_experiment
  proc = _run_module("benchmarks.deploy", [f"--output_dir={out}", "--rounds=1", "--repeats=1",
                                           "--calls=2", "--batches=1,8"])
  line = _last_line(proc)
  assert line.startswith("deploy {"), line
  result = json.loads(line[len("deploy "):])
  assert set(result) == {"rounds", "dense"} and set(result["rounds"]) == {"1"}
  keys = {"tflite_size", "tflite_size_gz", "saved_model_size", "saved_model_size_gz",
          "tflite_b1", "tflite_b8", "saved_model_b1", "saved_model_b8"}
  dense = result["dense"]
  assert keys <= set(dense) and all(dense[k] > 0 for k in keys)
  entry = result["rounds"]["1"]
  assert 0 < entry["weights_remaining"] < 100
  for name in ("masked", "compact", "tflite_sparse"):
    formats = ("tflite",) if name == "tflite_sparse" else ("tflite", "saved_model")
    for k in keys:
      value = entry[name][k]
      if k.startswith(formats):
        assert isinstance(value, float) and value > 0, (name, k, value)
      else:
        assert value is None, (name, k, value)
  # the masked network has the dense one's shapes: its raw TFLite file is as large
  assert abs(entry["masked"]["tflite_size"] - 1.0) < 0.05
  assert 0 < entry["compact"]["parameters"] <= entry["compact"]["masked_parameters"]
  assert 0 <= entry["tflite_sparse"]["sparse_tensors"] <= entry["tflite_sparse"]["weight_tensors"]
  assert "check round 1:" in proc.stdout and "MISMATCH" not in proc.stdout
  assert "round 1: " in proc.stdout and "masked" in proc.stdout  # the human table

  bad = _run_module("benchmarks.deploy", [f"--output_dir={out}", "--rounds=5"])
  # one error line, the last on stderr (TensorFlow's start-up log may come above it)
  lines = [l for l in bad.stderr.splitlines() if l.strip()]
  assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
  assert lines[-1].startswith("benchmarks.deploy: error: ") and "round 5" in lines[-1], lines
  assert sum(l.startswith("benchmarks.deploy:") for l in lines) == 1 and bad.stdout == ""


def test_compact_training_prints_ratios_at_ci_size():
  proc = _run_module("benchmarks.compact_training", ["--rounds=0,5", "--iterations=100",
                                                     "--eval_every=50", "--repeats=1"])
  line = _last_line(proc)
  match = re.fullmatch(r"compact_training lenet300_100 r0=(\d+\.\d{3}) r5=(\d+\.\d{3})", line)
  assert match, line
  assert all(float(v) > 0 for v in match.groups())
  assert "check round 0:" in proc.stdout and "check round 5:" in proc.stdout
  assert "MISMATCH" not in proc.stdout
