"""What is special about a winning ticket's weights? Per finished stage, round and layer:

- initial magnitude: mean and median |θ0| of the kept weights, mean |θ0| of all the layer's
  weights and the kept/all ratio of means (ticket and random_prune masks; 1 means "no
  preference for large θ0");
- signs: the fraction of kept weights whose sign after training (weights.npz) equals their
  sign at θ0, and equals their sign at the arm's start (every arm; reinit's θ0 comparison is
  the chance baseline);
- distance travelled ‖θ_T − θ_start‖ / ‖θ_start‖ over the surviving weights, θ_start being
  exactly what the arm started the round from (see ``start_weights``);
- "supermask" accuracy: test accuracy of the untrained masked network, θ0⊙m for the ticket's
  and random_prune's masks, and the start weights of reinit (fresh⊙ticket mask) and
  sign_constant.

Writes ``<dir>/study_properties.csv`` (long format: round, weights_remaining, arm, trial,
layer, metric, value; layer 'all' pools the prunable layers) and into ``<dir>/plots/``:
properties_init_magnitude, properties_sign, properties_distance, properties_supermask.
"""
import math

import numpy as np
from absl import logging

from lth_tf import artifacts, data, layout, models, plot, ticket, training
from lth_tf.arms import registry as arm_registry
from lth_tf.study import common

COLUMNS = ("round", "weights_remaining", "arm", "trial", "layer", "metric", "value")
MAGNITUDE_ARMS = ("ticket", "random_prune")  # arms whose mask differs (reinit: the ticket's)
FIGURES = ("properties_init_magnitude", "properties_sign", "properties_distance",
           "properties_supermask")


def apply_mask(weights, mask):
  """{layer: [kernel ⊙ mask, rest...]}, exactly as the TF-MOT wrapper masks (float32 product)."""
  return {n: [ws[0] * mask[n], *ws[1:]] if n in mask else list(ws) for n, ws in weights.items()}


def init_seed(exp, arm, trial, round_):
  """The seed of the arm's start weights, as recorded in the stage's metrics.json (else as
  the arm derives it: metrics.json from before seeds were recorded)."""
  seeds = exp.metrics(arm, trial, round_).get("seeds") or {}
  if seeds.get("init") is not None:
    return int(seeds["init"])
  return arm_registry.get(arm).start_weights(exp, trial, round_, exp.mask(arm, trial,
                                                                           round_))[1]


def start_weights(exp, arm, trial, round_, mask):
  """The (masked) weights ``arm`` started ``round_`` from: the arm's own start_weights (the
  training loop calls the same), under ``mask``."""
  return apply_mask(arm_registry.get(arm).start_weights(exp, trial, round_, mask)[0], mask)


def _kept(arrays, mask):
  """The kept entries of {layer: array} under ``mask``, per layer and pooled as 'all'."""
  out = {n: arrays[n][mask[n] > 0] for n in mask}
  out["all"] = np.concatenate([out[n] for n in mask])
  return out


def init_magnitude(theta0_kernels, mask):
  """{layer or 'all': {metric: value}} of |θ0| of the kept weights against all weights."""
  kept = _kept({n: np.abs(k) for n, k in theta0_kernels.items()}, mask)
  every = {n: np.abs(theta0_kernels[n]).ravel() for n in mask}
  every["all"] = np.concatenate([every[n] for n in mask])
  out = {}
  for layer, k in kept.items():
    mean_all = float(every[layer].mean())
    mean_kept = float(k.mean()) if k.size else math.nan
    out[layer] = dict(theta0_kept_mean_abs=mean_kept,
                      theta0_kept_median_abs=float(np.median(k)) if k.size else math.nan,
                      theta0_all_mean_abs=mean_all,
                      theta0_kept_to_all_ratio=mean_kept / mean_all if mean_all else math.nan)
  return out


def sign_agreement(final_kernels, reference_kernels, mask):
  """{layer or 'all': fraction of kept weights whose final sign equals the reference's}."""
  final, ref = _kept(final_kernels, mask), _kept(reference_kernels, mask)
  return {n: float(np.mean(np.sign(final[n]) == np.sign(ref[n]))) if final[n].size else math.nan
          for n in final}


def distance(final_kernels, start_kernels, mask):
  """{layer or 'all': ‖θ_T − θ_start‖ / ‖θ_start‖ over the surviving weights}."""
  final, start = _kept(final_kernels, mask), _kept(start_kernels, mask)
  out = {}
  for n in final:
    norm = float(np.linalg.norm(start[n].astype(np.float64)))
    diff = float(np.linalg.norm(final[n].astype(np.float64) - start[n]))
    out[n] = diff / norm if norm else math.nan
  return out


