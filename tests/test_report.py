"""The results tables: mean ± std over trials, dense round shared, diverged runs counted."""
from lth_tf import report


def test_table_means_and_diverged_counts(fake_rows):
  rows = fake_rows
  lines = report.table(rows, trials=2).splitlines()
  assert lines[0].startswith("| round | % weights remaining | ticket: early-stop iteration")
  dense = lines[2].split(" | ")
  assert dense[1] == "100.0" and dense[2] == "600 ± 141" and dense[4] == "600 ± 141"
  round2 = lines[4].split(" | ")
  assert round2[2] == "300 ± 0"  # ticket trials 0 and 1 both at 300
  assert round2[4] == "600 (n=1) (1 diverged)"  # reinit trial 1 diverged at round 2
  assert round2[3] == "90.50 ± 0.71"  # 0.91 and 0.90 test accuracy


def _row(arm, trial, rnd, iteration, accuracy, diverged=0):
  return dict(arm=arm, trial=trial, round=rnd, weights_remaining=100 * 0.8 ** rnd,
              early_stop_iteration=iteration, early_stop_test_accuracy=accuracy,
              diverged=diverged)


def test_claims_are_paired_by_trial_with_verdicts():
  rows = [_row("ticket", 0, 0, 1000, 0.90), _row("ticket", 1, 0, 2000, 0.80),
          # round 1: the ticket is faster than its own trial's dense run in both trials
          # (-200, -300) though not faster than the other trial's; accuracy +1 and -1 point
          _row("ticket", 0, 1, 800, 0.91), _row("ticket", 1, 1, 1700, 0.79),
          _row("reinit", 0, 1, 900, 0.85), _row("reinit", 1, 1, 1500, 0.80, diverged=1)]
  lines = report.claims_table(rows).splitlines()
  assert "random_prune" not in lines[0]  # no such arm: its column is left out
  cells = lines[2].split(" | ")
  assert cells[2] == "-250 ± 71 ✓"  # (1) paired: ticket - dense per trial
  assert cells[3] == "0.00 ± 1.41 ~"  # (2) +1 and -1 point: trials disagree
  assert cells[4] == "100 ✓"  # (3) reinit slower; its diverged trial 1 is left out
  assert cells[5].rstrip(" |") == "6.00 ✓"


def test_compare_table_puts_experiments_side_by_side():
  imp = [_row("ticket", 0, 0, 1000, 0.90), _row("ticket", 1, 0, 1200, 0.92),
         _row("ticket", 0, 1, 800, 0.91), _row("ticket", 1, 1, 600, 0.93),
         _row("random_prune", 0, 1, 1500, 0.85), _row("random_prune", 1, 1, 1700, 0.87)]
  snip = [_row("ticket", 0, 0, 1000, 0.90), _row("ticket", 0, 1, 900, 0.88),
          dict(_row("ticket", 0, 2, 700, 0.87), weights_remaining=63.0)]
  lines = report.compare_table([("IMP", imp), ("snip", snip)]).splitlines()
  assert lines[0] == ("| round | % weights remaining | IMP: early-stop iteration | IMP: test "
                      "accuracy (%) | random pruning: early-stop iteration | random pruning: "
                      "test accuracy (%) | snip: early-stop iteration | snip: test accuracy (%) |")
  assert lines[2].split(" | ")[1:] == ["100.0", "1100 ± 141", "91.00 ± 1.41", "–", "–",
                                       "1000 (n=1)", "90.00 |"]
  assert lines[3].split(" | ")[1:] == ["80.0", "700 ± 141", "92.00 ± 1.41", "1600 ± 141",
                                       "86.00 ± 1.41", "900 (n=1)", "88.00 |"]
  # % remaining is the first experiment's: a round only another has shows none
  assert lines[4].split(" | ")[1:] == ["–", "–", "–", "–", "–", "700 (n=1)", "87.00 |"]


def test_report_cli_compare(tmp_path, fake_rows):
  import os
  import subprocess
  import sys
  from conftest import REPO
  from lth_tf import artifacts
  for name in ("a", "b"):
    artifacts.write_results(str(tmp_path / name / "results.csv"), fake_rows)
  run = lambda *args: subprocess.run([sys.executable, "-m", "lth_tf.report", *args], cwd=REPO,
                                     env=dict(os.environ, PYTHONPATH=str(REPO)),
                                     capture_output=True, text=True, timeout=300)
  proc = run("--compare", str(tmp_path / "a"), str(tmp_path / "b"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.startswith("| round | % weights remaining | a: early-stop iteration")
  proc = run("--compare", str(tmp_path / "a"), str(tmp_path / "missing"))
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
      "lth_tf.report: error: --output_dir=")
