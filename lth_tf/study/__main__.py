"""Command line of the studies: ``python -m lth_tf.study NAME --output_dir=DIR[,DIR...]``.

  python -m lth_tf.study consistency --output_dir=results/same,results/different [--round=R]
  python -m lth_tf.study properties --output_dir=results/lenet_mnist

NAME is one of lth_tf.study.STUDIES. Errors are one line on stderr, exit code 2.
"""
import sys

from absl import app, flags

from lth_tf.study import STUDIES, folder_problem

FLAGS = flags.FLAGS
USAGE = "python -m lth_tf.study {" + "|".join(STUDIES) + "} --output_dir=<experiment folder>"


def define_flags():
  """Defined only when run as a command, so importing the studies defines no flags."""
  flags.DEFINE_list("output_dir", None, "Experiment folder(s) written by lth_tf.main, "
                    "comma-separated; consistency's figures go to the first one's plots/.")
  flags.DEFINE_integer("round", None, "consistency: the round of the input-connectivity maps "
                       "(default: the last round with both the ticket and random_prune "
                       "finished in trial 0); infoplane: the round whose mask the ticket and "
                       "reinit use (required).")
  flags.DEFINE_integer("iterations", None, "infoplane: training iterations (default: the "
                       "experiment's --iterations).")
  flags.DEFINE_integer("points", 30, "infoplane: log-spaced measurement iterations.")
  flags.DEFINE_integer("subset", 5000, "infoplane: training examples the estimates use.")
  flags.DEFINE_string("estimator", "noisy_kde", "infoplane: noisy_kde (T plus Gaussian noise "
                      "of σ = --sigma × the layer's spread; Kolchinsky & Tracey's bounds), "
                      "adaptive_binning (--bins equal-mass bins per unit), kde (noise variance "
                      "0.1) or binning (--bins equal-width bins; saturates for wide layers).")
  flags.DEFINE_list("sigma", ["0.1", "0.3", "1.0"], "infoplane, noisy_kde: noise levels "
                    "relative to each layer's spread (RMS distance of an example's activations "
                    "from their mean), one figure row each.")
  flags.DEFINE_integer("bins", 30, "infoplane, binning estimators: bins per unit.")
  flags.DEFINE_list("rounds", None, "instability: the rounds to analyse, e.g. 0,3,7,11,15 "
                    "(default: every round); each costs up to three trainings per arm.")
  flags.DEFINE_list("trials", ["0"], "instability: the trials to analyse.")
  flags.DEFINE_list("arms", None, "instability: ticket and/or the folder's controls (default: "
                    "ticket, reinit and random_prune where they ran).")
  flags.DEFINE_integer("path_points", 11, "instability: evenly spaced points of the path "
                       "between the two copies where test error is evaluated (at least 3).")
  flags.DEFINE_integer("rewind_iteration", None, "instability: start the ticket's copies from "
                       "θ_k⊙m, the dense network after k iterations (a multiple of "
                       "--eval_every), instead of the experiment's start.")
  flags.DEFINE_string("data_dir", None, "properties: TFDS data dir (default: the experiment's, "
                      "from its flags.cfg).")
  flags.DEFINE_string("manual_dir", None, "properties: folder of the dataset's original "
                      "archives (default: the experiment's, from its flags.cfg).")
  flags.DEFINE_integer("threads", 0, "TensorFlow intra-op threads (0: all cores; instability: "
                       "the experiment's --threads, so copy A reproduces its stage).")


def fail(message):
  """A user error: one line on stderr, exit code 2 (as lth_tf.main and lth_tf.plot)."""
  print(f"lth_tf.study: error: {message}", file=sys.stderr)
  sys.exit(2)


