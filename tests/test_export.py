"""Exported tickets work without lth_tf: same accuracy as recorded, pruned weights exactly zero,
mask and θ0⊙mask included; the TFLite export computes what the SavedModel does."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from lth_tf import artifacts, masks

LOAD_WITH_TF_ONLY = r"""
import json, sys
import numpy as np, tensorflow as tf, tensorflow_datasets as tfds
ticket = tf.saved_model.load(sys.argv[1])
x, y = tfds.load("fashion_mnist", split="test", as_supervised=True, batch_size=-1)
logits = ticket.signatures["serving_default"](image=x)["output"].numpy()
kernels = {v.name.split("/")[0]: v.numpy() for v in ticket.variables if v.name.endswith("kernel:0")}
outside = sum(float(np.abs(k[ticket.lottery_mask[n].numpy() == 0]).sum()) for n, k in kernels.items())
init = {n: ws[0].numpy() for n, ws in ticket.lottery_init.items()}
init_outside = sum(float(np.abs(init[n][ticket.lottery_mask[n].numpy() == 0]).sum()) for n in kernels)
print(json.dumps(dict(accuracy=float((logits.argmax(-1) == y.numpy()).mean()), outside=outside,
                      init_outside=init_outside, kept=int(sum(m.numpy().sum() for m in ticket.lottery_mask.values())),
                      logits=logits[:5].tolist())))
