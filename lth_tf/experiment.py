"""The lottery-ticket experiment: θ0 once per trial, then per round "prune, rewind, train"
for the ticket and each control, every stage skipped when its output already exists.

Resuming is the same loop run again: finished stages are skipped (their metrics.json exists),
an interrupted stage resumes from its checkpoint. Every seed derives from (seed, trial, arm,
round), never from execution order.

Output layout under ``output_dir``::

  flags.cfg                         the experiment's flags (reusable as --flagfile)
  results.csv                       one row per finished (arm, trial, round)
  ticket/trial_<t>/theta0.npz       θ0, the weights every ticket is reset to
  <arm>/trial_<t>/round_<r>/masks.npz    the mask trained in that stage
  <arm>/trial_<t>/round_<r>/weights.npz  the trained (masked) weights at the last iteration
  <arm>/trial_<t>/round_<r>/metrics.json the results.csv row, per-layer sparsity, the curve
  <arm>/trial_<t>/round_<r>/ticket/      the trained ticket as a SavedModel (with export)
"""
import contextlib
import dataclasses
import functools
import zlib

import numpy as np
import tf_keras as keras
from absl import logging

from lth_tf import (artifacts, config, console, data, distribute, environment, masks, models,
                    pruning, summaries, ticket, training)
from lth_tf import export as export_lib
from lth_tf.config import (AT_INIT, CONTROLS, PAPER, PAPER_BATCH_SIZE, PRUNING,  # noqa: F401
                           REWIND, Config, ConfigError, paper_output_rate)


class DivergedError(RuntimeError):
  """A stage's loss became NaN/inf and --on_divergence=stop; the stage is recorded."""


def dependencies(cfg):
  """{stage: the stages it needs finished first} for every (arm, trial, round) of ``cfg``.

  A stage needs the files other stages write: the ticket's round r mask is pruned from the
  trained ticket of round r-1 (one-shot: round 0); early-bird masks and the late-resetting
  point θ_k are recorded during the dense round 0; SNIP, GraSP and SynFlow score θ0 alone
  (which every stage draws or loads itself: ``_Run.theta0`` is a pure function of the seeds,
  written atomically). A control trains the ticket's mask of its round (reinit,
  sign_constant), its counts (random_prune) or, with --rewind=none, fine-tunes the ticket's
  previous round: it needs the ticket of its round, which is also the simplest guarantee that
  the ticket's mask is written once, by the ticket. Nothing crosses trials.
  """
  deps = {}
  for arm, t, r in cfg.stages():
    if arm != "ticket":
      need = [("ticket", t, r)]
    elif r == 0 or cfg.pruning in AT_INIT:
      need = []
    elif cfg.one_shot or cfg.pruning == "early_bird":
      need = [("ticket", t, 0)]
    else:  # iterative magnitude pruning (any --rewind): the previous round's trained weights
      need = [("ticket", t, r - 1)]
    if arm == "ticket" and r > 0 and cfg.rewind == "iteration" and ("ticket", t, 0) not in need:
      need.append(("ticket", t, 0))  # θ_k, captured during the dense round
    deps[(arm, t, r)] = tuple(need)
  return deps


def check_order(order, deps):
  """Raises ValueError unless ``order`` lists every stage of ``deps`` once, after its needs."""
  seen = set()
  for stage in order:
    missing = [d for d in deps[stage] if d not in seen]
    if stage in seen or missing:
      raise ValueError(f"{stage} is listed twice or before {missing}")
    seen.add(stage)
  if seen != set(deps):
    raise ValueError(f"stages missing from the order: {sorted(set(deps) - seen)}")
  return order


def stage_order(cfg):
  """The order the local loop runs: cfg.stages(), checked to be a topological order."""
  return check_order(cfg.stages(), dependencies(cfg))


def _needed_by(cfg):
  """{stage: the stages that need it}, dependencies(cfg) reversed."""
  needed_by = {}
  for stage, needs in dependencies(cfg).items():
    for need in needs:
      needed_by.setdefault(need, []).append(stage)
  return needed_by


