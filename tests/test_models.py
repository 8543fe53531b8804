"""The networks, built outside the experiment: the papers' parameter counts, weights a pure
function of the seed, Conv-2/4/6 on 28-pixel images, VGG-19 and ResNet-20 with batch norm
(only kernels wrapped and masked), and ResNet-20 through the experiment loop with global pruning
and SGD.

ResNet-20 runs without XLA here: compiling its training block takes minutes on a busy CPU core.
"""
import numpy as np
import pytest
import tf_keras as keras

from conftest import bn_weights, global_conv_mask, synthetic_splits
from lth_tf import artifacts, config, experiment, layout, masks, models, pruning, ticket


def test_paper_architectures_have_the_papers_parameter_counts():
  # Frankle & Carbin 2019, Figure 2: 266K, 4.3M, 2.4M weights. Its table says 1.7M for Conv-6,
  # but the layers it describes (64,64,pool,128,128,pool,256,256,pool, FC 256,256,10 on 32x32x3)
  # hold 2.26M kernel weights; we build the layers as described.
  expected = {"lenet300_100": (266_200, (28, 28, 1)), "conv2": (4_300_000, (32, 32, 3)),
              "conv4": (2_400_000, (32, 32, 3)), "conv6": (2_261_184, (32, 32, 3))}
  for name, (count, shape) in expected.items():
    kernels = ticket.get_kernels(ticket.wrap(models.build(name, shape)))
    total = sum(k.size for k in kernels.values())
    assert abs(total - count) / count < 0.05, (name, total)


def test_models_are_pure_functions_of_seed():
  a = ticket.get_weights(models.build("conv2", (32, 32, 3), seed=5))
  b = ticket.get_weights(models.build("conv2", (32, 32, 3), seed=5))
  c = ticket.get_weights(models.build("conv2", (32, 32, 3), seed=6))
  for n in a:
    np.testing.assert_array_equal(a[n][0], b[n][0])
    assert not np.array_equal(a[n][0], c[n][0])
  # layers have distinct initial values (no seed reuse across layers)
  assert not np.allclose(a["fc1"][0][:256, :256], a["fc2"][0][:256, :256])


@pytest.mark.parametrize("model,flat", [("conv2", 14 * 14 * 64), ("conv4", 7 * 7 * 128),
                                        ("conv6", 3 * 3 * 256)])
def test_conv_models_fit_28_pixel_images(model, flat, tiny_config):
  """Conv-2/4/6 on (Fashion-)MNIST: max-pooling floors 7 to 3, as the paper's pools would."""
  tiny_config(model=model, dataset="fashion_mnist")  # a valid experiment (it validates)
  net = models.build(model, (28, 28, 1))
  assert net.get_layer("fc1").kernel.shape == (flat, 256)
  assert net(np.zeros((2, 28, 28, 1), np.uint8)).shape == (2, 10)


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
  mask, sizes, convs = global_conv_mask(model, 0.2)
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


def test_resnet20_has_272k_weights_and_projection_shortcuts(resnet20):
  model = resnet20
  # Frankle et al. 2020, Table 1: 272K; conv kernels + output + batch norm γ, β
  assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 272_474
  kernels = ticket.get_kernels(model)
  assert len(kernels) == 19 + 2 + 1  # conv1..conv19, 2 projection shortcuts, output
  assert {n for n in kernels if n.endswith("_shortcut")} == {"conv8_shortcut", "conv14_shortcut"}
  assert kernels["conv8_shortcut"].shape == (1, 1, 16, 32)
  assert kernels["output"].shape == (64, 10)
  assert models.layer_kind(ticket.wrappers(model)["conv8_shortcut"].layer) == "conv"
  # batch norm starts at the identity, whatever the seed
  bn = bn_weights(model)
  assert len(bn) == 21 and all(np.all(ws[0] == 1) and np.all(ws[1] == 0) for ws in bn.values())


def test_resnet20_experiment_global_pruning_sgd_schedule(tmp_path, stage_recorder):
  splits = synthetic_splits(256, 64, 64, shape=(32, 32, 3))
  cfg = config.Config(
      model="resnet20", dataset="cifar10", rounds=1, iterations=20, batch_size=16,
      learning_rate=0.05, eval_every=10, prune_rate_conv=0.2, prune_rate_fc=0.2,
      prune_rate_output=0.0, controls=(), pruning="global", prune_rate=0.5, optimizer="sgd",
      warmup_iterations=5, lr_drops=(15,), weight_decay=1e-4, initializer="he_normal").validate()
  out = str(tmp_path)
  recorder = stage_recorder()
  # as lth_tf.main runs it: TensorBoard (hparams hold the lr_drops list) and export on
  rows = experiment.run(cfg, out, splits, jit_compile=False, callbacks=[recorder],
                        logdir=f"{out}/tb", export=True)
  assert [(r["arm"], r["round"]) for r in rows] == [("ticket", 0), ("ticket", 1)]
  assert (tmp_path / "tb" / "summary").exists()
  assert (tmp_path / "ticket" / "trial_0" / "round_1" / "ticket" / "saved_model.pb").exists()
  theta0 = artifacts.read_weights(layout.theta0_path(out, 0))
  sizes = {n: k[0].size for n, k in theta0.items() if not n.startswith("bn")}
  convs = sum(s for n, s in sizes.items() if n != "output")
  for r, row in enumerate(rows):
    d = layout.stage_dir(out, "ticket", 0, r)
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
