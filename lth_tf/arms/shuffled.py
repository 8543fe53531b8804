"""Control: the ticket's mask and the ticket's kept start values (θ0, or θ_k), randomly
permuted among the kept positions of each layer. It keeps the magnitude and sign distribution
of the kept weights and breaks which weight sits where: between the ticket and reinit, it
asks whether the values or their places matter (Frankle & Carbin's first version names
"rearranged" tickets; Frankle et al. 2021 shuffle within layers)."""
import numpy as np

from lth_tf import layout
from lth_tf.arms import base


class Shuffled(base.Arm):
  name = "shuffled"
  label = "ticket values, shuffled"
  color = "C4"

  def start_weights(self, src, trial, round_, mask):
    seed = layout.arm_seed(src.cfg, self.name, trial, round_)
    rng = np.random.default_rng(seed)
    out = {}
    for n, ws in src.rewind_weights(trial).items():
      if n in mask:
        kernel = ws[0].copy()
        kept = mask[n] > 0
        kernel[kept] = rng.permutation(kernel[kept])
        ws = [kernel, *ws[1:]]
      out[n] = ws
    return out, seed


ARM = Shuffled()
