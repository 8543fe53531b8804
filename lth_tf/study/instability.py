"""Instability (Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis"): does a subnetwork train to the same linearly connected basin whatever the SGD
noise?

For each (arm, trial, round) analysed, two copies start from the stage's own start weights
(θ0⊙m, θ_k⊙m with ``--rewind=iteration``, or the control's draw) under the stage's mask and
train the stage's full ``--iterations`` with different data orders:

- copy A is the experiment's stage itself: its weights.npz where it is here (weights stay out
  of git), else retrained with the stage's own batch order, start and compiled step (the same
  numbers as the experiment on the same CPU and thread count);
- copy B uses another batch order (a seed derived from the stage's and "instability").

Test error is evaluated at ``points`` evenly spaced points of the straight line between the
two trained weight sets (final weights, as Frankle et al., not the early-stop ones), and the
**error barrier** is the maximum error on the path minus the mean of the two ends' errors:
0 when the copies are linearly connected (the subnetwork is stable), up to ~0.9 when the path
crosses chance-level networks. Frankle et al. call a subnetwork stable when the barrier is
below 2%.

Paul et al. 2022 ("Unmasking the Lottery Ticket Hypothesis") also measure IMP's own path:
the barrier between round r−1's and round r's trained tickets (kind ``successive``; the path
is evaluated under round r−1's mask, which holds round r's: only where it does, i.e. for
iterative IMP; other methods' masks do not nest and get no such row). Round r−1's weights come from the
experiment, from this study's copy A of r−1, or are retrained (one more training).

``rewind_iteration=K`` starts the ticket's copies from θ_K⊙m instead (θ_K: the dense network
after K iterations of the trial's round-0 batch order, as ``--rewind=iteration`` captures it),
with the experiment's masks: Frankle et al.'s θ0-against-θ_k comparison, except that their
masks were found by IMP with rewinding to k.

Batch norm: the running mean and variance are not interpolated (a line between two sets of
running statistics is not the statistics of any point on the path); at every point they are
recomputed from ``bn_batches`` training batches in training mode: each BN layer's moving mean
and variance become the mean over those batches of the batch mean and (biased) batch variance
of the layer's input.

Rows are appended to study_instability.csv as they finish; a rerun skips the rows it has, so
a long study resumes where it stopped. Trained copies are cached under
``<output_dir>/study_instability/`` (out of git) for successive-round paths of later runs.
"""
import weakref

import numpy as np
import tf_keras as keras

from lth_tf import artifacts, data, layout, masks, models, network, ticket, training
from lth_tf.study import common, properties
from lth_tf.study.common import StudyError

ARMS = ("ticket", "reinit", "random_prune")
COLUMNS = ("kind", "arm", "trial", "round", "weights_remaining", "start", "rewind_iteration",
           "points", "error_a", "error_b", "barrier", "max_error", "copy_a", "path_errors")
KEY = ("kind", "arm", "trial", "round", "start", "rewind_iteration", "points")


def barrier(errors):
  """The error barrier of a path: its maximum error minus the mean of its two ends' errors."""
  errors = list(errors)
  return max(errors) - (errors[0] + errors[-1]) / 2.0


def interpolate(a, b, alpha):
  """(1 − alpha)·a + alpha·b of two {layer: [arrays]} weight sets."""
  return {n: [(1.0 - alpha) * x + alpha * y for x, y in zip(a[n], b[n])] for n in a}


def bn_layers(model):
  return [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]


def _input_in(model, layer):
  """``layer``'s input tensor in ``model``'s graph: a pruning-wrapped model shares its batch
  norm layers with the plain model it was cloned from, whose node ``layer.input`` names."""
  for index in range(len(layer._inbound_nodes)):  # tf_keras keys a model's nodes this way
    if f"{layer.name}_ib-{index}" in model._network_nodes:
      return layer.get_input_at(index)
  raise ValueError(f"{layer.name} is not called in {model.name}")


_BN_PROBES = weakref.WeakKeyDictionary()  # model -> the model of its BN layers' inputs


