"""The published results in results/: each folder parses and is what its flagfile asks for.

results/<name>/ must come from flags/<name>.cfg (every flag the preset sets has that value in
the folder's flags.cfg) and its results.csv must hold every (arm, trial, round) the flags
define, each with its metrics.json. A folder still running carries an IN_PROGRESS file saying
so (also shown in results/README.md); then its rows must be a subset of the expected ones.
"""
import math
import pathlib

import pytest

from conftest import REPO
from lth_tf import artifacts

RESULTS = REPO / "results"
PATH_FLAGS = ("output_dir", "manual_dir", "data_dir")  # where, not what
SCRATCH = {"smoke"}  # flags/smoke.cfg's output: gitignored, never published
PUBLISHED = sorted(p.parent for p in RESULTS.glob("*/flags.cfg")
                   if (REPO / "flags" / f"{p.parent.name}.cfg").exists()
                   and p.parent.name not in SCRATCH)


def expected_stages(flags_cfg):
  rounds, trials = int(flags_cfg["rounds"]), int(flags_cfg["trials"])
  controls = [c for c in flags_cfg.get("controls", "").split(",") if c]
  return ({("ticket", t, r) for t in range(trials) for r in range(rounds + 1)}
          | {(c, t, r) for c in controls for t in range(trials) for r in range(1, rounds + 1)})


def test_results_folders_are_published():
  names = {p.name for p in PUBLISHED}
  assert "lenet_fashion_mnist" in names
  unpublished = {p.parent.name for p in RESULTS.glob("*/results.csv")} - names - SCRATCH
  assert not unpublished, f"results without a flags/<name>.cfg preset: {unpublished}"


@pytest.mark.parametrize("folder", PUBLISHED, ids=lambda p: p.name)
def test_results_match_their_flagfile(folder):
  preset = artifacts.parse_flagfile((REPO / "flags" / f"{folder.name}.cfg").read_text())
  recorded = artifacts.parse_flagfile((folder / "flags.cfg").read_text())
  for name, value in preset.items():
    if name not in PATH_FLAGS:
      assert recorded.get(name) == value, f"--{name}: preset {value}, recorded {recorded.get(name)}"
  assert recorded["output_dir"] == f"results/{folder.name}"

  rows = artifacts.read_results(str(folder / "results.csv"))
  assert rows and list(rows[0]) == list(artifacts.RESULT_COLUMNS)
  stages = [(r["arm"], r["trial"], r["round"]) for r in rows]
  assert len(set(stages)) == len(stages), "a stage appears twice"
  expected = expected_stages(recorded)
  if (folder / "IN_PROGRESS").exists():
    assert (folder / "IN_PROGRESS").read_text().strip(), "say why it is in progress"
    assert set(stages) <= expected
  else:
    assert set(stages) == expected, f"missing: {sorted(expected - set(stages))[:5]}"

  ticket_left = {(r["trial"], r["round"]): r["weights_remaining"] for r in rows
                 if r["arm"] == "ticket"}
  for row in rows:
    metrics = artifacts.read_json(str(folder / row["arm"] / f"trial_{row['trial']}" /
                                      f"round_{row['round']}" / "metrics.json"))
    assert metrics["early_stop_test_accuracy"] == row["early_stop_test_accuracy"]
    assert 0 < row["early_stop_test_accuracy"] <= 1 and math.isfinite(row["early_stop_val_loss"])
    assert 0 < row["early_stop_iteration"] <= int(recorded["iterations"])
    if (row["trial"], row["round"]) in ticket_left:  # a control has its ticket's sparsity
      assert row["weights_remaining"] == pytest.approx(ticket_left[row["trial"], row["round"]])