def built_on(cfg, stages):
  """Every stage that needs one of ``stages``, directly or through others (dependencies)."""
  needed_by = _needed_by(cfg)
  out, todo = set(), list(stages)
  while todo:
    for later in needed_by.get(todo.pop(), ()):
      if later not in out:
        out.add(later)
        todo.append(later)
  return out - set(stages)


def changed_by_retraining(cfg, stages):
  """The stages built on what retraining ``stages`` may change in the last bits (on another
  machine, other libraries or --threads): trained weights, and masks found by training or by
  TensorFlow (early-bird, SNIP, GraSP, SynFlow). A later ticket round is pruned from (or
  rewinds to, or records its early-bird mask in) a ticket's training, so it and everything
  built on it go; a control needs only its ticket's mask, which IMP recomputes exactly from
  the files it was pruned from (numpy), so it stays, unless that mask came from TensorFlow."""
  needed_by = _needed_by(cfg)
  exact_masks = cfg.pruning in ("layerwise", "global")
  out = set()
  for stage in stages:
    for later in needed_by.get(stage, ()):
      if later[0] == "ticket" or not (exact_masks or stage[2] == 0):
        out |= {later} | built_on(cfg, [later])
  return out - set(stages)


def _rounds_text(rounds):
  """[1, 2, 3, 5] -> '1-3, 5'."""
  runs = []
  for r in sorted(rounds):
    if runs and r == runs[-1][1] + 1:
      runs[-1][1] = r
    else:
      runs.append([r, r])
  return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def stage_fix(cfg, output_dir, stage, name):
  """What to do about ``stage``'s corrupt file ``name`` (masks.npz, weights.npz or
  metrics.json), one line: which folder to delete so that rerunning the experiment's command
  retrains it, and which finished stages were built on what that may change
  (``changed_by_retraining``). Those keep their files: they stay consistent with the retrained
  stage when the rerun reproduces it bit for bit, as it does on the same machine, libraries
  and --threads; otherwise they must go too.
  An early-bird ticket's mask is recorded by the dense round, so there the dense round is
  retrained (or only the stage's trained files deleted)."""
  arm, trial, round_ = stage
  folder = stage_dir(output_dir, *stage)
  roots = [stage]
  if cfg.pruning == "early_bird" and arm == "ticket" and round_ > 0:
    if name != "masks.npz":
      return (f"delete {folder}/weights.npz and {folder}/metrics.json (not its masks.npz, "
              f"which the dense round recorded) and rerun the experiment's command to retrain "
              f"that stage")
    dense = stage_dir(output_dir, "ticket", trial, 0)
    roots.append(("ticket", trial, 0))
    fix = (f"delete {dense} and {folder} and rerun the experiment's command to retrain the "
           f"dense round, which records the early-bird masks, and that stage")
  else:
    fix = f"delete {folder} and rerun the experiment's command to retrain that stage"
  later = [s for s in changed_by_retraining(cfg, roots)
           if artifacts.exists(f"{stage_dir(output_dir, *s)}/metrics.json")]
  if later:
    by_arm = {}
    for a, _, r in later:
      by_arm.setdefault(a, []).append(r)
    which = ", ".join(f"{a} round{'s' if len(rs) > 1 else ''} {_rounds_text(rs)}"
                      for a, rs in sorted(by_arm.items(), key=lambda x: x[0] != "ticket"))
    many = len(later) > 1
    fix += (f"; the {f'{len(later)} finished stages' if many else 'finished stage'} built on "
            f"it (trial {trial}: {which}) {'stay' if many else 'stays'} valid only if the rerun "
            f"reproduces this stage bit for bit (same machine, libraries and --threads): "
            f"otherwise delete {'them' if many else 'it'} too")
  return fix


