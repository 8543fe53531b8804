"""Saliency at initialization (SNIP, GraSP, SynFlow) and early-bird detection, on tiny models."""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from lth_tf import masks, models, pruning, saliency, ticket


def _dense_net(kernels, activation=None, biases=None, dtype="float32"):
  """Dense chain with the given kernels (and biases, default none), hidden ``activation``."""
  inputs = keras.Input(shape=(kernels[0].shape[0],), dtype=dtype)
  h = inputs
  for i, k in enumerate(kernels):
    use_bias = biases is not None
    layer = keras.layers.Dense(k.shape[1], use_bias=use_bias, dtype=dtype, name=f"d{i + 1}",
                               activation=activation if i < len(kernels) - 1 else None)
    h = layer(h)
    layer.set_weights([k, biases[i]] if use_bias else [k])
  return keras.Model(inputs, h)


def _softmax(z):
  e = np.exp(z - z.max())
  return e / e.sum()


W1 = np.array([[0.5, -1.0], [2.0, 0.3], [-0.7, 1.5]], np.float32)
W2 = np.array([[1.2, -0.4], [0.8, 0.9]], np.float32)


def test_snip_equals_closed_form_on_linear_net():
  model = _dense_net([W1, W2])
  x = np.array([[1.0, -2.0, 0.5]], np.float32)
  y = np.array([1])
  h = x[0] @ W1
  delta = _softmax(h @ W2) - np.eye(2)[1]  # dL/dlogits of softmax cross-entropy
  g2, g1 = np.outer(h, delta), np.outer(x[0], W2 @ delta)
  s = saliency.snip_scores(model, x, y, batch_size=1)
  np.testing.assert_allclose(s["d1"], np.abs(g1 * W1), rtol=1e-5)
  np.testing.assert_allclose(s["d2"], np.abs(g2 * W2), rtol=1e-5)
  # Summed over batches: gradients add before |.|.
  x2 = np.concatenate([x, -x]), np.array([1, 0])
  h2 = -x[0] @ W1
  delta2 = _softmax(h2 @ W2) - np.eye(2)[0]
  s2 = saliency.snip_scores(model, *x2, batches=2, batch_size=1)
  np.testing.assert_allclose(s2["d2"], np.abs((g2 + np.outer(h2, delta2)) * W2), rtol=1e-5)


