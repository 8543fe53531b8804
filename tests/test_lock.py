"""The driver lock: one driver per output folder, released on exit and on errors, taken over
from a dead driver of this host, refused while another holds it (in-process and on the
command line)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import TINY_ARGS, error_line, run_cli
from lth_tf import lock


def _write_lock(out, pid, host=None):
  os.makedirs(out, exist_ok=True)
  with open(lock.lock_path(out), "w") as f:
    json.dump(dict(host=host or socket.gethostname(), pid=pid), f)


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_lock_is_exclusive_released_and_taken_over_when_stale(tmp_path):
  out = str(tmp_path / "exp")
  with lock.DriverLock(out) as held:
    mine = json.loads(open(lock.lock_path(out)).read())
    assert (mine["host"], mine["pid"]) == (socket.gethostname(), os.getpid())
    _write_lock(str(tmp_path / "other"), os.getppid())  # a live process
    with pytest.raises(lock.LockHeld, match=rf"held by pid {os.getppid()} "):
      lock.DriverLock(str(tmp_path / "other")).acquire()
    assert held.held
  assert not os.path.exists(lock.lock_path(out))  # released

  _write_lock(out, os.getppid(), host="elsewhere")  # another host: cannot be checked, refused
  with pytest.raises(lock.LockHeld, match="elsewhere"):
    lock.DriverLock(out).acquire()

  _write_lock(out, _dead_pid())  # a dead driver of this host: taken over
  with lock.DriverLock(out):
    assert json.loads(open(lock.lock_path(out)).read())["pid"] == os.getpid()
  assert os.listdir(out) == []  # no debris

  with pytest.raises(RuntimeError):  # released on errors too
    with lock.DriverLock(out):
      raise RuntimeError("boom")
  assert not os.path.exists(lock.lock_path(out))


def test_lock_is_not_released_when_another_driver_holds_it_now(tmp_path):
  out = str(tmp_path)
  held = lock.DriverLock(out).acquire()
  _write_lock(out, os.getppid())  # e.g. taken over meanwhile
  held.release()
  assert json.loads(open(lock.lock_path(out)).read())["pid"] == os.getppid()


def test_second_driver_on_a_locked_dir_is_refused(tmp_path):
  out = tmp_path / "exp"
  _write_lock(str(out), os.getpid())  # this test process: alive
  before = (out / ".lock").read_text()
  proc = run_cli([*TINY_ARGS, f"--output_dir={out}"])
  assert proc.returncode == 2
  line = error_line(proc)
  assert f"{out}/.lock" in line and f"pid {os.getpid()}" in line
  assert (out / ".lock").read_text() == before  # untouched
  assert sorted(os.listdir(out)) == [".lock"]  # and nothing else written
