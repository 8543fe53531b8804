"""Files of an experiment: atomic writes, weights and masks, metrics.json, results.csv.

Every write goes to a temporary name and is renamed into place, so a kill at any moment
leaves either the old file or the new one, never half of one. All I/O goes through
``tf.io.gfile`` so an output dir may live on any filesystem TensorFlow knows.
"""
import json
import math
import os
import re
import uuid

import numpy as np
import tensorflow as tf

from lth_tf import config
from lth_tf import masks as masks_lib

RESULT_COLUMNS = ("arm", "trial", "round", "weights_remaining", "early_stop_iteration",
                  "early_stop_val_loss", "early_stop_val_accuracy", "early_stop_test_accuracy",
                  "final_test_accuracy", "diverged", "search_iterations")
# results.csv / metrics.json written before the column existed lack it (experiment.collect_rows).
OPTIONAL_COLUMNS = ("search_iterations",)


class CorruptFileError(ValueError):
  """A file lth_tf wrote earlier (a stage's masks.npz, weights.npz or metrics.json, θ0, θ_k,
  early_bird.json, results.csv, flags.cfg, a checkpoint, an exported ticket) that cannot be
  used: unreadable, not in its format, or with contents that do not fit (layers and shapes
  other than the model's, mask values other than 0/1, missing keys).

  Why one class: the readers raise it where a file is read, before its contents reach numpy
  or Keras (which would fail later, deep in a traceback, or go on with wrong numbers), and
  every command (lth_tf.main, plot, report, study, export) catches it and prints the message
  as its one-line error, exit code 2. The message names the file, what is wrong with it and
  how to get a good one back, which depends on the kind of file (``fix_for``). A ValueError:
  bad input data, not a bug.
  """

  def __init__(self, path, problem, fix=None):
    self.path, self.problem = str(path), _one_line(problem)
    self.fix = _one_line(fix or fix_for(self.path))
    super().__init__(f"{self.path} is corrupt ({self.problem}); {self.fix}")

  def with_fix(self, fix):
    """The same error with another fix (a caller that knows the experiment says more)."""
    return CorruptFileError(self.path, self.problem, fix)


def _one_line(text):
  return " ".join(str(text).split())


def error_text(e):
  """An exception as 'Type: first line', short."""
  first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
  return f"{type(e).__name__}: {first}" if first else type(e).__name__


_STAGE_FILE = re.compile(r"^(?P<out>.*)/(?P<arm>[^/]+)/trial_(?P<trial>\d+)/round_(?P<round>\d+)"
                         r"/(?P<name>[^/]+)$")
_TRIAL_FILE = re.compile(r"^(?P<out>.*)/ticket/trial_(?P<trial>\d+)/(?P<name>[^/]+)$")


def stage_of(path):
  """(output dir, (arm, trial, round), file name) of a file in a stage folder, else None."""
  m = _STAGE_FILE.match(str(path))
  if not m:
    return None
  return m["out"], (m["arm"], int(m["trial"]), int(m["round"])), m["name"]


def fix_for(path):
  """What to do about a corrupt ``path``, by the kind of file (lth_tf.fixes.stage_fix
  says more where the experiment's flags are known)."""
  path = str(path)
  name = os.path.basename(path)
  stage = stage_of(path)
  if stage and name in ("masks.npz", "weights.npz", "metrics.json", "ticket"):
    folder = os.path.dirname(path)
    again = "retrain and export that stage again" if name == "ticket" else "retrain that stage"
    return (f"delete {folder} and rerun the experiment's command to {again} (finished stages "
            f"built on it stay valid only if the rerun reproduces it bit for bit: same machine, "
            f"libraries and --threads)")
  trial = _TRIAL_FILE.match(path)
  if trial and name == "theta0.npz":
    return "delete it: lth_tf redraws θ0 bit for bit from the experiment's seed"
  if trial and (name == "early_bird.json" or re.fullmatch(r"theta_\d+\.npz", name)):
    return (f"delete it and {trial['out']}/ticket/trial_{trial['trial']}/round_0, and rerun the "
            f"experiment's command: the dense round records it again")
  if name == "results.csv":
    return ("delete it and rerun the experiment's command: lth_tf.main rewrites it from the "
            "stages' metrics.json files, retraining nothing that is finished")
  if name == "flags.cfg":
    return ("delete it and rerun the exact command that made this experiment: lth_tf.main "
            "writes it again (it is how a later command's flags are checked against the "
            "finished stages)")
  if name == "study_properties.csv":
    return ("delete it: the study computes it again (leaving out the trained-weight metrics "
            "of stages whose weights.npz is gone, which it took from this file)")
  if name.startswith("study_") and name.endswith(".csv"):
    return "delete it: the study computes it again"
  return "delete it and rerun the command that wrote it"


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
  """A JSON file's value. A stage's metrics.json is checked to be one (check_metrics) and an
  early_bird.json to map rounds to iterations; CorruptFileError if not."""
  try:
    value = json.loads(read_bytes(path))
  except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
    raise CorruptFileError(path, f"invalid JSON: {error_text(e)}") from None
  name = os.path.basename(str(path))
  if name == "metrics.json":
    check_metrics(path, value)
  elif name == "early_bird.json" and not (
      isinstance(value, dict) and all(k.isdigit() and _is_int(v) for k, v in value.items())):
    raise CorruptFileError(path, "not a JSON object of round: iteration")
  return value


