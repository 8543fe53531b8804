"""Figures of one experiment folder, in the style of Frankle & Carbin (ICLR 2019).

  python -m lth_tf.plot --output_dir=results/smoke

writes ``<output_dir>/plots/<name>.png`` and ``.pdf`` for each name in FIGURES. Reads only
results.csv, flags.cfg and the stages' metrics.json, so it also plots a partial experiment.
Diverged runs are left out of every mean and counted in the legend. A corrupt file is one
line naming it and the fix (artifacts.CorruptFileError), exit code 2.
"""
import collections
import io
import math
import sys

import numpy as np
from absl import app, flags
from matplotlib import ticker
from matplotlib.figure import Figure  # no pyplot: no global figure state, Agg canvas

import lth_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from lth_tf import artifacts, layout
from lth_tf.arms import registry as arm_registry
from lth_tf.methods import registry as method_registry

ARM_LABELS = {name: arm.label for name, arm in arm_registry.ARMS.items()}
ARM_COLORS = {name: arm.color for name, arm in arm_registry.ARMS.items()}
CURVE_TARGETS = (100.0, 51.3, 21.1, 7.0)  # % remaining shown in the paper's Figure 3
METRICS = {  # figure name: (results.csv column, scale, y label)
    "early_stop_iteration": ("early_stop_iteration", 1.0, "Early-stop iteration"),
    "test_accuracy": ("early_stop_test_accuracy", 100.0, "Test accuracy at early stop (%)"),
}
FIGURES = (*METRICS, "curves", "layer_sparsity")


class PlotError(Exception):
  """A folder that cannot be plotted; the message is one line."""


def read_flags_file(output_dir):
  """The experiment's flags.cfg (config.FlagsFile), None when absent (it only feeds titles
  and labels); CorruptFileError for one that is not an experiment's."""
  if not artifacts.exists(f"{output_dir}/flags.cfg"):
    return None
  return artifacts.read_flags_file(output_dir)


def title(cfg, rows):
  """'model on dataset, N trials' of the experiment ``cfg`` (a Config, or None when its
  flags.cfg is gone), saying 'k of N' while trials are still missing."""
  done = len({r["trial"] for r in rows})
  planned = done if cfg is None else cfg.trials
  trials = f"{done} of {planned}" if done < planned else f"{done}"
  model, dataset = ("?", "?") if cfg is None else (cfg.model, cfg.dataset)
  return f"{model} on {dataset}, {trials} trial{'s' if planned != 1 else ''}"


def experiment_config(output_dir):
  """The Config in ``output_dir``'s flags.cfg, None without one."""
  recorded = read_flags_file(output_dir)
  return None if recorded is None else recorded.config


def arm_rows(rows):
  """{arm: its rows}, each control also holding the ticket's dense round 0 it starts from."""
  dense = [r for r in rows if r["round"] == 0]
  out = {"ticket": [r for r in rows if r["arm"] == "ticket"]}
  for arm in dict.fromkeys(r["arm"] for r in rows if r["arm"] != "ticket"):
    out[arm] = dense + [r for r in rows if r["arm"] == arm and r["round"] > 0]
  return {arm: rs for arm, rs in out.items() if rs}


def summarize(rows, metric):
  """{arm: [(weights_remaining, mean, min, max), ...]} of ``metric`` over trials, by round.

  Points are in round order (100% first); diverged rows are left out, and a round whose
  every trial diverged has no point.
  """
  out = {}
  for arm, rs in arm_rows(rows).items():
    by_round = collections.defaultdict(list)
    for r in rs:
      by_round[r["round"]].append(r)
    points = []
    for round_ in sorted(by_round):
      values = [r[metric] for r in by_round[round_] if not r["diverged"]]
      if values:
        pct = float(np.mean([r["weights_remaining"] for r in by_round[round_]]))
        points.append((pct, float(np.mean(values)), float(min(values)), float(max(values))))
    out[arm] = points
  return out


def diverged_counts(rows):
  """{arm: number of its rows (dense round included) left out as diverged}."""
  return {arm: sum(bool(r["diverged"]) for r in rs) for arm, rs in arm_rows(rows).items()}


def with_diverged(label, n_diverged):
  """``label``, noting how many diverged runs its mean leaves out."""
  if n_diverged:
    label += f" ({n_diverged} diverged run{'s' if n_diverged > 1 else ''} excluded)"
  return label


