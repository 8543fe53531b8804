"""Whether lottery rounds stay fast and memory stays flat as an experiment goes on.

An experiment reuses one wrapped model and one Trainer for dozens of rounds; if a round
retraced, leaked graphs or kept arrays alive, later rounds would slow down or memory would
grow. This runs the dense round 0 (compiles everything), then ``--rounds`` rounds of LeNet-300-100
on Fashion-MNIST, each pruning the previous round's trained weights at the paper's rates
(fc 20%, output 10%) and rewinding to θ0, exactly as the experiment's ticket arm does, and
prints each round's time and memory. Usage:

  python -m benchmarks.round_stability --threads=1

The last line is machine-readable: ``stability time_ratio=<x> rss_growth_mb=<y>``
(last pruned round's time / round 1's; current RSS after the last round minus after round 1).
"""
import os
import time

from absl import app, flags

import lth_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from benchmarks import round_overhead
from lth_tf import config, experiment, masks, network, pruning, ticket

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 10, "Pruned rounds after the dense round 0.")
flags.DEFINE_integer("iterations", 1000, "Iterations per round.")
flags.DEFINE_integer("eval_every", 100, "Validate every this many iterations.")
flags.DEFINE_integer("threads", 1, "TensorFlow intra-op threads (0: all cores).")
flags.DEFINE_bool("deterministic", True, "Enable op determinism, as lth_tf.main does.")
flags.DEFINE_string("manual_dir", round_overhead.MANUAL_DIR,
                    "Folder with the Fashion-MNIST archives.")

PAPER = config.PAPER["lenet300_100"]
# The experiment's ticket arm at the paper's rates (fc 20%, output 10%); only the fields that
# set pruning targets matter here.
CONFIG = config.Config(
    model="lenet300_100", dataset="fashion_mnist", rounds=1, iterations=100,
    batch_size=config.PAPER_BATCH_SIZE, learning_rate=PAPER["learning_rate"], eval_every=100,
    prune_rate_conv=PAPER["prune_rate_conv"], prune_rate_fc=PAPER["prune_rate_fc"],
    prune_rate_output=PAPER["prune_rate_output"])


def current_rss_mb():
  """Resident memory of this process now, from /proc/self/statm (pages), in MB."""
  with open("/proc/self/statm") as f:
    resident_pages = int(f.read().split()[1])
  return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def next_mask(model, mask, round_):
  """Round ``round_``'s mask: the trained kernels' survivors, layerwise by magnitude, at the
  experiment's own targets (network.round_targets)."""
  return pruning.prune("magnitude", ticket.get_kernels(model), mask,
                       network.round_targets(CONFIG, model, round_))


def run_rounds(lottery, rounds, iterations):
  """Trains rounds 0..``rounds``; returns [(round, seconds, % remaining, peak MB, RSS MB,
  CPU seconds)]. CPU time shows extra work even when other processes share the cores."""
  mask = masks.ones_like(ticket.get_kernels(lottery.model))
  rows = []
  for r in range(rounds + 1):
    if r > 0:
      mask = next_mask(lottery.model, mask, r)
    start, cpu = time.perf_counter(), time.process_time()
    lottery.run(mask, iterations, seed=r)
    rows.append((r, time.perf_counter() - start, 100 * masks.fraction_remaining(mask),
                 round_overhead.peak_rss_mb(), current_rss_mb(), time.process_time() - cpu))
    print(f"  round {r:2d}: {rows[-1][1]:7.3f} s (CPU {rows[-1][5]:7.3f} s)  "
          f"{rows[-1][2]:6.2f}% of weights  "
          f"peak RSS {rows[-1][3]:7.1f} MB  current RSS {rows[-1][4]:7.1f} MB"
          + ("  (dense; includes XLA compilation)" if r == 0 else ""), flush=True)
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.rounds < 1 or FLAGS.eval_every < 1 or FLAGS.iterations % FLAGS.eval_every:
    raise app.UsageError("--rounds must be >= 1 and --iterations a multiple of --eval_every")
  experiment.setup_tensorflow(FLAGS.threads, seed=0, deterministic=FLAGS.deterministic)
  print(f"round_stability: LeNet-300-100 on Fashion-MNIST, {FLAGS.rounds} pruned rounds of "
        f"{FLAGS.iterations} iterations after the dense round 0, one Trainer and model reused; "
        f"intra-op threads {FLAGS.threads or 'all'}", flush=True)
  lottery = round_overhead.LotteryRound(
      "lenet300_100", round_overhead.fashion_mnist(FLAGS.manual_dir), PAPER["learning_rate"],
      config.PAPER_BATCH_SIZE, FLAGS.eval_every)
  rows = run_rounds(lottery, FLAGS.rounds, FLAGS.iterations)
  first, last = rows[1], rows[-1]
  print(f"round{last[0]}/round1 time: {last[1] / first[1]:.3f} (CPU time: "
        f"{last[5] / first[5]:.3f}); current RSS growth "
        f"round1->round{last[0]}: {last[4] - first[4]:+.1f} MB; peak RSS growth "
        f"{last[3] - first[3]:+.1f} MB")
  print(f"stability time_ratio={last[1] / first[1]:.3f} rss_growth_mb={last[4] - first[4]:.1f}")


if __name__ == "__main__":
  app.run(main)
