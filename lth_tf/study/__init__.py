"""Studies of a finished (or partly finished) experiment folder, from its saved files only.

  python -m lth_tf.study consistency --output_dir=results/a,results/b
  python -m lth_tf.study properties --output_dir=results/a
  python -m lth_tf.study infoplane --output_dir=results/a --round=7
  python -m lth_tf.study instability --output_dir=results/a --rounds=0,3,7 --trials=0,1

``consistency``: does iterative magnitude pruning find the same ticket in every trial (Jaccard
index and overlap against chance of the trials' masks), and LeNet's fc1 input connectivity.
``properties``: what distinguishes a ticket's kept weights (|θ0| of kept vs all, sign kept
through training), how far each arm's surviving weights travel in training, and the test
accuracy of the untrained masked network θ0⊙m ("supermask").
``infoplane``: I(X;T) and I(T;Y) of each hidden layer during training of the dense network,
the ticket and its reinit control at one round (retrained with the core Trainer).
``instability``: the error barrier on the straight line between two copies of a stage trained
with different batch orders (Frankle et al. 2020), and between successive IMP rounds' tickets.

Library functions (``consistency.run``, ``properties.run``) take plain arguments; the flags
live in ``__main__``. This module stays light: the studies import TensorFlow, so that the
command line can reject a bad study name before paying for that import.
"""
import os

import lth_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

STUDIES = ("consistency", "properties", "infoplane", "instability")


def folder_problem(output_dir, isdir=os.path.isdir, exists=os.path.exists):
  """Why ``output_dir`` is not an experiment folder lth_tf.main has run in (one line naming
  the flag and the fix), or None. ``isdir``/``exists`` default to the local filesystem;
  common.load passes tf.io.gfile's for any filesystem TensorFlow knows."""
  if not output_dir:
    return "--output_dir is empty; pass the folder of an experiment run by lth_tf.main"
  if not isdir(output_dir):
    return (f"--output_dir={output_dir} is not a folder; pass the folder of an experiment run "
            f"by lth_tf.main")
  for name in ("flags.cfg", "results.csv"):
    if not exists(f"{output_dir}/{name}"):
      return (f"--output_dir={output_dir} has no {name}; run lth_tf.main into it first (or "
              f"pass the experiment's folder)")
  return None