def recompute_bn_statistics(model, batches):
  """Sets every BatchNormalization layer's moving mean and variance to the mean over
  ``batches`` (input arrays) of the batch statistics of the layer's input in training mode.
  No-op for a network without batch norm."""
  layers = bn_layers(model)
  if not layers:
    return
  if model not in _BN_PROBES:  # built once per model, not at every point of every path
    _BN_PROBES[model] = keras.Model(model.inputs, [_input_in(model, l) for l in layers])
  probe = _BN_PROBES[model]
  sums = [[0.0, 0.0] for _ in layers]
  for xb in batches:
    outputs = probe(xb, training=True)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    for s, h in zip(sums, outputs):
      h = np.asarray(h, np.float64)
      axes = tuple(range(h.ndim - 1))
      s[0] = s[0] + h.mean(axis=axes)
      s[1] = s[1] + h.var(axis=axes)
  for layer, (mean_sum, var_sum) in zip(layers, sums):
    layer.moving_mean.assign((mean_sum / len(batches)).astype(np.float32))
    layer.moving_variance.assign((var_sum / len(batches)).astype(np.float32))


def path_errors(trainer, weights_a, weights_b, test, points=11, bn_batches=()):
  """Test errors at ``points`` evenly spaced points from ``weights_a`` (first) to
  ``weights_b`` (last), under the model's current masks; BN statistics recomputed at each."""
  errors = []
  for alpha in np.linspace(0.0, 1.0, points):
    ticket.set_weights(trainer.model, interpolate(weights_a, weights_b, float(alpha)))
    recompute_bn_statistics(trainer.model, bn_batches)
    errors.append(1.0 - trainer.evaluate(test.x, test.y)[1])
  return errors


def copy_b_seed(cfg, trial, round_):
  """Copy B's batch order: not copy A's (the experiment's stage), derived from it."""
  return layout.derive_seed(layout.data_seed(cfg, trial, round_), "instability")


