"""The experiment's configuration: the paper presets, the Config value that determines an
experiment's numbers, and its validation.

No TensorFlow here, on purpose: the command line validates every flag, including the ones
whose limits depend on the network (how many rounds before some layer would keep fewer than
one weight), before TensorFlow is imported, so a refusal costs a fraction of a second and never
touches the output folder. The limits come from lth_tf.architectures (kernel shapes without
building a model) and lth_tf.data (image shapes and split sizes without loading anything).
"""
import dataclasses
import math
import os

from lth_tf import architectures, data, distributions, pruning
from lth_tf.arms import registry as arm_registry
from lth_tf.methods import registry as method_registry

OPTIMIZERS = ("adam", "sgd")  # lth_tf.training builds them
STRATEGIES = ("default", "mirrored", "multi_worker_mirrored")  # lth_tf.distribute creates them

CONTROLS = arm_registry.CONTROLS  # the arms beside the ticket (lth_tf/arms)
PRUNING = tuple(method_registry.METHODS)  # how ticket masks are found (lth_tf/methods)
REWIND = ("init", "iteration", "none")
DISTRIBUTIONS = tuple(distributions.SCORES)  # --distribution; "" (left out): per-kind rates

PAPER_BATCH_SIZE = 60
# Frankle & Carbin (ICLR 2019), Figure 2 and Appendix: dataset, iterations, Adam rate, rates.
# The output layer is pruned at half the fc rate (with_paper_defaults, from --prune_rate_fc).
_ADAM = dict(batch_size=PAPER_BATCH_SIZE, optimizer="adam", warmup_iterations=0, lr_drops=(),
             weight_decay=0.0, pruning="layerwise", initializer="glorot_normal")
# The deeper networks as the follow-ups train them: Frankle, Dziugaite, Roy & Carbin, "Linear
# Mode Connectivity and the Lottery Ticket Hypothesis" (ICML 2020), Table 1 (ResNet-20; its
# VGG-16 has the same schedule), which is open_lth's cifar_resnet/cifar_vgg defaults: batch
# 128, SGD with momentum 0.9, rate 0.1 dropped 10x at 32K and 48K of 63K iterations (80 and
# 120 of 160 epochs), weight decay 1e-4, He-normal (kaiming) kernels, IMP with one global
# threshold removing 20% of the conv weights per round. VGG-19 warms up linearly over the first
# 10K iterations: at rate 0.1 it finds no winning tickets without (Frankle & Carbin 2019, Sec.
# 5; Frankle et al., "Stabilizing the Lottery Ticket Hypothesis", 2019). The output layer is not
# pruned (Frankle & Carbin 2019, Fig. 2: "conv 20%, fc 0%"; open_lth ignores VGG's fc.weight).
_SGD = dict(xla=False, dataset="cifar10", batch_size=128, optimizer="sgd", learning_rate=0.1,
            iterations=63000, lr_drops=(32000, 48000), weight_decay=1e-4, pruning="global",
            prune_rate_conv=0.2, prune_rate_fc=0.2, prune_rate_output=0.0, initializer="he_normal")
# xla: whether training compiles with XLA by default. On CPU, XLA compiles Conv2D training poorly
# (a Conv-2 block of 10 iterations had not finished compiling after 6 minutes here, and with
# op determinism it refuses MaxPool's gradient), so only the dense LeNet uses it by default.
PAPER = {
    "lenet300_100": dict(_ADAM, xla=True, dataset="mnist", iterations=50000, learning_rate=1.2e-3,
                         prune_rate_conv=0.0, prune_rate_fc=0.2, prune_rate_output=0.1),
    "conv2": dict(_ADAM, xla=False, dataset="cifar10", iterations=20000, learning_rate=2e-4,
                  prune_rate_conv=0.1, prune_rate_fc=0.2, prune_rate_output=0.1),
    "conv4": dict(_ADAM, xla=False, dataset="cifar10", iterations=25000, learning_rate=3e-4,
                  prune_rate_conv=0.1, prune_rate_fc=0.2, prune_rate_output=0.1),
    "conv6": dict(_ADAM, xla=False, dataset="cifar10", iterations=30000, learning_rate=3e-4,
                  prune_rate_conv=0.15, prune_rate_fc=0.2, prune_rate_output=0.1),
    "resnet20": dict(_SGD, warmup_iterations=0),
    "vgg19": dict(_SGD, warmup_iterations=10000),
}


def paper_output_rate(model, prune_rate_fc):
  """The output layer's default rate: half the fc rate (Frankle & Carbin), or 0 for the deeper
  networks, whose papers leave their one dense layer unpruned."""
  return prune_rate_fc / 2 if PAPER[model]["prune_rate_output"] else 0.0


