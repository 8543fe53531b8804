"""What an arm of the experiment is: the ticket, or a control trained beside it.

An arm is one module holding one ``Arm`` subclass instance, ``ARM``, and one line in
``lth_tf.arms.registry``. The loop, the stage graph (and so Ray), plots, reports and the
properties study reach an arm only through this protocol; none of them compares its name.

An arm sees the experiment through ``src``, anything that can produce an experiment's
weights (the stage runner in lth_tf.experiment, or a study's view of a finished folder):
``cfg``; ``theta0(trial)``; ``rewind_weights(trial)`` (θ0, or θ_k with --rewind=iteration);
``trained(arm, trial, round)`` (a finished stage's weights.npz); ``fresh_weights(seed)`` (a
draw of the initializer); ``mask(arm, trial, round)`` (a stage's mask, found or read).
No TensorFlow at import time.
"""
from lth_tf import layout


class Arm:
  """The defaults are a control's: it trains at rounds 1.. beside the ticket, with the
  ticket's mask of its round, from where the ticket starts."""

  name = None
  label = None  # in figures and tables
  color = None  # matplotlib colour of its lines

  def needs(self, cfg, trial, round_):
    """The stages whose files this arm's stage at ``round_`` > 0 reads (its ticket)."""
    del cfg
    return [("ticket", trial, round_)]

  def mask(self, src, trial, round_):
    """The mask this arm trains at ``round_`` > 0 (written to its stage folder by the
    caller)."""
    return src.mask("ticket", trial, round_)

  def start_weights(self, src, trial, round_, mask):
    """(weights before masking, their seed) this arm starts ``round_`` from: the ticket's
    start (θ0, θ_k with --rewind=iteration, or with --rewind=none the previous ticket
    round's trained weights)."""
    del mask
    cfg = src.cfg
    if round_ > 0 and cfg.rewind == "none":
      return src.trained("ticket", trial, round_ - 1), layout.theta0_seed(cfg, trial)
    return (src.rewind_weights(trial) if round_ > 0 else src.theta0(trial),
            layout.theta0_seed(cfg, trial))

  def mask_seed(self, cfg, trial, round_):
    """The seed of this arm's random mask, or None when its mask is not random."""
    del cfg, trial, round_
    return None
