"""The studies (lth_tf.study) on a tiny in-process experiment: mask overlap, properties, CLI."""
import dataclasses
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, flags_text
from lth_tf import artifacts, experiment, layout, masks, models, ticket
from lth_tf.study import common, consistency, properties

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study_exp(tmp_path_factory, splits, tiny_config, stage_recorder):
  """2 trials × rounds 0-2, both controls, recording every stage's start weights."""
  out = str(tmp_path_factory.mktemp("study") / "exp")
  cfg = tiny_config(trials=2, rounds=2, iterations=40, eval_every=40)
  recorder = stage_recorder()
  experiment.run(cfg, out, splits, callbacks=[recorder])
  artifacts.write_bytes(f"{out}/flags.cfg", flags_text(cfg, out, xla=True))
  return cfg, out, dict(zip(cfg.stages(), recorder.starts))


@pytest.fixture(scope="module")
def properties_rows(study_exp, splits):
  _, out, _ = study_exp
  paths = properties.run(out, splits=splits, jit_compile=False)
  return paths, common.read_csv(f"{out}/study_properties.csv")


def _value(rows, **where):
  hits = [r["value"] for r in rows if all(r[k] == v for k, v in where.items())]
  assert len(hits) == 1, (where, hits)
  return hits[0]


# ---- Jaccard and overlap against chance ------------------------------------------------------

def test_jaccard_and_overlap_ratio_on_hand_made_masks():
  rng = np.random.default_rng(0)
  a = (rng.random((1000, 500)) < 0.3).astype(np.float32)
  assert masks.jaccard(a, a) == 1.0
  assert masks.overlap_ratio(a, a) == pytest.approx(a.size / a.sum())  # 1 / density
  b = (rng.random((1000, 500)) < 0.5).astype(np.float32)  # independent of a
  assert masks.overlap_ratio(a, b) == pytest.approx(1.0, abs=0.01)
  assert masks.jaccard(a, b) == pytest.approx(0.15 / (0.3 + 0.5 - 0.15), abs=0.01)
  assert masks.jaccard(a, 1 - a) == 0.0 and masks.overlap_ratio(a, 1 - a) == 0.0
  # over layers: intersections and chance expectations are summed, not averaged
  x = {"big": np.array([1, 1, 0, 0], np.float32), "small": np.array([1, 0], np.float32)}
  y = {"small": np.array([1, 0], np.float32), "big": np.array([1, 0, 1, 0], np.float32)}
  assert masks.jaccard(x, y) == pytest.approx(2 / 4)
  assert masks.overlap_ratio(x, y) == pytest.approx(2 / (2 * 2 / 4 + 1 * 1 / 2))
  layers = consistency.mask_pairs(x, y)
  assert [l[0] for l in layers] == ["big", "small", "all"]
  assert layers[1][1:] == (1.0, 2.0)


# ---- consistency -----------------------------------------------------------------------------

def test_consistency_writes_rows_per_round_pair_and_layer_and_figures(study_exp, tmp_path):
  cfg, out, _ = study_exp
  same = str(tmp_path / "same")  # a copy labelled --same_init=True: only the label differs
  shutil.copytree(out, same)
  artifacts.write_bytes(f"{same}/flags.cfg", flags_text(dataclasses.replace(cfg, same_init=True),
                                                        same, xla=True))
  paths = consistency.run([same, out])
  for d, label in ((same, "same θ0"), (out, "different θ0")):
    rows = common.read_csv(f"{d}/study_consistency.csv")
    assert list(rows[0]) == list(consistency.COLUMNS)
    assert [(r["round"], r["layer"], r["trial_a"], r["trial_b"]) for r in rows] == [
        (r, layer, 0, 1) for r in (1, 2) for layer in ("fc1", "fc2", "output", "all")]
    assert {r["label"] for r in rows} == {label}
    for r in rows:
      m0, m1 = (masks.from_bytes(artifacts.read_bytes(
          f"{layout.stage_dir(out, 'ticket', t, r['round'])}/masks.npz")) for t in (0, 1))
      a, b = (m0, m1) if r["layer"] == "all" else (m0[r["layer"]], m1[r["layer"]])
      assert r["jaccard"] == pytest.approx(masks.jaccard(a, b))
      assert r["overlap_ratio"] == pytest.approx(masks.overlap_ratio(a, b))
      assert 0 < r["jaccard"] < 1 and r["overlap_ratio"] > 0.5
    assert rows[0]["weights_remaining"] == pytest.approx(
        artifacts.read_results(f"{out}/results.csv")[1]["weights_remaining"])
  for name in ("consistency", "input_connectivity"):
    assert f"{same}/plots/{name}.png" in paths and f"{same}/plots/{name}.pdf" in paths
    assert artifacts.read_bytes(f"{same}/plots/{name}.png").startswith(PNG_MAGIC)
  assert not os.path.exists(f"{out}/plots/consistency.png")  # figures go to the first dir only


