"""The experiment loop in-process on tiny synthetic data: the science of every stage."""
import numpy as np
import pytest

from conftest import Interrupt, InterruptAt, accuracy, load_mask, u_shaped
from lth_tf import artifacts, config, environment, experiment, layout, masks, network, pruning


def perturbed_theta0(cfg, out, shape, scale=0.05, seed=7):
  """Writes θ0 for trial 0 with nonzero biases (the initializer's are zero), before the run
  loads it: biases that pruning, masking or rewinding must leave alone, some of them below any
  pruning threshold. Returns it."""
  theta0 = network.initial_weights(cfg, layout.theta0_seed(cfg, 0), shape)
  rng = np.random.default_rng(seed)
  for arrays in theta0.values():
    bias = rng.normal(0.0, scale, arrays[1].shape).astype(arrays[1].dtype)
    arrays[1] = np.where(bias == 0, scale, bias)
  artifacts.write_weights(layout.theta0_path(out, 0), theta0)
  return theta0


@pytest.fixture(scope="module")
def finished(tmp_path_factory, splits, tiny_config, stage_recorder):
  """Three rounds with both controls, from a θ0 with nonzero biases, with the output layer's
  rate resolved as lth_tf.main resolves its default (half the fc rate)."""
  out = str(tmp_path_factory.mktemp("exp"))
  cfg = tiny_config(prune_rate_output=config.paper_output_rate("lenet300_100", 0.5))
  perturbed_theta0(cfg, out, splits.train_x.shape[1:])
  recorder = stage_recorder(finals=True)
  rows = experiment.run(cfg, out, splits, callbacks=[recorder])
  return cfg, out, rows, recorder


def test_every_stage_writes_its_files_and_a_row(finished):
  cfg, out, rows, recorder = finished
  assert [(r["arm"], r["trial"], r["round"]) for r in rows] == sorted(
      [(a, t, r) for a, t, r in cfg.stages()], key=lambda s: (s[0] != "ticket", s[0] != "reinit", s[1], s[2]))
  assert len(recorder.starts) == len(cfg.stages()) == 1 + 3 * 3
  csv = artifacts.read_results(f"{out}/results.csv")
  assert len(csv) == len(rows)
  for arm, t, r in cfg.stages():
    d = layout.stage_dir(out, arm, t, r)
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
  path = f"{layout.stage_dir(out, 'ticket', 0, 0)}/metrics.json"
  copy = str(tmp_path / "exp")
  artifacts.write_json(f"{layout.stage_dir(copy, 'ticket', 0, 0)}/metrics.json",
                       dict(artifacts.read_json(path), environment=older))
  assert main.warn_if_environment_differs(cfg, copy) == environment.differences(older, here)
  assert main.warn_if_environment_differs(cfg, str(tmp_path / "empty")) is None


def test_masks_nest_and_sparsity_follows_one_minus_p_to_the_r(finished):
  cfg, out, rows, _ = finished
  prev = None
  sizes = {"fc1": 784 * 300, "fc2": 300 * 100, "output": 100 * 10}
  rates = {"fc1": 0.5, "fc2": 0.5, "output": 0.25}
  for r in range(cfg.rounds + 1):
    mask = load_mask(out, "ticket", r)
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
  theta0 = artifacts.read_weights(layout.theta0_path(out, 0))
  stages = cfg.stages()
  for (arm, _, r), (weights, mask) in zip(stages, recorder.starts):
    if arm != "ticket":
      continue
    np.testing.assert_array_equal(mask["fc1"], load_mask(out, "ticket", r)["fc1"])
    for name in theta0:
      np.testing.assert_array_equal(weights[name][0], theta0[name][0] * mask[name])
      np.testing.assert_array_equal(weights[name][1], theta0[name][1])


def test_masks_stay_fixed_and_pruned_weights_end_at_zero(finished):
  cfg, out, _, recorder = finished
  for (arm, t, r), (_, start_mask), end_mask in zip(cfg.stages(), recorder.starts,
                                                    recorder.end_masks):
    for n in start_mask:
      np.testing.assert_array_equal(start_mask[n], end_mask[n])
    d = layout.stage_dir(out, arm, t, r)
    trained = artifacts.read_weights(f"{d}/weights.npz")
    saved = masks.from_bytes(artifacts.read_bytes(f"{d}/masks.npz"))
    for n, m in saved.items():
      assert np.all(trained[n][0][m == 0] == 0)
      np.testing.assert_array_equal(m, start_mask[n])


