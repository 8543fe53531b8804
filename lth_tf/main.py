"""Command line: absl flags -> an experiment Config -> experiment.run.

Usage:
  python -m lth_tf.main --model=conv2 --rounds=10
  python -m lth_tf.main --flagfile=flags/smoke.cfg

Every flag is checked before TensorFlow is imported (lth_tf.config knows the networks' sizes
without building them): a bad command costs a fraction of a second, prints one line naming the
flag and the fix, exits with code 2 and writes nothing.
"""
import math
import os
import sys

from absl import app, flags, logging

import lth_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from lth_tf import architectures, config, console, data  # no TensorFlow in these

FLAGS = flags.FLAGS
# Names are plain strings checked by Config.validate, so a typo gets our one-line error.
flags.DEFINE_string("model", None, f"Network to prune: {', '.join(architectures.ARCHITECTURES)}.")
flags.DEFINE_string("dataset", None, f"Dataset: {', '.join(data.SHAPES)} (default: the "
                    "model's paper dataset: mnist for lenet300_100, cifar10 for the others).")
flags.DEFINE_integer("rounds", config.DEFAULTS["rounds"], "Pruning rounds after the dense "
                     "round 0; --rounds=10 trains 11 networks per arm and trial.")
flags.DEFINE_integer("iterations", None, "Training iterations per round (default: the paper's).")
flags.DEFINE_integer("batch_size", None, "Batch size (default: the paper's: 60; 128 for "
                     "vgg19/resnet20).")
flags.DEFINE_float("learning_rate", None, "Learning rate (default: the paper's), the peak of "
                   "the schedule set by --warmup_iterations and --lr_drops.")
flags.DEFINE_string("optimizer", None, "adam or sgd (with --momentum) (default: the paper's: "
                    "adam for lenet300_100 and conv2/4/6, sgd for vgg19 and resnet20).")
flags.DEFINE_float("momentum", 0.9, "--optimizer=sgd: heavy-ball momentum (PyTorch's form).")
flags.DEFINE_integer("warmup_iterations", None, "Learning rate rises linearly from 0 over this "
                     "many iterations of each round (default: the paper's: 10000 for vgg19, "
                     "else 0).")
flags.DEFINE_list("lr_drops", None, "Iterations of each round at which the learning rate is "
                  "multiplied by --lr_drop_factor (default: the paper's: 32000,48000 for vgg19 "
                  "and resnet20, else none).")
flags.DEFINE_float("lr_drop_factor", 0.1, "Factor applied at each of --lr_drops.")
flags.DEFINE_float("weight_decay", None, "L2 weight decay on conv and dense kernels, added to "
                   "their gradients as weight_decay·W (default: the paper's: 1e-4 for vgg19 "
                   "and resnet20, else 0).")
flags.DEFINE_integer("eval_every", config.DEFAULTS["eval_every"], "Evaluate the validation "
                     "set every this many iterations.")
flags.DEFINE_float("prune_rate_conv", None, "Fraction of surviving conv weights pruned per round.")
flags.DEFINE_float("prune_rate_fc", None, "Fraction of surviving fc weights pruned per round.")
flags.DEFINE_float("prune_rate_output", None, "Output layer rate (default: half the fc rate; "
                   "0 for vgg19/resnet20).")
flags.DEFINE_list("controls", ["reinit"], "Control arms, comma list of: "
                  f"{', '.join(config.CONTROLS)}; empty for tickets only.")
flags.DEFINE_integer("trials", 1, "Independent repetitions, each with its own θ0.")
flags.DEFINE_bool("same_init", False, "Every trial starts from the same θ0 (trial 0's); only "
                  "the data order differs between trials.")
flags.DEFINE_integer("seed", 0, "Base seed; every trial, arm and round derives its own from it.")
flags.DEFINE_string("initializer", None, f"Kernel initializer: {', '.join(architectures.INITIALIZERS)} "
                    "(default: the paper's: glorot_normal; he_normal for vgg19/resnet20).")