def test_snip_on_wrapped_lenet_uses_masked_network():
  model = ticket.wrap(models.build("lenet300_100", (28, 28, 1)))
  kernels = ticket.get_kernels(model)
  rng = np.random.default_rng(0)
  mask = pruning.random(kernels, None, [((n,), k.size // 2) for n, k in kernels.items()], rng)
  ticket.set_masks(model, mask)
  x = rng.integers(0, 255, (8, 28, 28, 1)).astype(np.uint8)
  y = rng.integers(0, 10, 8)
  s = saliency.snip_scores(model, x, y, batches=2, batch_size=4)
  assert {n: v.shape for n, v in s.items()} == {n: k.shape for n, k in kernels.items()}
  for n in s:
    assert np.all(s[n][mask[n] == 0] == 0) and np.count_nonzero(s[n]) > 0.5 * mask[n].sum()
  # Same as a plain model holding θ ⊙ mask.
  plain = models.build("lenet300_100", (28, 28, 1), seed=5)
  for name, layer in ticket.weight_layers(plain).items():
    k, b = ticket.get_weights(model)[name]
    layer.set_weights([k * mask[name], b])
  s_plain = saliency.snip_scores(plain, x, y, batches=2, batch_size=4)
  for n in s:
    np.testing.assert_allclose(s[n], s_plain[n], rtol=1e-5, atol=1e-9)
  np.testing.assert_array_equal(ticket.get_masks(model)["fc1"], mask["fc1"])
  g = saliency.grasp_scores(model, x, y, batch_size=8)
  assert all(g[n].shape == kernels[n].shape and np.all(g[n][mask[n] == 0] == 0) for n in g)


def _grad64(model, x, y):
  with tf.GradientTape() as tape:
    logits = model(x)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
  kernels = [l.kernel for l in model.layers[1:]]
  return [g.numpy() for g in tape.gradient(loss, kernels)], kernels


def test_grasp_hessian_gradient_product_matches_finite_differences():
  rng = np.random.default_rng(1)
  ks = [rng.normal(size=(3, 4)), rng.normal(size=(4, 2))]
  bs = [rng.normal(size=4), rng.normal(size=2)]
  model = _dense_net(ks, activation="tanh", biases=bs, dtype="float64")
  x, y = rng.normal(size=(6, 3)), rng.integers(0, 2, 6)
  g, kernels = _grad64(model, x, y)
  theta = [k.numpy() for k in kernels]
  eps = 1e-5

  def grad_at(sign):
    for k, t, gi in zip(kernels, theta, g):
      k.assign(t + sign * eps * gi)
    return _grad64(model, x, y)[0]

  plus, minus = grad_at(1), grad_at(-1)
  for k, t in zip(kernels, theta):
    k.assign(t)
  fd = [(p - m) / (2 * eps) for p, m in zip(plus, minus)]
  hg = saliency.hessian_gradient_product(model, x, y, batch_size=6)
  for name, f in zip(["d1", "d2"], fd):
    np.testing.assert_allclose(hg[name], f, rtol=1e-6, atol=1e-9)
  # Two batches: g and H both sum over batches.
  hg2 = saliency.hessian_gradient_product(model, x, y, batches=2, batch_size=3)
  assert not np.allclose(hg2["d1"], hg["d1"])
  # Scores: +θ ⊙ Hg (keep the largest = remove the largest of the paper's -θ ⊙ Hg).
  s = saliency.grasp_scores(model, x, y, batch_size=6)
  for name, t, f in zip(["d1", "d2"], theta, fd):
    np.testing.assert_allclose(s[name], (t * f).astype(np.float32), rtol=1e-5, atol=1e-7)


def test_synflow_conservation_tiny_and_lenet():
  model = _dense_net([W1, W2, np.array([[0.3, -2.0, 1.0], [-0.5, 0.1, 0.7]], np.float32)],
                     activation="relu", biases=[np.zeros(2), np.zeros(2), np.zeros(3)])
  s = saliency.synflow_scores(model)
  r = np.ones(3) @ np.abs(W1) @ np.abs(W2) @ np.abs([[0.3, 2.0, 1.0], [0.5, 0.1, 0.7]]) @ np.ones(3)
  np.testing.assert_allclose([s[n].sum() for n in ("d1", "d2", "d3")], [r] * 3, rtol=1e-5)
  np.testing.assert_allclose(s["d3"], np.abs(np.outer(np.ones(3) @ np.abs(W1) @ np.abs(W2),
                                                      np.ones(3)) * [[0.3, 2, 1], [.5, .1, .7]]),
                             rtol=1e-5)
  wrapped = ticket.wrap(models.build("lenet300_100", (28, 28, 1)))
  mask = masks.ones_like(ticket.get_kernels(wrapped))
  mask["fc1"][:, ::3] = 0
  sums = [v.sum() for v in saliency.synflow_scores(wrapped, mask).values()]
  np.testing.assert_allclose(sums, [sums[0]] * 3, rtol=1e-4)


def test_synflow_conv_ones_reach_first_layer():
  # The cut at the rescaling layer feeds ones to conv1: equal to feeding 255 as uint8.
  model = models.build("conv2", (6, 6, 1), seed=3)
  s = saliency.synflow_scores(model)
  sums = [v.sum() for v in s.values()]
  np.testing.assert_allclose(sums, [sums[0]] * len(sums), rtol=1e-4)
  absolute = keras.models.clone_model(model)
  absolute.set_weights([np.abs(w) for w in model.get_weights()])
  r = absolute(np.full((1, 6, 6, 1), 255, np.uint8)).numpy().sum()
  np.testing.assert_allclose(sums[0], r, rtol=1e-4)


def test_synflow_masks_meet_targets_and_restore_weights():
  model = ticket.wrap(models.build("lenet300_100", (28, 28, 1)))
  start = masks.ones_like(ticket.get_kernels(model))
  start["output"][:5] = 0
  ticket.set_masks(model, start)
  before, masks_before = ticket.get_weights(model), ticket.get_masks(model)
  sizes = {n: k.size for n, k in ticket.get_kernels(model).items()}
  targets = [(("fc1", "fc2"), 5000), (("output",), 300)]
  out = saliency.synflow_masks(model, targets, iterations=10)
  counts = masks.counts(out)
  assert counts["fc1"][0] + counts["fc2"][0] == 5000 and counts["output"] == (300, 1000)
  assert counts["fc1"][0] > 0 and counts["fc2"][0] > 0
  assert all(m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0} for m in out.values())
  assert masks.is_subset(out, start)
  after = ticket.get_weights(model)
  for n in before:
    for a, b in zip(before[n], after[n]):
      np.testing.assert_array_equal(a, b)
  for n, m in ticket.get_masks(model).items():
    np.testing.assert_array_equal(m, masks_before[n])
  # Plain model, layerwise targets, one-shot vs iterative both exact.
  plain = models.build("lenet300_100", (28, 28, 1), seed=1)
  layerwise = pruning.layerwise_targets(sizes, dict.fromkeys(sizes, 0.5), 3)
  for it in (1, 4):
    m = saliency.synflow_masks(plain, layerwise, iterations=it)
    assert {n: int(v.sum()) for n, v in m.items()} == dict(
        (names[0], k) for names, k in layerwise)
  with pytest.raises(ValueError):
    saliency.synflow_masks(model, [(("output",), 1000)], iterations=2)


def test_synflow_masks_one_round_equals_top_scores():
  model = _dense_net([W1, W2], activation="relu", biases=[np.zeros(2), np.zeros(2)])
  s = saliency.synflow_scores(model)
  targets = [(("d1", "d2"), 4)]
  one = saliency.synflow_masks(model, targets, iterations=1)
  expect = pruning._by_group(s, masks.ones_like(s), targets)
  for n in one:
    np.testing.assert_array_equal(one[n], expect[n])


def test_mask_hamming():
  a = {"x": np.array([1, 0, 1, 1], np.float32), "y": np.ones((2, 3), np.float32)}
  b = {"x": np.array([1, 1, 1, 0], np.float32), "y": np.ones((2, 3), np.float32)}
  assert saliency.mask_hamming(a, a) == 0.0
  assert saliency.mask_hamming(a, b) == pytest.approx(2 / 10)
  with pytest.raises(ValueError):
    saliency.mask_hamming(a, {"x": a["x"]})


def test_mask_jaccard_distance_is_relative_to_the_kept_weights():
  a = {"x": np.array([1, 0, 1, 1], np.float32), "y": np.zeros((2, 3), np.float32)}
  b = {"x": np.array([1, 1, 1, 0], np.float32), "y": np.zeros((2, 3), np.float32)}
  assert saliency.mask_jaccard_distance(a, a) == 0.0
  # kept by either: 4 positions, by both: 2 -> 1 − 2/4 (Hamming would say 2/10)
  assert saliency.mask_jaccard_distance(a, b) == pytest.approx(0.5)
  empty = {"x": np.zeros(4, np.float32), "y": np.zeros((2, 3), np.float32)}
  assert saliency.mask_jaccard_distance(empty, empty) == 0.0
  with pytest.raises(ValueError):
    saliency.mask_jaccard_distance(a, {"x": a["x"]})


def test_at_high_sparsity_only_the_jaccard_rule_waits_for_the_mask_to_settle():
  """3% of 10,000 weights kept, and every window the kept set is redrawn at random: nothing
  has settled, yet the masks differ in at most 6% of all positions, so the Hamming rule
  (ε = 0.1) fires as soon as its window is full; the Jaccard rule (disjoint kept sets:
  distance ~1) never does, until the masks stop moving."""
  rng = np.random.default_rng(0)

  def random_mask():
    m = np.zeros(10_000, np.float32)
    m[rng.choice(10_000, 300, replace=False)] = 1
    return {"w": m.reshape(100, 100)}

  moving = [random_mask() for _ in range(6)]
  settled = [moving[-1]] * 5
  hamming = saliency.EarlyBird(0.1, 5, distance="hamming")
  jaccard = saliency.EarlyBird(0.1, 5, distance="jaccard")
  h = [hamming.update(m) for m in moving + settled]
  j = [jaccard.update(m) for m in moving + settled]
  assert h.index(True) == 4  # the first full window: vacuous
  assert j.index(True) == 9 and not any(j[:9])  # the first window of one mask (5..9)
  with pytest.raises(ValueError, match="distance"):
    saliency.EarlyBird(0.1, 5, distance="iou")


def test_early_bird_stops_once_masks_settle_and_not_before():
  rng = np.random.default_rng(0)
  n = 1000
  seq, current = [], rng.random(n) < 0.5
  for step in range(12):
    if step < 6:  # masks keep changing: 30% of positions flip each epoch
      flip = rng.random(n) < 0.3
      current = np.where(flip, ~current, current)
    elif step < 8:  # settling: 2% flips
      flip = rng.random(n) < 0.02
      current = np.where(flip, ~current, current)
    seq.append({"w": current.reshape(10, 100).astype(np.float32)})
  eb = saliency.EarlyBird(epsilon=0.1, window=5)
  fired = [eb.update(m) for m in seq]
  # Masks 5..11 differ by at most ~4% within the window; the first full quiet window is 5..9.
  first = fired.index(True)
  assert first == 9 and all(fired[first:]), (fired, eb.max_distance)
  assert eb.max_distance < 0.1 and len(eb.distances) == 10
  # Never fires before the queue is full, even for identical masks.
  eb = saliency.EarlyBird(epsilon=0.1, window=3)
  assert [eb.update(seq[-1]) for _ in range(4)] == [False, False, True, True]
