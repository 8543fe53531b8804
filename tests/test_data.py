"""Data: seeded disjoint split, deterministic batch order, TFDS loading (mock and real)."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import FASHION_MANUAL_DIR
from lth_tf import data


def test_split_is_disjoint_seeded_and_complete():
  x = np.arange(1000)[:, None]
  y = np.arange(1000)
  tx, ty, vx, vy, idx = data.split_validation(x, y, 100, seed=7)
  assert len(vy) == 100 and len(ty) == 900
  assert not set(ty) & set(vy)
  assert set(ty) | set(vy) == set(range(1000))
  again = data.split_validation(x, y, 100, seed=7)
  np.testing.assert_array_equal(again[3], vy)
  other = data.split_validation(x, y, 100, seed=8)
  assert not np.array_equal(other[3], vy)


def test_batch_order_is_seeded_and_covers_epochs():
  table = data.batch_indices(100, 30, 20, seed=1)
  assert table.shape == (20, 30)
  flat = table.ravel()
  for e in range(5):  # each epoch is a permutation
    assert sorted(flat[e * 100:(e + 1) * 100]) == list(range(100))
  np.testing.assert_array_equal(table, data.batch_indices(100, 30, 20, seed=1))
  assert not np.array_equal(table, data.batch_indices(100, 30, 20, seed=2))
  # the table for fewer iterations is a prefix: the order does not depend on the round length
  np.testing.assert_array_equal(data.batch_indices(100, 30, 7, seed=1), table[:7])


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_loading_with_mock_data(name, shape):
  with tfds.testing.mock_data(num_examples=5200):
    s = data.load(name, validation_size=5000)
  assert s.train_x.shape[1:] == shape and s.train_x.dtype == np.uint8
  assert len(s.val_x) == 5000 and len(s.train_x) == 200
  assert len(s.test_x) > 0 and s.val_y.dtype == np.int64


def test_unknown_dataset_is_rejected():
  with pytest.raises(ValueError, match="unknown dataset"):
    data.load("imagenet")


def test_unavailable_dataset_fails_fast_naming_the_flags(tmp_path):
  # An empty data dir and no internet (as on this machine and in CI): TFDS cannot prepare MNIST.
  import socket
  try:
    socket.create_connection((data.DOWNLOAD_HOSTS["mnist"], 443), timeout=3).close()
    pytest.skip("this machine is online: TFDS would download MNIST")
  except OSError:
    pass
  with pytest.raises(data.DatasetUnavailableError, match="--manual_dir.*--data_dir"):
    data.check_available("mnist", data_dir=str(tmp_path))
  with pytest.raises(data.DatasetUnavailableError, match="--manual_dir=/nonexistent"):
    data.check_available("mnist", data_dir=str(tmp_path), manual_dir="/nonexistent")


@pytest.mark.skipif(not FASHION_MANUAL_DIR.exists(), reason="needs ../shared/datasets")
def test_real_fashion_mnist_through_manual_dir():
  s = data.load("fashion_mnist", manual_dir=str(FASHION_MANUAL_DIR))
  assert s.train_x.shape == (55000, 28, 28, 1) and s.val_x.shape == (5000, 28, 28, 1)
  assert s.test_x.shape == (10000, 28, 28, 1)
  assert s.train_x.dtype == np.uint8 and s.train_x.max() == 255
  assert sorted(np.unique(s.train_y)) == list(range(10))
  # class balance survives the split (6000 per class before it)
  counts = np.bincount(s.val_y, minlength=10)
  assert counts.min() > 400 and counts.max() < 600