class Study:
  """One experiment folder's instability study: a model, a trainer and the data, reused for
  every copy (the experiment's compiled step, so copy A reproduces the stage)."""

  def __init__(self, exp, splits, points=11, bn_batches=20):
    self.exp, self.cfg, self.points = exp, exp.cfg, points
    if exp.recorded.runtime.strategy != "default":
      raise StudyError(f"--output_dir={exp.output_dir} trained with --strategy="
                       f"{exp.recorded.runtime.strategy}; the study trains with the default "
                       f"strategy, so copy A would not be the experiment's stage")
    self.model = ticket.wrap(models.build(self.cfg.model, splits.train_x.shape[1:],
                                          init=self.cfg.initializer))
    self.trainer = network.make_trainer(self.cfg, self.model,
                                        jit_compile=exp.recorded.runtime.xla)
    self.splits = splits
    self.train = training.Split.of(splits.train_x, splits.train_y)
    self.val = training.Split.of(splits.val_x, splits.val_y)
    self.test = training.Split.of(splits.test_x, splits.test_y)
    self.bn_batches = []
    if bn_layers(self.model):
      table = data.batch_indices(len(splits.train_x), self.cfg.batch_size, bn_batches,
                                 layout.derive_seed(self.cfg.seed, "instability-bn"))
      self.bn_batches = [splits.train_x[i] for i in table]
    # what the experiment's stages start from: θ0, θ_k (--rewind=iteration) or the previous
    # round's trained weights (--rewind=none)
    self.start = {"init": "theta0", "iteration": "theta_k"}.get(self.cfg.rewind, "trained")
    self.copies = {}  # (arm, trial, round, start, rewind_iteration, copy) -> weights
    self.trainings = 0  # trainings this study ran (tests count them)

  def cache_path(self, arm, trial, round_, start, copy):
    return (f"{self.exp.output_dir}/study_instability/{arm}/trial_{trial}/round_{round_}/"
            f"{start}_{copy}.npz")

  def start_weights(self, arm, trial, round_, mask, rewind_iteration=None):
    """The stage's start weights under ``mask``; the ticket's from θ_K with rewind_iteration."""
    if rewind_iteration is None or arm != "ticket":
      return properties.start_weights(self.exp, arm, trial, round_, mask)
    return properties.apply_mask(self.theta_k(trial, rewind_iteration), mask)

  def theta_k(self, trial, k):
    """The dense network after ``k`` iterations of the trial's round-0 batches from θ0."""
    key = ("theta_k", trial, k)
    if key not in self.copies:
      path = layout.rewind_path(self.exp.output_dir, trial, k)
      if artifacts.exists(path):
        self.copies[key] = artifacts.read_weights(path, self.exp.weight_shapes)
      else:
        dense = masks.ones_like(self.exp.mask("ticket", trial, 0))
        ticket.set_masks(self.model, dense)
        ticket.set_weights(self.model, self.exp.theta0(trial))
        self.trainer.reset_optimizer()
        table = data.batch_indices(len(self.splits.train_x), self.cfg.batch_size, k,
                                   layout.data_seed(self.cfg, trial, 0))
        for begin in range(0, k, self.cfg.eval_every):
          self.trainer.train_block(self.train.x, self.train.y,
                                   table[begin:begin + self.cfg.eval_every])
        self.copies[key] = ticket.get_weights(self.model)
    return self.copies[key]

  def trained_copy(self, arm, trial, round_, copy, rewind_iteration=None):
    """("experiment" | "retrained" | "cached" | "new", weights) of copy "a" or "b"."""
    start = ("experiment" if rewind_iteration is None or arm != "ticket"
             else f"theta_{rewind_iteration}")
    key = (arm, trial, round_, start, copy)
    if key in self.copies:
      return self.copies[key]
    exp, cfg = self.exp, self.cfg
    if copy == "a" and start == "experiment" and exp.has_weights(arm, trial, round_):
      found = ("experiment", exp.weights(arm, trial, round_))
    elif artifacts.exists(self.cache_path(arm, trial, round_, start, copy)):
      found = ("cached", artifacts.read_weights(self.cache_path(arm, trial, round_, start, copy),
                                                exp.weight_shapes))
    else:
      mask = exp.mask(arm, trial, round_)
      begin = self.start_weights(arm, trial, round_, mask, rewind_iteration)
      seed = (layout.data_seed(cfg, trial, round_) if copy == "a"
              else copy_b_seed(cfg, trial, round_))
      weights = self.train_from(begin, mask, seed, f"[instability {arm} trial {trial} round "
                                                   f"{round_} copy {copy}]")
      artifacts.write_weights(self.cache_path(arm, trial, round_, start, copy), weights)
      found = ("retrained" if copy == "a" and start == "experiment" else "new", weights)
    self.copies[key] = found
    return found

  def train_from(self, start, mask, seed, label):
    """Trains the stage's --iterations from ``start`` under ``mask`` with batch order ``seed``,
    as the experiment's stage does; returns the final (masked) weights."""
    ticket.set_masks(self.model, mask)
    ticket.set_weights(self.model, start)
    self.trainer.reset_optimizer()
    table = data.batch_indices(len(self.splits.train_x), self.cfg.batch_size,
                               self.cfg.iterations, seed)
    training.train_round(self.trainer, self.train, table, self.val, self.test,
                         self.cfg.eval_every, label=label)
    ticket.apply_masks(self.model)
    self.trainings += 1
    return ticket.get_weights(self.model)

  def path_row(self, kind, arm, trial, round_, mask, a, b, start, rewind_iteration, copy_a):
    ticket.set_masks(self.model, mask)
    errors = path_errors(self.trainer, a, b, self.test, self.points, self.bn_batches)
    return dict(kind=kind, arm=arm, trial=trial, round=round_,
                weights_remaining=100.0 * masks.fraction_remaining(mask), start=start,
                rewind_iteration=-1 if rewind_iteration is None else rewind_iteration,
                points=self.points, error_a=errors[0], error_b=errors[-1],
                barrier=barrier(errors), max_error=max(errors), copy_a=copy_a,
                path_errors=";".join(repr(float(e)) for e in errors))

  def copies_row(self, arm, trial, round_, rewind_iteration=None):
    """The barrier between two copies of the stage trained with different batch orders."""
    source, a = self.trained_copy(arm, trial, round_, "a", rewind_iteration)
    _, b = self.trained_copy(arm, trial, round_, "b", rewind_iteration)
    override = rewind_iteration is not None and arm == "ticket"
    start = "theta_k" if override else self.start
    k = rewind_iteration if override else (
        self.cfg.rewind_iteration if self.start == "theta_k" else None)
    return self.path_row("copies", arm, trial, round_, self.exp.mask(arm, trial, round_), a, b,
                         start, k, source)

  def successive_row(self, trial, round_):
    """The barrier between round r−1's and round r's trained tickets (under r−1's mask)."""
    source, previous = self.trained_copy("ticket", trial, round_ - 1, "a")
    _, current = self.trained_copy("ticket", trial, round_, "a")
    return self.path_row("successive", "ticket", trial, round_,
                         self.exp.mask("ticket", trial, round_ - 1), previous, current,
                         self.start, None, source)


