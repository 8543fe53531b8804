"""One training across devices: tf.distribute strategies by name, logical CPU devices, and a
Trainer whose compiled step runs on every replica.

``default`` is no strategy at all: ``training.Trainer``, unchanged. ``mirrored`` replicates the
model on this machine's GPUs (or, without GPUs, on the logical CPU devices made by
``split_cpu``); ``multi_worker_mirrored`` on every worker named by ``TF_CONFIG`` (each worker
runs the same program). Variables created in ``strategy.scope()`` are MirroredVariables: a
write from cross-replica context (mask writes, rewinding to θ0, restoring a checkpoint) goes to
every replica's copy, so masks and start weights are identical everywhere. Two traps: outside
the scope TF-MOT's ``weight_mask_op`` sees the default replica context and fails on mirrored
kernels, so every mask or weight write goes in the scope; and under multi_worker_mirrored a
variable created in the scope broadcasts its initial value from worker 0 (a collective that
takes no uint8, and that every worker must join), so only the model and the optimizer are
created there, the same on every worker, and temporary models outside it.

``DistributedTrainer`` keeps the Trainer's design (a block of ``eval_every`` steps per call,
batches gathered in-graph from the in-memory data) with the step itself run per replica by
``strategy.run``: replica r takes columns ``r*B/R .. (r+1)*B/R`` of each batch's index row (B
the global batch), scales its summed loss by 1/B, and the Keras optimizer all-reduces (sums)
the gradients in replica context, so an update is the global batch's mean gradient. Losses and
accuracies are summed over replicas; evaluation splits each split into one contiguous,
zero-weight-padded part per replica.

No XLA under a strategy: TF-MOT's wrapper re-masks its kernel in every forward pass with a
``merge_call`` (a MEAN all-reduce of the masked kernel), which XLA cannot compile, neither
around ``strategy.run`` (variables on other devices) nor inside it. Tested in TF 2.21 on
logical CPUs; the per-replica step therefore runs as a plain ``tf.function``.
"""
import os

import numpy as np
import tensorflow as tf
from absl import logging

from lth_tf import training

from lth_tf.config import STRATEGIES  # noqa: E402  (the names the command line accepts)
_CREATED = {}  # name -> strategy: one per process (MultiWorkerMirroredStrategy can't be remade)


def split_cpu(count):
  """Splits the CPU into ``count`` logical devices (0 or 1: leave it whole).

  Must run before TensorFlow initialises its devices; repeating the same split is a no-op.
  """
  if count < 0:
    raise ValueError(f"--cpu_devices={count} is invalid; pass 0 (one CPU device) or a count")
  if count <= 1:
    return
  cpu = tf.config.list_physical_devices("CPU")[0]
  current = tf.config.get_logical_device_configuration(cpu)
  if current is not None and len(current) == count:
    return
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
  except RuntimeError as e:
    raise ValueError(f"--cpu_devices={count}: TensorFlow has already initialised its devices "
                     f"in this process ({len(current or [cpu])} CPU device(s)); start a new "
                     f"process") from e


