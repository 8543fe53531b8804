"""lth_tf.tflite_sparse: the storage report is read from the converted flatbuffer (a sparse
kernel and a full one in the same model are told apart, and the interpreter agrees), the
sparse model computes what the dense one and the Keras model do, and it is smaller."""
import numpy as np
import pytest

# conftest imports lth_tf, which sets TF_USE_LEGACY_KERAS before TensorFlow is imported.
pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")

# The rows: Dense kernels are (300, 784) in TFLite, transposed from Keras' (784, 300).
FC1, OUTPUT, CONV = [300, 784], [10, 300], [6, 3, 3, 1]


def _mlp():
  import tf_keras as keras
  x = keras.Input((28, 28, 1), dtype="uint8")
  h = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(x))
  h = keras.layers.Dense(300, activation="relu", name="fc1")(h)
  return keras.Model(x, keras.layers.Dense(10, name="output")(h))


def _conv():
  import tf_keras as keras
  x = keras.Input((28, 28, 1), dtype="uint8")
  h = keras.layers.Conv2D(6, 3, padding="same", name="conv1")(keras.layers.Rescaling(1 / 255)(x))
  h = keras.layers.Flatten()(keras.layers.MaxPooling2D()(h))
  return keras.Model(x, keras.layers.Dense(10, name="output")(h))


def _set_kernels(model, zeros, rng):
  """Gives every layer in ``zeros`` ({layer: fraction}) a random kernel with that fraction of
  its entries exactly zero (at random places), and every other layer one with no zero."""
  for layer in model.layers:
    if not layer.weights:
      continue
    kernel, bias = layer.get_weights()
    kernel = rng.uniform(0.02, 0.1, kernel.shape) * rng.choice([-1, 1], kernel.shape)
    n = int(round(zeros.get(layer.name, 0.0) * kernel.size))
    kernel.reshape(-1)[rng.choice(kernel.size, n, replace=False)] = 0.0
    layer.set_weights([kernel.astype(np.float32), rng.normal(0, 0.1, bias.shape)])


# name -> (builder, {layer: zero fraction}): random CSR + DENSIFY, 1x4 blocks, a conv kernel.
MODELS = {"fc1_95": (_mlp, {"fc1": 0.95}), "fc1_99": (_mlp, {"fc1": 0.99}),
          "conv1_90": (_conv, {"conv1": 0.9})}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """{name: (Keras model, sparse flatbuffer, dense flatbuffer)} of every MODELS entry, each
  saved as a SavedModel and converted once (a conversion takes about a second)."""
  from lth_tf import tflite_sparse
  out = {}
  for i, (name, (build, zeros)) in enumerate(MODELS.items()):
    model = build()
    _set_kernels(model, zeros, np.random.default_rng(i))
    path = str(tmp_path_factory.mktemp(name))
    model.save(path, save_format="tf")
    out[name] = (model, tflite_sparse.convert(path), tflite_sparse.convert(path, sparse=False))
  return out


def _by_shape(storage):
  return {tuple(w["shape"]): w for w in storage}


def _interpreter(flatbuffer, batch=1):
  import tensorflow as tf
  interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=1)
  interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [batch, 28, 28, 1])
  interpreter.allocate_tensors()
  return interpreter


def _run(flatbuffer, x):
  interpreter = _interpreter(flatbuffer, len(x))
  interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
  interpreter.invoke()
  return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_sparse_kernel_reported_sparse_and_full_kernel_dense_in_the_same_model(converted):
  """The converter decides per tensor, and the report must say what it decided: the 95%-zero
  kernel sparse, the full one dense; the same Keras weights converted without the sparsity
  option are all dense (a report from the Keras weights could not tell these apart)."""
  from lth_tf import tflite_sparse
  _, sparse, dense = converted["fc1_95"]
  got = _by_shape(tflite_sparse.weight_storage(sparse))
  assert set(got) == {tuple(FC1), tuple(OUTPUT)}
  assert got[tuple(FC1)]["stored"] == "sparse" and got[tuple(FC1)]["format"].startswith("DENSE,")
  assert got[tuple(OUTPUT)]["stored"] == "dense" and got[tuple(OUTPUT)]["format"] == ""
  assert {w["op"] for w in got.values()} == {"FULLY_CONNECTED"}
  assert got[tuple(FC1)]["zero_fraction"] == pytest.approx(0.95, abs=1e-6)
  assert got[tuple(OUTPUT)]["zero_fraction"] == 0.0
  assert [w["stored"] for w in tflite_sparse.weight_storage(dense)] == ["dense", "dense"]