def explain(error, cfg):
  """``error`` (a CorruptFileError) with the fix that knows the experiment ``cfg``: for a
  stage's file, stage_fix; for θ_k and early_bird.json, which the dense round records, the
  stages built on that round too. Other files keep their fix."""
  found = artifacts.stage_of(error.path)
  if found and found[2] in ("masks.npz", "weights.npz", "metrics.json"):
    return error.with_fix(stage_fix(cfg, found[0], found[1], found[2]))
  name = error.path.rsplit("/", 1)[-1]
  if "/ticket/trial_" in error.path and (name == "early_bird.json" or (
      name.startswith("theta_") and name != "theta0.npz")):
    output_dir, trial = error.path.rsplit("/ticket/trial_", 1)
    trial = int(trial.split("/", 1)[0])
    later = [s for s in changed_by_retraining(cfg, [("ticket", trial, 0)])
             if artifacts.exists(f"{stage_dir(output_dir, *s)}/metrics.json")]
    if later:
      return error.with_fix(f"{error.fix}; the {len(later)} finished stage(s) of trial {trial} "
                            f"built on the dense round stay valid only if the rerun "
                            f"reproduces it bit for bit (same machine, libraries and "
                            f"--threads): otherwise delete them too")
  return error


@contextlib.contextmanager
def explained(cfg):
  """Re-raises a CorruptFileError of the experiment's files with ``explain``'s fix."""
  try:
    yield
  except artifacts.CorruptFileError as e:
    raise explain(e, cfg) from None


def setup_tensorflow(threads, seed, deterministic, cpu_devices=0, strategy="default"):
  """Logical CPU devices, intra-op threads, the tf.distribute strategy, seeds and op
  determinism, before the process runs any TF op; returns the strategy (None for default).

  lth_tf.main calls it once; a Ray worker calls it before each stage (the thread count and
  the CPU split can only be set before TensorFlow initialises, so a worker reused at the same
  values skips them). A multi-worker strategy is created here, before any op runs, as it must.
  """
  import tensorflow as tf
  import tf_keras

  try:
    distribute.split_cpu(cpu_devices)
    if tf.config.threading.get_intra_op_parallelism_threads() != threads:
      tf.config.threading.set_intra_op_parallelism_threads(threads)
    strategy_ = distribute.get(strategy)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  tf_keras.utils.set_random_seed(seed)
  if deterministic:
    tf.config.experimental.enable_op_determinism()
  return strategy_


def check_strategy(cfg, strategy):
  """--batch_size is the global batch: it must split evenly over the strategy's replicas."""
  replicas = 1 if strategy is None else strategy.num_replicas_in_sync
  if cfg.batch_size % replicas:
    raise ConfigError(f"--batch_size={cfg.batch_size} (the global batch) does not split over "
                      f"the {replicas} replicas of the strategy; pass a multiple of {replicas}")

def derive_seed(*parts):
  """A 31-bit seed that is a pure function of ``parts`` (ints and strings)."""
  ints = [p if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]
  return int(np.random.SeedSequence(ints).generate_state(1)[0] % (2**31 - 1))


def initial_weights(cfg, seed, shape=None):
  """The weights ``cfg``'s initializer draws with ``seed`` (θ0 of a trial, or a reinit
  control's fresh weights): a pure function of the two, so a lost theta0.npz is redrawn
  bit for bit. ``shape``: the images' shape (default: the dataset's)."""
  return ticket.get_weights(models.build(cfg.model, shape or data.SHAPES[cfg.dataset],
                                         init=cfg.initializer, seed=seed,
                                         init_scale=cfg.init_scale))


@functools.lru_cache(maxsize=None)
def _weight_shapes(model, shape):
  net = models.build(model, shape)
  return artifacts.weight_shapes({n: layer.weights
                                  for n, layer in ticket.weight_layers(net).items()})


def weight_shapes(cfg):
  """{layer: [array shapes]} of ``cfg``'s network, what its θ0 and weights.npz must hold
  (built once per model and dataset)."""
  return _weight_shapes(cfg.model, data.SHAPES[cfg.dataset])


def theta0_seed(cfg, trial):
  """The seed of ``trial``'s θ0 (trial 0's for every trial with --same_init)."""
  return derive_seed(cfg.seed, 0 if cfg.same_init else trial, "init")


def stage_dir(output_dir, arm, trial, round_):
  return f"{output_dir}/{arm}/trial_{trial}/round_{round_}"