flags.DEFINE_float("init_scale", 0.05, "Standard deviation for --initializer=truncated_normal.")
flags.DEFINE_string("pruning", None, "How masks are found: layerwise (IMP, the paper: "
                    "each layer at its own rate; 'imp' is the same), global (IMP with one "
                    "threshold at --prune_rate), snip, grasp, synflow (at θ0), early_bird; "
                    "or one training per round from θ0 at round r's sparsity (--distribution, "
                    "default erk): static (a fixed random mask), set, rigl (dynamic sparse "
                    "training) (default: the paper's: layerwise; global for vgg19/resnet20).")
flags.DEFINE_string("structure", "", "N:M (e.g. 2:4): the ticket keeps at most N of every M "
                    "consecutive weights along each kernel's input axis (TF-MOT's "
                    "sparsity_m_by_n layout), pruned once from the dense round (--rounds=1, "
                    "--pruning=layerwise); unit: whole Dense units and conv filters, ranked by "
                    "the L2 norm of their trained incoming weights, at the per-kind rates per "
                    "round (plain models). random_prune then draws random masks of the same "
                    "structure. Default: none (any weights).")
flags.DEFINE_integer("dst_interval", 100, "set/rigl: iterations between mask updates (a "
                     "multiple of --eval_every).")
flags.DEFINE_float("dst_fraction", 0.3, "set/rigl: fraction of each layer's active weights "
                   "dropped and regrown at an update (rigl: at the start, decaying).")
flags.DEFINE_float("dst_end", 0.75, "rigl: fraction of the training after which the mask "
                   "stops moving (the cosine decay reaches 0).")
flags.DEFINE_integer("score_batches", 1, "snip/grasp: batches scored at θ0.")
flags.DEFINE_integer("synflow_iterations", 100, "synflow: pruning iterations per mask.")
flags.DEFINE_float("eb_epsilon", 0.1, "early_bird: mask distance below which it has settled.")
flags.DEFINE_integer("eb_window", 5, "early_bird: consecutive evaluations that must agree.")
flags.DEFINE_string("eb_distance", "jaccard", "early_bird: the mask "
                  "distance --eb_epsilon bounds: jaccard (1 - IoU of the kept weights; means the "
                  "same at any sparsity) or hamming (fraction of all weights that differ, You et "
                  "al.'s; vacuous below ~5% kept).")
flags.DEFINE_bool("compact_training", False, "--structure=unit: train every stage after the "
                  "dense round on the compact network (its removed units gone) instead of the "
                  "masked full-size one: the same function from the same start, faster as units "
                  "go; weights, masks and tickets are recorded at full size as always.")
flags.DEFINE_float("prune_rate", None, "Global pruning's per-round rate, and with "
                   "--distribution the overall one (default: --prune_rate_fc).")
flags.DEFINE_string("distribution", "", "Split round r's overall density (1 - --prune_rate)^r "
                    f"across all prunable layers, the output layer included: "
                    f"{', '.join(config.DISTRIBUTIONS)} (default: none, each layer at its "
                    "kind's rate as in the paper).")
flags.DEFINE_bool("global_output_layer", False, "Global pruning: pool the output layer too "
                  "(default: it keeps its own --prune_rate_output).")
flags.DEFINE_bool("one_shot", False, "Prune round r straight from the dense network to round "
                  "r's sparsity, instead of iteratively from round r-1.")
flags.DEFINE_string("rewind", "init", "What survivors are reset to: init (θ0, the paper), "
                    "iteration (θ at --rewind_iteration of the dense round), none (fine-tune).")
flags.DEFINE_integer("rewind_iteration", 0, "Late resetting point k for --rewind=iteration.")
flags.DEFINE_bool("test_curve", False, "Also evaluate the test set at every evaluation.")
flags.DEFINE_string("output_dir", None, "Experiment folder (default: results/<model>_<dataset>).")
flags.DEFINE_bool("overwrite", False, "Delete an existing experiment in --output_dir that was "
                  "run with different flags, instead of refusing.")
flags.DEFINE_string("data_dir", None, "TFDS data dir (default: TFDS's, ~/tensorflow_datasets).")
flags.DEFINE_string("manual_dir", None, "Folder holding the dataset's original archives, for "
                    "preparing it offline (here: ../shared/datasets/fashion_mnist).")