def test_input_connectivity_round_and_maps(study_exp):
  cfg, out, _ = study_exp
  exp = common.load(out)
  assert consistency.default_round(exp) == cfg.rounds  # both arms finished the last round
  mask = exp.mask("ticket", 0, 2)
  conn = consistency.input_connectivity(mask)
  assert conn.shape == (28, 28) and conn.sum() == mask["fc1"].sum()
  assert conn[0, 0] == mask["fc1"][0].sum() and conn[1, 0] == mask["fc1"][28].sum()
  with pytest.raises(common.StudyError, match="--round=7"):
    consistency.write_input_connectivity(exp, round_=7)


def test_consistency_needs_two_trials(study_exp, tmp_path):
  _, out, _ = study_exp
  one = str(tmp_path / "one")  # the experiment as it was before trial 1 finished anything
  shutil.copytree(out, one)
  rows = artifacts.read_results(f"{one}/results.csv")
  artifacts.write_results(f"{one}/results.csv", [r for r in rows if r["trial"] == 0])
  with pytest.raises(common.StudyError, match="--trials=2"):
    consistency.run([one])
  with pytest.raises(common.StudyError, match="flags.cfg"):
    consistency.run([f"{one}/ticket"])
  with pytest.raises(common.StudyError, match="not a folder"):
    consistency.run([f"{one}/nowhere"])


# ---- properties ------------------------------------------------------------------------------

def test_regenerated_start_weights_equal_what_training_started_from(study_exp):
  cfg, out, starts = study_exp
  exp = common.load(out)
  assert {arm for arm, _, _ in starts} == {"ticket", "reinit", "random_prune"}
  for (arm, trial, round_), (recorded, mask) in starts.items():
    saved = exp.mask(arm, trial, round_)
    for n in saved:
      np.testing.assert_array_equal(saved[n], mask[n])
    got = properties.start_weights(exp, arm, trial, round_, saved)
    assert set(got) == set(recorded)
    for n in recorded:
      for g, r in zip(got[n], recorded[n], strict=True):
        np.testing.assert_array_equal(g, r, err_msg=f"{arm} trial {trial} round {round_} {n}")


def test_properties_csv_has_every_stage_metric_and_layer(study_exp, properties_rows):
  cfg, out, starts = study_exp
  _, rows = properties_rows
  assert list(rows[0]) == list(properties.COLUMNS)
  layers = {"fc1", "fc2", "output", "all"}
  for arm, trial, round_ in starts:
    mine = [r for r in rows if (r["arm"], r["trial"], r["round"]) == (arm, trial, round_)]
    metrics = {r["metric"] for r in mine}
    expected = {"final_sign_equals_theta0", "final_sign_equals_start", "distance_travelled",
                "untrained_test_accuracy"}
    if arm in properties.MAGNITUDE_ARMS:
      expected |= {"theta0_kept_mean_abs", "theta0_kept_median_abs", "theta0_all_mean_abs",
                   "theta0_kept_to_all_ratio"}
    assert metrics == expected
    for m in expected - {"untrained_test_accuracy"}:
      assert {r["layer"] for r in mine if r["metric"] == m} == layers
    assert all(np.isfinite(r["value"]) for r in mine)
  # dense: kept = all; the ticket keeps large |θ0|, random pruning does not prefer them
  assert _value(rows, arm="ticket", trial=0, round=0, layer="all",
                metric="theta0_kept_to_all_ratio") == pytest.approx(1.0)
  assert _value(rows, arm="ticket", trial=0, round=2, layer="fc1",
                metric="theta0_kept_to_all_ratio") > 1.1
  assert _value(rows, arm="random_prune", trial=0, round=2, layer="fc1",
                metric="theta0_kept_to_all_ratio") == pytest.approx(1.0, abs=0.02)
  # ticket/random_prune start at θ0: both sign metrics agree; reinit's θ0 signs are chance
  for r in (1, 2):
    for arm in ("ticket", "random_prune"):
      assert _value(rows, arm=arm, trial=1, round=r, layer="all",
                    metric="final_sign_equals_theta0") == _value(
          rows, arm=arm, trial=1, round=r, layer="all", metric="final_sign_equals_start")
    assert _value(rows, arm="reinit", trial=1, round=r, layer="fc1",
                  metric="final_sign_equals_theta0") == pytest.approx(0.5, abs=0.02)


