"""Where an experiment's stages run: all in this process (``local``), or on Ray (``ray``).

Every stage (arm, trial, round) writes its own files into the output dir and needs only the
files of the stages ``stage_graph.dependencies`` names, so stages of different trials, and the
controls of a round, can train at the same time on different cores or machines. The Ray
driver starts one worker (a Ray actor, ``StageWorker``) per stage the cluster can train at
once; each sets TensorFlow up exactly as ``lth_tf.main`` does, loads the data and compiles
the model once, and then trains the stages the driver gives it (``experiment.run_stage``),
each as soon as its dependencies are finished. The driver alone writes results.csv (after
every finished stage) and the TensorBoard summary. Stages already finished (their
metrics.json exists) are not given out again, and an interrupted stage resumes from its
checkpoint, so an experiment can be resumed with either executor. Results are bit-identical
to the local loop at the same ``--threads``: every seed derives from (seed, trial, arm,
round), never from the order or the process stages run in.

Ray is optional (``pip install 'lth-tf[ray]'``); this module imports it only in ``run_ray``.

A Job carries ``--strategy`` and ``--cpu_devices``: with ``mirrored`` each worker trains its
stages on the devices it reserves (``--ray_gpus_per_task``, or logical CPUs). ``lth_tf.main``
refuses ``multi_worker_mirrored`` with Ray: one training across TF_CONFIG workers is not a task.
"""
import dataclasses
import os
import re
import socket

from absl import logging

import lth_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from lth_tf import (artifacts, config, console, data, distribute, experiment, fixes, layout,
                    stage_graph)

# Ray restarts a worker whose process died (not one whose stage raised) this many times and
# reruns its stage there, which resumes from the stage's last checkpoint.
MAX_RETRIES = 3


