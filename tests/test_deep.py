"""Deeper networks (VGG-19, ResNet-20 with batch norm) and SGD with a learning-rate schedule.

ResNet-20 runs without XLA here: compiling its training block takes minutes on a busy CPU core.
"""
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from conftest import run_cli, synthetic_splits
from lth_tf import artifacts, data, experiment, masks, models, pruning, ticket, training

NEW_FLAGS = ("optimizer", "momentum", "warmup_iterations", "lr_drops", "lr_drop_factor",
             "weight_decay")


def _bn_weights(model):
  return {n: ws for n, ws in ticket.get_weights(model).items() if n.startswith("bn")}


def _global_mask(model, rate, round_=1):
  """One global magnitude threshold over the conv layers; the output layer kept whole."""
  kernels = ticket.get_kernels(model)
  sizes = {n: k.size for n, k in kernels.items()}
  convs = [n for n in sizes if n != "output"]
  targets = pruning.global_targets(sizes, convs, rate, {n: 0.0 for n in sizes}, round_)
  return pruning.prune("magnitude", kernels, masks.ones_like(kernels), targets), sizes, convs


def test_vgg19_builds_wraps_and_prunes_only_kernels():
  model = ticket.wrap(models.build("vgg19", (32, 32, 3), init="he_normal"))
  trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  kernels = ticket.get_kernels(model)
  # 16 convs (no bias: batch norm's β) of 20,018,880 weights + a 512x10 output layer
  assert len(kernels) == 17 and sum(k.size for k in kernels.values()) == 20_024_000
  assert trainable == 20_024_000 + 10 + 2 * (2 * 64 + 2 * 128 + 4 * 256 + 8 * 512)  # ≈ 20.0M
  assert all(n.startswith("conv") for n in kernels if n != "output")
  wrapped = {type(w.layer) for w in ticket.wrappers(model).values()}
  assert wrapped == {keras.layers.Conv2D, keras.layers.Dense}
  before = ticket.get_weights(model)
  mask, sizes, convs = _global_mask(model, 0.2)
  ticket.set_masks(model, mask)
  after = ticket.get_weights(model)
  assert set(mask) == set(kernels)  # no batch norm, no bias among the masks
  assert sum(mask[n].sum() for n in convs) == pruning.keep_count(sum(sizes[n] for n in convs),
                                                                 0.2, 1)
  assert mask["output"].all()
  for n, ws in before.items():
    if n in mask:
      np.testing.assert_array_equal(after[n][0], ws[0] * mask[n])
      for a, b in zip(after[n][1:], ws[1:]):  # the output layer's bias
        np.testing.assert_array_equal(a, b)
    else:  # batch norm: γ, β, moving mean and variance untouched
      assert n.startswith("bn") and len(ws) == 4
      for a, b in zip(after[n], ws):
        np.testing.assert_array_equal(a, b)


def _resnet20():
  return ticket.wrap(models.build("resnet20", (32, 32, 3), init="he_normal", seed=1))


def test_resnet20_has_272k_weights_and_projection_shortcuts():
  model = _resnet20()
  # Frankle et al. 2020, Table 1: 272K; conv kernels + output + batch norm γ, β
  assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 272_474
  kernels = ticket.get_kernels(model)
  assert len(kernels) == 19 + 2 + 1  # conv1..conv19, 2 projection shortcuts, output
  assert {n for n in kernels if n.endswith("_shortcut")} == {"conv8_shortcut", "conv14_shortcut"}
  assert kernels["conv8_shortcut"].shape == (1, 1, 16, 32)
  assert kernels["output"].shape == (64, 10)
  assert models.layer_kind(ticket.wrappers(model)["conv8_shortcut"].layer) == "conv"
  # batch norm starts at the identity, whatever the seed
  bn = _bn_weights(model)
  assert len(bn) == 21 and all(np.all(ws[0] == 1) and np.all(ws[1] == 0) for ws in bn.values())


def _train_steps(trainer, splits, iterations, batch_size=16, seed=0):
  table = data.batch_indices(len(splits.train_x), batch_size, iterations, seed=seed)
  return training.train_round(
      trainer, training.Split.of(splits.train_x, splits.train_y), table,
      training.Split.of(splits.val_x, splits.val_y),
      training.Split.of(splits.test_x, splits.test_y), iterations)


