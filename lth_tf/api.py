"""The Python API, for notebooks and scripts: ``lth_tf.Config``, ``lth_tf.run``, ``lth_tf.load``.

  import lth_tf
  cfg = lth_tf.Config("lenet300_100", dataset="fashion_mnist", rounds=2, iterations=1000)
  rows = lth_tf.run(cfg, "results/lenet_fm", manual_dir="../shared/datasets/fashion_mnist")
  exp = lth_tf.load("results/lenet_fm")   # exp.config == cfg, exp.rows == rows

The same experiment as the command line's, through the same code: a setting left out of
``Config`` takes the flag's default (the paper's for the model, config.with_paper_defaults),
and ``run`` sets TensorFlow up, checks the data, takes the folder's lock, refuses a folder
holding another experiment and writes the same flags.cfg as ``python -m lth_tf.main`` does,
so the folder can be resumed by the command line (and vice versa) and read by
``python -m lth_tf.plot``, ``report`` and ``study``. Finished stages are never retrained: a
second ``run`` into the same folder only reads results back.

Importing this module imports no TensorFlow (``Config`` validates without it); ``run``,
``load`` and ``table`` import it when called.
"""
import dataclasses
import os

from lth_tf import config


def Config(model, **settings):  # noqa: N802  (reads as the constructor it stands for)
  """An experiment's settings: a validated, frozen ``lth_tf.config.Config``.

  ``settings`` are the command line's flags that determine the numbers (Config's fields:
  ``dataset``, ``rounds``, ``iterations``, ``batch_size``, ``learning_rate``, ``controls``,
  ``trials``, ``pruning``, ...), lists as tuples; each one left out takes the flag's
  default, the paper's for ``model`` where it has one (see the README's flags table).
  ``config.ConfigError``, naming the setting, for an unknown setting or a bad value.
  """
  return config.paper_config(model, **settings)


@dataclasses.dataclass
class Experiment:
  """An experiment folder read back (``load``)."""
  config: config.Config
  rows: list  # results.csv: one dict per finished (arm, trial, round)
  output_dir: str
  flags: dict  # flags.cfg as {name: value string}, incl. threads, xla, data_dir, ... (an
  # older file's missing flags resolved: config.FlagsFile.flags)

  def table(self):
    """The by-round Markdown table ``python -m lth_tf.report`` prints first."""
    return table(self.rows, self.config.trials)


def _check_int(name, value, low):
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise config.ConfigError(f"{name}={value!r} is invalid; pass a whole number of {low} or "
                             f"more")


_CALMED = []


