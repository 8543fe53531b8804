"""TensorBoard: one run per stage (<arm>/trial_<t>/round_<r>) and an experiment summary run.

A stage's run has train/validation(/test) loss and accuracy at every evaluation, written live,
per-layer % weights remaining (what TF-MOT's PruningSummaries shows), and histograms of the
surviving weights at the start and the end of the round. The ``summary`` run holds the paper's
Figure 4 as scalars by round (one tag per arm) and the HParams dashboard entry.

  tensorboard --logdir <output_dir>/tensorboard
"""
import collections

import numpy as np
import tensorflow as tf
import tf_keras as keras

from lth_tf import ticket

_CURVE_TAGS = {"loss": "train/loss", "accuracy": "train/accuracy", "val_loss": "validation/loss",
               "val_accuracy": "validation/accuracy", "test_loss": "test/loss",
               "test_accuracy": "test/accuracy"}


def stage_run(logdir, arm, trial, round_):
  return f"{logdir}/{arm}/trial_{trial}/round_{round_}"


class StageSummaries(keras.callbacks.Callback):
  """Writes one stage's TensorBoard run while it trains (x axis: iteration within the round).

  ``mask`` is the stage's ({layer: 0/1}): the model that trains may be the compact network
  (--compact_training), which holds only the kept weights and no mask.
  """

  def __init__(self, run_dir, iterations, mask):
    super().__init__()
    self.run_dir, self.iterations, self.mask = run_dir, iterations, mask
    self.writer = None

  def _histograms(self, name, step):
    masks = ticket.get_masks(self.model)  # none in a compact network: every weight is kept
    for layer, weights in ticket.get_weights(self.model).items():
      kernel = weights[0][masks[layer] > 0] if layer in masks else weights[0]
      tf.summary.histogram(f"weights_{name}/{layer}", kernel, step=step)

  def on_train_begin(self, logs=None):
    self.writer = tf.summary.create_file_writer(self.run_dir)
    with self.writer.as_default():
      masks = self.mask
      for layer, m in masks.items():
        tf.summary.scalar(f"weights_remaining/{layer}", 100.0 * float(m.mean()), step=0)
      total = sum(m.size for m in masks.values())
      tf.summary.scalar("weights_remaining/all", 100.0 * sum(float(m.sum()) for m in
                                                             masks.values()) / total, step=0)
      self._histograms("start", 0)

  def on_epoch_end(self, epoch, logs=None):
    with self.writer.as_default():
      for key, tag in _CURVE_TAGS.items():
        if key in logs:
          tf.summary.scalar(tag, logs[key], step=logs["iteration"])
    self.writer.flush()

  def on_train_end(self, logs=None):
    with self.writer.as_default():
      self._histograms("end", self.iterations)
    self.writer.close()


def write_summary(logdir, rows, hparams):
  """Rewrites the ``summary`` run: per-arm means over trials by round, and the HParams entry."""
  from tensorboard.plugins.hparams import api as hp

  run = f"{logdir}/summary"
  if tf.io.gfile.exists(run):
    tf.io.gfile.rmtree(run)
  by_arm = collections.defaultdict(lambda: collections.defaultdict(list))
  dense = [r for r in rows if r["round"] == 0]
  for r in rows:
    if not r["diverged"]:
      by_arm[r["arm"]][r["round"]].append(r)
  for arm in list(by_arm):
    if arm != "ticket":
      by_arm[arm][0] = [r for r in dense if not r["diverged"]]
  writer = tf.summary.create_file_writer(run)
  with writer.as_default():
    hp.hparams({k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
                for k, v in hparams.items()})
    for arm, rounds in by_arm.items():
      for round_, rs in sorted(rounds.items()):
        mean = lambda key: float(np.mean([r[key] for r in rs]))
        tf.summary.scalar(f"early_stop_iteration/{arm}", mean("early_stop_iteration"), step=round_)
        tf.summary.scalar(f"early_stop_test_accuracy/{arm}", mean("early_stop_test_accuracy"),
                          step=round_)
        tf.summary.scalar(f"weights_remaining/{arm}", mean("weights_remaining"), step=round_)
  writer.close()