def get(name):
  """The strategy called ``name`` (None for ``default``), created once per process.

  ``multi_worker_mirrored`` reads TF_CONFIG and must be created before TensorFlow runs any op.
  """
  if name not in STRATEGIES:
    raise ValueError(f"--strategy={name} is unknown; use one of {', '.join(STRATEGIES)}")
  if name == "default":
    return None
  if name not in _CREATED:
    if name == "mirrored":
      devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
      _CREATED[name] = tf.distribute.MirroredStrategy([d.name for d in devices])
    else:
      try:
        _CREATED[name] = tf.distribute.MultiWorkerMirroredStrategy()
      except (ValueError, RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ValueError(f"--strategy={name}: cannot start from TF_CONFIG="
                         f"{os.environ.get('TF_CONFIG', '(unset)')[:200]} "
                         f"({type(e).__name__}: {first})") from e
    logging.info("--strategy=%s: %d replicas in sync on %s", name,
                 _CREATED[name].num_replicas_in_sync,
                 ", ".join(_CREATED[name].extended.worker_devices))
  return _CREATED[name]


def task(strategy):
  """(task type, task index, is chief) of this process under ``strategy``."""
  resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
  if resolver is None or not resolver.task_type:
    return None, 0, True
  jobs = resolver.cluster_spec().jobs
  chief = (resolver.task_type == "chief"
           or (resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in jobs))
  return resolver.task_type, resolver.task_id, chief


class DistributedTrainer(training.Trainer):
  """``training.Trainer`` with every step run on all replicas of ``strategy`` (see module doc).

  Build it, like the model, in ``strategy.scope()`` or not (it enters the scope itself for the
  optimizer). Not XLA-compiled: ``jit_compile`` is ignored.
  """

  def __init__(self, model, learning_rate, strategy, jit_compile=False, *args, **kwargs):
    del jit_compile
    self.strategy = strategy
    self.replicas = strategy.num_replicas_in_sync
    self._copies = {}  # (kind, id(tensor)) -> (tensor, its per-replica copies or shards)
    with strategy.scope():
      super().__init__(model, learning_rate, False, *args, **kwargs)

  def reset_optimizer(self):
    with self.strategy.scope():
      super().reset_optimizer()

  def _per_replica(self, make):
    """Distributed values: ``make(replica id in sync)`` on each local replica's device."""
    devices = self.strategy.extended.worker_devices

    def value(ctx):
      with tf.device(devices[ctx.replica_id_in_sync_group % len(devices)]):
        return tf.nest.map_structure(tf.identity, make(ctx.replica_id_in_sync_group))
    return self.strategy.experimental_distribute_values_from_function(value)

  def _cached(self, key, tensor, make):
    """``_per_replica(make)`` made once per ``tensor`` (a split's x or y, kept alive here)."""
    hit = self._copies.get((key, id(tensor)))
    if hit is None:
      hit = self._copies[(key, id(tensor))] = (tensor, self._per_replica(make))
    return hit[1]

  def _replica_step(self, x, y, rows, i):
    variables = self.model.trainable_variables
    xb, yb = tf.gather(x, rows[i]), tf.gather(y, rows[i])
    global_batch = tf.cast(tf.shape(rows)[1] * self.replicas, tf.float32)
    with tf.GradientTape() as tape:
      logits = self.model(xb, training=True)
      loss = self._loss(yb, logits) / global_batch
    self._apply_gradients(tape.gradient(loss, variables), variables, self.replicas)
    hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1), yb), tf.float32))
    return loss, hits / global_batch

  def _train_block_fn(self, x, y, rows, steps):
    total_loss, correct = tf.constant(0.0), tf.constant(0.0)
    for i in tf.range(steps):
      loss, acc = self.strategy.run(self._replica_step, args=(x, y, rows, i))
      total_loss += self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
      correct += self.strategy.reduce(tf.distribute.ReduceOp.SUM, acc, axis=None)
    n = tf.cast(steps, tf.float32)
    return total_loss / n, correct / n

  def _replica_evaluate(self, x, y, w):
    total_loss, correct = tf.constant(0.0), tf.constant(0.0)
    for start in range(0, x.shape[0], self.eval_chunk):  # unrolled: static shapes
      end = start + self.eval_chunk
      xb, yb, wb = x[start:end], y[start:end], w[start:end]
      logits = self.model(xb, training=False)
      total_loss += self._loss(yb, logits, sample_weight=wb)
      correct += tf.reduce_sum(wb * tf.cast(tf.equal(tf.argmax(logits, -1), yb), tf.float32))
    return total_loss, correct

  def _evaluate_fn(self, x, y, w, n):
    loss, correct = self.strategy.run(self._replica_evaluate, args=(x, y, w))
    total = [self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
             for v in (loss, correct)]
    return total[0] / n, total[1] / n

  def train_block(self, x, y, block):
    """As Trainer.train_block; ``len(block[0])`` (the global batch) must divide by replicas."""
    block = np.asarray(block)
    if block.shape[1] % self.replicas:
      raise ValueError(f"batch of {block.shape[1]} does not split over {self.replicas} replicas")
    per = block.shape[1] // self.replicas
    xs = self._cached("all", x, lambda r: x)
    ys = self._cached("all", y, lambda r: y)
    rows = self._per_replica(lambda r: tf.constant(block[:, r * per:(r + 1) * per]))
    loss, acc = self._train_block(xs, ys, rows, tf.constant(len(block)))
    return float(loss), float(acc)

  def _shards(self, x, y):
    """Per replica: a contiguous part of (x, y), zero-padded to equal size, with weights."""
    n = int(x.shape[0])
    size = -(-n // self.replicas)

    def part(r):
      real = max(0, min(size, n - r * size))
      pad = lambda t: tf.concat([t[r * size:r * size + real],
                                 tf.zeros([size - real, *t.shape[1:]], t.dtype)], 0)
      return pad(x), pad(y), tf.concat([tf.ones([real]), tf.zeros([size - real])], 0)

    return self._cached("shard", x, part)

  def evaluate(self, x, y):
    xs, ys, ws = self._shards(x, y)
    loss, acc = self._evaluate(xs, ys, ws, tf.constant(float(x.shape[0])))
    return float(loss), float(acc)


def trainer(strategy, model, learning_rate, *args, **kwargs):
  """A ``training.Trainer`` (no strategy) or a DistributedTrainer."""
  if strategy is None:
    return training.Trainer(model, learning_rate, *args, **kwargs)
  return DistributedTrainer(model, learning_rate, strategy, *args, **kwargs)
