"""Pruning methods and arms are plug-ins: each one module plus one registry line, reached
through a small protocol; the new `shuffled` control proves it."""
import pathlib
import re

import numpy as np
import pytest
from conftest import flags_text
from lth_tf import artifacts, config, experiment, layout, plot, report
from lth_tf.arms import registry as arm_registry
from lth_tf.methods import registry as method_registry

PACKAGE = pathlib.Path(experiment.__file__).parent


@pytest.fixture(scope="module")
def shuffled_run(tmp_path_factory, splits, tiny_config, stage_recorder):
  cfg = tiny_config(rounds=2, iterations=80, controls=("shuffled", "reinit"))
  out = str(tmp_path_factory.mktemp("shuffled"))
  starts = stage_recorder()
  rows = experiment.run(cfg, out, splits, callbacks=[starts])
  artifacts.write_bytes(f"{out}/flags.cfg", flags_text(cfg, out))  # for the study
  return cfg, out, rows, dict(zip(cfg.stages(), starts.starts))


def test_shuffled_permutes_the_tickets_kept_start_values_within_each_layer(shuffled_run):
  cfg, out, _, starts = shuffled_run
  theta0 = artifacts.read_weights(layout.theta0_path(out, 0))
  for r in (1, 2):
    weights, mask = starts[("shuffled", 0, r)]
    ticket_weights, ticket_mask = starts[("ticket", 0, r)]
    for n in mask:
      np.testing.assert_array_equal(mask[n], ticket_mask[n])  # the ticket's mask
      kept = mask[n] > 0
      got, ticket_kept = weights[n][0][kept], ticket_weights[n][0][kept]
      np.testing.assert_array_equal(np.sort(got), np.sort(ticket_kept))  # the same values
      assert np.mean(got == ticket_kept) < 0.1, n  # in other places
      assert np.all(weights[n][0][~kept] == 0)
      np.testing.assert_array_equal(weights[n][1], theta0[n][1])  # biases as the ticket's
    seed = artifacts.read_json(f"{layout.stage_dir(out, 'shuffled', 0, r)}/metrics.json")
    assert seed["seeds"]["init"] == layout.arm_seed(cfg, "shuffled", 0, r)
  one, two = starts[("shuffled", 0, 1)][0], starts[("shuffled", 0, 2)][0]
  kept = starts[("shuffled", 0, 2)][1]["fc2"] > 0
  assert not np.array_equal(one["fc2"][0][kept], two["fc2"][0][kept])  # a permutation a round


def test_shuffled_is_plotted_reported_and_studied_like_the_other_arms(shuffled_run):
  from lth_tf.study import common, properties
  cfg, out, rows, starts = shuffled_run
  assert {r["arm"] for r in rows} == {"ticket", "shuffled", "reinit"}
  assert plot.ARM_LABELS["shuffled"] and plot.ARM_COLORS["shuffled"] not in (
      plot.ARM_COLORS["ticket"], plot.ARM_COLORS["reinit"])
  assert "shuffled: test accuracy at early stop" in report.table(rows, cfg.trials)
  exp = common.load(out)
  weights, mask = starts[("shuffled", 0, 1)]
  regenerated = properties.start_weights(exp, "shuffled", 0, 1, exp.mask("shuffled", 0, 1))
  for n in weights:
    for got, want in zip(regenerated[n], weights[n], strict=True):
      np.testing.assert_array_equal(got, want)


def test_every_method_and_arm_is_registered_once_with_its_own_name():
  assert config.PRUNING == tuple(method_registry.METHODS)
  assert set(config.CONTROLS) == set(arm_registry.ARMS) - {"ticket"}
  for name, finder in method_registry.METHODS.items():
    assert finder.name == name and finder.label
  for name, arm in arm_registry.ARMS.items():
    assert arm.name == name and arm.label and arm.color
  assert len({a.color for a in arm_registry.ARMS.values()}) == len(arm_registry.ARMS)


def test_no_module_outside_a_plugin_compares_a_method_or_control_by_name():
  """The loop, the stage graph, validation, plots and studies dispatch through the
  registries: a comparison with a method's or a control's name anywhere else means a method
  or an arm leaked out of its module."""
  names = "|".join(re.escape(n) for n in [*method_registry.METHODS, "sign_constant",
                                           "shuffled", "reinit"])
  compared = re.compile(rf"""(==|!=|\bin)\s*[\(\[{{]?\s*["']({names})["']""")
  leaks = []
  for path in PACKAGE.rglob("*.py"):
    rel = path.relative_to(PACKAGE)
    if rel.parts[0] in ("methods", "arms"):
      continue
    for i, line in enumerate(path.read_text().splitlines(), start=1):
      if compared.search(line):
        leaks.append(f"{rel}:{i}: {line.strip()}")
  assert not leaks, "\n".join(leaks)


def test_the_readme_example_method_is_the_module_in_the_tree():
  readme = (PACKAGE.parent / "README.md").read_text()
  section = readme.split("## Adding a pruning method or a control", 1)[1].split("\n## ", 1)[0]
  example = section.split("```python\n", 1)[1].split("```", 1)[0]
  assert example.strip() and example in (PACKAGE / "methods" / "synflow.py").read_text()
  assert "    synflow,\n" in (PACKAGE / "methods" / "registry.py").read_text()
