"""The prior: shapes, causality by perturbation, cached decoding, style latent, episodes, names."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nwt_jax.training import losses
from nwt_jax.training import sharding
from nwt_jax.models import prior

# Tiny dims keep the tests fast; the grid is 4x2 positions x 2 heads (L = 16 codes per frame).
SMALL = dict(grid=(4, 2), code_heads=2, num_codes=16, num_episodes=3, max_frames=6, d_model=32,
             num_heads=2, head_dim=16, mlp_dim=64, temporal_layers=2, spatial_layers=1,
             audio_layers=1, code_embed_dim=8, style_dim=16, style_hidden=32, depth_dim=32,
             depth_layers=2)
# The proposed `tiny` preset (CPU): 64x56 frames -> an 8x7 grid x 4 heads, 512 codes, 32 frames.
TINY = dict(grid=(8, 7), code_heads=4, num_codes=512, num_episodes=8, max_frames=32, d_model=128,
            num_heads=4, head_dim=32, mlp_dim=512, temporal_layers=3, spatial_layers=1,
            audio_layers=2, code_embed_dim=16, style_dim=16, style_hidden=128, depth_dim=64,
            depth_layers=2)
# A paper-scale prior: 256x224 frames, Mem8 grid (8x7), 8 heads, 1024 codes.
PAPER = dict(grid=(8, 7), code_heads=8, num_codes=1024, num_episodes=8, max_frames=64,
             d_model=1024, num_heads=16, head_dim=64, mlp_dim=4096, temporal_layers=12,
             spatial_layers=4, audio_layers=6, code_embed_dim=64, style_dim=32, style_hidden=1024,
             depth_dim=512, depth_layers=4)
B, T = 2, 4


def _key(seed):
  # 'rbg' keys compile far faster than threefry ones on CPU.
  return jax.random.key(seed, impl="rbg")


def _batch(seed=0, frames=T, **overrides):
  cfg = {**SMALL, **overrides}
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, cfg["num_codes"], (B, frames) + cfg["grid"] + (cfg["code_heads"],))
  mel = rng.normal(-8.0, 4.0, (B, 4 * frames, 80))
  episode = rng.integers(0, cfg["num_episodes"], (B, frames))
  return (jnp.asarray(codes, jnp.int32), jnp.asarray(mel, jnp.float32),
          jnp.asarray(episode, jnp.int32))


# 'mar_local': MAR whose depth stack attends within blocks of one grid row (4 of 16 codes);
# '*_patch': `tiny`'s spatial path: 2x2 patches of grid positions (2 tokens a frame), the copy
# gate, FiLM and the cond skip (zero-initialised weights drawn at random, so each path is live).
SPATIAL = dict(spatial_patch=2, copy_gate=True, spatial_film=True, cond_skip=True)
VARIANTS = {"far": dict(decoder="far"), "mar": dict(decoder="mar"),
            "mar_local": dict(decoder="mar", depth_window_rows=1),
            "far_patch": dict(decoder="far", **SPATIAL),
            "mar_patch": dict(decoder="mar", depth_window_rows=2, **SPATIAL),
            "far_anchor": dict(decoder="far", anchor=True, **SPATIAL),
            "mar_anchor": dict(decoder="mar", anchor=True, **SPATIAL),
            "far_anchor_only": dict(decoder="far", anchor=True, autoregressive=False, **SPATIAL),
            "far_hidden": dict(decoder="far", anchor=True, hidden_cells=(2, 5), **SPATIAL),
            "mar_hidden": dict(decoder="mar", anchor=True, hidden_cells=(2, 5), **SPATIAL)}
ZERO_INIT_PARAMS = ("copy", "anchor_copy", "depth_copy", "depth_copy_bias", "film")


def _randomize_zero_init(params):
  def draw(path, x):
    if any(getattr(k, "key", None) in ZERO_INIT_PARAMS for k in path):
      return jax.random.normal(_key(len(path)), x.shape, x.dtype)
    return x
  return jax.tree_util.tree_map_with_path(draw, params)


@functools.lru_cache(maxsize=None)
def _model_and_params(decoder):
  model = prior.Prior(**VARIANTS[decoder], **SMALL)
  params = jax.jit(functools.partial(model.init, train=False))(_key(0), *_batch())["params"]
  return model, _randomize_zero_init(nn.unbox(params))


def _z(seed=3):
  return jax.random.normal(_key(seed), (B, SMALL["style_dim"]))


@pytest.mark.parametrize("decoder", ["far", "mar"])
def test_logits_shape_and_aux(decoder):
  model, params = _model_and_params(decoder)
  logits, aux = model.apply({"params": params}, *_batch(), train=True,
                            rngs={"style": _key(1)})
  assert logits.shape == (B, T, 4, 2, 2, 16) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert aux["mu"].shape == aux["log_sigma"].shape == aux["z"].shape == (B, 16)
  assert aux["kl"].shape == ()


@pytest.mark.parametrize("decoder", ["far", "mar", "mar_local", "far_patch", "mar_patch",
                                     "far_anchor"])
def test_causality_by_perturbation(decoder):
  """Changing code i changes no logit at or before i (FAR: of frames <= its frame), some later.

  z is held fixed: in training it is the clip's posterior, which sees the whole clip by design.
  """
  model, params = _model_and_params(decoder)
  codes, mel, episode = _batch()
  z = _z()
  apply = jax.jit(lambda c: model.apply({"params": params}, c, mel, episode, train=False, z=z)[0])
  base = apply(codes)
  length = codes[0, 0].size  # codes per frame
  flat = codes.reshape(B, T * length)
  for i in range(T * length):
    bumped = flat.at[:, i].set((flat[:, i] + 1) % SMALL["num_codes"]).reshape(codes.shape)
    delta = np.abs(np.asarray(apply(bumped) - base)).max(axis=(0, -1)).reshape(-1)  # [T*L]
    last_unaffected = (i // length + 1) * length if model.decoder == "far" else i + 1
    np.testing.assert_array_equal(delta[:last_unaffected], 0.0, err_msg=f"code {i}")
    if last_unaffected < T * length:
      assert delta[last_unaffected:].max() > 1e-4, f"code {i} changes no later logit"
    if model.decoder != "far" and i % length < length - 1:
      assert delta[i + 1] > 1e-4, f"code {i} does not reach the next code of its frame"


def _teacher_forced_by_steps(model, params, codes, mel, episode, z):
  """Logits of every code through the KV-cache decode path, fed the true previous codes."""
  v = {"params": params}
  context = model.apply(v, mel, episode, z, method=model.encode_context)
  cache = model.init_cache(B)
  frame_step = jax.jit(functools.partial(
      model.apply, v, method=model.far_frame_step if model.decoder == "far"
      else model.mar_frame_step))
  code_step = jax.jit(functools.partial(model.apply, v, method=model.mar_code_step))
  prev = jnp.zeros_like(codes[:, 0])
  out = []
  for t in range(codes.shape[1]):
    result, cache = frame_step(context, prev, t, cache)
    if model.decoder == "far":
      out.append(result)
    else:
      flat = codes[:, t].reshape(B, -1)  # [B, L] in decoding order
      prev_code = jnp.zeros((B,), jnp.int32)
      frame = []
      for j in range(flat.shape[1]):
        logits, cache = code_step(result, prev_code, j, cache)
        frame.append(logits)
        prev_code = flat[:, j]
      out.append(jnp.stack(frame, axis=1).reshape(codes[:, t].shape + (-1,)))
    prev = codes[:, t]
  return jnp.stack(out, axis=1)


@pytest.mark.parametrize("decoder", ["far", "mar", "mar_local", "far_patch", "mar_patch",
                                     "far_anchor", "mar_anchor", "far_anchor_only",
                                     "far_hidden", "mar_hidden"])
def test_cached_decoding_equals_teacher_forcing(decoder):
  model, params = _model_and_params(decoder)
  codes, mel, episode = _batch(seed=1, frames=SMALL["max_frames"])
  z = _z()
  full, _ = model.apply({"params": params}, codes, mel, episode, train=False, z=z)
  stepped = _teacher_forced_by_steps(model, params, codes, mel, episode, z)
  np.testing.assert_allclose(stepped, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("decoder", ["far_patch", "mar_patch"])
def test_a_saturated_copy_gate_repeats_the_previous_frame(decoder):
  """Gate bias +100: every code of frames >= 1 is the previous frame's (frame 0 has none)."""
  model, params = _model_and_params(decoder)
  name = "copy" if decoder == "far_patch" else "depth_copy"
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: (jnp.full_like(x, 100.0) if path[-1].key in ("bias", "depth_copy_bias")
                       and path[0].key in (name, "depth_copy_bias") else x), params)
  codes, mel, episode = _batch(seed=2)
  logits, _ = model.apply({"params": params}, codes, mel, episode, train=False, z=_z())
  np.testing.assert_array_equal(jnp.argmax(logits[:, 1:], -1), codes[:, :-1])
  assert np.mean(np.asarray(jnp.argmax(logits[:, 0], -1) == codes[:, 0])) < 0.5


