"""The winning ticket (Frankle & Carbin 2019): the mask --pruning finds (the dense network at
round 0), trained from the weights it is rewound to (θ0; θ_k with --rewind=iteration; the
previous round's trained weights with --rewind=none)."""
from lth_tf.arms import base


class Ticket(base.Arm):
  name = "ticket"
  label = "winning ticket"
  color = "C0"

  def needs(self, cfg, trial, round_):
    from lth_tf.methods import registry
    need = list(registry.get(cfg.pruning).needs(cfg, trial, round_))
    if cfg.rewind == "iteration" and ("ticket", trial, 0) not in need:
      need.append(("ticket", trial, 0))  # θ_k, captured during the dense round
    return need

  def mask(self, src, trial, round_):
    from lth_tf.methods import registry
    return registry.get(src.cfg.pruning).find(src, trial, round_)


ARM = Ticket()
