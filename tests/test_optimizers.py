"""The optimizers: the learning-rate schedule (linear warmup, step drops) on the optimizer's own
counter, restarting with it; SGD's momentum as PyTorch's across a rate drop; weight decay on
kernels only, which with momentum leaves pruned weights exactly zero and trains batch norm."""
import numpy as np
import pytest
import tensorflow as tf

from conftest import bn_weights, global_conv_mask, synthetic_splits, train_round_on
from lth_tf import data, models, ticket, training


def _lenet_trainer(**kw):
  model = ticket.wrap(models.build("lenet300_100", (28, 28, 1), seed=2))
  return model, training.Trainer(model, 0.1, **kw)


def test_schedule_warms_up_linearly_then_drops():
  schedule = training.WarmupStepDecay(0.1, warmup=100, drops=(300, 400), factor=0.1)
  at = {t: float(schedule(t)) for t in (0, 50, 99, 100, 299, 300, 399, 400, 10_000)}
  np.testing.assert_allclose(
      [at[t] for t in sorted(at)], [0.0, 0.05, 0.099, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001],
      rtol=1e-6)
  constant = training.WarmupStepDecay(0.1)
  assert float(constant(0)) == float(constant(10**6)) == np.float32(0.1)


def test_schedule_runs_on_the_optimizer_counter_and_restarts_on_reset(splits):
  model, trainer = _lenet_trainer(optimizer="sgd", warmup_iterations=4, lr_drops=(6,))
  train = training.Split.of(splits.train_x, splits.train_y)
  table = data.batch_indices(len(splits.train_x), 30, 8, seed=0)

  def step(i):  # one-step blocks: one input shape, one trace
    trainer.train_block(train.x, train.y, table[i:i + 1])

  before = [v.numpy() for v in model.trainable_variables]
  step(0)  # iteration 0 of the warmup: rate 0
  for a, b in zip(before, model.trainable_variables):
    np.testing.assert_array_equal(a, b.numpy())
  for i in range(1, 8):
    step(i)
  assert int(trainer.optimizer.iterations) == 8
  # the rate of the last step (iteration 7), as the compiled step computed it
  np.testing.assert_allclose(float(trainer.optimizer.learning_rate), 0.01, rtol=1e-6)
  assert trainer.learning_rate(3) == pytest.approx(0.075)
  assert trainer.learning_rate() == pytest.approx(0.01)
  trainer.reset_optimizer()
  assert int(trainer.optimizer.iterations) == 0 and trainer.learning_rate() == 0.0
  assert all(not np.any(v.numpy()) for v in trainer.optimizer.variables)
  before = [v.numpy() for v in model.trainable_variables]
  step(0)  # the warmup starts over: rate 0 again
  for a, b in zip(before, model.trainable_variables):
    np.testing.assert_array_equal(a, b.numpy())
  step(1)
  step(2)
  np.testing.assert_allclose(float(trainer.optimizer.learning_rate), 0.05, rtol=1e-6)
  assert trainer._train_block.experimental_get_tracing_count() == 1  # never retraced


def test_momentum_is_pytorchs_across_a_rate_drop():
  var = tf.Variable([0.0])
  opt = training.MomentumSGD(training.WarmupStepDecay(0.1, drops=(1,)), momentum=0.9)
  opt.build([var])
  for _ in range(2):
    opt.apply_gradients([(tf.constant([1.0]), var)])
  # v = 1, w = -0.1; then v = 0.9 + 1, w = -0.1 - 0.01 * 1.9 (Keras' SGD would give -0.2)
  np.testing.assert_allclose(var.numpy(), [-0.119], rtol=1e-6)


def test_weight_decay_acts_on_kernels_only(splits):
  train = training.Split.of(splits.train_x, splits.train_y)
  table = data.batch_indices(len(splits.train_x), 30, 1, seed=0)
  results = []
  for wd in (0.0, 0.5):
    model, trainer = _lenet_trainer(optimizer="sgd", momentum=0.0, weight_decay=wd)
    start = ticket.get_weights(model)
    trainer.train_block(train.x, train.y, table)
    results.append(ticket.get_weights(model))
  plain, decayed = results
  for n, (kernel, bias) in start.items():
    np.testing.assert_allclose(decayed[n][0] - plain[n][0], -0.1 * 0.5 * kernel, atol=1e-6)
    np.testing.assert_array_equal(decayed[n][1], plain[n][1])


def test_sgd_weight_decay_keeps_pruned_weights_zero_and_trains_batch_norm(resnet20):
  splits = synthetic_splits(64, 32, 32, shape=(32, 32, 3))
  model = resnet20
  mask, _, _ = global_conv_mask(model, 0.5)
  ticket.set_masks(model, mask)
  start = ticket.get_weights(model)
  trainer = training.Trainer(model, 0.1, jit_compile=False, optimizer="sgd", momentum=0.9,
                             weight_decay=1e-2)
  assert {id(v) for v in trainer.state_variables} >= {
      id(model.get_layer("bn1").moving_mean), id(model.get_layer("bn1").moving_variance)}
  # 6 steps of 16 examples, then the evaluations that end the round
  train_round_on(trainer, splits, 6, 6, batch_size=16)
  end, end_masks = ticket.get_weights(model), ticket.get_masks(model)
  for n, m in mask.items():
    np.testing.assert_array_equal(end_masks[n], m)
    assert np.all(end[n][0][m == 0] == 0)  # exactly zero despite momentum and decay
    assert not np.array_equal(end[n][0][m > 0], start[n][0][m > 0])  # survivors trained
  assert not np.array_equal(end["output"][1], start["output"][1])  # the bias trains, unmasked
  for n, ws in bn_weights(model).items():  # γ, β and the statistics all move
    for a, b in zip(ws, start[n]):
      assert not np.array_equal(a, b), n
