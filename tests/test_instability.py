"""The instability study (lth_tf.study.instability) on a tiny in-process experiment: the
barrier, the two copies (which start, which batch order, copy A = the experiment's stage),
successive rounds, θ_k starts, batch-norm statistics on the path, resume, refusals."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, flags_text
from lth_tf import artifacts, experiment, layout, masks, ticket
from lth_tf.study import common, instability


def noisy_splits(bright=30, noise=120, seed=0):
  """conftest's toy data made hard: the class row is only 30 above noise of range 120, so a
  tiny network ends at ~50% test error (every arm at 0% error could not show a barrier)."""
  from lth_tf import data
  rng = np.random.default_rng(seed)

  def make(n):
    y = rng.integers(0, 10, n)
    x = rng.integers(0, noise, (n, 28, 28, 1))
    for i, c in enumerate(y):
      x[i, 2 + 2 * c, :, :] += bright
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

  (a, b), (c, d), (e, f) = make(600), make(200), make(200)
  return data.Splits(a, b, c, d, e, f)


@pytest.fixture(scope="module")
def splits():
  return noisy_splits()


@pytest.fixture(scope="module")
def exp_dir(tmp_path_factory, splits, tiny_config, stage_recorder):
  """Rounds 0-2 with both controls; the stages' start weights and final weights recorded."""
  out = str(tmp_path_factory.mktemp("instability") / "exp")
  cfg = tiny_config(rounds=2, iterations=80, eval_every=40)
  recorder = stage_recorder(finals=True)
  experiment.run(cfg, out, splits, callbacks=[recorder])
  artifacts.write_bytes(f"{out}/flags.cfg", flags_text(cfg, out, xla=True))
  stages = cfg.stages()
  return out, dict(zip(stages, recorder.starts)), dict(zip(stages, recorder.finals))


def fresh_copy(exp_dir, tmp_path, without_weights=True):
  """A copy of the experiment folder, its weights.npz removed (as a git checkout has it)."""
  out = str(tmp_path / "exp")
  shutil.copytree(exp_dir[0], out)
  if without_weights:
    for root, _, files in os.walk(out):
      if "weights.npz" in files:
        os.remove(os.path.join(root, "weights.npz"))
  return out


def assert_same(a, b):
  assert a.keys() == b.keys()
  for n in a:
    for x, y in zip(a[n], b[n]):
      np.testing.assert_array_equal(x, y)


def test_barrier_is_the_paths_maximum_minus_the_mean_of_its_ends():
  # Wrong: max − min (0.2), max − the larger end (0.1), max − the first end (0.2).
  assert instability.barrier([0.1, 0.3, 0.2]) == pytest.approx(0.15)
  assert instability.barrier([0.2, 0.2, 0.2]) == 0.0
  assert instability.barrier([0.4, 0.1, 0.2]) == pytest.approx(0.1)  # max is an end


def test_interpolate_ends_and_middle():
  a, b = {"l": [np.zeros(3), np.ones(2)]}, {"l": [np.full(3, 2.0), np.full(2, 3.0)]}
  assert_same(instability.interpolate(a, b, 0.0), a)
  assert_same(instability.interpolate(a, b, 1.0), b)
  np.testing.assert_allclose(instability.interpolate(a, b, 0.25)["l"][0], np.full(3, 0.5))


@pytest.fixture(scope="module")
def study(exp_dir, splits):
  return instability.Study(common.load(exp_dir[0]), splits)


def test_identical_copies_have_zero_barrier(study):
  weights = study.exp.weights("ticket", 0, 1)
  study_mask = study.exp.mask("ticket", 0, 1)
  ticket.set_masks(study.model, study_mask)
  errors = instability.path_errors(study.trainer, weights, weights, study.test, 11)
  assert len(errors) == 11 and len(set(errors)) == 1
  assert instability.barrier(errors) == 0.0


def permuted(weights, order):
  """The same function with fc1's hidden units reordered: fc1's columns and bias, fc2's rows."""
  out = {n: [w.copy() for w in ws] for n, ws in weights.items()}
  names = list(weights)
  first, second = names[0], names[1]
  out[first][0], out[first][1] = weights[first][0][:, order], weights[first][1][order]
  out[second][0] = weights[second][0][order, :]
  return out