# The defaults of a setting left out, for the command line's flags and lth_tf.Config alike:
# PAPER_DEFAULTED take the model's PAPER value (xla: a flag, not a Config field), prune_rate
# --prune_rate_fc's value, prune_rate_output paper_output_rate; DEFAULTS the rest of Config's
# fields without a default of their own (the others take Config's).
PAPER_DEFAULTED = ("dataset", "iterations", "batch_size", "learning_rate", "optimizer",
                   "warmup_iterations", "lr_drops", "weight_decay", "prune_rate_conv",
                   "prune_rate_fc", "pruning", "initializer", "xla")
DEFAULTS = dict(rounds=10, eval_every=100)


def with_paper_defaults(values):
  """``values`` ({setting: value}; None or absent: the default) with the model's paper
  defaults filled in, as a new dict: every name of PAPER_DEFAULTED, --prune_rate (the fc
  rate), --prune_rate_output (paper_output_rate of the fc rate), and --pruning=imp spelled
  layerwise. The one resolution of these defaults: lth_tf.main's flags and lth_tf.Config both
  go through it. Settings it does not know are passed through unchanged; ConfigError for a
  model that is not one."""
  model = values.get("model")
  if model not in PAPER:
    raise ConfigError(f"--model={model} is not a model; pass one of "
                      f"{', '.join(architectures.ARCHITECTURES)}")
  paper = PAPER[model]
  out = dict(values)
  for name in PAPER_DEFAULTED:
    if out.get(name) is None:
      out[name] = paper[name]
  out["pruning"] = method_registry.ALIASES.get(out["pruning"], out["pruning"])
  if (not out.get("distribution") and out["pruning"] in method_registry.METHODS
      and method_registry.get(out["pruning"]).needs_distribution):
    out["distribution"] = "erk"  # dynamic sparse training: Evci et al.'s default
  fc = out["prune_rate_fc"]
  if out.get("prune_rate") is None:
    out["prune_rate"] = fc
  if out.get("prune_rate_output") is None:  # a bad fc rate is refused by validate, fc first
    number = isinstance(fc, (int, float)) and not isinstance(fc, bool)
    out["prune_rate_output"] = paper_output_rate(model, fc) if number else None
  return out


def paper_config(model, **settings):
  """The Config of ``model`` with ``settings`` (Config's field names) and, for every setting
  left out, what the command line takes for the flag left out: the paper's values for the
  model (with_paper_defaults), DEFAULTS, or Config's own defaults. lth_tf.Config.

  ``paper_config("lenet300_100", dataset="fashion_mnist", rounds=2, iterations=1000)`` equals
  the Config of ``python -m lth_tf.main --model=lenet300_100 --dataset=fashion_mnist
  --rounds=2 --iterations=1000``. ConfigError, naming the setting, for an unknown setting or a
  bad value."""
  fields = [f.name for f in dataclasses.fields(Config)]
  unknown = sorted(set(settings) - set(fields))
  if unknown:
    raise ConfigError(f"{', '.join(unknown)}: not a setting of an experiment; use "
                      f"{', '.join(fields)}")
  return resolve({**settings, "model": model})[0]


# flags.cfg: the flags that determine an experiment's numbers (Config's fields and Runtime's),
# in the order it lists them, then --output_dir and LOCATION_FLAGS. A rerun into a folder must
# match them, except EXTENSIBLE_FLAGS, which only add stages.
RESULT_FLAGS = ("model", "dataset", "rounds", "iterations", "batch_size", "learning_rate",
                "eval_every", "prune_rate_conv", "prune_rate_fc", "prune_rate_output", "controls",
                "trials", "seed", "initializer", "init_scale", "test_curve", "pruning", "prune_rate",
                "global_output_layer", "one_shot", "rewind", "rewind_iteration", "same_init",
                "score_batches", "synflow_iterations", "eb_epsilon", "eb_window", "threads",
                "deterministic", "xla", "optimizer", "momentum", "warmup_iterations", "lr_drops",
                "lr_drop_factor", "weight_decay", "strategy", "cpu_devices", "distribution",
                "structure", "dst_interval", "dst_fraction", "dst_end", "eb_distance",
                "compact_training")
EXTENSIBLE_FLAGS = ("rounds", "trials", "controls")
EB_DISTANCES = ("jaccard", "hamming")
LOCATION_FLAGS = ("data_dir", "manual_dir", "checkpoint_every")  # where, not what