flags.DEFINE_bool("export", True, "Export every stage's trained ticket as a SavedModel in "
                  "<output_dir>/<arm>/trial_<t>/round_<r>/ticket.")
flags.DEFINE_string("logdir", None, "TensorBoard dir (default: <output_dir>/tensorboard; "
                    "empty: no TensorBoard logs).")
flags.DEFINE_integer("checkpoint_every", 1000, "Checkpoint a round every this many iterations "
                     "(a multiple of --eval_every; 0: never).")
flags.DEFINE_integer("threads", 0, "TensorFlow intra-op threads (0: all cores). Part of the "
                     "experiment: results are bit-identical only at the same count.")
flags.DEFINE_enum("on_divergence", "continue", ["continue", "stop"], "When a loss becomes "
                  "NaN/inf: record the stage as diverged and go on, or stop with an error.")
flags.DEFINE_bool("deterministic", True, "Enable TensorFlow op determinism.")
flags.DEFINE_bool("xla", None, "Compile training and evaluation with XLA (jit_compile); "
                  "default: on for lenet300_100, off for the convolutional models (XLA "
                  "compiles CPU convolutions slowly); always off with a --strategy other "
                  "than default.")
flags.DEFINE_string("strategy", "default", "One training across devices (tf.distribute): "
                    "default (one device), mirrored (this machine's GPUs, or the "
                    "--cpu_devices logical CPUs), multi_worker_mirrored (the workers in "
                    "TF_CONFIG). --batch_size stays the global batch.")
flags.DEFINE_integer("cpu_devices", 0, "Split the CPU into this many logical devices (0: one), "
                     "e.g. to run --strategy=mirrored without GPUs.")
flags.DEFINE_enum("executor", "local", ["local", "ray"], "Where stages run: local (one after "
                  "another in this process) or ray (on Ray workers, in parallel where their "
                  "dependencies allow; pip install 'lth-tf[ray]'). Results are identical.")
flags.DEFINE_string("ray_address", None, "--executor=ray: the cluster to join ('auto', or "
                    "host:port); default: start a local Ray with all cores.")
flags.DEFINE_integer("ray_cpus_per_task", None, "--executor=ray: CPUs each stage reserves "
                     "(default: --threads).")
flags.DEFINE_float("ray_gpus_per_task", 0, "--executor=ray: GPUs each stage reserves.")

RESULT_FLAGS = config.RESULT_FLAGS  # what flags.cfg records (lth_tf.config.FlagsFile)


class UserError(Exception):
  """Reported as one line, exit code 2."""


def flag_values():
  """The RESULT_FLAGS as given ({name: value}, None where the default depends on the model):
  what config.resolve takes."""
  if FLAGS.model is None:
    raise UserError(f"--model is required; pass one of {', '.join(architectures.ARCHITECTURES)}"
                    f" (or --flagfile=flags/smoke.cfg for a two-minute example)")
  return {name: FLAGS[name].value for name in RESULT_FLAGS}


def flags_file(output_dir=None):
  """The checked config.FlagsFile the command line names (its flags.cfg), --output_dir
  defaulting to results/<model>_<dataset>. ConfigError or UserError for a bad flag."""
  cfg, runtime = config.resolve(flag_values())
  return config.FlagsFile(cfg, runtime, output_dir or FLAGS.output_dir
                          or f"results/{cfg.model}_{cfg.dataset}", FLAGS.data_dir,
                          FLAGS.manual_dir, FLAGS.checkpoint_every)