def nested(exp, trial, round_):
  """Whether the ticket's round-r mask lies inside round r−1's, so that round r's network is
  a point of round r−1's subspace and IMP walked from one to the other (iterative layerwise
  or global IMP; not one-shot masks, static's fresh draws or early-bird's separate masks)."""
  return masks.is_subset(exp.mask("ticket", trial, round_), exp.mask("ticket", trial, round_ - 1))


def missing(exp, arms, trials, rounds):
  """[(arm, trial, round)] that the study needs and results.csv does not have."""
  need = []
  for trial in trials:
    for round_ in rounds:
      for arm in arms:
        if arm != "ticket" and round_ == 0:
          continue
        if exp.row(arm, trial, round_) is None:
          need.append((arm, trial, round_))
      if round_ >= 1 and "ticket" in arms and exp.row("ticket", trial, round_ - 1) is None:
        need.append(("ticket", trial, round_ - 1))
  return sorted(set(need), key=lambda s: (s[1], s[2], s[0]))


def check(exp, arms, trials, rounds, rewind_iteration, points):
  """StudyError (one line naming the flag and the fix) for a study that cannot run here."""
  from lth_tf.methods import registry as method_registry
  cfg = exp.cfg
  method = method_registry.get(cfg.pruning)
  if method.masks_move:
    raise StudyError(f"--output_dir={exp.output_dir} trained with --pruning={cfg.pruning}, "
                     f"whose masks move during training; the instability study needs a fixed "
                     f"mask per stage (IMP and the pruning-at-init methods)")
  if points < 3:
    raise StudyError(f"--path_points={points} is too few; pass at least 3 (11 or more for a "
                     f"barrier worth reporting)")
  unknown = [a for a in arms if a not in ("ticket", *cfg.controls)]
  if unknown:
    raise StudyError(f"--arms={','.join(arms)}: {','.join(unknown)} did not run in "
                     f"{exp.output_dir} (it ran ticket{''.join(',' + c for c in cfg.controls)})")
  bad = [r for r in rounds if not 0 <= r <= cfg.rounds]
  if bad:
    raise StudyError(f"--rounds={','.join(map(str, rounds))}: {bad[0]} is not a round of "
                     f"{exp.output_dir} (0 to {cfg.rounds})")
  bad = [t for t in trials if not 0 <= t < cfg.trials]
  if bad:
    raise StudyError(f"--trials={','.join(map(str, trials))}: trial {bad[0]} is not one of "
                     f"{exp.output_dir}'s (0 to {cfg.trials - 1})")
  if rewind_iteration is not None and cfg.rewind != "init":
    raise StudyError(f"--rewind_iteration: {exp.output_dir} trained with --rewind={cfg.rewind}, "
                     f"so its tickets do not start from θ0; compare starts on a --rewind=init "
                     f"folder, or drop the flag")
  if cfg.rewind == "iteration":
    gone = [t for t in trials if not artifacts.exists(
        layout.rewind_path(exp.output_dir, t, cfg.rewind_iteration))]
    if gone:
      raise StudyError(f"--output_dir={exp.output_dir}: "
                       f"{layout.rewind_path(exp.output_dir, gone[0], cfg.rewind_iteration)}, "
                       f"which its tickets start from, is missing; copy it back from where "
                       f"lth_tf.main ran")
  if rewind_iteration is not None and not (
      0 < rewind_iteration < cfg.iterations and rewind_iteration % cfg.eval_every == 0):
    raise StudyError(f"--rewind_iteration={rewind_iteration} is not a multiple of "
                     f"--eval_every={cfg.eval_every} in (0, {cfg.iterations}); pass e.g. "
                     f"{cfg.eval_every * 5}")
  need = missing(exp, arms, trials, rounds)
  if need:
    listed = ", ".join(f"[{a} trial {t} round {r}]" for a, t, r in need[:4])
    more = f" and {len(need) - 4} more" if len(need) > 4 else ""
    raise StudyError(f"--output_dir={exp.output_dir} lacks the stages {listed}{more}; finish "
                     f"them with python -m lth_tf.main --flagfile={exp.output_dir}/flags.cfg "
                     f"--rounds={max(r for _, _, r in need)} --trials="
                     f"{max(t for _, t, _ in need) + 1}")


