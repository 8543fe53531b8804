"""One training round: iterations in compiled blocks of ``eval_every`` steps, validation
after each block, early-stopping bookkeeping, test accuracy at the early-stopping iteration, and
periodic checkpoints from which an interrupted round resumes bit-identically.

Works on any Keras classifier; knows nothing of pruning or of the experiment loop. Speed is
the users' budget, so a Trainer compiles one (XLA) function that runs a whole block of steps,
gathering batches in-graph from the in-memory training set, and one that evaluates a whole
split; both are traced once and reused by every round (a fresh optimizer is a zeroed one).
Keras callbacks get ``on_train_begin``, ``on_epoch_end`` (an "epoch" is one block, ending with
an evaluation) and ``on_train_end``; there are no per-batch hooks, by design.
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


@dataclasses.dataclass(frozen=True)
class Split:
  """In-memory examples as tensors, converted once and shared by every round."""
  x: tf.Tensor
  y: tf.Tensor

  @classmethod
  def of(cls, x, y):
    return cls(tf.constant(x), tf.constant(y))


class Trainer:
  """Compiled training and evaluation of one Keras model with Adam and cross-entropy on logits.

  Build one per model and reuse it: its functions are traced once per input shape.
  """

  def __init__(self, model, learning_rate, jit_compile=True, eval_chunk=1000):
    self.model = model
    self.optimizer = keras.optimizers.Adam(learning_rate)
    self.optimizer.build(model.trainable_variables)  # slots exist before any restore or reset
    self.eval_chunk = eval_chunk
    self._loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=keras.losses.Reduction.SUM)
    self._train_block = tf.function(self._train_block_fn, jit_compile=jit_compile)
    self._evaluate = tf.function(self._evaluate_fn, jit_compile=jit_compile)

  def reset_optimizer(self):
    """Makes the optimizer fresh (step 0, zero moments) without retracing anything."""
    for v in self.optimizer.variables:
      v.assign(tf.zeros_like(v))

  def _train_block_fn(self, x, y, block):
    variables = self.model.trainable_variables
    total_loss, correct = tf.constant(0.0), tf.constant(0.0)
    for i in tf.range(tf.shape(block)[0]):
      xb, yb = tf.gather(x, block[i]), tf.gather(y, block[i])
      with tf.GradientTape() as tape:
        logits = self.model(xb, training=True)
        loss = self._loss(yb, logits) / tf.cast(tf.shape(yb)[0], tf.float32)
      self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
      total_loss += loss
      correct += tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1), yb), tf.float32))
    n = tf.cast(tf.shape(block)[0], tf.float32)
    return total_loss / n, correct / n

  def _evaluate_fn(self, x, y):
    total_loss, correct = tf.constant(0.0), tf.constant(0.0)
    for start in range(0, x.shape[0], self.eval_chunk):  # unrolled: static shapes
      xb, yb = x[start:start + self.eval_chunk], y[start:start + self.eval_chunk]
      logits = self.model(xb, training=False)
      total_loss += self._loss(yb, logits)
      correct += tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), yb), tf.float32))
    n = float(x.shape[0])
    return total_loss / n, correct / n

  def train_block(self, x, y, block):
    """Trains on the batches ``x[block[i]]``; returns (mean loss, mean accuracy) as floats."""
    loss, acc = self._train_block(x, y, tf.constant(block))
    return float(loss), float(acc)

  def evaluate(self, x, y):
    """(mean loss, accuracy) over all of (x, y), as floats."""
    loss, acc = self._evaluate(x, y)
    return float(loss), float(acc)


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



def train_round(trainer, train, table, val, test, eval_every, callbacks=(), checkpoint=None,
                checkpoint_every=0, test_curve=False, label="round"):
  """Trains ``trainer.model`` on ``train`` for ``len(table)`` iterations, batch i = table[i].

  The optimizer must already be fresh; if ``checkpoint`` holds a checkpoint, the model and
  optimizer are restored from it and training resumes there. Returns a RoundResult; the model
  is left at its final weights.
  """
  model, iterations = trainer.model, len(table)
  start_time = time.perf_counter()
  restored = checkpoint.restore() if checkpoint is not None else None
  progress, best_weights = restored if restored else (Progress(), None)
  if restored:
    logging.info("%s resuming from iteration %d", label, progress.iteration)
  callbacks = keras.callbacks.CallbackList(list(callbacks), model=model)
  log_every = max(1, (iterations // eval_every) // 10)
  callbacks.on_train_begin()
  while progress.iteration < iterations and not progress.diverged:
    loss, accuracy = trainer.train_block(
        train.x, train.y, table[progress.iteration:progress.iteration + eval_every])
    progress.iteration += eval_every
    val_loss, val_accuracy = trainer.evaluate(val.x, val.y)
    point = dict(iteration=progress.iteration, loss=loss, accuracy=accuracy, val_loss=val_loss,
                 val_accuracy=val_accuracy)
    if test_curve:
      point["test_loss"], point["test_accuracy"] = trainer.evaluate(test.x, test.y)
    progress.curve.append(point)
    if not (math.isfinite(loss) and math.isfinite(val_loss)):
      progress.diverged = True
      logging.warning("%s diverged at iteration %d (loss %s)", label, progress.iteration, loss)
    elif progress.best is None or val_loss < progress.best["val_loss"]:
      progress.best_index = len(progress.curve) - 1
      best_weights = [v.numpy() for v in model.trainable_variables]
    if len(progress.curve) % log_every == 0 or progress.iteration == iterations:
      logging.info("%s iteration %d/%d loss %.4f val_loss %.4f val_accuracy %.4f", label,
                   progress.iteration, iterations, loss, val_loss, val_accuracy)
    callbacks.on_epoch_end(len(progress.curve) - 1, dict(point))
    if (checkpoint is not None and checkpoint_every and not progress.diverged
        and progress.iteration % checkpoint_every == 0 and progress.iteration < iterations):
      checkpoint.save(progress, best_weights)
  callbacks.on_train_end()
  final_weights = [v.numpy() for v in model.trainable_variables]
  final_test = trainer.evaluate(test.x, test.y)[1]
  best = progress.best
  if best is None:  # diverged before the first finite validation loss
    es = dict(iteration=-1, val_loss=math.nan, val_accuracy=math.nan, test=math.nan)
  else:
    for v, w in zip(model.trainable_variables, best_weights):
      v.assign(w)
    es = dict(iteration=best["iteration"], val_loss=best["val_loss"],
              val_accuracy=best["val_accuracy"], test=trainer.evaluate(test.x, test.y)[1])
    for v, w in zip(model.trainable_variables, final_weights):
      v.assign(w)
  return RoundResult(
      curve=progress.curve, early_stop_iteration=es["iteration"],
      early_stop_val_loss=es["val_loss"], early_stop_val_accuracy=es["val_accuracy"],
      early_stop_test_accuracy=es["test"], final_test_accuracy=final_test,
      diverged=progress.diverged, seconds=time.perf_counter() - start_time)
