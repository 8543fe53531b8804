"""The stage graph: which (arm, trial, round) stages need which others finished first.

Why its own module: the local loop runs the stages in an order the graph allows, Ray runs
them in parallel where it allows, and a corrupt file's fix (lth_tf.fixes) names the finished
stages built on it; none of them needs the training loop. No TensorFlow here: the stages
each arm and method needs are theirs to say (lth_tf/arms, lth_tf/methods).
"""
from lth_tf.arms import registry as arm_registry
from lth_tf.methods import registry as method_registry


def dependencies(cfg):
  """{stage: the stages it needs finished first} for every (arm, trial, round) of ``cfg``.

  A stage needs the files other stages write, as its arm says (lth_tf/arms): a control needs
  the ticket of its round (its mask, its counts, or with --rewind=none the round it fine-tunes
  from; also the simplest guarantee that the ticket's mask is written once, by the ticket);
  the ticket's round r > 0 needs what its method finds the mask from (lth_tf/methods: the
  previous trained round for IMP, the dense round for one-shot and early-bird, nothing for
  methods that score θ0, which every stage draws or loads itself) and, with
  --rewind=iteration, the dense round that captures θ_k. Nothing crosses trials.
  """
  return {(arm, t, r): tuple(arm_registry.get(arm).needs(cfg, t, r) if r > 0 else ())
          for arm, t, r in cfg.stages()}


def check_order(order, deps):
  """Raises ValueError unless ``order`` lists every stage of ``deps`` once, after its needs."""
  seen = set()
  for stage in order:
    missing = [d for d in deps[stage] if d not in seen]
    if stage in seen or missing:
      raise ValueError(f"{stage} is listed twice or before {missing}")
    seen.add(stage)
  if seen != set(deps):
    raise ValueError(f"stages missing from the order: {sorted(set(deps) - seen)}")
  return order


def stage_order(cfg):
  """The order the local loop runs: cfg.stages(), checked to be a topological order."""
  return check_order(cfg.stages(), dependencies(cfg))


def _needed_by(cfg):
  """{stage: the stages that need it}, dependencies(cfg) reversed."""
  needed_by = {}
  for stage, needs in dependencies(cfg).items():
    for need in needs:
      needed_by.setdefault(need, []).append(stage)
  return needed_by


def built_on(cfg, stages):
  """Every stage that needs one of ``stages``, directly or through others (dependencies)."""
  needed_by = _needed_by(cfg)
  out, todo = set(), list(stages)
  while todo:
    for later in needed_by.get(todo.pop(), ()):
      if later not in out:
        out.add(later)
        todo.append(later)
  return out - set(stages)


def changed_by_retraining(cfg, stages):
  """The stages built on what retraining ``stages`` may change in the last bits (on another
  machine, other libraries or --threads): trained weights, and masks found by training or by
  TensorFlow (early-bird, SNIP, GraSP, SynFlow). A later ticket round is pruned from (or
  rewinds to, or records its early-bird mask in) a ticket's training, so it and everything
  built on it go; a control needs only its ticket's mask, which IMP recomputes exactly from
  the files it was pruned from (numpy), so it stays, unless that mask came from TensorFlow."""
  needed_by = _needed_by(cfg)
  exact_masks = method_registry.get(cfg.pruning).exact
  out = set()
  for stage in stages:
    for later in needed_by.get(stage, ()):
      if later[0] == "ticket" or not (exact_masks or stage[2] == 0):
        out |= {later} | built_on(cfg, [later])
  return out - set(stages)
