"""The information plane of a ticket: I(X;T) and I(T;Y) of each hidden layer during training.

For the dense network, the ticket and its reinit control at one round, retrain each with the
core Trainer (the same compiled step, batch order and start weights as the experiment's stage)
and, at ~30 log-spaced iterations, estimate for every hidden layer T on a fixed subset of the
training set:

- binning (Shwartz-Ziv & Tishby 2017): each unit's activation is put into one of ``bins``
  equal-width bins. With ReLU units the bins span [0, the layer's maximum activation at that
  iteration] (Saxe et al. 2018's adaptive range for non-saturating units): a fixed range would
  put almost every unit in bin 0 early in training and saturate late.
- T is then discrete and a deterministic function of X, and every example of the subset is a
  distinct X, so I(X;T) = H(T) and I(T;Y) = H(Y) − H(Y|T), from counts (bits).

Binning saturates for wide layers: with 100+ units, almost every example of the subset gets a
binned pattern of its own, so I(X;T) = log2(subset) and I(T;Y) = H(Y) at every iteration (we
measured exactly that for LeNet-300-100). ``estimator="kde"`` (the default) is Saxe et al.'s
other estimator, the Kolchinsky & Tracey pairwise-distance upper bound for T plus Gaussian
noise of variance ``noise_var``: I(X;T) = −mean_i log mean_j exp(−‖t_i − t_j‖² / 2σ²) and
I(T;Y) = I(X;T) − Σ_y p(y)·(the same term within class y), in bits.
"""
import numpy as np
import tensorflow as tf
import tf_keras as keras

from lth_tf import artifacts, data, layout, masks, models, network, ticket, training
from lth_tf.study import common, properties
from lth_tf.study.common import StudyError

ARMS = ("dense", "ticket", "reinit")


def entropy(counts):
  """Entropy in bits of a distribution given by counts."""
  p = np.asarray(counts, float)
  p = p[p > 0] / p.sum()
  return float(-(p * np.log2(p)).sum())


def discretize(activations, bins=30):
  """Row ids of binned activations: equal-width bins over [min(0, a.min()), a.max()]."""
  a = np.asarray(activations, np.float64).reshape(len(activations), -1)
  low, high = min(0.0, a.min()), a.max()
  binned = np.floor((a - low) / max(high - low, 1e-12) * bins).clip(0, bins - 1).astype(np.int64)
  _, ids = np.unique(binned, axis=0, return_inverse=True)
  return ids.ravel()


def mutual_information(t_ids, y):
  """(I(X;T), I(T;Y)) in bits for a discrete T that is a function of distinct inputs X."""
  t_ids, y = np.asarray(t_ids), np.asarray(y)
  h_t = entropy(np.unique(t_ids, return_counts=True)[1])
  h_y = entropy(np.unique(y, return_counts=True)[1])
  joint = np.unique(np.stack([t_ids, y]), axis=1, return_counts=True)[1]
  return h_t, h_t + h_y - entropy(joint)


def kde_mutual_information(activations, y, noise_var=0.1):
  """(I(X;T), I(T;Y)) in bits by the pairwise-distance KDE bound (see the module docstring)."""
  t = tf.reshape(tf.constant(activations, tf.float32), (len(activations), -1))

  def term(h):  # −mean_i log mean_j exp(−d_ij / 2σ²), in nats
    sq = tf.reduce_sum(h * h, axis=1)
    d = tf.maximum(sq[:, None] + sq[None, :] - 2.0 * tf.matmul(h, h, transpose_b=True), 0.0)
    n = tf.cast(tf.shape(h)[0], tf.float32)
    return float(-tf.reduce_mean(tf.reduce_logsumexp(-d / (2 * noise_var), axis=1)
                                 - tf.math.log(n)))

  y = np.asarray(y)
  i_xt = term(t)
  h_t_given_y = sum((y == c).mean() * term(tf.boolean_mask(t, y == c)) for c in np.unique(y))
  return i_xt / np.log(2), (i_xt - h_t_given_y) / np.log(2)


def snapshot_iterations(iterations, points=30):
  """~``points`` distinct log-spaced iterations in [0, iterations]."""
  return sorted({0, *np.unique(np.geomspace(1, iterations, points - 1).round().astype(int))})


