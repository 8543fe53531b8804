"""One module owns the experiment's configuration (lth_tf.config): a Config exists only valid,
flags.cfg has one writer and one reader (config.FlagsFile), and the modules that read an
experiment folder (plot, report, the studies) do so without the training loop."""
import ast
import dataclasses
import glob
import pathlib

import pytest
from conftest import assert_refused
from lth_tf import artifacts, config
from lth_tf.methods import registry as method_registry

PACKAGE = pathlib.Path(config.__file__).parent
REPO = PACKAGE.parent


def test_a_config_is_validated_when_it_is_made():
  """Wrong version: validation only where a caller remembers .validate() (a replace() with a
  bad value would then reach training)."""
  cfg = config.paper_config("lenet300_100", rounds=2, iterations=200)
  with pytest.raises(config.ConfigError, match="--rounds"):
    dataclasses.replace(cfg, rounds=-1)
  with pytest.raises(config.ConfigError, match="--rounds=80 prunes fc2"):
    dataclasses.replace(cfg, rounds=80)  # a combination, not only a range
  with pytest.raises(config.ConfigError, match="--threads"):
    config.Runtime(threads=0)


def _flags(text):
  return artifacts.parse_flagfile(text)


@pytest.mark.parametrize("settings,runtime", [
    (dict(model="lenet300_100", dataset="fashion_mnist", rounds=2, iterations=1000), {}),
    (dict(model="conv2", controls=("random_prune", "shuffled"), pruning="global",
          prune_rate=0.3, lr_drops=(100, 200), trials=3, same_init=True),
     dict(threads=3, deterministic=False, xla=False, strategy="mirrored", cpu_devices=2)),
    (dict(model="resnet20", rewind="iteration", rewind_iteration=500, controls=()), {}),
])
def test_flags_cfg_round_trips_every_setting(settings, runtime):
  """What flags.cfg records reads back as the same Config and Runtime (wrong versions: a
  setting left out of the text, a tuple or a float written in a form the reader types
  differently, an empty --controls read back as the default)."""
  cfg, resolved = config.resolve({**settings, **runtime})
  recorded = config.FlagsFile(cfg, resolved, "results/x", "/data", None, 1000)
  back = config.FlagsFile.parse(_flags(recorded.text()))
  assert back == recorded
  assert back.text() == recorded.text()
  assert set(recorded.values()) == set(config.RESULT_FLAGS)
  assert {f.name for f in dataclasses.fields(config.Config)} | {
      f.name for f in dataclasses.fields(config.Runtime)} == set(config.RESULT_FLAGS)


def test_runtime_defaults_resolve_as_the_command_line_does():
  _, runtime = config.resolve(dict(model="lenet300_100"))
  assert runtime.threads >= 1 and runtime.xla  # --threads=0: the cores; LeNet compiles
  assert not config.resolve(dict(model="conv2"))[1].xla
  assert not config.resolve(dict(model="lenet300_100", strategy="mirrored"))[1].xla
  with pytest.raises(config.ConfigError, match="--threads=-1 .*0 \\(all cores\\)"):
    config.resolve(dict(model="lenet300_100", threads=-1))


def test_every_committed_flags_cfg_reads_back_to_the_same_lines():
  """The results/ folders stay resumable: their flags.cfg parse, and the writer gives every
  line back unchanged, in order (a change to a value's format would make a rerun's check see
  'different flags'); lines it adds are flags added since, at the defaults they had then."""
  paths = sorted(glob.glob(str(REPO / "results" / "**" / "flags.cfg"), recursive=True))
  assert paths
  for path in paths:
    text = pathlib.Path(path).read_text()
    recorded = config.FlagsFile.parse(_flags(text))
    again = recorded.text().splitlines()
    assert [line for line in again if line in text.splitlines()] == text.splitlines(), path
    added = {k: v for k, v in _flags(recorded.text()).items() if k not in _flags(text)}
    defaults = config.FlagsFile(config.paper_config(recorded.config.model), recorded.runtime,
                                "x").flags()
    defaults.update(method_registry.get(recorded.config.pruning).before_flags)
    assert added == {k: defaults[k] for k in added}, path