@pytest.mark.parametrize("name", list(MODELS))
def test_stored_and_densified_agree_with_the_interpreter(converted, name):
  """A second reader of the same flatbuffer, the TFLite interpreter, sees sparsity
  parameters on exactly the tensors reported sparse, and runs a DENSIFY operator for each
  tensor reported densified_at_load (the report follows DENSIFY to the op that uses it)."""
  from lth_tf import tflite_sparse
  _, sparse, _ = converted[name]
  storage = tflite_sparse.weight_storage(sparse)
  interpreter = _interpreter(sparse)
  details = {t["name"]: t for t in interpreter.get_tensor_details()}
  for w in storage:
    assert (w["stored"] == "sparse") == bool(details[w["name"]].get("sparsity_parameters")), w
  ops = [op["op_name"] for op in interpreter._get_ops_details()]
  assert sum(w["densified_at_load"] for w in storage) == ops.count("DENSIFY")
  assert "DENSIFY" not in {w["op"] for w in storage}
  pruned = _by_shape(storage)[tuple(CONV if name.startswith("conv") else FC1)]
  assert pruned["stored"] == "sparse"
  if name == "conv1_90":  # the converter densifies every sparse conv kernel (module docstring)
    assert pruned["op"] == "CONV_2D" and pruned["densified_at_load"]


@pytest.mark.parametrize("name", list(MODELS))
def test_sparse_model_computes_what_the_dense_and_keras_models_do(converted, name):
  model, sparse, dense = converted[name]
  x = np.random.default_rng(7).integers(0, 256, (16, 28, 28, 1)).astype(np.uint8)
  got, want = _run(sparse, x), _run(dense, x)
  keras_logits = model(x, training=False).numpy()
  assert np.allclose(got, want, rtol=1e-5, atol=1e-5), np.abs(got - want).max()
  assert np.allclose(got, keras_logits, rtol=1e-5, atol=1e-5), np.abs(got - keras_logits).max()
  assert (got.argmax(-1) == want.argmax(-1)).all()
  assert (got.argmax(-1) == keras_logits.argmax(-1)).all()


def test_sparse_flatbuffer_of_a_very_sparse_model_is_smaller(converted):
  """fc1 is 94% of the weights; at 95% zeros its values and uint16 indices take under a tenth
  of the dense bytes, so the whole file is well under a quarter of the dense one."""
  _, sparse, dense = converted["fc1_95"]
  assert len(sparse) < len(dense) / 4, (len(sparse), len(dense))


def test_bytes_are_the_stored_buffer_not_the_shape(converted):
  """A sparse tensor's buffer holds its nonzero values only: 4 bytes each, far below shape
  product x 4 even with its index arrays; a dense one holds all of them."""
  from lth_tf import tflite_sparse
  model, sparse, _ = converted["fc1_95"]
  got = _by_shape(tflite_sparse.weight_storage(sparse))
  nonzero = int(np.count_nonzero(model.get_layer("fc1").get_weights()[0]))
  fc1, output = got[tuple(FC1)], got[tuple(OUTPUT)]
  assert fc1["bytes"] == 4 * nonzero < np.prod(FC1) * 4
  assert 0 < fc1["index_bytes"] and fc1["bytes"] + fc1["index_bytes"] < np.prod(FC1) * 4
  assert output["bytes"] == np.prod(OUTPUT) * 4 and output["index_bytes"] == 0


def test_describe_has_a_line_per_tensor_and_the_count(converted):
  from lth_tf import tflite_sparse
  _, sparse, _ = converted["fc1_95"]
  lines = tflite_sparse.describe(tflite_sparse.weight_storage(sparse)).splitlines()
  assert len(lines) == 3
  assert "(FULLY_CONNECTED, 300x784): sparse (DENSE,SPARSE_CSR), densified at load, 47,040 bytes" \
      in lines[0]
  assert "(FULLY_CONNECTED, 10x300): dense, 12,000 bytes" in lines[1]
  assert lines[2] == "2 weight tensors: 1 stored sparse, 1 dense"


@pytest.mark.parametrize("content", [None, "empty", "garbage"])
def test_not_a_saved_model_raises_value_error_naming_the_folder(tmp_path, content):
  from lth_tf import tflite_sparse
  folder = tmp_path / "not_a_model"
  if content is not None:
    folder.mkdir()
  if content == "garbage":
    (folder / "saved_model.pb").write_bytes(b"not a protobuf")
  with pytest.raises(ValueError) as e:
    tflite_sparse.convert(folder)
  assert str(folder) in str(e.value) and "SavedModel" in str(e.value)
  assert "\n" not in str(e.value)