def test_distance_is_measured_from_the_arms_start(study_exp, properties_rows):
  _, out, starts = study_exp
  _, rows = properties_rows
  exp = common.load(out)
  (start, mask) = starts[("reinit", 1, 2)]
  final = exp.weights("reinit", 1, 2)
  kept = mask["fc2"] > 0
  want = (np.linalg.norm((final["fc2"][0] - start["fc2"][0])[kept])
          / np.linalg.norm(start["fc2"][0][kept]))
  assert _value(rows, arm="reinit", trial=1, round=2, layer="fc2",
                metric="distance_travelled") == pytest.approx(want, rel=1e-5)


def test_supermask_of_dense_theta0_is_the_fresh_models_accuracy(study_exp, properties_rows,
                                                                splits):
  cfg, out, _ = study_exp
  _, rows = properties_rows
  exp = common.load(out)
  seed = properties.init_seed(exp, "ticket", 0, 0)
  fresh = models.build(cfg.model, splits.test_x.shape[1:], init=cfg.initializer, seed=seed,
                       init_scale=cfg.init_scale)
  theta0 = exp.theta0(0)
  for n, ws in ticket.get_weights(fresh).items():  # θ0 is that fresh model
    for a, b in zip(ws, theta0[n]):
      np.testing.assert_array_equal(a, b)
  logits = fresh(splits.test_x, training=False).numpy()
  accuracy = float(np.mean(logits.argmax(-1) == splits.test_y))
  assert _value(rows, arm="ticket", trial=0, round=0, layer="all",
                metric="untrained_test_accuracy") == pytest.approx(accuracy, abs=1e-6)


def test_properties_without_theta0_and_weights_files(study_exp, properties_rows, splits,
                                                    tmp_path):
  """theta0.npz and weights.npz stay out of git: θ0 is redrawn bit for bit from its seed, and
  a stage without weights.npz keeps its trained-weight metrics from the previous CSV (or has
  none), while its θ0-and-mask metrics are computed as before."""
  _, out, _ = study_exp
  _, rows = properties_rows
  copy = tmp_path / "exp"
  shutil.copytree(out, copy, ignore=shutil.ignore_patterns("plots"))
  for trial in (0, 1):
    os.remove(layout.theta0_path(str(copy), trial))
    theta0 = common.load(str(copy)).theta0(trial)
    for n, ws in artifacts.read_weights(layout.theta0_path(out, trial)).items():
      for a, b in zip(ws, theta0[n], strict=True):
        np.testing.assert_array_equal(a, b)
  lost = ("reinit", 1, 2)
  os.remove(f"{layout.stage_dir(str(copy), *lost)}/weights.npz")
  properties.run(str(copy), splits=splits, jit_compile=False)
  assert common.read_csv(f"{copy}/study_properties.csv") == rows
  os.remove(f"{copy}/study_properties.csv")  # no previous values to fall back on
  properties.run(str(copy), splits=splits, jit_compile=False)
  again = common.read_csv(f"{copy}/study_properties.csv")
  stage = lambda r: (r["arm"], r["trial"], r["round"])
  assert [r for r in again if stage(r) != lost] == [r for r in rows if stage(r) != lost]
  assert {r["metric"] for r in again if stage(r) == lost} == {"untrained_test_accuracy"}


def test_properties_figures_exist(study_exp, properties_rows):
  _, out, _ = study_exp
  paths, _ = properties_rows
  assert paths[0] == f"{out}/study_properties.csv"
  for name in properties.FIGURES:
    assert artifacts.read_bytes(f"{out}/plots/{name}.png").startswith(PNG_MAGIC)
    assert artifacts.read_bytes(f"{out}/plots/{name}.pdf").startswith(b"%PDF")


# ---- command line ----------------------------------------------------------------------------

def run_study_cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "lth_tf.study", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,named", [
    (["bogus", "--output_dir=x"], "NAME='bogus'"),
    (["--output_dir=x"], "NAME"),
    (["consistency"], "--output_dir"),
])
def test_cli_bad_arguments_exit_2_with_one_line(args, named):
  proc = run_study_cli(*args)
  assert proc.returncode == 2
  assert "Traceback" not in proc.stderr
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  ours = [l for l in lines if l.startswith("lth_tf.study: error:")]
  assert ours == [lines[-1]] and named in ours[0]
  assert "consistency" in ours[0] or "--output_dir" in ours[0]


def test_cli_unfinished_output_dir_exits_2(tmp_path):
  proc = run_study_cli("properties", f"--output_dir={tmp_path}")
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("lth_tf.study: error: --output_dir=") and "lth_tf.main" in last


