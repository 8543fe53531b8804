"""Compaction computes the masked ticket's function with fewer units: LeNet and Conv-2/4
tickets of several sparsities, and tickets with dead units made on purpose (units with no
incoming weight and a positive bias, whose constant must be folded into the next layer; units
with no outgoing weight; unread pixels; a constant filter that feeds a convolution, which no
bias can stand in for). Predictions identical, logits within float rounding."""
import numpy as np
import pytest

from lth_tf import compact, models, pruning, ticket

SHAPES = {"lenet300_100": (28, 28, 1), "conv2": (28, 28, 1), "conv4": (32, 32, 3),
          "conv6": (28, 28, 1)}


def network(name, seed=0):
  """(full model, {layer: [kernel, bias]}) with biases drawn around 0 (trained biases are not
  zero; zero biases would hide a missing fold)."""
  net = models.build(name, SHAPES[name], seed=seed)
  weights = ticket.get_weights(net)
  rng = np.random.default_rng(seed)
  for ws in weights.values():
    ws[1][...] = rng.normal(0.0, 0.3, ws[1].shape).astype(np.float32)
  return net, weights


def masked(net, weights, mask):
  """Sets ``net`` to ``weights`` ⊙ ``mask``: the masked ticket as lth_tf trains it."""
  for name, layer in ticket.weight_layers(net).items():
    layer.weights[0].assign(weights[name][0] * mask[name])
    layer.weights[1].assign(weights[name][1])
  return net


def images(name, n=300, seed=1):
  return np.random.default_rng(seed).integers(0, 256, (n,) + SHAPES[name], dtype=np.uint8)


def assert_same_function(name, weights, mask, fold=True):
  """Compacts, checks the compact model against the masked one; returns the plan."""
  net = masked(models.build(name, SHAPES[name]), weights, mask)
  p = compact.plan(name, SHAPES[name], weights, mask, fold=fold)
  small = compact.build(p, compact.compact_weights(p, weights, mask))
  x = images(name)
  want, got = net(x).numpy(), small(x).numpy()
  np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  return p


def magnitude_masks(weights, fraction):
  """Per-layer magnitude masks keeping ``fraction`` of each layer (the output layer twice as
  much, as the paper's half rate), from the kernels' magnitudes."""
  out = {}
  for n, ws in weights.items():
    k = np.abs(ws[0])
    keep = min(1.0, fraction * (2 if n == "output" else 1))
    threshold = np.quantile(k, 1 - keep)
    out[n] = (k >= threshold).astype(np.float32)
  return out


@pytest.mark.parametrize("name,fraction", [(n, f) for n in ("lenet300_100", "conv2", "conv4")
                                           for f in (0.5, 0.05, 0.005)] + [("conv6", 0.005)])
def test_magnitude_tickets_compact_to_the_same_function(name, fraction):
  _, weights = network(name)
  mask = magnitude_masks(weights, fraction)
  p = assert_same_function(name, weights, mask)
  if fraction == 0.005:  # this sparse, whole units die: the compact network is smaller
    assert sum(len(l.units) for l in p.layers) < sum(m.shape[-1] for m in mask.values())


def test_lenet_dead_units_made_on_purpose():
  _, weights = network("lenet300_100")
  mask = {n: np.ones_like(ws[0]) for n, ws in weights.items()}
  weights["fc1"][1][:40] = 0.5  # positive: relu(b) = 0.5 reaches fc2 as a constant
  mask["fc1"][:, :20] = 0       # fc1 units 0-19: no incoming weight -> folded into fc2's bias
  mask["fc2"][20:40, :] = 0     # fc1 units 20-39: no outgoing weight -> removed
  mask["fc1"][:100, :] = 0      # pixels 0-99 feed nothing -> not read
  weights["fc2"][1][0] = 0.7
  mask["fc2"][:, 0] = 0         # fc2 unit 0: a constant, folded into the output's bias
  p = assert_same_function("lenet300_100", weights, mask)
  fc1, fc2, out = p.layers
  assert len(fc1.units) == 260 and not np.isin(np.arange(40), fc1.units).any()
  assert fc2.folded == 20 and len(fc2.units) == 99 and out.folded == 1
  assert p.gather is not None and p.gather.tolist() == list(range(100, 784))
  assert fc1.rows.tolist() == list(range(100, 784))
  summary = p.summary(mask)
  assert summary["inputs"] == dict(total=784, kept=684)
  assert summary["fc1"]["kept"] == 260 and summary["fc2"]["folded"] == 20


def test_dropping_a_bias_only_unit_without_folding_changes_the_function():
  """The fixture can tell: fc1 units with no incoming weight but a positive bias move the
  logits, so a compaction that removed them without folding would fail the check above."""
  net, weights = network("lenet300_100")
  mask = {n: np.ones_like(ws[0]) for n, ws in weights.items()}
  weights["fc1"][1][:20] = 0.5
  mask["fc1"][:, :20] = 0
  with_constant = masked(net, weights, mask)(images("lenet300_100")).numpy()
  mask["fc2"][:20, :] = 0  # the same units, their outgoing weights gone too
  without = masked(net, weights, mask)(images("lenet300_100")).numpy()
  assert np.abs(with_constant - without).max() > 0.1