def _saturated_anchor_gate():
  """The far_anchor prior with its anchor gate's bias at +100 and the previous-frame gate off."""
  model, params = _model_and_params("far_anchor")
  return model, jax.tree_util.tree_map_with_path(
      lambda path, x: (jnp.full_like(x, 100.0) if path[0].key == "anchor_copy"
                       and path[-1].key == "bias" else
                       jnp.zeros_like(x) if path[0].key == "copy" else x), params)


def test_a_saturated_anchor_gate_repeats_the_anchor_and_a_given_anchor_replaces_frame_0():
  """Anchor gate bias +100 (previous-frame gate off): frames >= 1 are the window's frame 0, in
  teacher forcing and in cached decoding; an anchor given through the cache replaces it."""
  model, params = _saturated_anchor_gate()
  codes, mel, episode = _batch(seed=2)
  v = {"params": params}
  logits, _ = model.apply(v, codes, mel, episode, train=False, z=_z())
  np.testing.assert_array_equal(jnp.argmax(logits[:, 1:], -1),
                                jnp.broadcast_to(codes[:, :1], codes[:, 1:].shape))
  context = model.apply(v, mel, episode, _z(), method=model.encode_context)
  other = (codes[:, 0] + 1) % SMALL["num_codes"]
  cache = {**model.init_cache(B), "anchor": other}
  for t in range(T):
    step_logits, cache = model.apply(v, context, codes[:, max(t - 1, 0)], t, cache,
                                     method=model.far_frame_step)
    if t:
      np.testing.assert_array_equal(jnp.argmax(step_logits, -1), other)


