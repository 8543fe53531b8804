"""Control: a random mask with the ticket's per-layer counts, trained from where the ticket
starts (Frankle & Carbin's "random pruning")."""
import numpy as np

from lth_tf import layout
from lth_tf.arms import base


class RandomPrune(base.Arm):
  name = "random_prune"
  label = "random pruning"
  color = "C2"

  def mask(self, src, trial, round_):
    from lth_tf import masks, pruning
    counts = masks.counts(src.mask("ticket", trial, round_))
    rng = np.random.default_rng(self.mask_seed(src.cfg, trial, round_))
    return pruning.prune("random", src.ones(), None,  # positions from shapes alone
                         [((n,), c) for n, (c, _) in counts.items()], rng,
                         n_of_m=src.cfg.n_of_m(),  # with --structure, random N of every M
                         units=src.cfg.unit_counts(round_))  # or random whole units

  def mask_seed(self, cfg, trial, round_):
    return layout.arm_seed(cfg, self.name, trial, round_)


ARM = RandomPrune()
