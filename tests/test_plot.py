"""Figures of an experiment folder: the plotted numbers, the files, the command line."""
import math
import os
import subprocess
import sys

import pytest

from conftest import REPO
from lth_tf import artifacts, experiment, plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REMAINING = {0: 100.0, 1: 80.0, 2: 64.0, 3: 51.2}
# (arm, trial, round) -> early_stop_iteration; reinit trial 1 round 2 diverges.
ITERATIONS = {
    ("ticket", 0, 0): 500, ("ticket", 0, 1): 400, ("ticket", 0, 2): 300, ("ticket", 0, 3): 300,
    ("ticket", 1, 0): 700, ("ticket", 1, 1): 600, ("ticket", 1, 2): 300, ("ticket", 1, 3): 500,
    ("reinit", 0, 1): 500, ("reinit", 0, 2): 600, ("reinit", 0, 3): 700,
    ("reinit", 1, 1): 700, ("reinit", 1, 2): 100, ("reinit", 1, 3): 900,
}
DIVERGED = {("reinit", 1, 2)}


def fake_row(arm, trial, round_):
  diverged = (arm, trial, round_) in DIVERGED
  return dict(arm=arm, trial=trial, round=round_, weights_remaining=REMAINING[round_],
              early_stop_iteration=ITERATIONS[arm, trial, round_],
              early_stop_val_loss=math.nan if diverged else 0.3,
              early_stop_val_accuracy=0.1 if diverged else 0.9 + 0.01 * round_,
              early_stop_test_accuracy=0.1 if diverged else 0.89 + 0.01 * round_ - 0.01 * trial,
              final_test_accuracy=0.1 if diverged else 0.88, diverged=diverged,
              search_iterations=1000 * round_)


def fake_experiment(output_dir):
  """A finished 2-trial, 3-round ticket + reinit experiment, without training anything."""
  rows = [fake_row(*key) for key in ITERATIONS]
  artifacts.write_bytes(f"{output_dir}/flags.cfg",
                        "--model=lenet300_100\n--dataset=mnist\n--trials=2\n")
  artifacts.write_results(f"{output_dir}/results.csv", rows)
  for row in rows:
    curve = [dict(iteration=i, loss=1.0 / i, accuracy=0.5, val_loss=1.0 / i,
                  val_accuracy=0.8 + i / 1e4, test_loss=1.0 / i, test_accuracy=0.79 + i / 1e4)
             for i in (100, 200, 300)]
    layers = {"fc1": 0.8**row["round"], "fc2": 0.8**row["round"], "output": 0.9**row["round"]}
    artifacts.write_json(
        f"{experiment.stage_dir(output_dir, row['arm'], row['trial'], row['round'])}/metrics.json",
        dict(row, layer_weights_remaining=layers, curve=curve))
  return rows


@pytest.fixture
def experiment_dir(tmp_path):
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
  assert plot.title(plot.read_flags(str(experiment_dir)), rows) == "lenet300_100 on mnist, 2 trials"
  assert plot.title({"model": "conv2", "dataset": "cifar10", "trials": "3"}, rows) == \
      "conv2 on cifar10, 2 of 3 trials"


def test_plot_experiment_writes_every_figure_as_png_and_pdf(experiment_dir):
  paths = plot.plot_experiment(str(experiment_dir))
  expected = [f"{experiment_dir}/plots/{name}.{fmt}" for name in plot.FIGURES
              for fmt in ("png", "pdf")]
  assert sorted(paths) == sorted(expected)
  for path in expected:
    data = artifacts.read_bytes(path)
    assert data.startswith(PNG_MAGIC if path.endswith(".png") else b"%PDF")


def test_importing_plot_next_to_main_defines_no_clashing_flags():
  import lth_tf.main  # noqa: F401  (defines --output_dir too)
  assert plot.plot_experiment  # lth_tf.plot defines its flags only when run as a command


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
