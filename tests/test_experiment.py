"""The experiment loop in-process on tiny synthetic data: the science of every stage."""
import numpy as np
import pytest
import tf_keras as keras

from lth_tf import artifacts, environment, experiment, masks, pruning, ticket


class StageRecorder(keras.callbacks.Callback):
  """Records each stage's weights and masks at the start and the masks at the end."""

  def __init__(self):
    super().__init__()
    self.starts, self.end_masks = [], []

  def on_train_begin(self, logs=None):
    self.starts.append((ticket.get_weights(self.model), ticket.get_masks(self.model)))

  def on_train_end(self, logs=None):
    self.end_masks.append(ticket.get_masks(self.model))


def _cfg(**kw):
  fields = dict(model="lenet300_100", dataset="mnist", rounds=3, iterations=120, batch_size=30,
                learning_rate=1.2e-3, eval_every=40, prune_rate_conv=0.0, prune_rate_fc=0.5,
                prune_rate_output=0.25, controls=("reinit", "random_prune"), trials=1, seed=3)
  fields.update(kw)
  return experiment.Config(**fields)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, splits):
  out = str(tmp_path_factory.mktemp("exp"))
  cfg = _cfg()
  recorder = StageRecorder()
  rows = experiment.run(cfg, out, splits, callbacks=[recorder])
  return cfg, out, rows, recorder


def _load_mask(out, arm, r):
  return masks.from_bytes(artifacts.read_bytes(f"{experiment.stage_dir(out, arm, 0, r)}/masks.npz"))


def test_every_stage_writes_its_files_and_a_row(finished):
  cfg, out, rows, recorder = finished
  assert [(r["arm"], r["trial"], r["round"]) for r in rows] == sorted(
      [(a, t, r) for a, t, r in cfg.stages()], key=lambda s: (s[0] != "ticket", s[0] != "reinit", s[1], s[2]))
  assert len(recorder.starts) == len(cfg.stages()) == 1 + 3 * 3
  csv = artifacts.read_results(f"{out}/results.csv")
  assert len(csv) == len(rows)
  for arm, t, r in cfg.stages():
    d = experiment.stage_dir(out, arm, t, r)
    for f in ("masks.npz", "weights.npz", "metrics.json"):
      assert artifacts.exists(f"{d}/{f}"), (d, f)
    recorded = artifacts.read_json(f"{d}/metrics.json")["environment"]
    assert recorded == environment.describe() and recorded["tensorflow"].startswith("2.21")


def test_environment_differences_name_what_changed(finished, tmp_path):
  """A resume on other software or another CPU is warned about, naming what differs."""
  from lth_tf import main
  cfg, out, _, _ = finished
  here = environment.describe()
  assert here["cpu"] and set(here["cpu_features"]) <= set(environment.CPU_FEATURES)
  older = dict(here, tensorflow="2.20.0", cpu_features=[])
  older.pop("numpy")  # a record from before a field existed compares only what it has
  assert environment.differences(older, here) == [
      f"cpu_features: [] -> {here['cpu_features']}", f"tensorflow: 2.20.0 -> {here['tensorflow']}"]
  assert main.warn_if_environment_differs(cfg, out) == []  # this process wrote it
  path = f"{experiment.stage_dir(out, 'ticket', 0, 0)}/metrics.json"
  copy = str(tmp_path / "exp")
  artifacts.write_json(f"{experiment.stage_dir(copy, 'ticket', 0, 0)}/metrics.json",
                       dict(artifacts.read_json(path), environment=older))
  assert main.warn_if_environment_differs(cfg, copy) == environment.differences(older, here)
  assert main.warn_if_environment_differs(cfg, str(tmp_path / "empty")) is None


def test_masks_nest_and_sparsity_follows_one_minus_p_to_the_r(finished):
  cfg, out, rows, _ = finished
  prev = None
  sizes = {"fc1": 784 * 300, "fc2": 300 * 100, "output": 100 * 10}
  rates = {"fc1": 0.5, "fc2": 0.5, "output": 0.25}
  for r in range(cfg.rounds + 1):
    mask = _load_mask(out, "ticket", r)
    assert {n: int(m.sum()) for n, m in mask.items()} == pruning.keep_counts(sizes, rates, r)
    if prev is not None:
      assert masks.is_subset(mask, prev)
    prev = mask
  ticket_rows = [row for row in rows if row["arm"] == "ticket"]
  expected = [100 * sum(pruning.keep_counts(sizes, rates, r).values()) / sum(sizes.values())
              for r in range(cfg.rounds + 1)]
  np.testing.assert_allclose([row["weights_remaining"] for row in ticket_rows], expected)


def test_ticket_starts_each_round_exactly_at_theta0_times_mask(finished):
  cfg, out, _, recorder = finished
  theta0 = artifacts.read_weights(experiment.theta0_path(out, 0))
  stages = cfg.stages()
  for (arm, _, r), (weights, mask) in zip(stages, recorder.starts):
    if arm != "ticket":
      continue
    np.testing.assert_array_equal(mask["fc1"], _load_mask(out, "ticket", r)["fc1"])
    for name in theta0:
      np.testing.assert_array_equal(weights[name][0], theta0[name][0] * mask[name])
      np.testing.assert_array_equal(weights[name][1], theta0[name][1])


