"""Where an experiment's files live and which seed each random draw takes.

Both are pure functions of the experiment's settings and a stage's name, never of execution
order: a resumed run, a Ray worker, a study or a plot finds the same files and redraws the same
numbers. No TensorFlow here, so plotting and the studies can name files without the loop.

Layout under ``output_dir``::

  flags.cfg                              the experiment's flags (reusable as --flagfile)
  results.csv                            one row per finished (arm, trial, round)
  ticket/trial_<t>/theta0.npz            θ0, the weights every ticket is reset to
  ticket/trial_<t>/theta_<k>.npz         θ_k, with --rewind=iteration
  ticket/trial_<t>/early_bird.json       the iteration each early-bird mask settled at
  <arm>/trial_<t>/round_<r>/masks.npz    the mask trained in that stage
  <arm>/trial_<t>/round_<r>/weights.npz  the trained (masked) weights at the last iteration
  <arm>/trial_<t>/round_<r>/metrics.json the results.csv row, per-layer sparsity, the curve
  <arm>/trial_<t>/round_<r>/ticket/      the trained ticket as a SavedModel (with export)
"""
import zlib

import numpy as np


def stage_dir(output_dir, arm, trial, round_):
  return f"{output_dir}/{arm}/trial_{trial}/round_{round_}"


def theta0_path(output_dir, trial):
  return f"{output_dir}/ticket/trial_{trial}/theta0.npz"


def early_bird_path(output_dir, trial):
  return f"{output_dir}/ticket/trial_{trial}/early_bird.json"


def rewind_path(output_dir, trial, iteration):
  return f"{output_dir}/ticket/trial_{trial}/theta_{iteration}.npz"


def derive_seed(*parts):
  """A 31-bit seed that is a pure function of ``parts`` (ints and strings)."""
  ints = [p if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]
  return int(np.random.SeedSequence(ints).generate_state(1)[0] % (2**31 - 1))


def theta0_seed(cfg, trial):
  """The seed of ``trial``'s θ0 (trial 0's for every trial with --same_init)."""
  return derive_seed(cfg.seed, 0 if cfg.same_init else trial, "init")


def data_seed(cfg, trial, round_):
  """The seed of the batch order of ``round_``, shared by every arm of the round."""
  return derive_seed(cfg.seed, trial, round_, "data")


def arm_seed(cfg, arm, trial, round_):
  """The seed of an arm's own draw at a stage (a reinit's weights, a random mask, a
  permutation)."""
  return derive_seed(cfg.seed, trial, arm, round_)


def score_seed(cfg, trial):
  """The seed of the batches SNIP and GraSP score at θ0."""
  return derive_seed(cfg.seed, trial, "score")


def dst_seed(cfg, trial, round_, iteration=None):
  """The seed of a dynamic sparse ticket's start mask (``iteration`` None) and of its update
  at ``iteration`` (SET's regrowth, RigL's gradient batch)."""
  return derive_seed(cfg.seed, trial, round_, "dst", "start" if iteration is None else iteration)


def split_seed(cfg):
  """The seed of the validation split."""
  return derive_seed(cfg.seed, "split")
