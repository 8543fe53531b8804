"""The lottery-ticket experiment: θ0 once per trial, then per round "prune, rewind, train"
for the ticket and each control, every stage skipped when its output already exists.

Resuming is the same loop run again: finished stages are skipped (their metrics.json exists),
an interrupted stage resumes from its checkpoint. Every seed derives from (seed, trial, arm,
round), never from execution order (lth_tf.layout holds the recipes and the output layout).

The loop knows no pruning method and no arm by name: how the ticket's mask is found is a
plug-in of lth_tf/methods, what each arm trains is a plug-in of lth_tf/arms, and both are
reached through their small protocols (methods/base.py, arms/base.py).
"""
import contextlib
import dataclasses

from absl import logging

from lth_tf import (artifacts, compact_training, console, data, distribute, environment,
                    layout, masks, models, summaries, ticket, training)
from lth_tf import export as export_lib
from lth_tf.arms import registry as arm_registry
from lth_tf.config import ConfigError
from lth_tf.fixes import explained
from lth_tf.layout import rewind_path, stage_dir, theta0_path, theta0_seed
from lth_tf.methods import registry as method_registry
from lth_tf.network import initial_weights, make_trainer, round_targets
from lth_tf.stage_graph import dependencies, stage_order


class DivergedError(RuntimeError):
  """A stage's loss became NaN/inf and --on_divergence=stop; the stage is recorded."""


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
  if cfg.compact_training and strategy is not None:
    raise ConfigError("--compact_training trains on one device; drop --strategy")
  replicas = 1 if strategy is None else strategy.num_replicas_in_sync
  if cfg.batch_size % replicas:
    raise ConfigError(f"--batch_size={cfg.batch_size} (the global batch) does not split over "
                      f"the {replicas} replicas of the strategy; pass a multiple of {replicas}")

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
  """results.csv and the TensorBoard summary run, from every finished stage's metrics.json
  (at the end of a run; stages in between append_result)."""
  with explained(cfg):
    rows = collect_rows(cfg, output_dir)
  artifacts.write_results(f"{output_dir}/results.csv", rows)
  if logdir:
    summaries.write_summary(logdir, rows, dataclasses.asdict(cfg))
  return rows


def sync_results(cfg, output_dir):
  """Makes results.csv hold every finished stage (from their metrics.json) before a run
  appends to it; a file that does already is left untouched."""
  text = artifacts.results_text(collect_rows(cfg, output_dir))
  path = f"{output_dir}/results.csv"
  if not artifacts.exists(path) or artifacts.read_bytes(path).decode(errors="replace") != text:
    artifacts.write_bytes(path, text)


def append_result(cfg, output_dir, row, logdir=None):
  """Adds one finished stage's ``row`` to results.csv (and the summary run), in the order
  write_results writes: one small file read and rewritten per stage, where rereading every
  stage's metrics.json would grow with the square of the stages."""
  path = f"{output_dir}/results.csv"
  stage = (row["arm"], row["trial"], row["round"])
  rows = [r for r in (artifacts.read_results(path) if artifacts.exists(path) else [])
          if (r["arm"], r["trial"], r["round"]) != stage] + [
              {c: row[c] for c in artifacts.RESULT_COLUMNS}]
  arms = ("ticket",) + tuple(cfg.controls)
  rows.sort(key=lambda r: (arms.index(r["arm"]) if r["arm"] in arms else len(arms),
                           r["trial"], r["round"]))
  artifacts.write_results(path, rows)
  if logdir:
    summaries.write_summary(logdir, rows, dataclasses.asdict(cfg))
  return rows


def after_stage(stage, row):
  """The divergence policy, the same for the local loop and Ray: whether the rest of the
  stage's trial is dropped, which a diverged ticket does (its later rounds would be pruned
  from NaN weights). With --on_divergence=stop, the caller also raises diverged_error."""
  if row["diverged"] and stage[0] == "ticket":
    logging.warning("trial %d ends at round %d: its ticket diverged", stage[1], stage[2])
    return True
  return False