def resolve(values):
  """The experiment named by flag values ({flag: value} over RESULT_FLAGS; None or absent: the
  flag left out; lists as lists, of strings as absl gives them, or tuples) as its checked
  (Config, Runtime), every default filled in: the paper's (with_paper_defaults), DEFAULTS,
  Config's and Runtime's own, --threads=0 as this machine's cores, --xla off under a
  --strategy. The one resolution of an experiment's settings: the command line, lth_tf.Config,
  lth_tf.run and a folder's flags.cfg (FlagsFile.parse) all go through it. ConfigError, one
  line naming the flag and the fix, for the first bad value."""
  given = {k: v for k, v in values.items() if v is not None}
  for name, bound, meaning in (("threads", MAX_THREADS, "0 (all cores) or a count such as 2"),
                               ("cpu_devices", MAX_CPU_DEVICES, "0 (one CPU device) or a count "
                                                                "such as 2")):
    value = given.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= bound:
      raise ConfigError(f"--{name}={value} is invalid; pass {meaning}, at most {bound}")
  given = with_paper_defaults({**DEFAULTS, **given})
  for name in ("controls", "lr_drops"):  # lists as tuples: a Config is hashable
    if isinstance(given.get(name), list):
      given[name] = tuple(given[name])
  if isinstance(given.get("controls"), tuple):
    given["controls"] = tuple(c for c in given["controls"] if c != "")  # --controls= : none
  drops = given.get("lr_drops")
  if isinstance(drops, tuple) and any(isinstance(d, str) for d in drops):
    try:
      given["lr_drops"] = tuple(int(d) if isinstance(d, str) else d for d in drops if d != "")
    except ValueError:
      raise ConfigError(f"--lr_drops={','.join(map(str, drops))} is not a list of iterations; "
                        f"pass e.g. --lr_drops=32000,48000") from None
  runtime = {f.name: given.pop(f.name) for f in dataclasses.fields(Runtime) if f.name in given}
  if not runtime.get("threads"):
    runtime["threads"] = os.cpu_count() or 1
  if runtime.get("strategy", "default") != "default":  # lth_tf.distribute: no XLA there
    runtime["xla"] = False
    if given.get("compact_training"):
      raise ConfigError(f"--compact_training trains on one device; drop "
                        f"--strategy={runtime['strategy']}")
  fields = {f.name for f in dataclasses.fields(Config)}
  return (Config(**{k: v for k, v in given.items() if k in fields}), Runtime(**runtime))


@dataclasses.dataclass(frozen=True)
class FlagsFile:
  """An experiment's flags.cfg as values: what it computes (``config``), how (``runtime``),
  where its results go and its data comes from. ``text()`` is the file, reusable as
  --flagfile; ``parse`` reads one back, an older file's missing flags resolved as a rerun of
  the command line resolves them (flags are only ever added, each at the default it had).
  The one round trip of flags.cfg: lth_tf.main and lth_tf.run write it, the folder check of a
  rerun, lth_tf.load, plot, report and the studies read it."""
  config: "Config"
  runtime: "Runtime"
  output_dir: str
  data_dir: str = None
  manual_dir: str = None
  checkpoint_every: int = None

  def values(self):
    """{flag: value text} over RESULT_FLAGS, as flags.cfg writes them."""
    out = {}
    for name in RESULT_FLAGS:
      value = getattr(self.runtime if name in _RUNTIME_FIELDS else self.config, name)
      if isinstance(value, (tuple, list)):
        value = ",".join(map(str, value))
      elif _FIELD_TYPES.get(name) is float:
        value = float(value)
      out[name] = str(value)
    return out

  def flags(self):
    """{flag: value text} of every line of flags.cfg: RESULT_FLAGS, --output_dir, then the
    LOCATION_FLAGS that are set."""
    out = {**self.values(), "output_dir": self.output_dir}
    out.update({name: str(getattr(self, name)) for name in LOCATION_FLAGS
                if getattr(self, name) is not None})
    return out

  def text(self):
    """flags.cfg itself."""
    return "".join(f"--{k}={v}\n" for k, v in self.flags().items())

  @classmethod
  def parse(cls, flags):
    """The FlagsFile of flags.cfg's {name: value string} (artifacts.parse_flagfile);
    ConfigError for settings that are not an experiment's."""
    if "model" not in flags:
      raise ConfigError("no --model; this is not an experiment's flags.cfg")
    typed = _typed(flags)
    pruning = method_registry.ALIASES.get(typed.get("pruning"), typed.get("pruning"))
    if pruning in method_registry.METHODS:  # flags added since: what this method did before
      for name, value in method_registry.get(pruning).before_flags.items():
        typed.setdefault(name, value)
    cfg, runtime = resolve({k: v for k, v in typed.items() if k in RESULT_FLAGS})
    return cls(cfg, runtime, flags.get("output_dir", ""), flags.get("data_dir"),
               flags.get("manual_dir"), typed.get("checkpoint_every"))

  def differences(self, other):
    """[(flag, this value, ``other``'s value)] of the RESULT_FLAGS outside EXTENSIBLE_FLAGS
    that differ: what keeps ``other`` from resuming this experiment's folder."""
    mine, theirs = self.values(), other.values()
    return [(k, mine[k], theirs[k]) for k in RESULT_FLAGS
            if k not in EXTENSIBLE_FLAGS and mine[k] != theirs[k]]


