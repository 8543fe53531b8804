"""Tickets as TensorFlow SavedModels that need nothing from lth_tf to be used or retrained.

A ticket folder holds the model with TF-MOT's wrappers stripped (trained, masked weights; a
serving signature from uint8 images as TFDS yields them to logits), plus two variable groups:
``lottery_mask`` {layer: uint8 0/1} and ``lottery_init`` {layer: [arrays]} = θ0⊙mask, the
weights to retrain the ticket from. ``tf.saved_model.load(path)`` and
``tf_keras.models.load_model(path)`` both read it.

  python -m lth_tf.export --ticket=<ticket folder> --format=tflite   # also a .tflite file

Deployment formats of a finished stage (read from its weights.npz and masks.npz; each written
atomically into a new folder of the stage, nothing the experiment wrote is changed):

  python -m lth_tf.export --output_dir=<experiment> --round=R --format=compact
      <stage>/compact/: the smallest dense model computing what the masked ticket computes
      (lth_tf.compact), as a SavedModel, model.tflite, and compaction.json (what was removed,
      and the check: its logits against the masked ticket's on the test split)
  python -m lth_tf.export --output_dir=<experiment> --round=R --format=tflite_sparse
      <stage>/tflite_sparse/: the masked ticket through the converter's sparsity optimization,
      model.tflite and storage.json (each weight tensor: stored sparse or dense, read from the
      converted flatbuffer)
"""
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import uuid

import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from lth_tf import artifacts, compact, data, layout, models, ticket


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
    write_folder(path, lambda tmp: self.model.save(tmp, save_format="tf",
                                                   include_optimizer=False))


def write_folder(path, fill):
  """Makes folder ``path`` atomically: ``fill(tmp)`` writes a sibling ``<path>.tmp-*`` that then
  replaces ``path``; a reader never sees half an export, a killed one leaves only a .tmp-*
  (removed by the next export; the previous export, if the kill fell between the two renames)."""
  for stale in tf.io.gfile.glob(f"{path}.tmp-*"):
    tf.io.gfile.rmtree(stale)
  tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
  fill(tmp)
  if tf.io.gfile.exists(path):  # moved aside, not deleted, until the new one is in place
    old = f"{path}.tmp-old-{uuid.uuid4().hex[:8]}"
    tf.io.gfile.rename(path, old)
    tf.io.gfile.rename(tmp, path)
    tf.io.gfile.rmtree(old)
  else:
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


class ExportError(Exception):
  """A stage that cannot be exported in the asked format; one line naming it and the fix."""


@dataclasses.dataclass
class StageNetwork:
  """A finished stage's trained network as its files hold it."""
  path: str
  model: str
  input_shape: tuple
  weights: dict  # {layer: [kernel, bias]}, the kernels masked (the last iteration's)
  mask: dict     # {layer: 0/1}: the mask the weights were trained under
  dataset: str
  experiment: object = None  # the folder as lth_tf.study.common.load read it


def stage_network(output_dir, round_, arm="ticket", trial=0):
  """The trained network of stage (arm, trial, round_) of the experiment in ``output_dir``.

  ExportError (one line) when the folder is not an experiment, the stage is not one of it or
  has not finished, or its weights are not here (weights.npz stays out of git).
  """
  from lth_tf.study import common
  try:
    exp = common.load(output_dir)
  except (common.StudyError, artifacts.CorruptFileError) as e:
    raise ExportError(str(e)) from None
  cfg = exp.cfg
  if not isinstance(round_, int) or not 0 <= round_ <= cfg.rounds:
    raise ExportError(f"--round={round_}: {output_dir} has rounds 0 to {cfg.rounds}")
  if not isinstance(trial, int) or not 0 <= trial < cfg.trials:
    raise ExportError(f"--trial={trial}: {output_dir} has trials 0 to {cfg.trials - 1}")
  if arm not in cfg.arms(round_):
    raise ExportError(f"--arm={arm}: round {round_} of {output_dir} has the arms "
                      f"{', '.join(cfg.arms(round_))}")
  path = layout.stage_dir(output_dir, arm, trial, round_)
  if exp.row(arm, trial, round_) is None:
    raise ExportError(f"[{arm} trial {trial} round {round_}] of {output_dir} has not finished; "
                      f"run python -m lth_tf.main --flagfile={output_dir}/flags.cfg")
  if exp.row(arm, trial, round_)["diverged"]:
    raise ExportError(f"[{arm} trial {trial} round {round_}] of {output_dir} diverged (NaN/inf "
                      f"loss): its weights compute nothing to deploy; export another round")
  if not exp.has_weights(arm, trial, round_):
    raise ExportError(f"{path}/weights.npz is missing: the stage's trained weights stay where "
                      f"lth_tf.main ran (not in git); rerun the experiment into a new folder, "
                      f"python -m lth_tf.main --flagfile={output_dir}/flags.cfg "
                      f"--output_dir=<new folder>, and export from there")
  try:
    weights = exp.weights(arm, trial, round_)
    final = f"{path}/final_masks.npz"  # a mask that moved during training: the one it ended on
    if artifacts.exists(final):
      shapes = {n: s for n, (s, _) in cfg.kernel_shapes().items()}
      mask = artifacts.read_mask(final, shapes)
    else:
      mask = exp.mask(arm, trial, round_)
  except artifacts.CorruptFileError as e:
    raise ExportError(str(e)) from None
  return StageNetwork(path, cfg.model, data.SHAPES[cfg.dataset], weights, mask, cfg.dataset,
                      exp)