def theta0_path(output_dir, trial):
  return f"{output_dir}/ticket/trial_{trial}/theta0.npz"


def early_bird_path(output_dir, trial):
  return f"{output_dir}/ticket/trial_{trial}/early_bird.json"


def rewind_path(output_dir, trial, iteration):
  return f"{output_dir}/ticket/trial_{trial}/theta_{iteration}.npz"


def round_targets(cfg, model, round_):
  """How many weights each group of ``model``'s prunable layers keeps after ``round_`` rounds:
  [((layer, ...), count)], the targets pruning.prune takes (config.groups says which groups)."""
  wrappers = ticket.wrappers(model)
  sizes = {n: int(np.prod(w.pruning_vars[0][0].shape))  # shapes only: no copy of the values
           for n, w in wrappers.items()}
  return config.targets(cfg, sizes, {n: models.layer_kind(w.layer) for n, w in wrappers.items()},
                        round_)


def make_trainer(cfg, model, jit_compile=True, strategy=None):
  """A trainer for ``model`` with ``cfg``'s optimizer, schedule and weight decay: a
  training.Trainer, or under a tf.distribute ``strategy`` a distribute.DistributedTrainer."""
  return distribute.trainer(
      strategy, model, cfg.learning_rate, jit_compile, optimizer=cfg.optimizer,
      momentum=cfg.momentum,
      warmup_iterations=cfg.warmup_iterations, lr_drops=cfg.lr_drops,
      lr_drop_factor=cfg.lr_drop_factor, weight_decay=cfg.weight_decay)


def collect_rows(cfg, output_dir):
  """results.csv rows for every finished stage of ``cfg``, from the stages' metrics.json
  (each checked: CorruptFileError if one is not a stage's metrics.json)."""
  rows = []
  for arm in ("ticket",) + tuple(cfg.controls):
    for t in range(cfg.trials):
      for r in range(cfg.rounds + 1):
        path = f"{stage_dir(output_dir, arm, t, r)}/metrics.json"
        if arm in cfg.arms(r) and artifacts.exists(path):
          m = artifacts.read_json(path)
          m.setdefault("search_iterations",  # metrics.json written before the column existed
                       cfg.iterations * (0 if r == 0 else 1 if cfg.one_shot else r))
          rows.append({c: m[c] for c in artifacts.RESULT_COLUMNS})
  return rows



def write_results(cfg, output_dir, logdir=None):
  """results.csv and the TensorBoard summary run, from every finished stage's metrics.json."""
  with explained(cfg):
    rows = collect_rows(cfg, output_dir)
  artifacts.write_results(f"{output_dir}/results.csv", rows)
  if logdir:
    summaries.write_summary(logdir, rows, dataclasses.asdict(cfg))
  return rows

