"""One driver per experiment folder: ``<output_dir>/.lock``, holding the driver's host and pid.

Two drivers on one folder would train the same stages twice and race on its files, so a
driver (``lth_tf.main``, with either executor) takes the lock before touching the folder and
a second one is refused. The lock is created exclusively (``O_CREAT | O_EXCL``) on the local
filesystem, which makes it atomic there (and on NFS v3+ and most shared filesystems). On
object stores (``gs://``, ``s3://``: any path with a scheme) there is no exclusive create:
the lock is then advisory, checked and written through ``tf.io.gfile`` with a small window
in which two drivers starting at the same moment could both take it.

A lock left by a driver that died (same host, its pid no longer alive) is taken over with a
warning. The lock is released when the driver exits, on errors too; a lock of another host
cannot be checked and must be deleted by hand if its driver is gone.
"""
import json
import os
import socket
import time
import uuid

from absl import logging

LOCK_NAME = ".lock"


class LockHeld(RuntimeError):
  """Another live driver holds the folder's lock; the message is one line."""


def lock_path(output_dir):
  return f"{output_dir}/{LOCK_NAME}"


def _is_local(path):
  return "://" not in path


def _alive(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


class DriverLock:
  """``with DriverLock(output_dir):`` holds ``<output_dir>/.lock`` for the block."""

  def __init__(self, output_dir):
    self.output_dir, self.path = output_dir, lock_path(output_dir)
    self.info = dict(host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex,
                     started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    self.held = False

  # -- file access: exclusive on the local filesystem, advisory elsewhere
  def _create(self):
    """Creates the lock file with our info; False if it exists already."""
    data = json.dumps(self.info).encode()
    if _is_local(self.path):
      os.makedirs(self.output_dir, exist_ok=True)
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, "wb") as f:
        f.write(data)
      return True
    import tensorflow as tf
    if tf.io.gfile.exists(self.path):
      return False
    tf.io.gfile.makedirs(self.output_dir)
    with tf.io.gfile.GFile(self.path, "wb") as f:
      f.write(data)
    return True

  def _read(self, path=None):
    """The info in the lock file, {} if unreadable (being written), None if it is gone."""
    path = path or self.path
    try:
      if _is_local(path):
        with open(path, "rb") as f:
          text = f.read()
      else:
        import tensorflow as tf
        if not tf.io.gfile.exists(path):
          return None
        with tf.io.gfile.GFile(path, "rb") as f:
          text = f.read()
    except FileNotFoundError:
      return None
    try:
      return json.loads(text)
    except ValueError:
      return {}

  def _remove(self, path=None):
    path = path or self.path
    try:
      if _is_local(path):
        os.remove(path)
      else:
        import tensorflow as tf
        tf.io.gfile.remove(path)
    except (FileNotFoundError, OSError):
      pass

  def _stale(self, held):
    """True if ``held`` is the lock of a dead driver of this host (or of this very process:
    after a container restart a new driver may get the dead one's pid)."""
    if not held or held.get("host") != self.info["host"] or not isinstance(held.get("pid"), int):
      return False
    return held["pid"] == os.getpid() or not _alive(held["pid"])

  def _take_over(self, held):
    """Removes the stale lock ``held``; False if it changed meanwhile (another driver won)."""
    if not _is_local(self.path):
      self._remove()
      return True
    aside = f"{self.path}.stale-{uuid.uuid4().hex[:8]}"
    try:
      os.rename(self.path, aside)  # atomic: of two drivers taking over, one moves the file
    except FileNotFoundError:
      return True
    moved = self._read(aside)
    if moved != held:  # we moved a fresh lock another driver just created: put it back
      try:
        os.link(aside, self.path)
      except FileExistsError:
        pass
      self._remove(aside)
      return False
    self._remove(aside)
    return True

  def acquire(self):
    for _ in range(5):
      if self._create():
        self.held = True
        return self
      held = self._read()
      if held is None:  # released meanwhile: try again
        continue
      if self._stale(held):
        logging.warning("taking over %s: its driver (pid %s on %s) is no longer running",
                        self.path, held["pid"], held["host"])
        self._take_over(held)
        continue
      if held == {}:  # being written this instant
        time.sleep(0.2)
        continue
      break
    held = self._read() or {}
    raise LockHeld(f"{self.path} is held by pid {held.get('pid', '?')} on host "
                   f"{held.get('host', '?')}: another lth_tf driver is running on this "
                   f"--output_dir; wait for it to finish, or delete {self.path} if that "
                   f"driver is gone")

  def ensure(self):
    """Re-creates the lock if the folder was deleted under it (``--overwrite``)."""
    if self.held and self._read() is None:
      self.held = False
      self.acquire()

  def release(self):
    if self.held and self._read() == self.info:
      self._remove()
    self.held = False

  def __enter__(self):
    return self if self.held else self.acquire()

  def __exit__(self, *exc):
    self.release()
    return False
