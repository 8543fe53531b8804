"""Sparse Evolutionary Training (--pruning=set; Mocanu et al. 2018): every --dst_interval
iterations each layer drops --dst_fraction of its active weights of smallest magnitude and
regrows as many at random positions, starting at zero."""
from lth_tf import dynamic
from lth_tf.methods import dynamic as base


class SET(base.Dynamic):
  name = "set"
  label = "SET"
  masks_move = True
  fraction_rule = staticmethod(dynamic.constant_fraction)

  def grow_scores(self, run, model, kernels, rng, iteration):
    return {n: rng.random(k.shape) for n, k in kernels.items()}


FINDER = SET()
