"""What a stage's last bits depend on besides its flags: library versions and the CPU.

With op determinism a stage reruns bit for bit only on the same software and CPU features
(and --threads, which is a flag): another TensorFlow build or instruction set (AVX2 vs
AVX-512) changes float rounding, and over thousands of iterations that moves the early-stop
iteration by as much as trial-to-trial noise does. Every stage records ``describe()`` in its
metrics.json, and ``lth_tf.main`` warns when it resumes an experiment on a different one.
"""
import platform
from importlib import metadata

PACKAGES = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "numpy")
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "amx_tile")  # what oneDNN/XLA kernels pick


def _version(package):
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None


def _cpu():
  """(model name, the CPU_FEATURES it has) from /proc/cpuinfo; platform's guess elsewhere."""
  try:
    with open("/proc/cpuinfo") as f:
      info = f.read()
  except OSError:
    return platform.processor() or platform.machine(), []
  model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                if line.startswith("model name")), platform.machine())
  words = set(next((line.split(":", 1)[1].split() for line in info.splitlines()
                    if line.startswith("flags")), []))
  return model, [f for f in CPU_FEATURES if f in words]


def describe():
  """{python, each of PACKAGES, cpu, cpu_features}: JSON-ready."""
  model, features = _cpu()
  return dict(python=platform.python_version(), **{p: _version(p) for p in PACKAGES},
              machine=platform.machine(), cpu=model, cpu_features=features)


def differences(recorded, current):
  """``name: recorded -> current`` for every entry that differs (entries missing in an older
  record are not compared)."""
  return [f"{k}: {recorded[k]} -> {current.get(k)}" for k in sorted(recorded)
          if recorded[k] != current.get(k)]