def diverged_error(stage, output_dir):
  """The error --on_divergence=stop ends a run with."""
  arm, trial, round_ = stage
  return DivergedError(f"[{arm} trial {trial} round {round_}] diverged (NaN/inf loss), recorded "
                       f"in {output_dir}/results.csv; lower --learning_rate, or pass "
                       f"--on_divergence=continue to go on")

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
    self._rewinder = None  # the current stage's (start sets it)
    with self.scope():
      self.model = ticket.wrap(models.build(cfg.model, self.shape, init=cfg.initializer))
      self.trainer = make_trainer(cfg, self.model, jit_compile, strategy)
    self.compact = (compact_training.CompactTraining(
        cfg, self.shape, lambda m: make_trainer(cfg, m, jit_compile)) if cfg.compact_training
        else None)
    # Its own variables (mask, θ0⊙mask) are plain: written from numpy, read only to save.
    self.exporter = export_lib.TicketExporter(self.model) if export else None
    self.train = training.Split.of(splits.train_x, splits.train_y)
    self.val = training.Split.of(splits.val_x, splits.val_y)
    self.test = training.Split.of(splits.test_x, splits.test_y)
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
    self._rewinder = rewinder  # rewind_weights: θ0, or θ_k captured in the dense round
    init, seed = arm_registry.get(arm).start_weights(self, trial, round_, mask)
    with self.scope():
      ticket.set_masks(self.model, mask)
      ticket.set_weights(self.model, init)
    return init, seed

  def rewind_weights(self, trial):
    """What a ticket is rewound to in ``trial``: θ0, or θ_k with --rewind=iteration."""
    del trial  # the current stage's rewinder is its trial's
    if self._rewinder.weights is None:
      raise RuntimeError("no rewind weights saved yet: train the dense round first")
    return self._rewinder.weights

  def trained(self, arm, trial, round_):
    """The trained (masked) weights of a finished stage, checked against the model."""
    return artifacts.read_weights(f"{stage_dir(self.out, arm, trial, round_)}/weights.npz",
                                  self.weight_shapes)

  def ones(self):
    """The dense mask: every weight kept."""
    return masks.ones_like(ticket.get_kernels(self.model))

  def theta0(self, trial):
    """θ0 of ``trial``: loaded if saved, else drawn and saved before anything trains."""
    path = theta0_path(self.out, trial)
    if artifacts.exists(path):
      return artifacts.read_weights(path, self.weight_shapes)
    weights = self.fresh_weights(theta0_seed(self.cfg, trial))
    artifacts.write_weights(path, weights)
    return weights

  def mask(self, arm, trial, round_):
    """The mask ``arm`` trains with at ``round_`` (the arm finds it), written to its stage dir
    once; the dense network at round 0."""
    path = f"{stage_dir(self.out, arm, trial, round_)}/masks.npz"
    if artifacts.exists(path):
      return artifacts.read_mask(path, self.mask_shapes)
    mask = self.ones() if round_ == 0 else arm_registry.get(arm).mask(self, trial, round_)
    artifacts.write_bytes(path, masks.to_bytes(mask))
    return mask

  def search_iterations(self, trial, round_):
    """Training iterations spent finding the round's mask (the method says how many)."""
    if round_ == 0:
      return 0
    return method_registry.get(self.cfg.pruning).search_iterations(self, trial, round_)

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
    # The dense round has nothing to compact; later ones train the compact network if asked.
    compacted = self.compact is not None and round_ > 0
    trainer = self.compact.prepare(self.model) if compacted else self.trainer
    trainer.reset_optimizer()
    checkpoint = (training.RoundCheckpoint(f"{out_dir}/checkpoint", trainer.model,
                                           trainer.optimizer)
                  if self.checkpoint_every else None)
    data_seed = layout.data_seed(cfg, trial, round_)
    table = data.batch_indices(len(self.splits.train_x), cfg.batch_size, cfg.iterations,
                               data_seed)
    callbacks = [rewinder, *self.callbacks]
    method = method_registry.get(cfg.pruning)
    hook = (method.dense_round_callback(self, trial) if round_ == 0
            else method.training_callback(self, arm, trial, round_))
    if hook is not None:  # the method's state is not checkpointed: the stage reruns whole
      callbacks.append(hook)
      checkpoint = None
    if self.logdir:
      callbacks.append(summaries.StageSummaries(
          summaries.stage_run(self.logdir, arm, trial, round_), cfg.iterations, mask))
    with self.scope():
      result = training.train_round(
          trainer, self.train, table, self.val, self.test, cfg.eval_every,
          callbacks=callbacks, checkpoint=checkpoint,
          checkpoint_every=self.checkpoint_every, test_curve=cfg.test_curve, label=label)
      if compacted:
        self.compact.write_back(self.model)
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
    metrics = dict(row, **(hook.metrics() if hasattr(hook, "metrics") else {}),
                   layer_weights_remaining=masks.layer_fractions(mask),
                   layer_counts=masks.counts(mask), seconds=result.seconds,
                   environment=environment.describe(),
                   seeds=dict(data=data_seed, init=init_seed,
                              mask=arm_registry.get(arm).mask_seed(cfg, trial, round_)),
                   curve=result.curve)
    artifacts.write_json(f"{out_dir}/metrics.json", metrics)
    if checkpoint is not None:
      checkpoint.clear()
    logging.info("%s early stop at iteration %d: val_loss %.4f, test accuracy %.4f "
                 "(final %.4f), %.1f s", label, result.early_stop_iteration,
                 result.early_stop_val_loss, result.early_stop_test_accuracy,
                 result.final_test_accuracy, result.seconds)
    self.record(metrics)
    return metrics

  def record(self, metrics):
    """Appends a finished stage's row to results.csv and the summary run."""
    append_result(self.cfg, self.out, metrics, self.logdir)


