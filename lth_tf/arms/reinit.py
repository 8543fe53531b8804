"""Control: the ticket's mask with fresh weights from the same initializer, drawn with a seed
of its own for every round (Frankle & Carbin's "random reinitialization")."""
from lth_tf import layout
from lth_tf.arms import base


class Reinit(base.Arm):
  name = "reinit"
  label = "random reinit"
  color = "C1"

  def start_weights(self, src, trial, round_, mask):
    seed = layout.arm_seed(src.cfg, self.name, trial, round_)
    return src.fresh_weights(seed), seed


ARM = Reinit()
