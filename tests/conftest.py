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


def memorising_splits(n_train=60, label_noise=0.5, seed=0):
  """Synthetic splits on which the validation loss is U-shaped while the training loss keeps
  falling: a tiny training split, and a validation split, with ``label_noise`` of their labels
  redrawn at random (the test split is clean). A network first learns the rule, then memorises
  the noise: validation loss rises after its minimum, and the test accuracy keeps changing, so
  the early-stopping iteration and the accuracy there can be told from the last ones."""
  from lth_tf import data
  s = synthetic_splits(n_train=n_train, seed=seed)
  rng = np.random.default_rng(seed + 1)

  def corrupt(y):
    y = y.copy()
    noisy = rng.random(len(y)) < label_noise
    y[noisy] = rng.integers(0, 10, int(noisy.sum()))
    return y

  return data.Splits(s.train_x, corrupt(s.train_y), s.val_x, corrupt(s.val_y), s.test_x,
                     s.test_y)


def u_shaped(curve):
  """The index of ``curve``'s minimum validation loss, after asserting that the curve can tell
  the early-stopping rule from its plausible wrong versions: the minimum is unique, neither
  the first nor the last evaluation, and validation loss ends above it, while the training
  loss is lowest at the last evaluation (not at the validation minimum)."""
  val = [p["val_loss"] for p in curve]
  loss = [p["loss"] for p in curve]
  best = int(np.argmin(val))
  assert 0 < best < len(curve) - 1, f"validation minimum at evaluation {best} of {len(curve)}"
  assert sorted(val)[1] > val[best], "the validation minimum is tied"
  assert val[-1] > val[best] and int(np.argmin(loss)) == len(curve) - 1 != best
  return best


def weights_recorder():
  """A Keras callback that records the model's weights after every evaluation (a training
  round calls on_epoch_end after each): ``.trainings`` has one {iteration: {layer: [kernel ⊙
  mask, bias]}} per training it saw."""
  import tf_keras as keras
  from lth_tf import ticket

  class WeightsAtEvaluations(keras.callbacks.Callback):
    def __init__(self):
      super().__init__()
      self.trainings = []

    def on_train_begin(self, logs=None):
      self.trainings.append({})

    def on_epoch_end(self, epoch, logs=None):
      weights, mask = ticket.get_weights(self.model), ticket.get_masks(self.model)
      self.trainings[-1][logs["iteration"]] = {
          n: [ws[0] * mask[n], *ws[1:]] if n in mask else ws for n, ws in weights.items()}

  return WeightsAtEvaluations()


def accuracy(model_name, weights, x, y):
  """The accuracy on (x, y) of {layer: arrays} in a plain ``model_name`` network, computed
  here (an eager forward pass and numpy), not by lth_tf.training."""
  from lth_tf import models, ticket
  net = models.build(model_name, x.shape[1:])
  for name, layer in ticket.weight_layers(net).items():
    layer.set_weights(weights[name])
  logits = np.concatenate([net(x[i:i + 500], training=False).numpy()
                           for i in range(0, len(x), 500)])
  return float(np.mean(np.argmax(logits, -1) == y))
