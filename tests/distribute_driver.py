"""Run by tests/test_distribute.py in a fresh process (logical CPU devices must be configured
before TensorFlow initialises), on 2 logical CPUs with --strategy=mirrored:

1. one step of DistributedTrainer against Trainer from the same weights: same loss, same
   Adam moments (the loss is scaled by the global batch and the gradients summed), and
   evaluation over padded per-replica shards equals the one-device evaluation;
2. an experiment, checking every replica's copy of the variables at the start and end of
   each stage; and the same experiment with no strategy (and no XLA) for comparison;
3. the Ray worker's path (executor.StageWorker with the strategy in the Job) for the dense
   round, then the ticket's round 1 interrupted after its checkpoint and resumed: both
   bit-identical to the experiment of 2.

  python tests/distribute_driver.py <output dir>

Prints one JSON line: the results.csv rows of the runs and what was checked.
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from conftest import synthetic_splits  # noqa: E402

import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

from lth_tf import (artifacts, config, data, distribute, executor, experiment, layout, masks,  # noqa: E402
                    models, ticket, training)


class Interrupt(Exception):
  pass


class InterruptAt(keras.callbacks.Callback):
  """Raises at evaluation ``epoch`` of the first stage trained, as a kill would."""

  def __init__(self, epoch):
    super().__init__()
    self.epoch = epoch

  def on_epoch_end(self, epoch, logs=None):
    if epoch == self.epoch:
      raise Interrupt()


def replicas(strategy, variable):
  """Every replica's copy of ``variable`` as numpy arrays."""
  return [v.numpy() for v in strategy.experimental_local_results(variable)]


class ReplicaRecorder(keras.callbacks.Callback):
  """Per stage: each replica's kernels and masks at the start and at the end of training."""

  def __init__(self, strategy):
    super().__init__()
    self.strategy, self.starts, self.ends = strategy, [], []

  def _state(self):
    return {name: dict(kernel=replicas(self.strategy, w.pruning_vars[0][0]),
                       mask=replicas(self.strategy, w.pruning_vars[0][1]),
                       bias=replicas(self.strategy, w.layer.bias))
            for name, w in ticket.wrappers(self.model).items()}

  def on_train_begin(self, logs=None):
    self.starts.append(self._state())

  def on_train_end(self, logs=None):
    self.ends.append(self._state())


def one_step(strategy, splits):
  """Loss, Adam moments and evaluation: DistributedTrainer vs Trainer from the same start."""
  plain = ticket.wrap(models.build("lenet300_100", (28, 28, 1), seed=1))
  with strategy.scope():
    mirrored = ticket.wrap(models.build("lenet300_100", (28, 28, 1), seed=1))
  one = training.Trainer(plain, 1e-3, jit_compile=False)
  many = distribute.DistributedTrainer(mirrored, 1e-3, strategy)
  x, y = training.Split.of(splits.train_x, splits.train_y), None
  block = data.batch_indices(len(splits.train_x), 30, 1, seed=0)
  a, b = one.train_block(x.x, x.y, block), many.train_block(x.x, x.y, block)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  for u, v in zip(one.optimizer.variables, many.optimizer.variables):  # m, v of Adam: g's scale
    for copy in replicas(strategy, v):
      np.testing.assert_allclose(copy, u.numpy(), rtol=1e-4, atol=1e-9)
  odd = training.Split.of(splits.val_x[:199], splits.val_y[:199])  # 100 + 99, one padded row
  np.testing.assert_allclose(one.evaluate(odd.x, odd.y), many.evaluate(odd.x, odd.y), rtol=1e-6)
  return dict(train=[a, b], evaluate=[one.evaluate(odd.x, odd.y), many.evaluate(odd.x, odd.y)])


def main(out):
  strategy = experiment.setup_tensorflow(1, 0, True, cpu_devices=2, strategy="mirrored")
  assert strategy.num_replicas_in_sync == 2, strategy.extended.worker_devices
  splits = synthetic_splits()
  step = one_step(strategy, splits)
  cfg = config.Config(
      model="lenet300_100", dataset="mnist", rounds=1, iterations=80, batch_size=30,
      learning_rate=1.2e-3, eval_every=40, prune_rate_conv=0.0, prune_rate_fc=0.5,
      prune_rate_output=0.25, controls=("reinit",), trials=1, seed=3)
  recorder = ReplicaRecorder(strategy)
  rows = experiment.run(cfg, f"{out}/mirrored", splits, strategy=strategy, callbacks=[recorder],
                        export=True, checkpoint_every=40)
  default_rows = experiment.run(cfg, f"{out}/default", splits, jit_compile=False)

  theta0 = artifacts.read_weights(layout.theta0_path(f"{out}/mirrored", 0))
  checked = dict(stages=0, replica_copies=0)
  for (arm, t, r), start, end in zip(cfg.stages(), recorder.starts, recorder.ends):
    saved = layout.stage_dir(f"{out}/mirrored", arm, t, r)
    mask = masks.from_bytes(artifacts.read_bytes(f"{saved}/masks.npz"))
    for name, m in mask.items():
      for copy in range(2):
        # masks: the stage's mask on every replica, at the start and still at the end
        np.testing.assert_array_equal(start[name]["mask"][copy], m)
        np.testing.assert_array_equal(end[name]["mask"][copy], m)
        # pruned weights exactly zero on every replica's copy after training
        assert np.all(end[name]["kernel"][copy][m == 0] == 0), (arm, r, name, copy)
        if arm == "ticket" and r > 0:  # rewound to θ0⊙mask on every replica
          np.testing.assert_array_equal(start[name]["kernel"][copy], theta0[name][0] * m)
          np.testing.assert_array_equal(start[name]["bias"][copy], theta0[name][1])
        checked["replica_copies"] += 1
      # one training: the replicas' trained weights are bit-identical
      np.testing.assert_array_equal(end[name]["kernel"][0], end[name]["kernel"][1])
      np.testing.assert_array_equal(end[name]["bias"][0], end[name]["bias"][1])
      assert not np.array_equal(end[name]["kernel"][0], start[name]["kernel"][0])  # it trained
    checked["stages"] += 1

  # 3. a Ray worker's stage (the Job carries the strategy), then an interrupted, resumed round
  executor.load_splits = lambda *args: splits  # no dataset: the synthetic splits
  job = executor.Job(cfg, f"{out}/worker", runtime=config.Runtime(
      threads=1, xla=False, strategy="mirrored", cpu_devices=2))
  worker_row = executor.StageWorker(job).run(("ticket", 0, 0))
  short = config.Config(**{**cfg.__dict__, "rounds": 1, "controls": ()})
  try:
    experiment.run(short, f"{out}/worker", splits, strategy=strategy, checkpoint_every=40,
                   callbacks=[InterruptAt(1)])
    raise AssertionError("not interrupted")
  except Interrupt:
    pass
  assert artifacts.exists(f"{layout.stage_dir(f'{out}/worker', 'ticket', 0, 1)}/checkpoint")
  resumed = experiment.run(short, f"{out}/worker", splits, strategy=strategy, checkpoint_every=40)
  assert {k: worker_row[k] for k in rows[0]} == rows[0], (worker_row, rows[0])
  assert resumed == rows[:2], (resumed, rows[:2])  # bit-identical floats
  checked["resumed"] = True
  print(json.dumps(dict(mirrored=rows, default=default_rows, one_step=step, checked=checked)))


if __name__ == "__main__":
  main(sys.argv[1])
