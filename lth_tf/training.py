"""One training round: iterations in compiled blocks of ``eval_every`` steps, validation
after each block, early-stopping bookkeeping, test accuracy at the early-stopping iteration, and
periodic checkpoints from which an interrupted round resumes bit-identically.

Works on any Keras classifier; knows nothing of pruning or of the experiment loop. Speed is
the users' budget, so a Trainer compiles one (XLA) function that runs a whole block of steps,
gathering batches in-graph from the in-memory training set, and one that evaluates a whole
split; both are traced once and reused by every round (a fresh optimizer is a zeroed one,
and its zeroed iteration counter restarts the learning-rate schedule).
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

from lth_tf import artifacts, masks


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


def _kernels(model):
  """The kernel variables of a model's layers (through wrappers such as TF-MOT's)."""
  out = []
  for layer in model.submodules:
    kernel = getattr(layer, "kernel", None)
    if isinstance(kernel, tf.Variable) and kernel.trainable and all(kernel is not k for k in out):
      out.append(kernel)
  return out


from lth_tf.config import OPTIMIZERS  # noqa: E402  (the names Config validates)


class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup, then step decay, as a function of the optimizer's iteration counter t.

  lr(t) = rate · min(1, t / warmup) · factor^(number of drops ≤ t), t counted from 0 (the
  iteration about to be taken). This is open_lth's schedule (Frankle et al. 2020): with
  warmup, iteration 0 takes no step, and the rate reaches ``rate`` at t = ``warmup``.
  """

  def __init__(self, rate, warmup=0, drops=(), factor=0.1):
    self.rate, self.warmup, self.drops, self.factor = rate, int(warmup), tuple(drops), factor

  def __call__(self, step):
    t = tf.cast(step, tf.float32)
    lr = tf.constant(self.rate, tf.float32)
    if self.warmup:
      lr *= tf.minimum(1.0, t / float(self.warmup))
    for drop in self.drops:
      lr *= tf.where(t >= float(drop), tf.constant(self.factor, tf.float32), 1.0)
    return lr

  def get_config(self):
    return dict(rate=self.rate, warmup=self.warmup, drops=list(self.drops), factor=self.factor)


class MomentumSGD(keras.optimizers.SGD):
  """SGD with heavy-ball momentum as PyTorch (and so the papers' code) computes it.

  v ← μ·v + g; w ← w − lr·v. Keras' SGD folds the rate into the velocity (v ← μ·v − lr·g),
  which differs whenever the rate changes: during warmup and after each drop.
  """

  def update_step(self, gradient, variable):
    lr = tf.cast(self.learning_rate, variable.dtype)
    v = self.momentums[self._index_dict[self._var_key(variable)]]
    v.assign(tf.cast(self.momentum, variable.dtype) * v + gradient)
    variable.assign_sub(lr * v)


