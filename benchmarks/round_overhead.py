"""What one lottery round costs over plain Keras training of the same network.

Users budget experiments in rounds, so a round should cost no more than the fastest plain
Keras fit with the same schedule. In one process, alternating the contenders, median of
``--repeats``:

  plain  the unwrapped model, ``compile(jit_compile=True, steps_per_execution=eval_every)``,
         ``fit`` on a cached, shuffled, batched, prefetched tf.data pipeline, validation
         (batches of 1000) every ``eval_every`` iterations;
  round  what ``experiment._Run.stage`` does per round, minus writing artifacts: rewind the
         TF-MOT-wrapped model to θ0 under a fixed 50%-per-layer magnitude mask, reset the
         optimizer, build the batch table, ``training.train_round`` (validation every
         ``eval_every``, test accuracy at the final and the early-stopping weights), with
         XLA as lth_tf.main uses it by default: on for LeNet, off for Conv-2.

LeNet-300-100 runs on Fashion-MNIST; Conv-2 on random uint8 data shaped like CIFAR-10 (no
CIFAR-10 on this machine; speed does not depend on pixel values). Usage:

  python -m benchmarks.round_overhead --threads=1

The last line is machine-readable: ``round/plain lenet300_100=<ratio> conv2=<ratio>``.
"""
import resource
import statistics
import time

from absl import app, flags

import lth_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from lth_tf import config, data, experiment, layout, masks, models, pruning, ticket, training

FLAGS = flags.FLAGS
MANUAL_DIR = "../shared/datasets/fashion_mnist"
VAL_BATCH = 1000


def define_flags():
  """Flags of this script; not defined on import, so round_stability can reuse its helpers."""
  flags.DEFINE_integer("repeats", 5, "Timed repeats of each contender (median reported).")
  flags.DEFINE_integer("lenet_iterations", 2000, "Iterations per LeNet-300-100 run.")
  flags.DEFINE_integer("conv2_iterations", 200, "Iterations per Conv-2 run.")
  flags.DEFINE_integer("eval_every", 100, "Validate every this many iterations (both).")
  flags.DEFINE_integer("conv2_eval_every", None, "Conv-2's --eval_every (default: "
                       "--eval_every), so that Conv-2 can run fewer iterations than LeNet.")
  flags.DEFINE_integer("batch_size", config.PAPER_BATCH_SIZE, "Batch size (the paper's "
                       "60; smaller only to keep a CI-sized run fast).")
  flags.DEFINE_integer("threads", 1, "TensorFlow intra-op threads, as lth_tf.main's --threads "
                       "(0: all cores). Default 1 so that numbers compare across machines "
                       "and a concurrent experiment keeps its core.")
  flags.DEFINE_bool("deterministic", False, "Enable op determinism (lth_tf.main's default). "
                    "Off here: with it, XLA cannot compile Conv-2's MaxPool gradient "
                    "(UnimplementedError); LeNet's speed is the same either way.")
  flags.DEFINE_string("manual_dir", MANUAL_DIR, "Folder with the Fashion-MNIST archives.")
  flags.DEFINE_list("conv2_sizes", ["50000", "5000", "10000"],
                    "Train,val,test sizes of Conv-2's synthetic CIFAR-shaped data.")
  flags.DEFINE_bool("test_curve", False, "Also evaluate the test set at every evaluation "
                    "in the round, as lth_tf.main --test_curve does.")


def fashion_mnist(manual_dir):
  """Fashion-MNIST with the experiment's validation split."""
  return data.load("fashion_mnist", manual_dir=manual_dir,
                   split_seed=layout.derive_seed(0, "split"))


def cifar_shaped(sizes, seed=0):
  """Random uint8 images 32x32x3 and labels in 0..9, ``sizes`` = (train, val, test)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  parts = []
  for n in sizes:
    parts += [rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
              rng.integers(0, data.NUM_CLASSES, n).astype(np.int64)]
  return data.Splits(*parts)


def forward_macs(model):
  """Multiply-adds of one example's forward pass through the Dense and Conv2D layers (dense)."""
  import numpy as np
  total = 0
  for layer in ticket.weight_layers(model).values():
    kernel = layer.kernel.shape
    if len(kernel) == 4:  # Conv2D: every output position does kh*kw*cin MACs per filter
      total += int(np.prod(layer.output_shape[1:])) * int(np.prod(kernel[:3]))
    else:
      total += int(kernel[0]) * int(kernel[1])
  return total


def magnitude_mask(model, fraction_pruned):
  """The paper's layerwise magnitude mask pruning ``fraction_pruned`` of every layer."""
  kernels = ticket.get_kernels(model)
  sizes = {n: k.size for n, k in kernels.items()}
  targets = pruning.layerwise_targets(sizes, {n: fraction_pruned for n in sizes}, 1)
  return pruning.prune("magnitude", kernels, masks.ones_like(kernels), targets)


