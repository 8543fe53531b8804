"""The information plane of a ticket: I(X;T) and I(T;Y) of each hidden layer during training.

For the dense network, the ticket and its reinit control at one round, retrain each with the
core Trainer (the experiment's batch order, data split and start weights; the study's own
--threads and XLA compilation, so the numbers follow the stage's closely but not to the bit) and, at ~30 log-spaced iterations, estimate for every hidden layer T on a
fixed subset of the training set I(X;T) and I(T;Y) with one of lth_tf.study.estimators:
``noisy_kde`` (the default: T plus Gaussian noise of σ = ``sigma`` × the layer's spread, for
each ``sigma`` of a sweep, Kolchinsky & Tracey's upper and lower bounds), ``adaptive_binning``
(equal-mass bins per unit), ``kde`` (fixed noise variance 0.1) or ``binning`` (equal-width
bins). Why the first: a deterministic layer on distinct inputs has I(X;T) = log2 n, which is
all binning can show on LeNet's 300- and 100-unit layers (estimators' docstring).
"""
import math

import numpy as np
import tensorflow as tf
import tf_keras as keras

from lth_tf import artifacts, data, layout, masks, models, network, ticket, training
from lth_tf.study import common, estimators, properties
from lth_tf.study.common import StudyError

ARMS = ("dense", "ticket", "reinit")
COLUMNS = ("arm", "round", "iteration", "layer", "sigma", "i_xt", "i_ty", "i_xt_lower",
           "i_ty_lower")


def check_estimator(estimator, sigmas, bins):
  """StudyError (one line naming the flag) for an estimator, noise level or bin count that
  cannot be used (estimators.problem)."""
  message = estimators.problem(estimator, sigmas, bins)
  if message:
    raise StudyError(message)


def snapshot_iterations(iterations, points=30):
  """~``points`` distinct log-spaced iterations in [0, iterations]."""
  return sorted({0, *np.unique(np.geomspace(1, iterations, points - 1).round().astype(int))})


def hidden_model(model):
  """A model returning every hidden Dense/Conv layer's activations (the wrapper masks them)."""
  hidden = [l for l in model.layers[:-1] if l.weights]
  return keras.Model(model.inputs, [l.output for l in hidden]), [
      getattr(l, "layer", l).name for l in hidden]


def trajectory(trainer, train, table, subset_x, subset_y, at, bins, estimator="noisy_kde",
               sigmas=estimators.DEFAULT_SIGMAS):
  """Trains ``trainer.model`` through ``table``, measuring the plane at iterations ``at``."""
  probe, names = hidden_model(trainer.model)
  rows, done = [], 0
  for it in at:
    if it > done:
      trainer.train_block(train.x, train.y, table[done:it])
      done = it
    outputs = probe(subset_x, training=False)
    for name, a in zip(names, outputs if isinstance(outputs, list) else [outputs]):
      for sigma, values in estimators.estimate(estimator, a.numpy(), subset_y, sigmas, bins):
        rows.append(dict(iteration=it, layer=name, sigma=sigma, **values))
  return rows


def compute(exp, splits, round_, iterations=None, points=30, subset=5000, bins=30, trial=0,
            estimator="noisy_kde", sigmas=estimators.DEFAULT_SIGMAS):
  """Information-plane rows for dense, ticket and reinit at ``round_`` of ``exp``'s trial."""
  cfg = exp.cfg
  if round_ < 1:
    raise StudyError(f"--round={round_}: pass a round >= 1 (round 0 is the dense network, "
                     f"which the study trains anyway)")
  if exp.row("ticket", trial, round_) is None:  # its mask: the reinit arm's is the same
    raise StudyError(f"--round={round_}: {exp.output_dir} lacks the stage [ticket trial {trial} "
                     f"round {round_}], whose mask the study trains; make it with python -m "
                     f"lth_tf.main --flagfile={exp.output_dir}/flags.cfg "
                     f"--rounds={max(round_, exp.cfg.rounds)}")
  iterations = iterations or cfg.iterations
  model = ticket.wrap(models.build(cfg.model, splits.train_x.shape[1:], init=cfg.initializer))
  trainer = network.make_trainer(cfg, model)
  train = training.Split.of(splits.train_x, splits.train_y)
  pick = np.random.default_rng(layout.derive_seed(cfg.seed, "infoplane")).choice(
      len(splits.train_x), min(subset, len(splits.train_x)), replace=False)
  subset_x, subset_y = tf.constant(splits.train_x[pick]), splits.train_y[pick]
  at = snapshot_iterations(iterations, points)
  mask = exp.mask("ticket", trial, round_)
  rows = []
  for arm in ARMS:
    stage = ("ticket", 0) if arm == "dense" else (arm, round_)
    arm_mask = masks.ones_like(mask) if arm == "dense" else mask
    start = properties.start_weights(exp, stage[0], trial, stage[1], arm_mask)
    ticket.set_masks(model, arm_mask)
    ticket.set_weights(model, start)
    trainer.reset_optimizer()
    seed = layout.data_seed(cfg, trial, stage[1])
    table = data.batch_indices(len(splits.train_x), cfg.batch_size, iterations, seed)
    for r in trajectory(trainer, train, table, subset_x, subset_y, at, bins, estimator, sigmas):
      rows.append(dict(arm=arm, round=stage[1], **r))
  return rows


