"""The command line as a user runs it: a real run on Fashion-MNIST, and bad input."""
import os

import pytest

from conftest import TINY_ARGS as TINY
from conftest import REPO, error_line, run_cli
from lth_tf import artifacts


def test_cli_runs_writes_layout_and_refuses_other_flags(cli_experiment):
  out, proc = cli_experiment
  rows = artifacts.read_results(f"{out}/results.csv")
  assert [(r["arm"], r["round"]) for r in rows] == [("ticket", 0), ("ticket", 1), ("reinit", 1)]
  flags_cfg = (out / "flags.cfg").read_text()
  assert "--model=lenet300_100" in flags_cfg and "--prune_rate_output=0.1" in flags_cfg
  assert (out / "plots" / "test_accuracy.png").exists()
  assert "[ticket trial 0 round 1] 80.0" in proc.stderr  # progress: arm, trial, round, % left
  assert "val_accuracy" in proc.stderr
  # a calm console: our progress, the overall line, the by-round table; no start-up or export
  # chatter from TensorFlow, TFDS or the SavedModel writer
  assert "local: 3/3 stages done" in proc.stderr and "| 1 | 80.0 | " in proc.stderr
  for chatter in ("oneDNN", "cuda", "absl::InitializeLog", "Assets written", "fingerprint",
                  "Dl Completed", "Constructing tf.data"):
    assert chatter not in proc.stderr, chatter

  # the same command again: nothing retrained, same results
  again = run_cli([*TINY, f"--output_dir={out}"])
  assert again.returncode == 0 and "early stop at" not in again.stderr
  assert artifacts.read_results(f"{out}/results.csv") == rows

  # a flags.cfg from an older lth_tf, before --prune_rate & co existed: they ran at their
  # defaults, resolved as today (--prune_rate = --prune_rate_fc), so the rerun is accepted
  older = [l for l in flags_cfg.splitlines()
           if not l.startswith(("--prune_rate=", "--global_output_layer=", "--init_scale="))]
  assert len(older) == len(flags_cfg.splitlines()) - 3
  (out / "flags.cfg").write_text("\n".join(older) + "\n")
  again = run_cli([*TINY, f"--output_dir={out}"])
  assert again.returncode == 0, error_line(again)
  assert (out / "flags.cfg").read_text() == flags_cfg

  # different flags into the same dir: refused, naming the flag; nothing lost
  other = run_cli([*TINY, f"--output_dir={out}", "--learning_rate=0.1"])
  assert other.returncode == 2
  assert "--learning_rate" in error_line(other) and "--overwrite" in error_line(other)
  assert artifacts.read_results(f"{out}/results.csv") == rows
  assert (out / "flags.cfg").read_text() == flags_cfg


def test_unwritable_output_dir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  proc = run_cli(["--model=lenet300_100", f"--output_dir={blocker}/exp"])
  assert proc.returncode == 2
  assert "--output_dir" in error_line(proc) and "writable" in error_line(proc)


def test_offline_dataset_names_manual_dir(tmp_path):
  proc = run_cli(["--model=conv2", "--rounds=10", f"--data_dir={tmp_path}/tfds",
                  f"--output_dir={tmp_path}/exp"])
  if proc.returncode == 0:
    pytest.skip("online machine")
  assert proc.returncode == 2
  line = error_line(proc)
  assert "cifar10" in line and "--manual_dir" in line and "--data_dir" in line


def test_conv2_on_cifar10_with_default_flags_trains_and_exports(tmp_path):
  """The headline command's path (--model=conv2: CIFAR-10, determinism on, --xla at its
  default) on TFDS mock data: it trains, prunes, exports, and records --xla=False (XLA
  refuses MaxPool's gradient under op determinism and compiles CPU convolutions slowly)."""
  import subprocess
  import sys
  out = tmp_path / "conv2"
  env = dict(os.environ, PYTHONPATH=str(REPO), MOCK_EXAMPLES="5300")
  proc = subprocess.run(
      [sys.executable, str(REPO / "tests" / "mock_cli.py"), "--model=conv2", "--rounds=1",
       "--iterations=10", "--eval_every=10", "--batch_size=10", "--checkpoint_every=0",
       "--controls=", f"--output_dir={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = artifacts.read_results(f"{out}/results.csv")
  assert [(r["arm"], r["round"]) for r in rows] == [("ticket", 0), ("ticket", 1)]
  flags_cfg = (out / "flags.cfg").read_text()
  assert "--dataset=cifar10" in flags_cfg and "--xla=False" in flags_cfg
  assert "--deterministic=True" in flags_cfg
  assert (out / "ticket" / "trial_0" / "round_1" / "ticket" / "saved_model.pb").exists()
