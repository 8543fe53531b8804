"""A mask as a value: {layer name: 0/1 float32 array shaped like the layer's kernel}.

Pure numpy; knows no Keras. Saved as .npz with one array per layer.
"""
import numpy as np


def ones_like(kernels):
  """The dense mask for {layer: kernel}."""
  return {name: np.ones_like(k, dtype=np.float32) for name, k in kernels.items()}


def counts(mask):
  """{layer: (surviving, total)}."""
  return {name: (int(m.sum()), int(m.size)) for name, m in mask.items()}


def fraction_remaining(mask):
  """Overall fraction of prunable weights that survive (0..1)."""
  kept = sum(int(m.sum()) for m in mask.values())
  return kept / sum(m.size for m in mask.values())


def layer_fractions(mask):
  """{layer: fraction of that layer's weights that survive}."""
  return {name: float(m.sum() / m.size) for name, m in mask.items()}


def is_subset(inner, outer):
  """True if every weight kept by ``inner`` is also kept by ``outer``, layer by layer."""
  return all(not np.any((inner[n] > 0) & (outer[n] == 0)) for n in outer)


def to_bytes(mask):
  import io
  buf = io.BytesIO()
  np.savez_compressed(buf, **{n: m.astype(np.uint8) for n, m in mask.items()})
  return buf.getvalue()


def from_bytes(data):
  import io
  with np.load(io.BytesIO(data)) as z:
    return {n: z[n].astype(np.float32) for n in z.files}


def _layer_pairs(a, b):
  """[(a's layer, b's layer)] matched by name for two mask dicts; [(a, b)] for two arrays."""
  if isinstance(a, dict):
    if set(a) != set(b):
      raise ValueError(f"masks of different layers: {sorted(a)} vs {sorted(b)}")
    return [(np.asarray(a[n]) > 0, np.asarray(b[n]) > 0) for n in a]
  return [(np.asarray(a) > 0, np.asarray(b) > 0)]


def jaccard(a, b):
  """|A∩B| / |A∪B| of the kept weights of two masks (arrays, or dicts: over all layers).

  NaN when neither keeps anything.
  """
  inter = union = 0
  for x, y in _layer_pairs(a, b):
    inter += int(np.count_nonzero(x & y))
    union += int(np.count_nonzero(x | y))
  return inter / union if union else float("nan")


def overlap_ratio(a, b):
  """|A∩B| / E[|A∩B|], E for two independent random masks of the same per-layer densities.

  Per layer E = n·d_a·d_b = |A|·|B|/n; for dicts both sums run over the layers, so 1 means
  "no more overlap than chance" and 0 "disjoint". NaN when E is 0.
  """
  inter = expected = 0.0
  for x, y in _layer_pairs(a, b):
    inter += int(np.count_nonzero(x & y))
    expected += int(np.count_nonzero(x)) * int(np.count_nonzero(y)) / x.size
  return inter / expected if expected else float("nan")
