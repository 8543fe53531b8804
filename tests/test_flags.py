"""Every flag of lth_tf.main checked before any work: one line naming the flag, exit code 2,
nothing written, and TensorFlow not even imported.

The table feeds each flag its boundary values (zero, negative, huge, the wrong type, names
that do not exist, combinations that cannot work). It runs in-process through the same parser
and main() as the command line, with the first step after validation (starting TensorFlow)
replaced by a failure: a value the checks let through fails its case instead of training. A
few cases also run as real processes.

Below the table: Config.validate, the checks under the flags, names the flag as well; the
flags' defaults resolve to each paper's settings per model; a flags.cfg written before the
optimizer flags existed is still accepted.
"""
import os
import subprocess
import sys

import pytest

from conftest import REPO, error_line, run_cli

HUGE = "999999999999"
LENET = "--model=lenet300_100"

# flag -> [(value, extra flags it needs to matter)]; every value here must be refused.
BAD = {
    "model": [("", ()), ("bogus", ()), ("LeNet", ())],
    "dataset": [("", ()), ("bogus", ()), ("mnist", ("--model=vgg19",))],
    "rounds": [("-1", ()), ("50", ()), (HUGE, ()), ("abc", ()), ("1.5", ())],
    "iterations": [("0", ()), ("-100", ()), ("150", ()), (HUGE, ()), ("abc", ())],
    "batch_size": [("0", ()), ("-1", ()), ("55001", ()), (HUGE, ()), ("abc", ())],
    "learning_rate": [("0", ()), ("-1", ()), ("inf", ()), ("nan", ()), ("abc", ())],
    "optimizer": [("", ()), ("rmsprop", ())],
    "momentum": [("-0.1", ()), ("1", ()), ("nan", ()), ("abc", ())],
    "warmup_iterations": [("-1", ()), ("abc", ())],
    "lr_drops": [("-5", ()), ("x", ()), ("500,300", ()), ("300,300", ())],
    "lr_drop_factor": [("0", ()), ("-1", ()), ("2", ()), ("nan", ()), ("abc", ())],
    "weight_decay": [("-1", ()), ("inf", ()), ("nan", ()), ("abc", ())],
    "eval_every": [("0", ()), ("-1", ()), (HUGE, ()), ("abc", ())],
    "prune_rate_conv": [("-0.1", ("--model=conv2",)), ("1", ()), ("nan", ()), ("abc", ())],
    "prune_rate_fc": [("-0.1", ()), ("1", ()), ("1.5", ()), ("nan", ()), ("abc", ())],
    "prune_rate_output": [("-0.1", ()), ("1", ()), ("nan", ()), ("abc", ())],
    "controls": [("bogus", ()), ("reinit,bogus", ()), ("reinit,reinit", ())],
    "trials": [("0", ()), ("-1", ()), (HUGE, ()), ("abc", ())],
    "same_init": [("maybe", ())],
    "seed": [("-1", ()), (str(2 ** 32), ()), ("abc", ())],
    "initializer": [("", ()), ("zeros", ())],
    "init_scale": [("0", ()), ("-1", ()), ("inf", ()), ("nan", ()), ("abc", ())],
    "pruning": [("", ()), ("magic", ())],
    "score_batches": [("0", ()), ("-1", ()), (HUGE, ("--pruning=snip",)), ("abc", ())],
    "synflow_iterations": [("0", ()), ("-1", ()), ("abc", ())],
    "eb_epsilon": [("0", ()), ("-1", ()), ("1", ()), ("nan", ()), ("abc", ())],
    "eb_window": [("1", ()), ("0", ()), (HUGE, ("--pruning=early_bird",)), ("abc", ())],
    "eb_distance": [("iou", ("--pruning=early_bird",)), ("", ())],
    "prune_rate": [("-0.1", ()), ("1", ()), ("nan", ()), ("abc", ())],
    "global_output_layer": [("maybe", ())],
    "structure": [("4:4", ("--rounds=1",)), ("2-4", ("--rounds=1",)), ("unit:", ()),
                  ("unit", ("--rounds=30",)), ("unit", ("--distribution=erk",)),
                  ("unit", ("--model=vgg19", "--pruning=layerwise", "--dataset=cifar10")),
                  ("2:4", ()), ("2:4", ("--rounds=1", "--pruning=snip")),
                  ("2:4", ("--rounds=1", "--one_shot"))],
    "dst_interval": [("0", ()), ("-1", ()), ("150", ("--pruning=set",)), ("abc", ())],
    "dst_fraction": [("0", ()), ("1", ()), ("-0.1", ()), ("nan", ()), ("abc", ())],
    "dst_end": [("0", ()), ("1.5", ()), ("nan", ()), ("abc", ())],
    "compact_training": [("maybe", ()), ("true", ()), ("true", ("--structure=2:4", "--rounds=1")),
                         ("true", ("--structure=unit", "--strategy=mirrored"))],
    "distribution": [("erk2", ()), ("ERK", ()), ("erk", ("--pruning=global",)),
                     ("erk", ("--global_output_layer",)), ("uniform", ("--rounds=60",))],
    "one_shot": [("maybe", ()), ("true", ("--rewind=none",)), ("true", ("--pruning=snip",))],
    "rewind": [("", ()), ("later", ())],
    "rewind_iteration": [("-1", ()), ("0", ("--rewind=iteration",)),
                         ("150", ("--rewind=iteration",)), (HUGE, ("--rewind=iteration",)),
                         ("abc", ())],
    "test_curve": [("maybe", ())],
    "overwrite": [("maybe", ())],
    "manual_dir": [("/nonexistent/folder", ())],
    "export": [("maybe", ())],
    "checkpoint_every": [("-100", ()), ("150", ()), ("abc", ())],
    "threads": [("-1", ()), (HUGE, ()), ("abc", ())],
    "on_divergence": [("", ()), ("panic", ())],
    "deterministic": [("maybe", ())],
    "xla": [("maybe", ())],
    "strategy": [("", ()), ("tpu", ())],
    "cpu_devices": [("-1", ()), (HUGE, ()), ("abc", ())],
    "executor": [("", ()), ("slurm", ())],
    "ray_cpus_per_task": [("0", ("--executor=ray",)), ("-1", ("--executor=ray",)),
                          (HUGE, ("--executor=ray",)), ("abc", ())],
    "ray_gpus_per_task": [("-1", ("--executor=ray",)), ("inf", ("--executor=ray",)),
                          ("nan", ("--executor=ray",)), ("abc", ())],
}
# Free-form text checked where it is used, each by a test of its own: an unwritable
# --output_dir (test_main), an unreachable --ray_address (test_ray), --data_dir and
# --logdir (any folder TensorFlow can write).
FREE_TEXT = {"output_dir", "data_dir", "logdir", "ray_address"}
# Boundary values that are valid: accepted, never refused.
GOOD = [
    ("rounds", "0", ()), ("rounds", "49", ()), ("seed", "0", ()), ("seed", str(2 ** 32 - 1), ()),
    ("momentum", "0", ()), ("weight_decay", "0", ()), ("warmup_iterations", HUGE, ()),
    ("checkpoint_every", "0", ()), ("threads", "0", ()), ("cpu_devices", "0", ()),
    ("controls", "", ()), ("lr_drops", "", ()), ("prune_rate_fc", "0", ()),
    ("batch_size", "55000", ("--iterations=1000",)), ("iterations", "100", ()),
    ("eb_window", "2", ()),
    ("score_batches", HUGE, ()),  # only read by snip and grasp
    ("rewind_iteration", HUGE, ()),  # only read with --rewind=iteration
    ("rounds", "52", ("--model=conv2", "--dataset=fashion_mnist")),
]


