"""Cheaper tickets: saliency scores for pruning at initialization, and early-bird detection.

Pure functions from a Keras model at initialization (plus data where needed) to per-layer
SCORES, ``{layer name: numpy array shaped like the kernel}``, such that keeping the highest
scores per group (``pruning._by_group`` with ``targets = [(layer names, keep count)]``, as
``pruning.magnitude`` does) yields the mask of the method:

- ``snip_scores``: SNIP, |g ⊙ θ| (Lee et al. 2019).
- ``grasp_scores``: GraSP, θ ⊙ Hg, i.e. minus the paper's S(-θ) = -θ ⊙ Hg (Wang et al. 2020).
- ``synflow_scores`` / ``synflow_masks``: data-free iterative SynFlow (Tanaka et al. 2020).
- ``mask_hamming`` and ``EarlyBird``: early-bird ticket detection (You et al. 2020).

Models. Every function takes either a plain model (its Dense and Conv2D kernels are the
prunable ones, all unmasked) or a wrapped model from ``ticket.wrap`` (the wrappers' kernels
are the prunable ones, under the wrappers' current masks). A wrapped model is scored through
``tfmot.sparsity.keras.strip_pruning``, which shares the inner layers' variables, after
``ticket.apply_masks`` (idempotent: it is what the wrapper does on every forward pass), so the
network scored is exactly the masked network the wrapped model computes, with pruned weights
zero. Nothing else about the model is changed: SNIP and GraSP only read the variables, and
SynFlow works on a copy of the network.

Forward passes use ``training=False`` (our models have no dropout or batch norm). Labels are
sparse class indices; the loss is the mean softmax cross-entropy of the logits.
"""
import collections
import itertools

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from lth_tf import pruning, ticket


# ---------------------------------------------------------------------------------------------
# Shared plumbing

def _plain(model):
  """(plain model computing what ``model`` computes, {layer: mask} or None if unwrapped).

  For a wrapped model the plain model shares the inner layers' variables, and the masks have
  just been applied to them.
  """
  if ticket.wrappers(model):
    ticket.apply_masks(model)
    return tfmot.sparsity.keras.strip_pruning(model), ticket.get_masks(model)
  return model, None


def _kernels(plain, names=None):
  """{layer name: kernel variable} of the prunable (Dense, Conv2D) layers, in model order."""
  out = {l.name: l.kernel for l in plain.layers
         if isinstance(l, (keras.layers.Dense, keras.layers.Conv2D))}
  if names is not None:
    out = {n: out[n] for n in names}
  return out


def _prepare(model):
  """(plain model, {layer: kernel variable}, {layer: mask}) for scoring ``model``."""
  plain, mask = _plain(model)
  kernels = _kernels(plain, None if mask is None else list(mask))
  if mask is None:
    mask = {n: np.ones(v.shape, np.float32) for n, v in kernels.items()}
  return plain, kernels, mask


def _batches(x, y, batches, batch_size):
  """The first ``batches`` consecutive batches of ``batch_size`` examples of (x, y)."""
  if batches < 1 or batch_size < 1:
    raise ValueError("batches and batch_size must be at least 1")
  if len(x) != len(y):
    raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
  if len(x) < batches * batch_size:
    raise ValueError(f"{batches} batches of {batch_size} need {batches * batch_size} examples; "
                     f"got {len(x)}")
  for b in range(batches):
    yield x[b * batch_size:(b + 1) * batch_size], y[b * batch_size:(b + 1) * batch_size]


def _loss(plain, x, y, temperature=1.0):
  """Mean softmax cross-entropy of ``plain``'s logits (divided by ``temperature``) on (x, y)."""
  x = tf.convert_to_tensor(x)
  if x.dtype != plain.inputs[0].dtype:
    x = tf.cast(x, plain.inputs[0].dtype)
  logits = plain(x, training=False)
  if temperature != 1.0:
    logits = logits / tf.cast(temperature, logits.dtype)
  return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.cast(y, tf.int64), logits=logits))


def _gradient(plain, variables, x, y, batches, batch_size, temperature=1.0):
  """Σ over batches of ∇ (mean loss of the batch) w.r.t. ``variables`` (list of tensors)."""
  total = [tf.zeros_like(v) for v in variables]
  for xb, yb in _batches(x, y, batches, batch_size):
    with tf.GradientTape() as tape:
      loss = _loss(plain, xb, yb, temperature)
    total = [t + g for t, g in zip(total, tape.gradient(loss, variables))]
  return total


