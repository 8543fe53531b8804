"""The Ray executor: the driver's scheduling, in this process on a stand-in for Ray (stages as
their dependencies finish, one worker per slot, the ticket chain first, failures and
divergence), --executor=ray without Ray, and a real local Ray against the local loop on real
Fashion-MNIST (resuming a local run, a worker SIGKILLed mid-stage, byte-identical results)."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, TINY_ARGS, error_line, needs_fashion, run_cli
from lth_tf import artifacts, config, experiment, layout, stage_graph

try:
  import ray  # noqa: F401
  HAVE_RAY = True
except ImportError:
  HAVE_RAY = False
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="needs ray (pip install 'lth-tf[ray]')")


# ---- the driver's scheduling, on a stand-in for Ray -------------------------------------------

class FakeRay:
  """Just enough of Ray for executor.run_ray: actors live in this process, and a stage given
  to one runs when waited for.

  Checks that every stage is given out only once its dependencies' metrics.json exist, and
  only to an idle worker."""

  def __init__(self, cfg, out, resources=None):
    self.deps, self.out = stage_graph.dependencies(cfg), out
    self.resources = resources or {"CPU": 4.0, "GPU": 1.0}
    self.pending, self.results, self.submitted, self.waves, self.workers = [], {}, [], [], []

  def init(self, **kw):
    self.init_kw = kw

  def shutdown(self):
    self.shut_down = True

  def cluster_resources(self):
    return self.resources

  def nodes(self):
    return [{"Alive": True, "Resources": self.resources}]

  def put(self, value):
    return value

  def remote(self, **opts):
    self.opts, fake = opts, self

    class Actor:
      def __init__(self, instance, init_error=None):
        self.instance, self.busy, self.init_error = instance, False, init_error
        actor = self

        class Run:
          def remote(self, stage):
            assert not actor.busy, "a stage given to a busy worker"
            for d in fake.deps[stage]:
              assert artifacts.exists(f"{layout.stage_dir(fake.out, *d)}/metrics.json"), (
                  stage, d)
            actor.busy = True
            ref = len(fake.submitted)
            fake.submitted.append(stage)
            fake.pending.append((ref, actor, stage))
            return ref
        self.run = Run()

    class ActorClass:
      def remote(self, job):
        try:
          actor = Actor(fake.cls(job))
        except Exception as e:  # noqa: BLE001  (Ray: every call on the actor then fails)
          actor = Actor(None, ActorDiedError(e))
        fake.workers.append(actor)
        return actor

    def wrap(cls):
      self.cls = cls
      return ActorClass()
    return wrap

  def wait(self, refs, num_returns=1):
    self.waves.append(sorted(stage for _, _, stage in self.pending))
    ref, actor, stage = self.pending.pop(0)
    try:
      if actor.init_error:
        raise actor.init_error
      self.results[ref] = (actor.instance.run(stage), None)
    except Exception as e:  # noqa: BLE001
      self.results[ref] = (None, e)
    actor.busy = False
    return [ref], [r for r in refs if r != ref]

  def get(self, ref):
    value, error = self.results.pop(ref)
    if error is not None:
      raise error
    return value


class ActorDiedError(RuntimeError):
  """As Ray raises for calls on an actor whose constructor raised (its text, as Ray 2.x's)."""
  actor_init_failed = True

  def __init__(self, error):
    super().__init__(
        "The actor died because of an error raised in its creation task, \x1b[36mray::"
        "StageWorker.__init__()\x1b[39m (pid=1, ip=127.0.0.1, actor_id=ab)\n  File \"x.py\", "
        f"line 1, in __init__\n    raise\n{type(error).__name__}: {error}\n")


@pytest.fixture
def fake_ray(monkeypatch, splits):
  from lth_tf import executor
  monkeypatch.setattr(executor, "load_splits", lambda *a: splits)
  monkeypatch.setattr(experiment, "setup_tensorflow", lambda *a: None)  # this process's TF is set

  def make(cfg, out, resources=None):
    fake = FakeRay(cfg, out, resources)
    monkeypatch.setitem(sys.modules, "ray", fake)
    return fake
  return make


def _job(cfg, out):
  from lth_tf import executor
  return executor.Job(cfg, out, runtime=config.Runtime(threads=1, xla=False))


def test_ray_driver_runs_stages_as_their_dependencies_finish(tmp_path, splits, fake_ray,
                                                            tiny_config):
  """What the driver and its workers do, in this process: stages in another order than the
  local loop's (trials interleaved), each later stage loading θ_k from disk: same results."""
  from lth_tf import executor
  cfg = tiny_config(rounds=1, trials=2, controls=("reinit", "random_prune"), iterations=40,
             rewind="iteration", rewind_iteration=40)
  local = experiment.run(cfg, str(tmp_path / "local"), splits, jit_compile=False)
  out = str(tmp_path / "ray")
  fake = fake_ray(cfg, out)
  rows = executor.run_ray(_job(cfg, out), cpus_per_task=2, gpus_per_task=0.5)
  assert rows == local
  assert artifacts.read_bytes(f"{out}/results.csv") == artifacts.read_bytes(
      f"{tmp_path}/local/results.csv")
  for arm, t, r in cfg.stages():
    a = artifacts.read_weights(f"{layout.stage_dir(str(tmp_path / 'local'), arm, t, r)}/weights.npz")
    b = artifacts.read_weights(f"{layout.stage_dir(out, arm, t, r)}/weights.npz")
    for n in a:
      np.testing.assert_array_equal(a[n][0], b[n][0])
  assert fake.opts == dict(num_cpus=2, num_gpus=0.5, max_restarts=-1,
                           max_task_retries=executor.MAX_RETRIES)
  assert len(fake.workers) == 2  # min(4 CPUs / 2, 1 GPU / 0.5)
  assert fake.init_kw == dict(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
  assert fake.waves[0] == [("ticket", 0, 0), ("ticket", 1, 0)]  # both trials at once
  assert fake.submitted.index(("ticket", 1, 0)) < fake.submitted.index(("ticket", 0, 1))
  assert sorted(fake.submitted) == sorted(cfg.stages()) and fake.shut_down
  again = fake_ray(cfg, out)  # resume: finished stages are not submitted again
  assert executor.run_ray(_job(cfg, out), address="auto") == local
  assert again.submitted == [] and again.workers == []
  assert again.init_kw == dict(address="auto")


def test_ray_workers_are_one_per_slot_and_reused(tmp_path, splits, fake_ray, tiny_config):
  """At most one worker per stage the cluster trains at once (counted per node), started only
  when a stage is ready for it; a worker runs stage after stage."""
  from lth_tf import executor
  node = lambda cpus, gpus=0, alive=True: {"Alive": alive, "Resources": {"CPU": cpus, "GPU": gpus}}
  assert executor.worker_slots([node(8)], 2, 0) == 4
  assert executor.worker_slots([node(8, 2)], 1, 1) == 2
  assert executor.worker_slots([node(3), node(3), node(64, alive=False)], 2, 0) == 2
  assert executor.worker_slots([node(1)], 2, 0) == 1  # too small: one, which waits
  with pytest.raises(ValueError):
    executor.worker_slots([node(8)], 0, 0)
  cfg = tiny_config(rounds=1, trials=2, controls=("reinit", "random_prune"), iterations=40)
  fake = fake_ray(cfg, str(tmp_path / "a"), resources={"CPU": 3.0})
  executor.run_ray(_job(cfg, str(tmp_path / "a")))
  assert len(fake.workers) == 3 and len(fake.submitted) == 8
  assert max(len(w) for w in fake.waves) <= 3
  chain = tiny_config(rounds=2, trials=1, controls=(), iterations=40)  # one stage at a time
  fake = fake_ray(chain, str(tmp_path / "b"), resources={"CPU": 4.0})
  executor.run_ray(_job(chain, str(tmp_path / "b")))
  assert len(fake.workers) == 1 and len(fake.submitted) == 3


def test_ray_gives_the_ticket_chain_priority_over_controls(tmp_path, fake_ray, tiny_config):
  """With one trial, a free worker takes ticket round r+1 before the controls of round r:
  the chain of ticket rounds is the experiment's critical path."""
  from lth_tf import executor
  cfg = tiny_config(rounds=3, trials=1, controls=("reinit", "random_prune"), iterations=40)
  deps = stage_graph.dependencies(cfg)
  assert executor.critical_path_order(cfg.stages(), deps)[:4] == [
      ("ticket", 0, 0), ("ticket", 0, 1), ("ticket", 0, 2), ("ticket", 0, 3)]
  fake = fake_ray(cfg, str(tmp_path), resources={"CPU": 2.0})
  executor.run_ray(_job(cfg, str(tmp_path)))
  submitted = fake.submitted
  for r in (1, 2):
    assert submitted.index(("ticket", 0, r + 1)) < submitted.index(("random_prune", 0, r))
  assert sorted(submitted) == sorted(cfg.stages())


def test_ray_worker_that_cannot_start_is_one_line(tmp_path, fake_ray, monkeypatch, tiny_config):
  from lth_tf import executor

  def no_data(*args):
    raise config.ConfigError("--dataset=mnist gave images of shape (2,), expected (28, 28, 1)")
  monkeypatch.setattr(executor, "load_splits", no_data)
  cfg = tiny_config(rounds=1, trials=1, controls=(), iterations=40)
  fake_ray(cfg, str(tmp_path))
  with pytest.raises(executor.ExecutorError) as e:
    executor.run_ray(_job(cfg, str(tmp_path)))
  assert str(e.value).startswith(
      "[ticket trial 0 round 0] failed: its worker could not start: ConfigError: --dataset=mnist "
      "gave images of shape (2,), expected (28, 28, 1); 2 stage(s) not run")
  assert "\n" not in str(e.value) and "\x1b" not in str(e.value)


def test_ray_driver_reports_a_failed_stage_and_lets_the_running_ones_finish(tmp_path, fake_ray,
                                                                            tiny_config):
  from lth_tf import executor
  cfg = tiny_config(rounds=1, trials=2, controls=("reinit",), iterations=40)
  out = str(tmp_path)
  artifacts.write_bytes(layout.theta0_path(out, 1), b"garbage")
  fake = fake_ray(cfg, out)
  with pytest.raises(executor.ExecutorError) as e:
    executor.run_ray(_job(cfg, out))
  assert str(e.value).startswith("[ticket trial 1 round 0] failed: ")
  assert "\n" not in str(e.value) and "rerun the same command" in str(e.value)
  # ticket 0/0 had finished and submitted ticket 0/1, which ran to the end; nothing after
  assert fake.submitted == [("ticket", 0, 0), ("ticket", 1, 0), ("ticket", 0, 1)]
  assert [(r["arm"], r["trial"], r["round"]) for r in
          artifacts.read_results(f"{out}/results.csv")] == [("ticket", 0, 0), ("ticket", 0, 1)]


def test_ray_driver_handles_divergence_as_the_local_loop(tmp_path, splits, fake_ray, tiny_config):
  from lth_tf import executor
  cfg = tiny_config(rounds=1, trials=1, controls=("reinit",), learning_rate=1e9, iterations=40)
  local = experiment.run(cfg, str(tmp_path / "local"), splits, jit_compile=False)
  fake = fake_ray(cfg, str(tmp_path / "go"))
  assert executor.run_ray(_job(cfg, str(tmp_path / "go"))) == local  # the trial ends
  assert len(local) == 1 and fake.submitted == [("ticket", 0, 0)]
  fake_ray(cfg, str(tmp_path / "stop"))
  with pytest.raises(experiment.DivergedError, match="--on_divergence"):
    executor.run_ray(_job(cfg, str(tmp_path / "stop")), on_divergence="stop")
  assert artifacts.exists(f"{tmp_path}/stop/results.csv")


def test_executor_ray_without_ray_is_one_line(tmp_path):
  shim = tmp_path / "shim" / "ray"
  shim.mkdir(parents=True)
  (shim / "__init__.py").write_text("raise ImportError('no ray here')\n")
  env = dict(os.environ, PYTHONPATH=f"{shim.parent}{os.pathsep}{REPO}")
  proc = subprocess.run([sys.executable, "-m", "lth_tf.main", "--model=lenet300_100",
                         "--executor=ray", f"--output_dir={tmp_path}/x"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert error_line(proc) == ("lth_tf: error: --executor=ray needs Ray: "
                               "pip install 'lth-tf[ray]'")
  assert not (tmp_path / "x").exists()


# ---- Ray against the local loop on real Fashion-MNIST -----------------------------------------

ARGS = [*TINY_ARGS, "--trials=2", "--controls=reinit", "--threads=1"]


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
  out = tmp_path_factory.mktemp("local") / "exp"
  start = time.perf_counter()
  proc = run_cli([*ARGS, "--executor=local", f"--output_dir={out}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out, time.perf_counter() - start


def _descendants(pid):
  children = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          ppid = int(f.read().rsplit(")", 1)[1].split()[1])
      except (OSError, IndexError, ValueError):
        continue
      children.setdefault(ppid, []).append(int(entry))
  out, todo = [], [pid]
  while todo:
    for child in children.get(todo.pop(), []):
      out.append(child)
      todo.append(child)
  return out


def _cmdline(pid):
  try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
      return f.read().replace(b"\0", b" ").decode(errors="replace")
  except OSError:
    return ""


@needs_fashion
@needs_ray
def test_ray_resumes_a_local_run_survives_killed_workers_and_equals_local_byte_for_byte(
    local_reference, tmp_path):
  """One Ray run (a local Ray of os.cpu_count() CPUs, 1 per stage) that resumes a local run
  interrupted after its first stage, has a worker SIGKILLed mid-stage (Ray reruns the task,
  which resumes from the stage's checkpoint), and ends with the local run's results.csv."""
  ref, local_seconds = local_reference
  out, log = tmp_path / "ray", tmp_path / "log"
  shutil.copytree(ref / "ticket" / "trial_0", out / "ticket" / "trial_0",
                  ignore=shutil.ignore_patterns("round_1"))  # the local run's first stage
  shutil.copy(ref / "flags.cfg", out / "flags.cfg")
  env = dict(os.environ, PYTHONPATH=str(REPO), RAY_DEDUP_LOGS="0")
  start = time.perf_counter()
  with open(log, "w") as f:  # --checkpoint_every does not change results
    proc = subprocess.Popen([sys.executable, "-m", "lth_tf.main", *ARGS, "--checkpoint_every=100",
                             "--executor=ray", f"--output_dir={out}"],
                            cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
  stage = out / "ticket" / "trial_1" / "round_0"
  killed = []
  try:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not killed:
      # the worker training the stage, from its log lines, once the stage has a checkpoint
      worker = re.search(r"\(StageWorker pid=(\d+)\).*\[ticket trial 1 round 0\]", log.read_text())
      # (the index file CheckpointManager reads is written last: a kill before it restarts
      # the stage from its beginning, correctly, but then there is no resume to check)
      if (worker and (stage / "checkpoint" / "checkpoint").exists()
          and not (stage / "metrics.json").exists()):
        pid = int(worker.group(1))
        assert pid in _descendants(proc.pid)  # our driver's own Ray
        assert _cmdline(pid).startswith("ray::StageWorker")
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
      time.sleep(0.02)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  ray_seconds = time.perf_counter() - start
  print(f"\n2 trials x 3 stages: local {local_seconds:.1f} s; ray {ray_seconds:.1f} s "
        f"(5 stages, a worker killed and its stage rerun)")
  text = log.read_text()
  assert killed, text[-3000:]
  assert "ray: 1 of 6 stages already finished" in text
  # the kill comes after a checkpoint (at 100, or 200 on a slow machine) and before metrics.json
  assert re.search(r"\[ticket trial 1 round 0\] resuming from iteration [12]00", text)
  assert "ray: 6/6 stages done (0 running, 0 waiting)" in text
  assert "Traceback" not in text
  assert (out / "results.csv").read_bytes() == (ref / "results.csv").read_bytes()
  for arm, t, r in [("ticket", 1, 0), ("ticket", 1, 1), ("reinit", 1, 1)]:
    a = artifacts.read_weights(f"{layout.stage_dir(str(ref), arm, t, r)}/weights.npz")
    b = artifacts.read_weights(f"{layout.stage_dir(str(out), arm, t, r)}/weights.npz")
    for n in a:
      np.testing.assert_array_equal(a[n][0], b[n][0])
  assert (out / "plots" / "test_accuracy.png").exists()
  assert (out / "tensorboard" / "summary").exists()
  assert (out / "reinit" / "trial_1" / "round_1" / "ticket" / "saved_model.pb").exists()
  assert not (out / ".lock").exists()