def _typed(flags):
  """flags.cfg's {name: value string} as the typed values of the flags it names (Config's,
  Runtime's and --checkpoint_every; the rest are left out); ConfigError for a value that is
  not of its flag's type."""
  types = {**_FIELD_TYPES, **{f.name: f.type for f in dataclasses.fields(Runtime)},
           "checkpoint_every": int}
  typed = {}
  for name, kind in types.items():
    if name not in flags:
      continue
    text = flags[name]
    try:
      if kind is bool:
        if text.lower() not in ("true", "false", "1", "0"):
          raise ValueError(text)
        typed[name] = text.lower() in ("true", "1")
      elif kind is tuple:
        items = [c for c in text.split(",") if c]
        typed[name] = tuple(int(c) for c in items) if name == "lr_drops" else tuple(items)
      else:
        typed[name] = kind(text)
    except ValueError:
      raise ConfigError(f"--{name}={text[:40]} is not a {kind.__name__}") from None
  return typed


class ConfigError(ValueError):
  """A bad experiment setting; the message is one line naming the flag and the fix."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that determines an experiment's numbers (and nothing that does not)."""
  model: str
  dataset: str
  rounds: int
  iterations: int
  batch_size: int
  learning_rate: float
  eval_every: int
  prune_rate_conv: float
  prune_rate_fc: float
  prune_rate_output: float
  controls: tuple = ("reinit",)
  trials: int = 1
  seed: int = 0
  initializer: str = "glorot_normal"
  init_scale: float = 0.05
  test_curve: bool = False
  pruning: str = "layerwise"
  prune_rate: float = 0.2  # global pruning's per-round rate
  global_output_layer: bool = False  # global pruning: pool the output layer too
  one_shot: bool = False
  rewind: str = "init"
  rewind_iteration: int = 0
  same_init: bool = False  # every trial starts from trial 0's θ0 (only the data order differs)
  score_batches: int = 1  # snip/grasp: batches of --batch_size scored at θ0
  synflow_iterations: int = 100
  eb_epsilon: float = 0.1  # early_bird: max mask distance (eb_distance) within the window
  eb_window: int = 5
  optimizer: str = "adam"
  momentum: float = 0.9  # sgd only
  warmup_iterations: int = 0  # linear warmup of the learning rate from 0
  lr_drops: tuple = ()  # iterations at which the learning rate is multiplied by lr_drop_factor
  lr_drop_factor: float = 0.1
  weight_decay: float = 0.0  # L2 on kernels
  # How round r's overall density (1 - prune_rate)^r is split across the layers
  # (lth_tf.distributions); "" for the paper's per-kind rates (prune_rate_conv, _fc, _output).
  distribution: str = ""
  # Which sets of weights a mask may keep: "" any (the paper's), "N:M" at most N of every M
  # consecutive weights along a kernel's input axis (lth_tf.pruning.n_of_m), "unit" whole
  # units and filters (lth_tf.pruning.unit_masks).
  structure: str = ""
  # Dynamic sparse training (--pruning=set, rigl): move connections every dst_interval
  # iterations, dst_fraction of each layer's active ones (RigL: decaying to 0 at dst_end of
  # the training).
  dst_interval: int = 100
  dst_fraction: float = 0.3
  dst_end: float = 0.75
  # early_bird's mask distance: "jaccard" (1 − IoU of the kept weights: a fraction of what is
  # kept, so it means the same at 50% and at 3% of weights) or "hamming" (the fraction of all
  # weights that differ, You et al.'s: below ~5% kept it cannot exceed ε = 0.1, so it settles
  # at once). Early-bird folders written before the flag read as hamming (their before_flags).
  eb_distance: str = "jaccard"
  # --structure=unit: train each stage after the dense round on the network without its removed
  # units (lth_tf.compact_training), the same function from the same start, cheaper as units go.
  compact_training: bool = False

  def __post_init__(self):
    self.validate()  # a Config that exists is a valid one

  def validate(self):
    """Raises ConfigError, one line naming the flag and the fix, for the first bad setting;
    returns self (construction calls it: a Config that exists is a valid one). Checks names,
    types, ranges and the combinations that would otherwise fail hours later or run without
    meaning (a layer pruned past its last weight, a batch larger than the training split)."""
    _check_name("model", self.model, architectures.ARCHITECTURES)
    _check_name("dataset", self.dataset, data.SHAPES)
    side = data.SHAPES[self.dataset][0]
    pools = architectures.pools(self.model) if self.model in architectures.PLAIN else 0
    if side < 2 ** pools:  # max-pooling floors odd sizes (28 -> 3 ok)
      raise ConfigError(f"--model={self.model} pools {pools} times and needs images of at "
                        f"least {2 ** pools} pixels; use another --dataset")
    if self.model in architectures.VGG and side % 16:
      raise ConfigError(f"--model={self.model} needs images a multiple of 16 pixels wide; "
                        f"use --dataset=cifar10")
    for name, low in (("rounds", 0), ("trials", 1), ("batch_size", 1), ("eval_every", 1),
                      ("iterations", 1), ("seed", 0), ("warmup_iterations", 0),
                      ("rewind_iteration", 0), ("score_batches", 1), ("synflow_iterations", 1),
                      ("eb_window", 2), ("dst_interval", 1)):
      _check_int(name, getattr(self, name), low)
    if self.seed >= 2 ** 32:  # NumPy's and Keras's global seeds are 32-bit
      raise ConfigError(f"--seed={self.seed} is too large; pass a seed below 2**32 "
                        f"({2 ** 32})")
    for name in ("prune_rate_conv", "prune_rate_fc", "prune_rate_output", "prune_rate",
                 "momentum"):
      _check_float(name, getattr(self, name), 0.0, 1.0, "a fraction such as 0.2")
    for name in ("test_curve", "global_output_layer", "one_shot", "same_init"):
      if not isinstance(getattr(self, name), bool):
        raise ConfigError(f"--{name}={getattr(self, name)!r} is not a boolean; pass true or "
                          f"false")
    _check_positive("learning_rate", self.learning_rate, "a positive rate such as 1.2e-3")
    _check_positive("init_scale", self.init_scale, "a positive standard deviation such as 0.05")
    if not isinstance(self.weight_decay, (int, float)) or not 0.0 <= self.weight_decay < math.inf:
      raise ConfigError(f"--weight_decay={self.weight_decay} is invalid; pass 0 or e.g. 1e-4")
    if not (isinstance(self.lr_drop_factor, (int, float)) and 0.0 < self.lr_drop_factor <= 1.0):
      raise ConfigError(f"--lr_drop_factor={self.lr_drop_factor} is outside (0, 1]; pass e.g. "
                        f"0.1")
    if not (isinstance(self.dst_fraction, (int, float)) and 0.0 < self.dst_fraction < 1.0):
      raise ConfigError(f"--dst_fraction={self.dst_fraction} is outside (0, 1); pass e.g. 0.3")
    if not (isinstance(self.dst_end, (int, float)) and 0.0 < self.dst_end <= 1.0):
      raise ConfigError(f"--dst_end={self.dst_end} is outside (0, 1]; pass e.g. 0.75")
    if self.eb_distance not in EB_DISTANCES:
      raise ConfigError(f"--eb_distance={self.eb_distance} is unknown; pass one of "
                        f"{', '.join(EB_DISTANCES)}")
    if not (isinstance(self.eb_epsilon, (int, float)) and 0.0 < self.eb_epsilon < 1.0):
      raise ConfigError(f"--eb_epsilon={self.eb_epsilon} is outside (0, 1); pass e.g. 0.1")
    if self.iterations < self.eval_every or self.iterations % self.eval_every:
      raise ConfigError(f"--iterations={self.iterations} is invalid; pass a multiple of "
                        f"--eval_every={self.eval_every} (at least one evaluation per round)")
    train_size = data.TRAIN_SIZES[self.dataset] - data.VALIDATION_SIZE
    if self.batch_size > train_size:
      raise ConfigError(f"--batch_size={self.batch_size} exceeds {self.dataset}'s training "
                        f"split ({train_size:,} examples); pass at most {train_size}")
    if self.iterations * self.batch_size > MAX_EXAMPLES_PER_ROUND:
      raise ConfigError(
          f"--iterations={self.iterations} at --batch_size={self.batch_size} draws "
          f"{self.iterations * self.batch_size:,} examples per round, more than the "
          f"{MAX_EXAMPLES_PER_ROUND:,} an in-memory batch table holds (1 GiB); pass fewer "
          f"--iterations")
    if not isinstance(self.controls, (tuple, list)) or not all(
        isinstance(c, str) for c in self.controls):
      raise ConfigError(f"--controls={self.controls!r} is not a list of names; pass e.g. "
                        f"--controls=reinit,random_prune")
    for c in self.controls:
      if c not in CONTROLS:
        raise ConfigError(f"--controls contains unknown control {c!r}; use a comma list of "
                          f"{', '.join(CONTROLS)} (or nothing)")
    if len(set(self.controls)) != len(self.controls):
      raise ConfigError(f"--controls={','.join(self.controls)} names a control twice; name "
                        f"each once")
    _check_name("pruning", self.pruning, PRUNING)
    if self.distribution not in ("",) + DISTRIBUTIONS:
      raise ConfigError(f"--distribution={self.distribution} is unknown; use one of "
                        f"{', '.join(DISTRIBUTIONS)} (or leave it out for the per-kind rates)")
    n_m = self.n_of_m()  # ConfigError for a structure that is not one
    if self.structure == UNIT:
      if not method_registry.get(self.pruning).structures:
        raise ConfigError(f"--structure=unit ranks units by the magnitude of their trained "
                          f"weights; --pruning={self.pruning} does not: pass "
                          f"--pruning=layerwise")
      if self.model not in architectures.PLAIN:
        raise ConfigError(f"--structure=unit needs a plain chain of layers, each feeding the "
                          f"next; --model={self.model} has batch norm and shortcuts: use one of "
                          f"{', '.join(architectures.PLAIN)}")
      if self.distribution:
        raise ConfigError(f"--structure=unit removes units at the per-kind rates; drop "
                          f"--distribution={self.distribution}")
    if n_m:
      if not method_registry.get(self.pruning).structures:
        raise ConfigError(f"--structure={self.structure} prunes by magnitude within groups of "
                          f"{n_m[1]}; --pruning={self.pruning} does not: pass "
                          f"--pruning=layerwise")
      if self.distribution:
        raise ConfigError(f"--structure={self.structure} keeps {n_m[0]} of every {n_m[1]} "
                          f"weights in each layer; --distribution={self.distribution} sets "
                          f"other densities: drop one of them")
      if self.rounds > 1:
        raise ConfigError(f"--structure={self.structure} has one sparsity ({n_m[0]} of every "
                          f"{n_m[1]} weights), reached in round 1; pass --rounds=1")
      if self.one_shot:
        raise ConfigError(f"--structure={self.structure} prunes once, in round 1; drop "
                          f"--one_shot (it changes nothing there)")
    if self.distribution and self.global_output_layer:
      raise ConfigError(f"--global_output_layer pools the output layer under one threshold; "
                        f"--distribution={self.distribution} sets every layer's density, the "
                        f"output layer's too: drop one of them")
    if not isinstance(self.compact_training, bool):
      raise ConfigError(f"--compact_training={self.compact_training!r} is not true or false")
    if self.compact_training and self.structure != UNIT:
      raise ConfigError(f"--compact_training trains the network without its removed units, "
                        f"which only whole-unit masks remove; pass --structure=unit (got "
                        f"--structure={self.structure or 'none'})")
    _check_name("rewind", self.rewind, REWIND)
    _check_name("optimizer", self.optimizer, OPTIMIZERS)
    _check_name("initializer", self.initializer, architectures.INITIALIZERS)
    if self.rewind == "iteration" and not (
        0 < self.rewind_iteration <= self.iterations
        and self.rewind_iteration % self.eval_every == 0):
      raise ConfigError(f"--rewind_iteration={self.rewind_iteration} must be a positive multiple "
                        f"of --eval_every={self.eval_every} up to --iterations={self.iterations}")
    problem = method_registry.get(self.pruning).problems(self)
    if problem:
      raise ConfigError(problem)
    if self.one_shot and self.rewind == "none":
      raise ConfigError("--one_shot with --rewind=none has no previous round to fine-tune; "
                        "use --rewind=init or iteration")
    if (not isinstance(self.lr_drops, (tuple, list))
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in self.lr_drops)
        or any(d <= 0 for d in self.lr_drops)
        or list(self.lr_drops) != sorted(set(self.lr_drops))):
      raise ConfigError(f"--lr_drops={','.join(map(str, self.lr_drops))} must be increasing "
                        f"positive iterations, e.g. --lr_drops=32000,48000 (or empty)")
    stages = self.trials * (1 + self.rounds * (1 + len(self.controls)))
    if stages > MAX_STAGES:
      raise ConfigError(f"--trials={self.trials} with --rounds={self.rounds} makes {stages:,} "
                        f"stages, more than {MAX_STAGES:,}; pass fewer --trials or --rounds")
    last = self.last_round()
    if self.rounds > last:
      names, size, rate = self.first_to_empty()
      how = (f"at rate {rate:g} per round" if not self.distribution else
             f"its --distribution={self.distribution} share of --prune_rate={self.prune_rate:g} "
             f"per round")
      what = "unit" if self.structure == UNIT else "weight"
      given = " with --structure=unit" if self.structure == UNIT else ""
      raise ConfigError(
          f"--rounds={self.rounds}{given} prunes {_group_label(names)} ({size:,} {what}s {how}) to "
          f"fewer than one {what} after round {last}; pass --rounds={last} or fewer, or a "
          f"lower rate")
    return self

  def n_of_m(self):
    """(N, M) of --structure=N:M, or None for unstructured masks; ConfigError for a
    --structure that is neither."""
    if self.structure in ("", UNIT):
      return None
    fix = "pass N:M with 0 < N < M, e.g. 2:4, or unit (or leave it out)"
    if not isinstance(self.structure, str):
      raise ConfigError(f"--structure={self.structure!r} is not N:M; {fix}")
    parts = self.structure.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
      raise ConfigError(f"--structure={self.structure} is unknown; {fix}")
    n, m = int(parts[0]), int(parts[1])
    if not 0 < n < m:
      raise ConfigError(f"--structure={self.structure} keeps {n} of every {m} weights; {fix}")
    if m > MAX_STRUCTURE_M:
      raise ConfigError(f"--structure={self.structure}: groups of {m} are more than "
                        f"{MAX_STRUCTURE_M}; {fix}")
    return n, m

  def unit_counts(self, round_):
    """{layer: units it keeps after ``round_`` rounds} under --structure=unit (every layer but
    the output, whose units are the classes, at its kind's rate), else None."""
    if self.structure != UNIT:
      return None
    rates = {"conv": self.prune_rate_conv, "fc": self.prune_rate_fc}
    return {n: pruning.keep_count(s[-1], rates[k], round_)
            for n, (s, k) in self.kernel_shapes().items() if k != "output"}

  def dense_under_structure(self):
    """The prunable layers --structure=N:M leaves dense: those whose input axis (a Dense
    kernel's rows, a convolution's input channels) is not a multiple of M."""
    n_m = self.n_of_m()
    return [] if not n_m else [n for n, (s, _) in self.kernel_shapes().items() if s[-2] % n_m[1]]

  def kernel_shapes(self):
    """{prunable layer: (kernel shape, kind)} of this experiment's network, without TF."""
    return architectures.kernel_shapes(self.model, data.SHAPES[self.dataset])

  def _groups(self):
    """[(layer names, weights, per-round rate)] of every group of prunable layers."""
    shapes = self.kernel_shapes()
    sizes = {n: math.prod(s) for n, (s, _) in shapes.items()}
    return [(names, sum(sizes[n] for n in names), rate)
            for names, rate in groups(self, sizes, {n: k for n, (_, k) in shapes.items()})]

  def _distributed_last_round(self):
    """(last round, the layer that empties after it) under --distribution: the round after
    which every layer's share still rounds to one weight or more."""
    shapes = {n: s for n, (s, _) in self.kernel_shapes().items()}
    if self.prune_rate <= 0:
      return math.inf, None
    r = 0
    while True:
      after = distributions.raw_counts(self.distribution, shapes, (1 - self.prune_rate) ** (r + 1))
      empty = [n for n, c in after.items() if c < 1]
      if empty:
        return r, empty[0]
      r += 1

  def last_round(self):
    """The last round at which every pruned group of layers still keeps one weight or more
    (pruning.keep_count never lets a group reach zero: past this round it trains a group
    clamped at one weight, which measures nothing); under --structure=unit, one unit."""
    if self.structure == UNIT:
      return min((_last_round(size, rate) for _, size, rate in self._unit_groups()),
                 default=math.inf)
    if self.distribution:
      return self._distributed_last_round()[0]
    return min((_last_round(size, rate) for _, size, rate in self._groups()),
               default=math.inf)

  def _unit_groups(self):
    """[((layer,), units, rate)] of the layers --structure=unit removes units from."""
    rates = {"conv": self.prune_rate_conv, "fc": self.prune_rate_fc}
    return [((n,), s[-1], rates[k]) for n, (s, k) in self.kernel_shapes().items()
            if k != "output"]

  def first_to_empty(self):
    """(layer names, size, rate) of the group that runs out of weights first (under
    --distribution, the rate is the overall --prune_rate; under --structure=unit, the size
    counts units)."""
    if self.structure == UNIT:
      return min(self._unit_groups(), key=lambda g: _last_round(g[1], g[2]))
    if self.distribution:
      layer = self._distributed_last_round()[1]
      return (layer,), math.prod(self.kernel_shapes()[layer][0]), self.prune_rate
    return min(self._groups(), key=lambda g: _last_round(g[1], g[2]))

  def arms(self, round_):
    """Arms trained at ``round_``: the dense round 0 is the ticket's and shared by all."""
    return ("ticket",) + (tuple(self.controls) if round_ > 0 else ())

  def stages(self):
    """Every (arm, trial, round) of the experiment, in the order the local loop runs them."""
    return [(arm, t, r) for t in range(self.trials) for r in range(self.rounds + 1)
            for arm in self.arms(r)]


