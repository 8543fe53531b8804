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
