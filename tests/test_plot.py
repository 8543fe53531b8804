"""Figures of an experiment folder: the plotted numbers, the files, the command line."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, fake_experiment, fake_row
from lth_tf import artifacts, config, plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def experiment_dir(tmp_path):
  """conftest's made-up finished experiment (2 trials, rounds 0-3, ticket and reinit)."""
  fake_experiment(str(tmp_path))
  return tmp_path


def test_summarize_means_min_max_skip_diverged_and_share_the_dense_round(experiment_dir):
  rows = artifacts.read_results(f"{experiment_dir}/results.csv")
  got = plot.summarize(rows, "early_stop_iteration")
  assert got == {
      "ticket": [(100.0, 600, 500, 700), (80.0, 500, 400, 600), (64.0, 300, 300, 300),
                 (51.2, 400, 300, 500)],
      # starts at the ticket's dense round 0; round 2 has only trial 0 (trial 1 diverged)
      "reinit": [(100.0, 600, 500, 700), (80.0, 600, 500, 700), (64.0, 600, 600, 600),
                 (51.2, 800, 700, 900)],
  }
  assert plot.diverged_counts(rows) == {"ticket": 0, "reinit": 1}


def test_summarize_drops_a_round_whose_every_trial_diverged():
  rows = [fake_row("ticket", 0, 0), dict(fake_row("ticket", 0, 1), diverged=1)]
  assert plot.summarize(rows, "early_stop_iteration") == {"ticket": [(100.0, 500, 500, 500)]}


def test_pick_rounds_follows_the_papers_figure_3_levels():
  remaining = {r: 100 * 0.8**r for r in range(21)}
  assert plot.pick_rounds(remaining) == [0, 3, 7, 12]  # 100, 51.2, 21.0, 6.9 %
  assert plot.pick_rounds({0: 100.0, 1: 80.0, 2: 64.0}) == [0, 1, 2]


def test_mean_curve_averages_trials_at_each_iteration():
  curves = [[dict(iteration=100, val_accuracy=0.5), dict(iteration=200, val_accuracy=0.7)],
            [dict(iteration=100, val_accuracy=0.7), dict(iteration=200, val_accuracy=0.9)]]
  its, mean = plot.mean_curve(curves, "val_accuracy")
  assert its.tolist() == [100, 200] and mean.tolist() == pytest.approx([0.6, 0.8])


def test_title_names_model_dataset_and_trials(experiment_dir):
  rows = artifacts.read_results(f"{experiment_dir}/results.csv")
  assert plot.title(plot.experiment_config(str(experiment_dir)), rows) == \
      "lenet300_100 on mnist, 2 trials"
  assert plot.title(config.paper_config("conv2", trials=3), rows) == \
      "conv2 on cifar10, 2 of 3 trials"
  assert plot.title(None, rows) == "? on ?, 2 trials"  # flags.cfg gone


def test_plot_experiment_writes_every_figure_as_png_and_pdf(experiment_dir):
  paths = plot.plot_experiment(str(experiment_dir))
  expected = [f"{experiment_dir}/plots/{name}.{fmt}" for name in plot.FIGURES
              for fmt in ("png", "pdf")]
  assert sorted(paths) == sorted(expected)
  for path in expected:
    data = artifacts.read_bytes(path)
    assert data.startswith(PNG_MAGIC if path.endswith(".png") else b"%PDF")


# Imports the modules named on its command line in order, then prints as JSON the flags defined
# by lth_tf's modules that each import added (or the error that stopped it), and, as a control,
# the error lth_tf.plot.define_flags() (what `python -m lth_tf.plot` runs) raises next to main.
IMPORT_IN_ORDER = r"""
import importlib, json, sys
from absl import flags

def ours():
  return {n for n in flags.FLAGS
          if (flags.FLAGS.find_module_defining_flag(n) or "").startswith("lth_tf")}

added, error = {}, None
for name in sys.argv[1:]:
  before = ours()
  try:
    importlib.import_module(name)
  except Exception as e:
    error = f"importing {name}: {type(e).__name__}: {e}"
    break
  added[name] = sorted(ours() - before)
control = None
if error is None:
  from lth_tf import plot
  try:
    plot.define_flags()
  except flags.DuplicateFlagError as e:
    control = str(e)
print(json.dumps(dict(added=added, error=error, control=control)))
"""


def command_line_modules():
  """Every module of lth_tf that runs as a command (calls app.run), lth_tf.main first."""
  package = REPO / "lth_tf"
  names = sorted(".".join(p.relative_to(REPO).with_suffix("").parts)
                 for p in package.rglob("*.py") if "app.run(" in p.read_text())
  return ["lth_tf.main", *[n for n in names if n != "lth_tf.main"]]


def test_importing_plot_next_to_main_defines_no_clashing_flags():
  """lth_tf.plot, and every other command of lth_tf, defines its flags (--output_dir among
  them, as main's) only when run as a command: imported next to lth_tf.main, in a fresh process
  (in this one main may be imported already, and an import is then a no-op), it raises no
  DuplicateFlagError and defines no flag. The control shows the process would tell: the flags
  plot defines as a command clash with main's there."""
  modules = command_line_modules()
  assert {"lth_tf.plot", "lth_tf.report", "lth_tf.export", "lth_tf.study.__main__"} <= set(modules)
  proc = subprocess.run([sys.executable, "-c", IMPORT_IN_ORDER, *modules], cwd=REPO,
                        env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got["error"] is None, got["error"]
  assert "output_dir" in got["added"]["lth_tf.main"]
  assert {m: names for m, names in got["added"].items() if names and m != "lth_tf.main"} == {}
  assert got["control"] and "output_dir" in got["control"], got["control"]


def run_plot_cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "lth_tf.plot", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_plots_an_experiment(experiment_dir):
  result = run_plot_cli(f"--output_dir={experiment_dir}")
  assert result.returncode == 0, result.stderr
  assert (experiment_dir / "plots" / "curves.png").read_bytes().startswith(PNG_MAGIC)


def test_cli_without_results_fails_with_one_line_naming_the_flag(tmp_path):
  result = run_plot_cli(f"--output_dir={tmp_path}")
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  # TensorFlow may log its own start-up lines first; ours is the one last line.
  ours = [line for line in result.stderr.splitlines() if line.startswith("lth_tf.plot:")]
  assert ours == [result.stderr.strip().splitlines()[-1]]
  assert f"--output_dir={tmp_path}" in ours[0] and "results.csv" in ours[0]


def test_compare_overlays_experiments_by_sparsity_and_search_cost(tmp_path):
  a, b = tmp_path / "imp", tmp_path / "snip"
  fake_experiment(str(a))
  fake_experiment(str(b))
  (b / "flags.cfg").write_text("--model=lenet300_100\n--dataset=mnist\n--pruning=snip\n")
  assert plot.compare_label(str(b)) == "snip (snip)" and plot.compare_label(str(a)) == "IMP (imp)"
  written = plot.plot_comparison([str(a), str(b)], str(a))
  assert written == [f"{a}/plots/compare.png", f"{a}/plots/compare.pdf"]
  assert open(written[0], "rb").read(8) == PNG_MAGIC
  proc = run_plot_cli("--compare", str(a), str(tmp_path / "missing"))
  assert proc.returncode == 2 and "results.csv does not exist" in proc.stderr
