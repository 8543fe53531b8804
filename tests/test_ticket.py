"""TF-MOT wrapping: masks are applied, stay fixed through training, and rewinding keeps them."""
import numpy as np
import tf_keras as keras

from conftest import half_mask, train_round_on
from lth_tf import models, ticket


def keras_loss():
  return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_mask_fixed_through_training_and_pruned_weights_zero(splits, wrapped_lenet):
  model, trainer = wrapped_lenet
  mask = half_mask(model)
  ticket.set_masks(model, mask)
  result = train_round_on(trainer, splits, 100, 50)
  after = ticket.get_masks(model)
  for n in mask:
    np.testing.assert_array_equal(after[n], mask[n])
  # The forward pass sees only surviving weights: outputs equal a plain model with W*mask.
  plain = models.build("lenet300_100", (28, 28, 1))
  trained = ticket.get_weights(model)
  for name, layer in ticket.weight_layers(plain).items():
    kernel, bias = trained[name]
    layer.set_weights([kernel * mask[name] if name in mask else kernel, bias])
  x = splits.test_x[:50]
  np.testing.assert_allclose(model(x, training=False).numpy(), plain(x).numpy(), rtol=1e-5,
                             atol=1e-5)
  ticket.apply_masks(model)
  for n, k in ticket.get_kernels(model).items():
    assert np.all(k[mask[n] == 0] == 0)
    assert np.count_nonzero(k[mask[n] > 0]) > 0.99 * mask[n].sum()
  assert result.curve and result.early_stop_iteration in (50, 100)


def test_training_changes_only_surviving_weights(splits, wrapped_lenet):
  model, trainer = wrapped_lenet
  mask = half_mask(model, seed=3)
  before = ticket.get_weights(model)
  ticket.set_masks(model, mask)
  train_round_on(trainer, splits, 50, 50)
  ticket.apply_masks(model)
  after = ticket.get_weights(model)
  for n in mask:
    assert not np.allclose(after[n][0][mask[n] > 0], before[n][0][mask[n] > 0])


def test_rewind_restores_theta0_under_mask_and_keeps_mask(wrapped_lenet):
  model, _ = wrapped_lenet
  theta0 = ticket.get_weights(model)
  rewinder = ticket.RewindCallback(theta0)
  for v in model.trainable_variables:  # pretend training moved every weight
    v.assign(v + 1.0)
  mask = half_mask(model)
  rewinder.rewind(model, mask)
  now = ticket.get_weights(model)
  for name, arrays in theta0.items():
    np.testing.assert_array_equal(now[name][0], arrays[0] * mask[name])
    np.testing.assert_array_equal(now[name][1], arrays[1])
  for n, m in ticket.get_masks(model).items():
    np.testing.assert_array_equal(m, mask[n])


def test_rewind_callback_captures_weights_at_train_begin(splits, wrapped_lenet):
  model, _ = wrapped_lenet
  start = ticket.get_weights(model)
  rewinder = ticket.RewindCallback()
  model.compile("adam", keras_loss())
  model.fit(splits.train_x[:60], splits.train_y[:60], batch_size=30, callbacks=[rewinder],
            verbose=0)
  for name in start:
    np.testing.assert_array_equal(rewinder.weights[name][0], start[name][0])
