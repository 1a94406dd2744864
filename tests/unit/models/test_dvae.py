"""dVAE and discriminator: shapes, parameter counts, logical names, gradients, episodes, dtype."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nwt_jax.models import discriminator
from nwt_jax.models import dvae

# Small widths keep the tests fast; 64x56 frames as in the `tiny` preset.
SMALL = dict(channels=(8, 16, 32), res_blocks=(0, 1, 1), dim=32, num_codes=64, heads=4,
             num_episodes=4, episode_dim=16, norm_groups=4)
H, W = 64, 56


def _key(seed):
  # 'rbg' keys compile far faster than threefry ones on CPU (1.3 s vs 4.5 s for this init).
  return jax.random.key(seed, impl="rbg")
# The paper's dVAE (256x224 frames, dim 512, 8 heads, 1024 codes) at x16 and x32 downsampling.
PAPER_MEM16 = dict(channels=(64, 128, 256, 256, 512), res_blocks=(1, 1, 2, 2, 2), dim=512,
                   num_codes=1024, heads=8)
PAPER_MEM8 = dict(PAPER_MEM16, channels=(64, 128, 256, 256, 512, 512),
                  res_blocks=(1, 1, 2, 2, 2, 2))


def _frames(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape + (H, W, 3)), jnp.uint8)


def _abstract_init(model, *args, **kwargs):
  """Boxed (LogicallyPartitioned) variables from jax.eval_shape: no real compute."""
  return jax.eval_shape(functools.partial(model.init, **kwargs), jax.random.key(0), *args)


@functools.lru_cache(maxsize=None)
def _small_params(**overrides):
  model = dvae.DVAE(**{**SMALL, **overrides})
  variables = jax.jit(functools.partial(model.init, train=False))(
      _key(0), _frames((1,)), jnp.zeros((1,), jnp.int32))
  return model, nn.unbox(variables["params"])


def _count(params):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def test_shapes_for_frame_and_clip_batches():
  model, params = _small_params()
  assert model.downsample_factor == 4
  frames, episode = _frames((2, 3)), jnp.array([[0, 1, 1], [3, 3, 2]])
  recon, aux = model.apply({"params": params}, frames, episode, train=True,
                           rngs={"gumbel": _key(1)})
  assert recon.shape == (2, 3, H, W, 3) and recon.dtype == jnp.float32
  assert float(jnp.abs(recon).max()) <= 1.0
  assert aux["indices"].shape == (2, 3, 16, 14, 4) and aux["indices"].dtype == jnp.int32
  assert aux["code_counts"].shape == (4, 64)
  assert float(aux["code_counts"].sum()) == 2 * 3 * 16 * 14 * 4
  assert aux["perplexity"].shape == aux["usage"].shape == (4,)
  flat_recon, _ = model.apply({"params": params}, frames.reshape((6, H, W, 3)),
                              episode.reshape(6), train=False)
  assert flat_recon.shape == (6, H, W, 3)
  codes = model.apply({"params": params}, frames, method=model.encode)
  assert codes.shape == (2, 3, 16, 14, 4)
  assert model.apply({"params": params}, codes, episode, method=model.decode).shape == recon.shape
  with pytest.raises(ValueError, match="one per frame"):
    model.apply({"params": params}, frames, jnp.zeros((2,), jnp.int32), train=False)


def test_x8_grid_and_exact_small_param_count():
  model, params = _small_params(channels=(8, 16, 32, 32), res_blocks=(0, 1, 1, 1))
  assert model.downsample_factor == 8
  assert model.apply({"params": params}, _frames((2,)), method=model.encode).shape == (2, 8, 7, 4)
  # Counted from the architecture as documented in dvae.py and layers.py.
  conv = lambda k, cin, cout: k * k * cin * cout + cout
  norm = lambda c: 2 * c
  block = lambda c, film=0: 2 * norm(c) + 2 * conv(3, c, c) + film * (16 * 2 * c + 2 * c)
  encoder = (conv(3, 3, 8) + conv(3, 8, 16) + block(16) + conv(3, 16, 32) + block(32)
             + conv(3, 32, 32) + block(32) + norm(32) + conv(1, 32, 32))
  decoder = (4 * 16 + conv(3, 32, 32) + block(32, 1) + conv(3, 32, 32) + block(32, 1)
             + conv(3, 32, 16) + block(16, 1) + conv(3, 16, 8) + norm(8) + conv(3, 8, 3))
  quantizer = 4 * 64 * 8 + 2 * 4 * 8 * 8
  assert _count(params["encoder"]) == encoder
  assert _count(params["decoder"]) == decoder
  assert _count(params["quantizer"]) == quantizer
  assert _count(params) == encoder + decoder + quantizer == 130_163


def test_encode_decode_equals_eval_forward_and_eval_is_deterministic():
  model, params = _small_params()
  frames, episode = _frames((3,), seed=1), jnp.array([0, 2, 3])
  recon1, aux1 = model.apply({"params": params}, frames, episode, train=False)
  recon2, aux2 = model.apply({"params": params}, frames, episode, train=False)
  np.testing.assert_array_equal(recon1, recon2)
  np.testing.assert_array_equal(aux1["indices"], aux2["indices"])
  codes = model.apply({"params": params}, frames, method=model.encode)
  np.testing.assert_array_equal(codes, aux1["indices"])
  decoded = model.apply({"params": params}, codes, episode, method=model.decode)
  np.testing.assert_allclose(decoded, recon1, atol=1e-6)
  # Training mode samples codes: another rng gives other codes.
  _, aux3 = model.apply({"params": params}, frames, episode, train=True,
                        rngs={"gumbel": _key(7)})
  assert np.mean(np.asarray(aux3["indices"]) != np.asarray(codes)) > 0.05


def test_gumbel_gradients_reach_the_encoder():
  model, params = _small_params()
  frames, episode = _frames((2,), seed=2), jnp.array([0, 1])

  def loss(params, train):
    recon, _ = model.apply({"params": params}, frames, episode, train=train,
                           rngs={"gumbel": _key(0)})
    return jnp.mean(jnp.abs(recon - dvae.frames_to_float(frames)))

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  grads = grad(params, True)["encoder"]
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
    assert float(jnp.abs(g).max()) > 0, path
  # Without the Gumbel straight-through path (eval: argmax) nothing reaches the encoder.
  eval_grads = grad(params, False)["encoder"]
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(eval_grads)) == 0.0


def test_episode_id_changes_the_decoded_frame():
  model, params = _small_params()
  codes = model.apply({"params": params}, _frames((2,), seed=3), method=model.encode)
  decode = functools.partial(model.apply, {"params": params}, method=model.decode)
  a, b = decode(codes, jnp.array([0, 0])), decode(codes, jnp.array([1, 1]))
  assert float(jnp.mean(jnp.abs(a - b))) > 0.05
  # Episodes are per frame: switching frame 1 only leaves frame 0 untouched.
  mixed = decode(codes, jnp.array([0, 1]))
  np.testing.assert_allclose(mixed[0], a[0], atol=1e-6)
  np.testing.assert_allclose(mixed[1], b[1], atol=1e-6)


@pytest.mark.parametrize("config, grid", [(PAPER_MEM16, (16, 14)), (PAPER_MEM8, (8, 7))])
def test_paper_configs_grid_and_param_count(config, grid):
  model = dvae.DVAE(**config)
  frames = jax.ShapeDtypeStruct((2, 256, 224, 3), jnp.uint8)
  episode = jax.ShapeDtypeStruct((2,), jnp.int32)
  boxed = _abstract_init(model, frames, episode, train=False)
  params = nn.unbox(boxed["params"])
  codes = jax.eval_shape(functools.partial(model.apply, method=model.encode), {"params": params},
                         frames)
  assert codes.shape == (2,) + grid + (8,) and codes.dtype == jnp.int32
  recon = jax.eval_shape(functools.partial(model.apply, method=model.decode), {"params": params},
                         codes, episode)
  assert recon.shape == (2, 256, 224, 3)
  assert params["quantizer"]["codes"].shape == (8, 1024, 64)
  # Measured: 36.9M (mem16) and 60.6M (mem8), a conv VQGAN-sized autoencoder.
  assert 20e6 < _count(params) < 80e6


def _assert_all_partitioned(boxed):
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == leaf.value.ndim, leaf


def test_every_parameter_has_logical_axis_names():
  model = dvae.DVAE(**SMALL)
  frames = jax.ShapeDtypeStruct((1, H, W, 3), jnp.uint8)
  episode = jax.ShapeDtypeStruct((1,), jnp.int32)
  _assert_all_partitioned(_abstract_init(model, frames, episode, train=False)["params"])
  disc = discriminator.MultiScaleDiscriminator(channels=(8, 16), num_scales=2)
  _assert_all_partitioned(
      _abstract_init(disc, jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32))["params"])


def test_discriminator_scales_and_features():
  disc = discriminator.MultiScaleDiscriminator(channels=(8, 16, 32), num_scales=3, norm_groups=4)
  frames = jax.random.uniform(_key(0), (2, 2, H, W, 3), minval=-1, maxval=1)
  variables = jax.jit(disc.init)(_key(1), frames)
  logits, aux = disc.apply(variables, frames)
  assert [l.shape for l in logits] == [(4, 8, 7, 1), (4, 4, 4, 1), (4, 2, 2, 1)]
  assert [[f.shape[1:] for f in feats] for feats in aux["features"]][0] == [
      (32, 28, 8), (16, 14, 16), (8, 7, 32)]
  assert len(aux["features"]) == 3 and all(len(f) == 3 for f in aux["features"])
  assert set(variables["params"]) == {"scale0", "scale1", "scale2"}  # one set of weights a scale
  assert all(bool(jnp.all(jnp.isfinite(l))) and float(jnp.std(l)) > 0 for l in logits)


def test_bfloat16_compute_keeps_float32_params_and_close_output():
  model32, params = _small_params()
  model16 = dvae.DVAE(**SMALL, dtype=jnp.bfloat16)
  boxed = _abstract_init(model16, jax.ShapeDtypeStruct((1, H, W, 3), jnp.uint8),
                         jax.ShapeDtypeStruct((1,), jnp.int32), train=False)
  assert {x.dtype for x in jax.tree.leaves(nn.unbox(boxed["params"]))} == {jnp.dtype("float32")}
  frames, episode = _frames((2,), seed=4), jnp.array([0, 1])
  ref, aux_ref = model32.apply({"params": params}, frames, episode, train=False)
  out, aux = model16.apply({"params": params}, frames, episode, train=False)
  assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
  # Rounding flips a few argmax choices (measured 1-2%) ...
  assert float(jnp.mean(aux["indices"] == aux_ref["indices"])) > 0.95
  # ... and the same codes decode to nearly the same frame (measured mean 0.004, max 0.04).
  decoded = model16.apply({"params": params}, aux_ref["indices"], episode, method=model16.decode)
  assert float(jnp.mean(jnp.abs(decoded - ref))) < 0.01
  assert float(jnp.max(jnp.abs(decoded - ref))) < 0.1