# Bounds on the settings that do not change the numbers; beyond them TensorFlow fails late.
MAX_THREADS = 1024
MAX_CPU_DEVICES = 64


@dataclasses.dataclass(frozen=True)
class Runtime:
  """How an experiment is computed, apart from what: settings under which the same Config
  gives the same numbers up to the last bits (results are bit-identical only at the same
  values, so flags.cfg records them; a rerun into a folder must match them). ``threads`` is
  resolved (1 or more), ``xla`` whether training compiles with XLA (jit_compile)."""
  threads: int = 1
  deterministic: bool = True
  xla: bool = True
  strategy: str = "default"  # tf.distribute strategy of every stage (lth_tf.distribute)
  cpu_devices: int = 0  # logical CPU devices (0: one)

  def __post_init__(self):
    self.validate()

  def validate(self):
    """Raises ConfigError for the first bad setting; returns self (construction calls it)."""
    _check_int("threads", self.threads, 1)
    _check_int("cpu_devices", self.cpu_devices, 0)
    for name, value, bound in (("threads", self.threads, MAX_THREADS),
                               ("cpu_devices", self.cpu_devices, MAX_CPU_DEVICES)):
      if value > bound:
        raise ConfigError(f"--{name}={value} is invalid; pass at most {bound}")
    for name in ("deterministic", "xla"):
      if not isinstance(getattr(self, name), bool):
        raise ConfigError(f"--{name}={getattr(self, name)!r} is not a boolean; pass true or "
                          f"false")
    _check_name("strategy", self.strategy, STRATEGIES)
    if self.strategy != "default" and self.xla:
      raise ConfigError(f"--strategy={self.strategy} trains without XLA (TF-MOT's wrappers "
                        f"merge_call in the forward pass); pass --xla=false")
    return self


