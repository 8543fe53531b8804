"""Compaction: the smallest dense network that computes what a masked ticket computes.

A mask keeps dense tensors, so a 3.6% ticket is as large and as slow as the dense network. Much
of what a mask removes, though, is whole: a hidden unit (a Dense output, a conv filter) with no
incoming weight computes a constant, relu(bias); one with no outgoing weight reaches nothing;
an input feature with no outgoing weight is never read. Compaction removes all of those:

- units that reach nothing (after the units they fed are gone: found backwards from the output);
- units with no incoming weight from anything that varies with the input compute a constant;
  their contribution is folded into the next layer's bias (exact for a Dense next layer, through
  a flatten and max-pooling too, since both keep a constant constant). A constant conv filter that
  feeds another convolution is kept (as a filter with no weights and its bias): zero padding
  makes its contribution vary at the borders, so no bias can hold it;
- input features (LeNet's pixels, the features a conv stack flattens into fc1) and input
  channels with no outgoing weight: the compact model still takes the whole input and gathers
  the kept ones in its first op, so callers do not change.

Only the plain chains (LeNet-300-100, Conv-2/4/6: conv, max-pooling, flatten, dense, all with
ReLU) compact: a batch norm or a residual sum would need its own algebra, and is refused.

`plan(model, input_shape, weights, masks)` finds what stays (numpy only); `build(plan)` makes
the compact tf-keras model; `expand(plan, compact_weights, start)` writes a compact network's
weights back into the full shapes (compact training trains the small network and records the
stage in the full one). Knows nothing of experiments, rounds or files.
"""
import dataclasses

import numpy as np

from lth_tf.architectures import ARCHITECTURES, PLAIN


class CompactionError(ValueError):
  """A network or a mask that cannot be compacted; the message is one line with the reason."""


@dataclasses.dataclass
class LayerPlan:
  """What one weight layer of the compact network holds.

  ``rows``: indices into the full kernel's input axis (input channels of a conv, input features
  of a Dense layer) that stay; ``units``: indices of the output units (filters) that stay;
  ``bias``: the full layer's bias with the constant units before it folded in (float32).
  """
  name: str
  kind: str  # "conv" or "dense"
  rows: np.ndarray
  units: np.ndarray
  bias: np.ndarray
  folded: int = 0      # constant units of the layer before whose contribution is in ``bias``
  constant_kept: int = 0  # of ``units``: filters with no incoming weight kept for a conv after


@dataclasses.dataclass
class Plan:
  """Everything ``build`` and ``expand`` need: the model's plan and each layer's LayerPlan.

  ``gather``: indices of the first weight layer's input (channels for a conv stack, pixels for
  LeNet) the compact model reads, None when it reads them all; ``flat_gather``: for a conv stack,
  the indices into the compact flattened map that the first Dense layer reads (None: all).
  """
  model: str
  input_shape: tuple
  layers: list
  gather: np.ndarray = None
  flat_gather: np.ndarray = None

  def layer(self, name):
    return next(l for l in self.layers if l.name == name)

  def summary(self, masks):
    """{layer: {units, kept, weights, folded, constant_kept}} and the inputs read:
    what the compact network keeps of the masked one."""
    out = {}
    for l in self.layers:
      out[l.name] = dict(units=int(masks[l.name].shape[-1]), kept=int(len(l.units)),
                         weights=int((masks[l.name] > 0).sum()),
                         folded=l.folded, constant_kept=l.constant_kept)
    first = self.layers[0]
    out["inputs"] = dict(total=int(_input_size(self)), kept=int(
        _input_size(self) if self.gather is None else len(self.gather)))
    if first.kind == "conv" and self.flat_gather is not None:
      out["flat_features_kept"] = int(len(self.flat_gather))
    return out


def _input_size(plan):
  h, w, c = plan.input_shape
  return c if plan.layers[0].kind == "conv" else h * w * c


def _chain(model, input_shape):
  """The plain model's weight layers in order: [(name, kind, pooled positions before flatten)]
  and the number of spatial positions the flatten sees (1 for LeNet: it flattens the image)."""
  if model not in PLAIN:
    accepted = ", ".join(PLAIN)
    known = model in ARCHITECTURES
    raise CompactionError(
        f"model {model!r} cannot be compacted ({'batch norm or residual sums' if known else 'unknown model'}); "
        f"compaction takes the plain chains: {accepted}")
  convs, fcs = PLAIN[model]
  h, w, _ = input_shape
  names, count = [], 0
  for spec in convs:
    if spec == "pool":
      h, w = h // 2, w // 2
    else:
      count += 1
      names.append((f"conv{count}", "conv"))
  names += [(f"fc{i}", "dense") for i in range(1, len(fcs) + 1)] + [("output", "dense")]
  return names, h * w