def test_a_given_anchor_replaces_the_windows_frame_0_as_the_anchor_of_frames_after_it():
  """Teacher forcing with `anchor` (training's distant anchor): the saturated anchor gate copies
  the given frame into frames >= 1; frame 0's logits (null anchor) do not change; passing the
  window's own frame 0 is the default."""
  model, params = _saturated_anchor_gate()
  codes, mel, episode = _batch(seed=4)
  apply = lambda anchor: model.apply({"params": params}, codes, mel, episode, train=False,
                                     z=_z(), anchor=anchor)[0]
  other = (codes[:, 0] + 7) % SMALL["num_codes"]
  given, default = apply(other), apply(None)
  np.testing.assert_array_equal(jnp.argmax(given[:, 1:], -1),
                                jnp.broadcast_to(other[:, None], codes[:, 1:].shape))
  np.testing.assert_array_equal(given[:, 0], default[:, 0])
  np.testing.assert_array_equal(apply(codes[:, 0]), default)


@pytest.mark.parametrize("decoder", ["far_hidden", "mar_hidden"])
def test_hidden_cells_of_the_previous_frame_and_the_anchor_are_never_seen(decoder):
  """hidden_cells (2, 5): changing the codes of those cells in frames before t (the previous
  frame and the anchor, frame 0) leaves frame t's logits as they are; changing any other cell
  does not (the copy gates are live: their zero-initialised weights are drawn at random)."""
  model, params = _model_and_params(decoder)
  codes, mel, episode = _batch(seed=6)
  z = _z()
  apply = jax.jit(lambda c: model.apply({"params": params}, c, mel, episode, train=False, z=z)[0])
  base = apply(codes)
  hidden = np.zeros(SMALL["grid"], bool).reshape(-1)
  hidden[[2, 5]] = True
  hidden = hidden.reshape(SMALL["grid"])
  last = T - 1
  bump = lambda where: codes.at[:, :last].set(
      jnp.where(where[None, None, :, :, None], (codes[:, :last] + 1) % SMALL["num_codes"],
                codes[:, :last]))
  # MAR's frame t also sees its own earlier codes, so compare the first code of the last frame.
  first_code = lambda logits: np.asarray(logits)[:, last, 0, 0, 0]
  np.testing.assert_allclose(first_code(apply(bump(hidden))), first_code(base), atol=1e-6)
  assert np.abs(first_code(apply(bump(~hidden))) - first_code(base)).max() > 1e-4
  if decoder == "far_hidden":
    np.testing.assert_allclose(np.asarray(apply(bump(hidden)))[:, last],
                               np.asarray(base)[:, last], atol=1e-6)


