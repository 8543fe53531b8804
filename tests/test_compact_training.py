"""--compact_training: a --structure=unit stage trained on its compact network computes the
same function at θ0⊙m, trains the same way (same curve, same early stop, the same weights to
float rounding) and is recorded at full size; an interrupted compact stage resumes bit for bit;
anything else is refused in one line."""
import numpy as np
import pytest
import tf_keras as keras
from conftest import TINY_ARGS, Interrupt, InterruptAt, assert_refused, needs_fashion
from lth_tf import (artifacts, compact_training, config, experiment, layout, masks, models,
                    pruning, ticket)
from lth_tf.network import make_trainer

UNIT = dict(structure="unit", rounds=2, controls=("random_prune",), iterations=80,
            eval_every=5, batch_size=20, learning_rate=7e-4)


def test_the_compact_network_starts_as_the_same_function(tiny_config):
  cfg = tiny_config(**UNIT, compact_training=True)
  full = ticket.wrap(models.build("lenet300_100", (28, 28, 1)))
  theta0 = ticket.get_weights(models.build("lenet300_100", (28, 28, 1), seed=5))
  theta0["fc1"][1][:] = np.random.default_rng(0).normal(0, 0.2, 300)  # biases matter too
  kernels = {n: ws[0] for n, ws in theta0.items()}
  mask = pruning.unit_masks({n: np.abs(k) for n, k in kernels.items()},
                            masks.ones_like(kernels), {"fc1": 90, "fc2": 30})
  ticket.set_masks(full, mask)
  ticket.set_weights(full, theta0)
  training = compact_training.CompactTraining(cfg, (28, 28, 1),
                                              lambda m: make_trainer(cfg, m, False))
  trainer = training.prepare(full)
  assert [l.units for l in trainer.model.layers if isinstance(l, keras.layers.Dense)] == [
      90, 30, 10]
  x = np.random.default_rng(1).integers(0, 256, (200, 28, 28, 1), dtype=np.uint8)
  want, got = full(x).numpy(), trainer.model(x).numpy()
  np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # the same shapes again (another arm of the round) reuse the compiled trainer
  assert training.prepare(full) is trainer


@pytest.fixture(scope="module")
def both(tmp_path_factory, tiny_config, memorising_splits):
  """The same unit experiment trained masked and compact: {False: dir, True: dir}."""
  out = {}
  for compact in (False, True):
    out[compact] = str(tmp_path_factory.mktemp(f"compact_{compact}"))
    experiment.run(tiny_config(**UNIT, compact_training=compact), out[compact],
                   memorising_splits, export=True)
  return out


def test_compact_training_records_what_masked_training_records(both, tiny_config):
  """Wrong versions this catches: the compact weights never written back (weights.npz would
  hold the start), written back to the wrong units, a compact network not started from θ0⊙m,
  early stopping read from another curve."""
  cfg = tiny_config(**UNIT)
  masked_rows = artifacts.read_results(f"{both[False]}/results.csv")
  compact_rows = artifacts.read_results(f"{both[True]}/results.csv")
  assert len(masked_rows) == len(compact_rows) == 1 + 2 * 2
  for a, b in zip(masked_rows, compact_rows):
    assert (a["arm"], a["round"], a["weights_remaining"]) == (
        b["arm"], b["round"], b["weights_remaining"])
    assert a["early_stop_iteration"] == b["early_stop_iteration"]
    for key in ("early_stop_val_loss", "early_stop_test_accuracy", "final_test_accuracy"):
      assert a[key] == pytest.approx(b[key], abs=2e-4), (a, key)
  for arm, trial, round_ in cfg.stages():
    if round_ == 0:
      continue
    d = {c: layout.stage_dir(both[c], arm, trial, round_) for c in both}
    mask = masks.from_bytes(artifacts.read_bytes(f"{d[True]}/masks.npz"))
    assert masks.from_bytes(artifacts.read_bytes(f"{d[False]}/masks.npz")).keys() == mask.keys()
    m_curve = artifacts.read_json(f"{d[False]}/metrics.json")["curve"]
    c_curve = artifacts.read_json(f"{d[True]}/metrics.json")["curve"]
    np.testing.assert_allclose([p["val_loss"] for p in c_curve],
                               [p["val_loss"] for p in m_curve], rtol=1e-4)
    w_masked = artifacts.read_weights(f"{d[False]}/weights.npz")
    w_compact = artifacts.read_weights(f"{d[True]}/weights.npz")
    for n in w_masked:
      assert not (w_compact[n][0][mask[n] == 0]).any()
      np.testing.assert_allclose(w_compact[n][0], w_masked[n][0], atol=2e-5)
      np.testing.assert_allclose(w_compact[n][1], w_masked[n][1], atol=2e-5)
    start = artifacts.read_weights(f"{both[True]}/ticket/trial_0/theta0.npz")
    if arm == "ticket":  # a removed unit's bias never moves: still θ0's
      removed = mask["fc1"].sum(axis=0) == 0
      assert removed.any()
      np.testing.assert_array_equal(w_compact["fc1"][1][removed], start["fc1"][1][removed])
      moved = np.abs(w_compact["fc1"][0] - start["fc1"][0] * mask["fc1"]).max()
      assert moved > 1e-3  # and the kept weights did train


