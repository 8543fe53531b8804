"""Does iterative magnitude pruning find the same ticket in every trial?

For every round r >= 1 and every pair of trials of the ticket arm, per layer and over all
layers: the Jaccard index |A∩B|/|A∪B| of the surviving weights, and the overlap ratio
|A∩B| / E[|A∩B|], E = n·d_a·d_b for two independent random masks of the same densities (summed
over layers for 'all'), so 1 is chance and 0 disjoint. Experiments run with --same_init share
θ0 across trials ("same θ0"), the others do not ("different θ0").

Writes ``<dir>/study_consistency.csv`` for every folder, ``<first dir>/plots/consistency``,
and for LeNet (fc1 with 28×28 inputs) ``<first dir>/plots/input_connectivity``: how many of
each input pixel's outgoing fc1 weights survive, ticket beside random pruning.
"""
import itertools

import numpy as np

from lth_tf import artifacts, masks, plot
from lth_tf.study import common
from lth_tf.study.common import StudyError

COLUMNS = ("label", "round", "weights_remaining", "layer", "trial_a", "trial_b", "jaccard",
           "overlap_ratio")
LABELS = {True: "same θ0", False: "different θ0"}
LABEL_COLORS = {"same θ0": "C0", "different θ0": "C1"}
INPUT_SIDE = 28  # LeNet on (fashion-)MNIST: fc1 takes 28×28 pixels


def label(exp):
  """'same θ0' when the experiment ran with --same_init=True, else 'different θ0'."""
  return LABELS[bool(exp.same_init)]


def mask_pairs(mask_a, mask_b):
  """[(layer, jaccard, overlap ratio)] for each layer of two masks, then 'all' over layers."""
  out = [(n, masks.jaccard(mask_a[n], mask_b[n]), masks.overlap_ratio(mask_a[n], mask_b[n]))
         for n in mask_a]
  out.append(("all", masks.jaccard(mask_a, mask_b), masks.overlap_ratio(mask_a, mask_b)))
  return out


def pair_rows(exp):
  """study_consistency.csv rows of one experiment: every round >= 1, every pair of trials
  whose ticket finished that round, every layer and 'all'."""
  rows = []
  lab = label(exp)
  rounds = sorted({r["round"] for r in exp.finished("ticket") if r["round"] >= 1})
  for round_ in rounds:
    stage_rows = {r["trial"]: r for r in exp.finished("ticket", round_=round_)}
    trials = sorted(stage_rows)
    loaded = {t: exp.mask("ticket", t, round_) for t in trials}
    for a, b in itertools.combinations(trials, 2):
      pct = float(np.mean([stage_rows[a]["weights_remaining"], stage_rows[b]["weights_remaining"]]))
      for layer, jac, ratio in mask_pairs(loaded[a], loaded[b]):
        rows.append(dict(label=lab, round=round_, weights_remaining=pct, layer=layer,
                         trial_a=a, trial_b=b, jaccard=jac, overlap_ratio=ratio))
  return rows


def plot_consistency(fig, rows_by_label, layer="all"):
  """Overlap ratio (left) and Jaccard index (right) vs % weights remaining, one line per
  label, mean with min/max over trial pairs; the dotted line is chance overlap."""
  axes = fig.subplots(1, 2)
  percents = set()
  for ax, key, ylabel in ((axes[0], "overlap_ratio", "Overlap / chance  |A∩B| / E|A∩B|"),
                          (axes[1], "jaccard", "Jaccard index  |A∩B| / |A∪B|")):
    for lab, rows in rows_by_label.items():
      sel = [r for r in rows if r["layer"] == layer]
      n_pairs = len({(r["trial_a"], r["trial_b"], r.get("dir")) for r in sel})
      name = f"{lab} ({n_pairs} pair{'s' if n_pairs != 1 else ''} of trials)"
      percents.update(common.errorbar(ax, common.summarize(sel, key),
                                      color=LABEL_COLORS.get(lab), label=name))
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
  axes[0].axhline(1.0, color="0.4", linestyle=":", label="independent random masks")
  axes[1].set_ylim(0, 1.02)
  for ax in axes:
    plot.weights_remaining_axis(ax, percents)
    ax.legend(fontsize="small")


def default_round(exp, trial=0):
  """The last round with both ticket and random_prune finished for ``trial``; without
  random_prune, the ticket's last finished round. None if the ticket has none."""
  ticket_rounds = {r["round"] for r in exp.finished("ticket", trial=trial)}
  both = ticket_rounds & {r["round"] for r in exp.finished("random_prune", trial=trial)}
  pool = both or ticket_rounds
  return max(pool) if pool else None


