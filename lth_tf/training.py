"""One training round: fit for a number of iterations with validation every ``eval_every``,
early-stopping bookkeeping, test accuracy at the early-stopping iteration, and periodic
checkpoints from which an interrupted round resumes bit-identically.

Works on any compiled Keras classifier; knows nothing of pruning or of the experiment loop.
The model is compiled once and reused across rounds (a fresh optimizer is a zeroed one), so
no tf.function is retraced from round to round.
"""
import dataclasses
import json
import math
import time

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging


@dataclasses.dataclass
class Progress:
  """Everything about a round in flight that is not a TF variable: enough to resume it."""
  iteration: int = 0
  curve: list = dataclasses.field(default_factory=list)  # one dict per evaluation
  best_index: int = -1  # index into curve of the minimum validation loss so far
  diverged: bool = False

  @property
  def best(self):
    return self.curve[self.best_index] if self.best_index >= 0 else None


@dataclasses.dataclass
class RoundResult:
  curve: list
  early_stop_iteration: int
  early_stop_val_loss: float
  early_stop_val_accuracy: float
  early_stop_test_accuracy: float
  final_test_accuracy: float
  diverged: bool
  seconds: float


def compile_model(model, learning_rate, jit_compile=False, steps_per_execution=1):
  """Compiles ``model`` once with Adam and cross-entropy on logits; returns the optimizer."""
  optimizer = keras.optimizers.Adam(learning_rate)
  model.compile(optimizer=optimizer,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"], jit_compile=jit_compile,
                steps_per_execution=steps_per_execution)
  optimizer.build(model.trainable_variables)  # slots exist before any restore or reset
  return optimizer


def reset_optimizer(optimizer):
  """Makes the compiled optimizer fresh (step 0, zero moments) without recompiling."""
  for v in optimizer.variables:
    v.assign(tf.zeros_like(v))


class RoundCheckpoint:
  """Training state of one round on disk: TF checkpoint (model incl. masks, optimizer) plus
  a side file with the Progress and the best-so-far weights, both named by iteration.

  The side files are written before ``CheckpointManager.save`` atomically updates its index,
  so the index never names a checkpoint whose side files are missing.
  """

  def __init__(self, directory, model, optimizer, max_to_keep=2):
    self.directory = directory
    self._ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
    self._manager = tf.train.CheckpointManager(self._ckpt, directory, max_to_keep=max_to_keep)

  def _side(self, iteration):
    return f"{self.directory}/progress-{iteration}.npz"

  def save(self, progress, best_weights):
    import io
    buf = io.BytesIO()
    np.savez(buf, progress=np.frombuffer(json.dumps(dataclasses.asdict(progress)).encode(),
                                         np.uint8),
             **{f"w{i}": w for i, w in enumerate(best_weights or [])})
    tf.io.gfile.makedirs(self.directory)
    with tf.io.gfile.GFile(self._side(progress.iteration), "wb") as f:
      f.write(buf.getvalue())
    self._manager.save(checkpoint_number=progress.iteration)
    kept = {self._side(int(p.rsplit("-", 1)[1])) for p in self._manager.checkpoints}
    for path in tf.io.gfile.glob(f"{self.directory}/progress-*.npz"):
      if path not in kept:
        tf.io.gfile.remove(path)

  def clear(self):
    """Deletes the round's checkpoints once its results are written."""
    if tf.io.gfile.exists(self.directory):
      tf.io.gfile.rmtree(self.directory)

  def restore(self):
    """Restores the latest checkpoint into the model and optimizer.

    Returns (Progress, best_weights) or None when there is no checkpoint.
    """
    path = self._manager.latest_checkpoint
    if not path:
      return None
    import io
    try:
      self._ckpt.restore(path).assert_existing_objects_matched()
      with tf.io.gfile.GFile(self._side(int(path.rsplit("-", 1)[1])), "rb") as f:
        with np.load(io.BytesIO(f.read())) as z:
          progress = Progress(**json.loads(z["progress"].tobytes().decode()))
          best = [z[f"w{i}"] for i in range(len(z.files) - 1)]
    except Exception as e:
      raise CorruptCheckpointError(
          f"checkpoint {path} is unreadable ({type(e).__name__}); delete the folder "
          f"{self.directory} to restart this round from its beginning") from e
    return progress, best or None


class CorruptCheckpointError(RuntimeError):
  pass