def check_output_dir(recorded, overwrite=None):
  """Refuses (or with --overwrite, clears) an output dir holding a different experiment than
  ``recorded`` (a config.FlagsFile), then writes ``recorded``'s flags.cfg there. An older
  flags.cfg is read as a rerun of its command would resolve it (FlagsFile.parse).
  ``overwrite``: default --overwrite."""
  from lth_tf import artifacts
  import tensorflow as tf

  if overwrite is None:
    overwrite = FLAGS.overwrite
  output_dir = recorded.output_dir
  path = f"{output_dir}/flags.cfg"
  if artifacts.exists(path):
    try:
      differ = artifacts.read_flags_file(output_dir).differences(recorded)
      shown = ", ".join(f"--{k}={old} (now {new})" for k, old, new in differ)
    except artifacts.CorruptFileError as e:  # not lth_tf's, or settings this one refuses
      differ, shown = True, f"a flags.cfg this version cannot resume ({e.problem})"
    if differ and not overwrite:
      raise UserError(f"--output_dir={output_dir} holds an experiment with different flags: "
                      f"{shown}; use another --output_dir, or --overwrite to delete it")
    if differ:
      logging.warning("--overwrite: deleting the experiment in %s", output_dir)
      tf.io.gfile.rmtree(output_dir)
  try:
    artifacts.write_bytes(path, recorded.text())
  except Exception as e:
    raise not_writable(output_dir, e) from e


def not_writable(output_dir, e):
  """The UserError for an --output_dir that cannot be written (OSError, or TF's for a URL)."""
  first = str(e).splitlines()[0][:150] if str(e) else ""
  return UserError(f"--output_dir={output_dir} is not writable ({type(e).__name__}: {first}); "
                   f"pass a writable --output_dir")


def check_runtime(runtime, eval_every):
  """The flags that decide how, not what, is computed, beyond config.Runtime's own checks;
  before TensorFlow starts."""
  if FLAGS.checkpoint_every < 0 or FLAGS.checkpoint_every % eval_every:
    raise UserError(f"--checkpoint_every={FLAGS.checkpoint_every} must be 0 or a multiple of "
                    f"--eval_every={eval_every}")
  if runtime.strategy != "default" and FLAGS["xla"].present and FLAGS.xla:
    logging.warning("--strategy=%s trains without XLA (TF-MOT's wrappers merge_call in the "
                    "forward pass); recording --xla=False", runtime.strategy)
  if runtime.strategy == "multi_worker_mirrored" and FLAGS.executor == "ray":
    raise UserError("--strategy=multi_worker_mirrored runs one training on the TF_CONFIG "
                    "workers; it does not combine with --executor=ray (use --strategy=mirrored "
                    "with --ray_gpus_per_task, or --executor=local on every worker)")


def check_executor(runtime):
  """The --executor and --ray_* flags; returns Ray's per-task (CPUs, GPUs), None for local."""
  if FLAGS.executor != "ray":
    return None
  cpus = runtime.threads if FLAGS.ray_cpus_per_task is None else FLAGS.ray_cpus_per_task
  gpus = FLAGS.ray_gpus_per_task
  if not 1 <= cpus <= config.MAX_THREADS or not 0 <= gpus < math.inf:
    raise UserError(f"--ray_cpus_per_task={cpus} must be 1 to {config.MAX_THREADS} and "
                    f"--ray_gpus_per_task={gpus} 0 or more")
  try:
    import ray  # noqa: F401
  except ImportError:
    raise UserError("--executor=ray needs Ray: pip install 'lth-tf[ray]'") from None
  return cpus, gpus


def check_writable(output_dir):
  """Refuses an --output_dir that could not be created or written, without writing: its
  nearest existing folder must be a writable folder (a URL such as gs:// is left to TF)."""
  if "://" in output_dir:
    return
  path = os.path.abspath(output_dir)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
    raise UserError(f"--output_dir={output_dir} is not writable ({path} is not a writable "
                    f"folder); pass a writable --output_dir")


def check_flags():
  """Every flag, before TensorFlow is imported: (config.FlagsFile, Ray resources)."""
  recorded = flags_file()
  cfg = recorded.config
  check_runtime(recorded.runtime, cfg.eval_every)
  check_writable(recorded.output_dir)
  if FLAGS.manual_dir is not None and not os.path.isdir(FLAGS.manual_dir):
    raise UserError(f"--manual_dir={FLAGS.manual_dir} is not a folder; pass the folder holding "
                    f"the {cfg.dataset} archives")
  ray_resources = check_executor(recorded.runtime)
  late = [d for d in cfg.lr_drops if d >= cfg.iterations]
  if late:
    logging.warning("--lr_drops=%s: the drops at %s come at or after --iterations=%d and "
                    "never happen", ",".join(map(str, cfg.lr_drops)),
                    ",".join(map(str, late)), cfg.iterations)
  if cfg.warmup_iterations > cfg.iterations:
    logging.warning("--warmup_iterations=%d exceeds --iterations=%d: the learning rate never "
                    "reaches --learning_rate", cfg.warmup_iterations, cfg.iterations)
  return recorded, ray_resources


