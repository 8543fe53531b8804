"""What a ticket buys at deployment: file size and inference latency of a finished experiment's
tickets against its dense network, in the formats one would ship.

For each round in --rounds, of stage (--arm, --trial), the contenders are

  masked         the round's trained network at full shape, pruned weights zero
                 (export.masked_model): SavedModel and TFLite;
  compact        the smallest dense network computing the same (export.compact_network):
                 SavedModel and TFLite; "n/a" when the model cannot be compacted;
  tflite_sparse  the masked network through the TFLite converter's sparsity optimization
                 (tflite_sparse.convert): TFLite only;

and the reference is the dense network: round 0 of the same arm and trial (round 0 trains every
weight), as SavedModel and TFLite. Each model is saved into a temporary folder
(``model.save(save_format="tf")``), nothing is written into the experiment. Measured:

  size     raw bytes (SavedModel: every file of the folder; TFLite: the flatbuffer) and gzip -9
           bytes (TFLite: of the flatbuffer; SavedModel: of a deterministic tar of the folder);
  latency  seconds per call at each --batches size, on seeded random uint8 images: TFLite
           ``Interpreter(num_threads=--threads).invoke()`` (input resized and allocated once),
           SavedModel ``signatures["serving_default"](image=...)``. Each contender is warmed up
           once per batch size; then the contenders alternate, each timing --calls calls per
           repeat, and the median over --repeats is reported.

Also: how many weight tensors the sparse TFLite stores sparse (tflite_sparse.weight_storage),
the compact model's parameters against the masked one's, and a check that the compact
SavedModel and TFLite and the sparse TFLite compute the masked network's logits on the
benchmark images (same argmax, logits within 1e-4 of the largest): a line "check ... ok", or a
line starting with "MISMATCH". Usage:

  python -m benchmarks.deploy --output_dir=<experiment> --rounds=0,7,15 --threads=1

The table gives each contender as ratios to the dense network in the same format (dense =
1.00), and the dense network's absolute values. The last line is machine-readable:
``deploy {json}``, one line of JSON: {"rounds": {"<r>": {"weights_remaining": percent,
"masked": {...}, "compact": {...}, "tflite_sparse": {...}}}, "dense": {...}}, where each
contender holds ratios under "tflite_size", "tflite_size_gz", "saved_model_size",
"saved_model_size_gz", "tflite_b<B>", "saved_model_b<B>" (null where n/a), "compact" also
"parameters" and "masked_parameters", "tflite_sparse" also "weight_tensors", "sparse_tensors"
and "densified_at_load"; "dense" holds the absolute values (bytes, seconds per call) under the
same keys, and "parameters". Bad input: one line ``benchmarks.deploy: error: ...``, exit 2.
"""
import gzip
import io
import os
import statistics
import sys
import tarfile
import tempfile
import time
import warnings

from absl import app, flags

import lth_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "The experiment folder (written by lth_tf.main, with "
                    "its stages' weights.npz).")
flags.DEFINE_list("rounds", ["0", "7", "15"], "Rounds whose networks are measured.")
flags.DEFINE_string("arm", "ticket", "Arm of the stages (the dense network is its round 0).")
flags.DEFINE_integer("trial", 0, "Trial of the stages.")
flags.DEFINE_list("batches", ["1", "256"], "Batch sizes to time.")
flags.DEFINE_list("calls", ["200", "20"], "Timed calls per contender and repeat at each "
                  "--batches size (one value: the same at every size).")
flags.DEFINE_integer("repeats", 5, "Timed repeats of each contender (median reported).")
flags.DEFINE_integer("threads", 1, "Threads: TensorFlow intra-op and the TFLite interpreter's "
                     "(0: all cores).")
flags.DEFINE_integer("seed", 0, "Seed of the random benchmark images.")
flags.DEFINE_string("manual_dir", None, "Accepted and ignored (the benchmarks' common flag).")

CONTENDERS = ("masked", "compact", "tflite_sparse")
FORMATS = ("tflite", "saved_model")
LABELS = {"tflite": "TFLite", "saved_model": "SavedModel"}


def fail(message):
  """One line on stderr, exit code 2: bad input, never a crash."""
  print(f"benchmarks.deploy: error: {message}", file=sys.stderr)
  sys.exit(2)


def int_list(name, values, minimum):
  """The integers of list flag --name, each at least ``minimum``; exit 2 otherwise."""
  try:
    out = [int(v) for v in values]
  except ValueError:
    out = []
  if not out or min(out) < minimum:
    fail(f"--{name}={','.join(values)}: expected a comma-separated list of integers >= "
         f"{minimum}")
  return out