def _connections(kernel_mask, kind, positions, flatten_here):
  """[input unit, output unit] -> any kept weight. A conv's input units are channels; the
  first Dense after a conv stack has (position, channel) features, grouped here by channel."""
  m = kernel_mask > 0
  if kind == "conv":
    return m.any(axis=(0, 1))
  if flatten_here:
    return m.reshape(positions, -1, m.shape[-1]).any(axis=0)
  return m


def _incoming_sum(kernel, kind, positions, flatten_here):
  """Per (input unit, output unit): what a constant 1 on the input unit adds to the output's
  pre-activation (a Dense layer; through the flatten: summed over the positions)."""
  if flatten_here:
    return kernel.reshape(positions, -1, kernel.shape[-1]).sum(axis=0, dtype=np.float64)
  return kernel.astype(np.float64)


def plan(model, input_shape, weights, masks, fold=True):
  """The compact form of plain model ``model`` (on images of ``input_shape``) with trained
  ``weights`` ({layer: [kernel, bias]}) under ``masks`` ({layer: 0/1 array}).

  ``fold=False`` refuses a unit with no incoming weight whose constant reaches the output
  (compact training would otherwise train a folded bias in place of the unit's own bias and
  outgoing weights). CompactionError when the model is not a plain chain, the weights or masks
  do not fit it, or nothing connects the input to the output.
  """
  chain, positions = _chain(model, tuple(input_shape))
  for name, _ in chain:
    if name not in weights or name not in masks:
      raise CompactionError(f"no weights or mask for layer {name!r} of {model}; the layers "
                            f"are {', '.join(n for n, _ in chain)}")
    if np.shape(weights[name][0]) != np.shape(masks[name]):
      raise CompactionError(f"layer {name!r}: kernel {np.shape(weights[name][0])} and mask "
                            f"{np.shape(masks[name])} differ in shape")
  first_dense = next(i for i, (_, kind) in enumerate(chain) if kind == "dense")
  has_convs = first_dense > 0
  kernels = {n: np.asarray(weights[n][0], np.float32) * (np.asarray(masks[n]) > 0)
             for n, _ in chain}

  # Forward: which units vary with the input; fold the constant ones into the next bias.
  varying_in = np.ones(_connections(masks[chain[0][0]], chain[0][1], positions,
                                    False).shape[0], bool)
  const_in = np.zeros(0)  # relu(bias) of the previous layer's constant units (0 where varying)
  biases, varying, constant_kept, folded = {}, {}, {}, {}
  for i, (name, kind) in enumerate(chain):
    flatten_here = has_convs and i == first_dense
    conn = _connections(masks[name], kind, positions, flatten_here)
    bias = np.asarray(weights[name][1], np.float64).copy()
    folded[name] = 0
    if i > 0:
      prev = chain[i - 1][0]
      const_units = np.flatnonzero(~varying_in & (const_in != 0) & conn.any(axis=1))
      if kind == "dense":
        if len(const_units):
          if not fold:
            raise CompactionError(
                f"{len(const_units)} unit(s) of {prev} have no incoming weight but reach "
                f"{name} with a constant; a network with them cannot be trained compact")
          summed = _incoming_sum(kernels[name], kind, positions, flatten_here)
          bias += const_in[const_units] @ summed[const_units]
          folded[name] = len(const_units)
      else:  # a constant filter feeding a convolution stays (zero padding: not a bias)
        if len(const_units) and not fold:
          raise CompactionError(
              f"{len(const_units)} filter(s) of {prev} have no incoming weight but feed "
              f"{name}; a network with them cannot be trained compact")
        varying_in = varying_in.copy()
        varying_in[const_units] = True
        constant_kept[prev] = const_units
    biases[name] = bias
    varying[name] = conn[varying_in].any(axis=0)
    const_in = np.where(varying[name], 0.0, np.maximum(bias, 0.0))
    if i > 0:
      varying[chain[i - 1][0]] = varying_in  # incl. the constant filters kept above
    varying_in = varying[name]

  # Backward: keep what reaches a kept unit of the next layer (every class is kept).
  kept = {chain[-1][0]: np.ones(masks[chain[-1][0]].shape[-1], bool)}
  for i in range(len(chain) - 2, -1, -1):
    name, nxt = chain[i][0], chain[i + 1][0]
    flatten_here = has_convs and i + 1 == first_dense
    conn = _connections(masks[nxt], chain[i + 1][1], positions, flatten_here)
    kept[name] = varying[name] & conn[:, kept[nxt]].any(axis=1)
    if not kept[name].any():
      raise CompactionError(f"no unit of {name} connects the input to the output: the ticket "
                            f"computes a constant")
  first, first_kind = chain[0]
  input_conn = _connections(masks[first], first_kind, positions, False)
  read = input_conn[:, kept[first]].any(axis=1)
  if not read.any():
    raise CompactionError(f"no input reaches {first}: the ticket computes a constant")

  layers, rows = [], np.flatnonzero(read)
  flat_gather = None
  for i, (name, kind) in enumerate(chain):
    units = np.flatnonzero(kept[name])
    if has_convs and i == first_dense:  # rows are (position, channel) features
      channels = rows
      m = masks[name].reshape(positions, -1, masks[name].shape[-1]) > 0
      feature_used = m[:, channels][:, :, units].any(axis=2)  # (positions, kept channels)
      full_rows = (np.arange(positions)[:, None] * m.shape[1] + channels[None, :])
      rows = full_rows[feature_used]
      if not feature_used.all():
        flat_gather = np.flatnonzero(feature_used.reshape(-1))
    layers.append(LayerPlan(name, kind, rows, units, biases[name].astype(np.float32),
                            folded=folded[name],
                            constant_kept=int(np.isin(units, constant_kept.get(name, [])).sum())))
    rows = units
  gather = None if read.all() else np.flatnonzero(read)
  return Plan(model, tuple(input_shape), layers, gather, flat_gather)


