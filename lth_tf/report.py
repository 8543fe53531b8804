"""Markdown tables of an experiment for results/README.md, from results.csv alone.

  python -m lth_tf.report --output_dir=results/lenet_fashion_mnist

prints, per round: % weights remaining, then for each arm the early-stop iteration and the
test accuracy at early stop as mean ± std over the trials finished (n shown when trials are
missing), with diverged runs left out and counted; then a second table with the paper's four
comparisons as differences paired by trial (same θ0, same data split), each marked with ✓ when
every trial agrees in sign with the paper's claim, ✗ when every trial contradicts it, ~ when
trials disagree.

  python -m lth_tf.report --compare results/lenet_fashion_mnist results/lenet_fashion_mnist_snip

prints one by-round table of several experiments' tickets (e.g. ticket-finding methods) and the
first one's random pruning, the numbers behind ``python -m lth_tf.plot --compare``.
"""
import collections
import sys

import numpy as np
from absl import app, flags

import lth_tf  # noqa: F401
from lth_tf import artifacts


def _cell(values, scale=1.0, digits=1):
  if not values:
    return "–"
  values = np.asarray(values, float) * scale
  std = f" ± {values.std(ddof=1):.{digits}f}" if len(values) > 1 else ""
  return f"{values.mean():.{digits}f}{std}"


