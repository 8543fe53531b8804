"""One training across devices (--strategy): mirrored on 2 logical CPUs, and two workers on
127.0.0.1 training one experiment with multi_worker_mirrored. Each run is a fresh process:
logical devices and the multi-worker runtime must be set up before TensorFlow initialises."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TINY_ARGS, error_line, needs_fashion, run_cli
from lth_tf import artifacts, masks


def test_mirrored_on_two_cpus_trains_one_ticket_on_every_replica(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, str(REPO / "tests" / "distribute_driver.py"),
                         str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  # every stage, every replica: the stage's mask at start and end, pruned weights exactly zero
  # after training, ticket rounds rewound to θ0⊙mask, replicas' trained weights bit-identical
  assert out["checked"] == {"stages": 3, "replica_copies": 18, "resumed": True}
  # the same experiment on one device (no XLA): same masks, losses equal up to reduction order
  mirrored, default = out["mirrored"], out["default"]
  assert [(r["arm"], r["round"]) for r in mirrored] == [(r["arm"], r["round"]) for r in default]
  for a, b in zip(mirrored, default):
    assert a["weights_remaining"] == b["weights_remaining"]
    assert a["early_stop_iteration"] == b["early_stop_iteration"]
    np.testing.assert_allclose(a["early_stop_val_loss"], b["early_stop_val_loss"], rtol=1e-4)
    np.testing.assert_allclose(a["final_test_accuracy"], b["final_test_accuracy"], atol=0.01)
  for arm, r in [("ticket", 1), ("reinit", 1)]:
    a, b = (masks.from_bytes(artifacts.read_bytes(f"{tmp_path}/{run}/{arm}/trial_0/round_{r}/"
                                                  "masks.npz")) for run in ("mirrored", "default"))
    for n in a:
      np.testing.assert_array_equal(a[n], b[n])
  # the ticket exported from mirrored variables loads with no strategy, pruned weights zero
  import tensorflow as tf
  saved = tf.saved_model.load(f"{tmp_path}/mirrored/ticket/trial_0/round_1/ticket")
  kernel = [v for v in saved.variables if v.name.startswith("fc1/kernel")][0].numpy()
  mask = saved.lottery_mask["fc1"].numpy()
  assert np.all(kernel[mask == 0] == 0) and 0.4 < mask.mean() < 0.6


def _free_ports(count):
  socks = [socket.socket() for _ in range(count)]
  for s in socks:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


@needs_fashion
def test_two_workers_train_one_experiment_and_agree(tmp_path):
  cluster = [f"127.0.0.1:{p}" for p in _free_ports(2)]
  procs = []
  for i in range(2):
    tf_config = {"cluster": {"worker": cluster}, "task": {"type": "worker", "index": i}}
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CONFIG=json.dumps(tf_config))
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "lth_tf.main", *TINY_ARGS, "--threads=1",
         "--strategy=multi_worker_mirrored", f"--output_dir={tmp_path}/worker{i}"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
  try:
    errs = [p.communicate(timeout=600)[1] for p in procs]
  finally:
    for p in procs:  # one worker failing leaves the other waiting on a collective
      if p.poll() is None:
        p.kill()
        p.wait()
  assert [p.returncode for p in procs] == [0, 0], [e[-3000:] for e in errs]
  assert "this is worker 0 (the chief)" in errs[0] and "this is worker 1;" in errs[1]
  assert "2 replicas in sync" in errs[0]
  w0, w1 = tmp_path / "worker0", tmp_path / "worker1"
  rows = artifacts.read_results(f"{w0}/results.csv")
  assert [(r["arm"], r["round"]) for r in rows] == [("ticket", 0), ("ticket", 1), ("reinit", 1)]
  assert all(r["final_test_accuracy"] > 0.6 for r in rows)  # it learned (chance: 0.1)
  # one training: both workers hold bit-identical results, masks and weights
  assert (w0 / "results.csv").read_text() == (w1 / "results.csv").read_text()
  for rel in ["ticket/trial_0/theta0.npz"] + [f"{a}/trial_0/round_{r}/{f}"
                                               for a, r in [("ticket", 0), ("ticket", 1),
                                                            ("reinit", 1)]
                                               for f in ("masks.npz", "weights.npz")]:
    assert (w0 / rel).read_bytes() == (w1 / rel).read_bytes(), rel
  flags_cfg = (w0 / "flags.cfg").read_text()
  assert "--strategy=multi_worker_mirrored" in flags_cfg and "--xla=False" in flags_cfg
  assert (w0 / "ticket" / "trial_0" / "round_1" / "ticket" / "saved_model.pb").exists()
  # --strategy is part of the experiment: the folder refuses a rerun on one device
  again = run_cli([*TINY_ARGS, "--threads=1", f"--output_dir={w0}"])
  assert again.returncode == 2
  assert "--strategy=multi_worker_mirrored (now default)" in error_line(again)


@pytest.mark.parametrize("args,named", [
    (["--strategy=mirrored", "--cpu_devices=2", "--batch_size=61"], "--batch_size"),
    (["--strategy=pipeline"], "--strategy"),
    (["--strategy=multi_worker_mirrored", "--executor=ray"], "--executor=ray"),
])
def test_bad_strategy_flags_give_one_line(args, named, tmp_path):
  proc = run_cli(["--model=lenet300_100", *args, f"--output_dir={tmp_path}/x"])
  assert proc.returncode == 2
  assert named in error_line(proc)
  assert not (tmp_path / "x").exists()