def test_a_prior_that_is_not_autoregressive_sees_only_the_anchor_of_the_past():
  """autoregressive=False: frame t's logits change with frame 0 (the anchor) and with nothing
  else before it, and every frame sees the BOS frame as its previous one."""
  model, params = _model_and_params("far_anchor_only")
  codes, mel, episode = _batch(seed=5)
  z = _z()
  apply = jax.jit(lambda c: model.apply({"params": params}, c, mel, episode, train=False, z=z))
  base, aux = apply(codes)
  assert np.all(np.asarray(aux["prev_codes"]) == -1)
  bumped_first = apply(codes.at[:, 0].set((codes[:, 0] + 1) % SMALL["num_codes"]))[0]
  assert np.abs(np.asarray(bumped_first - base))[:, 1:].max() > 1e-4
  bumped_later = apply(codes.at[:, 1:].set((codes[:, 1:] + 1) % SMALL["num_codes"]))[0]
  np.testing.assert_array_equal(bumped_later, base)


def test_prev_code_noise_replaces_cells_by_cells_of_the_window_at_its_rate():
  """prev_code_noise=0.3: about 30% of the cells frames >= 1 see are another cell's K codes from
  the window (BOS frame 0 untouched); 0 (or evaluation): none."""
  noisy = prior.Prior(**VARIANTS["far_patch"], **{**SMALL, "num_codes": 4096},
                      prev_code_noise=0.3)
  rng = np.random.default_rng(0)
  codes = jnp.asarray(rng.integers(0, 4096, (B, 6, 4, 2, 2)), jnp.int32)  # distinct cells
  mel = jnp.zeros((B, 24, 80))
  episode = jnp.zeros((B,), jnp.int32)
  params = jax.jit(functools.partial(noisy.init, train=False))(_key(0), codes, mel, episode)
  _, aux = noisy.apply(params, codes, mel, episode, train=True,
                       rngs={"style": _key(1), "dropout": _key(2)})
  seen, clean = np.asarray(aux["prev_codes"]), np.asarray(prior.previous_frame_codes(codes))
  assert np.all(seen[:, 0] == -1)
  changed = np.any(seen[:, 1:] != clean[:, 1:], axis=-1)  # [B, T-1, gh, gw]
  assert 0.15 < changed.mean() < 0.45, changed.mean()
  window_cells = {tuple(c) for c in np.asarray(codes).reshape(B, -1, 2)[0]}
  for cell in seen[0, 1:].reshape(-1, 2)[changed[0].reshape(-1)]:
    assert tuple(cell) in window_cells  # a stray cell comes from the same window
  _, aux = noisy.apply(params, codes, mel, episode, train=False)
  np.testing.assert_array_equal(aux["prev_codes"], clean)


