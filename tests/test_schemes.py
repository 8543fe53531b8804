"""Beyond the paper: global pruning, one-shot, late resetting, fine-tuning, initializers."""
import numpy as np
import pytest
import tf_keras as keras

from conftest import load_mask
from lth_tf import artifacts, config, experiment, layout, masks, models, pruning, ticket


class WeightsAt(keras.callbacks.Callback):
  """Records the model's weights at one iteration of the first training it sees."""

  def __init__(self, iteration):
    super().__init__()
    self.iteration, self.weights = iteration, None

  def on_epoch_end(self, epoch, logs=None):
    if self.weights is None and logs["iteration"] == self.iteration:
      ticket.apply_masks(self.model)
      self.weights = ticket.get_weights(self.model)


@pytest.fixture
def run_scheme(tmp_path, splits, tiny_config, stage_recorder):
  """``run_scheme(**overrides)``: runs a tiny experiment (2 rounds, both controls unless
  overridden) in tmp_path; returns (cfg, output dir, rows, {stage: (start weights, masks)})."""
  def run(**kw):
    cfg = tiny_config(**{"rounds": 2, "controls": ("reinit", "random_prune"), **kw})
    out = str(tmp_path)
    recorder = stage_recorder()
    rows = experiment.run(cfg, out, splits, callbacks=[recorder])
    return cfg, out, rows, dict(zip(cfg.stages(), recorder.starts))
  return run


def test_global_pruning_uses_one_threshold_and_keeps_output_rate(run_scheme):
  cfg, out, rows, _ = run_scheme(pruning="global", prune_rate=0.5)
  sizes = {"fc1": 784 * 300, "fc2": 300 * 100, "output": 1000}
  for r in (1, 2):
    mask = load_mask(out, "ticket", r)
    prev = artifacts.read_weights(f"{layout.stage_dir(out, 'ticket', 0, r - 1)}/weights.npz")
    prev_mask = load_mask(out, "ticket", r - 1)
    assert mask["fc1"].sum() + mask["fc2"].sum() == pruning.keep_count(sizes["fc1"] + sizes["fc2"], 0.5, r)
    assert mask["output"].sum() == pruning.keep_count(1000, 0.25, r)
    kept = np.concatenate([np.abs(prev[n][0][mask[n] > 0]) for n in ("fc1", "fc2")])
    cut = np.concatenate([np.abs(prev[n][0][(mask[n] == 0) & (prev_mask[n] > 0)])
                          for n in ("fc1", "fc2")])
    assert kept.min() >= cut.max()
  # the layers end at different sparsities: a global, not per-layer, threshold
  assert abs(mask["fc1"].mean() - mask["fc2"].mean()) > 0.01
  # random pruning matches the ticket's per-layer counts
  rp = load_mask(out, "random_prune", 2)
  assert masks.counts(rp) == masks.counts(mask)


