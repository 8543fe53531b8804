"""One training round outside the experiment loop (lth_tf.training): the Trainer's evaluation
equals Keras's and resetting its optimizer makes it fresh. Early stopping in train_round: the
early-stopping iteration is the evaluation of minimum validation loss, the validation numbers
are those of that evaluation, and the test accuracy "at early stop" is the accuracy of the
weights at that iteration. On data every arm fits perfectly the validation loss falls at every
evaluation and any rule passes, so these rounds are shaped to tell the right rule from its
wrong versions."""
import numpy as np
import pytest
import tf_keras as keras

from conftest import accuracy, half_mask, train_round_on, u_shaped
from lth_tf import data, models, ticket, training

MODEL = "lenet300_100"


# ---- the Trainer ------------------------------------------------------------------------------

def test_evaluate_matches_keras_evaluate(splits, wrapped_lenet):
  model, trainer = wrapped_lenet
  ticket.set_masks(model, half_mask(model))
  model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  loss, acc = model.evaluate(splits.test_x, splits.test_y, batch_size=100, verbose=0)
  ours = trainer.evaluate(splits.test_x, splits.test_y)
  np.testing.assert_allclose(ours, (loss, acc), rtol=1e-5)


def test_reset_optimizer_makes_it_fresh(splits, wrapped_lenet):
  model, trainer = wrapped_lenet
  train_round_on(trainer, splits, 50, 50)
  assert int(trainer.optimizer.iterations) == 50
  trainer.reset_optimizer()
  assert int(trainer.optimizer.iterations) == 0
  assert all(not np.any(v.numpy()) for v in trainer.optimizer.variables)
  assert float(trainer.optimizer.learning_rate) == np.float32(1e-3)


# ---- early stopping ---------------------------------------------------------------------------

def _round(recorder, splits, iterations, eval_every, learning_rate, **trainer_kw):
  """Trains a fresh LeNet for one round, recording its weights with ``recorder`` (a
  weights_recorder); returns (result, weights at every evaluation, the model's weights when
  train_round returned)."""
  model = models.build(MODEL, splits.train_x.shape[1:], seed=1)
  trainer = training.Trainer(model, learning_rate, **trainer_kw)
  table = data.batch_indices(len(splits.train_x), 20, iterations, seed=5)
  result = training.train_round(
      trainer, training.Split.of(splits.train_x, splits.train_y), table,
      training.Split.of(splits.val_x, splits.val_y),
      training.Split.of(splits.test_x, splits.test_y), eval_every, callbacks=[recorder])
  (at,) = recorder.trainings
  return result, at, ticket.get_weights(model)


@pytest.fixture(scope="module")
def memorised(memorising_splits, weights_recorder):
  """A round whose validation loss is U-shaped (minimum at iteration 15 of 80) while its
  training loss falls to the end, and whose test accuracy moves from 0.68 there to 0.78."""
  splits = memorising_splits
  return (splits, *_round(weights_recorder(), splits, iterations=80, eval_every=5,
                          learning_rate=7e-4))


def test_early_stop_is_the_validation_minimum_not_the_training_minimum_or_the_end(memorised):
  splits, result, at, _ = memorised
  curve = result.curve
  assert [p["iteration"] for p in curve] == list(range(5, 81, 5))
  assert sorted(at) == [p["iteration"] for p in curve]
  best = u_shaped(curve)
  assert result.early_stop_iteration == curve[best]["iteration"]
  assert result.early_stop_val_loss == curve[best]["val_loss"]
  assert result.early_stop_val_accuracy == curve[best]["val_accuracy"]
  # the numbers there are the validation split's, for the weights of that evaluation
  weights = at[result.early_stop_iteration]
  assert curve[best]["val_accuracy"] == pytest.approx(
      accuracy(MODEL, weights, splits.val_x, splits.val_y), abs=1e-6)
  # the best validation accuracy is elsewhere: the rule is the loss, not the accuracy
  assert int(np.argmax([p["val_accuracy"] for p in curve])) != best


def test_early_stop_test_accuracy_is_that_of_the_weights_at_the_early_stop_iteration(memorised):
  splits, result, at, _ = memorised
  last = result.curve[-1]["iteration"]
  at_stop = accuracy(MODEL, at[result.early_stop_iteration], splits.test_x, splits.test_y)
  final = accuracy(MODEL, at[last], splits.test_x, splits.test_y)
  assert abs(at_stop - final) > 0.05  # the fixture tells the two apart
  assert result.early_stop_test_accuracy == pytest.approx(at_stop, abs=1e-6)
  assert result.final_test_accuracy == pytest.approx(final, abs=1e-6)


def test_the_model_is_left_at_its_final_weights(memorised):
  """The experiment saves (and prunes) the weights train_round leaves: the last iteration's,
  not the early-stopping iteration's."""
  _, result, at, after = memorised
  last = at[result.curve[-1]["iteration"]]
  for name, arrays in last.items():
    for a, b in zip(after[name], arrays):
      np.testing.assert_array_equal(a, b)
  at_best = at[result.curve[u_shaped(result.curve)]["iteration"]]
  assert not np.array_equal(after["fc1"][0], at_best["fc1"][0])  # the fixture tells them apart


def test_ties_go_to_the_earliest_evaluation(splits, weights_recorder):
  """The learning rate drops to zero at iteration 30, so the weights, and the validation loss,
  stay exactly at their minimum from then on: the round stopped early at 30, not later."""
  result, at, _ = _round(weights_recorder(), splits, iterations=60, eval_every=10,
                         learning_rate=1e-3, lr_drops=(30,), lr_drop_factor=0.0)
  val = [p["val_loss"] for p in result.curve]
  assert val[0] > val[1] > val[2] == val[3] == val[4] == val[5]  # the fixture: a flat minimum
  np.testing.assert_array_equal(at[30]["fc1"][0], at[60]["fc1"][0])
  assert result.early_stop_iteration == 30
  assert result.early_stop_val_loss == val[2]
