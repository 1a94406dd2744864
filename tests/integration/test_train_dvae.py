"""The dVAE trainer: sharding invariance, state memory, bitwise resume, a smoke run, restore.dvae,
the presets.

One small config (tiny widths, 4-frame clips) is shared so its steps compile once
(`train_dvae.setup` caches by the fields a step depends on): the 1-device step serves the
equality and resume tests; the 8-device (2 x 2 x 2) step the equality and memory tests and the
smoke run of `train_and_evaluate` (all devices), whose checkpoints the restore test loads.
"""

import functools
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nwt_jax import presets
from nwt_jax.data import input_pipeline
from nwt_jax.training import losses
from nwt_jax.training import sharding
from nwt_jax.training import dvae as train_dvae
from nwt_jax.training import dvae_eval
from nwt_jax.training import loop
from nwt_jax.models import dvae
from nwt_jax.training import restore
import toy

MESH_222 = dict(data=2, fsdp=2, model=2)


def _config(**train):
  config = presets.load_config("configs/dvae.py:tiny")
  config.data.update(batch_size=4, num_frames=4, num_train_clips=8, num_validation_clips=4,
                     num_workers=1, prefetch=1)
  config.dvae.update(channels=(16, 32), res_blocks=(0, 1), dim=32, num_codes=32, heads=4,
                     episode_dim=8, norm_groups=4)
  config.disc.update(channels=(16, 32), num_scales=1, norm_groups=4)
  # Both branches of the step within the first steps: L1 only at steps 0-1, then adversarial.
  config.loss.update(adv_start_step=2, adv_ramp_steps=2)
  config.optim.update(lr=3e-3, warmup_steps=2, decay_steps=30)
  config.train.update(num_steps=20, log_every=5, eval_every=10, checkpoint_every=10,
                      eval_batch_size=4, eval_frames_per_clip=2, eval_batches=1, num_samples=4)
  config.train.update(train)
  return config


def _batches(config, count):
  with input_pipeline.create_iterator(config.data, "train", seed=config.seed) as it:
    it = dvae_eval.FrameIterator(it)
    return [next(it) for _ in range(count)]


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _assert_bitwise_equal(a, b):
  for x, y in zip(jax.tree.leaves(_host(a)), jax.tree.leaves(_host(b))):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def eight_device_run():
  """5 steps on a 2 data x 2 fsdp x 2 model mesh with the AOT-compiled step, and its memory."""
  config = _config(num_steps=5)
  config.mesh.update(MESH_222)
  s = train_dvae.setup(config, jax.devices()[:8])
  batches = [sharding.put_batch(b, s.mesh) for b in _batches(config, 5)]
  compiled = s.lower_train_step(batches[0]).compile()
  state = s.init_state()
  memory = sharding.state_memory(compiled, state, batches[0], s.mesh)
  losses = []
  for batch in batches:
    state, metrics = compiled(state, batch)
    losses.append(jax.device_get(metrics))
  return config, s, state, losses, memory


def test_eight_devices_give_the_losses_of_one(eight_device_run):
  config, s8, state8, losses8, _ = eight_device_run
  config = _config(num_steps=5)  # mesh data=-1 on one device
  s1 = train_dvae.setup(config, jax.devices()[:1])
  state = s1.init_state()
  losses1 = []
  for batch in _batches(config, 5):
    state, metrics = s1.train_step(state, sharding.put_batch(batch, s1.mesh))
    losses1.append(jax.device_get(metrics))
  kernel = state8.params["generator"]["encoder"]["level1_block0"]["conv1"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, "fsdp", "model")
  for step, (a, b) in enumerate(zip(losses1, losses8)):
    for key in ("loss", "l1", "g_adv", "fm", "d_loss", "g_grad_norm"):
      np.testing.assert_allclose(b[key], a[key], rtol=2e-4, atol=1e-6, err_msg=f"{key}@{step}")
  assert [float(m["d_loss"]) == 0.0 for m in losses1] == [True, True, False, False, False]
  assert float(losses1[-1]["adv_scale"]) == 1.0
  p1, p8 = _host(state.params), _host(state8.params)
  for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
    np.testing.assert_allclose(y, x, rtol=1e-3, atol=1e-5)


def test_per_device_state_bytes_are_sharded_over_fsdp_and_model(eight_device_run):
  *_, memory = eight_device_run
  assert memory["state_bytes"] > 0
  assert memory["ratio"] <= 1.15, memory