def thin(values, most):
  """At most ``most`` of ``values``, evenly spaced, keeping the first: readable ticks."""
  step = max(1, math.ceil(len(values) / most))
  return list(values)[::step]


def percent_log_axis(ax, which, percents):
  """Log ``which`` ("x" or "y") axis ticked at actual % remaining values, as in the paper."""
  getattr(ax, f"set_{which}scale")("log")
  axis = getattr(ax, f"{which}axis")
  axis.set_major_locator(ticker.FixedLocator(thin(sorted(percents, reverse=True), 8)))
  axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.1f}"))
  axis.set_minor_locator(ticker.NullLocator())


def weights_remaining_axis(ax, percents):
  """Log x axis, inverted (dense on the left), ticked at the actual % remaining values."""
  percent_log_axis(ax, "x", percents)
  ax.set_xlim(max(percents) * 1.08, min(percents) / 1.08)
  ax.set_xlabel("Weights remaining (%)")


def plot_metric(ax, rows, metric, scale, ylabel):
  """One line per arm: mean over trials of ``metric`` with min/max error bars: Figure 4."""
  counts = diverged_counts(rows)
  percents = set()
  for arm, points in summarize(rows, metric).items():
    if not points:
      continue
    x, mean, lo, hi = (np.array(c) for c in zip(*points))
    ax.errorbar(x, mean * scale, yerr=[(mean - lo) * scale, (hi - mean) * scale], marker="o",
                markersize=4, capsize=3, color=ARM_COLORS.get(arm),
                label=with_diverged(ARM_LABELS.get(arm, arm), counts[arm]))
    percents.update(x)
  weights_remaining_axis(ax, percents)
  ax.set_ylabel(ylabel)
  ax.grid(True, alpha=0.3)
  ax.legend()


def load_metrics(output_dir, arm, trial, round_):
  """A stage's metrics.json, or None if that stage has not finished."""
  path = f"{layout.stage_dir(output_dir, arm, trial, round_)}/metrics.json"
  try:
    return artifacts.read_json(path) if artifacts.exists(path) else None
  except artifacts.CorruptFileError as e:
    raise explained(e, output_dir) from None


def explained(error, output_dir):
  """A corrupt stage file's error with the fix that knows the experiment (which finished
  stages were built on that stage), when flags.cfg says what the experiment is."""
  from lth_tf import fixes
  try:
    recorded = read_flags_file(output_dir)
  except artifacts.CorruptFileError:  # an unusable flags.cfg: the generic fix
    return error
  return error if recorded is None else fixes.explain(error, recorded.config)


def pick_rounds(percent_by_round, most=4):
  """Rounds nearest (in log %) to the paper's Figure 3 levels; all of them if few."""
  if len(percent_by_round) <= most:
    return sorted(percent_by_round)
  nearest = lambda target: min(percent_by_round,
                               key=lambda r: abs(math.log(percent_by_round[r] / target)))
  return sorted({nearest(t) for t in CURVE_TARGETS})


def mean_curve(curves, key):
  """(iterations, mean of ``key`` over trials) for the iterations every curve has."""
  by_iteration = collections.defaultdict(list)
  for curve in curves:
    for point in curve:
      if key in point:
        by_iteration[point["iteration"]].append(point[key])
  its = sorted(i for i, v in by_iteration.items() if len(v) == len(curves))
  return np.array(its), np.array([np.mean(by_iteration[i]) for i in its])


def stage_curves(output_dir, rows, arm, round_):
  """The curves of ``arm`` at ``round_`` over its non-diverged trials, and how many diverged."""
  stage = [r for r in rows if r["arm"] == arm and r["round"] == round_]
  curves = [m["curve"] for r in stage if not r["diverged"]
            for m in [load_metrics(output_dir, arm, r["trial"], round_)] if m]
  return curves, sum(bool(r["diverged"]) for r in stage)


def curve_keys(output_dir, rows):
  """[(curve key, panel name)]: validation, and test when the run recorded a test curve."""
  first = next(r for r in rows if r["arm"] == "ticket")
  m = load_metrics(output_dir, "ticket", first["trial"], first["round"])
  has_test = m is not None and any("test_accuracy" in p for p in m["curve"])
  return [("val_accuracy", "Validation")] + ([("test_accuracy", "Test")] if has_test else [])