def test_mutual_information_on_known_cases():
  from lth_tf.study import estimators, infoplane
  rng = np.random.default_rng(0)
  x = rng.permutation(256)[:, None].astype(float)  # 256 distinct inputs
  y = rng.integers(0, 4, 256)
  ids = estimators.pattern_ids(estimators.equal_width_bins(x, bins=256))
  i_xt, i_ty = estimators.discrete_information(ids, y)
  assert abs(i_xt - 8.0) < 1e-9  # T = X: I(X;T) = H(X) = log2(256)
  h_y = estimators.entropy(np.bincount(y))
  assert abs(i_ty - h_y) < 1e-9  # T determines Y: I(T;Y) = H(Y)
  const = estimators.discrete_information(np.zeros(256, int), y)
  assert const == (0.0, 0.0)  # a constant T carries nothing
  from_y = estimators.discrete_information(y, y)  # T = Y
  assert abs(from_y[0] - h_y) < 1e-9 and abs(from_y[1] - h_y) < 1e-9
  # KDE bound: identical points carry no information; far-apart points reach log2(N), and
  # classes that are far apart give I(T;Y) = H(Y)
  same = estimators.pairwise_information(np.zeros((64, 3)), y[:64], 0.1)
  assert abs(same[0]) < 1e-6 and abs(same[1]) < 1e-6
  spread = estimators.pairwise_information(100.0 * np.eye(64), y[:64], 0.1)
  assert abs(spread[0] - 6.0) < 1e-4
  by_class = estimators.pairwise_information(100.0 * y[:64, None].astype(float), y[:64], 0.1)
  assert abs(by_class[1] - estimators.entropy(np.bincount(y[:64]))) < 1e-4
  assert infoplane.snapshot_iterations(15000, 30)[0] == 0
  assert len(infoplane.snapshot_iterations(15000, 30)) in range(25, 31)


def test_infoplane_trajectories_for_dense_ticket_reinit(study_exp, splits):
  from lth_tf.study import infoplane
  out = study_exp[1]
  written = infoplane.run(out, 1, splits=splits, iterations=40, points=6, subset=200,
                          sigmas=(0.3, 1.0))
  assert written[0].endswith("study_infoplane_noisy_kde.csv")
  assert written[1].endswith("plots/infoplane_noisy_kde.png")
  rows = common.read_csv(written[0], infoplane.COLUMNS)
  assert {r["arm"] for r in rows} == {"dense", "ticket", "reinit"}
  assert {r["layer"] for r in rows} == {"fc1", "fc2"}
  assert {r["sigma"] for r in rows} == {0.3, 1.0}
  for r in rows:
    assert r["i_xt_lower"] <= r["i_xt"] + 1e-9 <= np.log2(200) + 1e-9
    assert r["i_ty"] <= r["i_xt"] + 1e-9
  # more noise, less information: every (arm, iteration, layer) at σ = 1 below σ = 0.3
  by = {(r["arm"], r["iteration"], r["layer"], r["sigma"]): r["i_xt"] for r in rows}
  assert all(by[k[:3] + (1.0,)] < v for k, v in by.items() if k[3] == 0.3)
  assert open(written[1], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  for estimator in ("binning", "adaptive_binning", "kde"):
    path, png = infoplane.run(out, 1, splits=splits, iterations=40, points=3, subset=100,
                              estimator=estimator)[:2]
    assert path.endswith(f"study_infoplane_{estimator}.csv")
    # one row of panels, not one per measurement (wrong: each measurement's nan sigma a
    # level of its own, a figure 18 rows tall here)
    head = open(png, "rb").read(24)
    assert int.from_bytes(head[20:24], "big") < int.from_bytes(head[16:20], "big")
    for r in common.read_csv(path):
      assert 0 <= r["i_ty"] <= r["i_xt"] + 1e-9 <= np.log2(100) + 1e-9
  with pytest.raises(common.StudyError, match="--sigma"):
    infoplane.run(out, 1, splits=splits, sigmas=(0.3, -1.0))
  with pytest.raises(common.StudyError, match="--estimator"):
    infoplane.run(out, 1, splits=splits, estimator="mine")
  with pytest.raises(common.StudyError, match=r"\[ticket trial 0 round 9\].*lth_tf.main "
                                              r"--flagfile=.*--rounds=9"):
    infoplane.run(out, 9, splits=splits)


@pytest.mark.parametrize("args,named", [
    (["--sigma=0.3,0"], "--sigma"),
    (["--sigma=-1"], "--sigma"),
    (["--estimator=mine"], "--estimator"),
    (["--bins=1"], "--bins"),
])
def test_infoplane_cli_refuses_bad_estimator_settings(args, named):
  proc = run_study_cli("infoplane", "--output_dir=results/lenet_fashion_mnist", "--round=7",
                       *args)
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert proc.returncode == 2 and named in lines[-1] and "Traceback" not in proc.stderr