def main(argv):
  args = argv[1:]
  if not args:
    fail(f"the study NAME is missing; pass one of {', '.join(STUDIES)} first: {USAGE}")
  if len(args) > 1:
    fail(f"unexpected arguments {' '.join(args[1:])!r}; pass one study NAME: {USAGE}")
  name = args[0]
  if name not in STUDIES:
    fail(f"NAME={name!r} is not a study; pass one of {', '.join(STUDIES)}: {USAGE}")
  dirs = [d for d in (FLAGS.output_dir or []) if d]
  if not dirs:
    fail(f"--output_dir is required; pass the folder of an experiment run by lth_tf.main: {USAGE}")
  owners = {"rounds": ("instability",), "trials": ("instability",), "arms": ("instability",),
            "path_points": ("instability",), "rewind_iteration": ("instability",),
            "estimator": ("infoplane",), "sigma": ("infoplane",), "bins": ("infoplane",),
            "points": ("infoplane",), "subset": ("infoplane",), "iterations": ("infoplane",),
            "round": ("consistency", "infoplane")}
  misplaced = [f for f, studies in owners.items() if FLAGS[f].present and name not in studies]
  if misplaced:
    flag = misplaced[0]
    fail(f"--{flag} applies to the {' and '.join(owners[flag])} "
         f"stud{'ies' if len(owners[flag]) > 1 else 'y'} only; drop it"
         + (" (instability takes --rounds)" if flag == "round" else ""))
  if name == "instability":
    if len(dirs) != 1:
      fail("instability needs one --output_dir")
    lists = {}
    for flag in ("rounds", "trials"):
      try:
        lists[flag] = None if FLAGS[flag].value is None else [int(v) for v in FLAGS[flag].value]
      except ValueError:
        fail(f"--{flag}={','.join(FLAGS[flag].value)} is not a list of integers; pass e.g. 0,3,7")
    for flag, values in (("rounds", lists["rounds"]), ("trials", lists["trials"]),
                         ("arms", FLAGS.arms)):
      if values is not None and (not values or len(set(values)) != len(values)):
        fail(f"--{flag}={','.join(map(str, values))} is empty or repeats a value; pass each "
             f"once, e.g. --{flag}={'ticket,reinit' if flag == 'arms' else '0,3,7'}")
    if FLAGS.rewind_iteration is not None and FLAGS.arms is not None and "ticket" not in FLAGS.arms:
      fail("--rewind_iteration changes the ticket's start only; add ticket to --arms or drop it")
  if name == "properties" and FLAGS.round is not None:
    fail("--round applies to the consistency and infoplane studies only; drop it")
  if name == "infoplane" and (FLAGS.round is None or len(dirs) != 1):
    fail("infoplane needs one --output_dir and --round=<a finished round >= 1>")
  if FLAGS.round is not None and FLAGS.round < 0:
    fail(f"--round={FLAGS.round} is negative; pass a finished round (0 or more)")
  if name == "infoplane":
    from lth_tf.study import estimators  # TensorFlow-free
    try:
      sigmas = [float(v) for v in FLAGS.sigma]
    except ValueError:
      fail(f"--sigma={','.join(FLAGS.sigma)} is not a list of numbers; pass e.g. 0.1,0.3,1.0")
    message = estimators.problem(FLAGS.estimator, sigmas, FLAGS.bins)
    if message:
      fail(message)
  for d in dirs:  # local folders are checked before paying for TensorFlow's import
    problem = None if "://" in d else folder_problem(d)
    if problem:
      fail(problem)

  import tensorflow as tf  # heavy: only once the command line is known to be good

  from lth_tf import artifacts, data
  from lth_tf.study import common, consistency, infoplane, instability, properties
  threads = FLAGS.threads
  if name == "instability":  # copy A reproduces the experiment's stage: its threads, its ops
    try:
      runtime = artifacts.read_flags_file(dirs[0]).runtime
    except Exception as e:  # noqa: BLE001  (a bad flags.cfg: one line, as every other error)
      fail(f"--output_dir={dirs[0]}: its flags.cfg cannot be read ({e})")
    threads = threads or runtime.threads
    if runtime.deterministic:
      tf.config.experimental.enable_op_determinism()
  if threads:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
  try:
    if name == "consistency":
      written = consistency.run(dirs, round_=FLAGS.round)
    elif name == "instability":
      written = instability.run(dirs[0], data_dir=FLAGS.data_dir, manual_dir=FLAGS.manual_dir,
                                arms=FLAGS.arms, trials=lists["trials"], rounds=lists["rounds"],
                                points=FLAGS.path_points, rewind_iteration=FLAGS.rewind_iteration)
    elif name == "infoplane":
      written = infoplane.run(dirs[0], FLAGS.round, data_dir=FLAGS.data_dir,
                              manual_dir=FLAGS.manual_dir, iterations=FLAGS.iterations,
                              points=FLAGS.points, subset=FLAGS.subset,
                              estimator=FLAGS.estimator, sigmas=sigmas, bins=FLAGS.bins)
    else:
      written = []
      for d in dirs:
        written += properties.run(d, data_dir=FLAGS.data_dir, manual_dir=FLAGS.manual_dir)
  except common.StudyError as e:
    fail(str(e))
  except (data.DatasetUnavailableError, artifacts.CorruptFileError) as e:
    fail(str(e))
  for path in written:
    print(path)


def parse_flags(argv):
  """absl's parsing with its errors (a value of the wrong type, an unknown flag) as one line
  and exit code 2, like the studies' own refusals."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    fail(f"{first.removeprefix('ERROR:: ')}; see python -m lth_tf.study --helpfull")


def run():
  define_flags()
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