def test_an_older_flags_cfg_resolves_its_missing_flags_from_its_own_values():
  """--prune_rate missing from an older file is that file's --prune_rate_fc (wrong version:
  the current command's, or the default 0.2)."""
  cfg, runtime = config.resolve(dict(model="conv2", prune_rate_fc=0.3, pruning="global"))
  text = config.FlagsFile(cfg, runtime, "x").text()
  older = "".join(line + "\n" for line in text.splitlines()
                  if not line.startswith(("--prune_rate=", "--weight_decay=")))
  back = config.FlagsFile.parse(_flags(older))
  assert back.config.prune_rate == 0.3 and back.config.weight_decay == 0.0
  assert back.differences(config.FlagsFile(cfg, runtime, "x")) == []


def test_an_early_bird_folder_from_before_eb_distance_keeps_its_hamming_rule(tmp_path):
  """An early-bird flags.cfg without --eb_distance was made with the Hamming rule; reading it
  must say so (wrong: the new default, jaccard, which a rerun would then train with, mixing
  two rules in one folder). Other folders without the line take the default (a rerun of a
  layerwise folder must not be refused for a flag it never used)."""
  for pruning, expected in (("early_bird", "hamming"), ("layerwise", "jaccard")):
    cfg, runtime = config.resolve(dict(model="lenet300_100", pruning=pruning))
    text = config.FlagsFile(cfg, runtime, "x").text()
    assert "--eb_distance=jaccard" in text.splitlines()
    older = "".join(line + "\n" for line in text.splitlines()
                    if not line.startswith("--eb_distance="))
    assert config.FlagsFile.parse(_flags(older)).config.eb_distance == expected
    assert config.FlagsFile.parse(_flags(text)).config.eb_distance == "jaccard"
  committed = artifacts.read_flags_file(str(REPO / "results" / "lenet_fashion_mnist_early_bird"))
  assert committed.config.eb_distance == "hamming"
  assert_refused(["--pruning=early_bird", "--eb_distance=iou"], "--eb_distance", tmp_path)


def test_differences_ignore_only_the_flags_that_add_stages():
  cfg, runtime = config.resolve(dict(model="lenet300_100", iterations=200))
  base = config.FlagsFile(cfg, runtime, "x")
  more = config.FlagsFile(dataclasses.replace(cfg, rounds=3, trials=2,
                                              controls=("reinit", "random_prune")), runtime, "x")
  assert base.differences(more) == []
  other = config.FlagsFile(cfg, dataclasses.replace(runtime, threads=runtime.threads + 1), "x")
  assert [k for k, _, _ in base.differences(other)] == ["threads"]
  lr = config.FlagsFile(dataclasses.replace(cfg, learning_rate=1e-3), runtime, "x")
  assert base.differences(lr) == [("learning_rate", "0.0012", "0.001")]


def _imports(path):
  """The lth_tf modules ``path`` imports, at any depth of the file."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lth_tf"):
      out |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    elif isinstance(node, ast.Import):
      out |= {a.name for a in node.names if a.name.startswith("lth_tf")}
  return out


@pytest.mark.parametrize("name", ["plot.py", "report.py", "api.py", "study/common.py",
                                  "study/properties.py", "study/infoplane.py",
                                  "study/consistency.py", "study/__main__.py", "fixes.py",
                                  "stage_graph.py", "network.py", "layout.py", "config.py"])
def test_readers_of_a_folder_do_not_import_the_training_loop(name):
  """plot, report and the studies read what the loop wrote through layout, network, fixes and
  config.FlagsFile; importing lth_tf.experiment would make them depend on the loop."""
  assert "lth_tf.experiment" not in _imports(PACKAGE / name)


def test_only_the_flags_file_reader_parses_flags_cfg():
  """One reader of flags.cfg (artifacts.read_flags_file -> config.FlagsFile.parse): no module
  types its strings by hand (plot once compared --one_shot with the string 'True')."""
  callers = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if "read_flagfile(" in p.read_text() or "parse_flagfile(" in p.read_text()]
  assert callers == ["artifacts.py"]
