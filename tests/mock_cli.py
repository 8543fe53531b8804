"""``python tests/mock_cli.py <lth_tf.main flags>``: lth_tf.main on TFDS's mock data.

MNIST and CIFAR-10 cannot be downloaded on an offline machine; ``tfds.testing.mock_data``
serves random examples of the right shapes instead, so the CLI's code paths for those datasets
(models, training, export) run as a user's would. The offline availability check is skipped.
"""
import os
from unittest import mock

from absl import app

import lth_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
import tensorflow_datasets as tfds
from lth_tf import data, main

if __name__ == "__main__":
  with tfds.testing.mock_data(num_examples=int(os.environ.get("MOCK_EXAMPLES", "5300"))), \
      mock.patch.object(data, "check_available", lambda *args, **kwargs: None):
    app.run(main.main)