def test_sgd_weight_decay_keeps_pruned_weights_zero_and_trains_batch_norm():
  splits = synthetic_splits(64, 32, 32, shape=(32, 32, 3))
  model = _resnet20()
  mask, _, _ = _global_mask(model, 0.5)
  ticket.set_masks(model, mask)
  start = ticket.get_weights(model)
  trainer = training.Trainer(model, 0.1, jit_compile=False, optimizer="sgd", momentum=0.9,
                             weight_decay=1e-2)
  assert {id(v) for v in trainer.state_variables} >= {
      id(model.get_layer("bn1").moving_mean), id(model.get_layer("bn1").moving_variance)}
  _train_steps(trainer, splits, 6)  # 6 steps, then the evaluations that end the round
  end, end_masks = ticket.get_weights(model), ticket.get_masks(model)
  for n, m in mask.items():
    np.testing.assert_array_equal(end_masks[n], m)
    assert np.all(end[n][0][m == 0] == 0)  # exactly zero despite momentum and decay
    assert not np.array_equal(end[n][0][m > 0], start[n][0][m > 0])  # survivors trained
  assert not np.array_equal(end["output"][1], start["output"][1])  # the bias trains, unmasked
  for n, ws in _bn_weights(model).items():  # γ, β and the statistics all move
    for a, b in zip(ws, start[n]):
      assert not np.array_equal(a, b), n


def _lenet_trainer(**kw):
  model = ticket.wrap(models.build("lenet300_100", (28, 28, 1), seed=2))
  return model, training.Trainer(model, 0.1, **kw)


def test_schedule_warms_up_linearly_then_drops():
  schedule = training.WarmupStepDecay(0.1, warmup=100, drops=(300, 400), factor=0.1)
  at = {t: float(schedule(t)) for t in (0, 50, 99, 100, 299, 300, 399, 400, 10_000)}
  np.testing.assert_allclose(
      [at[t] for t in sorted(at)], [0.0, 0.05, 0.099, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001],
      rtol=1e-6)
  constant = training.WarmupStepDecay(0.1)
  assert float(constant(0)) == float(constant(10**6)) == np.float32(0.1)


def test_schedule_runs_on_the_optimizer_counter_and_restarts_on_reset(splits):
  model, trainer = _lenet_trainer(optimizer="sgd", warmup_iterations=4, lr_drops=(6,))
  train = training.Split.of(splits.train_x, splits.train_y)
  table = data.batch_indices(len(splits.train_x), 30, 8, seed=0)

  def step(i):  # one-step blocks: one input shape, one trace
    trainer.train_block(train.x, train.y, table[i:i + 1])

  before = [v.numpy() for v in model.trainable_variables]
  step(0)  # iteration 0 of the warmup: rate 0
  for a, b in zip(before, model.trainable_variables):
    np.testing.assert_array_equal(a, b.numpy())
  for i in range(1, 8):
    step(i)
  assert int(trainer.optimizer.iterations) == 8
  # the rate of the last step (iteration 7), as the compiled step computed it
  np.testing.assert_allclose(float(trainer.optimizer.learning_rate), 0.01, rtol=1e-6)
  assert trainer.learning_rate(3) == pytest.approx(0.075)
  assert trainer.learning_rate() == pytest.approx(0.01)
  trainer.reset_optimizer()
  assert int(trainer.optimizer.iterations) == 0 and trainer.learning_rate() == 0.0
  assert all(not np.any(v.numpy()) for v in trainer.optimizer.variables)
  before = [v.numpy() for v in model.trainable_variables]
  step(0)  # the warmup starts over: rate 0 again
  for a, b in zip(before, model.trainable_variables):
    np.testing.assert_array_equal(a, b.numpy())
  step(1)
  step(2)
  np.testing.assert_allclose(float(trainer.optimizer.learning_rate), 0.05, rtol=1e-6)
  assert trainer._train_block.experimental_get_tracing_count() == 1  # never retraced


