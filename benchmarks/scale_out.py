"""How much sooner an experiment finishes with --executor=ray than with --executor=local.

Runs the same LeNet-300-100 experiment on Fashion-MNIST (2 trials x ticket, reinit,
random_prune x 3 rounds: 20 stages) twice in fresh output dirs, as a user would
(``python -m lth_tf.main``), one executor after the other, and prints wall times, the speedup
and Ray's overhead per stage. Every stage uses ``--threads`` intra-op threads (default 1), so on
this 2-core machine Ray trains two stages at once and local one. On a cluster, pass
``--ray_address=auto``: the same command measures how the experiment scales there.

  python -m benchmarks.scale_out                     # about 10 minutes on 2 cores
  python -m benchmarks.scale_out --iterations=2000   # shorter stages, more overhead

Overhead per stage: each run's wall time times the stages it can train at once (1 for local,
Ray's CPUs / --threads for ray), minus the training time the stages report in their
metrics.json (``seconds``), divided by the number of stages: what a stage costs beyond its own
training (process start, data loading, scheduling, writing results). The last line is
machine-readable: ``scale_out local_s=<s> ray_s=<s> speedup=<x>``.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("iterations", 10000, "Iterations per stage (Ray's fixed costs weigh less "
                     "as stages grow: 1.31x at 2,000, 1.67x at 10,000 on 2 cores here).")
flags.DEFINE_integer("threads", 1, "--threads of both runs (Ray: CPUs per stage).")
flags.DEFINE_string("manual_dir", "../shared/datasets/fashion_mnist",
                    "Folder with the Fashion-MNIST archives.")
flags.DEFINE_string("ray_address", None, "Join this Ray cluster (default: a local Ray).")
flags.DEFINE_string("work_dir", None, "Where the two output dirs go (default: a temp dir, "
                    "deleted at the end).")

REPO = pathlib.Path(__file__).resolve().parent.parent


def experiment_args(output_dir):
  return ["--model=lenet300_100", "--dataset=fashion_mnist", f"--manual_dir={FLAGS.manual_dir}",
          "--rounds=3", f"--iterations={FLAGS.iterations}", "--eval_every=100", "--trials=2",
          "--controls=reinit,random_prune", f"--threads={FLAGS.threads}", "--export=false",
          "--logdir=", f"--output_dir={output_dir}"]


def run(executor, output_dir):
  """Wall seconds of one lth_tf.main run; raises with its stderr tail if it fails."""
  args = [sys.executable, "-m", "lth_tf.main", *experiment_args(output_dir),
          f"--executor={executor}"]
  if executor == "ray" and FLAGS.ray_address:
    args.append(f"--ray_address={FLAGS.ray_address}")
  env = dict(os.environ, PYTHONPATH=str(REPO))
  start = time.perf_counter()
  proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if proc.returncode:
    raise RuntimeError(f"--executor={executor} failed:\n{proc.stderr[-3000:]}")
  return seconds


def stage_seconds(output_dir):
  """The training time each stage reports in its metrics.json."""
  return [json.loads(p.read_text())["seconds"]
          for p in pathlib.Path(output_dir).glob("*/trial_*/round_*/metrics.json")]


def ray_slots():
  """Stages Ray trains at once: the cluster's CPUs / --threads."""
  if FLAGS.ray_address:
    import ray
    ray.init(address=FLAGS.ray_address)
    cpus = ray.cluster_resources().get("CPU", 1)
    ray.shutdown()
  else:
    cpus = os.cpu_count() or 1
  return max(1, int(cpus // FLAGS.threads))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  work = pathlib.Path(FLAGS.work_dir or tempfile.mkdtemp(prefix="scale_out-"))
  slots = {"local": 1, "ray": ray_slots()}
  print(f"scale_out: LeNet-300-100 on Fashion-MNIST, 2 trials x (ticket, reinit, random_prune) "
        f"x 3 rounds = 20 stages of {FLAGS.iterations} iterations, --threads={FLAGS.threads}; "
        f"{os.cpu_count()} cores here; ray trains {slots['ray']} stages at once", flush=True)
  walls, overheads = {}, {}
  try:
    for executor in ("local", "ray"):
      out = work / executor
      walls[executor] = run(executor, out)
      trained = stage_seconds(out)
      overheads[executor] = (walls[executor] * slots[executor] - sum(trained)) / len(trained)
      print(f"  --executor={executor}: {walls[executor]:7.1f} s wall, {len(trained)} stages, "
            f"mean stage training {sum(trained) / len(trained):5.1f} s, overhead per stage "
            f"{overheads[executor]:5.1f} s", flush=True)
      if (out / "results.csv").read_bytes() != (work / "local" / "results.csv").read_bytes():
        print("  WARNING: results.csv differs from the local run's", flush=True)
  finally:
    if FLAGS.work_dir is None:
      shutil.rmtree(work, ignore_errors=True)
  speedup = walls["local"] / walls["ray"]
  print(f"  speedup ray/local: {speedup:.2f}x; Ray's extra overhead per stage: "
        f"{overheads['ray'] - overheads['local']:+.1f} s")
  print(f"scale_out local_s={walls['local']:.1f} ray_s={walls['ray']:.1f} speedup={speedup:.2f}")


if __name__ == "__main__":
  app.run(main)