class _StageRun(_Run):
  """A _Run in a worker: it trains stages; the driver alone writes results.csv and the summary
  (workers finishing together would otherwise rewrite them concurrently)."""

  def record(self, metrics):
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
    run_ = _StageRun(cfg, output_dir, splits, checkpoint_every, jit_compile,
                     callbacks, export, logdir, strategy)
  with explained(cfg):
    return run_.stage(arm, trial, round_, run_.rewinder(trial))


def run(cfg, output_dir, splits, checkpoint_every=0, jit_compile=True, callbacks=(),
        on_divergence="continue", export=False, logdir=None, strategy=None):
  """Runs (or resumes) every stage of ``cfg`` into ``output_dir``; returns results.csv rows.

  ``callbacks`` are extra Keras callbacks given to every stage's training (with
  --compact_training, their model from round 1 is the compact network: no masks, compact
  shapes). ``export`` writes
  each stage's ticket as a SavedModel; ``logdir`` enables TensorBoard runs. A stage whose loss
  becomes NaN/inf is recorded as diverged; then ``on_divergence="stop"`` raises DivergedError,
  and "continue" goes on, except that a diverged ticket ends its trial (later rounds would be
  pruned from NaN weights). ``strategy``: a tf.distribute strategy to train every stage on
  (None: the default, one device; see lth_tf.distribute); --batch_size is the global batch.
  """
  if on_divergence not in ("continue", "stop"):
    raise ConfigError(f"--on_divergence={on_divergence} is invalid; use continue or stop")
  run_ = _Run(cfg, output_dir, splits, checkpoint_every, jit_compile, callbacks,
              export, logdir, strategy)
  order = stage_order(cfg)  # a topological order of dependencies(cfg), trial by trial
  progress = console.StageProgress(len(order), "local")
  with explained(cfg):  # a corrupt file's message names what to delete
    sync_results(cfg, output_dir)  # every stage already finished, then appended to
    for trial in range(cfg.trials):
      rewinder = run_.rewinder(trial)
      stages = [s for s in order if s[1] == trial]
      for i, (arm, _, r) in enumerate(stages):
        trained = not artifacts.exists(f"{stage_dir(output_dir, arm, trial, r)}/metrics.json")
        metrics = run_.stage(arm, trial, r, rewinder)
        progress.finished(trained, metrics.get("seconds", 0.0))
        if trained or progress.done == progress.total:  # not a line per stage found finished
          progress.line()
        if metrics["diverged"] and on_divergence == "stop":
          raise diverged_error((arm, trial, r), output_dir)
        if after_stage((arm, trial, r), metrics):
          progress.total -= len(stages) - i - 1
          break
    return write_results(cfg, output_dir, logdir)
