"""Pruning rules and masks: pure numpy, exact counts."""
import numpy as np
import pytest

from lth_tf import masks, pruning


def test_keep_counts_follow_one_minus_p_to_the_r():
  sizes = {"fc1": 235200, "output": 1000, "tiny": 3}
  rates = {"fc1": 0.2, "output": 0.1, "tiny": 0.5}
  for r in range(0, 16):
    keep = pruning.keep_counts(sizes, rates, r)
    assert keep["fc1"] == round(235200 * 0.8**r)
    assert keep["output"] == round(1000 * 0.9**r)
    assert keep["tiny"] >= 1  # never below one weight


def test_magnitude_keeps_largest_survivors_and_nests():
  rng = np.random.default_rng(0)
  kernels = {"a": rng.normal(size=(20, 30)), "b": rng.normal(size=(30, 5))}
  mask = masks.ones_like(kernels)
  sizes = {n: k.size for n, k in kernels.items()}
  rates = {"a": 0.2, "b": 0.1}
  for r in range(1, 8):
    new = pruning.prune("magnitude", kernels, mask, pruning.layerwise_targets(sizes, rates, r))
    assert masks.is_subset(new, mask)
    for n, k in kernels.items():
      assert new[n].sum() == pruning.keep_counts(sizes, rates, r)[n]
      kept, dropped = np.abs(k[new[n] > 0]), np.abs(k[(new[n] == 0) & (mask[n] > 0)])
      assert dropped.size == 0 or kept.min() >= dropped.max()
    mask = new


def test_magnitude_ignores_already_pruned_weights():
  kernels = {"a": np.array([[10.0, 1.0, 2.0, 3.0]])}
  mask = {"a": np.array([[0.0, 1.0, 1.0, 1.0]], np.float32)}  # the largest is already pruned
  new = pruning.prune("magnitude", kernels, mask, [(("a",), 2)])
  np.testing.assert_array_equal(new["a"], [[0, 0, 1, 1]])


def test_random_prune_matches_counts_not_positions():
  rng = np.random.default_rng(1)
  kernels = {"a": rng.normal(size=(50, 40))}
  magnitude = pruning.prune("magnitude", kernels, masks.ones_like(kernels), [(("a",), 400)])
  rand = pruning.prune("random", kernels, None, [(("a",), 400)], np.random.default_rng(2))
  assert rand["a"].sum() == 400
  assert (rand["a"] * magnitude["a"]).sum() < 200  # ~ 400 * 0.2 expected by chance


def test_unknown_method_is_rejected():
  with pytest.raises(ValueError, match="unknown pruning method"):
    pruning.prune("nope", {}, {}, {})


def test_mask_bytes_roundtrip():
  m = {"a": np.array([[1, 0], [0, 1]], np.float32)}
  back = masks.from_bytes(masks.to_bytes(m))
  np.testing.assert_array_equal(back["a"], m["a"])
  assert masks.fraction_remaining(m) == 0.5


def test_global_threshold_is_one_threshold_across_layers():
  rng = np.random.default_rng(4)
  # layer b's weights are 10x larger: a global threshold prunes a far more than b
  kernels = {"a": rng.normal(size=(40, 30)), "b": 10 * rng.normal(size=(30, 20)),
             "output": rng.normal(size=(20, 10))}
  sizes = {n: k.size for n, k in kernels.items()}
  rates = {"a": 0.2, "b": 0.2, "output": 0.1}
  mask = masks.ones_like(kernels)
  for r in range(1, 5):
    targets = pruning.global_targets(sizes, ["a", "b"], 0.2, rates, r)
    new = pruning.prune("magnitude", kernels, mask, targets)
    pooled_kept = new["a"].sum() + new["b"].sum()
    assert pooled_kept == pruning.keep_count(sizes["a"] + sizes["b"], 0.2, r)
    assert new["output"].sum() == pruning.keep_count(200, 0.1, r)  # kept at its own rate
    survivors = np.concatenate([np.abs(kernels[n][new[n] > 0]) for n in ("a", "b")])
    pruned = np.concatenate([np.abs(kernels[n][(new[n] == 0) & (mask[n] > 0)]) for n in ("a", "b")])
    assert survivors.min() >= pruned.max()  # one threshold separates them across layers
    assert masks.is_subset(new, mask)
    mask = new
  assert mask["a"].mean() < 0.2 < mask["b"].mean()


def test_one_shot_equals_iterative_sparsity():
  rng = np.random.default_rng(5)
  kernels = {"a": rng.normal(size=(50, 50)), "output": rng.normal(size=(50, 10))}
  sizes = {n: k.size for n, k in kernels.items()}
  rates = {"a": 0.2, "output": 0.1}
  mask = masks.ones_like(kernels)
  for r in range(1, 6):
    mask = pruning.prune("magnitude", kernels, mask, pruning.layerwise_targets(sizes, rates, r))
    one_shot = pruning.prune("magnitude", kernels, masks.ones_like(kernels),
                             pruning.layerwise_targets(sizes, rates, r))
    assert masks.counts(one_shot) == masks.counts(mask)
