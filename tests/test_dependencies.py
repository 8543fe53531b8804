"""The stage graph: what each stage reads from the stages before it (for every pruning method,
rewind and one-shot), the checks that an order respects it, and the order the Ray driver offers
ready stages in (the critical path first)."""
import pytest

from lth_tf import experiment, stage_graph


def _expected(cfg, ticket_needs):
  """{stage: needs}: the ticket's from ``ticket_needs(t, r)``, every control its round's ticket."""
  out = {}
  for arm, t, r in cfg.stages():
    out[(arm, t, r)] = (tuple(("ticket", t, q) for q in ticket_needs(t, r)) if arm == "ticket"
                        else (("ticket", t, r),))
  return out


@pytest.mark.parametrize("kw,ticket_needs", [
    # iterative IMP (any rewind to θ0, or fine-tuning): the previous round
    (dict(), lambda t, r: [r - 1] if r else []),
    (dict(pruning="global"), lambda t, r: [r - 1] if r else []),
    (dict(rewind="none"), lambda t, r: [r - 1] if r else []),
    # one-shot: every round prunes the dense round
    (dict(one_shot=True), lambda t, r: [0] if r else []),
    # late resetting also needs θ_k from the dense round
    (dict(rewind="iteration", rewind_iteration=40), lambda t, r: [r - 1, 0] if r > 1 else [0] if r else []),
    (dict(rewind="iteration", rewind_iteration=40, one_shot=True), lambda t, r: [0] if r else []),
    # pruning at initialization: θ0 only, which every stage draws or loads itself
    (dict(pruning="snip"), lambda t, r: []),
    (dict(pruning="grasp"), lambda t, r: []),
    (dict(pruning="synflow"), lambda t, r: []),
    # early-bird masks are recorded during the dense round
    (dict(pruning="early_bird", eb_window=2), lambda t, r: [0] if r else []),
], ids=["imp", "global", "rewind_none", "one_shot", "rewind_iteration", "rewind_iteration_one_shot",
        "snip", "grasp", "synflow", "early_bird"])
def test_dependencies_are_exactly_what_each_stage_reads(kw, ticket_needs, tiny_config):
  cfg = tiny_config(trials=2, controls=("reinit", "random_prune", "sign_constant"), **kw)
  deps = stage_graph.dependencies(cfg)
  assert deps == _expected(cfg, ticket_needs)
  assert stage_graph.stage_order(cfg) == cfg.stages()  # the local loop's order is topological
  assert all(t == d[1] for (_, t, _), needs in deps.items() for d in needs)  # within a trial


def test_check_order_rejects_a_stage_before_its_needs(tiny_config):
  cfg = tiny_config(trials=1, rounds=1, controls=("reinit",))
  deps = stage_graph.dependencies(cfg)
  with pytest.raises(ValueError, match="before"):
    stage_graph.check_order([("ticket", 0, 0), ("reinit", 0, 1), ("ticket", 0, 1)], deps)
  with pytest.raises(ValueError, match="missing"):
    stage_graph.check_order([("ticket", 0, 0), ("ticket", 0, 1)], deps)
  stage_graph.check_order([("ticket", 0, 0), ("ticket", 0, 1), ("reinit", 0, 1)], deps)


def test_a_stage_needing_theta_k_refuses_to_run_before_the_dense_round(tmp_path, splits,
                                                                         tiny_config):
  cfg = tiny_config(trials=2, rewind="iteration", rewind_iteration=40)
  with pytest.raises(RuntimeError, match=r"theta_40.npz is missing: \[ticket trial 1 round 0\] "
                                         r"must finish before \[reinit trial 1 round 1\]"):
    experiment.run_stage(cfg, str(tmp_path), splits, ("reinit", 1, 1))


def test_critical_path_order_puts_the_ticket_chain_before_the_controls(tiny_config):
  """Ready stages sorted by how many stages at most still follow each: with one trial the
  ticket's rounds, the experiment's critical path, come first, then the controls that nothing
  needs, in the local loop's order."""
  from lth_tf import executor
  cfg = tiny_config(rounds=3, trials=1, controls=("reinit", "random_prune"), iterations=40)
  order = executor.critical_path_order(cfg.stages(), stage_graph.dependencies(cfg))
  assert order[:4] == [("ticket", 0, 0), ("ticket", 0, 1), ("ticket", 0, 2), ("ticket", 0, 3)]
  assert order[4:] == [s for s in cfg.stages() if s[0] != "ticket"]