def dense_gradients(model, x, y):
  """{layer: ∂L/∂W} of a wrapped model's prunable kernels on one batch (x, y), pruned entries
  included: the wrapper multiplies its kernel variable by the mask by assignment before the
  forward pass reads it, so the gradient with respect to that variable is the dense one (what
  RigL grows by). L is the mean cross-entropy at ``training=False`` (no batch-norm statistics
  move). Compiled once per model and kept on it (so it goes when the model goes)."""
  fn = model.__dict__.get("_lth_dense_gradients")
  if fn is None:
    kernels = {n: w.pruning_vars[0][0] for n, w in ticket.wrappers(model).items()}

    @tf.function
    def fn(x, y):
      with tf.GradientTape() as tape:
        logits = model(tf.cast(x, model.inputs[0].dtype), training=False)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(y, tf.int64), logits=logits))
      return tape.gradient(loss, kernels)
    object.__setattr__(model, "_lth_dense_gradients", fn)  # past Keras's attribute tracking
  return {n: g.numpy() for n, g in fn(tf.constant(x), tf.constant(y)).items()}


# ---------------------------------------------------------------------------------------------
# SNIP

def snip_scores(model, x, y, batches=1, batch_size=100):
  """SNIP connection sensitivity |g ⊙ θ| per prunable kernel (Lee et al. 2019).

  g is the gradient of the mean softmax cross-entropy w.r.t. the kernel, summed over
  ``batches`` consecutive batches of ``batch_size`` examples of (x, y) (gradients are summed
  first, then multiplied by θ and made absolute, as when the gradient accumulates over
  batches). It is the gradient of the loss w.r.t. the paper's connection variables c at c = 1,
  since ∂L(c ⊙ θ)/∂c = g ⊙ θ. The paper's normalisation by the sum of all scores is left out:
  it scales every score alike and so never changes which weights are kept.

  For a wrapped model the gradient is that of the masked network (pruned weights are zero,
  so their score is 0). Returns {layer: float32 array shaped like the kernel}; keep the
  largest.
  """
  plain, kernels, _ = _prepare(model)
  names, variables = list(kernels), list(kernels.values())
  grads = _gradient(plain, variables, x, y, batches, batch_size)
  return {n: np.abs((g * v).numpy()).astype(np.float32)
          for n, g, v in zip(names, grads, variables)}


# ---------------------------------------------------------------------------------------------
# GraSP

def hessian_gradient_product(model, x, y, batches=1, batch_size=100, temperature=1.0):
  """{layer: Hg}: the Hessian of the loss times its gradient, over the prunable kernels.

  The loss is L = Σ over ``batches`` batches of the batch's mean cross-entropy (logits
  divided by ``temperature``); g = ∇L and H = ∇²L are taken w.r.t. the prunable kernels only
  (biases held fixed), as in GraSP's reference code. For a wrapped model g is the masked
  network's gradient times the mask (the direction in which the surviving weights move).

  Hg is computed FORWARD-OVER-BACKWARD: a ``tf.autodiff.ForwardAccumulator`` with primals the
  kernel variables and tangents g wraps a ``tf.GradientTape`` computing ∇L_b per batch; the
  accumulator's JVP of that gradient is H_b g, and Hg = Σ_b H_b g.
  """
  plain, kernels, mask = _prepare(model)
  names, variables = list(kernels), list(kernels.values())
  g = _gradient(plain, variables, x, y, batches, batch_size, temperature)
  g = [gi * tf.cast(mask[n], gi.dtype) for n, gi in zip(names, g)]
  hg = [tf.zeros_like(v) for v in variables]
  for xb, yb in _batches(x, y, batches, batch_size):
    with tf.autodiff.ForwardAccumulator(primals=variables, tangents=g) as acc:
      with tf.GradientTape() as tape:
        loss = _loss(plain, xb, yb, temperature)
      grads = tape.gradient(loss, variables)
    hg = [h + acc.jvp(gr) for h, gr in zip(hg, grads)]
  return {n: h.numpy() for n, h in zip(names, hg)}


def grasp_scores(model, x, y, batches=1, batch_size=100, temperature=1.0):
  """GraSP scores θ ⊙ Hg per prunable kernel (Wang et al. 2020); keep the LARGEST.

  Sign convention. The paper scores S(-θ) = -θ ⊙ Hg (the change in gradient norm, to first
  order, when θ is removed) and REMOVES the weights with the highest S(-θ) (Algorithm 1:
  τ = the (1-p) percentile of S, keep m = S(-θ) < τ), keeping those whose removal reduces
  gradient flow least. This function returns -S(-θ) = +θ ⊙ Hg, so that keeping the largest
  returned scores (``pruning._by_group``) keeps exactly the weights with the smallest S(-θ)
  and so implements GraSP. Scores are signed; pruned weights of a wrapped model score 0 and
  are excluded by the mask anyway.

  ``temperature`` divides the logits (the reference code uses 200; the paper's definition, and
  the default here, is 1). Hg: see ``hessian_gradient_product`` (forward-over-backward).
  """
  hg = hessian_gradient_product(model, x, y, batches, batch_size, temperature)
  _, kernels, _ = _prepare(model)
  return {n: (kernels[n].numpy() * hg[n]).astype(np.float32) for n in hg}


