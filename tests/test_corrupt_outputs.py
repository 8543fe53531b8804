"""Corrupt or tampered outputs (masks.npz, weights.npz, θ0, metrics.json, results.csv,
flags.cfg, checkpoints, exported tickets): one line naming the file, what is wrong and the fix,
never a traceback, nothing else in the folder touched, and never an unpickled array.

Library-level cases cover every kind of file on one tiny synthetic experiment (each case on a
copy); the command-line cases, one per command, use conftest's tiny real CLI experiment.
"""
import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tf_keras as keras

from conftest import REPO, TINY_ARGS, flags_text
from lth_tf import artifacts, config, experiment, fixes, layout, masks, network, plot, stage_graph, training
from lth_tf.study import common, properties

CFG = config.Config(model="lenet300_100", dataset="mnist", rounds=1, iterations=40,
                        batch_size=30, learning_rate=1.2e-3, eval_every=20, prune_rate_conv=0.0,
                        prune_rate_fc=0.5, prune_rate_output=0.25, controls=("reinit",), seed=3)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, splits):
  """A finished experiment (ticket rounds 0-1, reinit round 1, exported tickets), with the
  flags.cfg lth_tf.main would write and a properties study."""
  out = str(tmp_path_factory.mktemp("finished") / "exp")
  experiment.run(CFG, out, splits, export=True)
  artifacts.write_bytes(f"{out}/flags.cfg", flags_text(CFG, out))
  properties.run(out, splits=splits, jit_compile=False)
  return out


class Killed(Exception):
  pass


class StopAt(keras.callbacks.Callback):
  """Stops training at an iteration, as a kill would (no checkpoint saved there)."""

  def __init__(self, iteration):
    super().__init__()
    self.iteration = iteration

  def on_epoch_end(self, epoch, logs=None):
    if logs["iteration"] == self.iteration:
      raise Killed


CKPT_CFG = dataclasses.replace(CFG, rounds=0, controls=(), iterations=60)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, splits):
  """The dense round killed at iteration 40, its checkpoint at 20 on disk."""
  out = str(tmp_path_factory.mktemp("interrupted") / "exp")
  with pytest.raises(Killed):
    experiment.run(CKPT_CFG, out, splits, checkpoint_every=20, callbacks=[StopAt(40)])
  assert os.path.exists(f"{layout.stage_dir(out, 'ticket', 0, 0)}/checkpoint/ckpt-20.index")
  return out


def tree_hashes(root, skip):
  """{relative path: sha256} of every file under ``root`` but ``skip``."""
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      if os.path.abspath(path) != os.path.abspath(skip):
        with open(path, "rb") as f:
          out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


# ---- tampering ---------------------------------------------------------------------------------

class Unpickles:
  """An object that, if ever unpickled, creates the file ``marker`` (np.load must refuse)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def unpickled(path):
  """Whether the object array written into ``path`` was ever unpickled."""
  return os.path.exists(f"{path}.unpickled")


def npz_bytes(**arrays):
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


def garbage(path):
  with open(path, "wb") as f:
    f.write(b"\x00\xffnot what lth_tf wrote" * 20)


def truncate(path):
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def object_array(path):
  with open(path, "wb") as f:
    f.write(npz_bytes(fc1=np.array([Unpickles(f"{path}.unpickled")], dtype=object)))


def edit_npz(change):
  """A tamper that rewrites an npz's arrays with ``change({name: array})``."""
  def tamper(path):
    with np.load(path) as z:
      arrays = {k: z[k] for k in z.files}
    change(arrays)
    with open(path, "wb") as f:
      f.write(npz_bytes(**arrays))
  return tamper


def rename(old, new):
  return edit_npz(lambda a: a.__setitem__(new, a.pop(old)))


def rename_layer(old, new):
  def change(arrays):
    for key in [k for k in arrays if k.startswith(f"{old}/")]:
      arrays[f"{new}/{key.split('/')[1]}"] = arrays.pop(key)
  return change


def reshape(key):
  return edit_npz(lambda a: a.__setitem__(key, a[key].T.copy()))


def halves(a):
  a["fc2"] = a["fc2"] * 0.5


