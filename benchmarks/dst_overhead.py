"""What moving connections costs: a SET or RigL round against a fixed-mask (static) round of
the same length, on LeNet-300-100 / Fashion-MNIST at round --round's ERK sparsity.

Each contender is the experiment's own ticket stage (experiment.run_stage, with its compiled
model reused across stages): static trains its random mask, set and rigl move the mask every
--dst_interval iterations between compiled blocks. A first stage per contender compiles and is
not counted; then the contenders alternate (static, set, rigl, static, ...) for --repeats
stages each, and each stage's training time (metrics.json ``seconds``: the round's training,
evaluation and callbacks, not data loading) is compared as medians. Usage:

  python -m benchmarks.dst_overhead --threads=1

The last line is machine-readable: ``dst set/static=<x> rigl/static=<y>``. The issue's target
is at most 1.2 for both at the experiment's sizes (15,000 iterations, an update every 100).
"""
import statistics
import tempfile

from absl import app, flags

import lth_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from benchmarks import round_overhead
from lth_tf import config, experiment

FLAGS = flags.FLAGS
flags.DEFINE_integer("iterations", 3000, "Iterations per stage.")
flags.DEFINE_integer("eval_every", 100, "Validate every this many iterations.")
flags.DEFINE_integer("dst_interval", 100, "Iterations between mask updates (set, rigl).")
flags.DEFINE_integer("round", 7, "The round whose ERK sparsity the stages train at "
                     "(0.8^round of the weights).")
flags.DEFINE_integer("repeats", 5, "Timed stages per contender (after one to compile).")
flags.DEFINE_integer("threads", 1, "TensorFlow intra-op threads (0: all cores).")
flags.DEFINE_string("manual_dir", round_overhead.MANUAL_DIR,
                    "Folder with the Fashion-MNIST archives.")

CONTENDERS = ("static", "set", "rigl")


def stage_seconds(runs, round_, repeats):
  """{method: [seconds of each timed stage]}, the contenders alternating stage by stage."""
  seconds = {m: [] for m in runs}
  for trial in range(repeats + 1):  # trial 0 compiles: not counted
    for method, (cfg, out, run_) in runs.items():
      metrics = experiment.run_stage(cfg, out, run_.splits, ("ticket", trial, round_),
                                     jit_compile=True, run_=run_)
      if trial:
        seconds[method].append(metrics["seconds"])
  return seconds


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  paper = config.PAPER["lenet300_100"]
  experiment.setup_tensorflow(FLAGS.threads, seed=0, deterministic=True)
  splits = round_overhead.fashion_mnist(FLAGS.manual_dir)
  print(f"dst_overhead: LeNet-300-100 on Fashion-MNIST, ERK at round {FLAGS.round} "
        f"({100 * 0.8 ** FLAGS.round:.1f}% of weights), {FLAGS.iterations} iterations per stage, "
        f"updates every {FLAGS.dst_interval}; {FLAGS.repeats} timed stages per contender, "
        f"alternating; intra-op threads {FLAGS.threads or 'all'}", flush=True)
  runs = {}
  with tempfile.TemporaryDirectory() as tmp:
    for method in CONTENDERS:
      cfg = config.paper_config(
          "lenet300_100", dataset="fashion_mnist", pruning=method, distribution="erk",
          prune_rate=0.2, rounds=FLAGS.round, iterations=FLAGS.iterations,
          eval_every=FLAGS.eval_every, dst_interval=FLAGS.dst_interval, controls=(),
          trials=FLAGS.repeats + 1, learning_rate=paper["learning_rate"])
      out = f"{tmp}/{method}"
      run_ = experiment._StageRun(cfg, out, splits, 0, True, (), False, None)
      runs[method] = (cfg, out, run_)
    seconds = stage_seconds(runs, FLAGS.round, FLAGS.repeats)
  median = {m: statistics.median(s) for m, s in seconds.items()}
  for m in CONTENDERS:
    each = ", ".join(f"{s:.2f}" for s in seconds[m])
    print(f"{m:>6}: median {median[m]:.2f} s per stage ({each})")
  print(f"dst set/static={median['set'] / median['static']:.3f} "
        f"rigl/static={median['rigl'] / median['static']:.3f}")


if __name__ == "__main__":
  app.run(main)
