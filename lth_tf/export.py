"""Tickets as TensorFlow SavedModels that need nothing from lth_tf to be used or retrained.

A ticket folder holds the model with TF-MOT's wrappers stripped (trained, masked weights; a
serving signature from uint8 images as TFDS yields them to logits), plus two variable groups:
``lottery_mask`` {layer: uint8 0/1} and ``lottery_init`` {layer: [arrays]} = θ0⊙mask, the
weights to retrain the ticket from. ``tf.saved_model.load(path)`` and
``tf_keras.models.load_model(path)`` both read it.

  python -m lth_tf.export --ticket=<ticket folder> --format=tflite   # also a .tflite file
"""
import sys
import uuid

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from lth_tf import artifacts, ticket


class TicketExporter:
  """Exports the current state of one wrapped model, stage after stage.

  The stripped model is built once and shares the wrapped model's variables (that is what
  ``strip_pruning`` does), so each export costs one save and nothing is rebuilt per round.
  """

  def __init__(self, wrapped_model):
    self.wrapped = wrapped_model
    self.model = tfmot.sparsity.keras.strip_pruning(wrapped_model)
    self.model.lottery_mask = {
        n: tf.Variable(tf.zeros(k.shape, tf.uint8), trainable=False, name=f"mask_{n}")
        for n, k in ticket.get_kernels(wrapped_model).items()}
    self.model.lottery_init = {
        n: [tf.Variable(tf.zeros_like(w), trainable=False, name=f"init_{n}_{i}")
            for i, w in enumerate(ws)]
        for n, ws in ticket.get_weights(wrapped_model).items()}

  def export(self, path, init_weights):
    """Writes the wrapped model's current (trained) ticket to ``path``, atomically.

    ``init_weights`` are the weights the round started from, before masking.
    """
    ticket.apply_masks(self.wrapped)
    mask = ticket.get_masks(self.wrapped)
    for n, var in self.model.lottery_mask.items():
      var.assign(tf.cast(mask[n], tf.uint8))
    for n, variables in self.model.lottery_init.items():
      for i, var in enumerate(variables):
        value = init_weights[n][i]
        var.assign(value * mask[n] if i == 0 and n in mask else value)
    for stale in tf.io.gfile.glob(f"{path}.tmp-*"):  # left by a run killed mid-export
      tf.io.gfile.rmtree(stale)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    self.model.save(tmp, save_format="tf", include_optimizer=False)
    if tf.io.gfile.exists(path):
      tf.io.gfile.rmtree(path)
    tf.io.gfile.rename(tmp, path)


def check_ticket(ticket_dir):
  """Loads the ticket SavedModel in ``ticket_dir`` and checks what lth_tf wrote into it: every
  layer's lottery_mask 0/1 and shaped like its lottery_init kernel. CorruptFileError (one line
  naming the folder and the fix) if it cannot be read or does not hold that."""
  try:
    loaded = tf.saved_model.load(ticket_dir)
  except Exception as e:  # OSError (a bad saved_model.pb), IndexError, OpError...
    raise artifacts.CorruptFileError(ticket_dir, f"not a readable SavedModel: "
                                                 f"{artifacts.error_text(e)}") from None
  mask, init = getattr(loaded, "lottery_mask", None), getattr(loaded, "lottery_init", None)
  if not mask or not init:
    raise artifacts.CorruptFileError(ticket_dir, "no lottery_mask and lottery_init: not a "
                                                 "ticket written by lth_tf.main")
  for name, m in mask.items():
    values = m.numpy()
    if name not in init or tuple(init[name][0].shape) != values.shape:
      raise artifacts.CorruptFileError(ticket_dir, f"lottery_mask {name} does not fit its "
                                                   f"lottery_init kernel")
    if not np.isin(values, (0, 1)).all():
      raise artifacts.CorruptFileError(ticket_dir, f"lottery_mask {name} has values other "
                                                   f"than 0 and 1")
  return loaded


def to_tflite(ticket_dir):
  """Converts a ticket SavedModel to ``<ticket_dir>/model.tflite``; returns its path.
  CorruptFileError if the folder is not a whole ticket (check_ticket)."""
  check_ticket(ticket_dir)
  converter = tf.lite.TFLiteConverter.from_saved_model(ticket_dir)
  path = f"{ticket_dir}/model.tflite"
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(converter.convert())
  return path


def main(argv):
  from absl import flags
  del argv
  FLAGS = flags.FLAGS
  if not FLAGS.ticket or not tf.io.gfile.exists(f"{FLAGS.ticket}/saved_model.pb"):
    print(f"lth_tf.export: error: --ticket={FLAGS.ticket} is not a ticket SavedModel folder; "
          f"pass <output_dir>/<arm>/trial_<t>/round_<r>/ticket", file=sys.stderr)
    sys.exit(2)
  try:
    print(to_tflite(FLAGS.ticket))
  except artifacts.CorruptFileError as e:
    print(f"lth_tf.export: error: {e}", file=sys.stderr)
    sys.exit(2)


def run():
  from absl import app, flags
  flags.DEFINE_string("ticket", None, "A ticket folder written by lth_tf.main.")
  flags.DEFINE_enum("format", "tflite", ["tflite"], "Export format.")
  app.run(main)


if __name__ == "__main__":
  run()
