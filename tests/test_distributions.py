"""--distribution: round r's overall density split across the layers (uniform, er, erk)."""
import math

import numpy as np
import pytest
from conftest import assert_refused
from lth_tf import architectures, artifacts, config, data, distributions, layout, masks

LENET = {"fc1": (784, 300), "fc2": (300, 100), "output": (100, 10)}
CONV2 = {n: s for n, (s, _) in architectures.kernel_shapes("conv2", data.SHAPES["cifar10"]).items()}


def test_erk_on_lenet_by_hand():
  """Density 0.1 of 266,200 weights is 26,620. ERK scores (sum of dims / product): fc1
  1084/235200, fc2 400/30000, output 110/1000. Factor 26620/(1084+400+110) = 16.70 would give
  the output layer density 1.84, so it stays dense (1,000 weights) and the factor is solved
  again over fc1 and fc2: 25620/(1084+400); a layer then keeps factor * (sum of its dims).
  Wrong versions: not solving again after the output layer is capped (fc1 18,104); ER's
  formula; one density for all."""
  assert distributions.counts("erk", LENET, 0.1) == {
      "fc1": round(25620 * 1084 / 1484), "fc2": round(25620 * 400 / 1484), "output": 1000}
  assert distributions.counts("erk", LENET, 0.1) == {"fc1": 18714, "fc2": 6906, "output": 1000}


@pytest.mark.parametrize("name,score", [
    ("erk", lambda s: sum(s)),  # kept weights = factor * score * size = factor * sum of dims
    ("er", lambda s: (s[-2] + s[-1]) * math.prod(s[:-2])),  # kernel size multiplies ER's
    ("uniform", lambda s: math.prod(s)),
])
@pytest.mark.parametrize("density", [0.5, 0.1, 0.02, 0.003])
def test_every_layer_gets_its_formula_share_to_the_weight(name, score, density):
  """On Conv-2 (conv kernels, so ER and ERK differ): the dense layers are exactly those the
  formula would push past density 1, every other layer keeps round(factor * its score), one
  factor for all, and the total is the overall density within one weight per layer."""
  sizes = {n: math.prod(s) for n, s in CONV2.items()}
  got = distributions.raw_counts(name, CONV2, density)
  dense = [n for n in CONV2 if got[n] == sizes[n]]
  rest = [n for n in CONV2 if n not in dense]
  factor = (density * sum(sizes.values()) - sum(sizes[n] for n in dense)) / sum(
      score(CONV2[n]) for n in rest)
  assert all(factor * score(CONV2[n]) <= sizes[n] for n in rest)
  assert all(factor * score(CONV2[n]) >= sizes[n] for n in dense)
  assert {n: got[n] for n in rest} == {n: round(factor * score(CONV2[n])) for n in rest}
  assert abs(sum(got.values()) - density * sum(sizes.values())) <= len(CONV2)


@pytest.mark.parametrize("model", ["lenet300_100", "conv2", "conv6", "resnet20", "vgg19"])
@pytest.mark.parametrize("name", ["uniform", "er", "erk"])
def test_a_layers_share_never_grows_from_one_round_to_the_next(model, name):
  """IMP prunes round r's mask from round r-1's survivors: no layer may need more weights
  than it kept (pruning.prune would refuse), at any round the checks allow."""
  cfg = config.paper_config(model, distribution=name, rounds=1, pruning="layerwise",
                            dataset="cifar10" if model == "vgg19" else None)
  shapes = {n: s for n, (s, _) in cfg.kernel_shapes().items()}
  kinds = {n: k for n, (_, k) in cfg.kernel_shapes().items()}
  last = cfg.last_round()
  previous = None
  for r in range(last + 1):
    now = dict(t for t in ((names[0], c) for names, c in config.targets(cfg, shapes, kinds, r)))
    assert min(now.values()) >= 1
    if previous:
      assert all(now[n] <= previous[n] for n in now), (r, now, previous)
    previous = now
  after = distributions.raw_counts(name, shapes, (1 - cfg.prune_rate) ** (last + 1))
  assert min(after.values()) == 0  # the round after the last empties a layer


def test_without_the_flag_targets_are_the_per_kind_rates(tiny_config):
  cfg = tiny_config()
  shapes = {n: s for n, (s, _) in cfg.kernel_shapes().items()}
  kinds = {n: k for n, (_, k) in cfg.kernel_shapes().items()}
  assert config.targets(cfg, shapes, kinds, 2) == [(("fc1",), 58800), (("fc2",), 7500),
                                                    (("output",), 562)]


def test_an_experiment_prunes_to_the_distribution_and_its_control_matches(
    tiny_config, splits, tmp_path):
  """The loop with --distribution=erk: the ticket's masks keep exactly the ERK counts of
  each round, nested in the previous round's, and random_prune keeps the same counts."""
  from lth_tf import experiment
  cfg = tiny_config(rounds=2, iterations=40, distribution="erk", prune_rate=0.6,
                    controls=("random_prune",))
  out = str(tmp_path)
  experiment.run(cfg, out, splits)
  shapes = {n: s for n, (s, _) in cfg.kernel_shapes().items()}
  previous = None
  for r in (1, 2):
    want = distributions.counts("erk", shapes, 0.4 ** r)
    ticket = artifacts.read_mask(f"{layout.stage_dir(out, 'ticket', 0, r)}/masks.npz")
    control = artifacts.read_mask(f"{layout.stage_dir(out, 'random_prune', 0, r)}/masks.npz")
    assert {n: c for n, (c, _) in masks.counts(ticket).items()} == want
    assert {n: c for n, (c, _) in masks.counts(control).items()} == want
    if previous:
      assert all(np.all(ticket[n] <= previous[n]) for n in ticket)
    previous = ticket


@pytest.mark.parametrize("args,named", [
    (["--distribution=erk2"], "--distribution=erk2 is unknown; use one of uniform, er, erk"),
    (["--distribution=erk", "--pruning=global"], "--pruning=global"),
    (["--distribution=erk", "--pruning=layerwise", "--global_output_layer"],
     "--global_output_layer"),
    (["--distribution=uniform", "--rounds=60"], "its --distribution=uniform share"),
])
def test_a_distribution_that_cannot_run_is_refused_in_one_line(args, named, tmp_path):
  assert_refused(args, named, tmp_path)
