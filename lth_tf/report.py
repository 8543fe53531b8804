"""Markdown tables of an experiment for results/README.md, from results.csv alone.

  python -m lth_tf.report --output_dir=results/lenet_fashion_mnist

prints, per round: % weights remaining, then for each arm the early-stop iteration and the
test accuracy at early stop as mean ± std over the trials finished (n shown when trials are
missing), with diverged runs left out and counted.
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


def main(argv):
  del argv
  path = f"{flags.FLAGS.output_dir}/results.csv"
  if not flags.FLAGS.output_dir or not artifacts.exists(path):
    print(f"lth_tf.report: error: --output_dir={flags.FLAGS.output_dir} has no results.csv; "
          "pass a folder written by lth_tf.main", file=sys.stderr)
    sys.exit(2)
  cfg = artifacts.parse_flagfile(artifacts.read_bytes(f"{flags.FLAGS.output_dir}/flags.cfg")
                                 .decode())
  print(table(artifacts.read_results(path), int(cfg.get("trials", 1))))


def run():
  flags.DEFINE_string("output_dir", None, "Experiment folder written by lth_tf.main.")
  app.run(main)


if __name__ == "__main__":
  run()
