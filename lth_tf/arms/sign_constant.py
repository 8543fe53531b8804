"""Control: the ticket's mask with the signs of its start weights (θ0, or θ_k) and one
magnitude per layer (that layer's standard deviation): do the signs alone carry the ticket?"""
import numpy as np

from lth_tf import layout
from lth_tf.arms import base


class SignConstant(base.Arm):
  name = "sign_constant"
  label = "signs, constant magnitude"
  color = "C3"

  def start_weights(self, src, trial, round_, mask):
    weights = src.rewind_weights(trial)
    return ({n: [np.sign(ws[0]) * ws[0].std(), *ws[1:]] if n in mask else ws
             for n, ws in weights.items()}, layout.theta0_seed(src.cfg, trial))


ARM = SignConstant()
