"""Atomic writes: a failure mid-write leaves the previous file intact and no debris."""
import os

import numpy as np
import pytest
import tensorflow as tf

from lth_tf import artifacts


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
  path = str(tmp_path / "results.csv")
  artifacts.write_bytes(path, "old contents\n")

  class FullDisk(tf.io.gfile.GFile):
    def write(self, data):
      super().write(data[: len(data) // 2])
      raise OSError(28, "No space left on device")

  monkeypatch.setattr(tf.io.gfile, "GFile", FullDisk)
  with pytest.raises(OSError, match="No space"):
    artifacts.write_bytes(path, "new contents that will not fit\n")
  monkeypatch.undo()
  assert open(path).read() == "old contents\n"
  assert os.listdir(tmp_path) == ["results.csv"]  # the temporary file was removed


def test_read_only_dir_keeps_previous_file(tmp_path):
  path = str(tmp_path / "metrics.json")
  artifacts.write_json(path, {"a": 1})
  os.chmod(tmp_path, 0o500)
  try:
    if os.access(tmp_path, os.W_OK):
      pytest.skip("running as root: permissions are not enforced")
    with pytest.raises(Exception):
      artifacts.write_json(path, {"a": 2})
  finally:
    os.chmod(tmp_path, 0o700)
  assert artifacts.read_json(path) == {"a": 1}


def test_results_roundtrip_keeps_exact_floats(tmp_path):
  row = dict(arm="ticket", trial=0, round=1, weights_remaining=80.03756574004508,
             early_stop_iteration=900, early_stop_val_loss=0.1 + 0.2,
             early_stop_val_accuracy=float("nan"), early_stop_test_accuracy=0.5,
             final_test_accuracy=0.25, diverged=False, search_iterations=0)
  artifacts.write_results(str(tmp_path / "r.csv"), [row])
  back = artifacts.read_results(str(tmp_path / "r.csv"))[0]
  assert back["early_stop_val_loss"] == 0.1 + 0.2 and back["weights_remaining"] == 80.03756574004508
  assert np.isnan(back["early_stop_val_accuracy"]) and back["diverged"] == 0


def test_weights_roundtrip(tmp_path):
  w = {"fc1": [np.ones((3, 2), np.float32), np.zeros(2, np.float32)], "output": [np.eye(2)]}
  artifacts.write_weights(str(tmp_path / "w.npz"), w)
  back = artifacts.read_weights(str(tmp_path / "w.npz"))
  assert list(back) == ["fc1", "output"] and len(back["fc1"]) == 2
  np.testing.assert_array_equal(back["fc1"][0], w["fc1"][0])
