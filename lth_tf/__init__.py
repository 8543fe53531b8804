"""lth-tf: the Lottery Ticket Hypothesis experiment on TensorFlow, tf-keras and TF-MOT.

TF-MOT 0.8 works only with Keras 2 (the ``tf-keras`` package), while TensorFlow 2.21 ships
Keras 3. ``TF_USE_LEGACY_KERAS`` must be set before TensorFlow is first imported, so the
package sets it here, before any module of ours imports TensorFlow.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