def compact_weights(p, weights, masks):
  """{layer: [kernel, bias]} of the compact network: the masked kernels' kept rows and units
  (masked entries inside them stay zero), the folded biases."""
  out = {}
  for l in p.layers:
    k = np.asarray(weights[l.name][0], np.float32) * (np.asarray(masks[l.name]) > 0)
    if l.kind == "conv":
      k = k[:, :, l.rows][:, :, :, l.units]
    else:
      k = k[l.rows][:, l.units]
    out[l.name] = [k, l.bias[l.units]]
  return out


def compact_masks(p, masks):
  """The masks restricted to what the compact network keeps (all ones for unit tickets)."""
  out = {}
  for l in p.layers:
    m = np.asarray(masks[l.name])
    out[l.name] = m[:, :, l.rows][:, :, :, l.units] if l.kind == "conv" else m[l.rows][:, l.units]
  return out


def expand(p, compact, start):
  """Full-shape {layer: [kernel, bias]}: ``compact``'s values at the kept rows and units,
  ``start``'s biases elsewhere and zero kernels (what masked training leaves at units that
  neither receive nor send anything: no gradient reaches them)."""
  out = {}
  for l in p.layers:
    kernel = np.zeros_like(np.asarray(start[l.name][0]))
    bias = np.array(start[l.name][1], copy=True)
    if l.kind == "conv":
      kernel[np.ix_(np.arange(kernel.shape[0]), np.arange(kernel.shape[1]), l.rows, l.units)] = (
          compact[l.name][0])
    else:
      kernel[np.ix_(l.rows, l.units)] = compact[l.name][0]
    bias[l.units] = compact[l.name][1]
    out[l.name] = [kernel, bias]
  return out


def build(p, weights=None):
  """The compact tf-keras model of plan ``p`` (uint8 images in, logits out, like lth_tf.models;
  same layer names), with ``weights`` ({layer: [kernel, bias]} of compact shapes) if given."""
  import tf_keras as keras

  from lth_tf import models
  convs, fcs = PLAIN[p.model]
  widths = iter(len(l.units) for l in p.layers)
  convs = [spec if spec == "pool" else next(widths) for spec in convs]
  fcs = [next(widths) for _ in fcs]
  inputs = keras.Input(shape=p.input_shape, dtype="uint8", name="image")
  h = keras.layers.Rescaling(1.0 / 255, name="scale")(inputs)
  has_convs = p.layers[0].kind == "conv"
  if has_convs and p.gather is not None:
    h = gather_layer()(p.gather.tolist(), name="input_channels")(h)
  gather = p.flat_gather if has_convs else p.gather
  h = models.plain_body(h, convs, fcs, lambda: "glorot_uniform", after_flatten=None
                        if gather is None else gather_layer()(gather.tolist(),
                                                              name="kept_features"))
  logits = keras.layers.Dense(len(p.layer("output").units), name="output")(h)
  model = keras.Model(inputs, logits, name=f"{p.model}_compact")
  if weights is not None:
    for l in p.layers:
      layer = model.get_layer(l.name)
      for var, value in zip(layer.weights, weights[l.name]):
        var.assign(value)
  return model


_GATHER = []


def gather_layer():
  """The Keras layer that reads the kept entries of the last axis (input channels or
  flattened features): a class made on first use, so that planning imports no TensorFlow."""
  if not _GATHER:
    import tensorflow as tf
    import tf_keras as keras

    class Gather(keras.layers.Layer):
      def __init__(self, indices, **kwargs):
        super().__init__(**kwargs)
        self.indices = [int(i) for i in indices]

      def call(self, x):
        return tf.gather(x, tf.constant(self.indices, tf.int32), axis=-1)

      def get_config(self):
        return dict(super().get_config(), indices=self.indices)

    _GATHER.append(Gather)
  return _GATHER[0]