# ---------------------------------------------------------------------------------------------
# SynFlow

class _SynflowNet:
  """A copy of a model with every parameter replaced by its absolute value, and the input.

  The copy has its own variables, so scoring never touches the original model. Following
  the paper ("linearize": |θ| for all parameters), biases become |b| too; they are zero at
  our initialization, which makes the network positively homogeneous in each layer's weights
  and the per-layer score sums equal to R (conservation).

  Input. The all-ones input must reach the first weight layer as ones. Our models take uint8
  images and rescale them by 1/255 in their first layer (``scale``), so when the layer after
  the model's input is a ``Rescaling`` the copy is cut there: the network scored is the
  sub-model from the rescaling layer's output (float32 ones of shape (1, *image shape)) to
  the logits. Feeding ones through the uint8 input instead would give a 1/255 input; for a
  bias-free network that scales every score alike, but it is not the paper's input. (Feeding
  255 as uint8 happens to give exactly 1.0 in float32; the cut does not rely on that.) Models
  without a leading Rescaling get float ones of their input shape, cast to the input dtype.
  """

  def __init__(self, model):
    plain, self.kernels_of_model, mask = _prepare(model)
    self.start_mask = mask
    net = keras.models.clone_model(plain)
    net.set_weights([np.abs(w) for w in plain.get_weights()])
    self.abs_kernels = {n: np.abs(v.numpy()) for n, v in self.kernels_of_model.items()}
    self.kernels = _kernels(net, list(self.abs_kernels))
    first = net.layers[1] if len(net.layers) > 1 else None
    if isinstance(first, keras.layers.Rescaling) and first.input is net.inputs[0]:
      net = keras.Model(first.output, net.outputs)
      self.ones = tf.ones((1, *first.output.shape[1:]), first.output.dtype)
    else:
      self.ones = tf.cast(tf.ones((1, *net.inputs[0].shape[1:])), net.inputs[0].dtype)
    self.net = net

  def scores(self, mask):
    """({layer: |θ ⊙ ∂R/∂θ|} with θ = |θ0| ⊙ mask, R)."""
    for n, v in self.kernels.items():
      v.assign((self.abs_kernels[n] * mask[n]).astype(v.dtype.as_numpy_dtype))
    variables = list(self.kernels.values())
    with tf.GradientTape() as tape:
      r = tf.reduce_sum(self.net(self.ones, training=False))
    grads = tape.gradient(r, variables)
    return ({n: np.abs((g * v).numpy()) for n, g, v in zip(self.kernels, grads, variables)},
            float(r.numpy()))


def synflow_scores(model, mask=None):
  """One SynFlow scoring pass: {layer: |θ ⊙ ∂R/∂θ|} with R = 1ᵀ(∏|W_l|)1 (Tanaka et al. 2020).

  R is the sum of the logits of the network with all parameters replaced by their absolute
  values and kernels multiplied by ``mask`` (default: the wrapped model's current masks, or
  all ones for a plain model), on an all-ones input of batch 1 (see ``_SynflowNet`` for how
  ones pass our uint8 rescaling layer). ∂R/∂θ is by reverse mode (``tf.GradientTape``). Data
  free; the model is not modified. For bias-free (or zero-bias) networks each layer's scores
  sum to R. Keep the largest.
  """
  net = _SynflowNet(model)
  return net.scores(net.start_mask if mask is None else mask)[0]


def _schedule(start, final, iterations):
  """Keep counts for steps 1..iterations: start·(final/start)^(k/iterations), ending at final."""
  if final > start:
    raise ValueError(f"cannot keep {final} weights: only {start} survive")
  counts, previous = [], start
  for k in range(1, iterations + 1):
    c = int(round(start * (final / start) ** (k / iterations))) if start else 0
    previous = min(previous, max(final, c))
    counts.append(previous)
  counts[-1] = final
  return counts