def plot_curves(fig, output_dir, rows, keys):
  """Accuracy over training for a few ticket rounds, one panel per curve key, with the
  random reinit of the same round dashed in the same colour: the paper's Figure 3."""
  percent_by_round = {r["round"]: r["weights_remaining"] for r in rows if r["arm"] == "ticket"}
  rounds = pick_rounds(percent_by_round)
  axes = fig.subplots(1, len(keys), squeeze=False, sharey=True)[0]
  for ax, (key, name) in zip(axes, keys):
    for i, round_ in enumerate(rounds):
      for arm, style in (("ticket", "-"), ("reinit", "--")):
        curves, n_diverged = stage_curves(output_dir, rows, arm, round_)
        if not curves:
          continue
        its, mean = mean_curve(curves, key)
        label = f"{percent_by_round[round_]:.1f}% {ARM_LABELS.get(arm, arm)}"
        ax.plot(its, 100 * mean, style, color=f"C{i}", label=with_diverged(label, n_diverged))
    ax.set_title(f"{name} accuracy")
    ax.set_xlabel("Training iterations")
    ax.grid(True, alpha=0.3)
  axes[0].set_ylabel("Accuracy (%)")
  axes[-1].legend(title="weights remaining", fontsize="small")


def plot_layer_sparsity(ax, output_dir, rows):
  """Per-layer % of weights remaining by round for the ticket's first trial, log scale."""
  trial = min(r["trial"] for r in rows if r["arm"] == "ticket")
  stages = sorted((r["round"], r["weights_remaining"]) for r in rows
                  if r["arm"] == "ticket" and r["trial"] == trial)
  layers = collections.defaultdict(dict)
  for round_, _ in stages:
    m = load_metrics(output_dir, "ticket", trial, round_)
    for name, fraction in (m or {}).get("layer_weights_remaining", {}).items():
      layers[name][round_] = 100 * fraction
  ax.plot([s[0] for s in stages], [s[1] for s in stages], color="0.75", linewidth=5,
          label="all layers")
  for i, (name, by_round) in enumerate(layers.items()):  # markers keep equal-rate layers apart
    ax.plot(list(by_round), list(by_round.values()), marker="os^vD<>"[i % 7],
            markersize=8 - 5 * i / max(1, len(layers) - 1), fillstyle="none", label=name)
  percent_log_axis(ax, "y", [s[1] for s in stages])
  ax.set_xticks(thin([s[0] for s in stages], 12))
  ax.set_xlabel("Pruning round")
  ax.set_ylabel(f"Weights remaining (%), ticket trial {trial}")
  ax.grid(True, alpha=0.3)
  ax.legend()


def save(fig, output_dir, name):
  """Writes ``fig`` as PNG and PDF under plots/ atomically; returns the two paths."""
  paths = []
  for fmt in ("png", "pdf"):
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=150)
    path = f"{output_dir}/plots/{name}.{fmt}"
    artifacts.write_bytes(path, buf.getvalue())
    paths.append(path)
  return paths


def new_figure(heading, width=7.0):
  fig = Figure(figsize=(width, 4.5), layout="constrained")
  fig.suptitle(heading)
  return fig


def plot_experiment(output_dir):
  """Writes every figure of ``output_dir`` into ``output_dir``/plots; returns the paths."""
  path = f"{output_dir}/results.csv"
  if not artifacts.exists(path):
    raise PlotError(f"{path} does not exist; run lth_tf.main into this folder first")
  rows = artifacts.read_results(path)
  if not any(r["arm"] == "ticket" for r in rows):
    raise PlotError(f"{path} has no finished ticket round yet")
  heading = title(experiment_config(output_dir), rows)
  for r in rows:  # every file read (and checked) before any figure is written
    load_metrics(output_dir, r["arm"], r["trial"], r["round"])
  written = []
  for name, (metric, scale, ylabel) in METRICS.items():
    fig = new_figure(heading)
    plot_metric(fig.subplots(), rows, metric, scale, ylabel)
    written += save(fig, output_dir, name)
  keys = curve_keys(output_dir, rows)
  fig = new_figure(heading, width=4.0 + 5.0 * len(keys))
  plot_curves(fig, output_dir, rows, keys)
  written += save(fig, output_dir, "curves")
  fig = new_figure(heading)
  plot_layer_sparsity(fig.subplots(), output_dir, rows)
  written += save(fig, output_dir, "layer_sparsity")
  return written