def run(cfg, output_dir, *, data_dir=None, manual_dir=None, threads=None, deterministic=True,
        xla=None, strategy="default", cpu_devices=0, checkpoint_every=1000, export=False,
        tensorboard=False, plots=False, on_divergence="continue", overwrite=False,
        verbose=True):
  """Runs (or resumes) the experiment ``cfg`` (a Config) into ``output_dir``; returns its
  results.csv rows, one dict per finished (arm, trial, round) (``pandas.DataFrame(rows)``
  makes a frame of them; ``lth_tf.table(rows)`` the by-round table).

  The keyword arguments are the command line's flags of the same names, except:
  ``threads`` None: all cores; ``xla`` None: the model's default; ``export`` (a SavedModel of
  every stage's ticket) False; ``tensorboard`` False (True: runs in <output_dir>/tensorboard;
  a path: there); ``plots`` False (True: the command line's figures in <output_dir>/plots);
  ``verbose``: log progress at absl's INFO level meanwhile.

  TensorFlow is set up in this process as the command line does it, and some of it holds for
  the process: the thread count and ``cpu_devices`` can be set only before TensorFlow starts
  (a later run asking for other values raises ConfigError: restart the kernel), and op
  determinism, once on, stays on. ``threads`` is part of the experiment (results are
  bit-identical only at the same count) and recorded in flags.cfg.

  Raises config.ConfigError for a bad setting or argument, main.UserError for an
  ``output_dir`` that cannot be written or holds another experiment (``overwrite=True``
  deletes that one), lock.LockHeld while another run holds the folder,
  data.DatasetUnavailableError when the data cannot be had, experiment.DivergedError for a
  NaN/inf loss with ``on_divergence="stop"``.
  """
  from absl import logging

  from lth_tf import console, main  # main: its resolution and checks (absl flags, no TF)

  if not isinstance(cfg, config.Config):
    raise TypeError(f"cfg must be an lth_tf.Config(...), not {type(cfg).__name__}")
  output_dir = os.fspath(output_dir)
  data_dir = None if data_dir is None else os.fspath(data_dir)
  manual_dir = None if manual_dir is None else os.fspath(manual_dir)
  # The Runtime the command line resolves from the same flags (config.resolve checks them as
  # it checks the flags: threads, cpu_devices, strategy, deterministic, xla); flags.cfg is its
  # text.
  _, runtime = config.resolve({
      "model": cfg.model, "threads": 0 if threads is None else threads,
      "deterministic": deterministic, "xla": xla, "strategy": strategy,
      "cpu_devices": cpu_devices})
  _check_int("checkpoint_every", checkpoint_every, 0)
  if checkpoint_every % cfg.eval_every:
    raise config.ConfigError(f"checkpoint_every={checkpoint_every} must be 0 or a multiple of "
                             f"eval_every={cfg.eval_every}")
  if on_divergence not in ("continue", "stop"):
    raise config.ConfigError(f"on_divergence={on_divergence!r} is invalid; use 'continue' or "
                             f"'stop'")
  if manual_dir is not None and not os.path.isdir(manual_dir):
    raise config.ConfigError(f"manual_dir={manual_dir} is not a folder; pass the folder "
                             f"holding the {cfg.dataset} archives")
  main.check_writable(output_dir)
  recorded = config.FlagsFile(cfg, runtime, output_dir, data_dir, manual_dir, checkpoint_every)

  old_verbosity = logging.get_verbosity()
  if verbose:
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
  try:
    calm = False
    if not _CALMED:  # once per process: it adds a filter to absl's handler
      _CALMED.append(calm := console.calm(old_verbosity))
    if not deterministic and _determinism_on():
      raise config.ConfigError("deterministic=False: op determinism is already on in this "
                               "process and cannot be turned off; restart the kernel")
    return main.launch(
        recorded, export=export,
        logdir=(f"{output_dir}/tensorboard" if tensorboard is True
                else os.fspath(tensorboard) if tensorboard else None),
        on_divergence=on_divergence, overwrite=overwrite, calm=calm, plots=plots)
  finally:
    logging.set_verbosity(old_verbosity)


def _determinism_on():
  try:
    from tensorflow.python.framework import config as tf_config
    return tf_config.is_op_determinism_enabled()
  except (ImportError, AttributeError):
    return False


def load(output_dir):
  """The experiment in ``output_dir`` (written by ``run`` or the command line, finished or
  not): ``Experiment(config, rows, output_dir, flags)``, its Config resolved from flags.cfg
  as the command line resolves a rerun's (a setting an older flags.cfg lacks took its
  default) and its results.csv rows (none before the first stage has finished). Imports
  TensorFlow (files go through tf.io.gfile). artifacts.CorruptFileError, naming the file, for
  a missing flags.cfg or a file that is not lth_tf's."""
  from lth_tf import artifacts

  output_dir = os.fspath(output_dir)
  recorded = artifacts.read_flags_file(output_dir)
  results = f"{output_dir}/results.csv"
  rows = artifacts.read_results(results) if artifacts.exists(results) else []  # none finished
  return Experiment(recorded.config, rows, output_dir, recorded.flags())


def table(rows, trials=None):
  """results.csv rows as the by-round Markdown table of ``python -m lth_tf.report`` (mean ±
  std over trials; ``trials`` default: the trials in ``rows``)."""
  from lth_tf import report

  if trials is None:
    trials = len({r["trial"] for r in rows})
  return report.table(rows, trials)