def test_conv2_dead_filters_made_on_purpose():
  _, weights = network("conv2")
  mask = {n: np.ones_like(ws[0]) for n, ws in weights.items()}
  weights["conv1"][1][0] = 0.3
  mask["conv1"][..., 0] = 0  # conv1 filter 0: constant 0.3, feeds conv2: kept, not folded
  weights["conv2"][1][0] = 0.2
  mask["conv2"][..., 0] = 0  # conv2 filter 0: constant, reaches fc1 through flatten: folded
  mask["fc1"].reshape(14 * 14, 64, 256)[:, 1, :] = 0  # conv2 filter 1: no outgoing weight
  mask["fc1"].reshape(14 * 14, 64, 256)[0, :, :] = 0  # nothing reads position (0, 0)
  p = assert_same_function("conv2", weights, mask)
  conv1, conv2, fc1 = p.layers[:3]
  assert len(conv1.units) == 64 and conv1.constant_kept == 1
  assert conv2.units.tolist() == list(range(2, 64)) and fc1.folded == 1
  # fc1 reads every kept channel at every position but the first
  assert len(fc1.rows) == (14 * 14 - 1) * 62 and p.flat_gather is not None
  assert len(p.flat_gather) == (14 * 14 - 1) * 62


def test_a_constant_filter_feeding_a_convolution_is_not_a_bias():
  """Why the constant conv1 filter above is kept: folding relu(b)·Σ kernel into conv2's bias
  is wrong at the zero-padded borders, so a compaction doing it would fail the check."""
  net, weights = network("conv2")
  mask = {n: np.ones_like(ws[0]) for n, ws in weights.items()}
  weights["conv1"][1][0] = 0.3
  mask["conv1"][..., 0] = 0
  masked(net, weights, mask)
  inner = models.build("conv2", SHAPES["conv2"])
  folded = {n: [ws[0] * mask[n], ws[1].copy()] for n, ws in weights.items()}
  folded["conv2"][1] += 0.3 * folded["conv2"][0][:, :, 0, :].sum(axis=(0, 1))
  folded["conv2"][0][:, :, 0, :] = 0
  for name, layer in ticket.weight_layers(inner).items():
    for var, value in zip(layer.weights, folded[name]):
      var.assign(value)
  x = images("conv2", 50)
  assert np.abs(net(x).numpy() - inner(x).numpy()).max() > 1e-3


def test_a_colour_input_reads_only_the_channels_it_uses():
  _, weights = network("conv4")
  mask = {n: np.ones_like(ws[0]) for n, ws in weights.items()}
  mask["conv1"][:, :, 1, :] = 0  # the green channel feeds nothing
  p = assert_same_function("conv4", weights, mask)
  assert p.gather.tolist() == [0, 2] and p.layers[0].rows.tolist() == [0, 2]


def test_unit_masks_compact_without_folding_and_expand_back():
  """--structure=unit masks: the compact network is dense (every weight of a kept unit kept),
  and expand() puts its weights back where the masked network holds them."""
  _, weights = network("conv2", seed=3)
  kernels = {n: ws[0] for n, ws in weights.items()}
  ones = {n: np.ones_like(k) for n, k in kernels.items()}
  mask = pruning.unit_masks({n: np.abs(k) for n, k in kernels.items()}, ones,
                            {"conv1": 20, "conv2": 30, "fc1": 100, "fc2": 40})
  p = assert_same_function("conv2", weights, mask, fold=False)
  assert [len(l.units) for l in p.layers] == [20, 30, 100, 40, 10]
  assert p.gather is None and p.flat_gather is None
  assert all((m > 0).all() for m in compact.compact_masks(p, mask).values())
  small = compact.compact_weights(p, weights, mask)
  back = compact.expand(p, small, weights)
  for n, ws in weights.items():
    np.testing.assert_array_equal(back[n][0], ws[0] * mask[n])
    np.testing.assert_array_equal(back[n][1], ws[1])
  # trained compact weights land on the kept rows and units, the start's biases stay elsewhere
  trained = {n: [k + 1.0, b + 1.0] for n, (k, b) in small.items()}
  back = compact.expand(p, trained, weights)
  for n, ws in weights.items():
    np.testing.assert_array_equal(back[n][0], (ws[0] + 1.0) * mask[n])
    kept = np.isin(np.arange(ws[1].shape[0]), p.layer(n).units)
    np.testing.assert_array_equal(back[n][1], np.where(kept, ws[1] + 1.0, ws[1]))


def test_refusals_are_one_line_and_say_what_is_accepted():
  _, weights = network("lenet300_100")
  mask = {n: np.ones_like(ws[0]) for n, ws in weights.items()}
  with pytest.raises(compact.CompactionError, match="plain chains: lenet300_100"):
    compact.plan("vgg19", (32, 32, 3), weights, mask)
  with pytest.raises(compact.CompactionError, match="kernel .* and mask .* differ"):
    compact.plan("lenet300_100", (28, 28, 1), weights, {**mask, "fc2": mask["fc2"][:5]})
  dead = {**mask, "fc2": np.zeros_like(mask["fc2"])}
  with pytest.raises(compact.CompactionError, match="computes a constant"):
    compact.plan("lenet300_100", (28, 28, 1), weights, dead)
  weights["fc1"][1][:10] = 1.0
  constant = {**mask, "fc1": mask["fc1"].copy()}
  constant["fc1"][:, :10] = 0
  with pytest.raises(compact.CompactionError, match="cannot be trained compact"):
    compact.plan("lenet300_100", (28, 28, 1), weights, constant, fold=False)
