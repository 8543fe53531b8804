"""results.csv grows by one row per finished stage, without rereading every stage's
metrics.json, and always equals what the stages' metrics.json say."""
import tf_keras as keras

from lth_tf import artifacts, experiment


class RowsSoFar(keras.callbacks.Callback):
  """At the start of each stage: how many rows results.csv holds."""

  def __init__(self, out):
    super().__init__()
    self.out, self.counts = out, []

  def on_train_begin(self, logs=None):
    path = f"{self.out}/results.csv"
    self.counts.append(len(artifacts.read_results(path)) if artifacts.exists(path) else None)


def test_each_stage_appends_its_row_and_metrics_are_read_twice_per_run(tmp_path, splits,
                                                                       monkeypatch, tiny_config):
  cfg = tiny_config(rounds=2, iterations=40)
  out = str(tmp_path)
  collected = []
  real = experiment.collect_rows
  monkeypatch.setattr(experiment, "collect_rows",
                      lambda *a: collected.append(1) or real(*a))
  rows_so_far = RowsSoFar(out)
  rows = experiment.run(cfg, out, splits, callbacks=[rows_so_far])
  n = len(cfg.stages())
  assert rows_so_far.counts == list(range(n))  # one more row before every stage
  assert len(collected) == 2  # every metrics.json read at the start and the end, not per stage
  assert artifacts.read_results(f"{out}/results.csv") == real(cfg, out) == rows
  # appending any finished stage's row gives the full rewrite, byte for byte (rows in order)
  full = (tmp_path / "results.csv").read_bytes()
  for row in rows:
    artifacts.write_results(f"{out}/results.csv", [r for r in rows if r is not row])
    experiment.append_result(cfg, out, row)
    assert (tmp_path / "results.csv").read_bytes() == full, row
  experiment.append_result(cfg, out, rows[3])  # a stage retrained: its row replaced, not added
  assert (tmp_path / "results.csv").read_bytes() == full
