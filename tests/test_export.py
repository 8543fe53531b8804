"""Exported tickets work without lth_tf: same accuracy as recorded, pruned weights exactly zero,
mask and θ0⊙mask included; the TFLite export computes what the SavedModel does."""
import json
import os
import subprocess
import sys

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
