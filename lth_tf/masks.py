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


def load_npz(data):
  """An .npz file's bytes as {name: array}. Never unpickles: an object array is refused.

  Raises ValueError, one line saying what is wrong, unless ``data`` is a whole npz file.
  """
  import io
  import zipfile
  if not data.startswith(b"PK"):
    raise ValueError("not an npz file" + (" (empty)" if not data else ""))
  try:
    z = np.load(io.BytesIO(data), allow_pickle=False)
  except Exception as e:  # zipfile.BadZipFile, EOFError, OSError, ...
    raise ValueError(f"not a readable npz file: {_why(e)}") from None
  with z:
    out = {}
    for name in z.files:
      try:
        out[name] = z[name]
      except ValueError as e:
        if "allow_pickle" in str(e):
          raise ValueError(f"array {name!r} holds Python objects, which lth_tf never writes "
                           f"and will not unpickle") from None
        raise ValueError(f"array {name!r} is unreadable: {_why(e)}") from None
      except (zipfile.BadZipFile, EOFError, OSError, KeyError, RuntimeError) as e:
        raise ValueError(f"array {name!r} is damaged or truncated: {_why(e)}") from None
      except Exception as e:  # zlib.error and other decompression failures
        raise ValueError(f"array {name!r} is unreadable: {_why(e)}") from None
  return out


def _why(e):
  first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
  return f"{type(e).__name__}: {first}" if first else type(e).__name__


def from_bytes(data, shapes=None):
  """A masks.npz's bytes as {layer: 0/1 float32 array}.

  ValueError (one line) unless it is an npz of 0/1 arrays, with exactly the layers and kernel
  shapes of ``shapes`` ({layer: kernel shape}, e.g. Config.kernel_shapes's) when given.
  """
  mask = {}
  for name, m in load_npz(data).items():
    if m.dtype.kind not in "biuf":
      raise ValueError(f"layer {name} holds {m.dtype}, not a 0/1 mask")
    if not np.isin(m, (0, 1)).all():
      bad = m[~np.isin(m, (0, 1))].ravel()[0]
      raise ValueError(f"layer {name} has values other than 0 and 1 (e.g. {bad})")
    mask[name] = m.astype(np.float32)
  if not mask:
    raise ValueError("no layers")
  if shapes is not None:
    missing = [n for n in shapes if n not in mask]
    extra = [n for n in mask if n not in shapes]
    if missing:
      raise ValueError(f"missing layer{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if extra:
      raise ValueError(f"layer{'s' if len(extra) > 1 else ''} {', '.join(extra)} not in the "
                       f"model (its prunable layers: {', '.join(shapes)})")
    for n, shape in shapes.items():
      if mask[n].shape != tuple(shape):
        raise ValueError(f"layer {n} has shape {mask[n].shape}, the model's kernel "
                         f"{tuple(shape)}")
  return mask


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