def test_momentum_is_pytorchs_across_a_rate_drop():
  var = tf.Variable([0.0])
  opt = training.MomentumSGD(training.WarmupStepDecay(0.1, drops=(1,)), momentum=0.9)
  opt.build([var])
  for _ in range(2):
    opt.apply_gradients([(tf.constant([1.0]), var)])
  # v = 1, w = -0.1; then v = 0.9 + 1, w = -0.1 - 0.01 * 1.9 (Keras' SGD would give -0.2)
  np.testing.assert_allclose(var.numpy(), [-0.119], rtol=1e-6)


def test_weight_decay_acts_on_kernels_only(splits):
  train = training.Split.of(splits.train_x, splits.train_y)
  table = data.batch_indices(len(splits.train_x), 30, 1, seed=0)
  results = []
  for wd in (0.0, 0.5):
    model, trainer = _lenet_trainer(optimizer="sgd", momentum=0.0, weight_decay=wd)
    start = ticket.get_weights(model)
    trainer.train_block(train.x, train.y, table)
    results.append(ticket.get_weights(model))
  plain, decayed = results
  for n, (kernel, bias) in start.items():
    np.testing.assert_allclose(decayed[n][0] - plain[n][0], -0.1 * 0.5 * kernel, atol=1e-6)
    np.testing.assert_array_equal(decayed[n][1], plain[n][1])


def test_resnet20_experiment_global_pruning_sgd_schedule(tmp_path):
  from test_experiment import StageRecorder
  splits = synthetic_splits(256, 64, 64, shape=(32, 32, 3))
  cfg = experiment.Config(
      model="resnet20", dataset="cifar10", rounds=1, iterations=20, batch_size=16,
      learning_rate=0.05, eval_every=10, prune_rate_conv=0.2, prune_rate_fc=0.2,
      prune_rate_output=0.0, controls=(), pruning="global", prune_rate=0.5, optimizer="sgd",
      warmup_iterations=5, lr_drops=(15,), weight_decay=1e-4, initializer="he_normal").validate()
  out = str(tmp_path)
  recorder = StageRecorder()
  # as lth_tf.main runs it: TensorBoard (hparams hold the lr_drops list) and export on
  rows = experiment.run(cfg, out, splits, jit_compile=False, callbacks=[recorder],
                        logdir=f"{out}/tb", export=True)
  assert [(r["arm"], r["round"]) for r in rows] == [("ticket", 0), ("ticket", 1)]
  assert (tmp_path / "tb" / "summary").exists()
  assert (tmp_path / "ticket" / "trial_0" / "round_1" / "ticket" / "saved_model.pb").exists()
  theta0 = artifacts.read_weights(experiment.theta0_path(out, 0))
  sizes = {n: k[0].size for n, k in theta0.items() if not n.startswith("bn")}
  convs = sum(s for n, s in sizes.items() if n != "output")
  for r, row in enumerate(rows):
    d = experiment.stage_dir(out, "ticket", 0, r)
    mask = masks.from_bytes(artifacts.read_bytes(f"{d}/masks.npz"))
    assert set(mask) == set(sizes)  # batch norm is never masked
    kept = pruning.keep_count(convs, 0.5, r)
    assert sum(int(m.sum()) for n, m in mask.items() if n != "output") == kept
    assert mask["output"].all()
    assert row["weights_remaining"] == pytest.approx(100 * (kept + 640) / sum(sizes.values()))
    trained = artifacts.read_weights(f"{d}/weights.npz")
    for n, m in mask.items():
      assert np.all(trained[n][0][m == 0] == 0)
    assert not np.array_equal(trained["bn1"][2], theta0["bn1"][2])  # statistics were tracked
    # each round starts from θ0⊙mask, batch norm (and its statistics) rewound to θ0 too
    weights, start_mask = recorder.starts[r]
    for n, ws in theta0.items():
      expected = [ws[0] * mask[n], *ws[1:]] if n in mask else ws
      for a, b in zip(weights[n], expected):
        np.testing.assert_array_equal(a, b)
    m = artifacts.read_json(f"{d}/metrics.json")
    assert [p["iteration"] for p in m["curve"]] == [10, 20]