def table(rows, trials):
  """The by-round Markdown table; the dense round 0 is every arm's first row."""
  arms = list(dict.fromkeys(r["arm"] for r in rows))
  by = collections.defaultdict(list)
  for r in rows:
    by[(r["arm"], r["round"])].append(r)
  rounds = sorted({r["round"] for r in rows})
  head = ["round", "% weights remaining"]
  for arm in arms:
    head += [f"{arm}: early-stop iteration", f"{arm}: test accuracy at early stop (%)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for rnd in rounds:
    remaining = [r["weights_remaining"] for a in arms for r in by[(a, rnd)]]
    cells = [str(rnd), f"{np.mean(remaining):.1f}"]
    for arm in arms:
      stage = by[("ticket", 0)] if rnd == 0 else by[(arm, rnd)]
      ok = [r for r in stage if not r["diverged"]]
      note = f" (n={len(ok)})" if ok and len(ok) < trials else ""
      note += f" ({len(stage) - len(ok)} diverged)" if len(stage) > len(ok) else ""
      cells += [_cell([r["early_stop_iteration"] for r in ok], digits=0) + note,
                _cell([r["early_stop_test_accuracy"] for r in ok], scale=100.0, digits=2)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


# The paper's claims as (column title, arm a, arm b, metric, sign the claim predicts for a - b).
# Round 0 (dense) stands in for arm "dense".
CLAIMS = (
    ("(1) ticket − dense: early-stop iteration", "ticket", "dense", "early_stop_iteration", -1),
    ("(2) ticket − dense: test accuracy (points)", "ticket", "dense", "early_stop_test_accuracy",
     +1),
    ("(3) reinit − ticket: early-stop iteration", "reinit", "ticket", "early_stop_iteration", +1),
    ("(3) ticket − reinit: test accuracy (points)", "ticket", "reinit",
     "early_stop_test_accuracy", +1),
    ("(4) ticket − random_prune: test accuracy (points)", "ticket", "random_prune",
     "early_stop_test_accuracy", +1),
)


def paired(rows, a, b, metric, rnd):
  """{trial: a - b} for ``metric`` at round ``rnd``, over trials where both finished without
  diverging; arm "dense" is the ticket's round 0 of the same trial."""
  scale = 100.0 if metric == "early_stop_test_accuracy" else 1.0
  values = {(r["arm"], r["trial"], r["round"]): r[metric] * scale
            for r in rows if not r["diverged"]}

  def value(arm, trial):
    return values.get(("ticket", trial, 0) if arm == "dense" else (arm, trial, rnd))

  diffs = {}
  for t in sorted({r["trial"] for r in rows}):
    va, vb = value(a, t), value(b, t)
    if va is not None and vb is not None:
      diffs[t] = va - vb
  return diffs


def verdict(diffs, sign):
  """✓ every trial agrees in sign with the claim, ✗ every trial contradicts it, ~ mixed."""
  signs = {int(np.sign(d)) * sign for d in diffs.values()}
  return "✓" if signs == {1} else "✗" if signs <= {-1, 0} else "~"


def claims_table(rows):
  """The paper's comparisons per pruned round, paired by trial: mean ± std and a verdict."""
  arms = {r["arm"] for r in rows}
  cols = [c for c in CLAIMS if {c[1], c[2]} - {"dense"} <= arms]
  head = ["round", "% weights remaining"] + [c[0] for c in cols]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for rnd in sorted({r["round"] for r in rows} - {0}):
    remaining = [r["weights_remaining"] for r in rows if r["round"] == rnd and r["arm"] == "ticket"]
    if not remaining:
      continue
    cells = [str(rnd), f"{np.mean(remaining):.1f}"]
    for _, a, b, metric, sign in cols:
      diffs = paired(rows, a, b, metric, rnd)
      digits = 0 if metric == "early_stop_iteration" else 2
      cells.append(f"{_cell(list(diffs.values()), digits=digits)} {verdict(diffs, sign)}"
                   if diffs else "–")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def compare_table(experiments):
  """By round, each experiment's ticket (early-stop iteration and test accuracy at early stop,
  mean ± std over its trials, n when fewer than the most) and the first experiment's random
  pruning. ``experiments``: [(label, results.csv rows)]; % remaining is the first's."""
  (_, first), columns = experiments[0], list(experiments)
  if any(r["arm"] == "random_prune" for r in first):
    columns.insert(1, ("random pruning", [dict(r, arm="ticket") for r in first
                                          if r["arm"] == "random_prune"]))
  head = ["round", "% weights remaining"]
  for label, _ in columns:
    head += [f"{label}: early-stop iteration", f"{label}: test accuracy (%)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  rounds = sorted({r["round"] for _, rows in experiments for r in rows if r["arm"] == "ticket"})
  most = max(len({r["trial"] for r in rows}) for _, rows in experiments)
  for rnd in rounds:
    remaining = [r["weights_remaining"] for r in first if r["round"] == rnd
                 and r["arm"] == "ticket"]
    cells = [str(rnd), f"{np.mean(remaining):.1f}" if remaining else "–"]
    for _, rows in columns:
      ok = [r for r in rows if r["arm"] == "ticket" and r["round"] == rnd and not r["diverged"]]
      note = f" (n={len(ok)})" if ok and len(ok) < most else ""
      cells += [_cell([r["early_stop_iteration"] for r in ok], digits=0) + note,
                _cell([r["early_stop_test_accuracy"] for r in ok], scale=100.0, digits=2)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def fail(message):
  print(f"lth_tf.report: error: {message}", file=sys.stderr)
  sys.exit(2)


def read(output_dir):
  """results.csv rows of ``output_dir``; a one-line error if it has none."""
  path = f"{output_dir}/results.csv"
  if not output_dir or not artifacts.exists(path):
    fail(f"--output_dir={output_dir} has no results.csv; pass a folder written by lth_tf.main")
  return artifacts.read_results(path)


def main(argv):
  try:
    _main(argv)
  except artifacts.CorruptFileError as e:  # one line naming the file and the fix
    fail(e)


def _main(argv):
  if flags.FLAGS.compare:
    if len(argv) < 2:
      fail("--compare needs experiment folders as arguments: --compare DIR1 DIR2 ...")
    from lth_tf import plot  # the same line labels as plot --compare
    print(compare_table([(plot.compare_label(d), read(d)) for d in argv[1:]]))
    return
  if len(argv) > 1:
    fail(f"unexpected arguments {' '.join(argv[1:])!r}; pass --output_dir=DIR, or --compare "
         f"DIR1 DIR2 ...")
  rows = read(flags.FLAGS.output_dir)
  output_dir = flags.FLAGS.output_dir
  recorded = (artifacts.read_flags_file(output_dir)
              if artifacts.exists(f"{output_dir}/flags.cfg") else None)
  print(table(rows, 1 if recorded is None else recorded.config.trials))
  print()
  print(claims_table(rows))


def run():
  flags.DEFINE_string("output_dir", None, "Experiment folder written by lth_tf.main.")
  flags.DEFINE_bool("compare", False, "Print one by-round table of the tickets of the "
                    "experiments named as arguments (python -m lth_tf.report --compare DIR1 "
                    "DIR2 ...), with the first one's random pruning.")
  app.run(main)


if __name__ == "__main__":
  run()