"""

LOAD_WITH_TF_KERAS = r"""
import os, sys, json
os.environ["TF_USE_LEGACY_KERAS"] = "1"
import numpy as np, tf_keras, tensorflow_datasets as tfds
model = tf_keras.models.load_model(sys.argv[1])
x, y = tfds.load("fashion_mnist", split="test", as_supervised=True, batch_size=-1)
print(json.dumps(dict(logits=model.predict(x[:5], verbose=0).tolist())))
"""


def _fresh_python(code, *args):
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
  proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                        env=env, cwd="/", timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_exported_ticket_reproduces_recorded_accuracy_in_a_fresh_process(cli_experiment):
  out, _ = cli_experiment
  stage = out / "ticket" / "trial_0" / "round_1"
  metrics = artifacts.read_json(str(stage / "metrics.json"))
  mask = masks.from_bytes(artifacts.read_bytes(str(stage / "masks.npz")))
  got = _fresh_python(LOAD_WITH_TF_ONLY, str(stage / "ticket"))
  assert abs(got["accuracy"] - metrics["final_test_accuracy"]) <= 2e-4
  assert got["outside"] == 0.0 and got["init_outside"] == 0.0
  assert got["kept"] == sum(int(m.sum()) for m in mask.values())
  keras_got = _fresh_python(LOAD_WITH_TF_KERAS, str(stage / "ticket"))
  import numpy as np
  np.testing.assert_allclose(keras_got["logits"], got["logits"], rtol=1e-4, atol=1e-4)


def test_exported_init_is_theta0_times_mask(cli_experiment):
  import tensorflow as tf
  out, _ = cli_experiment
  theta0 = artifacts.read_weights(str(out / "ticket" / "trial_0" / "theta0.npz"))
  stage = out / "ticket" / "trial_0" / "round_1"
  mask = masks.from_bytes(artifacts.read_bytes(str(stage / "masks.npz")))
  loaded = tf.saved_model.load(str(stage / "ticket"))
  import numpy as np
  for n in mask:
    np.testing.assert_array_equal(loaded.lottery_init[n][0].numpy(), theta0[n][0] * mask[n])
    np.testing.assert_array_equal(loaded.lottery_mask[n].numpy(), mask[n])


def test_tflite_export_matches_the_saved_model(cli_experiment, tmp_path):
  import shutil

  import numpy as np
  import tensorflow as tf
  src = cli_experiment[0] / "ticket" / "trial_0" / "round_1" / "ticket"
  ticket_dir = tmp_path / "ticket"
  shutil.copytree(src, ticket_dir)
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, "-m", "lth_tf.export", f"--ticket={ticket_dir}",
                         "--format=tflite"], capture_output=True, text=True, env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]
  interpreter = tf.lite.Interpreter(model_path=str(ticket_dir / "model.tflite"))
  x = np.random.default_rng(0).integers(0, 256, (1, 28, 28, 1)).astype(np.uint8)
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
  interpreter.invoke()
  lite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
  saved = tf.saved_model.load(str(ticket_dir)).signatures["serving_default"](image=x)["output"]
  np.testing.assert_allclose(lite, saved.numpy(), rtol=1e-4, atol=1e-4)


def _export(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.run([sys.executable, "-m", "lth_tf.export", *args], capture_output=True,
                        text=True, env=env, cwd=REPO, timeout=600)


def _files(folder):
  """{relative path: bytes} of every file under ``folder``."""
  return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _one_error_line(proc):
  lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
  assert proc.returncode == 2 and lines[-1].startswith("lth_tf.export: error: "), proc.stderr
  assert "Traceback" not in proc.stderr
  return lines[-1]


@pytest.fixture
def dead_units_copy(cli_experiment, tmp_path):
  """A copy of the tiny experiment whose round-1 ticket has dead units made on purpose: fc1
  units 0-19 with no incoming weight and bias 0.5 (a constant fc2 must take in its bias),
  fc1 units 20-39 with no outgoing weight, pixels 0-99 read by nothing."""
  import shutil
  out = tmp_path / "exp"
  shutil.copytree(cli_experiment[0], out)
  stage = out / "ticket" / "trial_0" / "round_1"
  mask = masks.from_bytes(artifacts.read_bytes(str(stage / "masks.npz")))
  weights = artifacts.read_weights(str(stage / "weights.npz"))
  mask["fc1"][:, :20] = 0
  mask["fc2"][20:40, :] = 0
  mask["fc1"][:100, :] = 0
  weights["fc1"][1][:20] = 0.5
  for n in mask:
    weights[n][0] = weights[n][0] * mask[n]
  artifacts.write_bytes(str(stage / "masks.npz"), masks.to_bytes(mask))
  artifacts.write_weights(str(stage / "weights.npz"), weights)
  return out, stage


def test_compact_export_computes_the_ticket_and_changes_nothing_else(dead_units_copy):
  import numpy as np
  import tensorflow as tf
  out, stage = dead_units_copy
  before = _files(out)
  proc = _export(f"--output_dir={out}", "--round=1", "--format=compact")
  assert proc.returncode == 0, proc.stderr[-3000:]
  after = _files(out)
  assert {k: v for k, v in after.items() if k in before} == before  # nothing changed
  assert all(k.startswith("ticket/trial_0/round_1/compact/") for k in set(after) - set(before))
  report = json.loads((stage / "compact" / "compaction.json").read_text())
  assert report["layers"]["fc1"]["kept"] == 260 and report["layers"]["fc2"]["folded"] == 20
  assert report["layers"]["inputs"] == dict(total=784, kept=684)
  assert report["check"]["predictions_differing"] == 0
  assert "test split (10000 images)" in report["check"]["images"]
  assert report["parameters"]["compact"] < report["parameters"]["masked"]
  # the compact SavedModel and its TFLite file, read without lth_tf, compute the ticket
  x = np.random.default_rng(0).integers(0, 256, (64, 28, 28, 1)).astype(np.uint8)
  compact = tf.saved_model.load(str(stage / "compact")).signatures["serving_default"]
  got = compact(image=tf.constant(x))["output"].numpy()
  from lth_tf import export
  want = export.masked_model(export.stage_network(str(out), 1))(x).numpy()
  np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  interpreter = tf.lite.Interpreter(model_path=str(stage / "compact" / "model.tflite"))
  interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], x.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
  interpreter.invoke()
  lite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
  np.testing.assert_allclose(lite, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_sparse_tflite_export_reports_what_the_converter_stored(dead_units_copy):
  import numpy as np
  import tensorflow as tf
  out, stage = dead_units_copy
  before = _files(out)
  proc = _export(f"--output_dir={out}", "--round=1", "--format=tflite_sparse")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert {k: v for k, v in _files(out).items() if k in before} == before
  storage = json.loads((stage / "tflite_sparse" / "storage.json").read_text())["tensors"]
  # fc1 keeps 80% of 684 rows' weights: 44% zeros -> sparse; fc2 at 80% minus 20 rows: sparse
  assert [t["op"] for t in storage] == ["FULLY_CONNECTED"] * 3
  assert all(t["stored"] in ("sparse", "dense") for t in storage)
  assert "stored sparse" in proc.stdout
  from lth_tf import export
  net = export.stage_network(str(out), 1)
  zeros = {n: 1 - float((m > 0).mean()) for n, m in net.mask.items()}
  for t, name in zip(storage, ("fc1", "fc2", "output")):  # the converter's 30% rule, read back
    assert t["stored"] == ("sparse" if zeros[name] >= 0.3 else "dense"), (t, zeros)
  x = np.random.default_rng(0).integers(0, 256, (1, 28, 28, 1)).astype(np.uint8)
  interpreter = tf.lite.Interpreter(model_path=str(stage / "tflite_sparse" / "model.tflite"))
  interpreter.allocate_tensors()
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
  interpreter.invoke()
  lite = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
  want = export.masked_model(net)(x).numpy()
  np.testing.assert_allclose(lite, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_export_refuses_bad_input_in_one_line_and_writes_nothing(cli_experiment, tmp_path):
  """The command line's three kinds of refusal (the stage, the flags absl parses, the flags
  the export checks) as one line and exit 2; every stage refusal through the library."""
  import shutil

  from lth_tf import export
  out = tmp_path / "exp"
  shutil.copytree(cli_experiment[0], out)
  (out / "ticket" / "trial_0" / "round_0" / "weights.npz").unlink()
  before = _files(out)
  for args, named in [(["--round=7", "--format=compact"], "--round=7: "),
                      (["--round=1", "--format=onnx"], "--format"),
                      (["--format=tflite_sparse"], "needs --output_dir=<experiment folder> and "
                                                   "--round=R")]:
    proc = _export(f"--output_dir={out}", *args)
    assert named in _one_error_line(proc), (args, proc.stderr[-500:])
  for kwargs, named in [(dict(round_=7), "has rounds 0 to 1"),
                        (dict(round_=1, arm="random_prune"), "--arm=random_prune"),
                        (dict(round_=1, trial=3), "--trial=3"),
                        (dict(round_=0), "weights.npz is missing")]:
    with pytest.raises(export.ExportError, match=named):
      export.stage_network(str(out), **kwargs)
  results = (out / "results.csv").read_text().splitlines()
  header = results[0].split(",")
  cells = results[2].split(",")  # ticket round 1
  cells[header.index("diverged")] = "1"
  (out / "results.csv").write_text("\n".join([*results[:2], ",".join(cells), *results[3:]]) + "\n")
  with pytest.raises(export.ExportError, match="diverged"):
    export.stage_network(str(out), 1)
  (out / "results.csv").write_text("\n".join(results) + "\n")
  with pytest.raises(export.ExportError, match="nothing is not a folder"):
    export.stage_network(str(tmp_path / "nothing"), 1)
  assert _files(out) == before


def test_a_model_with_batch_norm_is_refused_by_name():
  from lth_tf import export
  net = export.StageNetwork("somewhere/round_1", "resnet20", (32, 32, 3), {}, {}, "cifar10")
  with pytest.raises(export.ExportError, match="resnet20.*cannot be compacted.*lenet300_100"):
    export.compact_network(net)