def test_stale_frames_show_an_older_frame_of_the_window():
  """stale_frame_rate=1: frame t >= 2 sees one of frames 0..t-2 (the lag drawn per frame), in
  the copy gate's codes (aux['prev_codes']) and in the embeddings alike; rate 0: frame t-1."""
  model, params = _model_and_params("far_patch")
  stale = prior.Prior(**VARIANTS["far_patch"], **SMALL, stale_frame_rate=1.0)
  codes, mel, episode = _batch(seed=4, frames=6)
  shown_at_5 = set()
  for seed in range(3):
    _, aux = stale.apply({"params": params}, codes, mel, episode, train=True,
                         rngs={"style": _key(1), "dropout": _key(10 + seed)})
    seen = np.asarray(aux["prev_codes"])
    assert np.all(seen[:, 0] == -1)
    np.testing.assert_array_equal(seen[:, 1], codes[:, 0])
    for b in range(B):
      for t in range(2, 6):
        match = [s for s in range(6) if np.array_equal(seen[b, t], codes[b, s])]
        assert match and match[0] <= t - 2, (b, t, match)
        shown_at_5.update(match[:1] if t == 5 else [])
  assert len(shown_at_5) > 1  # the lag is drawn, not fixed
  _, aux = model.apply({"params": params}, codes, mel, episode, train=True,
                       rngs={"style": _key(1), "dropout": _key(10)})
  np.testing.assert_array_equal(aux["prev_codes"], prior.previous_frame_codes(codes))

  # The embeddings are those of the codes shown (the BOS frame where they are -1).
  source = [-1, 0, 0, 1, 3, 2]
  shown = jnp.stack([jnp.full_like(codes[:, 0], -1) if s < 0 else codes[:, s] for s in source], 1)
  emb = model.apply({"params": params}, shown, method=lambda m, c: m._embed_previous(c))
  frames = model.apply({"params": params}, codes, method=lambda m, c: m.frame_embed(c))
  for t, s in enumerate(source):
    want = np.broadcast_to(params["bos_frame"], emb[:, t].shape) if s < 0 else frames[:, s]
    np.testing.assert_allclose(emb[:, t], want, rtol=1e-6)


def test_spatial_patches_group_2x2_cells_and_map_back_to_the_grid():
  """spatial_patch=2 on a 4x6 grid: patch (i, j) holds cells (2i..2i+1, 2j..2j+1) in raster order,
  and `_from_patches` is its inverse."""
  model = prior.Prior(**{**SMALL, "grid": (4, 6), "spatial_patch": 2})
  rows, cols = np.meshgrid(np.arange(4), np.arange(6), indexing="ij")
  cells = jnp.asarray(np.stack([rows, cols], -1).reshape(1, 1, 24, 2))  # [1, 1, P, (row, col)]
  patches = model._to_patches(cells)  # [1, 1, 6, 4, 2]
  assert patches.shape == (1, 1, 6, 4, 2)
  np.testing.assert_array_equal(patches[0, 0, 4], [[2, 2], [2, 3], [3, 2], [3, 3]])  # patch (1, 1)
  np.testing.assert_array_equal(patches[0, 0, 2], [[0, 4], [0, 5], [1, 4], [1, 5]])  # patch (0, 2)
  np.testing.assert_array_equal(model._from_patches(patches), cells)
  with pytest.raises(ValueError, match="spatial_patch=3 must divide"):
    prior.Prior(**{**SMALL, "spatial_patch": 3}).init(_key(0), *_batch(), train=False)


def test_per_frame_episode_changes_only_that_frame_onwards():
  model, params = _model_and_params("far")
  codes, mel, episode = _batch()
  apply = jax.jit(lambda e: model.apply({"params": params}, codes, mel, e, train=False,
                                        z=_z())[0])
  switched = episode.at[:, 2].set((episode[:, 2] + 1) % SMALL["num_episodes"])
  delta = np.abs(np.asarray(apply(switched) - apply(episode))).max(axis=(0, 2, 3, 4, 5))  # [T]
  np.testing.assert_array_equal(delta[:2], 0.0)
  assert np.all(delta[2:] > 1e-4)
  # One id per clip is the same as that id repeated over the frames.
  np.testing.assert_array_equal(apply(episode[:, 0]), apply(jnp.repeat(episode[:, :1], T, 1)))


