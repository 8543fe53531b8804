"""The Python API (lth_tf.Config, lth_tf.run, lth_tf.load): the README's example run as
written, its folder the command line's, the paper's defaults resolved as the command line
resolves them, and no TensorFlow for a Config."""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

import lth_tf
from lth_tf import config

REPO = pathlib.Path(__file__).resolve().parents[1]
FASHION = REPO.parent / "shared" / "datasets" / "fashion_mnist"
OUTPUT_LINE = 'output_dir = "results/api_example"'  # the README example's folder


def readme_example():
  """The one ```python block of README.md's "Python API" section."""
  text = (REPO / "README.md").read_text(encoding="utf-8")
  assert text.count("\n## Python API\n") == 1
  section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) == 1, "the section should hold one python example"
  assert blocks[0].count(OUTPUT_LINE) == 1, f"the example should set {OUTPUT_LINE}"
  return blocks[0]


# Run after the README's code, in the same process (its names: lth_tf, cfg, output_dir, rows).
PROBE = '''
import json, os, pathlib
from lth_tf import config, main
manual_dir = "../shared/datasets/fashion_mnist"

def mtimes():
  found = sorted(pathlib.Path(output_dir).rglob("metrics.json"))
  return {str(p): p.stat().st_mtime_ns for p in found}

def error(call):
  try:
    call()
  except (config.ConfigError, main.UserError) as e:
    return f"{type(e).__name__}: {e}"
  return None

before = mtimes()
again = lth_tf.run(cfg, output_dir, manual_dir=manual_dir)
after = mtimes()
other_lr = error(lambda: lth_tf.run(lth_tf.Config(model="lenet300_100", dataset="fashion_mnist",
    rounds=1, iterations=200, learning_rate=0.1), output_dir, manual_dir=manual_dir))
other_threads = error(lambda: lth_tf.run(cfg, output_dir + "_threads", manual_dir=manual_dir,
                                         threads=(os.cpu_count() or 1) + 1))
print("PROBE " + json.dumps(dict(rows=rows, again=again, before=before, after=after,
                                 other_lr=other_lr, other_threads=other_threads,
                                 table=lth_tf.table(rows))))
'''


@pytest.mark.skipif(not FASHION.exists(), reason="needs ../shared/datasets/fashion_mnist")
def test_readme_example_runs_resumes_and_leaves_the_command_lines_folder(tmp_path):
  """The README's example as written (in a fresh process, as in a new notebook kernel: the
  thread count can only be set before TensorFlow starts), into ``tmp_path``; then a second
  run, which retrains nothing, and two runs that must be refused."""
  out = tmp_path / "api_example"
  code = readme_example().replace(OUTPUT_LINE, f"output_dir = {str(out)!r}")
  proc = subprocess.run([sys.executable, "-c", code + PROBE], cwd=REPO, capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  probe = json.loads(proc.stdout.split("PROBE ", 1)[1])
  rows = probe["rows"]
  assert [(r["arm"], r["trial"], r["round"]) for r in rows] == [
      ("ticket", 0, 0), ("ticket", 0, 1), ("reinit", 0, 1)]
  assert [r["weights_remaining"] for r in rows] == pytest.approx([100.0, 80.0, 80.0], abs=0.1)
  assert all(0.5 < r["early_stop_test_accuracy"] <= 1 and not r["diverged"] for r in rows)
  assert "| 1 | 80.0 | 200 |" in proc.stdout  # the example prints the by-round table

  # a second run into the folder: the same rows, and no stage trained again
  assert probe["again"] == rows
  assert len(probe["before"]) == 3 and probe["after"] == probe["before"]
  # another experiment into the folder, and another thread count in this process: refused
  assert probe["other_lr"].startswith("UserError") and "--learning_rate" in probe["other_lr"]
  assert "overwrite" in probe["other_lr"]
  assert probe["other_threads"].startswith("ConfigError") and "threads=" in probe["other_threads"]
  assert not (tmp_path / "api_example_threads").exists()

  # read back here: the README's Config and the same rows
  exp = lth_tf.load(out)
  assert exp.config == lth_tf.Config(model="lenet300_100", dataset="fashion_mnist", rounds=1,
                                     iterations=200)
  assert exp.rows == rows and exp.output_dir == str(out)
  assert exp.flags["threads"] == str(os.cpu_count() or 1) and exp.flags["xla"] == "True"
  assert exp.table() == probe["table"]

  # flags.cfg is the command line's for the same flags, and its rerun check accepts the folder
  from lth_tf import main
  main.FLAGS.unparse_flags()
  try:
    main.FLAGS(["lth_tf.main", "--model=lenet300_100", "--dataset=fashion_mnist", "--rounds=1",
                "--iterations=200", "--manual_dir=../shared/datasets/fashion_mnist",
                f"--output_dir={out}"])
    recorded = main.flags_file()
    assert (out / "flags.cfg").read_text() == recorded.text()
    main.check_output_dir(recorded)
  finally:
    main.FLAGS.unparse_flags()


def cli_config(*args):
  """The Config lth_tf.main resolves from ``args``."""
  from lth_tf import main
  main.FLAGS.unparse_flags()
  try:
    main.FLAGS(["lth_tf.main", *args])
    return main.flags_file().config
  finally:
    main.FLAGS.unparse_flags()


def test_config_defaults_are_the_command_lines():
  cfg = lth_tf.Config(model="lenet300_100", dataset="fashion_mnist", rounds=2, iterations=1000)
  assert cfg == cli_config("--model=lenet300_100", "--dataset=fashion_mnist", "--rounds=2",
                           "--iterations=1000")
  assert isinstance(cfg, config.Config) and hash(cfg) == hash(cfg.validate())
  assert (cfg.batch_size, cfg.learning_rate, cfg.optimizer, cfg.prune_rate_fc,
          cfg.prune_rate_output, cfg.pruning, cfg.eval_every, cfg.controls) == (
              60, 1.2e-3, "adam", 0.2, 0.1, "layerwise", 100, ("reinit",))
  for model in config.PAPER:  # every model's paper defaults, dataset and rounds included
    assert lth_tf.Config(model) == cli_config(f"--model={model}"), model
  # settings the defaults follow: the output layer at half the fc rate given, 'imp', lists
  assert lth_tf.Config("conv2", prune_rate_fc=0.3, pruning="imp", controls=["random_prune"],
                       lr_drops=[100]) == cli_config(
      "--model=conv2", "--prune_rate_fc=0.3", "--pruning=imp", "--controls=random_prune",
      "--lr_drops=100")


@pytest.mark.parametrize("settings,named", [
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(rounds=-1), "rounds"),
    (dict(iterations=150), "iterations"),
    (dict(controls=("bogus",)), "controls"),
    (dict(prune_rate_fc="x"), "prune_rate_fc"),
    (dict(lerning_rate=0.1), "lerning_rate"),
    (dict(model="bogus"), "model"),
])
def test_a_bad_setting_raises_config_error_naming_it(settings, named):
  settings = {"model": "lenet300_100", **settings}
  with pytest.raises(config.ConfigError, match=named):
    lth_tf.Config(**settings)


