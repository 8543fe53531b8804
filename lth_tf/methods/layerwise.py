"""Iterative magnitude pruning, layer by layer (Frankle & Carbin 2019): each round keeps the
largest-|w| survivors of the previous round's trained ticket, per layer at its kind's rate
(--prune_rate_conv, --prune_rate_fc, --prune_rate_output)."""
from lth_tf.methods import base


class Layerwise(base.MaskFinder):
  name = "layerwise"
  label = "IMP"
  structures = True

  def find(self, run, trial, round_):
    from lth_tf import pruning
    prev = 0 if run.cfg.one_shot else round_ - 1
    trained = run.trained("ticket", trial, prev)
    return pruning.prune("magnitude", {n: trained[n][0] for n in run.mask_shapes},
                         run.mask("ticket", trial, prev), run.targets(round_),
                         n_of_m=run.cfg.n_of_m(), units=run.cfg.unit_counts(round_))


FINDER = Layerwise()