def _is_int(v):
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_metrics(path, m):
  """Raises CorruptFileError unless ``m`` is a stage's metrics.json as lth_tf writes it: the
  results.csv row (RESULT_COLUMNS, of the stage whose folder holds it) and the curve."""
  if not isinstance(m, dict):
    raise CorruptFileError(path, f"a JSON {type(m).__name__}, not an object")
  missing = [k for k in (*RESULT_COLUMNS, "curve") if k not in m and k not in OPTIONAL_COLUMNS]
  if missing:
    raise CorruptFileError(path, f"missing key{'s' if len(missing) > 1 else ''} "
                                 f"{', '.join(missing)}")
  wrong = [k for k in RESULT_COLUMNS if k in m and not (
      isinstance(m[k], str) and m[k] if k == "arm"
      else _is_int(m[k]) and m[k] >= 0 if k in ("trial", "round")
      else isinstance(m[k], bool) or m[k] in (0, 1) if k == "diverged"
      else _is_number(m[k]))]
  if wrong:
    raise CorruptFileError(path, f"{wrong[0]} is {json.dumps(m[wrong[0]])[:40]}, not "
                                 f"{'a name' if wrong[0] == 'arm' else 'a number'}")
  if not isinstance(m["curve"], list) or not all(
      isinstance(p, dict) and _is_int(p.get("iteration")) for p in m["curve"]):
    raise CorruptFileError(path, "curve is not a list of evaluations with an iteration")
  stage = stage_of(path)
  if stage and (m["arm"], m["trial"], m["round"]) != stage[1]:
    raise CorruptFileError(path, f"it records [{m['arm']} trial {m['trial']} round "
                                 f"{m['round']}], not the stage of its folder")


def write_weights(path, weights):
  """{layer: [arrays]} -> .npz with keys '<layer>/<index>'."""
  import io
  buf = io.BytesIO()
  np.savez_compressed(buf, **{f"{n}/{i}": a for n, arrs in weights.items()
                              for i, a in enumerate(arrs)})
  write_bytes(path, buf.getvalue())


def read_weights(path, shapes=None):
  """{layer: [arrays]} of a weights .npz (a stage's weights.npz, θ0, θ_k).

  ``shapes`` ({layer: [array shapes]}, a model's: ``weight_shapes``) are what the file must
  hold, layer by layer; CorruptFileError if it holds anything else, or is no such file. Never
  unpickles (an object array is refused).
  """
  try:
    arrays = masks_lib.load_npz(read_bytes(path))
  except ValueError as e:
    raise CorruptFileError(path, str(e)) from None
  out = {}
  for key in sorted(arrays):
    layer, _, index = key.rpartition("/")
    if not layer or not index.isdigit():
      raise CorruptFileError(path, f"array {key!r} is not named <layer>/<index>")
    if not np.issubdtype(arrays[key].dtype, np.floating):
      raise CorruptFileError(path, f"array {key!r} holds {arrays[key].dtype}, not weights")
    out.setdefault(layer, {})[int(index)] = arrays[key]
  for layer, by_index in out.items():
    if sorted(by_index) != list(range(len(by_index))):
      raise CorruptFileError(path, f"layer {layer} has arrays {sorted(by_index)}, not 0 to "
                                   f"{len(by_index) - 1}")
  out = {layer: [by_index[i] for i in range(len(by_index))] for layer, by_index in out.items()}
  if not out:
    raise CorruptFileError(path, "no arrays")
  if shapes is not None:
    problem = shape_problem(out, shapes)
    if problem:
      raise CorruptFileError(path, problem)
  return out


def weight_shapes(weights):
  """{layer: [shapes]} of {layer: [arrays or variables]}: what read_weights checks."""
  return {n: [tuple(a.shape) for a in arrs] for n, arrs in weights.items()}