class Evaluator:
  """Test accuracy of given weights in a plain (unwrapped) model of the experiment's kind."""

  def __init__(self, cfg, splits, jit_compile=True):
    self.model = models.build(cfg.model, splits.test_x.shape[1:], init=cfg.initializer)
    self.trainer = training.Trainer(self.model, 1e-3, jit_compile)
    self.test = training.Split.of(splits.test_x, splits.test_y)

  def accuracy(self, weights):
    ticket.set_weights(self.model, weights)
    return self.trainer.evaluate(self.test.x, self.test.y)[1]


def load_test_split(exp, data_dir=None, manual_dir=None):
  """The dataset of ``exp`` (its --data_dir/--manual_dir from flags.cfg unless given), split
  into training and validation examples as the experiment split it: the studies that retrain
  (infoplane, instability) train on the experiment's own training examples."""
  data_dir = data_dir or exp.resolve(exp.recorded.data_dir)
  manual_dir = manual_dir or exp.resolve(exp.recorded.manual_dir)
  data.check_available(exp.cfg.dataset, data_dir, manual_dir)
  return data.load(exp.cfg.dataset, data_dir, manual_dir, split_seed=layout.split_seed(exp.cfg))


FINAL_METRICS = ("final_sign_equals_theta0", "final_sign_equals_start", "distance_travelled")


def stage_rows(exp, evaluator, arm, trial, round_, theta0, previous=None):
  """The study_properties.csv rows of one finished stage.

  The metrics of the trained weights (FINAL_METRICS) need the stage's weights.npz, which
  stays out of git: where it is gone they are taken from ``previous`` ({(arm, trial, round,
  layer, metric): value}, an earlier study_properties.csv) or left out. The others need only
  θ0 and the mask, which are always there.
  """
  result = exp.row(arm, trial, round_)
  base = dict(round=round_, weights_remaining=result["weights_remaining"], arm=arm, trial=trial)
  mask = exp.mask(arm, trial, round_)
  kernels = lambda ws: {n: ws[n][0] for n in mask}
  start = start_weights(exp, arm, trial, round_, mask)
  trained_ok = not result["diverged"]
  metrics = {}  # (layer, metric) -> value
  if arm in MAGNITUDE_ARMS:
    for layer, values in init_magnitude(kernels(theta0), mask).items():
      metrics.update({(layer, k): v for k, v in values.items()})
  if exp.has_weights(arm, trial, round_):
    final = kernels(exp.weights(arm, trial, round_))
    for name, reference in (("final_sign_equals_theta0", kernels(theta0)),
                            ("final_sign_equals_start", kernels(start))):
      for layer, v in sign_agreement(final, reference, mask).items():
        metrics[layer, name] = v if trained_ok else math.nan
    for layer, v in distance(final, kernels(start), mask).items():
      metrics[layer, "distance_travelled"] = v if trained_ok else math.nan
  else:
    metrics.update({(layer, metric): v for (a, t, r, layer, metric), v in (previous or {}).items()
                    if (a, t, r) == (arm, trial, round_) and metric in FINAL_METRICS})
  untrained = apply_mask(theta0, mask) if arm in MAGNITUDE_ARMS else start
  metrics["all", "untrained_test_accuracy"] = evaluator.accuracy(untrained)
  return [dict(base, layer=layer, metric=metric, value=float(value))
          for (layer, metric), value in metrics.items()]


def compute(exp, splits, jit_compile=None, previous=None):
  """study_properties.csv rows of every finished stage of ``exp`` (``previous``: see
  stage_rows)."""
  if jit_compile is None:
    jit_compile = exp.recorded.runtime.xla
  evaluator = Evaluator(exp.cfg, splits, jit_compile)
  rows, theta0 = [], {}
  lost = [(r["arm"], r["trial"], r["round"]) for r in exp.rows
          if not exp.has_weights(r["arm"], r["trial"], r["round"])]
  if lost:
    kept = {k[:3] for k in previous or {}} & set(lost)
    logging.warning("%d finished stages have no weights.npz (it stays out of git, and "
                    "lth_tf.main does not rerun finished stages): their trained-weight metrics "
                    "come from the previous "
                    "study_properties.csv for %d of them and are left out for the rest",
                    len(lost), len(kept))
  for r in sorted(exp.rows, key=lambda r: (r["trial"], r["round"], r["arm"] != "ticket", r["arm"])):
    arm, trial, round_ = r["arm"], r["trial"], r["round"]
    if trial not in theta0:
      theta0[trial] = exp.theta0(trial)
    rows += stage_rows(exp, evaluator, arm, trial, round_, theta0[trial], previous)
    logging.info("[%s trial %d round %d] studied", arm, trial, round_)
  return rows


