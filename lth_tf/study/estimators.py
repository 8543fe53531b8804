"""Mutual-information estimators for the information plane, I(X;T) and I(T;Y) in bits, from a
layer's activations T on n distinct inputs X (a subset of the training set) and their labels Y.

Why more than binning: a ReLU layer is a deterministic function of X, and on n distinct inputs
with 100+ units every input gets its own binned pattern, so I(X;T) = log2 n and I(T;Y) = H(Y)
throughout training: the true value of that quantity, so no better estimate of it can move.
The quantity itself must change:

- ``noisy_kde``: I(X; T+Z) and I(T+Z; Y) with Z ~ N(0, σ²I) (Saxe et al. 2018; Goldfeld et al.
  2019's noisy networks): T+Z given X is a Gaussian at t(x), so T+Z is a mixture of n
  Gaussians, and Kolchinsky & Tracey (2017)'s pairwise-distance bounds give I(X;T+Z) =
  −mean_i log mean_j exp(−D_ij) with D_ij the KL divergence ‖t_i − t_j‖²/2σ² (an upper bound)
  or the Bhattacharyya distance ‖t_i − t_j‖²/8σ² (a lower bound); I(T+Z;Y) = I(X;T+Z) −
  Σ_y p(y)·(the same within class y), a difference of two bounds: an estimate, not a bound.
  σ is ``sigma`` × the layer's spread at that measurement, the RMS distance of an example's activation vector from their mean (``spread``): the noise
  is relative to the layer's own scale, so a layer that only grows (ReLU weights scaling up)
  does not gain information by it, and one ``sigma`` means the same in every layer and at every
  iteration. Typical pairs then sit ~1/sigma² KL apart: sigma ≪ 1 saturates (every example
  distinguishable: log2 n), sigma ≫ 1 sees only the coarse geometry.
- ``adaptive_binning`` (Chelombiev et al. 2019): each unit's activations are put into ``bins``
  equal-mass bins (by rank over the subset; a value shared by many examples, as ReLU's zeros,
  is one bin), and T is the tuple of bin ids: I(X;T) = H(T), I(T;Y) = H(T) + H(Y)
  − H(T,Y). It is still a deterministic function of distinct inputs: with many units it
  saturates like equal-width binning (see results/README.md).
- ``kde`` (Saxe et al.'s, fixed noise variance 0.1 in activation units) and ``binning``
  (Shwartz-Ziv & Tishby's equal-width bins) stay as they were.
"""
import numpy as np

ESTIMATORS = ("noisy_kde", "adaptive_binning", "kde", "binning")
NOISY = ("noisy_kde",)
DEFAULT_SIGMAS = (0.1, 0.3, 1.0)


def problem(estimator, sigmas, bins):
  """Why ``estimator`` cannot run with noise levels ``sigmas`` and ``bins`` bins (one line
  naming the flag and what is accepted), or None. TensorFlow-free: the command line asks
  before importing it."""
  if estimator not in ESTIMATORS:
    return f"--estimator={estimator} is unknown; use one of {', '.join(ESTIMATORS)}"
  bad = [s for s in sigmas if not (isinstance(s, (int, float)) and 0 < s < float("inf"))]
  if estimator in NOISY and (bad or not sigmas):
    return (f"--sigma={','.join(map(str, sigmas))}: {bad[0] if bad else 'empty'} is not a "
            f"positive noise level; pass levels relative to the layer's spread, e.g. 0.1,0.3,1.0")
  if not (isinstance(bins, int) and bins >= 2):
    return f"--bins={bins} is invalid; pass at least 2 (e.g. 30)"
  return None


def entropy(counts):
  """Entropy in bits of a distribution given by counts."""
  p = np.asarray(counts, float)
  p = p[p > 0] / p.sum()
  return float(-(p * np.log2(p)).sum())


def discrete_information(t_ids, y):
  """(I(X;T), I(T;Y)) in bits for a discrete T that is a function of distinct inputs X."""
  t_ids, y = np.asarray(t_ids), np.asarray(y)
  h_t = entropy(np.unique(t_ids, return_counts=True)[1])
  h_y = entropy(np.unique(y, return_counts=True)[1])
  joint = np.unique(np.stack([t_ids, y]), axis=1, return_counts=True)[1]
  return h_t, h_t + h_y - entropy(joint)


def pattern_ids(binned):
  """One id per distinct row of ``binned`` (the tuple of a layer's bin ids)."""
  _, ids = np.unique(binned, axis=0, return_inverse=True)
  return ids.ravel()


def equal_width_bins(activations, bins=30):
  """Bin ids of equal-width bins over [min(0, a.min()), a.max()] (Shwartz-Ziv & Tishby)."""
  a = np.asarray(activations, np.float64).reshape(len(activations), -1)
  low, high = min(0.0, a.min()), a.max()
  return np.floor((a - low) / max(high - low, 1e-12) * bins).clip(0, bins - 1).astype(np.int64)


def equal_mass_bins(activations, bins=30):
  """Per unit, bin ids of ``bins`` equal-mass bins: an example's bin is its rank among the
  unit's values × bins / n, tied values taking the rank of the first of them, so a value
  shared by many examples (ReLU's zeros) is in one bin, and n distinct values fill every bin
  with n/bins (± 1) examples."""
  a = np.asarray(activations, np.float64).reshape(len(activations), -1)
  n = len(a)
  out = np.empty(a.shape, np.int64)
  for unit in range(a.shape[1]):
    values = a[:, unit]
    first_rank = np.searchsorted(np.sort(values), values, side="left")
    out[:, unit] = first_rank * bins // n
  return out


