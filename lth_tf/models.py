"""The paper's networks, and the deeper ones of its follow-ups, as plain tf-keras functional
models built by name.

Knows no pruning. Every model takes uint8 images as TFDS yields them and scales them to
[0, 1] in its first layer, so the same model serves training and export. Layers that hold
weights have fixed names (conv1.., fc1.., bn1.., output) so that weights and masks can be keyed
by layer name across models, rounds and files. Only Conv2D and Dense layers get pruned
(lth_tf.ticket wraps those), so batch norm's γ, β and statistics and all biases never are.
"""
import tf_keras as keras

from lth_tf.architectures import ARCHITECTURES, INITIALIZERS, PLAIN, RESNET, VGG  # noqa: F401

# Batch norm as PyTorch's (the papers' code): running averages with momentum 0.1, epsilon 1e-5.
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5


def initializer(name, seed, scale=1.0):
  """A seeded Keras kernel initializer by name (``scale`` is the truncated normal's stddev)."""
  if name == "truncated_normal":
    return keras.initializers.TruncatedNormal(stddev=scale, seed=seed)
  if name not in INITIALIZERS:
    raise ValueError(f"unknown initializer {name!r}; choose one of {', '.join(INITIALIZERS)}")
  return keras.initializers.get({"class_name": name, "config": {"seed": seed}})


def build(name, input_shape, num_classes=10, init="glorot_normal", seed=0, init_scale=1.0):
  """Builds model ``name`` with weights drawn from ``init`` seeded by ``seed``.

  Each layer gets its own seed (seed * 1000 + layer index) so that layers differ and the
  whole network is a pure function of (name, shape, init, seed). Batch norm starts at γ=1,
  β=0 (mean 0, variance 1), whatever the seed.
  """
  if name not in ARCHITECTURES:
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ARCHITECTURES)}")
  layer_index = 0

  def kernel_init():
    nonlocal layer_index
    layer_index += 1
    return initializer(init, seed * 1000 + layer_index, init_scale)

  inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
  h = keras.layers.Rescaling(1.0 / 255, name="scale")(inputs)
  if name in VGG:
    h = _vgg(h, VGG[name], kernel_init)
  elif name in RESNET:
    h = _resnet(h, *RESNET[name], kernel_init)
  else:
    h = plain_body(h, *PLAIN[name], kernel_init)
  logits = keras.layers.Dense(num_classes, kernel_initializer=kernel_init(), name="output")(h)
  return keras.Model(inputs, logits, name=name)


def plain_body(h, convs, fcs, kernel_init, after_flatten=None):
  """Frankle & Carbin's LeNet and Conv-2/4/6 up to the output layer, from a plan of conv
  widths with "pool" markers and fc widths (a compact network passes its own widths, and
  ``after_flatten``, a layer applied to the flattened features)."""
  conv_count = 0
  for spec in convs:
    if spec == "pool":
      h = keras.layers.MaxPooling2D(2, name=f"pool{conv_count}")(h)
    else:
      conv_count += 1
      h = keras.layers.Conv2D(spec, 3, padding="same", activation="relu",
                              kernel_initializer=kernel_init(), name=f"conv{conv_count}")(h)
  h = keras.layers.Flatten(name="flatten")(h)
  if after_flatten is not None:
    h = after_flatten(h)
  for i, width in enumerate(fcs, start=1):
    h = keras.layers.Dense(width, activation="relu", kernel_initializer=kernel_init(),
                           name=f"fc{i}")(h)
  return h


def _conv_bn(h, filters, size, stride, name, bn_name, kernel_init, relu=True):
  """Conv (no bias: batch norm's β is its bias) -> batch norm (-> ReLU)."""
  h = keras.layers.Conv2D(filters, size, strides=stride, padding="same", use_bias=False,
                          kernel_initializer=kernel_init(), name=name)(h)
  h = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                      name=bn_name)(h)
  return keras.layers.ReLU(name=f"{name}_relu")(h) if relu else h


def _vgg(h, plan, kernel_init):
  """VGG with batch norm: conv1..conv16 (bn1..bn16), pools, global average pooling."""
  conv_count = 0
  for spec in plan:
    if spec == "pool":
      h = keras.layers.MaxPooling2D(2, name=f"pool{conv_count}")(h)
    else:
      conv_count += 1
      h = _conv_bn(h, spec, 3, 1, f"conv{conv_count}", f"bn{conv_count}", kernel_init)
  return keras.layers.GlobalAveragePooling2D(name="avg_pool")(h)


def _resnet(h, stage_filters, blocks, kernel_init):
  """CIFAR ResNet with basic blocks (two 3x3 convs) and batch norm.

  Shortcuts are identities, except where a stage halves the map and widens it: there a 1x1
  stride-2 convolution with batch norm (He et al.'s option B, as in open_lth's cifar_resnet;
  it holds 2.6K of ResNet-20's 272K weights and is pruned like any conv layer). Option A's
  parameter-free zero-padding would need raw TF ops, which TF-MOT refuses in a model to wrap.
  Layers: conv1 (stem), conv2..conv<2n+1> along the blocks, conv<k>_shortcut for the
  projection beside block conv<k>, then global average pooling.
  """
  conv_count = 1
  h = _conv_bn(h, stage_filters[0], 3, 1, "conv1", "bn1", kernel_init)
  for stage, filters in enumerate(stage_filters):
    for block in range(blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      first, second = conv_count + 1, conv_count + 2
      conv_count += 2
      shortcut = h
      if stride != 1 or h.shape[-1] != filters:
        shortcut = _conv_bn(h, filters, 1, stride, f"conv{first}_shortcut",
                            f"bn{first}_shortcut", kernel_init, relu=False)
      y = _conv_bn(h, filters, 3, stride, f"conv{first}", f"bn{first}", kernel_init)
      y = _conv_bn(y, filters, 3, 1, f"conv{second}", f"bn{second}", kernel_init, relu=False)
      h = keras.layers.Add(name=f"add{second}")([y, shortcut])
      h = keras.layers.ReLU(name=f"add{second}_relu")(h)
  return keras.layers.GlobalAveragePooling2D(name="avg_pool")(h)


def layer_kind(layer):
  """'conv', 'fc' or 'output': which pruning rate a layer of our models takes."""
  if isinstance(layer, keras.layers.Conv2D):
    return "conv"
  return "output" if layer.name == "output" else "fc"