def compute(exp, splits, arms=ARMS, trials=(0,), rounds=None, points=11, rewind_iteration=None,
            done=(), on_row=None, bn_batches=20):
  """The study's rows (see module docstring), skipping the KEYs in ``done``; ``on_row(row)``
  is called as each finishes (run() appends it to the CSV there)."""
  rounds = list(range(exp.cfg.rounds + 1)) if rounds is None else list(rounds)
  check(exp, arms, trials, rounds, rewind_iteration, points)
  study = Study(exp, splits, points, bn_batches)
  done, rows = set(done), []

  def emit(row):
    rows.append(row)
    if on_row is not None:
      on_row(row)

  for trial in trials:
    for round_ in rounds:
      for arm in arms:
        if arm != "ticket" and round_ == 0:
          continue
        theta_k = rewind_iteration is not None and arm == "ticket"
        own_k = exp.cfg.rewind_iteration if study.start == "theta_k" else -1
        key = ("copies", arm, trial, round_, "theta_k" if theta_k else study.start,
               rewind_iteration if theta_k else own_k, points)
        if key not in done:
          emit(study.copies_row(arm, trial, round_, rewind_iteration if theta_k else None))
      key = ("successive", "ticket", trial, round_, study.start, -1, points)
      if ("ticket" in arms and round_ >= 1 and rewind_iteration is None and key not in done
          and nested(exp, trial, round_)):
        emit(study.successive_row(trial, round_))
  return rows, study


def read_rows(path):
  """study_instability.csv's rows ([] if absent); CorruptFileError for a cell that is not a
  number where one belongs."""
  if not artifacts.exists(path):
    return []
  rows = common.read_csv(path, COLUMNS)
  for number, r in enumerate(rows, start=2):
    bad = [c for c in COLUMNS if c not in ("kind", "arm", "start", "copy_a", "path_errors")
           and not isinstance(r[c], (int, float))]
    if bad:
      raise artifacts.CorruptFileError(path, f"line {number}: {bad[0]}={r[bad[0]]!r} is not a "
                                             f"number")
  return rows


def key_of(row):
  return tuple(row[k] for k in KEY)


