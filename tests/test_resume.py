"""Kill a real run with SIGKILL at several points, rerun the same command, and get exactly the
results of an uninterrupted run."""
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import FASHION_MANUAL_DIR, REPO, run_cli
from lth_tf import artifacts, masks

pytestmark = pytest.mark.skipif(not FASHION_MANUAL_DIR.exists(),
                                reason="needs ../shared/datasets/fashion_mnist")
ARGS = ["--model=lenet300_100", "--dataset=fashion_mnist", f"--manual_dir={FASHION_MANUAL_DIR}",
        "--rounds=1", "--iterations=1000", "--eval_every=100", "--checkpoint_every=100",
        "--controls=reinit", "--threads=1"]


def _run_until(out, condition, timeout=300):
  """Starts the command, SIGKILLs it as soon as ``condition()`` holds; returns True if killed."""
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.Popen([sys.executable, "-m", "lth_tf.main", *ARGS, f"--output_dir={out}"],
                          cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if condition():
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return True
    time.sleep(0.02)
  proc.wait()
  return False


def test_sigkill_at_several_points_then_rerun_equals_uninterrupted(tmp_path):
  ref, out = tmp_path / "ref", tmp_path / "cut"
  assert run_cli([*ARGS, f"--output_dir={ref}"]).returncode == 0
  stage = lambda arm, r: out / arm / "trial_0" / f"round_{r}"

  # 1. during the dense round's training, once it has a checkpoint
  assert _run_until(out, lambda: glob.glob(str(stage("ticket", 0) / "checkpoint" / "ckpt-*.index")))
  assert not (stage("ticket", 0) / "metrics.json").exists()
  # 2. right after that round finished
  assert _run_until(out, lambda: (stage("ticket", 0) / "metrics.json").exists())
  # 3. during round 1's training, just after its first checkpoint
  assert _run_until(out, lambda: glob.glob(str(stage("ticket", 1) / "checkpoint" / "ckpt-*.index")))
  # then the same command to the end
  final = run_cli([*ARGS, f"--output_dir={out}"])
  assert final.returncode == 0, final.stderr[-2000:]

  assert (out / "results.csv").read_text() == (ref / "results.csv").read_text()
  for path in glob.glob(str(ref / "*" / "trial_0" / "round_*")):
    rel = os.path.relpath(path, ref)
    a = masks.from_bytes(artifacts.read_bytes(f"{path}/masks.npz"))
    b = masks.from_bytes(artifacts.read_bytes(f"{out}/{rel}/masks.npz"))
    for n in a:
      np.testing.assert_array_equal(a[n], b[n])
    wa, wb = artifacts.read_weights(f"{path}/weights.npz"), artifacts.read_weights(f"{out}/{rel}/weights.npz")
    for n in wa:
      np.testing.assert_array_equal(wa[n][0], wb[n][0])
  assert not glob.glob(str(out / "**" / "*.tmp-*"), recursive=True)  # no write debris
