"""Shared fixtures: tiny synthetic data for fast in-process experiments, real Fashion-MNIST."""
import os
import pathlib

import numpy as np
import pytest

import lth_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

REPO = pathlib.Path(__file__).resolve().parents[1]
FASHION_MANUAL_DIR = REPO.parent / "shared" / "datasets" / "fashion_mnist"


def synthetic_splits(n_train=600, n_val=200, n_test=200, shape=(28, 28, 1), seed=0):
  """Learnable toy data: the class is encoded in which image row is bright."""
  from lth_tf import data
  rng = np.random.default_rng(seed)

  def make(n):
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n, *shape)).astype(np.uint8)
    for i, c in enumerate(y):
      x[i, 2 + 2 * c, :, :] = 250
    return x, y.astype(np.int64)

  (a, b), (c, d), (e, f) = make(n_train), make(n_val), make(n_test)
  return data.Splits(a, b, c, d, e, f)


@pytest.fixture(scope="session")
def splits():
  return synthetic_splits()


def run_cli(args, cwd=REPO, timeout=600):
  """Runs ``python -m lth_tf.main`` in a subprocess; returns CompletedProcess."""
  import subprocess
  import sys
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "lth_tf.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def error_line(proc):
  """Our error: the last stderr line (TensorFlow may print start-up noise above it), one
  line with no traceback."""
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert lines and lines[-1].startswith("lth_tf: error: "), proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  return lines[-1]


TINY_ARGS = ["--model=lenet300_100", "--dataset=fashion_mnist", f"--manual_dir={FASHION_MANUAL_DIR}",
             "--rounds=1", "--iterations=200", "--eval_every=100", "--checkpoint_every=0"]
needs_fashion = pytest.mark.skipif(not FASHION_MANUAL_DIR.exists(),
                                   reason="needs ../shared/datasets/fashion_mnist")


@pytest.fixture(scope="session")
def cli_experiment(tmp_path_factory):
  """One finished tiny CLI experiment on real Fashion-MNIST: (output dir, CompletedProcess)."""
  if not FASHION_MANUAL_DIR.exists():
    pytest.skip("needs ../shared/datasets/fashion_mnist")
  out = tmp_path_factory.mktemp("cli") / "exp"
  proc = run_cli([*TINY_ARGS, f"--output_dir={out}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, proc