@pytest.fixture
def cli(monkeypatch, capsys):
  """Runs lth_tf.main's parser and main() in-process; returns (exit code, stderr). Past the
  checks, the first step (TensorFlow's start-up) raises instead of starting an experiment."""
  from lth_tf import main

  class Accepted(Exception):
    pass

  def reached(*args, **kwargs):
    raise Accepted()

  monkeypatch.setattr(main.console, "quiet_native_stderr", reached)
  monkeypatch.setattr(main.console, "calm", lambda verbosity: False)

  def run(*args):
    main.FLAGS.unparse_flags()
    capsys.readouterr()
    try:
      main.main(main.parse_flags(["lth_tf.main", *args]))
    except SystemExit as e:
      return e.code, capsys.readouterr().err
    except Accepted:
      return 0, capsys.readouterr().err
    finally:
      main.FLAGS.unparse_flags()
    raise AssertionError("main returned without exiting or starting TensorFlow")
  return run


def test_the_table_covers_every_flag_of_main():
  from lth_tf import main
  ours = {name for name, flag in main.FLAGS._flags().items()
          if flag.name == name and main.FLAGS.find_module_defining_flag(name).startswith("lth_tf")}
  assert ours, "lth_tf.main defines no flags?"
  assert ours == set(BAD) | FREE_TEXT, ours ^ (set(BAD) | FREE_TEXT)


