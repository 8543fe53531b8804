"""What every study needs: an experiment folder's Config, finished stages, masks, weights, CSV.

Reads only what ``lth_tf.main`` writes (flags.cfg, results.csv, the stages' files).
"""
import csv
import dataclasses
import functools
import io
import math
import os

import numpy as np
import tensorflow as tf

from lth_tf import artifacts, config, fixes, layout, network, study


class StudyError(Exception):
  """A folder that cannot be studied; the message is one line naming the folder and the fix."""


@dataclasses.dataclass(frozen=True)
class Experiment:
  """An experiment folder as lth_tf.main left it."""
  output_dir: str
  recorded: config.FlagsFile  # its flags.cfg: Config, Runtime, where its data came from
  rows: list  # results.csv rows: the finished stages

  @property
  def cfg(self):
    return self.recorded.config

  @property
  def same_init(self):
    """Whether every trial started from one θ0 (--same_init=True in flags.cfg)."""
    return self.cfg.same_init

  def row(self, arm, trial, round_):
    """The results.csv row of a finished stage, or None."""
    for r in self.rows:
      if (r["arm"], r["trial"], r["round"]) == (arm, trial, round_):
        return r
    return None

  def finished(self, arm=None, trial=None, round_=None):
    """Rows of finished stages, filtered by whatever is given, in results.csv order."""
    return [r for r in self.rows if (arm is None or r["arm"] == arm)
            and (trial is None or r["trial"] == trial)
            and (round_ is None or r["round"] == round_)]

  def stage_dir(self, arm, trial, round_):
    return layout.stage_dir(self.output_dir, arm, trial, round_)

  @functools.cached_property
  def weight_shapes(self):
    """{layer: [array shapes]} of the experiment's network: what its weight files hold."""
    return network.weight_shapes(self.cfg)

  def mask(self, arm, trial, round_):
    """The stage's masks.npz, checked against the network's prunable kernels."""
    shapes = {n: s for n, (s, _) in self.cfg.kernel_shapes().items()}
    with fixes.explained(self.cfg):
      return artifacts.read_mask(f"{self.stage_dir(arm, trial, round_)}/masks.npz", shapes)

  def weights(self, arm, trial, round_):
    """The stage's trained weights (weights.npz), {layer: [kernel, bias]}."""
    with fixes.explained(self.cfg):
      return artifacts.read_weights(f"{self.stage_dir(arm, trial, round_)}/weights.npz",
                                    self.weight_shapes)

  def has_weights(self, arm, trial, round_):
    """Whether the stage's weights.npz is here (it stays out of git)."""
    return artifacts.exists(f"{self.stage_dir(arm, trial, round_)}/weights.npz")

  def metrics(self, arm, trial, round_):
    with fixes.explained(self.cfg):
      return artifacts.read_json(f"{self.stage_dir(arm, trial, round_)}/metrics.json")

  def rewind_weights(self, trial):
    """What tickets are reset to: θ0, or θ_k saved during the dense round (late resetting)."""
    if self.cfg.rewind != "iteration":
      return self.theta0(trial)
    path = layout.rewind_path(self.output_dir, trial, self.cfg.rewind_iteration)
    if not artifacts.exists(path):
      raise StudyError(f"--output_dir={self.output_dir}: {path} is missing; rerun lth_tf.main "
                       f"with the same flags to finish the dense round")
    with fixes.explained(self.cfg):
      return artifacts.read_weights(path, self.weight_shapes)

  def trained(self, arm, trial, round_):
    """A finished stage's trained weights, which a later stage started from (--rewind=none)."""
    if not self.has_weights(arm, trial, round_):
      raise StudyError(f"--output_dir={self.output_dir}: [{arm} trial {trial} round {round_}] "
                       f"has no weights.npz, which a --rewind=none stage starts from; study it "
                       f"where lth_tf.main ran (weights stay out of git)")
    return self.weights(arm, trial, round_)

  def fresh_weights(self, seed):
    """The weights the experiment's initializer draws with ``seed``."""
    return network.initial_weights(self.cfg, seed)

  def theta0(self, trial):
    """θ0 of ``trial``: theta0.npz, or redrawn from its seed where that file is gone (weights
    stay out of git; the draw is a pure function of the seed, so it is the same θ0)."""
    path = layout.theta0_path(self.output_dir, trial)
    if artifacts.exists(path):
      return artifacts.read_weights(path, self.weight_shapes)
    return network.initial_weights(self.cfg, layout.theta0_seed(self.cfg, trial))

  def resolve(self, path):
    """A path from flags.cfg, which is relative to the folder lth_tf.main ran in.

    That folder is inferred from the recorded --output_dir when it is relative and ends the
    real one (``results/x`` recorded, ``/work/main/results/x`` studied: ``/work/main``);
    otherwise the path is taken as it is (relative to the current folder).
    """
    if not path or os.path.isabs(path) or "://" in path:
      return path
    recorded = self.recorded.output_dir
    here = os.path.abspath(self.output_dir)
    if recorded and not os.path.isabs(recorded):
      tail = os.path.normpath(recorded)
      if here == tail or here.endswith(os.sep + tail):
        base = here[:len(here) - len(tail)]
        candidate = os.path.normpath(os.path.join(base, path))
        if os.path.exists(candidate):
          return candidate
    return path


