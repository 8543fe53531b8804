"""The console of a long run: our progress and warnings, not TensorFlow's chatter."""
import logging
import os

import pytest

from lth_tf import console


def test_progress_line_counts_stages_and_estimates_time_left_from_trained_ones():
  now = [0.0]
  meter = console.StageProgress(10, "local", clock=lambda: now[0])
  meter.finished(trained=False)  # found finished: costs nothing, tells nothing of speed
  assert meter.line() == "local: 1/10 stages done, 0:00:00 elapsed"
  now[0] = 60.0
  meter.finished(trained=True, seconds=60.0)
  assert meter.line() == "local: 2/10 stages done, 0:01:00 elapsed, ~0:08:00 left"
  # four workers share the 8 stages left; never more at once than stages left
  assert meter.line(parallel=4).endswith("~0:02:00 left")
  meter.done = 9
  assert meter.line(parallel=4).endswith("~0:01:00 left")
  meter.done = 10
  assert meter.line() == "local: 10/10 stages done, 0:01:00 elapsed"


def test_calm_keeps_our_info_and_everyones_warnings(monkeypatch):
  from absl import logging as absl_logging
  handler = absl_logging.get_absl_handler()
  before = list(handler.filters)
  try:
    assert console.calm(verbosity=1) is False and handler.filters == before
    assert console.calm(verbosity=0) is True
    keep = [f for f in handler.filters if f not in before]
    assert len(keep) == 1

    def record(path, level):
      return logging.LogRecord("absl", level, path, 1, "x", None, None)
    ours = os.path.join(os.path.dirname(console.__file__), "training.py")
    theirs = "/site-packages/tensorflow/python/saved_model/builder_impl.py"
    assert keep[0].filter(record(ours, logging.INFO))
    assert not keep[0].filter(record(theirs, logging.INFO))
    assert keep[0].filter(record(theirs, logging.WARNING))
    assert logging.getLogger("tensorflow").level == logging.ERROR
  finally:
    handler.filters[:] = before
    logging.getLogger("tensorflow").setLevel(logging.NOTSET)


def test_native_stderr_is_hidden_unless_the_block_fails(capfd):
  with console.quiet_native_stderr():
    os.write(2, b"I0000 start-up chatter\n")
  assert "chatter" not in capfd.readouterr().err
  with pytest.raises(RuntimeError):
    with console.quiet_native_stderr():
      os.write(2, b"why it failed\n")
      raise RuntimeError("start-up failed")
  assert "why it failed" in capfd.readouterr().err
  os.write(2, b"after\n")
  assert "after" in capfd.readouterr().err  # stderr restored