def test_a_compact_stage_exports_its_ticket_at_full_size(both):
  import tensorflow as tf
  d = layout.stage_dir(both[True], "ticket", 0, 2)
  loaded = tf.saved_model.load(f"{d}/ticket")
  mask = masks.from_bytes(artifacts.read_bytes(f"{d}/masks.npz"))
  weights = artifacts.read_weights(f"{d}/weights.npz")
  for n, m in mask.items():
    np.testing.assert_array_equal(loaded.lottery_mask[n].numpy(), m)
  kernels = {v.name.split("/")[0]: v.numpy() for v in loaded.variables
             if v.name.endswith("kernel:0")}
  for n in mask:
    np.testing.assert_array_equal(kernels[n], weights[n][0])


class FirstEvaluation(keras.callbacks.Callback):
  """The iteration of each stage's first evaluation."""

  def __init__(self):
    super().__init__()
    self.iterations, self.fresh = [], False

  def on_train_begin(self, logs=None):
    self.fresh = True

  def on_epoch_end(self, epoch, logs=None):
    if self.fresh:
      self.iterations.append(logs["iteration"])
      self.fresh = False


def test_an_interrupted_compact_stage_resumes_bit_identically(tmp_path, splits, tiny_config):
  cfg = tiny_config(structure="unit", rounds=1, controls=(), iterations=160,
                    compact_training=True)
  whole = experiment.run(cfg, str(tmp_path / "whole"), splits, checkpoint_every=40)
  out = str(tmp_path / "cut")
  with pytest.raises(Interrupt):  # the ticket's round 1, at iteration 120
    experiment.run(cfg, out, splits, checkpoint_every=40, callbacks=[InterruptAt(1, 2)])
  assert artifacts.exists(f"{layout.stage_dir(out, 'ticket', 0, 1)}/checkpoint/checkpoint")
  first = FirstEvaluation()
  assert experiment.run(cfg, out, splits, checkpoint_every=40, callbacks=[first]) == whole
  assert first.iterations == [120]  # the one stage left went on from its checkpoint (80)
  a = artifacts.read_weights(f"{layout.stage_dir(str(tmp_path / 'whole'), 'ticket', 0, 1)}"
                             f"/weights.npz")
  b = artifacts.read_weights(f"{layout.stage_dir(out, 'ticket', 0, 1)}/weights.npz")
  for n in a:
    np.testing.assert_array_equal(a[n][0], b[n][0])


def test_compact_training_is_refused_without_whole_unit_masks(tmp_path, tiny_config):
  with pytest.raises(config.ConfigError, match="--compact_training .* --structure=unit"):
    tiny_config(compact_training=True)
  with pytest.raises(config.ConfigError, match="--compact_training .* --structure=unit"):
    tiny_config(compact_training=True, structure="2:4", rounds=1)
  cfg = tiny_config(**UNIT, compact_training=True)
  with pytest.raises(config.ConfigError, match="drop --strategy"):
    experiment.check_strategy(cfg, object())
  full = ticket.wrap(models.build("lenet300_100", (28, 28, 1)))
  mask = masks.ones_like(ticket.get_kernels(full))
  mask["fc1"][:10, 0] = 0  # unit 0 of fc1 keeps only some of its weights
  ticket.set_masks(full, mask)
  training = compact_training.CompactTraining(cfg, (28, 28, 1),
                                              lambda m: make_trainer(cfg, m, False))
  with pytest.raises(config.ConfigError, match="only some weights of kept units in fc1"):
    training.prepare(full)


@needs_fashion
def test_the_command_line_refuses_compact_training_without_units(tmp_path):
  assert_refused([*TINY_ARGS[1:], "--compact_training"], "--compact_training", tmp_path)