def load(output_dir):
  """The Experiment in ``output_dir``; StudyError unless lth_tf.main has run there."""
  problem = study.folder_problem(output_dir, tf.io.gfile.isdir, tf.io.gfile.exists)
  if problem:
    raise StudyError(problem)
  recorded = artifacts.read_flags_file(output_dir)
  rows = artifacts.read_results(f"{output_dir}/results.csv")
  if not any(r["arm"] == "ticket" for r in rows):
    raise StudyError(f"--output_dir={output_dir}: results.csv has no finished ticket round yet; "
                     f"let lth_tf.main finish at least round 0")
  return Experiment(output_dir, recorded, rows)


def csv_text(columns, rows):
  """rows (dicts) as CSV text with ``columns`` in order; floats in full precision."""
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(columns)
  for row in rows:
    writer.writerow([_cell(row[c]) for c in columns])
  return buf.getvalue()


def _cell(value):
  if isinstance(value, (bool, np.bool_)):
    return str(int(value))
  if isinstance(value, (float, np.floating)):
    return "nan" if math.isnan(value) else repr(float(value))
  return str(value)


def read_csv(path, columns=None):
  """A study CSV as a list of dicts, numbers parsed (strings left as they are); with
  ``columns``, CorruptFileError unless it has exactly those and a value in every cell."""
  try:
    text = artifacts.read_bytes(path).decode()
  except UnicodeDecodeError as e:
    raise artifacts.CorruptFileError(path, f"not text: {artifacts.error_text(e)}") from None
  reader = csv.DictReader(io.StringIO(text))
  rows = list(reader)
  if columns is not None:
    if tuple(reader.fieldnames or ()) != tuple(columns):
      raise artifacts.CorruptFileError(path, f"its header is not {','.join(columns)}")
    for number, row in enumerate(rows, start=2):
      if None in row or None in row.values():
        raise artifacts.CorruptFileError(path, f"line {number} has the wrong number of fields")
  for row in rows:
    for k, v in row.items():
      try:
        row[k] = int(v)
      except ValueError:
        try:
          row[k] = float(v)
        except ValueError:
          pass
  return rows


def summarize(rows, key="value"):
  """[(weights_remaining, mean, min, max)] of ``key`` over ``rows`` by round, NaNs left out.

  Points are in round order; x is the mean % remaining of the round's rows.
  """
  by_round = {}
  for r in rows:
    by_round.setdefault(r["round"], []).append(r)
  points = []
  for round_ in sorted(by_round):
    values = [r[key] for r in by_round[round_] if not math.isnan(r[key])]
    if values:
      pct = float(np.mean([r["weights_remaining"] for r in by_round[round_]]))
      points.append((pct, float(np.mean(values)), float(min(values)), float(max(values))))
  return points


def errorbar(ax, points, scale=1.0, **kw):
  """Mean with min/max error bars of summarize() points; returns the x values."""
  if not points:
    return []
  x, mean, lo, hi = (np.array(c) for c in zip(*points))
  ax.errorbar(x, mean * scale, yerr=[(mean - lo) * scale, (hi - mean) * scale], marker="o",
              markersize=4, capsize=3, **kw)
  return list(x)