def spread(activations):
  """The RMS distance of an example's activation vector from the mean vector (0 for a layer
  whose activations do not vary)."""
  a = np.asarray(activations, np.float64).reshape(len(activations), -1)
  return float(np.sqrt(((a - a.mean(axis=0)) ** 2).sum(axis=1).mean()))


def _squared_distances(a):
  """‖a_i − a_j‖² for every pair, in float64 (n × n)."""
  sq = (a * a).sum(axis=1)
  return np.maximum(sq[:, None] + sq[None, :] - 2.0 * (a @ a.T), 0.0)


def _pairwise_term(d, scale):
  """−mean_i log mean_j exp(−d_ij · scale), in nats (logsumexp for stability)."""
  x = -d * scale
  top = x.max(axis=1, keepdims=True)
  log_mean = top[:, 0] + np.log(np.exp(x - top).mean(axis=1))
  return float(-log_mean.mean())


class _Distances:
  """A layer's pairwise squared distances, over all examples and within each class, computed
  once and shared by every noise level and bound."""

  def __init__(self, activations, y):
    a = np.asarray(activations, np.float64).reshape(len(activations), -1)
    y = np.asarray(y)
    self.all = _squared_distances(a)
    self.classes = [((y == c).mean(), _squared_distances(a[y == c])) for c in np.unique(y)]

  def information(self, noise_var, bound="upper"):
    """(I(X;T+Z), I(T+Z;Y)) in bits, Z ~ N(0, noise_var·I): Kolchinsky & Tracey's "upper"
    (KL, ‖Δ‖²/2σ²) or "lower" (Bhattacharyya, ‖Δ‖²/8σ²) bound."""
    if not noise_var > 0:
      raise ValueError(f"noise variance {noise_var} is not positive")
    scale = 1.0 / ((2.0 if bound == "upper" else 8.0) * noise_var)
    i_xt = _pairwise_term(self.all, scale)
    within = sum(p * _pairwise_term(d, scale) for p, d in self.classes)
    return i_xt / np.log(2), (i_xt - within) / np.log(2)


def pairwise_information(activations, y, noise_var, bound="upper"):
  """(I(X;T+Z), I(T+Z;Y)) in bits for Z ~ N(0, noise_var·I) (see _Distances.information)."""
  return _Distances(activations, y).information(noise_var, bound)


def noisy_kde(activations, y, sigmas):
  """[{"i_xt", "i_ty", "i_xt_lower", "i_ty_lower"}] in bits, one per relative noise level in
  ``sigmas`` (σ = sigma × spread)."""
  sigmas = [sigmas] if np.isscalar(sigmas) else list(sigmas)
  bad = [s for s in sigmas if not s > 0]
  if bad:
    raise ValueError(f"sigma={bad[0]} is not positive")
  s = spread(activations)
  if s == 0.0:  # every example maps to one point: T carries nothing
    return [dict(i_xt=0.0, i_ty=0.0, i_xt_lower=0.0, i_ty_lower=0.0) for _ in sigmas]
  distances = _Distances(activations, y)
  out = []
  for sigma in sigmas:
    var = (sigma * s) ** 2
    up, low = distances.information(var, "upper"), distances.information(var, "lower")
    out.append(dict(i_xt=up[0], i_ty=up[1], i_xt_lower=low[0], i_ty_lower=low[1]))
  return out


def estimate(estimator, activations, y, sigmas=DEFAULT_SIGMAS, bins=30):
  """[(sigma, {"i_xt", "i_ty", "i_xt_lower", "i_ty_lower"})] of one layer: one per noise
  level for noisy_kde, one with sigma nan otherwise (lower bounds nan where the estimator has
  none)."""
  if estimator == "noisy_kde":
    return list(zip(sigmas, noisy_kde(activations, y, sigmas)))
  if estimator == "kde":
    i_xt, i_ty = pairwise_information(activations, y, 0.1, "upper")
  elif estimator == "binning":
    i_xt, i_ty = discrete_information(pattern_ids(equal_width_bins(activations, bins)), y)
  elif estimator == "adaptive_binning":
    i_xt, i_ty = discrete_information(pattern_ids(equal_mass_bins(activations, bins)), y)
  else:
    raise ValueError(f"estimator={estimator!r} is unknown; use one of {', '.join(ESTIMATORS)}")
  nan = float("nan")
  return [(nan, dict(i_xt=i_xt, i_ty=i_ty, i_xt_lower=nan, i_ty_lower=nan))]


def gaussian_channel_information(a_matrix, cov_x, noise_var):
  """I(X; AX + Z) in bits for X ~ N(0, cov_x), Z ~ N(0, noise_var·I): ½ log2 det(I +
  A cov_x Aᵀ / noise_var), the closed form the tests hold the estimators to."""
  a = np.asarray(a_matrix, float)
  m = np.eye(a.shape[0]) + a @ np.asarray(cov_x, float) @ a.T / noise_var
  return 0.5 * float(np.linalg.slogdet(m)[1]) / np.log(2)