def warn_if_environment_differs(cfg, output_dir):
  """Resuming on other libraries or another CPU: its stages will differ in the last bits from
  a rerun of the ones already there (lth_tf.environment), so say so."""
  from lth_tf import artifacts, environment, layout
  for arm, trial, round_ in cfg.stages():
    path = f"{layout.stage_dir(output_dir, arm, trial, round_)}/metrics.json"
    if artifacts.exists(path):
      recorded = artifacts.read_json(path).get("environment")
      changed = environment.differences(recorded, environment.describe()) if recorded else []
      if changed:
        logging.warning("%s: finished stages ran on another environment (%s); new stages will "
                        "not match a rerun of those to the last bit", output_dir,
                        "; ".join(changed))
      return changed


def fail(message):
  """Our one-line error and exit code 2: bad input, never a crash."""
  print(f"lth_tf: error: {message}", file=sys.stderr)
  sys.exit(2)


def launch(recorded, *, export=True, logdir=None, on_divergence="continue", overwrite=False,
           ray_resources=None, ray_address=None, calm=False, plots=True):
  """Runs (or resumes) the checked experiment ``recorded`` (a config.FlagsFile: the Config,
  its Runtime, the folder and the data's location): TensorFlow set up, the data checked, the
  folder locked and checked against its flags.cfg (then written), every stage run here or on
  Ray (``ray_resources``: (CPUs, GPUs) per task), the figures drawn. Returns the results.csv
  rows. The command line and lth_tf.run both end here, after checking their input."""
  cfg, runtime, output_dir = recorded.config, recorded.runtime, recorded.output_dir
  data_dir, manual_dir = recorded.data_dir, recorded.manual_dir
  dense = cfg.dense_under_structure()
  if dense:
    logging.warning("--structure=%s: %s stay%s dense (input axis not a multiple of %d)",
                    cfg.structure, ", ".join(dense), "s" if len(dense) == 1 else "",
                    cfg.n_of_m()[1])
  with console.quiet_native_stderr(calm):  # TensorFlow's C++ start-up lines
    import tensorflow as tf
    tf.config.list_physical_devices()  # looks for GPUs (and says so), configures nothing
    from lth_tf import distribute, executor, experiment, lock
  try:
    strategy = experiment.setup_tensorflow(runtime.threads, cfg.seed, runtime.deterministic,
                                           runtime.cpu_devices, runtime.strategy)
  except RuntimeError as e:  # a thread count, once TensorFlow runs (a notebook's second run)
    now = tf.config.threading.get_intra_op_parallelism_threads()
    raise config.ConfigError(
        f"threads={runtime.threads}: TensorFlow already runs in this process with "
        f"{now or 'its default number of'} intra-op threads, which can be set only before it "
        f"starts ({e}); pass threads={now or 'None'}, or restart the process") from e
  experiment.check_strategy(cfg, strategy)
  task_type, task_id, chief = distribute.task(strategy)
  if task_type is not None:
    logging.info("multi-worker: this is %s %d%s; every worker writes its own --output_dir",
                 task_type, task_id, " (the chief)" if chief else "")
  data.check_available(cfg.dataset, data_dir, manual_dir)  # before any write
  # One driver per folder. Taken before check_output_dir, whose --overwrite deletes the
  # folder: a second driver must not delete a running experiment.
  driver_lock = lock.DriverLock(output_dir)
  try:
    driver_lock.acquire()
  except lock.LockHeld:
    raise
  except Exception as e:  # OSError, or TensorFlow's for a URL
    raise not_writable(output_dir, e) from e
  with driver_lock:
    check_output_dir(recorded, overwrite=overwrite)
    driver_lock.ensure()  # --overwrite deleted the folder with the lock in it
    logging.info("experiment %s -> %s (%s executor)", cfg, output_dir,
                 "local" if ray_resources is None else "ray")
    warn_if_environment_differs(cfg, output_dir)
    logging.info("data: %s, prepared once in %s", cfg.dataset,
                 data_dir or "~/tensorflow_datasets (TFDS's default; --data_dir moves it)")
    job = executor.Job(cfg, output_dir, data_dir=data_dir, manual_dir=manual_dir,
                       checkpoint_every=recorded.checkpoint_every or 0, export=export,
                       logdir=logdir, runtime=runtime)
    if ray_resources is None:
      splits = executor.load_splits(cfg, data_dir, manual_dir)
      rows = executor.run_local(job, splits, on_divergence=on_divergence)
    else:
      executor.prepare_data(cfg, data_dir, manual_dir)
      rows = executor.run_ray(job, ray_address, *ray_resources, on_divergence=on_divergence)
    if plots:
      from lth_tf import plot
      figures = plot.plot_experiment(output_dir)
      logging.info("wrote %d figures: %s", len(figures), ", ".join(figures))
  return rows