def test_masks_stay_fixed_and_pruned_weights_end_at_zero(finished):
  cfg, out, _, recorder = finished
  for (arm, t, r), (_, start_mask), end_mask in zip(cfg.stages(), recorder.starts,
                                                    recorder.end_masks):
    for n in start_mask:
      np.testing.assert_array_equal(start_mask[n], end_mask[n])
    d = experiment.stage_dir(out, arm, t, r)
    trained = artifacts.read_weights(f"{d}/weights.npz")
    saved = masks.from_bytes(artifacts.read_bytes(f"{d}/masks.npz"))
    for n, m in saved.items():
      assert np.all(trained[n][0][m == 0] == 0)
      np.testing.assert_array_equal(m, start_mask[n])


def test_reinit_shares_the_mask_but_not_theta0(finished):
  cfg, out, _, recorder = finished
  theta0 = artifacts.read_weights(experiment.theta0_path(out, 0))
  starts = dict(zip(cfg.stages(), recorder.starts))
  for r in range(1, cfg.rounds + 1):
    t_weights, t_mask = starts[("ticket", 0, r)]
    weights, mask = starts[("reinit", 0, r)]
    for n in t_mask:
      np.testing.assert_array_equal(mask[n], t_mask[n])
      kept = mask[n] > 0
      assert not np.any(weights[n][0][kept] == theta0[n][0][kept])  # fresh values everywhere
      assert np.all(weights[n][0][~kept] == 0)
      # same initializer: comparable scale
      assert 0.9 < weights[n][0][kept].std() / theta0[n][0].std() < 1.1
  # a fresh draw every round, not one reused reinit
  assert not np.array_equal(starts[("reinit", 0, 1)][0]["fc2"][0],
                            starts[("reinit", 0, 2)][0]["fc2"][0])


def test_random_prune_has_ticket_counts_at_random_positions_on_theta0(finished):
  cfg, out, _, recorder = finished
  theta0 = artifacts.read_weights(experiment.theta0_path(out, 0))
  starts = dict(zip(cfg.stages(), recorder.starts))
  for r in range(1, cfg.rounds + 1):
    t_mask = starts[("ticket", 0, r)][1]
    weights, mask = starts[("random_prune", 0, r)]
    for n in t_mask:
      assert mask[n].sum() == t_mask[n].sum()
      np.testing.assert_array_equal(weights[n][0], theta0[n][0] * mask[n])
    overlap = (mask["fc1"] * t_mask["fc1"]).sum() / t_mask["fc1"].sum()
    expected = t_mask["fc1"].mean()  # chance overlap for a random mask
    assert abs(overlap - expected) < 0.05


def test_early_stop_is_argmin_of_logged_validation_loss(finished):
  cfg, out, rows, _ = finished
  for row in rows:
    m = artifacts.read_json(
        f"{experiment.stage_dir(out, row['arm'], row['trial'], row['round'])}/metrics.json")
    curve = m["curve"]
    assert [p["iteration"] for p in curve] == list(range(40, 121, 40))
    best = min(range(len(curve)), key=lambda i: curve[i]["val_loss"])
    assert row["early_stop_iteration"] == curve[best]["iteration"]
    assert row["early_stop_val_loss"] == curve[best]["val_loss"]
    assert row["early_stop_val_accuracy"] == curve[best]["val_accuracy"]
    assert 0.0 <= row["early_stop_test_accuracy"] <= 1.0


def test_rerun_skips_finished_stages(finished, splits):
  cfg, out, rows, _ = finished
  recorder = StageRecorder()
  again = experiment.run(cfg, out, splits, callbacks=[recorder])
  assert recorder.starts == []
  assert again == rows


def test_learning_happens(finished):
  _, _, rows, _ = finished
  assert all(r["final_test_accuracy"] > 0.5 for r in rows)  # chance is 0.1


def test_config_validation_names_the_flag():
  with pytest.raises(experiment.ConfigError, match="--prune_rate_fc"):
    _cfg(prune_rate_fc=1.0).validate()
  with pytest.raises(experiment.ConfigError, match="--iterations"):
    _cfg(iterations=10).validate()
  with pytest.raises(experiment.ConfigError, match="--controls"):
    _cfg(controls=("bogus",)).validate()
  with pytest.raises(experiment.ConfigError, match="--rounds"):
    _cfg(rounds=-1).validate()


@pytest.mark.parametrize("model,flat", [("conv2", 14 * 14 * 64), ("conv4", 7 * 7 * 128),
                                        ("conv6", 3 * 3 * 256)])
