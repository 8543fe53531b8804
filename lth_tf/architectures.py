"""The networks' plans as plain data, and the shapes of their prunable kernels without building
them.

No TensorFlow here, on purpose: the command line checks every flag (e.g. that --rounds does not
prune some layer past its last weight) before TensorFlow is imported, and that needs the
layers' sizes. lth_tf.models builds Keras models from the same plans; a test holds the two to
the same kernels, layer by layer.
"""

# name -> (conv filters with "pool" markers, fully-connected widths); Frankle & Carbin 2019, Fig. 2.
PLAIN = {
    "lenet300_100": ((), (300, 100)),
    "conv2": ((64, 64, "pool"), (256, 256)),
    "conv4": ((64, 64, "pool", 128, 128, "pool"), (256, 256)),
    "conv6": ((64, 64, "pool", 128, 128, "pool", 256, 256, "pool"), (256, 256)),
}
# CIFAR VGG-19 with batch norm (Frankle et al. 2019/2020 after Liu et al. 2019; open_lth's
# cifar_vgg_19): 3x3 conv -> BN -> ReLU, 2x2 max-pooling at the markers, then global average
# pooling (a 2x2 map on 32x32 inputs) and the 10-way output layer; no hidden dense layers.
VGG = {
    "vgg19": (64, 64, "pool", 128, 128, "pool", 256, 256, 256, 256, "pool",
              512, 512, 512, 512, "pool", 512, 512, 512, 512),
}
# CIFAR ResNet (He et al. 2016, Sec. 4.2): name -> (filters of the 3 stages, basic blocks per
# stage); ResNet-20 = 1 + 3·3·2 + 1 weight layers.
RESNET = {
    "resnet20": ((16, 32, 64), 3),
}
ARCHITECTURES = {**PLAIN, **VGG, **RESNET}  # every model by name

INITIALIZERS = ("glorot_normal", "glorot_uniform", "he_normal", "he_uniform", "lecun_normal",
                "truncated_normal", "orthogonal")


def kernel_shapes(name, input_shape, num_classes=10):
  """{prunable layer: (kernel shape, kind)} of model ``name`` on images of ``input_shape``.

  Kind is 'conv', 'fc' or 'output', the rate a layer takes (lth_tf.models.layer_kind). Every
  Conv2D and Dense layer is prunable, ResNet's 1x1 shortcut projections included.
  """
  if name not in ARCHITECTURES:
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(ARCHITECTURES)}")
  height, width, channels = input_shape
  out = {}

  def conv(layer, size, filters):
    nonlocal channels
    out[layer] = ((size, size, channels, filters), "conv")
    channels = filters

  if name in RESNET:
    stage_filters, blocks = RESNET[name]
    conv("conv1", 3, stage_filters[0])
    count = 1
    for stage, filters in enumerate(stage_filters):
      for block in range(blocks):
        first, second = count + 1, count + 2
        count += 2
        if (stage > 0 and block == 0) or channels != filters:
          out[f"conv{first}_shortcut"] = ((1, 1, channels, filters), "conv")
        conv(f"conv{first}", 3, filters)
        conv(f"conv{second}", 3, filters)
    features = channels  # global average pooling
  else:
    plan, fcs = (VGG[name], ()) if name in VGG else PLAIN[name]
    count = 0
    for spec in plan:
      if spec == "pool":  # 2x2 max-pooling, floor division of odd sizes
        height, width = height // 2, width // 2
      else:
        count += 1
        conv(f"conv{count}", 3, spec)
    features = channels if name in VGG else height * width * channels
    for i, units in enumerate(fcs, start=1):
      out[f"fc{i}"] = ((features, units), "fc")
      features = units
  out["output"] = ((features, num_classes), "output")
  return out


def pools(name):
  """How many times model ``name`` halves the image before its dense layers."""
  plan = VGG.get(name) or (PLAIN[name][0] if name in PLAIN else ())
  return plan.count("pool")
