"""TFLite with the converter's sparsity optimization, and how each weight tensor was stored.

Pruning a ticket only pays off on a device if the zeros leave the file. ``convert`` asks the
TFLite converter for ``Optimize.EXPERIMENTAL_SPARSITY``; ``weight_storage`` then reads the
converted flatbuffer itself (never the Keras weights, never an assumption) and reports, per
weight tensor, whether it was stored sparse, in which format, how many bytes, and whether the
runtime expands it to dense before the operator runs (a DENSIFY operator in the graph).

What the TF 2.21 converter does, measured on float32 tf_keras models (Rescaling, Flatten,
Dense(300, relu), Dense(10); and Conv2D(6, 3), MaxPooling2D, Flatten, Dense) with zeros at
random kernel entries: a kernel with up to 29% zeros is kept dense and one with 30% or more is
stored sparse (the converter decides per tensor: in one model a 90%-zero kernel is stored sparse
next to a full one kept dense). Sparse does not mean smaller: values are 4 bytes, each column
index 2 more (uint16), so at 30-31% zeros the file is larger than the dense one (1,004,052 vs
954,620 bytes for LeNet-300-100-like 784-300-10); at 40% it is smaller, at 90% about 15% of it.
From 30% to 95% zeros a Dense kernel is stored as random CSR (DENSE,SPARSE_CSR) and reaches
FULLY_CONNECTED through a DENSIFY operator: the runtime expands it to dense when the model is
loaded, so it saves file size only, not memory nor time. At 97% and 99% the converter chose 1x4
blocks instead (DENSE,SPARSE_CSR,DENSE: enough runs of 4 entries along a row were all zero),
which FULLY_CONNECTED consumes sparse, with no DENSIFY; it then stores the zeros inside kept
blocks (fc1 at 97%: 107,856 value bytes, more than the 94,080 at 90%). Conv2D kernels follow the
same 30% rule (20% dense, 35% sparse) but are stored as DENSE,DENSE,DENSE,SPARSE_CSR and always
go through DENSIFY (35% to 99% zeros); a 6x3x3x1 kernel is so small that its index arrays make
the file larger than dense. The interpreter's outputs matched the dense conversion's and the
Keras model's in every case.
"""
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema

WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_DIM_NAMES = {v: k for k, v in vars(schema.DimensionType).items() if not k.startswith("_")}
# Float weights only: a quantized weight's zero is its zero point, which this does not read.
_DTYPES = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16}
_INDEX_VECTORS = {schema.SparseIndexVector.Int32Vector: (schema.Int32Vector, 4),
                  schema.SparseIndexVector.Uint16Vector: (schema.Uint16Vector, 2),
                  schema.SparseIndexVector.Uint8Vector: (schema.Uint8Vector, 1)}


def convert(saved_model_dir, sparse=True):
  """The TFLite flatbuffer (bytes) of the SavedModel in ``saved_model_dir``; with ``sparse``
  the converter may store weight tensors sparse (it decides per tensor: see weight_storage).
  ValueError (one line naming the folder) if the folder is not a readable SavedModel."""
  converter = _converter(str(saved_model_dir))
  if sparse:
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
  return converter.convert()


def _converter(saved_model_dir):
  """A converter for ``saved_model_dir``, with the converter's own errors (a traceback about
  loader internals) turned into one line that says what was expected."""
  expected = "expected a SavedModel folder with saved_model.pb, as model.save(dir) writes"
  if not tf.io.gfile.isdir(saved_model_dir) or \
      not tf.saved_model.contains_saved_model(saved_model_dir):
    raise ValueError(f"{saved_model_dir} is not a SavedModel: {expected}")
  try:
    return tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
  except Exception as e:  # a corrupt saved_model.pb: OSError, DecodeError, ...
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"{saved_model_dir} is not a readable SavedModel ({first}): "
                     f"{expected}") from None


def weight_storage(tflite_bytes):
  """One dict per constant weight tensor of a weight operator (WEIGHT_OPS) in the flatbuffer
  ``tflite_bytes``: name, op, shape, stored ("sparse"/"dense"), format, densified_at_load,
  bytes (of its buffer: the values only; a sparse tensor's index arrays are index_bytes),
  index_bytes and zero_fraction (None unless the weights are float32 or float16).

  A sparse weight may reach its operator through a DENSIFY operator; it is reported under
  the operator that consumes the densified tensor, with densified_at_load True."""
  model = schema.Model.GetRootAs(tflite_bytes, 0)
  codes = [_op_name(model.OperatorCodes(i)) for i in range(model.OperatorCodesLength())]
  found = []
  for s in range(model.SubgraphsLength()):
    found += _subgraph_weights(model, model.Subgraphs(s), codes, tflite_bytes)
  return found


def _op_name(code):
  """The builtin operator name of an OperatorCode. Codes above 127 live in BuiltinCode only,
  older files fill only DeprecatedBuiltinCode; the larger of the two is the real one."""
  value = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
  return _OP_NAMES.get(value, f"BUILTIN_{value}")


