"""What --compact_training buys: a unit-structured stage trained on its compact network against
the same stage trained masked at full size, by the % of hidden units the round keeps.

For each round r in --rounds, the mask removes whole units (Dense outputs, conv filters) as
--structure=unit does after r rounds: each hidden layer keeps ``Config.unit_counts(r)`` units,
those of largest L2 norm of a seeded θ0 (pruning.unit_masks from an all-ones mask; round 0 keeps
every unit). Both contenders train that stage from θ0⊙m with a fresh optimizer on the same batch
table (Fashion-MNIST, the experiment's validation split, validation every --eval_every):

  masked   one TF-MOT-wrapped full-size model and its trainer, built once and reused by every
           round, as the experiment keeps them (set_masks, set_weights, reset_optimizer,
           training.train_round);
  compact  compact_training.CompactTraining: per stage the full model is set to the mask and θ0
           as above, ``prepare`` cuts the compact network from it (one compiled trainer per
           shape, kept), train_round trains it, ``write_back`` writes it back at full size.

The time compared is the stage's RoundResult.seconds (training, validation, test evaluations;
not prepare or write_back, whose median is printed beside it). Per round, a first short stage
of each contender (one --eval_every block) compiles and is not counted; then the contenders
alternate (ABBA) for --repeats stages each, and medians are compared.

A check per round, one line ``check round <r>: ... ok`` or one starting with ``MISMATCH``:
the compact network at the start computes the masked one's logits on 100 test images (max |Δ|
within 1e-4 of the largest logit, same argmax); ``write_back`` right after ``prepare`` gives
θ0⊙m back exactly; and after the first stage (one block) the weights written back equal the
masked stage's (np.allclose, atol 1e-4), or, where they do not, differ by no more than the
masked network's own weights after that block differ when it starts from θ0 moved by one
float32 ulp (one more masked block, only then). The two trainings differ by float rounding
(summation order), which training grows: Conv-2 at round 4 differs by 3e-4 after 50
iterations, where a one-ulp start moves the masked network by 9e-3; LeNet at round 3 goes
from 1e-6 to 4e-2 between iterations 1200 and 1300 (and the masked network with XLA and
without differs as much). So the line also gives the difference after the timed stages and
both final validation losses, for information only. Training compiles with XLA as
lth_tf.main does by default for the model (--xla: on for LeNet, off for Conv-2, whose Conv2D
training XLA compiles poorly on CPU).

Round 0 is the dense network, whose stage the experiment does not compact; the compact network
there is the same network without the TF-MOT wrappers, so its ratio is the cost of the masking
itself (the TF-MOT wrapper's work every step: masking the kernels, its step counter). Usage:

  python -m benchmarks.compact_training --model=lenet300_100 --rounds=0,3,7,11,15 \\
      --iterations=2000 --repeats=5 --threads=1

The last line is machine-readable: ``compact_training <model> r<R>=<compact/masked> ...``, one
ratio of median stage times (3 decimals) per round of --rounds. Bad input (e.g. rounds past
the last one at which every layer keeps a unit): one line ``benchmarks.compact_training:
error: ...``, exit 2.
"""
import statistics
import sys
import time

from absl import app, flags

from lth_tf import config  # first: lth_tf sets TF_USE_LEGACY_KERAS before TF is imported
from benchmarks import round_overhead

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "lenet300_100", "A plain chain: lenet300_100, conv2, conv4, conv6.")
flags.DEFINE_list("rounds", ["0", "3", "7", "11", "15"], "Rounds whose unit masks are timed.")
flags.DEFINE_integer("iterations", 2000, "Iterations per stage.")
flags.DEFINE_integer("eval_every", 100, "Validate every this many iterations.")
flags.DEFINE_integer("batch_size", None, "Batch size (default: the paper's for the model).")
flags.DEFINE_integer("repeats", 5, "Timed stages per contender and round (after one to "
                     "compile).")
flags.DEFINE_integer("threads", 1, "TensorFlow intra-op threads (0: all cores).")
flags.DEFINE_bool("xla", None, "Compile training with XLA (default: lth_tf.main's for the "
                  "model, config.PAPER: on for LeNet, off for the conv nets).")