class ExecutorError(RuntimeError):
  """A stage failed, or the executor cannot run; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Job:
  """Everything a worker needs to run stages of one experiment (picklable, hashable)."""
  cfg: config.Config
  output_dir: str
  data_dir: str = None
  manual_dir: str = None
  checkpoint_every: int = 0
  export: bool = False
  logdir: str = None
  runtime: config.Runtime = config.Runtime()  # threads, determinism, XLA, strategy, devices


def _absolute(path):
  """Local paths made absolute (a worker's working directory may differ); URLs unchanged."""
  return path if path is None or "://" in path else os.path.abspath(path)


def label(stage):
  arm, trial, round_ = stage
  return f"[{arm} trial {trial} round {round_}]"


# ---- worker side -----------------------------------------------------------------------------

def load_splits(cfg, data_dir, manual_dir):
  """The experiment's data splits, checked against the dataset's image shape."""
  splits = data.load(cfg.dataset, data_dir, manual_dir,
                     split_seed=layout.split_seed(cfg))
  if splits.train_x.shape[1:] != data.SHAPES[cfg.dataset]:
    raise config.ConfigError(f"--dataset={cfg.dataset} gave images of shape "
                                 f"{splits.train_x.shape[1:]}, expected "
                                 f"{data.SHAPES[cfg.dataset]}")
  return splits


class StageWorker:
  """One worker process of a job (a Ray actor): it sets TensorFlow up as ``lth_tf.main``
  does, loads the data and compiles the model once, then trains the stages it is given.

  Keeping them in the actor, not in the process's globals, is what lets a worker run many
  stages for the cost of one start (~15 s of imports, data and XLA compilation).
  """

  def __init__(self, job):
    logging.set_verbosity(logging.INFO)
    self.job = job
    rt = job.runtime
    strategy = experiment.setup_tensorflow(rt.threads, job.cfg.seed, rt.deterministic,
                                           rt.cpu_devices, rt.strategy)
    self.splits = load_splits(job.cfg, job.data_dir, job.manual_dir)
    self.run_ = experiment._StageRun(job.cfg, job.output_dir, self.splits,
                                     job.checkpoint_every, job.runtime.xla, (), job.export,
                                     job.logdir, strategy)

  def run(self, stage):
    """Trains ``stage`` (resuming it from its checkpoint); returns its results.csv row."""
    metrics = experiment.run_stage(self.job.cfg, self.job.output_dir, self.splits, stage,
                                   run_=self.run_)
    return {k: metrics[k] for k in (*artifacts.RESULT_COLUMNS, "seconds")}


# ---- driver side -----------------------------------------------------------------------------

def run_local(job, splits, on_divergence="continue", callbacks=()):
  """Every stage in this process, in ``stage_graph.stage_order``: experiment.run."""
  return experiment.run(job.cfg, job.output_dir, splits, checkpoint_every=job.checkpoint_every,
                        jit_compile=job.runtime.xla, callbacks=callbacks,
                        on_divergence=on_divergence, export=job.export, logdir=job.logdir,
                        strategy=distribute.get(job.runtime.strategy))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _error_line(e):
  """One line for an exception raised in a worker (Ray wraps it)."""
  cause = getattr(e, "cause", None) or e
  text = [line.strip() for line in _ANSI.sub("", str(cause)).splitlines() if line.strip()]
  name = type(cause).__name__
  if getattr(e, "actor_init_failed", False) and text:  # Ray's text ends with the init's error
    return f"its worker could not start: {text[-1][:300]}"
  if name.startswith("RayTaskError(") and text:  # cause not unpicklable: Ray's own text
    return f"{name[len('RayTaskError('):-1]}: {text[-1][:300]}"
  return f"{name}: {text[0][:300]}" if text else name


def prepare_data(cfg, data_dir, manual_dir):
  """Prepares the dataset in ``data_dir`` once, here, so that workers starting together only
  read it (TFDS preparing one dataset twice at once into one folder is not safe)."""
  import tensorflow_datasets as tfds

  if not tfds.builder(cfg.dataset, data_dir=data_dir).is_prepared():
    logging.info("preparing %s in %s for the workers", cfg.dataset, data_dir or "TFDS's data dir")
    load_splits(cfg, data_dir, manual_dir)


def _init_ray(ray, address, cpus_per_task, gpus_per_task):
  if address is None:
    cpus = os.cpu_count() or 1
    if cpus_per_task > cpus:
      raise ExecutorError(f"--ray_cpus_per_task={cpus_per_task} exceeds the {cpus} CPUs of the "
                          f"local Ray; pass --ray_cpus_per_task (or --threads) of at most {cpus}")
    ray.init(address="local", num_cpus=cpus, include_dashboard=False)
  else:
    try:
      host, _, port = address.rpartition(":")
      if "://" not in address and host and port.isdigit():  # Ray retries a dead GCS for minutes
        socket.create_connection((host, int(port)), timeout=10).close()
      ray.init(address=address)
    except Exception as e:  # ConnectionError, or Ray's own for a bad address
      first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
      raise ExecutorError(f"--ray_address={address}: cannot join that Ray cluster "
                          f"({type(e).__name__}: {first}); start it with `ray start --head`, "
                          f"or drop --ray_address to start a local Ray") from e
  total = ray.cluster_resources()
  if total.get("CPU", 0) < cpus_per_task or total.get("GPU", 0) < gpus_per_task:
    logging.warning("ray: the cluster has %g CPUs and %g GPUs now; each stage needs %g and %g "
                    "(stages wait until nodes that fit join)", total.get("CPU", 0),
                    total.get("GPU", 0), cpus_per_task, gpus_per_task)
  logging.info("ray: %g CPUs, %g GPUs; %g CPUs and %g GPUs per stage", total.get("CPU", 0),
               total.get("GPU", 0), cpus_per_task, gpus_per_task)


def worker_slots(nodes, cpus_per_task, gpus_per_task):
  """How many stages a cluster trains at once: per alive node (``ray.nodes()``), its CPUs /
  ``cpus_per_task`` and GPUs / ``gpus_per_task``, added up (a worker cannot span nodes)."""
  if cpus_per_task <= 0 or gpus_per_task < 0:
    raise ValueError(f"cpus_per_task={cpus_per_task} must be positive and gpus_per_task="
                     f"{gpus_per_task} not negative")
  slots = 0
  for node in nodes:
    if node.get("Alive", True):
      have = node.get("Resources", {})
      fit = int(have.get("CPU", 0) // cpus_per_task)
      if gpus_per_task:
        fit = min(fit, int(have.get("GPU", 0) // gpus_per_task))
      slots += fit
  return max(1, slots)


def critical_path_order(order, deps):
  """``order`` sorted by how many stages at most still follow each one (longest first; ties
  keep ``order``): a free worker takes the ready stage that the most later work waits on, so
  the ticket's chain of rounds never queues behind a control that nothing needs."""
  after = {s: 0 for s in order}
  for stage in reversed(order):  # a topological order: every stage after its needs
    for need in deps[stage]:
      after[need] = max(after[need], after[stage] + 1)
  return sorted(order, key=lambda s: -after[s])


def run_ray(job, address=None, cpus_per_task=1, gpus_per_task=0, on_divergence="continue",
            max_retries=MAX_RETRIES):
  """Runs (or resumes) every stage of ``job`` on Ray workers; returns results.csv rows.

  The driver gives each idle worker (a StageWorker actor) the next stage whose dependencies
  are finished, starting workers as stages become ready, up to one per stage the cluster can
  train at once (per node, its CPUs / ``cpus_per_task`` and GPUs / ``gpus_per_task``; nodes
  that join later are not counted). A worker whose process dies is restarted and its stage
  rerun, up to ``max_retries`` times per stage.

  ``address``: None starts a local Ray with all cores; ``"auto"`` or ``host:port`` joins a
  running cluster, whose every node must have lth_tf installed and see ``job.output_dir`` and
  the data at the same paths. Divergence is handled as in ``experiment.run``: a diverged
  ticket ends its trial (stages not yet started are dropped), and ``on_divergence="stop"``
  submits nothing more and raises DivergedError once the running stages have finished. A
  stage that fails is logged in one line; the driver submits nothing more, waits for the
  running stages, writes results.csv and raises ExecutorError naming the first failure.
  """
  import ray

  cfg = job.cfg
  job = dataclasses.replace(job, cfg=cfg, output_dir=_absolute(job.output_dir),
                            data_dir=_absolute(job.data_dir),
                            manual_dir=_absolute(job.manual_dir), logdir=_absolute(job.logdir))
  order, deps = stage_graph.stage_order(cfg), stage_graph.dependencies(cfg)
  position = {s: i for i, s in enumerate(order)}
  by_priority = critical_path_order(order, deps)
  done, skipped, running, failures, stop = {}, set(), {}, [], []

  def finished(stage, row):
    done[stage] = row
    if row["diverged"] and on_divergence == "stop" and not stop:
      stop.append(stage)  # raised once the running stages have finished
    if stage not in skipped and experiment.after_stage(stage, row):
      skipped.update(s for s in order if s[1] == stage[1] and position[s] > position[stage]
                     and s not in done and s not in (r for r, _ in running.values()))

  with fixes.explained(cfg):  # a corrupt metrics.json: one line naming what to delete
    for stage in order:  # resume: finished stages are not submitted again
      path = f"{layout.stage_dir(job.output_dir, *stage)}/metrics.json"
      if stage not in skipped and artifacts.exists(path):
        finished(stage, artifacts.read_json(path))
  if done:
    logging.info("ray: %d of %d stages already finished", len(done), len(order))

  _init_ray(ray, address, cpus_per_task, gpus_per_task)
  slots = worker_slots(ray.nodes(), cpus_per_task, gpus_per_task)
  # A dead worker is restarted as often as needed; each stage is retried max_retries times.
  worker = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_restarts=-1,
                      max_task_retries=max_retries)(StageWorker)
  idle, workers = [], []

  def free_worker():
    """An idle worker, or a new one while fewer than ``slots`` exist (started when a stage is
    ready for it, so a chain of stages never starts workers it cannot use); else None."""
    if not idle and len(workers) < slots:
      workers.append(worker.remote(job))
      idle.append(workers[-1])
      logging.info("ray: started worker %d of at most %d", len(workers), slots)
    return idle.pop(0) if idle else None

  meter = console.StageProgress(len(order), "ray")
  meter.done = len(done)  # found finished: they cost nothing

  def progress():
    waiting = len(order) - len(done) - len(running) - len(skipped)
    meter.total = len(order) - len(skipped)
    meter.line(parallel=slots, detail=f" ({len(running)} running, {waiting} waiting"
               f"{f', {len(skipped)} dropped' if skipped else ''})")

  try:
    while True:
      if not failures and not stop:
        for stage in by_priority:
          if (stage not in done and stage not in skipped
              and stage not in (s for s, _ in running.values())
              and all(d in done for d in deps[stage])):
            w = free_worker()
            if w is None:
              break
            running[w.run.remote(stage)] = stage, w
            logging.info("ray: started %s", label(stage))
      progress()
      if not running:
        break
      ready, _ = ray.wait(list(running), num_returns=1)
      stage, w = running.pop(ready[0])
      try:
        row = ray.get(ready[0])
      except Exception as e:  # the stage raised, its worker could not start, or died too often
        failures.append(f"{label(stage)} failed: {_error_line(e)}")
        logging.error("ray: %s", failures[-1])
        continue
      idle.append(w)
      meter.finished(True, row["seconds"])
      logging.info("ray: finished %s in %.1f s: early stop at %d, test accuracy %.4f",
                   label(stage), row["seconds"], row["early_stop_iteration"],
                   row["early_stop_test_accuracy"])
      finished(stage, row)
      experiment.append_result(cfg, job.output_dir, row, job.logdir)
  finally:
    ray.shutdown()
  rows = experiment.write_results(cfg, job.output_dir, job.logdir)
  if failures:
    not_run = len(order) - len(done) - len(skipped)
    raise ExecutorError(f"{failures[0]}{f' (and {len(failures) - 1} more)' if len(failures) > 1 else ''}"
                        f"; {not_run} stage(s) not run; the finished ones are in "
                        f"{job.output_dir}/results.csv; rerun the same command to resume")
  if stop:
    raise experiment.diverged_error(stop[0], job.output_dir)
  return rows