def edit_json(change):
  def tamper(path):
    with open(path) as f:
      value = json.load(f)
    change(value)
    with open(path, "w") as f:
      json.dump(value, f)
  return tamper


def invalid_json(path):
  with open(path, "r+") as f:
    f.truncate(len(f.read()) // 2)


def write_text(text):
  def tamper(path):
    with open(path, "w") as f:
      f.write(text)
  return tamper


# ---- library level: every kind of file --------------------------------------------------------

T0 = "ticket/trial_0"
RETRAIN = "and rerun the experiment's command to retrain that stage"
R1 = f"delete {{out}}/{T0}/round_1 {RETRAIN}"  # its reinit keeps: IMP recomputes the mask
R0 = (f"delete {{out}}/{T0}/round_0 {RETRAIN}; the 2 finished stages built on it (trial 0: "
      f"ticket round 1, reinit round 1) stay valid only if the rerun reproduces this stage bit "
      f"for bit (same machine, libraries and --threads): otherwise delete them too")
REINIT = f"delete {{out}}/reinit/trial_0/round_1 {RETRAIN}"
THETA0_FIX = "delete it: lth_tf redraws θ0 bit for bit from the experiment's seed"
RESULTS_FIX = ("delete it and rerun the experiment's command: lth_tf.main rewrites it from the "
               "stages' metrics.json files, retraining nothing that is finished")
FLAGS_FIX = ("delete it and rerun the exact command that made this experiment: lth_tf.main "
             "writes it again (it is how a later command's flags are checked against the "
             "finished stages)")

# (file, tamper, what reads it, what is wrong, the fix: the message ends with it; {out} is
# the experiment folder)
CASES = [
    (f"{T0}/round_1/masks.npz", garbage, "resume", "not an npz file", R1),
    (f"{T0}/round_1/masks.npz", truncate, "resume", "not a readable npz file: BadZipFile: File "
     "is not a zip file", R1),
    (f"{T0}/round_1/masks.npz", rename("fc1", "fc9"), "resume", "missing layer fc1", R1),
    (f"{T0}/round_1/masks.npz", reshape("fc2"), "study",
     "layer fc2 has shape (100, 300), the model's kernel (300, 100)", R1),
    (f"{T0}/round_1/masks.npz", edit_npz(halves), "resume",
     "layer fc2 has values other than 0 and 1 (e.g. 0.5)", R1),
    (f"{T0}/round_1/masks.npz", object_array, "resume",
     "array 'fc1' holds Python objects, which lth_tf never writes and will not unpickle", R1),
    ("reinit/trial_0/round_1/masks.npz", object_array, "study",
     "array 'fc1' holds Python objects, which lth_tf never writes and will not unpickle", REINIT),
    (f"{T0}/round_1/weights.npz", garbage, "resume", "not an npz file", R1),
    (f"{T0}/round_1/weights.npz", truncate, "study", "not a readable npz file: BadZipFile: File "
     "is not a zip file", R1),
    (f"{T0}/round_1/weights.npz", reshape("fc1/0"), "resume",
     "layer fc1 array 0 has shape (300, 784), the model's is (784, 300)", R1),
    (f"{T0}/round_0/weights.npz", edit_npz(rename_layer("output", "logits")), "study",
     "missing layer output", R0),
    (f"{T0}/round_0/weights.npz", rename("output/1", "output/2"), "study",
     "layer output has arrays [0, 2], not 0 to 1", R0),
    (f"{T0}/round_0/weights.npz", object_array, "study",
     "array 'fc1' holds Python objects, which lth_tf never writes and will not unpickle", R0),
    (f"{T0}/theta0.npz", truncate, "resume", "not a readable npz file: BadZipFile: File is not "
     "a zip file", THETA0_FIX),
    (f"{T0}/theta0.npz", reshape("fc2/0"), "study",
     "layer fc2 array 0 has shape (100, 300), the model's is (300, 100)", THETA0_FIX),
    (f"{T0}/theta0.npz", object_array, "resume",
     "array 'fc1' holds Python objects, which lth_tf never writes and will not unpickle",
     THETA0_FIX),
    (f"{T0}/round_1/metrics.json", invalid_json, "resume", "invalid JSON: JSONDecodeError: ", R1),
    ("reinit/trial_0/round_1/metrics.json", edit_json(lambda m: m.pop("early_stop_test_accuracy")),
     "resume", "missing key early_stop_test_accuracy", REINIT),
    (f"{T0}/round_0/metrics.json", edit_json(lambda m: m.pop("curve")), "plot",
     "missing key curve", R0),
    (f"{T0}/round_1/metrics.json", edit_json(lambda m: m.update(round=0)), "plot",
     "it records [ticket trial 0 round 0], not the stage of its folder", R1),
    (f"{T0}/round_1/metrics.json", edit_json(lambda m: m.update(diverged="no")), "resume",
     'diverged is "no", not a number', R1),
    ("results.csv", truncate, "plot", "line ", RESULTS_FIX),  # ... has k fields, the header 11
    ("results.csv", garbage, "load", "not text: UnicodeDecodeError: 'utf-8' codec can't decode "
     "byte 0xff in position 1: invalid start byte", RESULTS_FIX),
    ("flags.cfg", garbage, "load", "not text: UnicodeDecodeError: 'utf-8' codec can't decode "
     "byte 0xff in position 1: invalid start byte", FLAGS_FIX),
    ("flags.cfg", write_text("--model=lenet300_100\nrounds 2\n"), "load",
     "line 2 is not --name=value: 'rounds 2'", FLAGS_FIX),
    ("study_properties.csv", write_text("round,arm\n1,ticket,extra\n"), "study",
     "its header is not round,weights_remaining,arm,trial,layer,metric,value",
     "delete it: the study computes it again (leaving out the trained-weight metrics of "
     "stages whose weights.npz is gone, which it took from this file)"),
]


def _read(action, out, splits):
  if action == "resume":  # one more round: the ticket's round 1 is pruned into round 2
    experiment.run(dataclasses.replace(CFG, rounds=2), out, splits)
  elif action == "study":
    properties.run(out, splits=splits, jit_compile=False)
  elif action == "plot":
    plot.plot_experiment(out)
  elif action == "load":
    common.load(out)
  else:
    raise ValueError(action)


def check_error(e, path, problem, fix):
  """The one-line message: '<path> is corrupt (<problem ...>); <fix>'."""
  message = str(e)
  assert "\n" not in message, message
  assert message.startswith(f"{path} is corrupt ({problem}"), message
  assert message.endswith(f"); {fix}"), message
  return message


@pytest.mark.parametrize("relpath,tamper,action,problem,fix", CASES,
                         ids=[f"{c[0]}-{c[1].__name__ if hasattr(c[1], '__name__') else 'edit'}-"
                              f"{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_corrupt_file_is_one_line_naming_it_and_the_fix(tmp_path, finished, splits, relpath,
                                                        tamper, action, problem, fix):
  out = str(tmp_path / "exp")
  shutil.copytree(finished, out)
  path = f"{out}/{relpath}"
  tamper(path)
  before = tree_hashes(out, skip=path)
  with pytest.raises(artifacts.CorruptFileError) as e:
    _read(action, out, splits)
  check_error(e.value, path, problem, fix.format(out=out))
  assert isinstance(e.value, ValueError)
  assert not unpickled(path)
  assert tree_hashes(out, skip=path) == before  # nothing written, nothing removed


@pytest.mark.parametrize("relpath,tamper,problem", [
    ("checkpoint", garbage, "(unreadable index: UnicodeDecodeError"),
    ("ckpt-20.data-00000-of-00001", truncate, "ckpt-20 is corrupt (unreadable:"),
    ("progress-20.npz", object_array, "(array 'fc1' holds Python objects"),
    ("progress-20.npz", edit_npz(lambda a: a.pop("w0")), "(best weights are not w0 to"),
    ("progress-20.npz", edit_npz(lambda a: a.__setitem__("w1", a["w1"][:3])),
     "(best weight w1 has shape (3,), the model's (300,))"),
])
def test_corrupt_checkpoint_names_the_folder_to_delete(tmp_path, interrupted, splits, relpath,
                                                       tamper, problem):
  out = str(tmp_path / "exp")
  shutil.copytree(interrupted, out)
  folder = f"{layout.stage_dir(out, 'ticket', 0, 0)}/checkpoint"
  path = f"{folder}/{relpath}"
  tamper(path)
  before = tree_hashes(out, skip=path)
  with pytest.raises(training.CorruptCheckpointError) as e:
    experiment.run(CKPT_CFG, out, splits, checkpoint_every=20)
  message = str(e.value)
  assert isinstance(e.value, artifacts.CorruptFileError) and "\n" not in message
  assert problem in message and folder in message, message
  assert message.endswith(f"delete the folder {folder} to restart this round from its "
                          f"beginning"), message
  assert not unpickled(path)
  assert tree_hashes(out, skip=path) == before


def test_fixes_of_files_the_dense_round_records(tmp_path):
  # θ_k (late resetting) and early_bird.json are recorded during the dense round: its folder
  # goes with them, and an experiment that knows its stages lists those built on that round.
  out = str(tmp_path)
  for name, content in (("theta_100.npz", b"garbage"), ("early_bird.json", b'{"1": "x"}')):
    path = f"{out}/ticket/trial_2/{name}"
    artifacts.write_bytes(path, content)
    with pytest.raises(artifacts.CorruptFileError) as e:
      (artifacts.read_weights if name.endswith(".npz") else artifacts.read_json)(path)
    assert str(e.value).endswith(f"delete it and {out}/ticket/trial_2/round_0, and rerun the "
                                 f"experiment's command: the dense round records it again")
  cfg = dataclasses.replace(CFG, trials=3, pruning="early_bird", eb_window=2)
  for stage in [("ticket", 2, 0), ("ticket", 2, 1), ("reinit", 2, 1)]:
    artifacts.write_json(f"{layout.stage_dir(out, *stage)}/metrics.json", {})
  message = str(fixes.explain(e.value, cfg))
  assert message.endswith("the dense round records it again; the 2 finished stage(s) of trial "
                          "2 built on the dense round stay valid only if the rerun reproduces "
                          "it bit for bit (same machine, libraries and --threads): otherwise "
                          "delete them too"), message
  # an early-bird ticket's mask is the dense round's: both folders go
  mask_error = artifacts.CorruptFileError(f"{layout.stage_dir(out, 'ticket', 2, 1)}/masks.npz",
                                          "not an npz file")
  message = str(fixes.explain(mask_error, cfg))
  assert (f"delete {out}/ticket/trial_2/round_0 and {out}/ticket/trial_2/round_1 and rerun the "
          f"experiment's command to retrain the dense round") in message, message
  weights_error = artifacts.CorruptFileError(
      f"{layout.stage_dir(out, 'ticket', 2, 1)}/weights.npz", "not an npz file")
  assert "(not its masks.npz, which the dense round recorded)" in str(
      fixes.explain(weights_error, cfg))


def test_what_retraining_a_stage_may_change():
  # IMP: later ticket rounds are pruned from its training, and their controls with them; its
  # own round's controls need only its mask, which IMP recomputes exactly.
  cfg = dataclasses.replace(CFG, rounds=3, controls=("reinit", "random_prune"))
  later = stage_graph.changed_by_retraining(cfg, [("ticket", 0, 1)])
  assert later == {(a, 0, r) for r in (2, 3) for a in ("ticket", "reinit", "random_prune")}
  assert stage_graph.changed_by_retraining(cfg, [("reinit", 0, 1)]) == set()
  # SNIP's masks come from TensorFlow: a rerun elsewhere may change them, so the controls go.
  snip = dataclasses.replace(cfg, pruning="snip")
  assert stage_graph.changed_by_retraining(snip, [("ticket", 0, 1)]) == {
      ("reinit", 0, 1), ("random_prune", 0, 1)}


def test_masks_and_weights_files_lth_tf_writes_still_read(finished):
  shapes = {n: s for n, (s, _) in CFG.kernel_shapes().items()}
  mask = artifacts.read_mask(f"{finished}/{T0}/round_1/masks.npz", shapes)
  assert set(mask) == {"fc1", "fc2", "output"} and mask["fc1"].dtype == np.float32
  theta0 = artifacts.read_weights(f"{finished}/{T0}/theta0.npz", network.weight_shapes(CFG))
  assert [a.shape for a in theta0["fc1"]] == [(784, 300), (300,)]
  assert masks.from_bytes(masks.to_bytes(mask)).keys() == mask.keys()


# ---- command line: one case per command ---------------------------------------------------------

def run_module(module, *args):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def cli_error(proc, prefix):
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
  assert lines and lines[-1].startswith(f"{prefix}: error: "), proc.stderr[-3000:]
  return lines[-1][len(f"{prefix}: error: "):]


@pytest.fixture
def cli_copy(tmp_path, cli_experiment):
  """A copy of the tiny CLI experiment, its flags.cfg naming the copy as lth_tf.main would."""
  src, _ = cli_experiment
  out = tmp_path / "exp"
  shutil.copytree(src, out)
  flags_cfg = out / "flags.cfg"
  text = flags_cfg.read_text()
  assert f"--output_dir={src}\n" in text
  flags_cfg.write_text(text.replace(f"--output_dir={src}\n", f"--output_dir={out}\n"))
  return str(out)


def _cli_case(out, relpath, tamper, module, *args):
  path = f"{out}/{relpath}"
  if os.path.isdir(path):
    path = f"{path}/saved_model.pb"
  tamper(path)
  before = tree_hashes(out, skip=path)
  prefix = "lth_tf" if module == "lth_tf.main" else module
  message = cli_error(run_module(module, *args), prefix)
  assert tree_hashes(out, skip=path) == before
  return message


def test_main_reports_a_corrupt_theta0(cli_copy):
  path = f"{cli_copy}/{T0}/theta0.npz"
  message = _cli_case(cli_copy, f"{T0}/theta0.npz", object_array, "lth_tf.main", *TINY_ARGS,
                      f"--output_dir={cli_copy}")
  assert message == (f"{path} is corrupt (array 'fc1' holds Python objects, which lth_tf never "
                     f"writes and will not unpickle); {THETA0_FIX}")


def test_plot_reports_a_corrupt_metrics_json(cli_copy):
  message = _cli_case(cli_copy, f"{T0}/round_1/metrics.json", invalid_json, "lth_tf.plot",
                      f"--output_dir={cli_copy}")
  check_error(message, f"{cli_copy}/{T0}/round_1/metrics.json", "invalid JSON: ",
              R1.format(out=cli_copy))


def test_report_reports_a_corrupt_results_csv(cli_copy):
  message = _cli_case(cli_copy, "results.csv", write_text(
      ",".join(artifacts.RESULT_COLUMNS) + "\nticket,0,0,100.0\n"), "lth_tf.report",
      f"--output_dir={cli_copy}")
  assert message == (f"{cli_copy}/results.csv is corrupt (line 2 has 4 fields, the header 11); "
                     f"delete it and rerun the experiment's command: lth_tf.main rewrites it "
                     f"from the stages' metrics.json files, retraining nothing that is finished")


def test_study_reports_a_mask_that_is_not_0_1(cli_copy):
  message = _cli_case(cli_copy, f"{T0}/round_1/masks.npz", edit_npz(halves), "lth_tf.study",
                      "consistency", f"--output_dir={cli_copy}")
  assert message == (f"{cli_copy}/{T0}/round_1/masks.npz is corrupt (layer fc2 has values "
                     f"other than 0 and 1 (e.g. 0.5)); {R1.format(out=cli_copy)}")


def test_export_reports_a_corrupt_ticket(cli_copy):
  ticket_dir = f"{cli_copy}/{T0}/round_1/ticket"
  message = _cli_case(cli_copy, f"{T0}/round_1/ticket", garbage, "lth_tf.export",
                      f"--ticket={ticket_dir}")
  assert message.startswith(f"{ticket_dir} is corrupt (not a readable SavedModel: OSError: "
                            f"Cannot parse file"), message
  assert (f"delete {cli_copy}/{T0}/round_1 and rerun the experiment's command to retrain and "
          f"export that stage again") in message
