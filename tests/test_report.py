"""The results tables: mean ± std over trials, dense round shared, diverged runs counted."""
from test_plot import ITERATIONS, fake_row
from lth_tf import report


def test_table_means_and_diverged_counts():
  rows = [fake_row(*key) for key in ITERATIONS]
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