class Trainer:
  """Compiled training and evaluation of one Keras model with cross-entropy on logits.

  The optimizer is Adam (the paper's) or SGD with momentum, at ``learning_rate`` with optional
  linear warmup over ``warmup_iterations`` and a drop by ``lr_drop_factor`` at each of
  ``lr_drops`` (iterations of the round), and optional weight decay: L2 on the kernels of the
  model's layers (not biases or batch norm), added to their gradients as ``weight_decay``·W.
  Build one per model and reuse it: its functions are traced once per input shape.
  """

  def __init__(self, model, learning_rate, jit_compile=True, eval_chunk=1000, optimizer="adam",
               momentum=0.9, warmup_iterations=0, lr_drops=(), lr_drop_factor=0.1,
               weight_decay=0.0, extra_state=()):
    if optimizer not in OPTIMIZERS:
      raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    self.model = model
    # A constant rate stays a plain float (the paper's Adam exactly as before); otherwise the
    # optimizer evaluates the schedule at its own iteration counter inside the compiled step.
    self.schedule = WarmupStepDecay(learning_rate, warmup_iterations, lr_drops, lr_drop_factor)
    rate = self.schedule if warmup_iterations or lr_drops else learning_rate
    self.optimizer = (keras.optimizers.Adam(rate) if optimizer == "adam"
                      else MomentumSGD(rate, momentum=momentum))
    self.optimizer.build(model.trainable_variables)  # slots exist before any restore or reset
    self.weight_decay = float(weight_decay)
    kernels = {id(k) for k in _kernels(model)}
    self._decayed = [id(v) in kernels for v in model.trainable_variables]
    # What a model "is" at an iteration: its trainable weights and batch norm's statistics,
    # and ``extra_state`` (variables that change while it trains, e.g. masks that move).
    self.state_variables = list(model.trainable_variables) + [
        v for layer in model.submodules if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)] + list(extra_state)
    self.eval_chunk = eval_chunk
    self._loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=keras.losses.Reduction.SUM)
    self._train_block = tf.function(self._train_block_fn, jit_compile=jit_compile)
    self._evaluate = tf.function(self._evaluate_fn, jit_compile=jit_compile)

  def reset_optimizer(self):
    """Makes the optimizer fresh (step 0, zero moments) without retracing anything.

    Zeroing the iteration counter also restarts the learning-rate schedule.
    """
    for v in self.optimizer.variables:
      v.assign(tf.zeros_like(v))

  def learning_rate(self, iteration=None):
    """The rate the optimizer takes its step at ``iteration`` (default: the next one)."""
    step = self.optimizer.iterations if iteration is None else iteration
    return float(self.schedule(step))

  def _apply_gradients(self, grads, variables, replicas=1):
    """The optimizer step, with weight decay added to the decayed kernels' gradients (its
    share on each of ``replicas`` replicas, whose gradients the optimizer sums)."""
    if self.weight_decay:
      grads = [g + (self.weight_decay / replicas) * v if decayed else g
               for g, v, decayed in zip(grads, variables, self._decayed)]
    self.optimizer.apply_gradients(zip(grads, variables))

  def _train_block_fn(self, x, y, block):
    variables = self.model.trainable_variables
    total_loss, correct = tf.constant(0.0), tf.constant(0.0)
    for i in tf.range(tf.shape(block)[0]):
      xb, yb = tf.gather(x, block[i]), tf.gather(y, block[i])
      with tf.GradientTape() as tape:
        logits = self.model(xb, training=True)
        loss = self._loss(yb, logits) / tf.cast(tf.shape(yb)[0], tf.float32)
      self._apply_gradients(tape.gradient(loss, variables), variables)
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
    try:  # reads the index file ``checkpoint`` if there is one
      self._manager = tf.train.CheckpointManager(self._ckpt, directory,
                                                 max_to_keep=max_to_keep)
    except Exception as e:  # UnicodeDecodeError, text_format.ParseError, ...
      raise self._corrupt(f"{directory}/checkpoint", f"unreadable index: "
                                                      f"{artifacts.error_text(e)}") from None

  def _corrupt(self, path, problem):
    return CorruptCheckpointError(path, problem, f"delete the folder {self.directory} to "
                                                 f"restart this round from its beginning")

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

  def restore(self, state_shapes=None):
    """Restores the latest checkpoint into the model and optimizer.

    Returns (Progress, best_weights) or None when there is no checkpoint. ``state_shapes``:
    the shapes of the trainer's state_variables, which the best weights must have.
    CorruptCheckpointError (one line naming the file and the folder to delete) if the
    checkpoint or its side file is unreadable or does not fit.
    """
    path = self._manager.latest_checkpoint
    if not path:
      return None
    try:
      iteration = int(path.rsplit("-", 1)[1])
    except ValueError:
      raise self._corrupt(f"{self.directory}/checkpoint", f"it names {path}, not a "
                                                          f"ckpt-<iteration>") from None
    try:
      self._ckpt.restore(path).assert_existing_objects_matched()
    except Exception as e:  # TensorFlow's errors for missing or damaged files
      raise self._corrupt(path, f"unreadable: {artifacts.error_text(e)}") from None
    side = self._side(iteration)
    try:
      with tf.io.gfile.GFile(side, "rb") as f:
        arrays = masks.load_npz(f.read())
    except Exception as e:  # ValueError from load_npz, NotFoundError
      raise self._corrupt(side, str(e) if isinstance(e, ValueError) else
                          f"unreadable: {artifacts.error_text(e)}") from None
    try:
      progress = Progress(**json.loads(arrays.pop("progress").tobytes().decode()))
      if (progress.iteration != iteration or not -1 <= progress.best_index < len(progress.curve)
          or any(not isinstance(p, dict) for p in progress.curve)):
        raise ValueError(f"iteration {progress.iteration}, best {progress.best_index} of "
                         f"{len(progress.curve)} evaluations")
    except Exception as e:  # KeyError, JSON, TypeError of unknown fields, ...
      raise self._corrupt(side, f"no valid progress record: {artifacts.error_text(e)}") from None
    best = [arrays.get(f"w{i}") for i in range(len(arrays))]
    if any(w is None for w in best):
      raise self._corrupt(side, f"best weights are not w0 to w{len(arrays) - 1}")
    if state_shapes is not None and progress.best_index >= 0:
      want = [tuple(s) for s in state_shapes]
      if len(best) != len(want):
        raise self._corrupt(side, f"{len(best)} best-weight arrays, the model has {len(want)} "
                                  f"state variables")
      for i, (w, shape) in enumerate(zip(best, want)):
        if tuple(w.shape) != shape:
          raise self._corrupt(side, f"best weight w{i} has shape {tuple(w.shape)}, the "
                                    f"model's {shape}")
    return progress, best or None