class _Run:
  """One experiment's shared state: the compiled model reused by every stage, and the data.

  With a tf.distribute ``strategy`` the model, its TF-MOT wrappers and the optimizer are
  created in ``strategy.scope()``, and every write to them (masks, start weights, training,
  restoring) happens in it, so every replica holds the same values. Temporary models (fresh
  weights, scoring at θ0) are built outside it, as plain variables.
  """

  def __init__(self, cfg, output_dir, splits, checkpoint_every, jit_compile, callbacks, export,
               logdir, strategy=None):
    check_strategy(cfg, strategy)
    self.cfg, self.out, self.splits = cfg, output_dir, splits
    self.strategy = strategy
    self.callbacks = list(callbacks)
    self.logdir = logdir
    self.checkpoint_every = checkpoint_every
    self.shape = splits.train_x.shape[1:]
    with self.scope():
      self.model = ticket.wrap(models.build(cfg.model, self.shape, init=cfg.initializer))
      self.trainer = make_trainer(cfg, self.model, jit_compile, strategy)
    # Its own variables (mask, θ0⊙mask) are plain: written from numpy, read only to save.
    self.exporter = export_lib.TicketExporter(self.model) if export else None
    self.train = training.Split.of(splits.train_x, splits.train_y)
    self.val = training.Split.of(splits.val_x, splits.val_y)
    self.test = training.Split.of(splits.test_x, splits.test_y)
    self.sizes = {n: k.size for n, k in ticket.get_kernels(self.model).items()}
    # What every file read back must hold (artifacts.read_mask / read_weights check them).
    self.mask_shapes = {n: tuple(w.pruning_vars[0][0].shape)
                        for n, w in ticket.wrappers(self.model).items()}
    self.weight_shapes = artifacts.weight_shapes(
        {n: layer.weights for n, layer in ticket.weight_layers(self.model).items()})

  def scope(self):
    """The strategy's scope, or no context for the default strategy."""
    return contextlib.nullcontext() if self.strategy is None else self.strategy.scope()

  def fresh_weights(self, seed):
    return initial_weights(self.cfg, seed, self.shape)

  def targets(self, round_):
    """How many weights each group of layers keeps after ``round_`` rounds (round_targets)."""
    return round_targets(self.cfg, self.model, round_)

  def rewinder(self, trial):
    """The RewindCallback of ``trial``: θ0, or θ_k saved during the dense round."""
    if self.cfg.rewind != "iteration":
      return ticket.RewindCallback(self.theta0(trial))
    path = rewind_path(self.out, trial, self.cfg.rewind_iteration)
    saved = artifacts.read_weights(path, self.weight_shapes) if artifacts.exists(path) else None
    return ticket.RewindCallback(saved, rewind_iteration=self.cfg.rewind_iteration,
                                 on_capture=lambda w: artifacts.write_weights(path, w))

  def start(self, arm, trial, round_, rewinder, mask):
    """Sets the model to the weights ``arm`` starts ``round_`` from, under ``mask``.

    Returns (those weights before masking, their seed).
    """
    cfg = self.cfg
    if arm in ("ticket", "random_prune") and round_ > 0 and cfg.rewind != "none":
      with self.scope():
        rewinder.rewind(self.model, mask)  # θ0, or θ_k with late resetting
      return rewinder.weights, self.theta0_seed(trial)
    if arm == "sign_constant":  # θ's signs, each layer's std as the one magnitude
      seed = self.theta0_seed(trial)
      init = {n: [np.sign(ws[0]) * ws[0].std(), *ws[1:]] if n in mask else ws
              for n, ws in (rewinder.weights if cfg.rewind == "iteration"
                            else self.theta0(trial)).items()}
    elif arm == "reinit":
      seed = derive_seed(cfg.seed, trial, arm, round_)
      init = self.fresh_weights(seed)
    elif round_ == 0:
      seed, init = self.theta0_seed(trial), self.theta0(trial)
    else:  # rewind=none: fine-tune the previous round's trained weights
      seed = self.theta0_seed(trial)
      init = artifacts.read_weights(
          f"{stage_dir(self.out, 'ticket', trial, round_ - 1)}/weights.npz", self.weight_shapes)
    with self.scope():
      ticket.set_masks(self.model, mask)
      ticket.set_weights(self.model, init)
    return init, seed

  def theta0_seed(self, trial):
    return theta0_seed(self.cfg, trial)

  def mask_seed(self, arm, trial, round_):
    """Seed of a random mask (random_prune); None for masks that are not random."""
    return derive_seed(self.cfg.seed, trial, arm, round_) if arm == "random_prune" else None

  def theta0(self, trial):
    """θ0 of ``trial``: loaded if saved, else drawn and saved before anything trains."""
    path = theta0_path(self.out, trial)
    if artifacts.exists(path):
      return artifacts.read_weights(path, self.weight_shapes)
    weights = self.fresh_weights(self.theta0_seed(trial))
    artifacts.write_weights(path, weights)
    return weights

  def mask(self, arm, trial, round_):
    """The mask ``arm`` trains with at ``round_``, written to its stage dir once."""
    path = f"{stage_dir(self.out, arm, trial, round_)}/masks.npz"
    if artifacts.exists(path):
      return artifacts.read_mask(path, self.mask_shapes)
    kernels = ticket.get_kernels(self.model)
    if round_ == 0:
      mask = masks.ones_like(kernels)
    elif arm == "ticket" and self.cfg.pruning in AT_INIT:
      mask = self.mask_at_init(trial, round_)
    elif arm == "ticket" and self.cfg.pruning == "early_bird":
      raise RuntimeError(f"no early-bird mask for round {round_}: the dense round records them")
    elif arm == "ticket":  # prune the trained previous round (one-shot: the dense round)
      prev = stage_dir(self.out, "ticket", trial, 0 if self.cfg.one_shot else round_ - 1)
      trained = artifacts.read_weights(f"{prev}/weights.npz", self.weight_shapes)
      mask = pruning.prune("magnitude", {n: trained[n][0] for n in self.sizes},
                           artifacts.read_mask(f"{prev}/masks.npz", self.mask_shapes),
                           self.targets(round_))
    elif arm in ("reinit", "sign_constant"):
      mask = self.mask("ticket", trial, round_)
    else:  # random_prune: the ticket's per-layer counts, positions at random
      counts = masks.counts(self.mask("ticket", trial, round_))
      rng = np.random.default_rng(self.mask_seed(arm, trial, round_))
      mask = pruning.prune("random", kernels, None, [((n,), c) for n, (c, _) in counts.items()],
                           rng)
    artifacts.write_bytes(path, masks.to_bytes(mask))
    return mask

  def mask_at_init(self, trial, round_):
    """SNIP / GraSP / SynFlow mask at θ0 for round ``round_``'s targets."""
    from lth_tf import saliency
    cfg = self.cfg
    # Scored on one device: under a strategy, on a plain copy (no replicas needed to score).
    model = self.model if self.strategy is None else ticket.wrap(
        models.build(cfg.model, self.shape, init=cfg.initializer))
    ticket.set_masks(model, masks.ones_like(ticket.get_kernels(model)))
    ticket.set_weights(model, self.theta0(trial))
    if cfg.pruning == "synflow":
      return saliency.synflow_masks(model, self.targets(round_), cfg.synflow_iterations)
    rows = data.batch_indices(len(self.splits.train_x), cfg.batch_size, cfg.score_batches,
                              derive_seed(cfg.seed, trial, "score")).ravel()
    x, y = self.splits.train_x[rows], self.splits.train_y[rows]
    score = saliency.snip_scores if cfg.pruning == "snip" else saliency.grasp_scores
    scores = score(model, x, y, batches=cfg.score_batches, batch_size=cfg.batch_size)
    return pruning.keep_top(scores, masks.ones_like(scores), self.targets(round_))

  def search_iterations(self, trial, round_):
    """Training iterations spent finding the round's mask (data batches for SNIP/GraSP)."""
    cfg = self.cfg
    if round_ == 0 or cfg.pruning == "synflow":
      return 0
    if cfg.pruning in ("snip", "grasp"):
      return cfg.score_batches
    if cfg.pruning == "early_bird":
      path = early_bird_path(self.out, trial)
      found = artifacts.read_json(path)
      if str(round_) not in found:
        raise artifacts.CorruptFileError(path, f"no iteration for round {round_}")
      return found[str(round_)]
    return cfg.iterations * (1 if cfg.one_shot else round_)

  def early_bird_callback(self, trial):
    """During the dense round: one EarlyBird detector per later round's target sparsity.

    Each round's mask is written (with the iteration it settled at) the moment it settles;
    rounds still unsettled at the end take the final magnitude mask, at --iterations.
    """
    from lth_tf import saliency
    cfg, run = self.cfg, self
    found_path = early_bird_path(self.out, trial)

    class EarlyBirdRecorder(keras.callbacks.Callback):
      def on_train_begin(self, logs=None):
        self.detectors = {r: saliency.EarlyBird(cfg.eb_epsilon, cfg.eb_window)
                          for r in range(1, cfg.rounds + 1)}
        self.found = {}

      def _record(self, r, mask, iteration):
        artifacts.write_bytes(f"{stage_dir(run.out, 'ticket', trial, r)}/masks.npz",
                              masks.to_bytes(mask))
        self.found[str(r)] = iteration
        artifacts.write_json(found_path, self.found)

      def _masks(self):
        kernels = ticket.get_kernels(self.model)
        ones = masks.ones_like(kernels)
        return {r: pruning.prune("magnitude", kernels, ones, run.targets(r))
                for r in self.detectors if str(r) not in self.found}

      def on_epoch_end(self, epoch, logs=None):
        ticket.apply_masks(self.model)
        for r, mask in self._masks().items():
          if self.detectors[r].update(mask):
            self._record(r, mask, logs["iteration"])

      def on_train_end(self, logs=None):
        ticket.apply_masks(self.model)
        for r, mask in self._masks().items():
          self._record(r, mask, cfg.iterations)

    return EarlyBirdRecorder()

  def stage(self, arm, trial, round_, rewinder):
    """Trains one (arm, trial, round) unless its metrics.json exists."""
    cfg, out_dir = self.cfg, stage_dir(self.out, arm, trial, round_)
    if artifacts.exists(f"{out_dir}/metrics.json"):
      return artifacts.read_json(f"{out_dir}/metrics.json")
    mask = self.mask(arm, trial, round_)
    pct = 100.0 * masks.fraction_remaining(mask)
    label = f"[{arm} trial {trial} round {round_}]"
    logging.info("%s %.2f%% of weights remaining", label, pct)
    init, init_seed = self.start(arm, trial, round_, rewinder, mask)
    self.trainer.reset_optimizer()
    checkpoint = (training.RoundCheckpoint(f"{out_dir}/checkpoint", self.model,
                                           self.trainer.optimizer)
                  if self.checkpoint_every else None)
    data_seed = derive_seed(cfg.seed, trial, round_, "data")
    table = data.batch_indices(len(self.splits.train_x), cfg.batch_size, cfg.iterations,
                               data_seed)
    callbacks = [rewinder, *self.callbacks]
    early_bird = cfg.pruning == "early_bird" and round_ == 0
    if early_bird:  # its detectors are not checkpointed: the dense round reruns whole
      callbacks.append(self.early_bird_callback(trial))
      checkpoint = None
    if self.logdir:
      callbacks.append(summaries.StageSummaries(
          summaries.stage_run(self.logdir, arm, trial, round_), cfg.iterations))
    with self.scope():
      result = training.train_round(
          self.trainer, self.train, table, self.val, self.test, cfg.eval_every,
          callbacks=callbacks, checkpoint=checkpoint,
          checkpoint_every=self.checkpoint_every, test_curve=cfg.test_curve, label=label)
      ticket.apply_masks(self.model)
      final = ticket.get_weights(self.model)
      artifacts.write_weights(f"{out_dir}/weights.npz", final)
      if self.exporter is not None:
        self.exporter.export(f"{out_dir}/ticket", init)
    row = dict(arm=arm, trial=trial, round=round_, weights_remaining=pct,
               early_stop_iteration=result.early_stop_iteration,
               early_stop_val_loss=result.early_stop_val_loss,
               early_stop_val_accuracy=result.early_stop_val_accuracy,
               early_stop_test_accuracy=result.early_stop_test_accuracy,
               final_test_accuracy=result.final_test_accuracy, diverged=result.diverged,
               search_iterations=self.search_iterations(trial, round_))
    metrics = dict(row, layer_weights_remaining=masks.layer_fractions(mask),
                   layer_counts=masks.counts(mask), seconds=result.seconds,
                   environment=environment.describe(),
                   seeds=dict(data=data_seed, init=init_seed,
                              mask=self.mask_seed(arm, trial, round_)),
                   curve=result.curve)
    artifacts.write_json(f"{out_dir}/metrics.json", metrics)
    if checkpoint is not None:
      checkpoint.clear()
    logging.info("%s early stop at iteration %d: val_loss %.4f, test accuracy %.4f "
                 "(final %.4f), %.1f s", label, result.early_stop_iteration,
                 result.early_stop_val_loss, result.early_stop_test_accuracy,
                 result.final_test_accuracy, result.seconds)
    self.write_results()
    return metrics

  def write_results(self):
    """results.csv and the TensorBoard summary run, from every finished stage's metrics.json."""
    return write_results(self.cfg, self.out, self.logdir)