def test_reinit_shares_the_mask_but_not_theta0(finished):
  cfg, out, _, recorder = finished
  theta0 = artifacts.read_weights(layout.theta0_path(out, 0))
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
  theta0 = artifacts.read_weights(layout.theta0_path(out, 0))
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
        f"{layout.stage_dir(out, row['arm'], row['trial'], row['round'])}/metrics.json")
    curve = m["curve"]
    assert [p["iteration"] for p in curve] == list(range(40, 121, 40))
    best = min(range(len(curve)), key=lambda i: curve[i]["val_loss"])
    assert row["early_stop_iteration"] == curve[best]["iteration"]
    assert row["early_stop_val_loss"] == curve[best]["val_loss"]
    assert row["early_stop_val_accuracy"] == curve[best]["val_accuracy"]
    assert 0.0 <= row["early_stop_test_accuracy"] <= 1.0


def test_rerun_skips_finished_stages(finished, splits, stage_recorder):
  cfg, out, rows, _ = finished
  recorder = stage_recorder()
  again = experiment.run(cfg, out, splits, callbacks=[recorder])
  assert recorder.starts == []
  assert again == rows


def test_learning_happens(finished):
  _, _, rows, _ = finished
  assert all(r["final_test_accuracy"] > 0.5 for r in rows)  # chance is 0.1


def test_seeds_are_pure_functions_of_their_parts():
  assert layout.derive_seed(0, 1, "reinit", 2) == layout.derive_seed(0, 1, "reinit", 2)
  assert layout.derive_seed(0, 1, "reinit", 2) != layout.derive_seed(0, 1, "reinit", 3)
  assert layout.derive_seed(0, 1, "init") != layout.derive_seed(0, 2, "init")


def test_interrupted_round_resumes_from_checkpoint_bit_identically(tmp_path, splits, tiny_config,
                                                                     stage_recorder):
  cfg = tiny_config(rounds=2, controls=("reinit",), iterations=160)
  whole = experiment.run(cfg, str(tmp_path / "whole"), splits, checkpoint_every=40)
  out = str(tmp_path / "cut")
  # stage 3 is the ticket's round 2; stop it at its 3rd evaluation (iteration 120)
  with pytest.raises(Interrupt):
    experiment.run(cfg, out, splits, checkpoint_every=40, callbacks=[InterruptAt(3, 2)])
  ckpt = f"{layout.stage_dir(out, 'ticket', 0, 2)}/checkpoint"
  assert artifacts.exists(f"{ckpt}/checkpoint")  # the round left a checkpoint (iteration 80)
  recorder = stage_recorder()
  resumed = experiment.run(cfg, out, splits, checkpoint_every=40, callbacks=[recorder])
  assert len(recorder.starts) == 2  # the interrupted ticket round and reinit round 2
  assert resumed == whole  # bit-identical rows, floats compared exactly
  assert not artifacts.exists(ckpt)  # checkpoints are deleted once a round is done
  for arm, t, r in cfg.stages():
    a = artifacts.read_weights(f"{layout.stage_dir(str(tmp_path / 'whole'), arm, t, r)}/weights.npz")
    b = artifacts.read_weights(f"{layout.stage_dir(out, arm, t, r)}/weights.npz")
    for n in a:
      np.testing.assert_array_equal(a[n][0], b[n][0])


def test_divergence_is_recorded_and_ends_the_trial_or_stops(tmp_path, splits, tiny_config):
  cfg = tiny_config(rounds=2, controls=("reinit",), learning_rate=1e9)
  rows = experiment.run(cfg, str(tmp_path / "go"), splits)
  assert rows[0]["arm"] == "ticket" and rows[0]["diverged"] is True
  assert len(rows) == 1  # the ticket diverged at round 0: nothing can be pruned from it
  m = artifacts.read_json(f"{layout.stage_dir(str(tmp_path / 'go'), 'ticket', 0, 0)}/metrics.json")
  last = m["curve"][-1]
  assert not (np.isfinite(last["loss"]) and np.isfinite(last["val_loss"]))
  finite = [np.isfinite(p["loss"]) and np.isfinite(p["val_loss"]) for p in m["curve"]]
  assert finite.index(False) == len(finite) - 1  # training stopped at the first NaN/inf
  csv = artifacts.read_results(f"{tmp_path}/go/results.csv")
  assert csv[0]["diverged"] == 1
  with pytest.raises(experiment.DivergedError, match="--on_divergence"):
    experiment.run(cfg, str(tmp_path / "stop"), splits, on_divergence="stop")
  assert artifacts.exists(f"{tmp_path}/stop/results.csv")  # recorded before stopping


