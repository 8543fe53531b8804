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