# A corrupt checkpoint is one kind of corrupt file (the name is kept for its callers).
CorruptCheckpointError = artifacts.CorruptFileError



def train_round(trainer, train, table, val, test, eval_every, callbacks=(), checkpoint=None,
                checkpoint_every=0, test_curve=False, label="round"):
  """Trains ``trainer.model`` on ``train`` for ``len(table)`` iterations, batch i = table[i].

  The optimizer must already be fresh; if ``checkpoint`` holds a checkpoint, the model and
  optimizer are restored from it and training resumes there. Returns a RoundResult; the model
  is left at its final weights.
  """
  model, iterations = trainer.model, len(table)
  start_time = time.perf_counter()
  restored = (checkpoint.restore([v.shape for v in trainer.state_variables])
              if checkpoint is not None else None)
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
      best_weights = [v.numpy() for v in trainer.state_variables]
    if len(progress.curve) % log_every == 0 or progress.iteration == iterations:
      logging.info("%s iteration %d/%d loss %.4f val_loss %.4f val_accuracy %.4f", label,
                   progress.iteration, iterations, loss, val_loss, val_accuracy)
    callbacks.on_epoch_end(len(progress.curve) - 1, dict(point))
    if (checkpoint is not None and checkpoint_every and not progress.diverged
        and progress.iteration % checkpoint_every == 0 and progress.iteration < iterations):
      checkpoint.save(progress, best_weights)
  callbacks.on_train_end()
  final_weights = [v.numpy() for v in trainer.state_variables]
  final_test = trainer.evaluate(test.x, test.y)[1]
  best = progress.best
  if best is None:  # diverged before the first finite validation loss
    es = dict(iteration=-1, val_loss=math.nan, val_accuracy=math.nan, test=math.nan)
  else:
    for v, w in zip(trainer.state_variables, best_weights):
      v.assign(w)
    es = dict(iteration=best["iteration"], val_loss=best["val_loss"],
              val_accuracy=best["val_accuracy"], test=trainer.evaluate(test.x, test.y)[1])
    for v, w in zip(trainer.state_variables, final_weights):
      v.assign(w)
  return RoundResult(
      curve=progress.curve, early_stop_iteration=es["iteration"],
      early_stop_val_loss=es["val_loss"], early_stop_val_accuracy=es["val_accuracy"],
      early_stop_test_accuracy=es["test"], final_test_accuracy=final_test,
      diverged=progress.diverged, seconds=time.perf_counter() - start_time)