def synflow_masks(model, targets, iterations=100, mask=None):
  """Iterative SynFlow masks meeting ``targets`` exactly: {layer: 0/1 float32 mask}.

  ``targets`` is [(layer names tuple, keep count)], as for ``pruning.magnitude``. Starting
  from ``mask`` (default: the wrapped model's current masks, or all ones), each round k =
  1..``iterations`` re-scores the network under the current mask (``synflow_scores``) and
  keeps, per group, the highest-scoring survivors, round(c0 · (keep/c0)^(k/iterations)) of
  them, where c0 is the group's count at the start: the paper's exponential schedule, keep
  fraction (final keep fraction)^(k/iterations) from a dense start. The last round keeps
  exactly ``keep``. Layers in no group keep their starting mask. Pruned weights score 0 and
  never return. The model is not modified (scoring runs on a copy with its own variables).
  """
  if iterations < 1:
    raise ValueError("iterations must be at least 1")
  net = _SynflowNet(model)
  current = {n: np.asarray(m, np.float32)
             for n, m in (net.start_mask if mask is None else mask).items()}
  schedules = [_schedule(int(sum((current[n] > 0).sum() for n in names)), int(k), iterations)
               for names, k in targets]
  for step in range(iterations):
    scores, _ = net.scores(current)
    step_targets = [(names, s[step]) for (names, _), s in zip(targets, schedules)]
    current = {**current, **pruning._by_group(scores, current, step_targets)}
  return current


# ---------------------------------------------------------------------------------------------
# Early-bird tickets

def _pooled_counts(a, b, *counts):
  """Each of ``counts`` (functions of two boolean kept-arrays to a count) summed over the
  layers of masks ``a`` and ``b``, which must have the same layers and shapes."""
  if set(a) != set(b):
    raise ValueError(f"masks cover different layers: {sorted(a)} vs {sorted(b)}")
  totals = [0] * len(counts)
  for n in a:
    x, y = np.asarray(a[n]) > 0, np.asarray(b[n]) > 0
    if x.shape != y.shape:
      raise ValueError(f"layer {n!r}: shapes {x.shape} and {y.shape} differ")
    totals = [t + int(count(x, y)) for t, count in zip(totals, counts)]
  return totals


def mask_hamming(a, b):
  """Normalised Hamming distance: the fraction of all mask positions where ``a`` and ``b``
  differ (kept vs pruned), pooled over layers. Masks are {layer: array} with the same layers
  and shapes."""
  differ, total = _pooled_counts(a, b, lambda x, y: np.count_nonzero(x != y),
                                 lambda x, y: x.size)
  return differ / total if total else 0.0


def mask_jaccard_distance(a, b):
  """1 − IoU of the kept weights of two masks, pooled over layers: the fraction of the weights
  kept by either mask that only one keeps. Unlike ``mask_hamming`` it is relative to what is
  kept, so ε means the same at every sparsity (two masks keeping 3% each can differ in every
  kept weight and still be within 0.06 of each other by Hamming distance). 0 for two empty
  masks."""
  both, either = _pooled_counts(a, b, lambda x, y: np.count_nonzero(x & y),
                                lambda x, y: np.count_nonzero(x | y))
  return 1.0 - both / either if either else 0.0


MASK_DISTANCES = {"jaccard": mask_jaccard_distance, "hamming": mask_hamming}


class EarlyBird:
  """Early-bird ticket detector (You et al. 2020, "Drawing Early-Bird Tickets").

  Feed it the mask drawn after each epoch (e.g. magnitude pruning of the current weights to
  the target): ``update(mask)`` keeps the last ``window`` masks in a FIFO queue and returns
  True once the queue is full and the MAXIMUM distance among the masks in the queue is below
  ``epsilon`` (the paper's rule with ``distance="hamming"``, ``mask_hamming``; l = 5, ε = 0.1;
  ``"jaccard"``, ``mask_jaccard_distance``, measures it relative to the kept weights).

  "Maximum distance in the queue" is taken over ALL pairs of queued masks, so it implies both
  that every consecutive pair of the last ``window`` masks is closer than ``epsilon`` and
  that the newest mask is closer than ``epsilon`` to each older one (the reference code's
  check, which allows distance == ε). ``distances`` holds the last computed pairwise
  distances {(i, j): d} (indices into the queue, oldest first); ``max_distance`` their
  maximum (None until the queue is full).
  """

  def __init__(self, epsilon=0.1, window=5, distance="hamming"):
    if window < 2:
      raise ValueError("window must be at least 2")
    if distance not in MASK_DISTANCES:
      raise ValueError(f"distance={distance!r} is unknown; use one of {', '.join(MASK_DISTANCES)}")
    self.epsilon, self.window, self.distance = epsilon, window, MASK_DISTANCES[distance]
    self.masks = collections.deque(maxlen=window)
    self.distances, self.max_distance = {}, None

  def update(self, mask):
    """Queues ``mask``; True if the early-bird ticket has emerged."""
    self.masks.append({n: np.asarray(m) > 0 for n, m in mask.items()})
    if len(self.masks) < self.window:
      return False
    self.distances = {(i, j): self.distance(self.masks[i], self.masks[j])
                      for i, j in itertools.combinations(range(self.window), 2)}
    self.max_distance = max(self.distances.values())
    return self.max_distance < self.epsilon