def input_connectivity(mask, side=INPUT_SIDE):
  """fc1 mask row sums (surviving outgoing weights of each input pixel) as side×side."""
  return mask["fc1"].sum(axis=1).reshape(side, side)


def plot_input_connectivity(fig, maps, width):
  """Side-by-side 28×28 maps, one per (title, map), on one colour scale (the maps' range),
  each with a colorbar."""
  axes = fig.subplots(1, len(maps), squeeze=False)[0]
  vmin = min(float(m.min()) for _, m in maps)  # one scale, so the panels compare
  vmax = max(float(m.max()) for _, m in maps)
  for ax, (name, m) in zip(axes, maps):
    image = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=max(vmax, vmin + 1),
                      interpolation="nearest")
    ax.set_title(name, fontsize="medium")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(image, ax=ax, shrink=0.85,
                 label=f"surviving fc1 weights per input pixel (of {width})")


def has_pixel_fc1(exp):
  """True for a model whose fc1 takes 28×28 single-channel pixels (LeNet on MNIST-like data)."""
  path = f"{exp.stage_dir('ticket', 0, 0)}/masks.npz"
  if not artifacts.exists(path):
    return False
  fc1 = exp.mask("ticket", 0, 0).get("fc1")
  return fc1 is not None and fc1.ndim == 2 and fc1.shape[0] == INPUT_SIDE * INPUT_SIDE


def write_input_connectivity(exp, round_=None, trial=0):
  """plots/input_connectivity.png/.pdf of ``exp``; returns the paths ([] for non-LeNet)."""
  if not has_pixel_fc1(exp):
    return []
  finished_rounds = sorted(r["round"] for r in exp.finished("ticket", trial=trial))
  if round_ is None:
    round_ = default_round(exp, trial)
  elif round_ not in finished_rounds:
    raise StudyError(f"--round={round_}: the ticket of trial {trial} in {exp.output_dir} has "
                     f"not finished that round; pass one of {finished_rounds}")
  arms = ["ticket"] + (["random_prune"] if exp.row("random_prune", trial, round_) else [])
  maps = []
  for arm in arms:
    mask = exp.mask(arm, trial, round_)
    pct = 100 * mask["fc1"].mean()
    maps.append((f"{plot.ARM_LABELS[arm]}, round {round_}\n({pct:.1f}% of fc1 remaining)",
                 input_connectivity(mask)))
  width = exp.mask("ticket", trial, round_)["fc1"].shape[1]
  fig = plot.new_figure(f"{exp.cfg.model} on {exp.cfg.dataset}: fc1 input connectivity, "
                        f"trial {trial}", width=4.5 * len(maps) + 1.0)
  plot_input_connectivity(fig, maps, width)
  return plot.save(fig, exp.output_dir, "input_connectivity")


def run(output_dirs, round_=None):
  """The consistency study of ``output_dirs`` (a list; the figures go to the first).

  ``round_`` picks the input-connectivity round (default: the last with both the ticket and
  random pruning finished in trial 0). Returns the paths written.
  """
  if isinstance(output_dirs, str):
    output_dirs = [output_dirs]
  if not output_dirs:
    raise StudyError("--output_dir is empty; pass one or more experiment folders, comma-separated")
  exps = [common.load(d) for d in output_dirs]
  written, rows_by_label = [], {}
  for exp in exps:
    rows = pair_rows(exp)
    if not rows:
      raise StudyError(f"--output_dir={exp.output_dir}: no round >= 1 has two finished ticket "
                       f"trials yet; run lth_tf.main with --trials=2 or more (and --rounds=1 "
                       f"or more) into it first")
    path = f"{exp.output_dir}/study_consistency.csv"
    artifacts.write_bytes(path, common.csv_text(COLUMNS, rows))
    written.append(path)
    rows_by_label.setdefault(label(exp), []).extend(dict(r, dir=exp.output_dir) for r in rows)
  first = exps[0]
  models = sorted({f"{e.cfg.model} on {e.cfg.dataset}" for e in exps})
  fig = plot.new_figure(f"{', '.join(models)}: do trials find the same ticket?", width=11.0)
  plot_consistency(fig, rows_by_label)
  written += plot.save(fig, first.output_dir, "consistency")
  written += write_input_connectivity(first, round_)
  return written