def test_load_resolves_an_older_flags_cfg_as_a_rerun_would(tmp_path):
  """A folder whose flags.cfg predates --prune_rate, --global_output_layer and --init_scale:
  they ran at their defaults, --prune_rate at the fc rate given."""
  from lth_tf import main
  text = "".join(f"--{k}={v}\n" for k, v in [
      ("model", "conv2"), ("dataset", "cifar10"), ("rounds", "3"), ("iterations", "200"),
      ("batch_size", "60"), ("learning_rate", "0.0002"), ("eval_every", "100"),
      ("prune_rate_conv", "0.1"), ("prune_rate_fc", "0.3"), ("prune_rate_output", "0.15"),
      ("controls", "reinit,random_prune"), ("trials", "2"), ("seed", "0"),
      ("initializer", "glorot_normal"), ("test_curve", "False"), ("pruning", "global"),
      ("one_shot", "False"), ("rewind", "init"), ("rewind_iteration", "0"), ("threads", "1"),
      ("output_dir", "results/x")])
  (tmp_path / "flags.cfg").write_text(text)
  exp = lth_tf.load(tmp_path)
  assert exp.rows == []  # no stage finished yet
  assert exp.config == lth_tf.Config("conv2", rounds=3, iterations=200, prune_rate_fc=0.3,
                                     controls=("reinit", "random_prune"), trials=2,
                                     pruning="global")
  assert exp.config.prune_rate == 0.3 and exp.config.init_scale == 0.05
  main.FLAGS.unparse_flags()
  try:  # the command line's flags.cfg of the same experiment reads back to the same Config
    main.FLAGS(["lth_tf.main", "--model=conv2", "--rounds=3", "--iterations=200",
                "--prune_rate_fc=0.3", "--controls=reinit,random_prune", "--trials=2",
                "--pruning=global"])
    (tmp_path / "flags.cfg").write_text(main.flags_file("x").text())
  finally:
    main.FLAGS.unparse_flags()
  assert lth_tf.load(tmp_path).config == exp.config


def test_config_and_refused_arguments_import_no_tensorflow(tmp_path):
  """``import lth_tf`` and ``lth_tf.Config`` stay light, and ``run`` refuses a bad argument
  before TensorFlow starts, writing nothing."""
  probe = (
      "import sys, lth_tf\n"
      "light = not any(m in sys.modules for m in ('lth_tf.config', 'numpy', 'tensorflow'))\n"
      "cfg = lth_tf.Config(model='lenet300_100', dataset='fashion_mnist', rounds=2, "
      "iterations=1000)\n"
      "try:\n"
      f"  lth_tf.run(cfg, {str(tmp_path / 'x')!r}, checkpoint_every=150)\n"
      "except lth_tf.config.ConfigError as e:\n"
      "  print(str(e).split()[0])\n"
      "print(light, 'tensorflow' in sys.modules, 'tf_keras' in sys.modules)\n")
  proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
  assert proc.stdout.split() == ["checkpoint_every=150", "True", "False", "False"], (
      proc.stdout + proc.stderr[-2000:])
  assert not (tmp_path / "x").exists()