def test_unrelated_networks_have_a_positive_barrier(study):
  """The dense trained network against itself with its hidden units permuted: the same
  function at both ends (equal errors), unrelated weights in between."""
  a = study.exp.weights("ticket", 0, 0)
  order = np.random.default_rng(0).permutation(a[list(a)[0]][0].shape[1])
  b = permuted(a, order)
  ticket.set_masks(study.model, study.exp.mask("ticket", 0, 0))
  errors = instability.path_errors(study.trainer, a, b, study.test, 11)
  assert errors[0] == pytest.approx(errors[-1])
  assert errors[0] < 0.7  # the network learned something (chance: 0.9)
  assert instability.barrier(errors) > 0.1, errors


def test_copy_a_reproduces_the_experiment_stage_where_its_weights_are_gone(
    exp_dir, splits, tmp_path):
  out = fresh_copy(exp_dir, tmp_path)
  study = instability.Study(common.load(out), splits)
  for stage in (("ticket", 0, 1), ("reinit", 0, 2), ("random_prune", 0, 1)):
    source, weights = study.trained_copy(stage[0], stage[1], stage[2], "a")
    assert source == "retrained"
    assert_same(weights, exp_dir[2][stage])  # bit for bit: same start, batches, step


def test_copy_a_is_the_experiments_weights_where_they_exist(exp_dir, splits):
  study = instability.Study(common.load(exp_dir[0]), splits)
  rows, study = instability.compute(study.exp, splits, arms=("ticket",), rounds=[1])
  assert [(r["kind"], r["copy_a"]) for r in rows] == [("copies", "experiment"),
                                                      ("successive", "experiment")]
  assert study.trainings == 1  # copy B only: copy A and round 0 come from the experiment


def test_copies_share_start_and_mask_and_differ_in_batch_order(exp_dir, splits, tmp_path,
                                                               monkeypatch):
  """Wrong: copy B from a fresh draw (a control that reuses nothing), or from the same batch
  order (no SGD noise: a barrier of 0 by construction)."""
  out = fresh_copy(exp_dir, tmp_path)
  calls = []
  original = instability.Study.train_from

  def recording(self, start, mask, seed, label):
    calls.append((start, mask, seed))
    return original(self, start, mask, seed, label)

  monkeypatch.setattr(instability.Study, "train_from", recording)
  for arm in ("ticket", "reinit", "random_prune"):
    calls.clear()
    study = instability.Study(common.load(out), splits)
    a = study.trained_copy(arm, 0, 2, "a")[1]
    b = study.trained_copy(arm, 0, 2, "b")[1]
    (start_a, mask_a, seed_a), (start_b, mask_b, seed_b) = calls
    assert_same(start_a, start_b)
    assert all(np.array_equal(mask_a[n], mask_b[n]) for n in mask_a)
    assert seed_a != seed_b
    # the start is the experiment's own start of that stage (reinit: its new draw, not θ0)
    recorded, recorded_mask = exp_dir[1][(arm, 0, 2)]
    assert_same(start_a, {n: [w[0] * recorded_mask[n], *w[1:]] if n in recorded_mask else w
                          for n, w in recorded.items()})
    assert any(not np.array_equal(a[n][0], b[n][0]) for n in a)


def test_successive_row_walks_from_round_r_minus_1_to_r_under_r_minus_1s_mask(exp_dir, splits):
  """Wrong: evaluating under round r's mask would cut round r−1's weights that r pruned."""
  exp = common.load(exp_dir[0])
  rows, study = instability.compute(exp, splits, arms=("ticket",), rounds=[2])
  row = next(r for r in rows if r["kind"] == "successive")
  for rnd, end in ((1, "error_a"), (2, "error_b")):
    ticket.set_masks(study.model, exp.mask("ticket", 0, rnd))
    ticket.set_weights(study.model, exp.weights("ticket", 0, rnd))
    assert row[end] == pytest.approx(1 - study.trainer.evaluate(study.test.x, study.test.y)[1])
  assert row["weights_remaining"] == pytest.approx(
      100 * masks.fraction_remaining(exp.mask("ticket", 0, 1)))