def masked_model(net):
  """The full-size tf-keras model of ``net`` with its trained, masked weights."""
  model = models.build(net.model, net.input_shape)
  for name, layer in ticket.weight_layers(model).items():
    for i, (var, value) in enumerate(zip(layer.weights, net.weights[name])):
      var.assign(value * net.mask[name] if i == 0 and name in net.mask else value)
  return model


def check_images(net, count=None):
  """Images to compare two models on: the experiment's test split when its data is prepared
  (or can be, offline, from its --manual_dir: an export never downloads), else seeded random
  images, said on stderr; (images, what they are)."""
  import tensorflow_datasets as tfds

  from lth_tf.study import properties
  exp = net.experiment
  data_dir = exp.resolve(exp.recorded.data_dir)
  manual_dir = exp.resolve(exp.recorded.manual_dir)
  why = "it is not prepared and the folder names no --manual_dir"
  if tfds.builder(net.dataset, data_dir=data_dir).is_prepared() or manual_dir:
    try:
      splits = properties.load_test_split(exp)
      x = splits.test_x if count is None else splits.test_x[:count]
      return x, f"the {net.dataset} test split ({len(x)} images)"
    except (data.DatasetUnavailableError, OSError, tf.errors.OpError) as e:
      why = artifacts.error_text(e)
  print(f"lth_tf.export: the {net.dataset} test split cannot be read ({why}); checking on "
        f"random images", file=sys.stderr)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (count or 1000,) + tuple(net.input_shape), dtype=np.uint8)
  return x, f"{len(x)} random images (the {net.dataset} test split cannot be read here)"


def logits(model, x, chunk=1000):
  return np.concatenate([model(x[i:i + chunk], training=False).numpy()
                         for i in range(0, len(x), chunk)])


TOLERANCE = 1e-4  # of the largest |logit| (at least 1): float rounding, not a change


def compare(reference, candidate, x):
  """compare_logits of two models on images ``x``."""
  return compare_logits(logits(reference, x), logits(candidate, x))


def compare_logits(a, b):
  """How closely logits ``b`` match reference logits ``a``: max |Δlogit|, max |logit|, and
  the fraction of images whose predicted class differs where the reference's own choice is
  clear (a tie within float rounding may fall either way)."""
  scale = max(1.0, float(np.abs(a).max()))
  picked = b.argmax(-1)
  margin = a.max(-1) - np.take_along_axis(a, picked[:, None], -1)[:, 0]
  return dict(max_abs_logit_difference=float(np.abs(a - b).max()),
              max_abs_logit=float(np.abs(a).max()),
              predictions_differing=float((margin > TOLERANCE * scale).mean()))


def compact_network(net):
  """(the compact tf-keras model of ``net``, its compact.Plan); ExportError if the model or
  the mask cannot be compacted."""
  try:
    p = compact.plan(net.model, net.input_shape, net.weights, net.mask)
  except compact.CompactionError as e:
    raise ExportError(f"{net.path}: {e}") from None
  return compact.build(p, compact.compact_weights(p, net.weights, net.mask)), p


def parameters(model):
  return int(sum(np.prod(v.shape) for v in model.weights))


def tflite_bytes(saved_model_dir):
  return tf.lite.TFLiteConverter.from_saved_model(saved_model_dir).convert()


def export_compact(output_dir, round_, arm="ticket", trial=0):
  """Writes ``<stage>/compact`` (SavedModel, model.tflite, compaction.json); returns its path.

  The compact model is checked against the masked ticket before anything is written: the same
  class on every check image and logits within float rounding (TOLERANCE);
  RuntimeError otherwise (a bug, not bad input).
  """
  net = stage_network(output_dir, round_, arm, trial)
  model, p = compact_network(net)
  full = masked_model(net)
  x, source = check_images(net)
  check = dict(compare(full, model, x), images=source)
  if not np.isfinite([check["max_abs_logit"], check["max_abs_logit_difference"]]).all():
    raise ExportError(f"{net.path}: its logits are not finite (NaN/inf weights?); export "
                      f"another round")
  if (check["predictions_differing"] > 0 or check["max_abs_logit_difference"]
      > TOLERANCE * max(1.0, check["max_abs_logit"])):
    raise RuntimeError(f"{net.path}: the compact model does not compute the ticket: {check}")
  report = dict(stage=net.path, model=net.model, layers=p.summary(net.mask),
                parameters=dict(masked=parameters(full), compact=parameters(model)),
                nonzero_weights=int(sum((m > 0).sum() for m in net.mask.values())), check=check)

  def fill(tmp):
    model.save(tmp, save_format="tf", include_optimizer=False)
    with open(os.path.join(tmp, "model.tflite"), "wb") as f:
      f.write(tflite_bytes(tmp))
    with open(os.path.join(tmp, "compaction.json"), "w") as f:
      json.dump(report, f, indent=1)

  path = f"{net.path}/compact"
  write_folder(path, fill)
  return path