def test_config_rejects_bad_optimizer_settings():
  base = dict(model="resnet20", dataset="cifar10", rounds=1, iterations=100, batch_size=8,
              learning_rate=0.1, eval_every=10, prune_rate_conv=0.2, prune_rate_fc=0.2,
              prune_rate_output=0.0)
  bad = {"optimizer": dict(optimizer="rmsprop"), "momentum": dict(momentum=1.0),
         "warmup_iterations": dict(warmup_iterations=-1), "lr_drops": dict(lr_drops=(48, 32)),
         "lr_drop_factor": dict(lr_drop_factor=0.0), "weight_decay": dict(weight_decay=-1e-4)}
  for flag, kw in bad.items():
    with pytest.raises(experiment.ConfigError, match=f"^--{flag}=") as e:
      experiment.Config(**base, **kw).validate()
    assert "\n" not in str(e.value)
  with pytest.raises(experiment.ConfigError, match="--model=vgg19"):
    experiment.Config(**{**base, "model": "vgg19", "dataset": "mnist"}).validate()
  experiment.Config(**base, lr_drops=(500,), warmup_iterations=500).validate()  # past the end: ok


@pytest.fixture
def parsed_flags():
  """Parses a command line into lth_tf.main's FLAGS in-process, and unparses it afterwards."""
  from lth_tf import main
  def parse(*args):
    main.FLAGS.unparse_flags()
    main.FLAGS(["lth_tf", *args])
    return main
  yield parse
  from lth_tf import main
  main.FLAGS.unparse_flags()


def test_paper_defaults_and_older_flags_cfg(parsed_flags, tmp_path):
  main = parsed_flags("--model=resnet20")
  values = main.resolved_flags()
  assert {k: values[k] for k in ("dataset", "batch_size", "optimizer", "learning_rate",
                                 "momentum", "warmup_iterations", "lr_drops", "weight_decay",
                                 "iterations", "pruning", "prune_rate", "prune_rate_output",
                                 "initializer")} == dict(
      dataset="cifar10", batch_size=128, optimizer="sgd", learning_rate=0.1, momentum=0.9,
      warmup_iterations=0, lr_drops=["32000", "48000"], weight_decay=1e-4, iterations=63000,
      pruning="global", prune_rate=0.2, prune_rate_output=0.0, initializer="he_normal")
  assert main.config_from(values).validate().lr_drops == (32000, 48000)
  assert main.resolved_flags()["warmup_iterations"] == 0
  assert parsed_flags("--model=vgg19").resolved_flags()["warmup_iterations"] == 10000

  # LeNet keeps the paper's Adam; a flags.cfg written before these flags existed still matches
  main = parsed_flags("--model=lenet300_100", "--iterations=200")
  values = main.resolved_flags()
  assert (values["optimizer"], values["lr_drops"], values["weight_decay"],
          values["prune_rate_output"], values["pruning"]) == ("adam", [], 0.0, 0.1, "layerwise")
  out = str(tmp_path / "exp")
  text = main.flagfile_text(values, out)
  assert "--optimizer=adam\n" in text and "--lr_drops=\n" in text
  older = "".join(l + "\n" for l in text.splitlines() if not l.startswith(
      tuple(f"--{f}=" for f in NEW_FLAGS)))
  assert len(older.splitlines()) == len(text.splitlines()) - len(NEW_FLAGS)
  artifacts.write_bytes(f"{out}/flags.cfg", older)
  main.check_output_dir(out, values, text)  # accepted: the new flags at their defaults
  assert artifacts.read_bytes(f"{out}/flags.cfg").decode() == text
  with pytest.raises(main.UserError, match="--weight_decay"):
    other = parsed_flags("--model=lenet300_100", "--iterations=200", "--weight_decay=1e-4")
    values = other.resolved_flags()
    other.check_output_dir(out, values, other.flagfile_text(values, out))


@pytest.mark.parametrize("args,named", [
    (["--model=resnet20", "--optimizer=rmsprop"], "--optimizer"),
    (["--model=resnet20", "--lr_drops=48000,x"], "--lr_drops"),
])
def test_bad_optimizer_flags_give_one_line_naming_the_flag(args, named, tmp_path):
  proc = run_cli([*args, f"--output_dir={tmp_path}/x"])
  assert proc.returncode == 2
  line = [l for l in proc.stderr.strip().splitlines() if l.strip()][-1]
  assert line.startswith("lth_tf: error: ") and named in line, proc.stderr[-2000:]
  assert not (tmp_path / "x").exists()
