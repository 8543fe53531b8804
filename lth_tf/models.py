"""The paper's networks as plain tf-keras functional models, built by name.

Knows no pruning. Every model takes uint8 images as TFDS yields them and scales them to
[0, 1] in its first layer, so the same model serves training and export. Layers that hold
weights have fixed names (conv1.., fc1.., output) so that weights and masks can be keyed by
layer name across models, rounds and files.
"""
import tf_keras as keras

# name -> (conv filters with "pool" markers, fully-connected widths); Frankle & Carbin 2019, Fig. 2.
ARCHITECTURES = {
    "lenet300_100": ((), (300, 100)),
    "conv2": ((64, 64, "pool"), (256, 256)),
    "conv4": ((64, 64, "pool", 128, 128, "pool"), (256, 256)),
    "conv6": ((64, 64, "pool", 128, 128, "pool", 256, 256, "pool"), (256, 256)),
}

INITIALIZERS = ("glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "lecun_normal",
                "truncated_normal", "orthogonal")


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
  whole network is a pure function of (name, shape, init, seed).
  """
  if name not in ARCHITECTURES:
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ARCHITECTURES)}")
  convs, fcs = ARCHITECTURES[name]
  layer_index = 0

  def kernel_init():
    nonlocal layer_index
    layer_index += 1
    return initializer(init, seed * 1000 + layer_index, init_scale)

  inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
  h = keras.layers.Rescaling(1.0 / 255, name="scale")(inputs)
  conv_count = 0
  for spec in convs:
    if spec == "pool":
      h = keras.layers.MaxPooling2D(2, name=f"pool{conv_count}")(h)
    else:
      conv_count += 1
      h = keras.layers.Conv2D(spec, 3, padding="same", activation="relu",
                              kernel_initializer=kernel_init(), name=f"conv{conv_count}")(h)
  h = keras.layers.Flatten(name="flatten")(h)
  for i, width in enumerate(fcs, start=1):
    h = keras.layers.Dense(width, activation="relu", kernel_initializer=kernel_init(),
                           name=f"fc{i}")(h)
  logits = keras.layers.Dense(num_classes, kernel_initializer=kernel_init(), name="output")(h)
  return keras.Model(inputs, logits, name=name)


def layer_kind(layer):
  """'conv', 'fc' or 'output': which pruning rate a layer of our models takes."""
  if isinstance(layer, keras.layers.Conv2D):
    return "conv"
  return "output" if layer.name == "output" else "fc"