def test_gaussian_kl():
  zeros = jnp.zeros((3, 16))
  np.testing.assert_array_equal(prior.gaussian_kl(zeros, zeros), np.zeros(3))
  mu = np.array([[0.5, -1.0]])
  log_sigma = np.array([[0.2, -0.3]])
  sigma2 = np.exp(2 * log_sigma)
  want = 0.5 * np.sum(mu ** 2 + sigma2 - 1 - np.log(sigma2), axis=-1)
  np.testing.assert_allclose(prior.gaussian_kl(mu, log_sigma), want, rtol=1e-6)


def test_code_cross_entropy_with_and_without_label_smoothing():
  logits = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
  codes = jnp.array([0, 1])
  np.testing.assert_allclose(losses.code_cross_entropy(logits, codes),
                             -np.log([0.7, 0.1]), rtol=1e-6)
  smoothed = losses.code_cross_entropy(logits, codes, label_smoothing=0.3)
  target = 0.7 * np.eye(3)[[0, 1]] + 0.1
  np.testing.assert_allclose(smoothed, -np.sum(target * np.asarray(logits), -1), rtol=1e-6)


def test_style_path_kl_at_init_eval_mean_and_train_sample():
  model, params = _model_and_params("far")
  codes, mel, episode = _batch()
  _, aux = model.apply({"params": params}, codes, mel, episode, train=False)
  # The style head starts at zero: mu = 0, log_sigma = 0, so the KL is exactly zero.
  assert float(aux["kl"]) == 0.0
  # Give the posterior some mean and spread.
  out = params["style_encoder"]["out"]
  kernel = jax.random.normal(_key(7), out["kernel"].shape) * 0.3
  params = {**params, "style_encoder": {**params["style_encoder"],
                                        "out": {**out, "kernel": kernel}}}
  apply = jax.jit(lambda rng, train: model.apply(
      {"params": params}, codes, mel, episode, train=train, rngs={"style": rng})[1],
      static_argnums=1)
  eval1, eval2 = apply(_key(1), False), apply(_key(2), False)
  np.testing.assert_array_equal(eval1["z"], eval1["mu"])
  np.testing.assert_array_equal(eval1["z"], eval2["z"])
  assert np.abs(eval1["mu"]).max() > 1e-3
  assert float(eval1["kl"]) > 0
  train1, train2 = apply(_key(1), True), apply(_key(2), True)
  np.testing.assert_array_equal(train1["mu"], eval1["mu"])
  assert not np.allclose(train1["z"], train2["z"])
  noise = (train1["z"] - train1["mu"]) / np.exp(train1["log_sigma"])
  assert 0.5 < np.std(noise) < 1.5


def _abstract_params(**cfg):
  model = prior.Prior(**cfg)
  codes = jax.ShapeDtypeStruct((1, cfg["max_frames"]) + cfg["grid"] + (cfg["code_heads"],),
                               jnp.int32)
  mel = jax.ShapeDtypeStruct((1, 4 * cfg["max_frames"], 80), jnp.float32)
  episode = jax.ShapeDtypeStruct((1,), jnp.int32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), _key(0), codes, mel,
                             episode)
  logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, codes, mel,
                          episode)[0]
  return variables["params"], logits


def _stack_params(layers, d, heads, head_dim, mlp, cross=False):
  block = 4 * d * heads * head_dim + 2 * d * mlp + 4 * d  # attention, MLP, two norms
  if cross:
    block += 4 * d * heads * head_dim + 2 * d  # cross-attention to a d-wide context, its norm
  return layers * block + 2 * d  # + final norm