def hidden_model(model):
  """A model returning every hidden Dense/Conv layer's activations (the wrapper masks them)."""
  hidden = [l for l in model.layers[:-1] if l.weights]
  return keras.Model(model.inputs, [l.output for l in hidden]), [
      getattr(l, "layer", l).name for l in hidden]


def trajectory(trainer, train, table, subset_x, subset_y, at, bins, estimator="kde"):
  """Trains ``trainer.model`` through ``table``, measuring the plane at iterations ``at``."""
  probe, names = hidden_model(trainer.model)
  rows, done = [], 0
  for it in at:
    if it > done:
      trainer.train_block(train.x, train.y, table[done:it])
      done = it
    outputs = probe(subset_x, training=False)
    for name, a in zip(names, outputs if isinstance(outputs, list) else [outputs]):
      if estimator == "kde":
        ixt, ity = kde_mutual_information(a.numpy(), subset_y)
      else:
        ixt, ity = mutual_information(discretize(a.numpy(), bins), subset_y)
      rows.append(dict(iteration=it, layer=name, i_xt=ixt, i_ty=ity))
  return rows


def compute(exp, splits, round_, iterations=None, points=30, subset=5000, bins=30, trial=0,
            estimator="kde"):
  """Information-plane rows for dense, ticket and reinit at ``round_`` of ``exp``'s trial."""
  cfg = exp.cfg
  if exp.row("ticket", trial, round_) is None or round_ < 1:
    raise StudyError(f"--round={round_}: trial {trial}'s ticket has not finished that round "
                     f"(pass a finished round >= 1)")
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
    for r in trajectory(trainer, train, table, subset_x, subset_y, at, bins, estimator):
      rows.append(dict(arm=arm, round=stage[1], **r))
  return rows


def write_figure(exp, rows, round_, estimator):
  from lth_tf import plot
  arms = [a for a in ARMS if any(r["arm"] == a for r in rows)]
  fig = plot.new_figure(f"Information plane ({estimator}), {exp.cfg.model} on "
                        f"{exp.cfg.dataset}, round {round_} masks", width=5.0 * len(arms))
  axes = fig.subplots(1, len(arms), sharex=True, sharey=True, squeeze=False)[0]
  last = max(r["iteration"] for r in rows)
  norm = __import__("matplotlib").colors.SymLogNorm(linthresh=1, vmin=0, vmax=last)
  for ax, arm in zip(axes, arms):
    for marker, layer in zip("os^vD", dict.fromkeys(r["layer"] for r in rows)):
      pts = [r for r in rows if r["arm"] == arm and r["layer"] == layer]
      ax.plot([p["i_xt"] for p in pts], [p["i_ty"] for p in pts], color="0.7", lw=0.8)
      sc = ax.scatter([p["i_xt"] for p in pts], [p["i_ty"] for p in pts],
                      c=[p["iteration"] for p in pts], cmap="viridis", norm=norm, s=14,
                      marker=marker, label=layer)
    ax.set_title(arm)
    ax.set_xlabel("I(X;T) (bits)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
  axes[0].set_ylabel("I(T;Y) (bits)")
  fig.colorbar(sc, ax=list(axes), label="iteration")
  return plot.save(fig, exp.output_dir, "infoplane")


def run(output_dir, round_, splits=None, data_dir=None, manual_dir=None, iterations=None,
        points=30, subset=5000, bins=30, estimator="kde"):
  """Writes study_infoplane.csv and plots/infoplane.{png,pdf}; returns the paths."""
  exp = common.load(output_dir)
  if splits is None:
    splits = properties.load_test_split(exp, data_dir, manual_dir)
  if estimator not in ("kde", "binning"):
    raise StudyError(f"--estimator={estimator} is unknown; use kde or binning")
  rows = compute(exp, splits, round_, iterations, points, subset, bins, estimator=estimator)
  path = f"{output_dir}/study_infoplane.csv"
  artifacts.write_bytes(path, common.csv_text(
      ["arm", "round", "iteration", "layer", "i_xt", "i_ty"], rows))
  return [path, *write_figure(exp, rows, round_, estimator)]
