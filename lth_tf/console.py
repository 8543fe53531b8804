"""What a long run prints: our progress, not TensorFlow's start-up and export chatter.

A Conv-2 experiment runs for hours; its console should show the stages, their curves, an
overall progress line with the time left, and warnings, so that a real problem is not lost
among hundreds of lines of TensorFlow's start-up messages, TFDS's progress bars and the
SavedModel writer's INFO lines per export. Everything hidden here comes back with
``--verbosity=1`` (absl's flag): nothing is discarded at that level.
"""
import contextlib
import logging
import os
import sys
import tempfile
import time

from absl import logging as absl_logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _OursOrWarnings(logging.Filter):
  """Keeps lth_tf's own INFO records and everyone's warnings and errors."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or record.pathname.startswith(_PACKAGE_DIR)


def calm(verbosity):
  """Below ``verbosity`` 1, keeps only lth_tf's INFO lines and every warning on absl's handler,
  turns TensorFlow's own logger down to errors (its warnings on export repeat each stage) and
  TFDS's progress bars off. Returns whether it calmed anything."""
  if verbosity >= 1:
    return False
  absl_logging.get_absl_handler().addFilter(_OursOrWarnings())
  logging.getLogger("tensorflow").setLevel(logging.ERROR)
  os.environ.setdefault("TFDS_DISABLE_PROGRESS_BAR", "1")
  with contextlib.suppress(ImportError):
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
  return True


@contextlib.contextmanager
def quiet_native_stderr(enabled=True):
  """Sends what native code writes to file descriptor 2 meanwhile (TensorFlow's C++ start-up
  lines: oneDNN, CUDA drivers, "All log messages before absl::InitializeLog") to a temporary
  file; if the block raises, that text is written back to stderr before the error goes on, so
  a failing start-up still shows why."""
  if not enabled:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    except BaseException:
      sys.stderr.flush()
      os.dup2(saved, 2)
      captured.seek(0)
      os.write(2, captured.read())
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)


def duration(seconds):
  """h:mm:ss."""
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StageProgress:
  """The overall progress line: stages done of the total, elapsed time, and the time left
  estimated from the stages trained in this process (stages found finished cost nothing)."""

  def __init__(self, total, prefix="progress", clock=time.monotonic):
    self.total, self.prefix, self.clock = total, prefix, clock
    self.start = clock()
    self.done = self.trained = 0
    self.trained_seconds = 0.0

  def finished(self, trained, seconds=0.0):
    """Counts one stage done (``trained``: trained now, in ``seconds``, rather than found
    finished)."""
    self.done += 1
    if trained:
      self.trained += 1
      self.trained_seconds += seconds

  def line(self, parallel=1, detail=""):
    """Logs and returns the progress line; ``parallel`` stages run at once (Ray's workers)."""
    left = self.total - self.done
    text = (f"{self.prefix}: {self.done}/{self.total} stages done{detail}, "
            f"{duration(self.clock() - self.start)} elapsed")
    if left and self.trained:
      per_stage = self.trained_seconds / self.trained
      text += f", ~{duration(left * per_stage / max(1, min(parallel, left)))} left"
    absl_logging.info("%s", text)
    return text