def _expected_params(decoder, grid, code_heads, num_codes, num_episodes, max_frames, d_model,
                     num_heads, head_dim, mlp_dim, temporal_layers, spatial_layers, audio_layers,
                     code_embed_dim, style_dim, style_hidden, depth_dim, depth_layers,
                     spatial_patch=1, copy_gate=False, spatial_film=False, cond_skip=False):
  """The prior's parameter count, written out from its layout."""
  d, p, k, v = d_model, grid[0] * grid[1], code_heads, num_codes
  s2 = spatial_patch**2  # cells a spatial token
  e, hs = code_embed_dim, style_hidden
  audio = (5 * 80 * d + d) + 2 * (4 * d * d + d) + max_frames * d + _stack_params(
      audio_layers, d, num_heads, head_dim, mlp_dim)
  style = k * v * e + (p * e * hs + hs) + (hs * hs + hs) + (hs * 2 * style_dim + 2 * style_dim)
  frame = (num_episodes * d + d * d + style_dim * d + max_frames * d + k * v * e + p * e
           + p * e * d + p // s2 * d + s2 * e * d + (spatial_film + cond_skip) * d * d)
  temporal = _stack_params(temporal_layers, d, num_heads, head_dim, mlp_dim, cross=True)
  spatial = _stack_params(spatial_layers, d, num_heads, head_dim, mlp_dim) if spatial_layers else 0
  if decoder == "far":
    head = 2 * d + d * s2 * k * v + copy_gate * (d * s2 * k + s2 * k)
  else:
    dd = depth_dim
    head = (d * s2 * dd + p * k * dd + k * v * dd + dd + k * dd * v
            + _stack_params(depth_layers, dd, num_heads, dd // num_heads, 4 * dd)
            + copy_gate * (k * dd + k))
  return audio + style + frame + temporal + spatial + head


def _assert_all_partitioned(boxed):
  assert sharding.unnamed_params(boxed) == []
  leaves = jax.tree.leaves(boxed, is_leaf=lambda a: isinstance(a, nn.LogicallyPartitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), leaf
    assert len(leaf.names) == leaf.value.ndim, leaf


@pytest.mark.parametrize("decoder", ["far", "mar"])
@pytest.mark.parametrize("size", ["small", "tiny", "tiny_patch", "paper"])
def test_parameter_count_shapes_and_logical_names(decoder, size):
  tiny_patch = {**TINY, "grid": (16, 14), "num_codes": 32, **SPATIAL}
  cfg = dict({"small": SMALL, "tiny": TINY, "tiny_patch": tiny_patch, "paper": PAPER}[size],
             decoder=decoder)
  boxed, logits = _abstract_params(**cfg)
  _assert_all_partitioned(boxed)
  count = prior.num_params(boxed)
  assert count == _expected_params(**cfg)
  assert logits.shape == (1, cfg["max_frames"]) + cfg["grid"] + (cfg["code_heads"],
                                                                   cfg["num_codes"])
  if size == "tiny":
    assert 1e6 < count < 4e6, count  # trains on a 2-core CPU
  if size == "paper":
    assert 150e6 < count < 400e6, count  # paper scale: d_model 1024, 12 temporal layers


def test_sharded_forward_on_8_devices_equals_one_device():
  """The logical names on parameters and activations are valid under a 2x2x2 mesh."""
  model, params = _model_and_params("mar")
  codes, mel, episode = _batch()
  z = _z()
  want, _ = model.apply({"params": params}, codes, mel, episode, train=False, z=z)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "model": 2}, jax.devices()[:8])
  boxed, _ = _abstract_params(**SMALL, decoder="mar")
  param_sharding = sharding.logical_shardings(boxed, mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
    sharded = jax.device_put(params, param_sharding)
    got, _ = jax.jit(lambda p: model.apply({"params": p}, codes, mel, episode, train=False,
                                           z=z))(sharded)
  kernel = sharded["temporal"]["block0"]["self_attn"]["query"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model", None)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_bfloat16_compute_float32_logits_and_cached_decoding():
  model, params = _model_and_params("far")
  bf16 = model.clone(dtype=jnp.bfloat16)
  codes, mel, episode = _batch(seed=1, frames=SMALL["max_frames"])
  z = _z()
  want, _ = model.apply({"params": params}, codes, mel, episode, train=False, z=z)
  got, _ = bf16.apply({"params": params}, codes, mel, episode, train=False, z=z)
  assert got.dtype == jnp.float32
  assert bf16.init_cache(B)["temporal"][0]["k"].dtype == jnp.bfloat16
  np.testing.assert_allclose(got, want, atol=0.15)
  assert not np.allclose(got, want, atol=1e-4)  # it did compute in bfloat16
  stepped = _teacher_forced_by_steps(bf16, params, codes, mel, episode, z)
  np.testing.assert_allclose(stepped, got, atol=0.15)
