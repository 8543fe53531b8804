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
# name -> examples in its "train" split (the validation set is held out of them).
TRAIN_SIZES = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000}


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
DOWNLOAD_HOSTS = {"mnist": "storage.googleapis.com",
                  "fashion_mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                  "cifar10": "www.cs.toronto.edu"}

# name -> the original archives TFDS prepares it from, as (file name, bytes, sha256): a copy of
# TFDS 4.9's url_checksums/<name>.txt, used only if the installed TFDS does not list them
# (``archives`` reads TFDS's own list first).
ARCHIVES = {
    "mnist": (
        ("t10k-images-idx3-ubyte.gz", 1648877,
         "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        ("t10k-labels-idx1-ubyte.gz", 4542,
         "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        ("train-images-idx3-ubyte.gz", 9912422,
         "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        ("train-labels-idx1-ubyte.gz", 28881,
         "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c")),
    "fashion_mnist": (
        ("t10k-images-idx3-ubyte.gz", 4422102,
         "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        ("t10k-labels-idx1-ubyte.gz", 5148,
         "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
        ("train-images-idx3-ubyte.gz", 26421880,
         "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        ("train-labels-idx1-ubyte.gz", 29515,
         "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845")),
    "cifar10": (
        ("cifar-10-binary.tar.gz", 170052171,
         "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),),
}

_OFFLINE_FIX = ("with no internet, pass --manual_dir=<folder with the original archives> or "
                "--data_dir=<a TFDS data dir where it is already prepared>")


def archives(name):
  """[(file name, bytes, sha256)] of the archives TFDS prepares ``name`` from, sorted by name.

  TFDS looks for each download in --manual_dir under the file name its checksums file
  records (``manual_dir / url_info.filename``, TFDS 4.9's DownloadManager), and downloads
  what is not there. The list is TFDS's own (its builder's ``url_infos``, from
  url_checksums/<name>.txt); ARCHIVES if this TFDS does not expose it.
  """
  try:
    import tensorflow_datasets as tfds
    infos = tfds.builder_cls(name).url_infos or {}
    listed = sorted((info.filename or url.rstrip("/").rsplit("/", 1)[-1], int(info.size),
                     info.checksum) for url, info in infos.items())
  except Exception:  # an older or newer TFDS without builder_cls / url_infos
    listed = []
  return listed or sorted(ARCHIVES[name])


def _sha256(path):
  import hashlib
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def check_manual_dir(name, manual_dir):
  """Raises DatasetUnavailableError naming every archive of ``name`` that ``manual_dir`` lacks
  or holds damaged (wrong size, or right size and wrong sha256), with the expected names and
  sizes: TFDS would otherwise try to download the missing ones (minutes of retries offline)
  and stop at a damaged one with a checksum error. Reads the files, no network (hashing
  CIFAR-10's 170 MB takes about a second; TFDS hashes them again when it prepares)."""
  expected = archives(name)
  problems = []
  for filename, size, sha256 in expected:
    path = os.path.join(manual_dir, filename)
    if not os.path.isfile(path):
      problems.append(f"{filename} is missing")
    elif os.path.getsize(path) != size:
      have = os.path.getsize(path)
      problems.append(f"{filename} has {have:,} bytes, not {size:,} "
                      f"({'truncated' if have < size else 'not the original file'})")
    elif sha256 and _sha256(path) != sha256:
      problems.append(f"{filename} has the right size but not the original's sha256 (damaged)")
  if problems:
    wanted = ", ".join(f"{f} ({s:,} bytes)" for f, s, _ in expected)
    found = (f"holds none of the {name} archives TFDS needs"
             if len(expected) > 1 and sum(p.endswith(" is missing") for p in problems)
             == len(expected)
             else f"does not hold the {name} archives TFDS needs: {'; '.join(problems)}")
    raise DatasetUnavailableError(
        f"--manual_dir={manual_dir} {found}; put the original files there under these names: "
        f"{wanted} (or pass --data_dir=<a TFDS data dir where {name} is already prepared)")


def check_available(name, data_dir=None, manual_dir=None, timeout=5.0):
  """Raises DatasetUnavailableError at once if TFDS could neither read nor fetch ``name``.

  Prepared in ``data_dir``: fine, whatever ``manual_dir`` holds (TFDS does not look there).
  Else with ``manual_dir``: every archive must be there, whole (check_manual_dir); nothing is
  downloaded then. Else the download host must answer within ``timeout`` seconds.
  """
  import socket

  import tensorflow_datasets as tfds

  if manual_dir is not None and not os.path.isdir(manual_dir):
    raise DatasetUnavailableError(f"--manual_dir={manual_dir} is not a folder; pass the folder "
                                  f"holding the {name} archives")
  if tfds.builder(name, data_dir=data_dir).is_prepared():
    return
  if manual_dir is not None:
    check_manual_dir(name, manual_dir)
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

  if manual_dir and not tfds.builder(name, data_dir=data_dir).is_prepared():
    check_manual_dir(name, manual_dir)  # in seconds, not after minutes of download retries
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