class _Bookkeeper(keras.callbacks.Callback):
  """Records each evaluation, keeps the weights of the minimum validation loss, stops on NaN,
  checkpoints, and logs progress. Runs once per evaluation (Keras epoch), never per batch."""

  def __init__(self, progress, best_weights, eval_every, iterations, test_ds, checkpoint,
               checkpoint_every, label):
    super().__init__()
    self.progress, self.best_weights = progress, best_weights
    self.eval_every, self.iterations = eval_every, iterations
    self.test_ds, self.checkpoint, self.checkpoint_every = test_ds, checkpoint, checkpoint_every
    self.label = label
    n_evals = iterations // eval_every
    self.log_every = max(1, n_evals // 10)

  def on_epoch_end(self, epoch, logs=None):
    p = self.progress
    p.iteration = (epoch + 1) * self.eval_every
    point = {"iteration": p.iteration, "loss": float(logs["loss"]),
             "accuracy": float(logs["accuracy"]), "val_loss": float(logs["val_loss"]),
             "val_accuracy": float(logs["val_accuracy"])}
    if self.test_ds is not None:
      test = self.model.evaluate(self.test_ds, verbose=0, return_dict=True)
      point.update(test_loss=float(test["loss"]), test_accuracy=float(test["accuracy"]))
    p.curve.append(point)
    if not (math.isfinite(point["loss"]) and math.isfinite(point["val_loss"])):
      p.diverged = True
      self.model.stop_training = True
      logging.warning("%s diverged at iteration %d (loss %s)", self.label, p.iteration,
                      point["loss"])
      return
    if p.best is None or point["val_loss"] < p.best["val_loss"]:
      p.best_index = len(p.curve) - 1
      self.best_weights = [v.numpy() for v in self.model.trainable_variables]
    if len(p.curve) % self.log_every == 0 or p.iteration == self.iterations:
      logging.info("%s iteration %d/%d loss %.4f val_loss %.4f val_accuracy %.4f", self.label,
                   p.iteration, self.iterations, point["loss"], point["val_loss"],
                   point["val_accuracy"])
    if (self.checkpoint is not None and self.checkpoint_every
        and p.iteration % self.checkpoint_every == 0 and p.iteration < self.iterations):
      self.checkpoint.save(p, self.best_weights)


def train_round(model, make_train_ds, val_ds, test_ds, iterations, eval_every, callbacks=(),
                checkpoint=None, checkpoint_every=0, test_curve=False, label="round"):
  """Trains ``model`` (compiled, optimizer already fresh or restored) to ``iterations``.

  ``make_train_ds(start_iteration)`` gives the batches from ``start_iteration`` on;
  when ``checkpoint`` holds a checkpoint, training state is restored from it first. Returns
  a RoundResult; the model is left at its final weights.
  """
  start = time.perf_counter()
  restored = checkpoint.restore() if checkpoint is not None else None
  progress, best_weights = restored if restored else (Progress(), None)
  if restored:
    logging.info("%s resuming from iteration %d", label, progress.iteration)
  keeper = _Bookkeeper(progress, best_weights, eval_every, iterations,
                       test_ds if test_curve else None, checkpoint, checkpoint_every, label)
  if progress.iteration < iterations and not progress.diverged:
    model.fit(make_train_ds(progress.iteration), epochs=iterations // eval_every,
              initial_epoch=progress.iteration // eval_every, steps_per_epoch=eval_every,
              validation_data=val_ds, callbacks=[*callbacks, keeper], verbose=0)
  final_weights = [v.numpy() for v in model.trainable_variables]
  final_test = _accuracy(model, test_ds)
  best = progress.best
  if best is None:  # diverged before the first finite validation loss
    es = dict(iteration=-1, val_loss=math.nan, val_accuracy=math.nan, test=math.nan)
  else:
    for v, w in zip(model.trainable_variables, keeper.best_weights):
      v.assign(w)
    es = dict(iteration=best["iteration"], val_loss=best["val_loss"],
              val_accuracy=best["val_accuracy"], test=_accuracy(model, test_ds))
    for v, w in zip(model.trainable_variables, final_weights):
      v.assign(w)
  return RoundResult(
      curve=progress.curve, early_stop_iteration=es["iteration"],
      early_stop_val_loss=es["val_loss"], early_stop_val_accuracy=es["val_accuracy"],
      early_stop_test_accuracy=es["test"], final_test_accuracy=final_test,
      diverged=progress.diverged, seconds=time.perf_counter() - start)


def _accuracy(model, ds):
  return float(model.evaluate(ds, verbose=0, return_dict=True)["accuracy"])