def test_conv_models_fit_28_pixel_images(model, flat):
  """Conv-2/4/6 on (Fashion-)MNIST: max-pooling floors 7 to 3, as the paper's pools would."""
  from lth_tf import models
  _cfg(model=model, dataset="fashion_mnist").validate()
  net = models.build(model, (28, 28, 1))
  assert net.get_layer("fc1").kernel.shape == (flat, 256)
  assert net(np.zeros((2, 28, 28, 1), np.uint8)).shape == (2, 10)


def test_seeds_are_pure_functions_of_their_parts():
  assert experiment.derive_seed(0, 1, "reinit", 2) == experiment.derive_seed(0, 1, "reinit", 2)
  assert experiment.derive_seed(0, 1, "reinit", 2) != experiment.derive_seed(0, 1, "reinit", 3)
  assert experiment.derive_seed(0, 1, "init") != experiment.derive_seed(0, 2, "init")


class Interrupt(Exception):
  pass


class InterruptAt(keras.callbacks.Callback):
  """Raises at an evaluation of one stage, as a kill would stop the process there."""

  def __init__(self, stage_index, epoch):
    super().__init__()
    self.stage_index, self.epoch, self.seen = stage_index, epoch, -1

  def on_train_begin(self, logs=None):
    self.seen += 1

  def on_epoch_end(self, epoch, logs=None):
    if self.seen == self.stage_index and epoch == self.epoch:
      raise Interrupt()


def test_interrupted_round_resumes_from_checkpoint_bit_identically(tmp_path, splits):
  cfg = _cfg(rounds=2, controls=("reinit",), iterations=160)
  whole = experiment.run(cfg, str(tmp_path / "whole"), splits, checkpoint_every=40)
  out = str(tmp_path / "cut")
  # stage 3 is the ticket's round 2; stop it at its 3rd evaluation (iteration 120)
  with pytest.raises(Interrupt):
    experiment.run(cfg, out, splits, checkpoint_every=40, callbacks=[InterruptAt(3, 2)])
  ckpt = f"{experiment.stage_dir(out, 'ticket', 0, 2)}/checkpoint"
  assert artifacts.exists(f"{ckpt}/checkpoint")  # the round left a checkpoint (iteration 80)
  recorder = StageRecorder()
  resumed = experiment.run(cfg, out, splits, checkpoint_every=40, callbacks=[recorder])
  assert len(recorder.starts) == 2  # the interrupted ticket round and reinit round 2
  assert resumed == whole  # bit-identical rows, floats compared exactly
  assert not artifacts.exists(ckpt)  # checkpoints are deleted once a round is done
  for arm, t, r in cfg.stages():
    a = artifacts.read_weights(f"{experiment.stage_dir(str(tmp_path / 'whole'), arm, t, r)}/weights.npz")
    b = artifacts.read_weights(f"{experiment.stage_dir(out, arm, t, r)}/weights.npz")
    for n in a:
      np.testing.assert_array_equal(a[n][0], b[n][0])


def test_divergence_is_recorded_and_ends_the_trial_or_stops(tmp_path, splits):
  cfg = _cfg(rounds=2, controls=("reinit",), learning_rate=1e9)
  rows = experiment.run(cfg, str(tmp_path / "go"), splits)
  assert rows[0]["arm"] == "ticket" and rows[0]["diverged"] is True
  assert len(rows) == 1  # the ticket diverged at round 0: nothing can be pruned from it
  m = artifacts.read_json(f"{experiment.stage_dir(str(tmp_path / 'go'), 'ticket', 0, 0)}/metrics.json")
  last = m["curve"][-1]
  assert not (np.isfinite(last["loss"]) and np.isfinite(last["val_loss"]))
  finite = [np.isfinite(p["loss"]) and np.isfinite(p["val_loss"]) for p in m["curve"]]
  assert finite.index(False) == len(finite) - 1  # training stopped at the first NaN/inf
  csv = artifacts.read_results(f"{tmp_path}/go/results.csv")
  assert csv[0]["diverged"] == 1
  with pytest.raises(experiment.DivergedError, match="--on_divergence"):
    experiment.run(cfg, str(tmp_path / "stop"), splits, on_divergence="stop")
  assert artifacts.exists(f"{tmp_path}/stop/results.csv")  # recorded before stopping


def test_corrupt_checkpoint_names_the_file(tmp_path, splits):
  cfg = _cfg(rounds=0, controls=(), iterations=160)
  out = str(tmp_path)
  with pytest.raises(Interrupt):
    experiment.run(cfg, out, splits, checkpoint_every=40, callbacks=[InterruptAt(0, 2)])
  ckpt_dir = f"{experiment.stage_dir(out, 'ticket', 0, 0)}/checkpoint"
  import glob
  for path in glob.glob(f"{ckpt_dir}/ckpt-*.data-*"):
    with open(path, "wb") as f:
      f.write(b"garbage")
  from lth_tf import training
  with pytest.raises(training.CorruptCheckpointError, match="ckpt-") as e:
    experiment.run(cfg, out, splits, checkpoint_every=40)
  assert "delete the folder" in str(e.value) and "\n" not in str(e.value)