CASES = [(flag, value, extra) for flag, values in BAD.items() for value, extra in values]


@pytest.mark.parametrize("flag,value,extra", CASES,
                         ids=[f"{f}={v[:12]}{'+' if e else ''}" for f, v, e in CASES])
def test_every_bad_value_gets_one_line_naming_the_flag_and_exit_2(cli, tmp_path, flag, value,
                                                                   extra):
  out = tmp_path / "exp"
  out.mkdir()
  (out / "results.csv").write_text("earlier results\n")
  model = () if flag == "model" or any(e.startswith("--model") for e in extra) else (LENET,)
  code, err = cli(*model, *extra, f"--{flag}={value}", f"--output_dir={out}")
  lines = [l for l in err.strip().splitlines() if l.strip()]
  assert code == 2, (code, err[-1500:])
  assert lines and lines[-1].startswith("lth_tf: error: ") and "Traceback" not in err, err
  assert f"--{flag}" in lines[-1], lines[-1]
  assert [p.name for p in out.iterdir()] == ["results.csv"]
  assert (out / "results.csv").read_text() == "earlier results\n"


def test_missing_model_and_stray_arguments(cli, tmp_path):
  code, err = cli(f"--output_dir={tmp_path}/x")
  assert code == 2 and "--model is required" in err
  code, err = cli(LENET, "extra", f"--output_dir={tmp_path}/x")
  assert code == 2 and "unexpected arguments 'extra'" in err
  code, err = cli(LENET, "--no_such_flag=1", f"--output_dir={tmp_path}/x")
  assert code == 2 and "no_such_flag" in err
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag,value,extra", GOOD, ids=[f"{f}={v[:12]}" for f, v, _ in GOOD])
def test_valid_boundary_values_are_accepted(cli, tmp_path, flag, value, extra):
  model = () if any(e.startswith("--model") for e in extra) else (LENET,)
  code, err = cli(*model, *extra, f"--{flag}={value}", f"--output_dir={tmp_path}/x")
  assert code == 0, err[-1500:]


def test_rounds_limit_names_the_layer_and_the_last_round_that_makes_sense(cli, tmp_path):
  """LeNet's fc2 (30,000 weights at 20% per round) keeps round(30000 * 0.8^r) weights: one at
  r = 49, none at 50. The limit is the same arithmetic pruning.keep_count does."""
  from lth_tf import pruning
  assert round(30000 * 0.8 ** 49) == 1 and round(30000 * 0.8 ** 50) == 0
  assert pruning.keep_count(30000, 0.2, 50) == 1  # the floor that would hide it
  code, err = cli(LENET, "--rounds=50", f"--output_dir={tmp_path}/x")
  assert code == 2 and "fc2" in err and "--rounds=49 or fewer" in err
  # one threshold for the pooled layers: their sum decides, at --prune_rate
  code, err = cli(LENET, "--pruning=global", "--prune_rate=0.5", "--rounds=30",
                  f"--output_dir={tmp_path}/x")
  assert code == 2 and "pooled layers fc1..fc2" in err
  last = int(err.split("pass --rounds=")[1].split()[0])
  assert round((784 * 300 + 300 * 100) * 0.5 ** last) >= 1
  assert round((784 * 300 + 300 * 100) * 0.5 ** (last + 1)) == 0


def test_a_tampered_flags_cfg_never_follows_a_nested_flagfile(cli, tmp_path):
  elsewhere = tmp_path / "elsewhere.cfg"
  elsewhere.write_text("--rounds=3\n")
  cfg = tmp_path / "exp" / "flags.cfg"
  cfg.parent.mkdir()
  cfg.write_text(f"{LENET}\n--flagfile={elsewhere}\n")
  code, err = cli(f"--flagfile={cfg}")
  assert code == 2 and str(cfg) in err and "--flagfile" in err
  code, err = cli("--flagfile", str(cfg))
  assert code == 2 and str(cfg) in err
  code, err = cli(f"--flagfile={tmp_path}/missing.cfg")
  assert code == 2 and "missing.cfg" in err.strip().splitlines()[-1]


