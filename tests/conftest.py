"""What several test modules share: tiny synthetic data and tiny experiment settings for fast
in-process runs, recorders of what training saw, small networks, a fake finished experiment,
and the command line on real Fashion-MNIST.

Tests get objects from fixtures (a Config builder, recorders, networks, data); the plain
functions and constants here (paths, CLI helpers, skip markers, pure helpers such as
``load_mask`` or ``u_shaped``) are imported with ``from conftest import``. No test module
imports another."""
import math
import os
import pathlib

import numpy as np
import pytest

import lth_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tf_keras as keras  # noqa: E402  (after lth_tf: Keras 2)

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


class Interrupt(Exception):
  """What InterruptAt raises: a kill at that point of a run."""


class InterruptAt(keras.callbacks.Callback):
  """Raises Interrupt at evaluation ``epoch`` of the ``stage_index``-th stage a run trains,
  as a kill would stop the process there."""

  def __init__(self, stage_index, epoch):
    super().__init__()
    self.stage_index, self.epoch, self.seen = stage_index, epoch, -1

  def on_train_begin(self, logs=None):
    self.seen += 1

  def on_epoch_end(self, epoch, logs=None):
    if self.seen == self.stage_index and epoch == self.epoch:
      raise Interrupt()


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


def assert_refused(args, named, tmp_path):
  """``python -m lth_tf.main`` with ``args`` (LeNet unless they name a --model) exits with
  code 2 and one error line containing ``named``, and writes nothing."""
  model = [] if any(a.startswith("--model=") for a in args) else ["--model=lenet300_100"]
  proc = run_cli([*model, *args, f"--output_dir={tmp_path}/x"])
  assert proc.returncode == 2 and named in error_line(proc), proc.stderr[-500:]
  assert not (tmp_path / "x").exists()


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


@pytest.fixture(scope="session")
def memorising_splits():
  """Synthetic splits on which the validation loss is U-shaped while the training loss keeps
  falling: a tiny training split (60 examples), and a validation split, with half of their
  labels redrawn at random (the test split is clean). A network first learns the rule, then
  memorises the noise: validation loss rises after its minimum, and the test accuracy keeps
  changing, so the early-stopping iteration and the accuracy there can be told from the last
  ones."""
  from lth_tf import data
  n_train, label_noise, seed = 60, 0.5, 0
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


