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