def test_theta_k_is_what_the_experiment_rewinds_to(splits, tiny_config, tmp_path):
  out = str(tmp_path / "late")
  cfg = tiny_config(rounds=1, iterations=80, eval_every=40, rewind="iteration",
                    rewind_iteration=40, controls=())
  experiment.run(cfg, out, splits)
  artifacts.write_bytes(f"{out}/flags.cfg", flags_text(cfg, out, xla=True))
  exp = common.load(out)
  saved = artifacts.read_weights(layout.rewind_path(out, 0, 40), exp.weight_shapes)
  os.remove(layout.rewind_path(out, 0, 40))
  study = instability.Study(exp, splits)
  assert_same(study.theta_k(0, 40), saved)  # retrained: the dense round's first 40 iterations
  artifacts.write_weights(layout.rewind_path(out, 0, 40), saved)
  # the experiment's own start of round 1 (θ_k⊙m): the study's default start for the ticket
  mask = exp.mask("ticket", 0, 1)
  assert_same(study.start_weights("ticket", 0, 1, mask),
              study.start_weights("ticket", 0, 1, mask, rewind_iteration=40))


def test_theta_k_start_differs_from_theta0(exp_dir, splits):
  exp = common.load(exp_dir[0])
  rows, study = instability.compute(exp, splits, arms=("ticket",), rounds=[1],
                                    rewind_iteration=40)
  assert [(r["kind"], r["start"], r["rewind_iteration"]) for r in rows] == [
      ("copies", "theta_k", 40)]
  mask = exp.mask("ticket", 0, 1)
  k_start = study.start_weights("ticket", 0, 1, mask, rewind_iteration=40)
  theta0_start = study.start_weights("ticket", 0, 1, mask)
  name = list(mask)[0]
  assert not np.array_equal(k_start[name][0], theta0_start[name][0])
  assert np.array_equal(k_start[name][0] == 0, mask[name] == 0)


def test_bn_statistics_are_recomputed_not_interpolated(resnet20):
  """After recomputing on one batch, inference mode equals training mode on that batch; the
  midpoint's statistics are not the mean of the ends' (what interpolating them would give)."""
  import tensorflow as tf
  x = np.random.default_rng(0).integers(0, 255, (64, 32, 32, 3)).astype(np.uint8)
  bn = instability.bn_layers(resnet20)
  assert bn
  for layer in bn:
    layer.moving_mean.assign(tf.fill(layer.moving_mean.shape, 100.0))
  before = resnet20(x, training=False).numpy()
  instability.recompute_bn_statistics(resnet20, [x])
  train_mode = resnet20(x, training=True).numpy()
  after = resnet20(x, training=False).numpy()
  np.testing.assert_allclose(after, train_mode, rtol=1e-3, atol=1e-3)
  assert not np.allclose(before, after, atol=1e-2)


def test_path_errors_recompute_bn_at_every_point(resnet20, monkeypatch):
  from lth_tf import training
  weights = ticket.get_weights(resnet20)
  x = np.random.default_rng(1).integers(0, 255, (20, 32, 32, 3)).astype(np.uint8)
  test = training.Split.of(x, np.arange(20) % 10)
  trainer = training.Trainer(resnet20, 1e-3, jit_compile=False)
  calls = []
  monkeypatch.setattr(instability, "recompute_bn_statistics",
                      lambda model, batches: calls.append(len(batches)))
  instability.path_errors(trainer, weights, weights, test, 5, bn_batches=[x])
  assert calls == [1] * 5


def test_run_appends_rows_resumes_and_draws(exp_dir, splits, tmp_path):
  out = fresh_copy(exp_dir, tmp_path, without_weights=False)
  paths = instability.run(out, splits=splits, rounds=[0, 2], trials=[0])
  rows = common.read_csv(f"{out}/study_instability.csv", instability.COLUMNS)
  kinds = sorted((r["kind"], r["arm"], r["round"]) for r in rows)
  assert kinds == [("copies", "random_prune", 2), ("copies", "reinit", 2),
                   ("copies", "ticket", 0), ("copies", "ticket", 2),
                   ("successive", "ticket", 2)]
  for r in rows:
    errors = [float(e) for e in r["path_errors"].split(";")]
    assert len(errors) == 11 and r["barrier"] == pytest.approx(instability.barrier(errors))
  assert any(p.endswith("plots/instability.png") for p in paths)
  # a rerun trains nothing and adds nothing; more rounds add only their rows
  instability.run(out, splits=splits, rounds=[0, 2], trials=[0])
  assert len(common.read_csv(f"{out}/study_instability.csv")) == len(rows)
  instability.run(out, splits=splits, rounds=[1], trials=[0], arms=["ticket"])
  assert len(common.read_csv(f"{out}/study_instability.csv")) == len(rows) + 2


