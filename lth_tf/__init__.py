"""lth-tf: the Lottery Ticket Hypothesis experiment on TensorFlow, tf-keras and TF-MOT.

TF-MOT 0.8 works only with Keras 2 (the ``tf-keras`` package), while TensorFlow 2.21 ships
Keras 3. ``TF_USE_LEGACY_KERAS`` must be set before TensorFlow is first imported, so the
package sets it here, before any module of ours imports TensorFlow.

The Python API (lth_tf.api) is reached from here: ``lth_tf.Config``, ``lth_tf.run``,
``lth_tf.load``, ``lth_tf.table``. They are imported on first use, so ``import lth_tf``
stays cheap and imports no TensorFlow (nor does ``lth_tf.Config``; ``run`` and ``load`` do).
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

_API = ("Config", "run", "load", "table", "Experiment")
__all__ = list(_API)


def __getattr__(name):
  if name in _API:
    from lth_tf import api
    return getattr(api, name)
  raise AttributeError(f"module 'lth_tf' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_API))