class _StageRun(_Run):
  """A _Run in a worker: it trains stages; the driver alone writes results.csv and the summary
  (workers finishing together would otherwise rewrite them concurrently)."""

  def write_results(self):
    return None


def run_stage(cfg, output_dir, splits, stage, checkpoint_every=0, jit_compile=True,
              callbacks=(), export=False, logdir=None, run_=None, strategy=None):
  """Runs one (arm, trial, round) in this process, as a worker does; returns its metrics.

  The stages ``dependencies(cfg)[stage]`` must be finished (their files in ``output_dir``). A
  finished stage is not retrained; an interrupted one resumes from its checkpoint. results.csv
  is left to the caller (``write_results``). ``run_``: a _StageRun of the same arguments to
  reuse (its compiled model), e.g. by a worker running several stages. ``strategy``: a
  tf.distribute strategy to train on (None: the default, one device).
  """
  arm, trial, round_ = stage
  if stage not in dependencies(cfg):
    raise ValueError(f"{stage} is not a stage of this experiment")
  if cfg.rewind == "iteration" and (arm, round_) != ("ticket", 0):
    path = rewind_path(output_dir, trial, cfg.rewind_iteration)
    if not artifacts.exists(path):  # else this stage would capture θ_k itself, wrongly
      raise RuntimeError(f"{path} is missing: [ticket trial {trial} round 0] must finish "
                         f"before [{arm} trial {trial} round {round_}]")
  if run_ is None:
    run_ = _StageRun(cfg.validate(), output_dir, splits, checkpoint_every, jit_compile,
                     callbacks, export, logdir, strategy)
  with explained(cfg):
    return run_.stage(arm, trial, round_, run_.rewinder(trial))