@pytest.mark.parametrize("kwargs,named", [
    (dict(rounds=[5]), "--rounds"),
    (dict(trials=[3]), "--trials"),
    (dict(arms=["shuffled"]), "--arms"),
    (dict(points=2), "--path_points"),
    (dict(rewind_iteration=50), "--rewind_iteration"),
])
def test_refusals_name_the_flag(exp_dir, splits, kwargs, named):
  with pytest.raises(common.StudyError, match=named):
    instability.run(exp_dir[0], splits=splits, **kwargs)


def test_missing_stages_are_named_with_the_command_that_makes_them(exp_dir, splits, tmp_path):
  out = fresh_copy(exp_dir, tmp_path, without_weights=False)
  rows = [r for r in artifacts.read_results(f"{out}/results.csv")
          if not (r["arm"] == "reinit" and r["round"] == 2)]
  artifacts.write_results(f"{out}/results.csv", rows)
  with pytest.raises(common.StudyError, match=r"\[reinit trial 0 round 2\].*lth_tf.main"):
    instability.run(out, splits=splits, rounds=[2])


def run_study_cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "lth_tf.study", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_refuses_bad_lists_and_misplaced_flags(exp_dir):
  for args, named in (
      (["instability", f"--output_dir={exp_dir[0]}", "--rounds=a,b"], "--rounds"),
      (["properties", f"--output_dir={exp_dir[0]}", "--rounds=1"], "--rounds"),
      (["instability", f"--output_dir={exp_dir[0]}", "--rounds=9"], "--rounds")):
    proc = run_study_cli(*args)
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert proc.returncode == 2 and named in lines[-1], proc.stderr[-400:]
    assert "Traceback" not in proc.stderr


def test_studies_that_retrain_split_the_data_as_the_experiment_did(exp_dir, monkeypatch):
  """Wrong: the loader's default split (seed 0): the validation examples then differ, so the
  retrained copy A (and infoplane's runs) train on other examples than the stage did."""
  from lth_tf import data
  from lth_tf.study import properties
  seen = {}
  monkeypatch.setattr(data, "check_available", lambda *a, **k: None)
  monkeypatch.setattr(data, "load", lambda *a, **k: seen.update(k))
  exp = common.load(exp_dir[0])
  properties.load_test_split(exp, "somewhere", "elsewhere")
  assert seen["split_seed"] == layout.split_seed(exp.cfg) != 0


def test_successive_paths_only_where_masks_nest(exp_dir, splits, monkeypatch):
  """Wrong: a successive row for masks that do not nest (one-shot, static, early-bird), whose
  round-r network the round r−1 mask would cut."""
  exp = common.load(exp_dir[0])
  assert instability.nested(exp, 0, 2)
  real = common.Experiment.mask

  def shuffled(self, arm, trial, round_):
    m = real(self, arm, trial, round_)
    if round_ == 2:  # the same counts, other positions
      rng = np.random.default_rng(0)
      m = {n: rng.permutation(v.ravel()).reshape(v.shape) for n, v in m.items()}
    return m

  monkeypatch.setattr(common.Experiment, "mask", shuffled)
  assert not instability.nested(exp, 0, 2)
  rows, _ = instability.compute(exp, splits, arms=("ticket",), rounds=[2])
  assert [r["kind"] for r in rows] == ["copies"]


def test_resume_refuses_another_path_resolution(exp_dir, splits, tmp_path):
  out = fresh_copy(exp_dir, tmp_path, without_weights=False)
  instability.run(out, splits=splits, rounds=[1], arms=["ticket"], points=5)
  with pytest.raises(common.StudyError, match="--path_points=11.*5 points"):
    instability.run(out, splits=splits, rounds=[1], arms=["ticket"])


def test_cli_refuses_bad_types_empty_lists_and_foreign_flags(exp_dir):
  for args, named in (
      (["--path_points=abc"], "path_points"),
      (["--rounds="], "--rounds"),
      (["--rounds=3,3"], "--rounds"),
      (["--round=3"], "--round"),
      (["--sigma=0.3"], "--sigma"),
      (["--arms=reinit", "--rewind_iteration=40"], "--rewind_iteration")):
    proc = run_study_cli("instability", f"--output_dir={exp_dir[0]}", *args)
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert proc.returncode == 2 and named in lines[-1], (args, proc.stderr[-400:])
    assert "Traceback" not in proc.stderr