def shape_problem(weights, shapes):
  """How {layer: [arrays]} differs from the model's {layer: [shapes]} (one line), or None."""
  missing = [n for n in shapes if n not in weights]
  if missing:
    return f"missing layer{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
  extra = [n for n in weights if n not in shapes]
  if extra:
    return (f"layer{'s' if len(extra) > 1 else ''} {', '.join(extra)} not in the model "
            f"(its layers: {', '.join(shapes)})")
  for n, want in shapes.items():
    have = [tuple(a.shape) for a in weights[n]]
    if len(have) != len(want):
      return f"layer {n} has {len(have)} arrays, the model's {len(want)}"
    for i, (h, w) in enumerate(zip(have, want)):
      if h != tuple(w):
        return f"layer {n} array {i} has shape {h}, the model's is {tuple(w)}"
  return None


def read_mask(path, shapes=None):
  """A masks.npz as {layer: 0/1 float32 array}; CorruptFileError (never unpickling) unless it
  is one, with exactly the layers and kernel shapes of ``shapes`` ({layer: kernel shape}) when
  given, and values 0 and 1 only."""
  try:
    return masks_lib.from_bytes(read_bytes(path), shapes)
  except ValueError as e:
    raise CorruptFileError(path, str(e)) from None


def _cell(value):
  if isinstance(value, bool):
    return str(int(value))
  if isinstance(value, float):
    return "nan" if math.isnan(value) else repr(value)
  return str(value)


def results_text(rows):
  """results.csv's text: one row per (arm, trial, round) in RESULT_COLUMNS order."""
  lines = [",".join(RESULT_COLUMNS)]
  lines += [",".join(_cell(row[c]) for c in RESULT_COLUMNS) for row in rows]
  return "\n".join(lines) + "\n"


def write_results(path, rows):
  """results.csv: one row per (arm, trial, round) in RESULT_COLUMNS order."""
  write_bytes(path, results_text(rows))


def read_results(path):
  """results.csv -> list of dicts with numbers parsed; CorruptFileError unless it has the
  columns lth_tf writes and a number in every cell but the arm's."""
  try:
    text = read_bytes(path).decode().strip().splitlines()
  except UnicodeDecodeError as e:
    raise CorruptFileError(path, f"not text: {error_text(e)}") from None
  if not text:
    raise CorruptFileError(path, "empty")
  header = text[0].split(",")
  missing = [c for c in RESULT_COLUMNS if c not in header and c not in OPTIONAL_COLUMNS]
  unknown = [c for c in header if c not in RESULT_COLUMNS]
  if missing or unknown or len(set(header)) != len(header):
    raise CorruptFileError(path, f"its header is not results.csv's ({text[0][:80]!r})")
  rows = []
  for number, line in enumerate(text[1:], start=2):
    cells = line.split(",")
    if len(cells) != len(header):
      raise CorruptFileError(path, f"line {number} has {len(cells)} fields, the header "
                                   f"{len(header)}")
    row = dict(zip(header, cells))
    for k, v in row.items():
      if k != "arm":
        try:
          row[k] = float(v) if any(c in v for c in ".en") else int(v)
        except ValueError:
          raise CorruptFileError(path, f"line {number}: {k} is {v[:20]!r}, not a number") from None
      elif not v:
        raise CorruptFileError(path, f"line {number} has no arm")
    rows.append(row)
  return rows


_FLAG_LINE = re.compile(r"--([A-Za-z_][A-Za-z0-9_]*)(=.*)?")


def parse_flagfile(text, path=None):
  """An absl flagfile's ``--name=value`` lines as {name: value string} (``--name`` alone, a
  boolean, is skipped, as are blank lines and # comments). ``text``: str, or the file's bytes
  with ``path`` its name; CorruptFileError naming ``path`` if it is not such a file."""
  where = path or "the flags text"
  if isinstance(text, bytes):
    try:
      text = text.decode()
    except UnicodeDecodeError as e:
      raise CorruptFileError(where, f"not text: {error_text(e)}") from None
  out = {}
  for number, line in enumerate(text.splitlines(), start=1):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    m = _FLAG_LINE.fullmatch(line)
    if not m:
      raise CorruptFileError(where, f"line {number} is not --name=value: {line[:40]!r}")
    if m[2]:
      out[m[1]] = m[2][1:]
  return out


def read_flagfile(path):
  """flags.cfg as {name: value string} (parse_flagfile); CorruptFileError if it is not one."""
  return parse_flagfile(read_bytes(path), path)


def read_flags_file(output_dir, fix="pass a folder written by lth_tf.main or lth_tf.run"):
  """The experiment folder's flags.cfg as a config.FlagsFile (its Config, Runtime and
  locations); CorruptFileError naming the file when it is missing (with ``fix``) or does not
  hold an experiment's settings."""
  path = f"{output_dir}/flags.cfg"
  if not exists(path):
    raise CorruptFileError(path, "missing", fix)
  try:
    return config.FlagsFile.parse(read_flagfile(path))
  except config.ConfigError as e:
    raise CorruptFileError(path, f"not an experiment's settings ({e})") from None