def test_global_pruning_prunes_at_its_own_rate_under_one_threshold(run_scheme):
  """--prune_rate differs from --prune_rate_fc here (0.35 vs 0.2), so pooling at the fc rate,
  or pruning each layer at 0.35, gives other masks: the pooled layers keep exactly the K
  largest |w| of all their previous survivors, K at 0.35; the output layer keeps its default
  rate, half the fc rate."""
  fc = 0.2
  _, out, _, _ = run_scheme(pruning="global", prune_rate=0.35, prune_rate_fc=fc,
                            prune_rate_output=config.paper_output_rate("lenet300_100", fc),
                            controls=())
  sizes = {"fc1": 784 * 300, "fc2": 300 * 100}
  for r in (1, 2):
    mask = load_mask(out, "ticket", r)
    prev = artifacts.read_weights(f"{layout.stage_dir(out, 'ticket', 0, r - 1)}/weights.npz")
    prev_mask = load_mask(out, "ticket", r - 1)
    pooled = int(mask["fc1"].sum() + mask["fc2"].sum())
    assert pooled == pruning.keep_count(sum(sizes.values()), 0.35, r)
    assert pooled != pruning.keep_count(sum(sizes.values()), fc, r)
    assert mask["output"].sum() == pruning.keep_count(1000, fc / 2, r)
    # the K largest |w| of the pooled survivors, by numpy alone: one threshold for both layers
    w = np.concatenate([prev[n][0].ravel() for n in sizes])
    alive = np.flatnonzero(np.concatenate([prev_mask[n].ravel() for n in sizes]))
    ranked = alive[np.argsort(-np.abs(w[alive]), kind="stable")]
    expected = np.zeros(w.size, np.float32)
    expected[ranked[:pooled]] = 1
    np.testing.assert_array_equal(
        np.concatenate([mask[n].ravel() for n in sizes]), expected, err_msg=f"round {r}")
    kept = np.concatenate([np.abs(prev[n][0][mask[n] > 0]) for n in sizes])
    cut = np.concatenate([np.abs(prev[n][0][(mask[n] == 0) & (prev_mask[n] > 0)]) for n in sizes])
    assert kept.min() >= cut.max()
    # not what per-layer pruning at either rate would keep
    for rate in (0.35, fc):
      assert ((mask["fc1"].sum(), mask["fc2"].sum())
              != tuple(pruning.keep_count(sizes[n], rate, r) for n in sizes))


def test_global_output_layer_pools_the_output(run_scheme):
  _, out, _, _ = run_scheme(pruning="global", prune_rate=0.5, global_output_layer=True,
                            controls=())
  mask = load_mask(out, "ticket", 1)
  assert sum(m.sum() for m in mask.values()) == pruning.keep_count(784 * 300 + 300 * 100 + 1000, 0.5, 1)


def test_one_shot_prunes_the_dense_network_to_each_rounds_sparsity(run_scheme):
  cfg, out, rows, _ = run_scheme(one_shot=True, controls=())
  dense = artifacts.read_weights(f"{layout.stage_dir(out, 'ticket', 0, 0)}/weights.npz")
  sizes = {"fc1": 784 * 300, "fc2": 300 * 100, "output": 1000}
  rates = {"fc1": 0.5, "fc2": 0.5, "output": 0.25}
  for r in (1, 2):
    mask = load_mask(out, "ticket", r)
    expected = pruning.prune("magnitude", {n: dense[n][0] for n in sizes},
                             masks.ones_like({n: dense[n][0] for n in sizes}),
                             pruning.layerwise_targets(sizes, rates, r))
    for n in sizes:
      np.testing.assert_array_equal(mask[n], expected[n])
    assert {n: int(m.sum()) for n, m in mask.items()} == pruning.keep_counts(sizes, rates, r)


def test_late_resetting_restores_exactly_theta_k(tmp_path, splits, tiny_config, stage_recorder):
  at_k = WeightsAt(80)
  cfg = tiny_config(rounds=2, controls=("random_prune",), rewind="iteration",
                    rewind_iteration=80)
  out = str(tmp_path)
  recorder = stage_recorder()
  experiment.run(cfg, out, splits, callbacks=[recorder, at_k])
  starts = dict(zip(cfg.stages(), recorder.starts))
  theta_k = artifacts.read_weights(layout.rewind_path(out, 0, 80))
  theta0 = artifacts.read_weights(layout.theta0_path(out, 0))
  for n in theta_k:
    np.testing.assert_array_equal(theta_k[n][0], at_k.weights[n][0])
    assert not np.array_equal(theta_k[n][0], theta0[n][0])
  for arm in ("ticket", "random_prune"):
    for r in (1, 2):
      weights, mask = starts[(arm, 0, r)]
      for n in theta_k:
        np.testing.assert_array_equal(weights[n][0], theta_k[n][0] * mask[n])
        np.testing.assert_array_equal(weights[n][1], theta_k[n][1])
  # the dense round itself starts at θ0
  np.testing.assert_array_equal(starts[("ticket", 0, 0)][0]["fc1"][0], theta0["fc1"][0])