def errors():
  """What a command reports as its one-line error (exit code 2): bad input, a corrupt or
  locked folder, missing data, a diverged or failed run; never a crash."""
  from lth_tf import artifacts, executor, experiment, lock
  return (UserError, config.ConfigError, experiment.DivergedError, artifacts.CorruptFileError,
          data.DatasetUnavailableError, lock.LockHeld, executor.ExecutorError)


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments {' '.join(argv[1:])!r}; every setting is a --flag=value")
  calmed = console.calm(logging.get_verbosity())
  try:
    recorded, ray_resources = check_flags()
  except (UserError, config.ConfigError) as e:
    fail(e)
  cfg, output_dir = recorded.config, recorded.output_dir
  try:
    rows = launch(recorded, export=FLAGS.export,
                  logdir=(f"{output_dir}/tensorboard" if FLAGS.logdir is None
                          else FLAGS.logdir or None),
                  on_divergence=FLAGS.on_divergence, overwrite=FLAGS.overwrite,
                  ray_resources=ray_resources, ray_address=FLAGS.ray_address, calm=calmed)
  except errors() as e:
    fail(e)
  from lth_tf import report
  logging.info("done: %d rows in %s/results.csv; by round (python -m lth_tf.report "
               "--output_dir=%s prints it again):\n%s", len(rows), output_dir, output_dir,
               report.table(rows, cfg.trials))


def parse_flags(argv):
  """absl's parsing, with its errors (an unknown flag, a value of the wrong type, an unreadable
  --flagfile) as one line and exit code 2 like ours, and an experiment's flags.cfg reused as a
  --flagfile refused if it names another --flagfile: lth_tf never writes one, so the file was
  edited, and absl would follow it wherever it points."""
  for i, arg in enumerate(argv[1:], start=1):
    path = None
    if arg.lstrip("-").startswith("flagfile="):
      path = arg.split("=", 1)[1]
    elif arg.lstrip("-") == "flagfile" and i + 1 < len(argv):
      path = argv[i + 1]
    if path and os.path.basename(path) == "flags.cfg" and os.path.isfile(path):
      try:
        with open(path, encoding="utf-8", errors="replace") as f:
          nested = [line.strip() for line in f if line.strip().lstrip("-").startswith("flagfile")]
      except OSError:
        nested = []  # absl reports it below
      if nested:
        fail(f"--flagfile={path} is an experiment's flags.cfg that names another flagfile "
             f"({nested[0][:100]}); lth_tf never writes one: remove that line, or pass the "
             f"flags themselves")
  try:
    return FLAGS(argv)
  except flags.Error as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    fail(f"{first.removeprefix('ERROR:: ')}; see python -m lth_tf.main --helpfull")


def run():
  """Console-script entry point (``lth-tf``)."""
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