@pytest.fixture(scope="session")
def weights_recorder():
  """Makes Keras callbacks that record the model's weights after every evaluation (a training
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

  return WeightsAtEvaluations


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


# ---- tiny in-process experiments -------------------------------------------------------------

# LeNet-300-100 on the synthetic splits: 3 rounds of 120 iterations, both controls, one trial.
TINY_CONFIG = dict(model="lenet300_100", dataset="mnist", rounds=3, iterations=120, batch_size=30,
                   learning_rate=1.2e-3, eval_every=40, prune_rate_conv=0.0, prune_rate_fc=0.5,
                   prune_rate_output=0.25, controls=("reinit", "random_prune"), trials=1, seed=3)


@pytest.fixture(scope="session")
def tiny_config():
  """``tiny_config(**overrides)``: config.Config of TINY_CONFIG with ``overrides``,
  validated (a bad setting raises ConfigError here)."""
  from lth_tf import config

  def build(**overrides):
    return config.Config(**{**TINY_CONFIG, **overrides}).validate()
  return build


@pytest.fixture(scope="session")
def stage_recorder():
  """``stage_recorder(finals=False)``: a Keras callback that records each stage's weights and
  masks at its start (``.starts``, one per stage in the order they ran) and its masks at its end
  (``.end_masks``); with ``finals=True`` also its final trained weights, kernels ⊙ mask
  (``.finals``)."""
  import tf_keras as keras
  from lth_tf import ticket

  class StageRecorder(keras.callbacks.Callback):
    def __init__(self, finals):
      super().__init__()
      self.starts, self.end_masks = [], []
      self.finals = [] if finals else None

    def on_train_begin(self, logs=None):
      self.starts.append((ticket.get_weights(self.model), ticket.get_masks(self.model)))

    def on_train_end(self, logs=None):
      mask = ticket.get_masks(self.model)
      self.end_masks.append(mask)
      if self.finals is not None:
        weights = ticket.get_weights(self.model)
        self.finals.append({n: [ws[0] * mask[n], *ws[1:]] for n, ws in weights.items()})

  return lambda finals=False: StageRecorder(finals)


def load_mask(out, arm, r, trial=0):
  """The masks.npz of one stage of the experiment in ``out``."""
  from lth_tf import artifacts, layout, masks
  return masks.from_bytes(
      artifacts.read_bytes(f"{layout.stage_dir(out, arm, trial, r)}/masks.npz"))


# ---- networks and training rounds outside the experiment loop --------------------------------

@pytest.fixture
def wrapped_lenet():
  """A fresh TF-MOT-wrapped LeNet-300-100 (seed 0) and its Adam Trainer (rate 1e-3)."""
  from lth_tf import models, ticket, training
  model = ticket.wrap(models.build("lenet300_100", (28, 28, 1), seed=0))
  return model, training.Trainer(model, 1e-3)


@pytest.fixture
def resnet20():
  """A fresh wrapped ResNet-20 for 32x32x3 images (He-normal, seed 1)."""
  from lth_tf import models, ticket
  return ticket.wrap(models.build("resnet20", (32, 32, 3), init="he_normal", seed=1))


def train_round_on(trainer, splits, iterations, eval_every, batch_size=30, seed=0):
  """One training round of ``trainer`` on ``splits`` (training.train_round), its batches drawn
  with ``seed``; returns its RoundResult."""
  from lth_tf import data, training
  table = data.batch_indices(len(splits.train_x), batch_size, iterations, seed=seed)
  return training.train_round(
      trainer, training.Split.of(splits.train_x, splits.train_y), table,
      training.Split.of(splits.val_x, splits.val_y),
      training.Split.of(splits.test_x, splits.test_y), eval_every)


def half_mask(model, seed=0):
  """A random mask keeping half of every kernel of ``model``."""
  from lth_tf import pruning, ticket
  kernels = ticket.get_kernels(model)
  rng = np.random.default_rng(seed)
  return pruning.prune("random", kernels, None, [((n,), k.size // 2) for n, k in kernels.items()],
                       rng)


def global_conv_mask(model, rate, round_=1):
  """One global magnitude threshold over the conv layers; the output layer kept whole.
  Returns (mask, {layer: kernel size}, conv layer names)."""
  from lth_tf import masks, pruning, ticket
  kernels = ticket.get_kernels(model)
  sizes = {n: k.size for n, k in kernels.items()}
  convs = [n for n in sizes if n != "output"]
  targets = pruning.global_targets(sizes, convs, rate, {n: 0.0 for n in sizes}, round_)
  return pruning.prune("magnitude", kernels, masks.ones_like(kernels), targets), sizes, convs


def bn_weights(model):
  """{batch-norm layer: [γ, β, moving mean, moving variance]} of ``model``."""
  from lth_tf import ticket
  return {n: ws for n, ws in ticket.get_weights(model).items() if n.startswith("bn")}


# ---- a finished experiment's results, made up (nothing trained) --------------------------------

REMAINING = {0: 100.0, 1: 80.0, 2: 64.0, 3: 51.2}
# (arm, trial, round) -> early_stop_iteration; reinit trial 1 round 2 diverges.
ITERATIONS = {
    ("ticket", 0, 0): 500, ("ticket", 0, 1): 400, ("ticket", 0, 2): 300, ("ticket", 0, 3): 300,
    ("ticket", 1, 0): 700, ("ticket", 1, 1): 600, ("ticket", 1, 2): 300, ("ticket", 1, 3): 500,
    ("reinit", 0, 1): 500, ("reinit", 0, 2): 600, ("reinit", 0, 3): 700,
    ("reinit", 1, 1): 700, ("reinit", 1, 2): 100, ("reinit", 1, 3): 900,
}
DIVERGED = {("reinit", 1, 2)}


def fake_row(arm, trial, round_):
  """The results.csv row of one stage of the made-up experiment."""
  diverged = (arm, trial, round_) in DIVERGED
  return dict(arm=arm, trial=trial, round=round_, weights_remaining=REMAINING[round_],
              early_stop_iteration=ITERATIONS[arm, trial, round_],
              early_stop_val_loss=math.nan if diverged else 0.3,
              early_stop_val_accuracy=0.1 if diverged else 0.9 + 0.01 * round_,
              early_stop_test_accuracy=0.1 if diverged else 0.89 + 0.01 * round_ - 0.01 * trial,
              final_test_accuracy=0.1 if diverged else 0.88, diverged=diverged,
              search_iterations=1000 * round_)


@pytest.fixture
def fake_rows():
  """Every results.csv row of the made-up 2-trial, 3-round ticket + reinit experiment."""
  return [fake_row(*key) for key in ITERATIONS]


def fake_experiment(output_dir):
  """Writes a finished 2-trial, 3-round ticket + reinit experiment (flags.cfg, results.csv,
  every stage's metrics.json) to ``output_dir``, without training anything; returns its rows."""
  from lth_tf import artifacts, layout
  rows = [fake_row(*key) for key in ITERATIONS]
  artifacts.write_bytes(f"{output_dir}/flags.cfg",
                        "--model=lenet300_100\n--dataset=mnist\n--trials=2\n")
  artifacts.write_results(f"{output_dir}/results.csv", rows)
  for row in rows:
    curve = [dict(iteration=i, loss=1.0 / i, accuracy=0.5, val_loss=1.0 / i,
                  val_accuracy=0.8 + i / 1e4, test_loss=1.0 / i, test_accuracy=0.79 + i / 1e4)
             for i in (100, 200, 300)]
    layers = {"fc1": 0.8**row["round"], "fc2": 0.8**row["round"], "output": 0.9**row["round"]}
    artifacts.write_json(
        f"{layout.stage_dir(output_dir, row['arm'], row['trial'], row['round'])}/metrics.json",
        dict(row, layer_weights_remaining=layers, curve=curve))
  return rows


def flags_text(cfg, output_dir, **runtime):
  """flags.cfg as lth_tf.main writes it for ``cfg`` (experiment.run alone writes none) and
  the config.Runtime of ``runtime``."""
  from lth_tf import config
  return config.FlagsFile(cfg, config.Runtime(**runtime), output_dir).text()
