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


# --manual_dir: every archive TFDS would look for there is checked by name, size and sha256
# before anything else, so an incomplete folder fails in seconds instead of after minutes of
# download retries. No network may be touched: a connection attempt fails the test.

@pytest.fixture
def no_network(monkeypatch):
  import socket

  def refuse(*args, **kwargs):
    raise AssertionError(f"network used: socket.create_connection{args}")

  monkeypatch.setattr(socket, "create_connection", refuse)


def test_archive_names_are_tfds_own():
  # TFDS looks for manual_dir/<filename of its checksums file>; the fallback table agrees.
  for name in ("mnist", "fashion_mnist", "cifar10"):
    infos = tfds.builder_cls(name).url_infos
    assert sorted((i.filename, int(i.size), i.checksum) for i in infos.values()) == \
        data.archives(name) == sorted(data.ARCHIVES[name])
  assert [f for f, _, _ in data.archives("cifar10")] == ["cifar-10-binary.tar.gz"]


def _unavailable(name, manual_dir, data_dir):
  import time
  start = time.perf_counter()
  with pytest.raises(data.DatasetUnavailableError) as e:
    data.check_available(name, data_dir=str(data_dir), manual_dir=str(manual_dir))
  assert time.perf_counter() - start < 10
  message = str(e.value)
  assert "\n" not in message and f"--manual_dir={manual_dir}" in message
  for filename, size, _ in data.archives(name):  # the expected names and sizes
    assert f"{filename} ({size:,} bytes)" in message
  return message


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_empty_manual_dir_fails_at_once_naming_the_archives(tmp_path, no_network, name):
  (tmp_path / "manual").mkdir()
  message = _unavailable(name, tmp_path / "manual", tmp_path / "data")
  assert ("holds none of" in message) if name != "cifar10" else (
      "cifar-10-binary.tar.gz is missing" in message)


def _copy_fashion(tmp_path):
  import shutil
  manual = tmp_path / "manual"
  manual.mkdir(parents=True)
  for filename, _, _ in data.archives("fashion_mnist"):
    shutil.copyfile(FASHION_MANUAL_DIR / filename, manual / filename)
  return manual


@pytest.mark.skipif(not FASHION_MANUAL_DIR.exists(), reason="needs ../shared/datasets")
def test_missing_truncated_or_damaged_fashion_archive_is_named(tmp_path, no_network):
  manual = _copy_fashion(tmp_path)
  (manual / "train-labels-idx1-ubyte.gz").unlink()
  message = _unavailable("fashion_mnist", manual, tmp_path / "data")
  assert "train-labels-idx1-ubyte.gz is missing" in message
  assert "t10k-images-idx3-ubyte.gz is" not in message  # the whole ones are not blamed

  manual = _copy_fashion(tmp_path / "b")
  with open(manual / "train-images-idx3-ubyte.gz", "r+b") as f:
    f.truncate(1_000_000)  # an interrupted copy
  message = _unavailable("fashion_mnist", manual, tmp_path / "data")
  assert "train-images-idx3-ubyte.gz has 1,000,000 bytes, not 26,421,880 (truncated)" in message

  manual = _copy_fashion(tmp_path / "c")
  with open(manual / "t10k-labels-idx1-ubyte.gz", "r+b") as f:
    f.seek(100)
    f.write(b"\0" * 8)  # same size, other bytes
  message = _unavailable("fashion_mnist", manual, tmp_path / "data")
  assert "t10k-labels-idx1-ubyte.gz has the right size but not the original's sha256" in message


def test_mnist_and_cifar10_archives_are_checked_by_size_and_hash(tmp_path, no_network):
  manual = tmp_path / "manual"
  manual.mkdir()
  for filename, size, _ in data.archives("mnist"):  # every file there but one truncated
    with open(manual / filename, "wb") as f:
      f.truncate(size if "t10k-images" not in filename else size - 1)
  message = _unavailable("mnist", manual, tmp_path / "data")
  assert "t10k-images-idx3-ubyte.gz has 1,648,876 bytes, not 1,648,877 (truncated)" in message
  assert "train-images-idx3-ubyte.gz has the right size but not the original's sha256" in message
  with open(manual / "cifar-10-binary.tar.gz", "wb") as f:
    f.truncate(170052171)  # sparse: the right size, zeros inside
  message = _unavailable("cifar10", manual, tmp_path / "data")
  assert "cifar-10-binary.tar.gz has the right size but not the original's sha256" in message


@pytest.mark.skipif(not FASHION_MANUAL_DIR.exists(), reason="needs ../shared/datasets")
def test_complete_manual_dir_passes_without_network(tmp_path, no_network):
  data.check_available("fashion_mnist", data_dir=str(tmp_path / "data"),
                       manual_dir=str(FASHION_MANUAL_DIR))


def test_prepared_data_dir_needs_no_manual_dir(tmp_path, no_network, monkeypatch):
  # Prepared already: TFDS does not look at --manual_dir, and neither does the check.
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  (tmp_path / "manual").mkdir()
  data.check_available("mnist", data_dir=str(tmp_path / "data"),
                       manual_dir=str(tmp_path / "manual"))


def test_load_checks_the_manual_dir_before_tfds_downloads(tmp_path, no_network):
  (tmp_path / "manual").mkdir()
  with pytest.raises(data.DatasetUnavailableError, match="holds none of the mnist archives"):
    data.load("mnist", data_dir=str(tmp_path / "data"), manual_dir=str(tmp_path / "manual"))
