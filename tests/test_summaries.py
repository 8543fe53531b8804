"""TensorBoard: every stage's run holds the documented curves, sparsities and weight histograms,
and the summary run holds each arm's early-stopping numbers by round and the hyperparameters."""
import glob


def _tags(run_dir):
  import tensorflow as tf
  tags = {}
  for path in glob.glob(f"{run_dir}/events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        tags.setdefault(v.tag, []).append(event.step)
  return tags


def test_tensorboard_runs_hold_curves_sparsity_histograms_and_summary(cli_experiment):
  out, _ = cli_experiment
  stage = _tags(out / "tensorboard" / "ticket" / "trial_0" / "round_1")
  for tag in ("train/loss", "train/accuracy", "validation/loss", "validation/accuracy"):
    assert stage[tag] == [100, 200], tag
  assert "weights_remaining/fc1" in stage and "weights_remaining/all" in stage
  assert "weights_start/fc1" in stage and stage["weights_end/fc1"] == [200]
  summary = _tags(out / "tensorboard" / "summary")
  assert summary["early_stop_iteration/ticket"] == [0, 1]
  assert summary["early_stop_test_accuracy/reinit"] == [0, 1]  # starts at the dense round
  assert "_hparams_/session_start_info" in summary