def run(cfg, output_dir, splits, checkpoint_every=0, jit_compile=True, callbacks=(),
        on_divergence="continue", export=False, logdir=None, strategy=None):
  """Runs (or resumes) every stage of ``cfg`` into ``output_dir``; returns results.csv rows.

  ``callbacks`` are extra Keras callbacks given to every stage's training. ``export`` writes
  each stage's ticket as a SavedModel; ``logdir`` enables TensorBoard runs. A stage whose loss
  becomes NaN/inf is recorded as diverged; then ``on_divergence="stop"`` raises DivergedError,
  and "continue" goes on, except that a diverged ticket ends its trial (later rounds would be
  pruned from NaN weights). ``strategy``: a tf.distribute strategy to train every stage on
  (None: the default, one device; see lth_tf.distribute); --batch_size is the global batch.
  """
  if on_divergence not in ("continue", "stop"):
    raise ConfigError(f"--on_divergence={on_divergence} is invalid; use continue or stop")
  run_ = _Run(cfg.validate(), output_dir, splits, checkpoint_every, jit_compile, callbacks,
              export, logdir, strategy)
  order = stage_order(cfg)  # a topological order of dependencies(cfg), trial by trial
  progress = console.StageProgress(len(order), "local")
  with explained(cfg):  # a corrupt file's message names what to delete
    for trial in range(cfg.trials):
      rewinder = run_.rewinder(trial)
      stages = [s for s in order if s[1] == trial]
      for i, (arm, _, r) in enumerate(stages):
        trained = not artifacts.exists(f"{stage_dir(output_dir, arm, trial, r)}/metrics.json")
        metrics = run_.stage(arm, trial, r, rewinder)
        progress.finished(trained, metrics.get("seconds", 0.0))
        progress.line()
        if metrics["diverged"] and on_divergence == "stop":
          raise DivergedError(
              f"[{arm} trial {trial} round {r}] diverged (NaN/inf loss), recorded in "
              f"{output_dir}/results.csv; lower --learning_rate, or pass "
              f"--on_divergence=continue to go on")
        if metrics["diverged"] and arm == "ticket":
          logging.warning("trial %d ends at round %d: its ticket diverged", trial, r)
          progress.total -= len(stages) - i - 1
          break
  return run_.write_results()