# Limits that keep a typo from running for days or exhausting memory before it fails.
MAX_EXAMPLES_PER_ROUND = 2 ** 28  # the int32 batch table of a round: 1 GiB
MAX_STAGES = 100_000


_RUNTIME_FIELDS = {f.name for f in dataclasses.fields(Runtime)}
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(Config)}


def groups(cfg, sizes, kinds):
  """How ``cfg`` groups the prunable layers: [(layer names, per-round rate)], in the order of
  ``sizes`` ({layer: weights}); ``kinds`` gives each layer's kind (conv, fc or output).

  A method that is not ``pooled`` (IMP per layer, early-bird) prunes each layer at the
  paper's rate for its kind; a pooled one (--pruning=global, and SNIP, GraSP and SynFlow, which
  rank their scores globally as in their papers) pools the layers under one threshold at
  --prune_rate, the output layer keeping its own rate unless --global_output_layer.
  """
  by_kind = {"conv": cfg.prune_rate_conv, "fc": cfg.prune_rate_fc,
             "output": cfg.prune_rate_output}
  if not method_registry.get(cfg.pruning).pooled:
    return [((n,), by_kind[kinds[n]]) for n in sizes]
  pooled = tuple(n for n in sizes if cfg.global_output_layer or kinds[n] != "output")
  return [(pooled, cfg.prune_rate)] + [((n,), by_kind[kinds[n]]) for n in sizes
                                       if n not in pooled]