def test_refusals_in_a_real_process_import_no_tensorflow(tmp_path):
  """The exit code as the shell sees it, and TensorFlow never imported for a bad flag."""
  probe = ("import sys\nfrom lth_tf import main\n"
           "sys.argv = ['lth_tf.main', '--model=lenet300_100', '--rounds=-1']\n"
           "try:\n  main.run()\nexcept SystemExit as e:\n"
           "  print(e.code, 'tensorflow' in sys.modules, 'tf_keras' in sys.modules)\n")
  proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
  assert proc.stdout.split() == ["2", "False", "False"], proc.stderr[-2000:]
  assert "--rounds" in error_line(proc)
  for args, named in [(["--model=conv2", "--prune_rate_conv=1.5"], "--prune_rate_conv"),
                      (["--model=lenet300_100", "--rounds=abc"], "--rounds"),
                      ([f"--flagfile={tmp_path}/none.cfg"], "none.cfg")]:
    proc = run_cli([*args, f"--output_dir={tmp_path}/x"])
    assert proc.returncode == 2 and named in error_line(proc)
  assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("model,fc,output", [("lenet300_100", "0.4", 0.2), ("conv2", "0.3", 0.15),
                                             ("resnet20", "0.4", 0.0)])
def test_output_rate_defaults_to_half_the_fc_rate_given(model, fc, output):
  """The paper's output layer at half the fc rate, from the --prune_rate_fc actually passed
  (the default 0.2 alone could not tell this from a constant 0.1)."""
  from lth_tf import main
  main.FLAGS.unparse_flags()
  try:
    main.FLAGS(["lth_tf.main", f"--model={model}", f"--prune_rate_fc={fc}"])
    assert main.flags_file().config.prune_rate_output == output
    main.FLAGS.unparse_flags()
    main.FLAGS(["lth_tf.main", f"--model={model}", f"--prune_rate_fc={fc}",
                "--prune_rate_output=0.05"])
    assert main.flags_file().config.prune_rate_output == 0.05
  finally:
    main.FLAGS.unparse_flags()


# ---- Config.validate, the checks under the flags, names the flag too --------------------------

def test_config_validation_names_the_flag(tiny_config):
  from lth_tf import config
  # tiny_config validates the Config it builds
  with pytest.raises(config.ConfigError, match="--prune_rate_fc"):
    tiny_config(prune_rate_fc=1.0)
  with pytest.raises(config.ConfigError, match="--iterations"):
    tiny_config(iterations=10)
  with pytest.raises(config.ConfigError, match="--controls"):
    tiny_config(controls=("bogus",))
  with pytest.raises(config.ConfigError, match="--rounds"):
    tiny_config(rounds=-1)


def test_config_rejects_bad_optimizer_settings():
  from lth_tf import config
  base = dict(model="resnet20", dataset="cifar10", rounds=1, iterations=100, batch_size=8,
              learning_rate=0.1, eval_every=10, prune_rate_conv=0.2, prune_rate_fc=0.2,
              prune_rate_output=0.0)
  bad = {"optimizer": dict(optimizer="rmsprop"), "momentum": dict(momentum=1.0),
         "warmup_iterations": dict(warmup_iterations=-1), "lr_drops": dict(lr_drops=(48, 32)),
         "lr_drop_factor": dict(lr_drop_factor=0.0), "weight_decay": dict(weight_decay=-1e-4)}
  for flag, kw in bad.items():
    with pytest.raises(config.ConfigError, match=f"^--{flag}=") as e:
      config.Config(**base, **kw).validate()
    assert "\n" not in str(e.value)
  with pytest.raises(config.ConfigError, match="--model=vgg19"):
    config.Config(**{**base, "model": "vgg19", "dataset": "mnist"}).validate()
  config.Config(**base, lr_drops=(500,), warmup_iterations=500).validate()  # past the end: ok


# ---- the paper's defaults per model, and the optimizer flags on the command line -------------

