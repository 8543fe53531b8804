"""Static sparse training (--pruning=static): a fixed random mask at round r's per-layer counts
(--distribution, default erk), trained once from θ0. The baseline dynamic sparse training
must beat: the same budget without moving a connection."""
from lth_tf.methods import dynamic as base


class Static(base.Dynamic):
  name = "static"
  label = "static sparse"  # masks_move stays False: no callback, no update


FINDER = Static()