def compare_label(output_dir):
  """A line's name in a comparison: the experiment's method, and its folder (the folder
  alone when it has no flags.cfg to say the method)."""
  folder = output_dir.rstrip('/').rsplit('/', 1)[-1]
  cfg = experiment_config(output_dir)
  if cfg is None:
    return folder
  finder = method_registry.get(cfg.pruning)
  parts = [finder.label, "one-shot" if cfg.one_shot else "", cfg.structure,
           "" if finder.needs_distribution else cfg.distribution]  # dynamic: always erk & co
  return f"{' '.join(p for p in parts if p)} ({folder})"


def plot_comparison(output_dirs, dest):
  """Overlays several experiments' tickets: test accuracy at early stop vs % weights remaining,
  and vs the training iterations spent finding the mask (search cost); random pruning too."""
  fig = new_figure("Ticket-finding methods compared", width=12.0)
  by_sparsity, by_cost = fig.subplots(1, 2)
  percents = set()
  for i, output_dir in enumerate(output_dirs):
    path = f"{output_dir}/results.csv"
    if not artifacts.exists(path):
      raise PlotError(f"{path} does not exist; run lth_tf.main into this folder first")
    rows = artifacts.read_results(path)
    label = compare_label(output_dir)
    for arm, style in (("ticket", "-"), ("random_prune", ":")):
      points = summarize(rows, "early_stop_test_accuracy").get(arm)
      if not points or (arm == "random_prune" and i > 0):  # one random-pruning line suffices
        continue
      x, mean, lo, hi = (np.array(c) for c in zip(*points))
      by_sparsity.errorbar(x, 100 * mean, yerr=[100 * (mean - lo), 100 * (hi - mean)],
                           linestyle=style, marker="o", markersize=3, capsize=2, color=f"C{i}",
                           label=label if arm == "ticket" else f"random pruning ({label})")
      percents.update(x)
    tickets = [r for r in rows if r["arm"] == "ticket" and r["round"] > 0 and not r["diverged"]
               and "search_iterations" in r]  # results.csv from before the column: no cost
    by_cost.scatter([max(r["search_iterations"], 1) for r in tickets],
                    [100 * r["early_stop_test_accuracy"] for r in tickets], s=12, color=f"C{i}",
                    label=label)
  weights_remaining_axis(by_sparsity, percents)
  by_sparsity.set_ylabel("Test accuracy at early stop (%)")
  by_cost.set_xscale("log")
  by_cost.set_xlabel("Iterations spent finding the mask (log; 0 shown at 1)")
  by_cost.set_ylabel("Test accuracy at early stop (%)")
  for ax in (by_sparsity, by_cost):
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
  return save(fig, dest, "compare")


def define_flags():
  """Defined only when run as a command: lth_tf.main owns --output_dir in an importing process."""
  flags.DEFINE_string("output_dir", None, "Experiment folder written by lth_tf.main; figures "
                      "go to its plots/ subfolder.")
  flags.DEFINE_bool("compare", False, "Overlay the experiments named as arguments (python -m "
                    "lth_tf.plot --compare DIR1 DIR2 ...); the figure goes to DIR1/plots/.")


def main(argv):
  if flags.FLAGS.compare:
    if len(argv) < 2:
      fail("--compare needs experiment folders as arguments: --compare DIR1 DIR2 ...")
    try:
      for path in plot_comparison(argv[1:], flags.FLAGS.output_dir or argv[1]):
        print(path)
    except PlotError as e:
      fail(f"--compare: {e}")
    except artifacts.CorruptFileError as e:
      fail(e)
    return
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  output_dir = flags.FLAGS.output_dir
  if not output_dir:
    fail("--output_dir is required; pass the folder of an experiment run by lth_tf.main")
  try:
    for path in plot_experiment(output_dir):
      print(path)
  except PlotError as e:
    fail(f"--output_dir={output_dir}: {e}")
  except artifacts.CorruptFileError as e:
    fail(e)


def fail(message):
  """Reports a user error as one line on stderr, exit code 2, like lth_tf.main."""
  print(f"lth_tf.plot: error: {message}", file=sys.stderr)
  sys.exit(2)


def run():
  """Command-line entry point: ``python -m lth_tf.plot --output_dir=...``."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