# ---- sizes ----------------------------------------------------------------------------------

def folder_bytes(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def deterministic_tar(path):
  """A tar of folder ``path`` that depends on the files' names and contents only: sorted
  names, mtime 0, no owners."""
  buffer = io.BytesIO()
  names = sorted(os.path.relpath(os.path.join(d, f), path)
                 for d, _, files in os.walk(path) for f in files)
  with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for name in names:
      info = tarfile.TarInfo(name)
      with open(os.path.join(path, name), "rb") as f:
        content = f.read()
      info.size, info.mtime, info.mode = len(content), 0, 0o644
      tar.addfile(info, io.BytesIO(content))
  return buffer.getvalue()


def gz_bytes(content):
  return len(gzip.compress(content, compresslevel=9, mtime=0))


# ---- runners: one per (contender, format, batch) ---------------------------------------------

class TFLiteRunner:
  """A TFLite interpreter with its input resized to ``x``'s batch, allocated once."""

  def __init__(self, content, x, threads):
    import tensorflow as tf
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # tf.lite.Interpreter is deprecated (LiteRT)
      self.interpreter = tf.lite.Interpreter(model_content=content,
                                             num_threads=threads if threads > 0 else -1)
    index = self.interpreter.get_input_details()[0]["index"]
    self.interpreter.resize_tensor_input(index, list(x.shape))
    self.interpreter.allocate_tensors()
    self.interpreter.set_tensor(index, x)
    self.output = self.interpreter.get_output_details()[0]["index"]

  def __call__(self):
    self.interpreter.invoke()

  def logits(self):
    self.interpreter.invoke()
    return self.interpreter.get_tensor(self.output).copy()


class SavedModelRunner:
  """The serving signature of a loaded SavedModel, called on a uint8 batch."""

  def __init__(self, signature, x):
    import tensorflow as tf
    self.signature, self.x = signature, tf.constant(x)

  def __call__(self):
    return self.signature(image=self.x)

  def logits(self):
    out = self.signature(image=self.x)
    return next(iter(out.values())).numpy()


class Model:
  """One contender's files: a SavedModel folder (or None) and TFLite bytes, and their sizes."""

  def __init__(self, saved_model_dir, tflite):
    import tensorflow as tf
    self.dir, self.tflite = saved_model_dir, tflite
    self.sizes = dict(tflite_size=len(tflite), tflite_size_gz=gz_bytes(tflite))
    self.signature = None
    if saved_model_dir is not None:
      self.sizes.update(saved_model_size=folder_bytes(saved_model_dir),
                        saved_model_size_gz=gz_bytes(deterministic_tar(saved_model_dir)))
      self.loaded = tf.saved_model.load(saved_model_dir)
      self.signature = self.loaded.signatures["serving_default"]
    else:
      self.sizes.update(saved_model_size=None, saved_model_size_gz=None)

  def runners(self, x, threads):
    out = {"tflite": TFLiteRunner(self.tflite, x, threads)}
    if self.signature is not None:
      out["saved_model"] = SavedModelRunner(self.signature, x)
    return out


def save(model, folder):
  from lth_tf import export
  model.save(folder, save_format="tf", include_optimizer=False)
  return Model(folder, export.tflite_bytes(folder))


def prepare_round(net, tmp):
  """{contender: Model or None (n/a)} of stage ``net``, and facts about it."""
  from lth_tf import export, tflite_sparse
  r = os.path.basename(net.path.rstrip("/"))
  masked = export.masked_model(net)
  models = {"masked": save(masked, f"{tmp}/{r}_masked")}
  facts = {"weights_remaining": weights_remaining(net), "keras": masked,
           "masked_parameters": export.parameters(masked)}
  try:
    compact, _ = export.compact_network(net)
  except export.ExportError as e:
    models["compact"], facts["compact_error"] = None, str(e)
  else:
    models["compact"] = save(compact, f"{tmp}/{r}_compact")
    facts["parameters"] = export.parameters(compact)
  sparse = tflite_sparse.convert(models["masked"].dir, sparse=True)
  models["tflite_sparse"] = Model(None, sparse)
  storage = tflite_sparse.weight_storage(sparse)
  facts.update(weight_tensors=len(storage),
               sparse_tensors=sum(w["stored"] == "sparse" for w in storage),
               densified_at_load=sum(bool(w["densified_at_load"]) for w in storage))
  return models, facts


def weights_remaining(net):
  """Percent of the weights the stage kept (what results.csv records)."""
  from lth_tf import masks
  return 100.0 * masks.fraction_remaining(net.mask)


# ---- timing ---------------------------------------------------------------------------------

def time_all(runners, repeats, calls):
  """{key: median seconds per call}: each runner warmed up once, then the runners alternate,
  ``calls`` calls each per repeat."""
  for run in runners.values():
    run()
  seconds = {k: [] for k in runners}
  for _ in range(repeats):
    for key, run in runners.items():
      start = time.perf_counter()
      for _ in range(calls):
        run()
      seconds[key].append((time.perf_counter() - start) / calls)
  return {k: statistics.median(s) for k, s in seconds.items()}


def check(round_, facts, runners, x):
  """Prints whether the compact and sparse models compute the masked network's logits on
  ``x``; ``runners`` are this round's at batch len(x)."""
  from lth_tf import export
  reference = facts["keras"](x, training=False).numpy()
  worst, bad, names = 0.0, [], []
  for (contender, fmt), run in runners.items():
    if contender == "masked":
      continue
    name = f"{contender} {LABELS[fmt]}"
    names.append(name)
    got = export.compare_logits(reference, run.logits())
    diff, differing = got["max_abs_logit_difference"], got["predictions_differing"]
    worst = max(worst, diff)
    if differing or diff > export.TOLERANCE * max(1.0, got["max_abs_logit"]):
      bad.append(f"{name}: {differing:.1%} of {len(x)} predictions differ, max |dlogit| "
                 f"{diff:.3g}")
  if bad:
    print(f"MISMATCH round {round_}: not the masked network's logits on {len(x)} random images: "
          + "; ".join(bad), flush=True)
  else:
    print(f"check round {round_}: {', '.join(names)} compute the masked network on {len(x)} "
          f"random images (same classes, max |dlogit| {worst:.2g}) ok", flush=True)


# ---- report ---------------------------------------------------------------------------------

def metric_keys(batches):
  return (["tflite_size", "tflite_size_gz", "saved_model_size", "saved_model_size_gz"]
          + [f"{fmt}_b{b}" for fmt in FORMATS for b in batches])


def values(model, latency, name, batches):
  """{metric key: absolute value or None} of contender ``name`` (latency keyed (name, fmt, b))."""
  out = dict(model.sizes)
  for fmt in FORMATS:
    for b in batches:
      out[f"{fmt}_b{b}"] = latency.get((name, fmt, b))
  return out


def ratios(absolute, dense):
  return {k: None if v is None or not dense[k] else round(v / dense[k], 4)
          for k, v in absolute.items()}


HEADERS = {"tflite_size": "TFL size", "tflite_size_gz": "TFL gz", "saved_model_size": "SM size",
           "saved_model_size_gz": "SM gz"}


def header(key):
  if key in HEADERS:
    return HEADERS[key]
  fmt, b = key.rsplit("_b", 1)
  return f"{'TFL' if fmt == 'tflite' else 'SM'} b{b}"


def absolute_text(key, value):
  if value is None:
    return "n/a"
  if "size" in key:
    return f"{value / 1e3:,.0f}kB"
  return f"{value * 1e3:.3f}ms"


def table(rows, keys):
  """Lines of a table: rows is [(label, {key: text})]."""
  width = max(9, max(len(header(k)) for k in keys) + 1)
  label_width = max(len(label) for label, _ in rows) + 1
  lines = [" " * label_width + "".join(f"{header(k):>{width}}" for k in keys)]
  for label, cells in rows:
    lines.append(f"{label:<{label_width}}" + "".join(f"{cells[k]:>{width}}" for k in keys))
  return lines


# ---- main -----------------------------------------------------------------------------------

def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.output_dir:
    fail("--output_dir=<experiment folder> is required")
  rounds = list(dict.fromkeys(int_list("rounds", FLAGS.rounds, 0)))
  batches = list(dict.fromkeys(int_list("batches", FLAGS.batches, 1)))
  calls = int_list("calls", FLAGS.calls, 1)
  if len(calls) == 1:
    calls *= len(batches)
  if len(calls) != len(batches):
    fail(f"--calls={','.join(FLAGS.calls)}: give one value, or one per --batches size "
         f"({len(batches)})")
  if FLAGS.repeats < 1:
    fail(f"--repeats={FLAGS.repeats}: expected at least 1")
  import tensorflow as tf
  tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  import numpy as np
  from lth_tf import export
  nets = {}
  for r in dict.fromkeys([0, *rounds]):
    try:
      nets[r] = export.stage_network(FLAGS.output_dir, r, FLAGS.arm, FLAGS.trial)
    except export.ExportError as e:  # its message names lth_tf.export's --round flag
      fail(str(e).replace(f"--round={r}:", f"--rounds: round {r} is not one of the experiment:"))
  dense_net = nets[0]
  print(f"deploy: {FLAGS.output_dir} ({dense_net.model} on {dense_net.dataset}), "
        f"{FLAGS.arm} trial {FLAGS.trial}, rounds {', '.join(map(str, rounds))} against the "
        f"dense network (round 0); batches {', '.join(map(str, batches))} "
        f"({', '.join(map(str, calls))} calls per repeat), {FLAGS.repeats} repeats, "
        f"alternating; threads {FLAGS.threads or 'all'}", flush=True)

  rng = np.random.default_rng(FLAGS.seed)
  x = rng.integers(0, 256, (max(batches), *dense_net.input_shape), dtype=np.uint8)
  with tempfile.TemporaryDirectory(prefix="lth_tf_deploy_") as tmp:
    dense_keras = export.masked_model(dense_net)
    dense = save(dense_keras, f"{tmp}/dense")
    prepared = {r: prepare_round(nets[r], tmp) for r in rounds}
    latency = {}
    for b, n in zip(batches, calls):
      runners = {("dense", fmt, b): run for fmt, run in dense.runners(x[:b], FLAGS.threads).items()}
      for r, (models, _) in prepared.items():
        for name, model in models.items():
          if model is not None:
            for fmt, run in model.runners(x[:b], FLAGS.threads).items():
              runners[(f"{name}@{r}", fmt, b)] = run
      if b == max(batches):
        for r, (_, facts) in prepared.items():
          check(r, facts, {(k[0].split("@")[0], k[1]): run for k, run in runners.items()
                           if k[0].endswith(f"@{r}")}, x[:b])
      latency.update(time_all(runners, FLAGS.repeats, n))

  keys = metric_keys(batches)
  dense_values = values(dense, latency, "dense", batches)
  parameters = export.parameters(dense_keras)
  print(f"\ndense network (round 0): {parameters:,} parameters; absolute values "
        f"(kB = 1000 bytes; ms per call)\nTFL: TFLite, SM: SavedModel, size: raw bytes, gz: "
        f"gzip -9 bytes, b<B>: time per call at batch B")
  for line in table([("dense", {k: absolute_text(k, dense_values[k]) for k in keys})], keys):
    print(line)
  result = {"rounds": {}, "dense": dict(dense_values, parameters=parameters)}
  for r, (models, facts) in prepared.items():
    entry = {"weights_remaining": round(facts["weights_remaining"], 3)}
    rows = [("dense (round 0)", {k: "1.00" for k in keys})]
    for name in CONTENDERS:
      model = models[name]
      if model is None:
        entry[name] = dict({k: None for k in keys}, error=facts["compact_error"])
        rows.append((name, {k: "n/a" for k in keys}))
        continue
      entry[name] = ratios(values(model, latency, f"{name}@{r}", batches), dense_values)
      rows.append((name, {k: "n/a" if v is None else f"{v:.2f}" for k, v in entry[name].items()}))
    notes = []
    if models["compact"] is not None:
      entry["compact"].update(parameters=facts["parameters"],
                              masked_parameters=facts["masked_parameters"])
      notes.append(f"compact: {facts['parameters']:,} parameters of the masked "
                   f"{facts['masked_parameters']:,} "
                   f"({facts['parameters'] / facts['masked_parameters']:.1%})")
    else:
      notes.append(f"compact: n/a ({facts['compact_error']})")
    entry["tflite_sparse"].update(weight_tensors=facts["weight_tensors"],
                                  sparse_tensors=facts["sparse_tensors"],
                                  densified_at_load=facts["densified_at_load"])
    notes.append(f"tflite_sparse: {facts['sparse_tensors']} of {facts['weight_tensors']} weight "
                 f"tensors stored sparse, {facts['densified_at_load']} densified at load")
    result["rounds"][str(r)] = entry
    print(f"\nround {r}: {facts['weights_remaining']:.1f}% of weights remaining; ratios to the "
          f"dense network in the same format (dense = 1.00)")
    for line in table(rows, keys):
      print(line)
    for note in notes:
      print(f"  {note}")
  print("\ndeploy " + json_line(result))


def json_line(value):
  import json

  def clean(v):
    if isinstance(v, dict):
      return {k: clean(x) for k, x in v.items()}
    if isinstance(v, float):
      return float(f"{v:.6g}")
    return v
  return json.dumps(clean(value), separators=(",", ":"))


if __name__ == "__main__":
  app.run(main)