def write_figure(exp, rows, round_, estimator):
  """One panel per arm (columns) and noise level (rows, noisy_kde's sweep); each layer's
  trajectory coloured by iteration."""
  from matplotlib import colors

  from lth_tf import plot
  arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
  def level(r):  # nan (no noise) is one level: each nan is a distinct dict key otherwise
    return None if math.isnan(r["sigma"]) else r["sigma"]

  sigmas = list(dict.fromkeys(level(r) for r in rows))
  fig = plot.new_figure(f"Information plane ({estimator}), {exp.cfg.model} on "
                        f"{exp.cfg.dataset}, round {round_} masks", width=5.0 * len(arms))
  fig.set_size_inches(5.0 * len(arms), 1.0 + 3.6 * len(sigmas))
  grid = fig.subplots(len(sigmas), len(arms), sharex="row", sharey="row", squeeze=False)
  last = max(r["iteration"] for r in rows)
  norm = colors.SymLogNorm(linthresh=1, vmin=0, vmax=last)
  for axes, sigma in zip(grid, sigmas):
    for ax, arm in zip(axes, arms):
      xs, ys = [], []
      for marker, layer in zip("os^vD", dict.fromkeys(r["layer"] for r in rows)):
        pts = [r for r in rows if r["arm"] == arm and r["layer"] == layer
               and level(r) == sigma]
        xs += [p["i_xt"] for p in pts]
        ys += [p["i_ty"] for p in pts]
        ax.plot([p["i_xt"] for p in pts], [p["i_ty"] for p in pts], color="0.7", lw=0.8)
        sc = ax.scatter([p["i_xt"] for p in pts], [p["i_ty"] for p in pts],
                        c=[p["iteration"] for p in pts], cmap="viridis", norm=norm, s=14,
                        marker=marker, label=layer)
      for values, set_lim in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
        if values and max(values) - min(values) < 1e-6:  # a saturated estimator: one point
          set_lim(min(values) - 0.5, max(values) + 0.5)
      noise = "" if sigma is None else f", σ = {sigma:g} × spread"
      ax.set_title(f"{arm}{noise}", fontsize=9)
      ax.set_xlabel("I(X;T) (bits)")
      ax.grid(True, alpha=0.3)
      ax.legend(fontsize=7)
    axes[0].set_ylabel("I(T;Y) (bits)")
  fig.colorbar(sc, ax=list(grid.ravel()), label="iteration")
  return plot.save(fig, exp.output_dir, f"infoplane_{estimator}")


def run(output_dir, round_, splits=None, data_dir=None, manual_dir=None, iterations=None,
        points=30, subset=5000, bins=30, estimator="noisy_kde",
        sigmas=estimators.DEFAULT_SIGMAS):
  """Writes study_infoplane_<estimator>.csv and plots/infoplane_<estimator>.{png,pdf};
  returns the paths."""
  check_estimator(estimator, list(sigmas), bins)
  exp = common.load(output_dir)
  if splits is None:
    splits = properties.load_test_split(exp, data_dir, manual_dir)
  rows = compute(exp, splits, round_, iterations, points, subset, bins, estimator=estimator,
                 sigmas=tuple(sigmas))
  path = f"{output_dir}/study_infoplane_{estimator}.csv"
  artifacts.write_bytes(path, common.csv_text(COLUMNS, rows))
  return [path, *write_figure(exp, rows, round_, estimator)]