class LotteryRound:
  """One wrapped model and one Trainer reused by every round, as experiment._Run keeps them."""

  def __init__(self, model_name, splits, learning_rate, batch_size, eval_every,
               test_curve=False):
    self.model = ticket.wrap(models.build(model_name, splits.train_x.shape[1:]))
    # XLA as lth_tf.main's default for the model (off for Conv-2: see config.PAPER)
    self.trainer = training.Trainer(self.model, learning_rate,
                                    jit_compile=config.PAPER[model_name]["xla"])
    self.rewinder = ticket.RewindCallback(ticket.get_weights(self.model))
    self.train = training.Split.of(splits.train_x, splits.train_y)
    self.val = training.Split.of(splits.val_x, splits.val_y)
    self.test = training.Split.of(splits.test_x, splits.test_y)
    self.num_train, self.batch_size = len(splits.train_x), batch_size
    self.eval_every, self.test_curve = eval_every, test_curve

  def run(self, mask, iterations, seed=0):
    """Rewind under ``mask``, fresh optimizer, batch table, train_round, as _Run.stage does."""
    self.rewinder.rewind(self.model, mask)
    self.trainer.reset_optimizer()
    table = data.batch_indices(self.num_train, self.batch_size, iterations, seed)
    result = training.train_round(self.trainer, self.train, table, self.val, self.test,
                                  self.eval_every, callbacks=[self.rewinder],
                                  test_curve=self.test_curve)
    ticket.apply_masks(self.model)
    return result


def fixed_prefetch(dataset, buffer=2):
  """``dataset`` prefetched into a fixed buffer, with tf.data autotuning off.

  With autotuning on, a ``fit`` of a few seconds often returns only 10.23 s after it began
  (10 ms x (2**10 - 1), the sum of the autotuner's doubling periods), which would bill plain
  Keras for an idle wait; a fixed buffer avoids it and is as fast here.
  """
  import tensorflow as tf
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.prefetch(buffer).with_options(options)


