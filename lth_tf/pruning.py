"""Pruning methods: pure functions (trained kernels, current mask, targets) -> new mask.

Knows no Keras and no experiment loop. A target is a group of layers and the number of
weights the group keeps, computed once from the group's size and rate, so that after round r
a group pruned at rate p keeps exactly max(1, round(n * (1-p)^r)) weights whether it got there
iteratively or in one shot. Layerwise pruning (the paper's) makes each layer its own group;
global pruning pools layers into one group with one magnitude threshold.
"""
import numpy as np


def keep_count(size, rate, round_):
  """Weights a group of ``size`` keeps after ``round_`` rounds at per-round rate ``rate``."""
  return max(1, int(round(size * (1.0 - rate) ** round_)))


def keep_counts(sizes, rates, round_):
  """{layer: weights kept after ``round_`` rounds at per-round rate ``rates[layer]``}."""
  return {name: keep_count(n, rates[name], round_) for name, n in sizes.items()}


def layerwise_targets(sizes, rates, round_):
  """Each layer its own group: [((layer,), keep)]."""
  return [((n,), k) for n, k in keep_counts(sizes, rates, round_).items()]


def global_targets(sizes, pooled, rate, rates, round_):
  """Layers in ``pooled`` share one group at ``rate``; the others keep their own ``rates``."""
  groups = [(tuple(pooled), keep_count(sum(sizes[n] for n in pooled), rate, round_))]
  return groups + [((n,), keep_count(sizes[n], rates[n], round_))
                   for n in sizes if n not in pooled]


def _keep_largest(scores, allowed, k):
  """0/1 vector keeping the k largest ``scores`` among ``allowed`` entries (ties: lower index)."""
  available = int((allowed > 0).sum())
  if k > available:
    raise ValueError(f"cannot keep {k} weights: only {available} survive")
  keep = np.argsort(-np.where(allowed > 0, scores, -np.inf), kind="stable")[:k]
  out = np.zeros(allowed.size, np.float32)
  out[keep] = 1.0
  return out


def _by_group(scores, mask, targets):
  """Applies _keep_largest per group over the concatenated layers; returns {layer: mask}."""
  out = {}
  for names, k in targets:
    flat = _keep_largest(np.concatenate([scores[n].ravel() for n in names]),
                         np.concatenate([mask[n].ravel() for n in names]), k)
    offsets = np.cumsum([0] + [mask[n].size for n in names])
    for n, a, b in zip(names, offsets[:-1], offsets[1:]):
      out[n] = flat[a:b].reshape(mask[n].shape)
  return out


def n_of_m(scores, allowed, n, m):
  """0/1 mask keeping, in every group of ``m`` consecutive weights along the kernel's input
  axis (axis -2: a Dense kernel's rows, a convolution's input channels), the ``n`` highest
  ``scores`` among the ``allowed`` entries (ties: the lower input index). This is TF-MOT's
  ``sparsity_m_by_n`` layout (pruning_utils.weights_rearrange: groups along C_IN), which
  tests/test_structure.py checks with TF-MOT's own is_pruned_m_by_n and generate_m_by_n_mask.
  A kernel whose input axis is not a multiple of ``m`` is returned dense (all ``allowed``)."""
  shape = scores.shape
  if shape[-2] % m:
    return (allowed > 0).astype(np.float32)
  # [..., in, out] -> groups [..., in/m, m, out]: rank within axis -2 of the group
  grouped = np.where(allowed > 0, scores, -np.inf).reshape(
      shape[:-2] + (shape[-2] // m, m, shape[-1]))
  order = np.argsort(-grouped, axis=-2, kind="stable")
  keep = np.zeros(grouped.shape, np.float32)
  np.put_along_axis(keep, order[..., :n, :], 1.0, axis=-2)
  keep *= np.isfinite(grouped)  # never keep a weight the previous mask removed
  return keep.reshape(shape)


def unit_masks(scores, mask, units):
  """Masks that remove whole units: a Dense layer's outputs, a convolution's filters.

  ``scores`` and ``mask``: {layer: kernel-shaped array} in the network's order, each layer
  feeding the next (a plain chain: LeNet, Conv-2/4/6); ``units``: {layer: units it keeps} for
  the layers that lose units (not the output layer, whose units are the classes). A layer keeps
  its units of highest L2 norm of ``scores`` over their surviving incoming weights, among the
  units ``mask`` kept. Its mask keeps every weight from a kept unit of the layer before to a
  kept unit of its own, so a removed unit has no incoming and no outgoing weight: its bias,
  trained or not, reaches nothing. A Dense layer after a convolution reads each filter at
  every position of the flattened map (channels last: row r is filter r mod filters)."""
  alive = {}
  for name, s in scores.items():
    n_units = s.shape[-1]
    flat_mask = mask[name].reshape(-1, n_units) > 0
    was = flat_mask.any(axis=0)
    if name in units:
      norm = np.sqrt((np.where(flat_mask, s.reshape(-1, n_units), 0.0) ** 2).sum(axis=0))
      order = np.argsort(-np.where(was, norm, -np.inf), kind="stable")[:units[name]]
      keep = np.zeros(n_units, bool)
      keep[order] = True
      alive[name] = keep & was
    else:
      alive[name] = was
  out, previous = {}, None
  for name, s in scores.items():
    m = np.broadcast_to(alive[name].astype(np.float32), s.shape).copy()
    if previous is not None:
      rows = previous[np.arange(s.shape[-2]) % previous.size]
      m *= rows.astype(np.float32)[:, None]
    out[name] = m * (mask[name] > 0)
    previous = alive[name]
  return out


def _structured(scores, mask, targets, n_m, units=None):
  """The groups' masks: N of every M per layer when ``n_m`` is (N, M); whole units when
  ``units`` ({layer: units kept}) is given; else by counts."""
  if units is not None:
    return unit_masks(scores, mask, units)
  if n_m is None:
    return _by_group(scores, mask, targets)
  return {name: n_of_m(scores[name], mask[name], *n_m) for name in scores}


def magnitude(kernels, mask, targets, rng=None, n_m=None, units=None):
  """The paper's rule: each group keeps its largest-|w| survivors."""
  del rng
  return _structured({n: np.abs(k) for n, k in kernels.items()}, mask, targets, n_m, units)


def random(kernels, mask, targets, rng, n_m=None, units=None):
  """Control: each group keeps positions drawn uniformly from the whole group, ignoring |w|."""
  del mask
  ones = {n: np.ones(k.shape, np.float32) for n, k in kernels.items()}
  return _structured({n: rng.random(k.shape) for n, k in kernels.items()}, ones, targets, n_m,
                     units)


def keep_top(scores, mask, targets):
  """Each group keeps its highest ``scores`` among ``mask``'s survivors (for saliency methods)."""
  return _by_group(scores, mask, targets)


METHODS = {"magnitude": magnitude, "random": random}


def prune(method, kernels, mask, targets, rng=None, n_of_m=None, units=None):
  """Applies pruning method ``method`` by name to reach ``targets``; with ``n_of_m`` = (N, M)
  to keep N of every M weights along each kernel's input axis (--structure=N:M), with
  ``units`` ({layer: units kept}) to keep whole units (--structure=unit)."""
  if method not in METHODS:
    raise ValueError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
  return METHODS[method](kernels, mask, targets, rng, n_of_m, units)
