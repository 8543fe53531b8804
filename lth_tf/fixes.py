"""What to do about a corrupt file of an experiment, knowing the experiment.

artifacts.CorruptFileError names the file and a generic fix by the kind of file; here the
fix says which stage folder to delete so a rerun retrains it, and which finished stages were
built on what retraining may change (lth_tf.stage_graph). The commands that read an
experiment's files (the loop, plot, the studies) re-raise through ``explained``.
"""
import contextlib

from lth_tf import artifacts, layout, stage_graph
from lth_tf.methods import registry as method_registry


def _rounds_text(rounds):
  """[1, 2, 3, 5] -> '1-3, 5'."""
  runs = []
  for r in sorted(rounds):
    if runs and r == runs[-1][1] + 1:
      runs[-1][1] = r
    else:
      runs.append([r, r])
  return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def stage_fix(cfg, output_dir, stage, name):
  """What to do about ``stage``'s corrupt file ``name`` (masks.npz, weights.npz or
  metrics.json), one line: which folder to delete so that rerunning the experiment's command
  retrains it, and which finished stages were built on what that may change
  (``changed_by_retraining``). Those keep their files: they stay consistent with the retrained
  stage when the rerun reproduces it bit for bit, as it does on the same machine, libraries
  and --threads; otherwise they must go too.
  An early-bird ticket's mask is recorded by the dense round, so there the dense round is
  retrained (or only the stage's trained files deleted)."""
  arm, trial, round_ = stage
  folder = layout.stage_dir(output_dir, *stage)
  roots = [stage]
  if method_registry.get(cfg.pruning).masks_from_dense_round and arm == "ticket" and round_ > 0:
    if name != "masks.npz":
      return (f"delete {folder}/weights.npz and {folder}/metrics.json (not its masks.npz, "
              f"which the dense round recorded) and rerun the experiment's command to retrain "
              f"that stage")
    dense = layout.stage_dir(output_dir, "ticket", trial, 0)
    roots.append(("ticket", trial, 0))
    fix = (f"delete {dense} and {folder} and rerun the experiment's command to retrain the "
           f"dense round, which records the early-bird masks, and that stage")
  else:
    fix = f"delete {folder} and rerun the experiment's command to retrain that stage"
  later = [s for s in stage_graph.changed_by_retraining(cfg, roots)
           if artifacts.exists(f"{layout.stage_dir(output_dir, *s)}/metrics.json")]
  if later:
    by_arm = {}
    for a, _, r in later:
      by_arm.setdefault(a, []).append(r)
    which = ", ".join(f"{a} round{'s' if len(rs) > 1 else ''} {_rounds_text(rs)}"
                      for a, rs in sorted(by_arm.items(), key=lambda x: x[0] != "ticket"))
    many = len(later) > 1
    fix += (f"; the {f'{len(later)} finished stages' if many else 'finished stage'} built on "
            f"it (trial {trial}: {which}) {'stay' if many else 'stays'} valid only if the rerun "
            f"reproduces this stage bit for bit (same machine, libraries and --threads): "
            f"otherwise delete {'them' if many else 'it'} too")
  return fix


def explain(error, cfg):
  """``error`` (a CorruptFileError) with the fix that knows the experiment ``cfg``: for a
  stage's file, stage_fix; for θ_k and early_bird.json, which the dense round records, the
  stages built on that round too. Other files keep their fix."""
  found = artifacts.stage_of(error.path)
  if found and found[2] in ("masks.npz", "weights.npz", "metrics.json"):
    return error.with_fix(stage_fix(cfg, found[0], found[1], found[2]))
  name = error.path.rsplit("/", 1)[-1]
  if "/ticket/trial_" in error.path and (name == "early_bird.json" or (
      name.startswith("theta_") and name != "theta0.npz")):
    output_dir, trial = error.path.rsplit("/ticket/trial_", 1)
    trial = int(trial.split("/", 1)[0])
    later = [s for s in stage_graph.changed_by_retraining(cfg, [("ticket", trial, 0)])
             if artifacts.exists(f"{layout.stage_dir(output_dir, *s)}/metrics.json")]
    if later:
      return error.with_fix(f"{error.fix}; the {len(later)} finished stage(s) of trial {trial} "
                            f"built on the dense round stay valid only if the rerun "
                            f"reproduces it bit for bit (same machine, libraries and "
                            f"--threads): otherwise delete them too")
  return error


@contextlib.contextmanager
def explained(cfg):
  """Re-raises a CorruptFileError of the experiment's files with ``explain``'s fix."""
  try:
    yield
  except artifacts.CorruptFileError as e:
    raise explain(e, cfg) from None