def test_corrupt_checkpoint_names_the_file(tmp_path, splits, tiny_config):
  cfg = tiny_config(rounds=0, controls=(), iterations=160)
  out = str(tmp_path)
  with pytest.raises(Interrupt):
    experiment.run(cfg, out, splits, checkpoint_every=40, callbacks=[InterruptAt(0, 2)])
  ckpt_dir = f"{layout.stage_dir(out, 'ticket', 0, 0)}/checkpoint"
  import glob
  for path in glob.glob(f"{ckpt_dir}/ckpt-*.data-*"):
    with open(path, "wb") as f:
      f.write(b"garbage")
  from lth_tf import training
  with pytest.raises(training.CorruptCheckpointError, match="ckpt-") as e:
    experiment.run(cfg, out, splits, checkpoint_every=40)
  assert "delete the folder" in str(e.value) and "\n" not in str(e.value)


# The rules that make the numbers the paper's, each tested so that its plausible wrong versions
# fail: the output layer's default rate, which weights survive, what pruning reads, biases,
# and early stopping on a round whose validation loss rises after its minimum.

SIZES = {"fc1": 784 * 300, "fc2": 300 * 100, "output": 100 * 10}


def test_output_layer_defaults_to_half_the_fc_rate(finished):
  for model in ("lenet300_100", "conv2", "conv4", "conv6"):
    for fc in (0.2, 0.5, 0.4):
      assert config.paper_output_rate(model, fc) == fc / 2
  for model in ("vgg19", "resnet20"):  # their papers leave the one dense layer unpruned
    assert config.paper_output_rate(model, 0.2) == 0.0
  cfg, out, _, _ = finished  # built with that default from --prune_rate_fc=0.5
  assert cfg.prune_rate_output == 0.25
  for r in range(1, cfg.rounds + 1):
    kept = int(load_mask(out, "ticket", r)["output"].sum())
    assert kept == pruning.keep_count(1000, 0.25, r) != pruning.keep_count(1000, 0.5, r)


def test_pruning_reads_the_final_trained_weights(finished):
  """weights.npz, which the next round is pruned from, holds the (masked) weights each stage
  ended training with. (Here every round early-stops at its last evaluation; that it is not
  the early-stopping iteration's is tested on a round whose minimum comes earlier, below.)"""
  cfg, out, _, recorder = finished
  for (arm, t, r), final in zip(cfg.stages(), recorder.finals):
    saved = artifacts.read_weights(f"{layout.stage_dir(out, arm, t, r)}/weights.npz")
    for n in final:
      for a, b in zip(saved[n], final[n]):
        np.testing.assert_array_equal(a, b)


def test_ticket_keeps_the_largest_magnitudes_of_the_previous_rounds_trained_survivors(finished):
  """Round r's mask, per layer: the k largest |w| of round r-1's trained weights among round
  r-1's survivors, k = round(n·(1-p)^r) at the paper's rates. Written here with numpy alone."""
  cfg, out, _, _ = finished
  rates = {"fc1": 0.5, "fc2": 0.5, "output": 0.25}
  theta0 = artifacts.read_weights(layout.theta0_path(out, 0))
  for r in range(1, cfg.rounds + 1):
    trained = artifacts.read_weights(
        f"{layout.stage_dir(out, 'ticket', 0, r - 1)}/weights.npz")
    before, mask = load_mask(out, "ticket", r - 1), load_mask(out, "ticket", r)
    for n, rate in rates.items():
      w = trained[n][0].ravel()
      survivors = np.flatnonzero(before[n].ravel())
      ranked = survivors[np.argsort(-np.abs(w[survivors]), kind="stable")]
      k = int(round(w.size * (1 - rate) ** r))
      assert abs(w[ranked[k - 1]]) > abs(w[ranked[k]])  # no tie at the threshold
      expected = np.zeros(w.size, np.float32)
      expected[ranked[:k]] = 1
      np.testing.assert_array_equal(mask[n].ravel(), expected, err_msg=f"round {r} {n}")
      # what a wrong source would have kept instead: θ0's or the signed weights' largest
      for wrong in (np.abs(theta0[n][0].ravel()[survivors]), w[survivors]):
        assert not np.array_equal(np.sort(survivors[np.argsort(-wrong, kind="stable")[:k]]),
                                  np.sort(ranked[:k]))