def _subgraph_weights(model, graph, codes, tflite_bytes):
  """weight_storage for one subgraph; a weight shared by two operators is reported once."""
  ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
  producer = {int(t): op for op in ops for t in op.OutputsAsNumpy()}
  found, seen = [], set()
  for op in ops:
    name = codes[op.OpcodeIndex()]
    if name not in WEIGHT_OPS or op.InputsLength() < 2 or op.Inputs(1) < 0:
      continue
    index, densified = op.Inputs(1), False
    feeder = producer.get(index)
    if feeder is not None and codes[feeder.OpcodeIndex()] == "DENSIFY":
      index, densified = feeder.Inputs(0), True
    data = _buffer_data(model, graph.Tensors(index), tflite_bytes)
    if data is None or index in seen:
      continue
    seen.add(index)
    found.append(_describe_tensor(graph.Tensors(index), name, densified, data))
  return found


def _buffer_data(model, tensor, tflite_bytes):
  """The bytes of ``tensor``'s constant buffer, or None if it has none (an activation).
  Files over 2 GB keep buffers after the flatbuffer (offset and size), not inline."""
  buffer = model.Buffers(tensor.Buffer())
  if buffer.Offset() > 1:
    return bytes(tflite_bytes[buffer.Offset():buffer.Offset() + buffer.Size()])
  if buffer.DataLength() == 0:
    return None
  return buffer.DataAsNumpy().tobytes()


def _describe_tensor(tensor, op, densified, data):
  """The weight_storage dict of one constant tensor whose buffer holds ``data``."""
  sparsity = tensor.Sparsity()
  shape = tensor.ShapeAsNumpy().tolist() if tensor.ShapeLength() else []
  return dict(name=tensor.Name().decode(), op=op, shape=shape,
              stored="sparse" if sparsity is not None else "dense",
              format=_sparse_format(sparsity) if sparsity is not None else "",
              densified_at_load=densified, bytes=len(data),
              index_bytes=_index_bytes(sparsity) if sparsity is not None else 0,
              zero_fraction=_zero_fraction(tensor.Type(), data, shape))


def _sparse_format(sparsity):
  """A short text of a SparsityParameters: the format of each traversed dimension, the
  traversal order if it is not the plain one, and the block shape if the tensor is stored in
  blocks (e.g. "DENSE,SPARSE_CSR,DENSE blocks 1x4": rows of 4 kept whole)."""
  dims = [sparsity.DimMetadata(i) for i in range(sparsity.DimMetadataLength())]
  text = ",".join(_DIM_NAMES.get(d.Format(), str(d.Format())) for d in dims)
  order = sparsity.TraversalOrderAsNumpy().tolist() if sparsity.TraversalOrderLength() else []
  if order != list(range(len(order))):
    text += f" order {order}"
  block_map = sparsity.BlockMapAsNumpy().tolist() if sparsity.BlockMapLength() else []
  if block_map:
    rank = len(dims) - len(block_map)  # the block dimensions are traversed last
    block = [1] * rank
    for j, d in enumerate(block_map):
      block[d] = dims[rank + j].DenseSize()
    text += f" blocks {'x'.join(map(str, block))}"
  return text


def _index_bytes(sparsity):
  """Bytes of a sparse tensor's index arrays (segments and indices of its SPARSE_CSR
  dimensions): they live in the tensor's metadata, not in its buffer, and count too."""
  total = 0
  for i in range(sparsity.DimMetadataLength()):
    dim = sparsity.DimMetadata(i)
    for kind, table in ((dim.ArraySegmentsType(), dim.ArraySegments()),
                        (dim.ArrayIndicesType(), dim.ArrayIndices())):
      if table is None or kind not in _INDEX_VECTORS:
        continue
      cls, size = _INDEX_VECTORS[kind]
      vector = cls()
      vector.Init(table.Bytes, table.Pos)
      total += vector.ValuesLength() * size
  return total


def _zero_fraction(tensor_type, data, shape):
  """The fraction of the weight's dense elements that are zero, from its stored values:
  what a sparse tensor does not store is zero, so for both storages it is 1 - nonzero values
  / dense size. None for a type it cannot read."""
  dtype = _DTYPES.get(tensor_type)
  size = int(np.prod(shape)) if shape else 1
  if dtype is None or size == 0:
    return None
  values = np.frombuffer(data, dtype)
  return float(1.0 - np.count_nonzero(values) / size)


def describe(storage):
  """Human lines of a weight_storage list: one per tensor, then how many were stored sparse."""
  lines = [_describe_line(w) for w in storage]
  n_sparse = sum(w["stored"] == "sparse" for w in storage)
  lines.append(f"{len(storage)} weight tensors: {n_sparse} stored sparse, "
               f"{len(storage) - n_sparse} dense")
  return "\n".join(lines)


def _describe_line(w):
  """e.g. "fc1/kernel (FULLY_CONNECTED, 300x784): sparse (DENSE,SPARSE_CSR), 12,345 bytes"."""
  shape = "x".join(map(str, w["shape"]))
  how = f"sparse ({w['format']})" if w["stored"] == "sparse" else "dense"
  if w["densified_at_load"]:
    how += ", densified at load"
  size = f"{w['bytes']:,} bytes"
  if w["index_bytes"]:
    size += f" + {w['index_bytes']:,} index bytes"
  zeros = "" if w["zero_fraction"] is None else f", {w['zero_fraction']:.1%} zeros"
  return f"{w['name']} ({w['op']}, {shape}): {how}, {size}{zeros}"