class PlainKeras:
  """The unwrapped model under Keras's fastest fit: XLA, steps_per_execution, tf.data."""

  def __init__(self, model_name, splits, learning_rate, batch_size, eval_every, seed=0):
    import tensorflow as tf
    import tf_keras as keras

    self.model = models.build(model_name, splits.train_x.shape[1:])
    self.model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], jit_compile=True, steps_per_execution=eval_every)
    self.initial = self.model.get_weights()
    self.eval_every = eval_every
    self.train = fixed_prefetch(
        tf.data.Dataset.from_tensor_slices((splits.train_x, splits.train_y)).cache()
        .shuffle(len(splits.train_x), seed=seed).repeat().batch(batch_size, drop_remainder=True))
    self.val = fixed_prefetch(
        tf.data.Dataset.from_tensor_slices((splits.val_x, splits.val_y)).batch(VAL_BATCH).cache())

  def reset(self):
    """θ0 and a zeroed optimizer, so every run trains the same problem (not timed)."""
    import tensorflow as tf
    self.model.set_weights(self.initial)
    for v in self.model.optimizer.variables:
      v.assign(tf.zeros_like(v))

  def run(self, iterations):
    self.model.fit(self.train, steps_per_epoch=self.eval_every,
                   epochs=iterations // self.eval_every, validation_data=self.val, verbose=0)

  def evaluate(self):
    self.model.evaluate(self.val, verbose=0)


def seconds(fn, *args):
  """Wall time of ``fn(*args)``."""
  start = time.perf_counter()
  fn(*args)
  return time.perf_counter() - start


def alternate(plain, round_, mask, iterations, repeats):
  """Per-repeat seconds of each contender; the order flips every repeat (ABBA) against drift."""
  times = {"plain": [], "round": []}

  def time_plain():
    plain.reset()
    times["plain"].append(seconds(plain.run, iterations))

  def time_round():
    times["round"].append(seconds(round_.run, mask, iterations))

  for r in range(repeats):
    for fn in ((time_plain, time_round) if r % 2 == 0 else (time_round, time_plain)):
      fn()
  return times


def median_seconds(fn, calls, *args):
  """Median wall time of ``calls`` calls of ``fn(*args)``, after one untimed call."""
  fn(*args)
  return statistics.median(seconds(fn, *args) for _ in range(calls))


def peak_rss_mb():
  """Peak resident memory of this process so far, in MB (ru_maxrss is in KB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def benchmark(model_name, description, splits, iterations, eval_every, learning_rate):
  """Times both contenders on one network, prints the figures, returns round/plain."""
  repeats, batch = FLAGS.repeats, FLAGS.batch_size
  print(f"\n{model_name} on {description}: {len(splits.train_x)}/{len(splits.val_x)}/"
        f"{len(splits.test_x)} train/val/test, {iterations} iterations, batch {batch}, "
        f"Adam {learning_rate:g}, validation every {eval_every}", flush=True)
  plain = PlainKeras(model_name, splits, learning_rate, batch, eval_every)
  round_ = LotteryRound(model_name, splits, learning_rate, batch, eval_every, FLAGS.test_curve)
  mask = magnitude_mask(round_.model, 0.5)

  plain.reset()
  first_plain = seconds(plain.run, eval_every)
  first_round = seconds(round_.run, mask, eval_every)
  print(f"  first call (one {eval_every}-iteration block incl. XLA compilation): "
        f"plain {first_plain:.2f} s, round {first_round:.2f} s", flush=True)

  times = alternate(plain, round_, mask, iterations, repeats)
  t_plain, t_round = statistics.median(times["plain"]), statistics.median(times["round"])
  calls = max(1, min(3, repeats))
  n_val = iterations // eval_every
  n_test = 2 + (n_val if FLAGS.test_curve else 0)  # final and early-stopping weights
  evals = dict(plain_val=median_seconds(plain.evaluate, calls),
               val=median_seconds(round_.trainer.evaluate, calls, round_.val.x, round_.val.y),
               test=median_seconds(round_.trainer.evaluate, calls, round_.test.x,
                                   round_.test.y))
  report(model_name, iterations, batch, plain.model, t_plain, t_round, times, evals, n_val,
         n_test)
  return t_round / t_plain


def report(model_name, iterations, batch, model, t_plain, t_round, times, evals, n_val, n_test):
  """Prints rates, GFLOP/s, the round's evaluation share and the ratio for one network."""
  macs = forward_macs(model)
  flop = 2 * macs * 3 * batch
  print(f"  FLOP count: 2 x {macs:,} multiply-adds per example forward (Dense+Conv2D, dense) "
        f"x 3 (forward+backward) x batch {batch} = {flop / 1e6:,.1f} MFLOP per iteration; "
        f"evaluation passes not counted")
  for name, t, all_t in (("plain Keras fit", t_plain, times["plain"]),
                         ("lth_tf round  ", t_round, times["round"])):
    print(f"  {name}: {t:9.3f} s  {iterations / t:9.2f} it/s  "
          f"{flop * iterations / t / 1e9:6.2f} GFLOP/s   "
          f"(repeats: {', '.join(f'{x:.3f}' for x in all_t)})")
  val, test, plain_val = n_val * evals["val"], n_test * evals["test"], n_val * evals["plain_val"]
  print(f"  round's evaluations: validation {n_val} x {evals['val'] * 1e3:.1f} ms = {val:.3f} s "
        f"({100 * val / t_round:.1f}% of the round); test {n_test} x "
        f"{evals['test'] * 1e3:.1f} ms = {test:.3f} s ({100 * test / t_round:.1f}%)")
  train_plain, train_round = t_plain - plain_val, t_round - val - test
  print(f"  training alone (time minus measured evaluations; plain's model.evaluate on val: "
        f"{evals['plain_val'] * 1e3:.1f} ms): plain {iterations / train_plain:.2f} it/s, "
        f"round {iterations / train_round:.2f} it/s, round/plain {train_round / train_plain:.3f}")
  print(f"  {model_name} round/plain: {t_round / t_plain:.3f}; without the round's test "
        f"evaluations (plain has none): {(t_round - test) / t_plain:.3f}; "
        f"peak RSS {peak_rss_mb():.0f} MB", flush=True)


def check_flags():
  """Raises app.UsageError for sizes the round cannot run."""
  conv2_every = FLAGS.conv2_eval_every or FLAGS.eval_every
  for name, every in (("lenet_iterations", FLAGS.eval_every),
                      ("conv2_iterations", conv2_every)):
    value = FLAGS[name].value
    if every < 1 or value < every or value % every:
      raise app.UsageError(f"--{name}={value} must be a positive multiple of its eval_every "
                           f"({every})")
  if FLAGS.repeats < 1 or FLAGS.batch_size < 1:
    raise app.UsageError("--repeats and --batch_size must be at least 1")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  check_flags()
  experiment.setup_tensorflow(FLAGS.threads, seed=0, deterministic=FLAGS.deterministic)
  print(f"round_overhead: one process, contenders alternated (ABBA), median of "
        f"{FLAGS.repeats} repeat(s); intra-op threads {FLAGS.threads or 'all'}; "
        f"deterministic ops {FLAGS.deterministic}; first calls excluded from the medians")
  lenet = benchmark("lenet300_100", "Fashion-MNIST", fashion_mnist(FLAGS.manual_dir),
                    FLAGS.lenet_iterations, FLAGS.eval_every,
                    config.PAPER["lenet300_100"]["learning_rate"])
  conv2 = benchmark("conv2", "SYNTHETIC random uint8 CIFAR-shaped (32x32x3) data",
                    cifar_shaped([int(s) for s in FLAGS.conv2_sizes]), FLAGS.conv2_iterations,
                    FLAGS.conv2_eval_every or FLAGS.eval_every,
                    config.PAPER["conv2"]["learning_rate"])
  print(f"round/plain lenet300_100={lenet:.3f} conv2={conv2:.3f}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
