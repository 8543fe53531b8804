"""Dynamic sparse training's rules: how many connections move at an update, which are dropped
and where new ones grow. Pure numpy, no Keras: the methods in lth_tf/methods (set, rigl) apply
them between compiled training blocks.

At an update, each layer drops the ``k`` active weights of smallest magnitude and grows ``k``
inactive ones (the just-dropped included, as in RigL's code) of highest growth score: random
for SET (Mocanu et al. 2018), the magnitude of the dense gradient for RigL (Evci et al. 2020).
A grown weight starts at zero, so a layer's count of kept weights never changes.
"""
import math

import numpy as np


def constant_fraction(fraction, iteration, iterations, end):
  """SET's drop fraction: ``fraction`` at every update."""
  del iteration, iterations, end
  return fraction


def cosine_fraction(fraction, iteration, iterations, end):
  """RigL's drop fraction: ``fraction`` decayed with a cosine, (fraction / 2)(1 + cos(π t /
  T_end)), to zero at T_end = ``end`` · ``iterations``, and zero after."""
  stop = end * iterations
  if iteration >= stop:
    return 0.0
  return fraction / 2 * (1 + math.cos(math.pi * iteration / stop))


def _lowest(values, k):
  """The flat indices of the ``k`` lowest ``values``, ties to the lower index: the set a
  stable argsort's first ``k`` holds, in O(n) (np.partition), since an update runs over every
  weight of a layer."""
  if k <= 0:
    return np.zeros(0, np.int64)
  kth = np.partition(values, k - 1)[k - 1]
  below = np.flatnonzero(values < kth)
  return np.concatenate([below, np.flatnonzero(values == kth)[:k - below.size]])


def drop_and_grow(kernel, mask, grow_scores, fraction):
  """(new mask, connections moved) of one layer: drop round(``fraction`` · active) active
  weights of smallest |``kernel``|, grow as many inactive ones (after the drop) of highest
  ``grow_scores``; ties go to the lower flat index. The count of active weights is kept."""
  flat_mask = mask.ravel() > 0
  active = int(flat_mask.sum())
  k = min(int(round(fraction * active)), active, flat_mask.size - active)
  if k <= 0:
    return mask.astype(np.float32), 0
  magnitude = np.where(flat_mask, np.abs(kernel.ravel()), np.inf)
  dropped = _lowest(magnitude, k)
  after_drop = flat_mask.copy()
  after_drop[dropped] = False
  scores = np.where(after_drop, np.inf, -grow_scores.ravel().astype(np.float64))
  grown = _lowest(scores, k)  # the highest growth scores among the inactive
  new = after_drop.copy()
  new[grown] = True
  moved = int(np.sum(new & ~flat_mask))  # a dropped weight grown again has not moved
  return new.reshape(mask.shape).astype(np.float32), moved
