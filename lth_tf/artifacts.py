"""Files of an experiment: atomic writes, weights and masks, metrics.json, results.csv.

Every write goes to a temporary name and is renamed into place, so a kill at any moment
leaves either the old file or the new one, never half of one. All I/O goes through
``tf.io.gfile`` so an output dir may live on any filesystem TensorFlow knows.
"""
import io
import json
import math
import os
import uuid

import numpy as np
import tensorflow as tf

RESULT_COLUMNS = ("arm", "trial", "round", "weights_remaining", "early_stop_iteration",
                  "early_stop_val_loss", "early_stop_val_accuracy", "early_stop_test_accuracy",
                  "final_test_accuracy", "diverged", "search_iterations")


def write_bytes(path, data):
  """Atomically replaces ``path`` with ``data`` (bytes or str)."""
  parent = os.path.dirname(path)
  if parent:
    tf.io.gfile.makedirs(parent)
  tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
  mode = "wb" if isinstance(data, bytes) else "w"
  try:
    with tf.io.gfile.GFile(tmp, mode) as f:
      f.write(data)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
    raise


def read_bytes(path):
  with tf.io.gfile.GFile(path, "rb") as f:
    return f.read()


def exists(path):
  return tf.io.gfile.exists(path)


def write_json(path, value):
  write_bytes(path, json.dumps(value, indent=1, allow_nan=True) + "\n")


def read_json(path):
  return json.loads(read_bytes(path))


def write_weights(path, weights):
  """{layer: [arrays]} -> .npz with keys '<layer>/<index>'."""
  buf = io.BytesIO()
  np.savez_compressed(buf, **{f"{n}/{i}": a for n, arrs in weights.items()
                              for i, a in enumerate(arrs)})
  write_bytes(path, buf.getvalue())


def read_weights(path):
  out = {}
  with np.load(io.BytesIO(read_bytes(path))) as z:
    for key in sorted(z.files, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1]))):
      out.setdefault(key.rsplit("/", 1)[0], []).append(z[key])
  return out


def _cell(value):
  if isinstance(value, bool):
    return str(int(value))
  if isinstance(value, float):
    return "nan" if math.isnan(value) else repr(value)
  return str(value)


def write_results(path, rows):
  """results.csv: one row per (arm, trial, round) in RESULT_COLUMNS order."""
  lines = [",".join(RESULT_COLUMNS)]
  lines += [",".join(_cell(row[c]) for c in RESULT_COLUMNS) for row in rows]
  write_bytes(path, "\n".join(lines) + "\n")


def read_results(path):
  """results.csv -> list of dicts with numbers parsed."""
  text = read_bytes(path).decode().strip().splitlines()
  header = text[0].split(",")
  rows = []
  for line in text[1:]:
    row = dict(zip(header, line.split(",")))
    for k, v in row.items():
      if k != "arm":
        row[k] = float(v) if any(c in v for c in ".en") else int(v)
    rows.append(row)
  return rows


def parse_flagfile(text):
  """An absl flagfile's ``--name=value`` lines as {name: value string}."""
  return dict(line[2:].split("=", 1) for line in text.splitlines()
              if line.startswith("--") and "=" in line)