NEW_FLAGS = ("optimizer", "momentum", "warmup_iterations", "lr_drops", "lr_drop_factor",
             "weight_decay")


@pytest.fixture
def parsed_flags():
  """Parses a command line into lth_tf.main's FLAGS in-process, and unparses it afterwards."""
  from lth_tf import main
  def parse(*args):
    main.FLAGS.unparse_flags()
    main.FLAGS(["lth_tf", *args])
    return main
  yield parse
  from lth_tf import main
  main.FLAGS.unparse_flags()


def test_paper_defaults_and_older_flags_cfg(parsed_flags, tmp_path):
  from lth_tf import artifacts
  main = parsed_flags("--model=resnet20")
  cfg = main.flags_file().config
  assert {k: getattr(cfg, k) for k in ("dataset", "batch_size", "optimizer", "learning_rate",
                                       "momentum", "warmup_iterations", "lr_drops",
                                       "weight_decay", "iterations", "pruning", "prune_rate",
                                       "prune_rate_output", "initializer")} == dict(
      dataset="cifar10", batch_size=128, optimizer="sgd", learning_rate=0.1, momentum=0.9,
      warmup_iterations=0, lr_drops=(32000, 48000), weight_decay=1e-4, iterations=63000,
      pruning="global", prune_rate=0.2, prune_rate_output=0.0, initializer="he_normal")
  assert parsed_flags("--model=vgg19").flags_file().config.warmup_iterations == 10000

  # LeNet keeps the paper's Adam; a flags.cfg written before these flags existed still matches
  main = parsed_flags("--model=lenet300_100", "--iterations=200")
  out = str(tmp_path / "exp")
  recorded = main.flags_file(out)
  cfg = recorded.config
  assert (cfg.optimizer, cfg.lr_drops, cfg.weight_decay, cfg.prune_rate_output,
          cfg.pruning) == ("adam", (), 0.0, 0.1, "layerwise")
  text = recorded.text()
  assert "--optimizer=adam\n" in text and "--lr_drops=\n" in text
  older = "".join(l + "\n" for l in text.splitlines() if not l.startswith(
      tuple(f"--{f}=" for f in NEW_FLAGS)))
  assert len(older.splitlines()) == len(text.splitlines()) - len(NEW_FLAGS)
  artifacts.write_bytes(f"{out}/flags.cfg", older)
  main.check_output_dir(recorded)  # accepted: the new flags at their defaults
  assert artifacts.read_bytes(f"{out}/flags.cfg").decode() == text
  with pytest.raises(main.UserError, match="--weight_decay"):
    other = parsed_flags("--model=lenet300_100", "--iterations=200", "--weight_decay=1e-4")
    other.check_output_dir(other.flags_file(out))


@pytest.mark.parametrize("args,named", [
    (["--model=resnet20", "--optimizer=rmsprop"], "--optimizer"),
    (["--model=resnet20", "--lr_drops=48000,x"], "--lr_drops"),
])
def test_bad_optimizer_flags_give_one_line_naming_the_flag(args, named, tmp_path):
  proc = run_cli([*args, f"--output_dir={tmp_path}/x"])
  assert proc.returncode == 2
  line = [l for l in proc.stderr.strip().splitlines() if l.strip()][-1]
  assert line.startswith("lth_tf: error: ") and named in line, proc.stderr[-2000:]
  assert not (tmp_path / "x").exists()


def test_runtime_settings_are_a_value_of_their_own_and_checked():
  """threads, determinism, XLA, strategy and devices change how, not what, is computed: they
  travel as config.Runtime beside the Config, checked like it."""
  from lth_tf import config
  assert config.Runtime().validate() == config.Runtime(threads=1, deterministic=True, xla=True,
                                                       strategy="default", cpu_devices=0)
  assert not set(config.Runtime.__dataclass_fields__) & set(config.Config.__dataclass_fields__)
  for bad, named in [(dict(threads=0), "--threads"), (dict(threads=10 ** 6), "--threads"),
                     (dict(cpu_devices=-1), "--cpu_devices"), (dict(strategy="tpu"), "--strategy"),
                     (dict(xla="yes"), "--xla"), (dict(strategy="mirrored"), "--xla")]:
    with pytest.raises(config.ConfigError, match=named):
      config.Runtime(**bad).validate()