def export_tflite_sparse(output_dir, round_, arm="ticket", trial=0):
  """Writes ``<stage>/tflite_sparse`` (model.tflite with the converter's sparsity
  optimization, storage.json: how each weight tensor was stored); returns its path."""
  from lth_tf import tflite_sparse
  net = stage_network(output_dir, round_, arm, trial)
  saved = tempfile.mkdtemp(prefix="lth_tf_export_")
  try:
    masked_model(net).save(saved, save_format="tf", include_optimizer=False)
    content = tflite_sparse.convert(saved, sparse=True)
  finally:
    shutil.rmtree(saved, ignore_errors=True)
  storage = tflite_sparse.weight_storage(content)

  def fill(tmp):
    os.makedirs(tmp)
    with open(os.path.join(tmp, "model.tflite"), "wb") as f:
      f.write(content)
    with open(os.path.join(tmp, "storage.json"), "w") as f:
      json.dump(dict(stage=net.path, tensors=storage), f, indent=1)

  path = f"{net.path}/tflite_sparse"
  write_folder(path, fill)
  print(tflite_sparse.describe(storage))
  return path


FORMATS = ("tflite", "compact", "tflite_sparse")


def fail(message):
  """One line on stderr, exit code 2: bad input, never a crash."""
  print(f"lth_tf.export: error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  from absl import flags, logging
  FLAGS = flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # not the SavedModel writer's lines
  tf.get_logger().setLevel("ERROR")
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.format == "tflite" and FLAGS.ticket:
    if not tf.io.gfile.exists(f"{FLAGS.ticket}/saved_model.pb"):
      fail(f"--ticket={FLAGS.ticket} is not a ticket SavedModel folder; pass "
           f"<output_dir>/<arm>/trial_<t>/round_<r>/ticket")
    try:
      print(to_tflite(FLAGS.ticket))
    except artifacts.CorruptFileError as e:
      fail(e)
    return
  if FLAGS.ticket:
    fail(f"--ticket is for --format=tflite; --format={FLAGS.format} takes --output_dir and "
         f"--round (and --arm, --trial)")
  if not FLAGS.output_dir or FLAGS.round is None:
    fail(f"--format={FLAGS.format} needs --output_dir=<experiment folder> and --round=R "
         f"(and --arm, --trial: default ticket, 0)")
  try:
    if FLAGS.format == "tflite":
      net = stage_network(FLAGS.output_dir, FLAGS.round, FLAGS.arm, FLAGS.trial)
      ticket_dir = f"{net.path}/ticket"
      if not tf.io.gfile.exists(f"{ticket_dir}/saved_model.pb"):
        fail(f"{ticket_dir} is missing: the experiment ran with --export=false; use "
             f"--format=compact or --format=tflite_sparse, which read weights.npz")
      print(to_tflite(ticket_dir))
    elif FLAGS.format == "compact":
      print(export_compact(FLAGS.output_dir, FLAGS.round, FLAGS.arm, FLAGS.trial))
    else:
      print(export_tflite_sparse(FLAGS.output_dir, FLAGS.round, FLAGS.arm, FLAGS.trial))
  except (ExportError, artifacts.CorruptFileError) as e:
    fail(e)


def define_flags():
  """Defined only when run as a command, so importing this module defines no flags."""
  from absl import flags
  flags.DEFINE_string("ticket", None, "--format=tflite: a ticket folder written by lth_tf.main.")
  flags.DEFINE_enum("format", "tflite", list(FORMATS), "tflite: the ticket SavedModel as "
                    ".tflite; compact: the smallest dense model computing the ticket's "
                    "function (SavedModel and .tflite); tflite_sparse: TFLite with the "
                    "converter's sparsity optimization, and which tensors it stored sparse.")
  flags.DEFINE_string("output_dir", None, "The experiment folder (with --round).")
  flags.DEFINE_integer("round", None, "The stage's round.")
  flags.DEFINE_string("arm", "ticket", "The stage's arm (ticket or a control).")
  flags.DEFINE_integer("trial", 0, "The stage's trial.")


def parse_flags(argv):
  """absl's parsing, its errors (an unknown flag or format, a value of the wrong type) one line
  and exit code 2 like the export's own."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    fail(f"{first.removeprefix('ERROR:: ')}; see python -m lth_tf.export --helpfull")


def run():
  from absl import app
  define_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
