"""Datasets as in-memory uint8 arrays, the seeded validation split, and tf.data pipelines.

Knows no models and no pruning. Images stay uint8 exactly as TFDS yields them: scaling to
[0, 1] is the model's first layer, so an exported ticket takes raw images.

The training order is a pure function of (seed, iteration): batch ``i`` is row ``i`` of an
index table built from seeded permutations, so a round resumed at iteration ``i`` sees exactly
the batches an uninterrupted round would have seen. The data stay in memory: at most a few
hundred MB for these datasets, and gathering batches in-graph is the fastest input pipeline.
"""
import dataclasses
import os

import numpy as np

# name -> image shape; every dataset here has 10 classes.
SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
NUM_CLASSES = 10
VALIDATION_SIZE = 5000


class DatasetUnavailableError(RuntimeError):
  """TFDS could not provide the dataset (typically: offline and not prepared yet)."""


@dataclasses.dataclass(frozen=True)
class Splits:
  """Train / validation / test arrays; x are uint8 [N, H, W, C], y are int64 [N]."""
  train_x: np.ndarray
  train_y: np.ndarray
  val_x: np.ndarray
  val_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray


def split_validation(x, y, validation_size, seed):
  """Holds ``validation_size`` examples out of (x, y), chosen by a seeded permutation.

  Returns (train_x, train_y, val_x, val_y, val_index) with the two parts disjoint.
  """
  if not 0 < validation_size < len(x):
    raise ValueError(f"validation_size must be in (0, {len(x)}), got {validation_size}")
  order = np.random.default_rng(seed).permutation(len(x))
  val, train = np.sort(order[:validation_size]), np.sort(order[validation_size:])
  return x[train], y[train], x[val], y[val], val


# Where TFDS downloads each dataset from, to tell "offline" in seconds rather than after
# TFDS's ten exponential-backoff retries (~3.5 minutes).
DOWNLOAD_HOSTS = {"mnist": "storage.googleapis.com", "fashion_mnist": "storage.googleapis.com",
                  "cifar10": "www.cs.toronto.edu"}

_OFFLINE_FIX = ("with no internet, pass --manual_dir=<folder with the original archives> or "
                "--data_dir=<a TFDS data dir where it is already prepared>")


def check_available(name, data_dir=None, manual_dir=None, timeout=5.0):
  """Raises DatasetUnavailableError at once if TFDS could neither read nor fetch ``name``."""
  import socket

  import tensorflow_datasets as tfds

  if manual_dir is not None and not os.path.isdir(manual_dir):
    raise DatasetUnavailableError(f"--manual_dir={manual_dir} is not a folder; pass the folder "
                                  f"holding the {name} archives")
  if manual_dir is not None or tfds.builder(name, data_dir=data_dir).is_prepared():
    return
  try:
    socket.create_connection((DOWNLOAD_HOSTS[name], 443), timeout=timeout).close()
  except OSError as e:
    raise DatasetUnavailableError(
        f"dataset {name!r} is not prepared in --data_dir={data_dir or '(TFDS default)'} and "
        f"{DOWNLOAD_HOSTS[name]} is unreachable ({type(e).__name__}); {_OFFLINE_FIX}") from e


def load(name, data_dir=None, manual_dir=None, validation_size=VALIDATION_SIZE, split_seed=0):
  """Loads a TFDS dataset fully into memory and splits off the validation set."""
  if name not in SHAPES:
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(SHAPES)}")
  import tensorflow_datasets as tfds  # heavy; only needed here

  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  try:
    train, test = tfds.load(
        name, split=["train", "test"], as_supervised=True,
        data_dir=data_dir, download_and_prepare_kwargs={"download_config": config})
  except Exception as e:  # TFDS raises many kinds; all mean "not available here".
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise DatasetUnavailableError(
        f"dataset {name!r} could not be loaded or downloaded ({type(e).__name__}: "
        f"{first[:200]}); {_OFFLINE_FIX}") from e
  x, y = _to_arrays(train)
  tx, ty = _to_arrays(test)
  train_x, train_y, val_x, val_y, _ = split_validation(x, y, validation_size, split_seed)
  return Splits(train_x, train_y.astype(np.int64), val_x, val_y.astype(np.int64),
                tx, ty.astype(np.int64))


def _to_arrays(ds):
  """A finite (image, label) dataset as two numpy arrays, in TFDS's order."""
  size = int(ds.cardinality())
  if size < 1:  # unknown length: count it
    size = sum(1 for _ in ds)
  x, y = ds.batch(size).get_single_element()
  return x.numpy(), y.numpy()


def batch_indices(num_examples, batch_size, iterations, seed):
  """[iterations, batch_size] int32 table: row i holds the examples of training batch i.

  Epochs are consecutive seeded permutations; a batch may straddle two epochs.
  """
  rng = np.random.default_rng(seed)
  needed = iterations * batch_size
  epochs = -(-needed // num_examples)
  order = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
  return order[:needed].reshape(iterations, batch_size).astype(np.int32)
