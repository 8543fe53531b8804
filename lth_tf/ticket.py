"""TF-MOT wrapping with a fixed mask, reading and writing weights and masks, and θ0.

TF-MOT's wrapper recomputes masks whenever its schedule fires; here the schedule never fires
(``begin_step`` 2**62), so a mask changes only when the project writes it. Two TF-MOT traps
shape this module: ``model.set_weights`` on a wrapped model resets the masks to ones, so
weights are always written through the inner layers' variables; and the wrapper masks by
assignment, so after writing weights we re-apply the mask at once.
"""
import tf_keras as keras
import tensorflow_model_optimization as tfmot

_NEVER = 2**62
# TF-MOT's public API does not export the wrapper class; we need it for isinstance checks.
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (  # noqa: E402
    PruneLowMagnitude)


def wrap(model):
  """A copy of ``model`` whose Dense and Conv2D layers carry TF-MOT pruning wrappers.

  The copy shares the original layers' variables (TF-MOT wraps the original layer objects).
  Masks start at ones and stay fixed until written with ``set_masks``.
  """
  schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=_NEVER)

  def clone(layer):
    if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
      return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
    return layer

  wrapped = keras.models.clone_model(model, clone_function=clone)
  for w in wrappers(wrapped).values():
    w.pruning_step.assign(0)  # the wrapper asserts step >= 1 after its own increment
  return wrapped


def wrappers(model):
  """{inner layer name: PruneLowMagnitude wrapper}, in model order."""
  return {l.layer.name: l for l in model.layers if isinstance(l, PruneLowMagnitude)}


def weight_layers(model):
  """{layer name: the (inner) layer} for every layer that holds weights, in model order."""
  out = {}
  for l in model.layers:
    inner = l.layer if isinstance(l, PruneLowMagnitude) else l
    if inner.weights:
      out[inner.name] = inner
  return out


def get_weights(model):
  """{layer name: [arrays]} of every weight-holding layer (masks and pruning state excluded)."""
  return {name: [v.numpy() for v in layer.weights] for name, layer in weight_layers(model).items()}


def get_kernels(model):
  """{layer name: kernel array} of the prunable layers."""
  return {name: w.pruning_vars[0][0].numpy() for name, w in wrappers(model).items()}


def get_masks(model):
  return {name: w.pruning_vars[0][1].numpy() for name, w in wrappers(model).items()}


def set_masks(model, mask):
  """Writes ``mask`` into the wrappers and zeroes the pruned weights at once."""
  for name, w in wrappers(model).items():
    w.pruning_vars[0][1].assign(mask[name])
  apply_masks(model)


def set_weights(model, weights):
  """Writes {layer: [arrays]} into the layers' variables, keeping the masks, then masks them."""
  for name, layer in weight_layers(model).items():
    for var, value in zip(layer.weights, weights[name]):
      var.assign(value)
  apply_masks(model)


def apply_masks(model):
  """W <- W * mask for every wrapper, now rather than at the next forward pass."""
  for w in wrappers(model).values():
    w.pruning_obj.weight_mask_op()


class RewindCallback(keras.callbacks.Callback):
  """Saves the weights a ticket is reset to, and resets a model to them under a mask.

  With ``rewind_iteration=0`` (the paper) it keeps θ0: the weights at the start of training,
  unless given them already (e.g. loaded from disk on resume). With ``rewind_iteration=k``
  (late resetting, Frankle et al. 2019) it keeps θ_k, captured at iteration k of the first
  training it sees; ``on_capture(weights)`` lets the caller persist them at once. It is the
  one place that knows the rewind point.
  """

  def __init__(self, weights=None, rewind_iteration=0, on_capture=None):
    super().__init__()
    self.weights, self.rewind_iteration, self.on_capture = weights, rewind_iteration, on_capture

  def _capture(self):
    self.weights = get_weights(self.model)
    if self.on_capture is not None:
      self.on_capture(self.weights)

  def on_train_begin(self, logs=None):
    if self.weights is None and self.rewind_iteration == 0:
      self._capture()

  def on_epoch_end(self, epoch, logs=None):
    if (self.weights is None and self.rewind_iteration
        and (logs or {}).get("iteration") == self.rewind_iteration):
      apply_masks(self.model)
      self._capture()

  def rewind(self, model, mask):
    """Sets ``model`` to the saved weights ⊙ ``mask``; the mask is written first."""
    if self.weights is None:
      raise RuntimeError("no rewind weights saved yet: train the dense round first")
    set_masks(model, mask)
    set_weights(model, self.weights)