def write_figure(exp, rows):
  from lth_tf import plot
  copies = [r for r in rows if r["kind"] == "copies"]
  theta_k = [r for r in copies if r["start"] == "theta_k"]
  fig = plot.new_figure(f"Instability, {exp.cfg.model} on {exp.cfg.dataset}: two copies, "
                        f"two batch orders", width=11.0 if theta_k else 6.5)
  axes = fig.subplots(1, 2 if theta_k else 1, squeeze=False)[0]
  percents = {r["weights_remaining"] for r in rows}
  ax = axes[0]
  for arm in ARMS:
    points = common.summarize([r for r in copies if r["arm"] == arm and r["start"] != "theta_k"
                               or r["arm"] == arm and exp.cfg.rewind == "iteration"
                               and r["rewind_iteration"] == exp.cfg.rewind_iteration],
                              key="barrier")
    common.errorbar(ax, points, scale=100.0, color=plot.ARM_COLORS.get(arm),
                    label=plot.ARM_LABELS.get(arm, arm))
  successive = common.summarize([r for r in rows if r["kind"] == "successive"], key="barrier")
  common.errorbar(ax, successive, scale=100.0, color="0.4", linestyle="--",
                  label="IMP round r−1 → r (at r−1's %)")
  ax.axhline(2.0, color="0.6", lw=0.8, linestyle=":")
  ax.set_ylabel("Error barrier (test error %, max on path − mean of ends)")
  starts = {"init": "θ0", "iteration": f"θ_{exp.cfg.rewind_iteration}"}
  ax.set_title(f"{starts.get(exp.cfg.rewind, 'previous round')} rewinding (the experiment's); "
               f"dotted: 2% (Frankle et al.'s stability threshold)", fontsize=9)
  plot.weights_remaining_axis(ax, percents)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  if theta_k:
    ax = axes[1]
    for label, subset, style in (
        ("ticket, rewound to θ0", [r for r in copies if r["arm"] == "ticket"
                                   and r["start"] == "theta0"], "-"),
        *[(f"ticket, rewound to θ_{k}", [r for r in theta_k if r["rewind_iteration"] == k], "--")
          for k in sorted({r["rewind_iteration"] for r in theta_k})]):
      common.errorbar(ax, common.summarize(subset, key="barrier"), scale=100.0,
                      linestyle=style, label=label)
    ax.axhline(2.0, color="0.6", lw=0.8, linestyle=":")
    ax.set_title("Ticket: θ0 against θ_k rewinding (the experiment's masks)", fontsize=9)
    plot.weights_remaining_axis(ax, percents)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  return plot.save(fig, exp.output_dir, "instability")


def run(output_dir, splits=None, data_dir=None, manual_dir=None, arms=None, trials=(0,),
        rounds=None, points=11, rewind_iteration=None):
  """Appends the missing rows to study_instability.csv and draws plots/instability.{png,pdf};
  returns the paths. ``arms`` defaults to the ticket and the folder's reinit/random_prune."""
  exp = common.load(output_dir)
  if arms is None:
    arms = [a for a in ARMS if a == "ticket" or a in exp.cfg.controls]
  rounds = list(range(exp.cfg.rounds + 1)) if rounds is None else list(rounds)
  check(exp, arms, trials, rounds, rewind_iteration, points)
  path = f"{output_dir}/study_instability.csv"
  rows = read_rows(path)
  other = sorted({r["points"] for r in rows} - {points})
  if other:
    raise StudyError(f"--path_points={points}: {path} holds paths of {other[0]} points; pass "
                     f"--path_points={other[0]} to extend it, or move the file away to start "
                     f"over")
  if splits is None:
    splits = properties.load_test_split(exp, data_dir, manual_dir)

  def append(row):  # re-read first: another study on this folder may have added rows
    rows[:] = [r for r in read_rows(path) if key_of(r) != key_of(row)] + [row]
    artifacts.write_bytes(path, common.csv_text(COLUMNS, rows))

  compute(exp, splits, arms, trials, rounds, points, rewind_iteration,
          done={key_of(r) for r in rows}, on_row=append)
  if not rows:
    return [path]
  artifacts.write_bytes(path, common.csv_text(COLUMNS, rows))
  return [path, *write_figure(exp, rows)]
