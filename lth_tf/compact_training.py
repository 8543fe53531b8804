"""Training that gets cheaper with sparsity: a unit-structured stage trained on its compact
network instead of the masked full-size one (--compact_training).

A --structure=unit mask removes whole units with all their incoming and outgoing weights, so
the masked network is the compact one (lth_tf.compact) plus units that receive and send nothing:
no gradient reaches them (Adam leaves them where they started; weight decay only touches kernels,
which the mask holds at zero). Training the compact network from the same start weights is
therefore the same training, in fewer multiply-adds; only the summation order inside the smaller
matrix products differs, so the numbers agree to float rounding, not bit for bit.

The stage is still recorded at full size: before training, the compact network is cut from the
full model's start weights (θ0⊙m); after, its weights are written back into the full model
(``write_back``), so weights.npz, the exported ticket and every study see what they always see.
Compiled compact networks are kept by shape: the arms of a round (ticket, reinit, random units)
keep as many units and share one.
"""
import numpy as np

from lth_tf import compact, ticket
from lth_tf.config import ConfigError


class CompactTraining:
  """The compact trainers of one experiment, and the stage being trained on one."""

  def __init__(self, cfg, input_shape, make_trainer):
    """``make_trainer(model)``: a trainer for a model with the experiment's optimizer."""
    self.cfg, self.input_shape, self.make_trainer = cfg, tuple(input_shape), make_trainer
    self._trainers = {}  # shape key -> trainer (of its compact model)
    self.plan = self.start = self.trainer = None

  def prepare(self, full_model):
    """The trainer of ``full_model``'s compact network, set to the full model's current
    (masked) weights with a fresh optimizer. ConfigError when the mask does not remove whole
    units (a kept unit missing some of its weights, or a unit sending a constant)."""
    start, mask = ticket.get_weights(full_model), ticket.get_masks(full_model)
    try:
      p = compact.plan(self.cfg.model, self.input_shape, start, mask, fold=False)
    except compact.CompactionError as e:
      raise ConfigError(f"--compact_training: {e}") from None
    partial = [n for n, m in compact.compact_masks(p, mask).items() if not (m > 0).all()]
    if partial:
      raise ConfigError(f"--compact_training: the mask keeps only some weights of kept units "
                        f"in {', '.join(partial)}; it trains whole-unit masks "
                        f"(--structure=unit)")
    key = tuple((l.name, len(l.rows), len(l.units)) for l in p.layers) + (
        _indices(p.gather), _indices(p.flat_gather))
    if key not in self._trainers:
      self._trainers[key] = self.make_trainer(compact.build(p))
    trainer = self._trainers[key]
    weights = compact.compact_weights(p, start, mask)
    for name, layer in ticket.weight_layers(trainer.model).items():
      for var, value in zip(layer.weights, weights[name]):
        var.assign(value)
    trainer.reset_optimizer()
    self.plan, self.start, self.trainer = p, start, trainer
    return trainer

  def write_back(self, full_model):
    """Writes the compact network's current weights into ``full_model`` at full size."""
    ticket.set_weights(full_model, compact.expand(self.plan, ticket.get_weights(
        self.trainer.model), self.start))


def _indices(array):
  return None if array is None else tuple(np.asarray(array).tolist())