def test_ten_steps_save_restore_ten_steps_equals_twenty_bitwise(tmp_path):
  config = _config(num_steps=20)
  s = train_dvae.setup(config, jax.devices()[:1])

  def run(workdir, num_steps):
    config.train.num_steps = num_steps
    with input_pipeline.create_iterator(config.data, "train", seed=config.seed) as it:
      return loop.run(config, str(workdir), s, dvae_eval.FrameIterator(it),
                      writer=toy.RecordingWriter())

  run(tmp_path / "resumed", 10)
  resumed = run(tmp_path / "resumed", 20)
  straight = run(tmp_path / "straight", 20)
  assert int(resumed.step) == int(straight.step) == 20
  _assert_bitwise_equal(resumed, straight)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """`train_and_evaluate` on all 8 devices (the 2 x 2 x 2 mesh), and what it wrote."""
  workdir = str(tmp_path_factory.mktemp("dvae"))
  config = _config(num_steps=30, log_every=5, eval_every=15, checkpoint_every=15)
  config.mesh.update(MESH_222)
  state = train_dvae.train_and_evaluate(config, workdir)
  return config, workdir, state, toy.scalars(workdir)


def test_train_and_evaluate_smoke(smoke_run):
  config, workdir, state, scalars = smoke_run
  assert int(state.step) == 30
  logged = [s for s in sorted(scalars) if "train/l1" in scalars[s]]
  assert logged == [1, 2, 5, 10, 15, 20, 25, 30]
  losses = [scalars[s]["train/l1"] for s in logged]
  assert losses[-1] < 0.8 * losses[0], losses
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))) == [15, 30]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  for step in (15, 30):
    png = os.path.join(workdir, "samples", f"recon_{step}.png")
    with open(png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  evals = scalars[30]
  for key in ("eval/psnr", "eval/ssim", "eval/usage_min", "eval/perplexity_mean",
              "eval/mouth_r", "eval/usage/head3"):
    assert np.isfinite(evals[key]), key
  assert 0 < evals["eval/usage_min"] <= 1 and evals["eval/psnr"] > 5


def test_restore_frozen_round_trip(smoke_run):
  config, workdir, state, _ = smoke_run
  model, params, saved = restore.dvae(workdir)
  _assert_bitwise_equal(params, state.params["generator"])
  assert saved.dvae.to_dict() == {k: list(v) if isinstance(v, tuple) else v
                                  for k, v in config.dvae.to_dict().items()}
  assert model.downsample_factor == 2 and model.num_codes == 32
  frames = dvae_eval.load_eval_set(config)["video"][:2]
  codes = model.apply({"params": params}, frames, method=model.encode)
  assert codes.shape == (2, 32, 28, 4) and codes.dtype == jnp.int32
  recon = model.apply({"params": params}, codes, jnp.zeros((2,), jnp.int32), method=model.decode)
  assert recon.shape == (2, 64, 56, 3)
  _, old, _ = restore.dvae(workdir, step=15)
  assert not np.array_equal(_host(old)["decoder"]["out"]["kernel"],
                            _host(params)["decoder"]["out"]["kernel"])
  with pytest.raises(FileNotFoundError):
    restore.dvae(os.path.join(workdir, "nothing_here"))


@pytest.mark.parametrize("preset, frame, grid, dim, heads, codes", [
    ("tiny", (64, 56), (16, 14), 128, 4, 32),
    ("base", (128, 112), (16, 14), 256, 8, 512),
    ("paper_mem16", (256, 224), (16, 14), 512, 8, 1024),
    ("paper_mem8", (256, 224), (8, 7), 512, 8, 1024),
])
def test_presets(preset, frame, grid, dim, heads, codes):
  config = presets.load_config(f"configs/dvae.py:{preset}")
  model, _ = train_dvae.make_models(config)
  assert config.model == "dvae" and config.debug.nan_at_step == -1
  assert (config.data.height, config.data.width) == frame
  assert tuple(x // model.downsample_factor for x in frame) == grid
  assert (model.dim, model.heads, model.num_codes) == (dim, heads, codes)
  assert set(config.data) == set(input_pipeline.default_config())
  assert config.dtype == ("float32" if preset == "tiny" else "bfloat16")
  assert config.optim.decay_steps == config.train.num_steps  # the cosine spans the run


def test_paper_mem8_overrides_mem16_only_where_it_differs():
  mem8, mem16 = (presets.load_config(f"configs/dvae.py:{p}").to_dict()
                 for p in ("paper_mem8", "paper_mem16"))
  differ = {f"{s}.{k}" for s in mem16 if isinstance(mem16[s], dict)
            for k in mem16[s] if mem16[s][k] != mem8[s][k]}
  assert differ == {"dvae.channels", "dvae.res_blocks"}
  with pytest.raises(ValueError, match="Unknown config preset"):
    presets.load_config("configs/dvae.py:huge")


def test_step_gradients_equal_the_plain_autodiff_of_both_losses():
  """The step shares the discriminator's forward passes between its two losses (one pullback,
  two cotangents); with SGD at learning rate 1 its update must be minus the gradients that
  plain autodiff gives, the discriminator run on [real; fake] as the losses are written."""
  config = _config()
  lc = config.loss
  model, disc = train_dvae.make_models(config)
  sgd = optax.sgd(1.0)
  state = flax.linen.unbox(train_dvae.create_train_state(
      model, disc, sgd, sgd, config.data.height, config.data.width, jax.random.key(0)))
  state = state.replace(step=jnp.asarray(lc.adv_start_step))  # scale 0.5: both terms on
  batch = jax.tree.map(jnp.asarray, _batches(config, 1)[0])
  new_state, metrics = jax.jit(functools.partial(
      train_dvae.train_step, model=model, disc=disc, tx_g=sgd, tx_d=sgd,
      lr_schedule=optax.constant_schedule(1.0), loss_config=lc, seed=config.seed,
      rng_impl=config.rng_impl, nan_at_step=-1))(state, batch)

  frames = batch["video"]
  episode = jnp.broadcast_to(batch["episode"][:, None], frames.shape[:2])
  target = dvae.frames_to_float(frames).reshape((-1,) + frames.shape[2:])
  rng = jax.random.fold_in(jax.random.key(config.seed, impl=config.rng_impl), state.step)
  gp, dp = state.params["generator"], state.params["discriminator"]
  scale = float(train_dvae.adversarial_scale(state.step, lc.adv_start_step, lc.adv_ramp_steps))
  assert scale == 0.5
  n = len(target)
  halves = lambda tree: (jax.tree.map(lambda x: x[:n], tree), jax.tree.map(lambda x: x[n:], tree))

  def recon_of(gp):
    recon, _ = model.apply({"params": gp}, frames, episode, train=True, rngs={"gumbel": rng})
    return recon.reshape(target.shape)

  def generator_loss(gp):
    recon = recon_of(gp)
    logits, aux = disc.apply({"params": dp}, jnp.concatenate([target, recon]))
    real, fake = halves(aux["features"])
    adv = (lc.adv_weight * losses.hinge_generator_loss(halves(logits)[1])
           + lc.fm_weight * losses.feature_matching_loss(real, fake))
    return lc.l1_weight * losses.l1_loss(recon, target) + scale * adv

  def discriminator_loss(dp):
    logits, _ = disc.apply({"params": dp}, jnp.concatenate([target, recon_of(gp)]))
    return losses.hinge_discriminator_loss(*halves(logits))

  expected = jax.jit(lambda gp, dp: {"generator": jax.grad(generator_loss)(gp),
                                     "discriminator": jax.grad(discriminator_loss)(dp)})(gp, dp)
  got = jax.tree.map(jnp.subtract, state.params, new_state.params)
  for name in expected:
    for path, want in jax.tree_util.tree_leaves_with_path(expected[name]):
      # p - (p - g) carries p's rounding: a few float32 ulps of the parameter's magnitude.
      ulp = np.finfo(np.float32).eps * np.abs(_nested_get(state.params[name], path)).max()
      np.testing.assert_allclose(_nested_get(got[name], path), want, rtol=1e-3, atol=8 * ulp,
                                 err_msg=f"{name}{jax.tree_util.keystr(path)}")
  assert float(metrics["d_grad_norm"]) == pytest.approx(
      float(optax.tree.norm(expected["discriminator"])), rel=1e-4)
  assert float(metrics["g_grad_norm"]) > 0


def _nested_get(tree, path):
  for key in path:
    tree = tree[key.key]
  return np.asarray(tree)