def test_biases_start_at_theta0_train_and_are_never_masked_or_pruned(finished, splits):
  cfg, out, _, recorder = finished
  theta0 = artifacts.read_weights(layout.theta0_path(out, 0))
  assert all(np.all(arrays[1] != 0) for arrays in theta0.values())  # the fixture: none zero
  kernels = {n: theta0[n][0].shape for n in SIZES}
  for (arm, t, r), (start, start_mask), final in zip(cfg.stages(), recorder.starts,
                                                     recorder.finals):
    d = layout.stage_dir(out, arm, t, r)
    saved = masks.from_bytes(artifacts.read_bytes(f"{d}/masks.npz"))
    # masks are the kernels' alone, in the file and in the model
    assert {n: m.shape for n, m in saved.items()} == kernels
    assert {n: m.shape for n, m in start_mask.items()} == kernels
    metrics = artifacts.read_json(f"{d}/metrics.json")
    if arm == "reinit":  # a fresh draw, biases included
      expected = network.initial_weights(cfg, metrics["seeds"]["init"], splits.train_x.shape[1:])
    else:
      expected = theta0
    for n, arrays in start.items():
      np.testing.assert_array_equal(arrays[1], expected[n][1], err_msg=f"{arm} round {r} {n}")
    trained = artifacts.read_weights(f"{d}/weights.npz")
    for n in theta0:
      if arm != "reinit":  # (whose biases start at zero, where a dead unit's stay)
        assert np.all(trained[n][1] != 0), f"{arm} round {r}: a bias of {n} ended at zero"
      assert not np.array_equal(trained[n][1], start[n][1])  # biases train
      np.testing.assert_array_equal(trained[n][1], final[n][1])


@pytest.fixture(scope="module")
def memorised(tmp_path_factory, tiny_config, memorising_splits, weights_recorder):
  """A dense round whose validation loss is U-shaped: minimum at iteration 15 of 80."""
  out = str(tmp_path_factory.mktemp("memorised"))
  cfg = tiny_config(rounds=0, controls=(), iterations=80, eval_every=5, batch_size=20,
                    learning_rate=7e-4)
  splits = memorising_splits
  recorder = weights_recorder()
  (row,) = experiment.run(cfg, out, splits, callbacks=[recorder])
  return out, splits, row, recorder.trainings[0]


def test_early_stop_row_is_the_validation_minimum_and_the_test_accuracy_there(memorised):
  out, splits, row, at = memorised
  metrics = artifacts.read_json(f"{layout.stage_dir(out, 'ticket', 0, 0)}/metrics.json")
  curve = metrics["curve"]
  best = u_shaped(curve)
  csv = artifacts.read_results(f"{out}/results.csv")
  for recorded in (row, metrics, csv[0]):
    assert recorded["early_stop_iteration"] == curve[best]["iteration"]
    assert recorded["early_stop_val_loss"] == pytest.approx(curve[best]["val_loss"], rel=1e-6)
    assert recorded["early_stop_val_accuracy"] == pytest.approx(curve[best]["val_accuracy"],
                                                                rel=1e-6)
  at_stop = accuracy("lenet300_100", at[curve[best]["iteration"]], splits.test_x, splits.test_y)
  final = accuracy("lenet300_100", at[curve[-1]["iteration"]], splits.test_x, splits.test_y)
  assert abs(at_stop - final) > 0.05  # the fixture tells the two apart
  for recorded in (row, metrics, csv[0]):
    assert recorded["early_stop_test_accuracy"] == pytest.approx(at_stop, abs=1e-6)
    assert recorded["final_test_accuracy"] == pytest.approx(final, abs=1e-6)


def test_a_stage_saves_its_last_weights_not_its_early_stop_weights(memorised):
  """The next round is pruned from weights.npz: the weights training ended with."""
  out, _, _, at = memorised
  d = layout.stage_dir(out, "ticket", 0, 0)
  curve = artifacts.read_json(f"{d}/metrics.json")["curve"]
  saved = artifacts.read_weights(f"{d}/weights.npz")
  last, early = at[curve[-1]["iteration"]], at[curve[u_shaped(curve)]["iteration"]]
  for n in saved:
    for a, b in zip(saved[n], last[n]):
      np.testing.assert_array_equal(a, b)
  assert not np.array_equal(saved["fc1"][0], early["fc1"][0])  # the fixture tells them apart