def select(rows, metric, layer="all", arms=None):
  """rows of one metric and layer in the shape plot.summarize/plot_metric take."""
  return [dict(r, diverged=math.isnan(r["value"])) for r in rows
          if r["metric"] == metric and r["layer"] == layer and (arms is None or r["arm"] in arms)]


def plot_init_magnitude(ax, rows):
  """Kept/all mean |θ0| vs % remaining: one line per layer for the ticket (and 'all' for
  random pruning, dashed, the chance baseline)."""
  layers = list(dict.fromkeys(r["layer"] for r in rows if r["layer"] != "all"))
  percents = set()
  metric = "theta0_kept_to_all_ratio"
  for i, layer in enumerate(["all", *layers]):
    sel = select(rows, metric, layer, ("ticket",))
    style = dict(color="0.6", linewidth=3) if layer == "all" else dict(color=f"C{i - 1}")
    percents.update(common.errorbar(ax, common.summarize(sel), label=f"ticket: {layer}", **style))
  dense = select(rows, metric, "all", ("ticket",))
  dense = [r for r in dense if r["round"] == 0]
  random_rows = dense + select(rows, metric, "all", ("random_prune",))
  if len(random_rows) > len(dense):
    percents.update(common.errorbar(ax, common.summarize(random_rows), linestyle="--", color="k",
                                    label=f"{plot.ARM_LABELS['random_prune']}: all"))
  ax.axhline(1.0, color="0.4", linestyle=":")
  plot.weights_remaining_axis(ax, percents)
  ax.set_ylabel("mean |θ0| of kept / of all weights")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize="small")


def write_figures(exp, rows):
  """The properties figures into ``exp``'s plots/; returns the paths."""
  heading = plot.title(exp.cfg, exp.rows)
  written = []
  fig = plot.new_figure(heading)
  plot_init_magnitude(fig.subplots(), rows)
  written += plot.save(fig, exp.output_dir, "properties_init_magnitude")

  fig = plot.new_figure(heading)
  plot.plot_metric(fig.subplots(), select(rows, "final_sign_equals_theta0"), "value", 100.0,
                   "Kept weights ending with θ0's sign (%)")
  written += plot.save(fig, exp.output_dir, "properties_sign")

  fig = plot.new_figure(heading)
  plot.plot_metric(fig.subplots(), select(rows, "distance_travelled"), "value", 1.0,
                   "‖θ_T − θ_start‖ / ‖θ_start‖ (surviving weights)")
  written += plot.save(fig, exp.output_dir, "properties_distance")

  fig = plot.new_figure(heading)
  ax = fig.subplots()
  plot.plot_metric(ax, select(rows, "untrained_test_accuracy"), "value", 100.0,
                   "Test accuracy before training (%)")
  ax.axhline(100.0 / data.NUM_CLASSES, color="0.4", linestyle=":", label="chance")
  ax.legend()
  written += plot.save(fig, exp.output_dir, "properties_supermask")
  return written


def run(output_dir, splits=None, data_dir=None, manual_dir=None, jit_compile=None):
  """The properties study of ``output_dir``; returns the paths written.

  ``splits`` (data.Splits) holds the test set for the supermask accuracy; by default the
  experiment's dataset is loaded as flags.cfg says (``data_dir``/``manual_dir`` override it).
  ``jit_compile`` defaults to the experiment's --xla.
  """
  exp = common.load(output_dir)
  if splits is None:
    splits = load_test_split(exp, data_dir, manual_dir)
  path = f"{exp.output_dir}/study_properties.csv"
  previous = {}
  for number, r in enumerate(common.read_csv(path, COLUMNS) if artifacts.exists(path) else [],
                             start=2):
    if not (isinstance(r["trial"], int) and isinstance(r["round"], int)
            and isinstance(r["value"], (int, float))):
      raise artifacts.CorruptFileError(path, f"line {number}: trial, round or value is not a "
                                             f"number")
    previous[r["arm"], r["trial"], r["round"], r["layer"], r["metric"]] = r["value"]
  rows = compute(exp, splits, jit_compile, previous)
  artifacts.write_bytes(path, common.csv_text(COLUMNS, rows))
  return [path, *write_figures(exp, rows)]
