"""How a round's overall density is split across the prunable layers (--distribution).

Round r keeps the fraction (1 - --prune_rate)^r of all prunable weights; a distribution says
which share each layer gets (Evci et al. 2020, "Rigging the Lottery", Sec. 3 and App. J;
JaxPruner's sparsity distributions):

  uniform  every layer at the overall density;
  er       Erdős–Rényi (Mocanu et al. 2018): a layer's density proportional to
           (n_in + n_out) / (n_in * n_out) of its kernel's last two axes;
  erk      Erdős–Rényi-Kernel: proportional to the sum of all the kernel's dimensions over
           their product, so a convolution's kernel size counts too.

For er and erk, a layer whose density would exceed 1 stays dense and the factor is solved
again over the others, until none does. Every prunable layer shares the budget, the output
layer included (it is small, so er and erk keep it denser than the rest); the per-kind rates
(--prune_rate_conv, _fc, _output) are not used. A layer keeps round(density * size) weights,
at least one, so the total can differ from the overall target by the rounding of each layer.

No TensorFlow and no Keras: kernel shapes in, numbers out (lth_tf.config validates with them
before TensorFlow is imported).
"""
import math


def _er(shape):
  n_in, n_out = shape[-2], shape[-1]
  return (n_in + n_out) / (n_in * n_out)


def _erk(shape):
  return sum(shape) / math.prod(shape)


# {name: a kernel shape's raw score; a layer's density is the score times one common factor}
SCORES = {"uniform": lambda shape: 1.0, "er": _er, "erk": _erk}


def densities(name, shapes, density):
  """{layer: density in (0, 1]} of the distribution ``name`` over ``shapes`` ({layer: kernel
  shape}) at overall ``density``: the layers' kept weights add up to ``density`` of them all."""
  if name not in SCORES:
    raise ValueError(f"unknown distribution {name!r}; use one of {', '.join(SCORES)}")
  sizes = {n: math.prod(s) for n, s in shapes.items()}
  scores = {n: SCORES[name](s) for n, s in shapes.items()}
  budget = density * sum(sizes.values())
  dense = set()
  while True:
    rest = [n for n in shapes if n not in dense]
    left = budget - sum(sizes[n] for n in dense)
    if not rest or left <= 0:
      factor = 0.0
      break
    factor = left / sum(scores[n] * sizes[n] for n in rest)
    over = [n for n in rest if factor * scores[n] > 1.0]
    if not over:
      break
    dense.update(over)  # kept dense; solve again over the others
  return {n: 1.0 if n in dense else factor * scores[n] for n in shapes}


def raw_counts(name, shapes, density):
  """{layer: round(density * size)}: the weights each layer keeps before the floor of one."""
  return {n: int(round(d * math.prod(shapes[n])))
          for n, d in densities(name, shapes, density).items()}


def counts(name, shapes, density):
  """{layer: weights kept}: raw_counts with at least one weight per layer."""
  return {n: max(1, c) for n, c in raw_counts(name, shapes, density).items()}