MAX_STRUCTURE_M = 1024  # --structure=N:M: larger groups are unstructured pruning in all but name
UNIT = "unit"  # --structure=unit


def targets(cfg, shapes, kinds, round_):
  """How many weights each group keeps after ``round_`` rounds: [((layer, ...), count)], the
  targets pruning.prune takes. ``shapes``: {layer: kernel shape}; ``kinds``: {layer: kind}.
  With --distribution, every layer is its own group at its share of the overall density
  (1 - --prune_rate)^round (lth_tf.distributions); else config.groups at their rates."""
  if cfg.distribution:
    counts = distributions.counts(cfg.distribution, shapes, (1.0 - cfg.prune_rate) ** round_)
    return [((n,), c) for n, c in counts.items()]
  units = cfg.unit_counts(round_)
  if units is not None:  # weights between kept units (lth_tf.pruning.unit_masks)
    out, previous = [], None
    for name, s in shapes.items():
      cols = units.get(name, s[-1])
      rows = s[-2] if previous is None else s[-2] // previous[1] * previous[0]
      out.append(((name,), math.prod(s[:-2]) * rows * cols))
      previous = (cols, s[-1])
    return out
  n_m = cfg.n_of_m()
  if n_m:  # N of every M along the input axis from round 1; a non-multiple layer stays dense
    n, m = n_m
    return [((name,), math.prod(s) * n // m if round_ and not s[-2] % m else math.prod(s))
            for name, s in shapes.items()]
  sizes = {n: math.prod(s) for n, s in shapes.items()}
  return [(names, pruning.keep_count(sum(sizes[n] for n in names), rate, round_))
          for names, rate in groups(cfg, sizes, kinds)]


def _last_round(size, rate):
  """The last round after which ``size`` weights pruned at ``rate`` per round still keep one
  (before pruning.keep_count's floor of one)."""
  if rate <= 0:
    return math.inf
  r = max(0, int(math.log(0.5 / size) / math.log(1.0 - rate)) - 2)
  while round(size * (1.0 - rate) ** (r + 1)) >= 1:
    r += 1
  return r


def _group_label(names):
  """A group of layers for a message: its one layer, or the pooled layers' first and last."""
  return names[0] if len(names) == 1 else f"the {len(names)} pooled layers {names[0]}..{names[-1]}"


def _check_name(flag, value, choices):
  if value not in choices:
    raise ConfigError(f"--{flag}={value} is unknown; use one of {', '.join(choices)}")


def _check_int(flag, value, low):
  if isinstance(value, bool) or not isinstance(value, int):
    raise ConfigError(f"--{flag}={value!r} is not a whole number; pass an integer of {low} or "
                      f"more")
  if value < low:
    raise ConfigError(f"--{flag}={value} is invalid; pass {low} or more")


def _check_float(flag, value, low, high, example):
  """``value`` in [low, high)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
    raise ConfigError(f"--{flag}={value} is outside [{low:g}, {high:g}); pass {example}")


def _check_positive(flag, value, example):
  if (isinstance(value, bool) or not isinstance(value, (int, float))
      or not 0.0 < value < math.inf):
    raise ConfigError(f"--{flag}={value} is invalid; pass {example}")
