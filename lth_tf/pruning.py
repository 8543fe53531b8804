"""Pruning methods: pure functions (trained kernels, current mask, targets) -> new mask.

Knows no Keras and no experiment loop. A target is the number of weights each layer keeps,
computed once from the layer's size and its rate, so that after round r a layer pruned at
rate p keeps exactly max(1, round(n * (1-p)^r)) weights whether it got there iteratively or in
one shot.
"""
import numpy as np


def keep_counts(sizes, rates, round_):
  """{layer: weights kept after ``round_`` rounds at per-round rate ``rates[layer]``}."""
  return {name: max(1, int(round(n * (1.0 - rates[name]) ** round_))) for name, n in sizes.items()}


def _keep_largest(scores, allowed, k):
  """0/1 mask keeping the k largest ``scores`` among ``allowed`` entries (ties: lower index)."""
  flat_scores = np.where(allowed.ravel() > 0, scores.ravel(), -np.inf)
  if k > int((allowed > 0).sum()):
    raise ValueError(f"cannot keep {k} weights: only {int((allowed > 0).sum())} survive")
  keep = np.argsort(-flat_scores, kind="stable")[:k]
  out = np.zeros(allowed.size, np.float32)
  out[keep] = 1.0
  return out.reshape(allowed.shape)


def magnitude_layerwise(kernels, mask, keep, rng=None):
  """The paper's rule: in each layer keep the ``keep[layer]`` largest-|w| survivors."""
  del rng
  return {name: _keep_largest(np.abs(kernels[name]), mask[name], keep[name]) for name in mask}


def random_layerwise(kernels, mask, keep, rng):
  """Control: ``keep[layer]`` positions drawn uniformly from the whole layer, ignoring |w|."""
  del mask
  return {name: _keep_largest(rng.random(k.shape), np.ones(k.shape), keep[name])
          for name, k in kernels.items()}


METHODS = {"layerwise": magnitude_layerwise, "random": random_layerwise}


def prune(method, kernels, mask, keep, rng=None):
  """Applies pruning method ``method`` by name."""
  if method not in METHODS:
    raise ValueError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
  return METHODS[method](kernels, mask, keep, rng)
