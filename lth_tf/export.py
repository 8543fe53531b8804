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

import tensorflow as tf
import tensorflow_model_optimization as tfmot

from lth_tf import ticket


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


def to_tflite(ticket_dir):
  """Converts a ticket SavedModel to ``<ticket_dir>/model.tflite``; returns its path."""
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
  print(to_tflite(FLAGS.ticket))


def run():
  from absl import app, flags
  flags.DEFINE_string("ticket", None, "A ticket folder written by lth_tf.main.")
  flags.DEFINE_enum("format", "tflite", ["tflite"], "Export format.")
  app.run(main)


if __name__ == "__main__":
  run()
