"""The networks' kernel shapes known without TensorFlow (what the flag checks use) equal the
built models', and the limits drawn from them are pruning's own arithmetic."""
import math

import pytest

from lth_tf import architectures, config, data, models, network, pruning, ticket


@pytest.mark.parametrize("name", architectures.ARCHITECTURES)
@pytest.mark.parametrize("dataset", ["fashion_mnist", "cifar10"])
def test_kernel_shapes_without_tensorflow_equal_the_built_models(name, dataset):
  if name == "vgg19" and dataset != "cifar10":
    pytest.skip("VGG-19 needs 32-pixel images")
  model = ticket.wrap(models.build(name, data.SHAPES[dataset]))
  built = {n: (tuple(w.pruning_vars[0][0].shape), models.layer_kind(w.layer))
           for n, w in ticket.wrappers(model).items()}
  assert architectures.kernel_shapes(name, data.SHAPES[dataset]) == built


# conftest's tiny_config with these overrides: 3 rounds of LeNet-300-100 on Fashion-MNIST at
# the paper's rates (Config's defaults for the controls and the seed)
PAPER_RATES = dict(dataset="fashion_mnist", iterations=100, batch_size=60, learning_rate=1e-3,
                   eval_every=100, prune_rate_conv=0.1, prune_rate_fc=0.2, prune_rate_output=0.1,
                   controls=("reinit",), seed=0)


@pytest.mark.parametrize("kw", [dict(), dict(pruning="global", prune_rate=0.35),
                                dict(pruning="global", prune_rate=0.35, global_output_layer=True),
                                dict(model="conv2", pruning="snip"),
                                dict(model="conv2", distribution="erk", prune_rate=0.3),
                                dict(model="conv2", structure="unit")])
def test_the_loop_prunes_to_the_targets_the_checks_reason_about(kw, tiny_config):
  """network.round_targets (from the built model) and the checks (from shapes) agree."""
  cfg = tiny_config(**{**PAPER_RATES, **kw})
  model = ticket.wrap(models.build(cfg.model, data.SHAPES[cfg.dataset]))
  shapes = cfg.kernel_shapes()
  kinds = {n: k for n, (_, k) in shapes.items()}
  for r in (0, 1, 5):
    assert network.round_targets(cfg, model, r) == config.targets(
        cfg, {n: s for n, (s, _) in shapes.items()}, kinds, r)


def test_last_round_is_the_last_at_which_every_group_keeps_a_weight(tiny_config):
  for kw in (dict(), dict(prune_rate_fc=0.5, prune_rate_output=0.25),
             dict(model="conv6", dataset="cifar10", prune_rate_conv=0.15),
             dict(pruning="global", prune_rate=0.6)):
    cfg = tiny_config(**{**PAPER_RATES, **kw})
    last = cfg.last_round()
    names, size, rate = cfg.first_to_empty()
    assert round(size * (1 - rate) ** last) >= 1 and round(size * (1 - rate) ** (last + 1)) == 0
    assert pruning.keep_count(size, rate, last) >= 1
    config.Config(**dict(cfg.__dict__, rounds=last)).validate()
    with pytest.raises(config.ConfigError, match=f"--rounds={last} or fewer"):
      config.Config(**dict(cfg.__dict__, rounds=last + 1)).validate()
  no_dense = tiny_config(**{**PAPER_RATES, "prune_rate_fc": 0.0, "prune_rate_output": 0.0})
  assert no_dense.last_round() == math.inf
