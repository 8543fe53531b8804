"""Pruning at initialization and early-bird tickets run as experiments of their own."""
import numpy as np
import pytest

from conftest import load_mask
from lth_tf import artifacts, data, experiment, layout, masks, models, pruning, saliency, ticket


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_pruning_at_init_meets_targets_and_trains_from_theta0(method, tmp_path, splits, tiny_config,
                                                              stage_recorder):
  cfg = tiny_config(pruning=method, rounds=2, controls=("random_prune",), iterations=80,
                    prune_rate=0.5, score_batches=2, synflow_iterations=10)
  out = str(tmp_path)
  recorder = stage_recorder()
  rows = experiment.run(cfg, out, splits, callbacks=[recorder])
  theta0 = artifacts.read_weights(layout.theta0_path(out, 0))
  pooled = 784 * 300 + 300 * 100
  for r in (1, 2):
    mask = load_mask(out, "ticket", r)
    assert mask["fc1"].sum() + mask["fc2"].sum() == pruning.keep_count(pooled, 0.5, r)
    assert mask["output"].sum() == pruning.keep_count(1000, 0.25, r)
    weights, start_mask = dict(zip(cfg.stages(), recorder.starts))[("ticket", 0, r)]
    np.testing.assert_array_equal(weights["fc1"][0], theta0["fc1"][0] * mask["fc1"])
  expected = {"snip": 2, "grasp": 2, "synflow": 0}[method]
  assert [r["search_iterations"] for r in rows if r["round"] > 0] == [expected] * 4
  if method == "snip":  # the mask is exactly the top SNIP scores at θ0 on the scored batches
    model = ticket.wrap(models.build("lenet300_100", (28, 28, 1)))
    ticket.set_weights(model, theta0)
    rows_ = data.batch_indices(
        len(splits.train_x), 30, 2, layout.derive_seed(cfg.seed, 0, "score")).ravel()
    scores = saliency.snip_scores(model, splits.train_x[rows_], splits.train_y[rows_], 2, 30)
    sizes = {n: s.size for n, s in scores.items()}
    targets = pruning.global_targets(sizes, ["fc1", "fc2"], 0.5, {"output": 0.25, "fc1": 0.5, "fc2": 0.5}, 1)
    expect = pruning.keep_top(scores, masks.ones_like(scores), targets)
    for n in expect:
      np.testing.assert_array_equal(load_mask(out, "ticket", 1)[n], expect[n])


def test_early_bird_records_settled_masks_during_the_dense_round(tmp_path, splits, tiny_config):
  cfg = tiny_config(pruning="early_bird", rounds=2, controls=(), iterations=400, eval_every=40,
                    eb_window=3, eb_epsilon=0.2)
  out = str(tmp_path)
  rows = experiment.run(cfg, out, splits)
  found = artifacts.read_json(layout.early_bird_path(out, 0))
  assert set(found) == {"1", "2"}
  for r in (1, 2):
    assert found[str(r)] % 40 == 0 and 3 * 40 <= found[str(r)] <= 400
    mask = load_mask(out, "ticket", r)
    sizes = {"fc1": 784 * 300, "fc2": 300 * 100, "output": 1000}
    assert {n: int(m.sum()) for n, m in mask.items()} == pruning.keep_counts(
        sizes, {"fc1": 0.5, "fc2": 0.5, "output": 0.25}, r)
  assert [r["search_iterations"] for r in rows] == [0, found["1"], found["2"]]