def test_rewind_none_fine_tunes_the_previous_round(run_scheme):
  cfg, out, _, starts = run_scheme(rewind="none", controls=())
  for r in (1, 2):
    prev = artifacts.read_weights(f"{layout.stage_dir(out, 'ticket', 0, r - 1)}/weights.npz")
    weights, mask = starts[("ticket", 0, r)]
    np.testing.assert_array_equal(weights["fc1"][0], prev["fc1"][0] * mask["fc1"])


def _expected_std(name, fan_in, fan_out, scale):
  return {"glorot_normal": np.sqrt(2 / (fan_in + fan_out)),
          "glorot_uniform": np.sqrt(2 / (fan_in + fan_out)),
          "he_normal": np.sqrt(2 / fan_in), "he_uniform": np.sqrt(2 / fan_in),
          "lecun_normal": np.sqrt(1 / fan_in),
          "truncated_normal": scale * 0.8796,  # a normal truncated at 2 std
          "orthogonal": np.sqrt(1 / max(fan_in, fan_out))}[name]


@pytest.mark.parametrize("name", models.INITIALIZERS)
def test_every_initializer_is_used(name):
  kernel = ticket.get_weights(models.build("lenet300_100", (28, 28, 1), init=name, seed=1,
                                           init_scale=0.1))["fc1"][0]
  assert abs(kernel.std() / _expected_std(name, 784, 300, 0.1) - 1) < 0.03
  uniform = name.endswith("uniform")
  limit = np.sqrt(6 / (784 + 300)) if name == "glorot_uniform" else np.sqrt(6 / 784)
  if uniform:
    assert np.abs(kernel).max() <= limit
  if name == "orthogonal":
    np.testing.assert_allclose(kernel.T @ kernel, np.eye(300), atol=1e-4)


def test_reinit_control_draws_from_the_chosen_initializer(run_scheme):
  cfg, out, _, starts = run_scheme(initializer="he_uniform", controls=("reinit",), rounds=1)
  theta0 = artifacts.read_weights(layout.theta0_path(out, 0))
  weights, mask = starts[("reinit", 0, 1)]
  kept = weights["fc1"][0][mask["fc1"] > 0]
  assert np.abs(kept).max() <= np.sqrt(6 / 784)  # he_uniform's range
  assert abs(kept.std() / np.sqrt(2 / 784) - 1) < 0.03
  assert abs(theta0["fc1"][0].std() / np.sqrt(2 / 784) - 1) < 0.03  # θ0 too


def test_sign_constant_control_keeps_signs_with_one_magnitude(run_scheme):
  cfg, out, _, starts = run_scheme(controls=("sign_constant",), rounds=1)
  theta0 = artifacts.read_weights(layout.theta0_path(out, 0))
  weights, mask = starts[("sign_constant", 0, 1)]
  np.testing.assert_array_equal(mask["fc1"], starts[("ticket", 0, 1)][1]["fc1"])
  for n in mask:
    kept = mask[n] > 0
    np.testing.assert_array_equal(np.sign(weights[n][0][kept]), np.sign(theta0[n][0][kept]))
    np.testing.assert_allclose(np.abs(weights[n][0][kept]), theta0[n][0].std(), rtol=1e-6)
    assert np.all(weights[n][0][~kept] == 0)


def test_same_init_shares_theta0_but_not_data_order(tmp_path, splits, tiny_config):
  cfg = tiny_config(rounds=0, controls=(), trials=2, same_init=True)
  out = str(tmp_path)
  experiment.run(cfg, out, splits)
  a = artifacts.read_weights(layout.theta0_path(out, 0))
  b = artifacts.read_weights(layout.theta0_path(out, 1))
  np.testing.assert_array_equal(a["fc1"][0], b["fc1"][0])
  ma = artifacts.read_json(f"{layout.stage_dir(out, 'ticket', 0, 0)}/metrics.json")
  mb = artifacts.read_json(f"{layout.stage_dir(out, 'ticket', 1, 0)}/metrics.json")
  assert ma["seeds"]["init"] == mb["seeds"]["init"] and ma["seeds"]["data"] != mb["seeds"]["data"]
  assert ma["curve"] != mb["curve"]