flags.DEFINE_bool("deterministic", True, "Enable op determinism (lth_tf.main's default).")
flags.DEFINE_integer("seed", 0, "Seed of θ0 (which units the masks keep) and the batch table.")
flags.DEFINE_string("manual_dir", round_overhead.MANUAL_DIR,
                    "Folder with the Fashion-MNIST archives.")

CHECK_IMAGES = 100
LOGIT_TOLERANCE = 1e-4  # of the largest |logit| (at least 1), as benchmarks.deploy
WEIGHT_ATOL = 1e-4


def fail(message):
  """One line on stderr, exit code 2: bad input, never a crash."""
  print(f"benchmarks.compact_training: error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_rounds(values):
  try:
    rounds = [int(v) for v in values]
  except ValueError:
    rounds = []
  if not rounds or min(rounds) < 0 or len(set(rounds)) != len(rounds):
    fail(f"--rounds={','.join(values)}: expected a comma-separated list of distinct "
         f"integers >= 0")
  return rounds


def make_config(rounds):
  """The unit experiment's Config with --compact_training; exit 2 with its one-line error."""
  settings = dict(dataset="fashion_mnist", structure="unit", rounds=max(rounds),
                  iterations=FLAGS.iterations, eval_every=FLAGS.eval_every, controls=(),
                  compact_training=True, seed=FLAGS.seed)
  if FLAGS.batch_size is not None:
    settings["batch_size"] = FLAGS.batch_size
  try:
    return config.paper_config(FLAGS.model, **settings)
  except config.ConfigError as e:
    fail(str(e))


def unit_mask(cfg, theta0, round_):
  """The whole-unit mask of ``round_``: cfg.unit_counts(round_) units per hidden layer, those
  of largest norm of θ0 (every weight at round 0)."""
  from lth_tf import masks, pruning
  kernels = {n: ws[0] for n, ws in theta0.items() if n in cfg.kernel_shapes()}
  ones = masks.ones_like(kernels)
  if round_ == 0:
    return ones
  scores = {n: abs(k) for n, k in kernels.items()}
  return pruning.unit_masks(scores, ones, cfg.unit_counts(round_))


def remaining(cfg, mask, round_):
  """(% of hidden units kept, % of weights kept) of ``mask``."""
  counts = cfg.unit_counts(round_)
  hidden_total = sum(mask[n].shape[-1] for n in counts)
  hidden_kept = sum(int((mask[n].reshape(-1, mask[n].shape[-1]) > 0).any(axis=0).sum())
                    for n in counts)
  weights = sum(m.size for m in mask.values())
  kept = sum(int((m > 0).sum()) for m in mask.values())
  return 100 * hidden_kept / hidden_total, 100 * kept / weights


class Bench:
  """The shared full-size model, the masked trainer, the compact trainers, data and θ0."""

  def __init__(self, cfg, splits, jit_compile):
    from lth_tf import compact_training, data, models, ticket, training
    from lth_tf.network import make_trainer
    self.cfg = cfg
    shape = splits.train_x.shape[1:]
    self.model = ticket.wrap(models.build(cfg.model, shape, init=cfg.initializer))
    self.trainer = make_trainer(cfg, self.model, jit_compile)
    self.compact = compact_training.CompactTraining(
        cfg, shape, lambda m: make_trainer(cfg, m, jit_compile))
    self.theta0 = ticket.get_weights(models.build(cfg.model, shape, init=cfg.initializer,
                                                  seed=cfg.seed))
    self.train = training.Split.of(splits.train_x, splits.train_y)
    self.val = training.Split.of(splits.val_x, splits.val_y)
    self.test = training.Split.of(splits.test_x, splits.test_y)
    self.check_x = splits.test_x[:CHECK_IMAGES]
    self.table = data.batch_indices(len(splits.train_x), cfg.batch_size, cfg.iterations,
                                    cfg.seed)

  def start(self, mask, theta0=None):
    """The full model at θ0⊙mask (not timed: both contenders do it)."""
    from lth_tf import ticket
    ticket.set_masks(self.model, mask)
    ticket.set_weights(self.model, self.theta0 if theta0 is None else theta0)

  def masked(self, mask, table, theta0=None):
    """One masked stage (from ``theta0``, default θ0): (RoundResult, its final weights)."""
    from lth_tf import ticket, training
    self.start(mask, theta0)
    self.trainer.reset_optimizer()
    result = training.train_round(self.trainer, self.train, table, self.val, self.test,
                                  self.cfg.eval_every)
    ticket.apply_masks(self.model)
    return result, ticket.get_weights(self.model)

  def compact_stage(self, mask, table):
    """One compact stage: (RoundResult, its weights written back, seconds of prepare and
    write_back)."""
    from lth_tf import ticket, training
    self.start(mask)
    t0 = time.perf_counter()
    trainer = self.compact.prepare(self.model)
    prepared = time.perf_counter() - t0
    result = training.train_round(trainer, self.train, table, self.val, self.test,
                                  self.cfg.eval_every)
    t0 = time.perf_counter()
    self.compact.write_back(self.model)
    overhead = prepared + time.perf_counter() - t0
    ticket.apply_masks(self.model)
    return result, ticket.get_weights(self.model), overhead

  def start_check(self, mask):
    """(max |Δ| of the logits on the check images, its tolerance, argmax identical, max |Δ|
    of a write_back right after prepare from θ0⊙mask) of the compact network just prepared
    against the masked full model at θ0⊙mask."""
    import numpy as np
    from lth_tf import ticket
    self.start(mask)
    start = ticket.get_weights(self.model)
    want = self.model(self.check_x, training=False).numpy()
    got = self.compact.prepare(self.model).model(self.check_x, training=False).numpy()
    delta = float(np.abs(got - want).max())
    tolerance = LOGIT_TOLERANCE * max(1.0, float(np.abs(want).max()))
    self.compact.write_back(self.model)
    round_trip = weights_delta(ticket.get_weights(self.model), start)[0]
    return delta, tolerance, bool((got.argmax(-1) == want.argmax(-1)).all()), round_trip


def next_float(weights):
  """``weights`` with every value moved up by one float32 ulp: a start as close to θ0 as
  float32 allows, to measure how far rounding-sized differences grow in training."""
  import numpy as np
  return {n: [np.nextafter(a, np.float32(np.inf)).astype(np.float32) for a in ws]
          for n, ws in weights.items()}


def weights_delta(a, b):
  """(max |Δ| over every array, all np.allclose at WEIGHT_ATOL)."""
  import numpy as np
  delta, close = 0.0, True
  for name in a:
    for x, y in zip(a[name], b[name]):
      delta = max(delta, float(np.abs(x - y).max()))
      close = close and np.allclose(x, y, atol=WEIGHT_ATOL)
  return delta, close


def run_round(bench, round_, repeats):
  """Times one round; prints its check line; returns its mask, {masked, compact, overhead:
  [seconds]} and the first-call (compiling) seconds of each contender."""
  mask = unit_mask(bench.cfg, bench.theta0, round_)
  delta, tolerance, same_argmax, round_trip = bench.start_check(mask)
  short = bench.table[:bench.cfg.eval_every]  # one block compiles all train_round traces
  first_masked, block_masked = bench.masked(mask, short)
  first_compact, block_compact, _ = bench.compact_stage(mask, short)
  first = dict(masked=first_masked.seconds, compact=first_compact.seconds)
  block_delta, block_close = weights_delta(block_compact, block_masked)
  drift = None  # the masked network's own drift after the block, from θ0 moved by one ulp
  if not block_close:
    drift = weights_delta(bench.masked(mask, short, next_float(bench.theta0))[1],
                          block_masked)[0]
  times = dict(masked=[], compact=[], overhead=[])
  final = {}

  def masked():
    result, final["masked"] = bench.masked(mask, bench.table)
    final["masked_val_loss"] = result.curve[-1]["val_loss"]
    times["masked"].append(result.seconds)

  def compact():
    result, final["compact"], overhead = bench.compact_stage(mask, bench.table)
    final["compact_val_loss"] = result.curve[-1]["val_loss"]
    times["compact"].append(result.seconds)
    times["overhead"].append(overhead)

  for r in range(repeats):
    for fn in ((masked, compact) if r % 2 == 0 else (compact, masked)):
      fn()
  stage_delta = weights_delta(final["compact"], final["masked"])[0]
  block_ok = block_close or block_delta <= drift
  ok = delta <= tolerance and same_argmax and round_trip == 0 and block_ok
  if block_close:
    block_note = f"(atol {WEIGHT_ATOL:g})"
  else:
    block_note = (f"(beyond atol {WEIGHT_ATOL:g}; {'within' if block_ok else 'BEYOND'} the "
                  f"masked network's own {drift:.2e} from θ0 moved by one ulp)")
  print(f"{'check' if ok else 'MISMATCH'} round {round_}: start logits on {CHECK_IMAGES} test "
        f"images max |Δ| {delta:.2e} (tolerance {tolerance:.1e}), argmax "
        f"{'identical' if same_argmax else 'DIFFERS'}; prepare+write_back max |Δ| "
        f"{round_trip:.1e}; weights written back after {len(short)} iterations max |Δ| "
        f"{block_delta:.2e} from the masked stage's {block_note}{' ok' if ok else ''}; after "
        f"{len(bench.table)}: max |Δ| {stage_delta:.2e}, final val loss masked "
        f"{final['masked_val_loss']:.4f} compact {final['compact_val_loss']:.4f}", flush=True)
  return mask, times, first


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  rounds = parse_rounds(FLAGS.rounds)
  cfg = make_config(rounds)
  if FLAGS.repeats < 1:
    fail(f"--repeats={FLAGS.repeats} must be at least 1")
  from lth_tf import data, experiment
  xla = config.PAPER[cfg.model]["xla"] if FLAGS.xla is None else FLAGS.xla
  try:
    experiment.setup_tensorflow(FLAGS.threads, seed=cfg.seed, deterministic=FLAGS.deterministic)
    splits = round_overhead.fashion_mnist(FLAGS.manual_dir)
  except (config.ConfigError, data.DatasetUnavailableError) as e:
    fail(str(e))
  print(f"compact_training: {cfg.model} on Fashion-MNIST, --structure=unit masks of rounds "
        f"{','.join(map(str, rounds))} (from θ0's unit norms, seed {cfg.seed}); "
        f"{cfg.iterations} iterations per stage, batch {cfg.batch_size}, {cfg.optimizer} "
        f"{cfg.learning_rate:g}, validation every {cfg.eval_every}; XLA {xla}; deterministic "
        f"ops {FLAGS.deterministic}; {FLAGS.repeats} timed stages per contender and round, "
        f"alternating (ABBA), after one {cfg.eval_every}-iteration stage each to compile; "
        f"intra-op threads {FLAGS.threads or 'all'}", flush=True)
  bench = Bench(cfg, splits, xla)
  rows = []
  for round_ in rounds:
    mask, times, first = run_round(bench, round_, FLAGS.repeats)
    units, weights = remaining(cfg, mask, round_)
    median = {k: statistics.median(v) for k, v in times.items()}
    rows.append((round_, units, weights, median, first, times))
    print(f"round {round_:>2}: {units:6.2f}% units, {weights:6.2f}% weights; masked "
          f"{median['masked']:.3f} s, compact {median['compact']:.3f} s, compact/masked "
          f"{median['compact'] / median['masked']:.3f}", flush=True)
  print(f"\n{'round':>5} {'units %':>8} {'weights %':>9} {'masked s':>9} {'compact s':>9} "
        f"{'compact/masked':>14} {'prep+wb s':>9} {'1st masked':>10} {'1st compact':>11}")
  for round_, units, weights, median, first, _ in rows:
    print(f"{round_:>5} {units:8.2f} {weights:9.2f} {median['masked']:9.3f} "
          f"{median['compact']:9.3f} {median['compact'] / median['masked']:14.3f} "
          f"{median['overhead']:9.3f} {first['masked']:10.2f} {first['compact']:11.2f}")
  print("(s: median RoundResult.seconds of a stage; prep+wb: compact's prepare + write_back, "
        "not in its seconds; 1st: the untimed first stage of one block, incl. compilation)")
  for round_, _, _, _, _, times in rows:
    print(f"round {round_} repeats: masked {', '.join(f'{s:.3f}' for s in times['masked'])}; "
          f"compact {', '.join(f'{s:.3f}' for s in times['compact'])}")
  print(f"compact_training {cfg.model} " + " ".join(
      f"r{round_}={median['compact'] / median['masked']:.3f}"
      for round_, _, _, median, _, _ in rows))


if __name__ == "__main__":
  app.run(main)
