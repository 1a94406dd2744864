"""Scan decoding: sampling options, stub models with known answers, the real prior end to end."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nwt_jax.inference import sampling
from nwt_jax.models import prior

V = 8  # vocabulary of the stub models
Options = sampling.SamplingOptions


def _key(seed):
  return jax.random.key(seed, impl="rbg")


def _one_hot_logits(codes, vocab=V):
  """Logits that put (numerically) all mass on `codes`."""
  return jnp.where(jax.nn.one_hot(codes, vocab) > 0, 0.0, -1e9)


# --- sample_logits ---------------------------------------------------------------------------


def _random_logits(shape=(500, V), seed=0):
  return jax.random.normal(_key(seed), shape) * 2.0


@pytest.mark.parametrize("options", [Options(temperature=0.0), Options(temperature=1e-4),
                                     Options(top_k=1), Options(top_p=1e-6)],
                         ids=["t0", "t1e-4", "topk1", "topp_tiny"])
def test_greedy_limits_equal_argmax(options):
  logits = _random_logits()
  drawn = sampling.sample_logits(_key(1), logits, options)
  np.testing.assert_array_equal(drawn, jnp.argmax(logits, -1))
  assert drawn.dtype == jnp.int32


def test_temperature_one_matches_the_softmax():
  probs = np.array([0.5, 0.3, 0.15, 0.05])
  logits = jnp.broadcast_to(jnp.log(probs), (20000, 4))
  drawn = np.asarray(sampling.sample_logits(_key(2), logits, Options()))
  np.testing.assert_allclose(np.bincount(drawn, minlength=4) / drawn.size, probs, atol=0.015)


def test_top_k_and_top_p_keep_only_their_sets():
  probs = np.array([0.1, 0.4, 0.05, 0.3, 0.15])  # descending: 1 (0.4), 3 (0.3), 4, 0, 2
  logits = jnp.broadcast_to(jnp.log(probs), (4000, 5))
  top2 = np.asarray(sampling.sample_logits(_key(3), logits, Options(top_k=2)))
  assert set(np.unique(top2)) == {1, 3}
  # Cumulative mass 0.4 < 0.6 <= 0.7: the nucleus for top_p=0.6 is {1, 3}; for 0.8 add 4.
  nucleus = np.asarray(sampling.sample_logits(_key(4), logits, Options(top_p=0.6)))
  assert set(np.unique(nucleus)) == {1, 3}
  nucleus = np.asarray(sampling.sample_logits(_key(4), logits, Options(top_p=0.8)))
  assert set(np.unique(nucleus)) == {1, 3, 4}
  # Renormalised within the nucleus: 0.4 / 0.7 of the draws are code 1.
  np.testing.assert_allclose(np.mean(top2 == 1), 0.4 / 0.7, atol=0.03)


def test_seeds_reproduce_and_differ():
  logits = jnp.zeros((200, V))
  a = sampling.sample_logits(_key(5), logits, Options())
  np.testing.assert_array_equal(a, sampling.sample_logits(_key(5), logits, Options()))
  assert np.mean(np.asarray(a) != np.asarray(sampling.sample_logits(_key(6), logits,
                                                                    Options()))) > 0.5


def test_invalid_options_are_rejected():
  for bad in (dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5),
              dict(change_threshold=-0.1), dict(change_threshold=1.0)):
    with pytest.raises(ValueError):
      Options(**bad)


# --- loops driven by stub models ---------------------------------------------------------------


def test_far_loop_with_a_counting_stub():
  """Stub: frame t's codes are frame t-1's + 1 (t = 0: 0 + the position); cache logs t."""
  batch, frames, frame = 2, 6, (3, 2)

  def frame_to_logits(prev, t, cache):
    start = jnp.arange(6).reshape(frame)[None]  # [1, 3, 2]
    want = jnp.where(t == 0, start, prev + 1) % V  # [B, 3, 2]
    return _one_hot_logits(want), cache.at[t].set(t + 100)

  prompt = jnp.zeros((batch, frames) + frame, jnp.int32)
  prompt = prompt.at[:, 0].set(5).at[:, 1].set(2)  # two given frames, off the stub's own path
  cache = jnp.zeros((frames,), jnp.int32)
  sample = jax.jit(functools.partial(sampling.sample_frames, frame_to_logits,
                                     options=Options()))
  codes, cache = sample(cache, _key(0), prompt, 0)
  want = (np.arange(6).reshape(1, 1, 3, 2) + np.arange(frames)[None, :, None, None]) % V
  np.testing.assert_array_equal(codes, np.broadcast_to(want, codes.shape))
  np.testing.assert_array_equal(cache, np.arange(frames) + 100)
  # With 2 prompt frames the next frames continue from the prompt's last frame (2 -> 3, 4, ...).
  codes, _ = sample(cache, _key(0), prompt, 2)
  np.testing.assert_array_equal(codes[:, :2], prompt[:, :2])
  np.testing.assert_array_equal(codes[:, 2:, 0, 0], np.broadcast_to([3, 4, 5, 6], (batch, 4)))
  assert sample._cache_size() == 1  # the prompt length is traced: one compilation


def test_mar_loop_with_a_counting_stub():
  """Stub: a frame's context is its previous frame; code j = code j-1 + 1 (j = 0: last + 1)."""
  batch, frames, length = 2, 3, 4

  def frame_to_context(prev, t, cache):
    return prev, cache.at[0].add(1)  # cache[0] counts frame steps

  def code_to_logits(ctx, prev_code, j, cache):
    want = jnp.where(j == 0, ctx[:, -1] + 1, prev_code + 1) % V
    return _one_hot_logits(want), cache.at[1].add(1)  # cache[1] counts code steps

  prompt = jnp.zeros((batch, frames, length), jnp.int32).at[:, 0].set(jnp.array([3, 1, 4, 1]))
  sample = jax.jit(functools.partial(sampling.sample_frames_by_code, frame_to_context,
                                     code_to_logits, options=Options()))
  codes, cache = sample(jnp.zeros((2,), jnp.int32), _key(0), prompt, 0)
  # Frame 0 starts from the zero "previous frame": 1 2 3 4, then 5 6 7 0, 1 2 3 4.
  want = (np.arange(frames * length) + 1) % V
  np.testing.assert_array_equal(codes, np.broadcast_to(want.reshape(frames, length), codes.shape))
  np.testing.assert_array_equal(cache, [frames, frames * length])
  codes, cache = sample(jnp.zeros((2,), jnp.int32), _key(0), prompt, 1)
  np.testing.assert_array_equal(codes[:, 0], prompt[:, 0])
  np.testing.assert_array_equal(codes[0, 1:].reshape(-1), (np.arange(8) + 2) % V)
  np.testing.assert_array_equal(cache, [frames, (frames - 1) * length])  # prompt frame: no codes


def test_change_threshold_keeps_the_codes_unlikely_to_change():
  """Stub: each code keeps the previous frame's with P = 0.8 (column 0) or 0.6 (column 1), else
  becomes it + 1. With threshold 0.3 only column 1's P(change) = 0.4 is above it: column 0 never
  changes, column 1 always does; plain sampling changes both at their rates."""
  batch, frames = 4000, 3
  keep = jnp.log(jnp.array([0.8, 0.6]))  # per column

  def frame_to_logits(prev, t, cache):
    same = jax.nn.one_hot(prev, V) > 0
    up = jax.nn.one_hot((prev + 1) % V, V) > 0
    logits = jnp.where(same, keep[:, None], jnp.where(up, jnp.log1p(-jnp.exp(keep))[:, None],
                                                      -1e9))
    return jnp.where(t == 0, 0.0, logits), cache  # frame 0: uniform

  prompt = jnp.zeros((batch, frames, 2), jnp.int32)

  def changes(options):
    codes, _ = sampling.sample_frames(frame_to_logits, (), _key(0), prompt, 0, options)
    codes = np.asarray(codes)
    assert len(np.unique(codes[:, 0])) == V  # frame 0 is drawn as before, from all V codes
    assert np.all((codes[:, 1:] == codes[:, :-1]) | (codes[:, 1:] == (codes[:, :-1] + 1) % V))
    return np.mean(codes[:, 1:] != codes[:, :-1], axis=(0, 1))  # [2]: per column

  np.testing.assert_array_equal(changes(Options(change_threshold=0.3)), [0.0, 1.0])
  np.testing.assert_allclose(changes(Options()), [0.2, 0.4], atol=0.02)
  # Above both: nothing changes; below both: both always do.
  np.testing.assert_array_equal(changes(Options(change_threshold=0.5)), [0.0, 0.0])
  np.testing.assert_array_equal(changes(Options(change_threshold=0.1)), [1.0, 1.0])
  # A hidden column (the prior never sees its previous code) is drawn plainly, at its rate.
  codes, _ = sampling.sample_frames(frame_to_logits, (), _key(0), prompt, 0,
                                    Options(change_threshold=0.3), hidden=np.array([False, True]))
  codes = np.asarray(codes)
  np.testing.assert_allclose(np.mean(codes[:, 1:] != codes[:, :-1], axis=(0, 1)), [0.0, 0.4],
                             atol=0.02)


def test_change_threshold_is_for_far_priors():
  model, params = _prior("mar")
  with pytest.raises(ValueError, match="FAR"):
    sampling.sample_prior(model, params, jnp.zeros((1, 24, 80)), jnp.zeros((1,), jnp.int32),
                          jnp.zeros((1, SMALL["style_dim"])), _key(0), model.init_cache(1),
                          options=Options(change_threshold=0.3))


def test_far_loop_seeds_reproduce_and_differ():
  def frame_to_logits(prev, t, cache):
    return jnp.zeros(prev.shape + (V,)), cache

  prompt = jnp.zeros((2, 5, 4), jnp.int32)
  sample = functools.partial(sampling.sample_frames, frame_to_logits, (),
                             prompt=prompt, num_prompt_frames=0, options=Options())
  a, _ = sample(rng=_key(1))
  np.testing.assert_array_equal(a, sample(rng=_key(1))[0])
  assert np.mean(np.asarray(a) != np.asarray(sample(rng=_key(2))[0])) > 0.5
  assert len(np.unique(np.asarray(a)[:, 0])) > 1 and not np.array_equal(a[:, 0], a[:, 1])


# --- the real prior -----------------------------------------------------------------------------

SMALL = dict(grid=(3, 2), code_heads=2, num_codes=16, num_episodes=3, max_frames=6, d_model=32,
             num_heads=2, head_dim=16, mlp_dim=64, temporal_layers=2, spatial_layers=1,
             audio_layers=1, code_embed_dim=8, style_dim=16, style_hidden=32, depth_dim=32,
             depth_layers=1)


@functools.lru_cache(maxsize=None)
def _prior(decoder, **fields):
  model = prior.Prior(decoder=decoder, **SMALL, **fields)
  codes = jnp.zeros((1, 6, 3, 2, 2), jnp.int32)
  mel = jnp.zeros((1, 24, 80))
  params = jax.jit(functools.partial(model.init, train=False))(_key(0), codes, mel,
                                                              jnp.zeros((1,), jnp.int32))
  return model, nn.unbox(params["params"])


@pytest.mark.parametrize("decoder", ["far", "mar"])
def test_sampling_the_prior_through_scan(decoder):
  model, params = _prior(decoder)
  batch, frames = 2, 6
  mel = jax.random.normal(_key(1), (batch, 4 * frames, 80)) * 4 - 8
  episode = jnp.array([[0, 0, 0, 2, 2, 2], [1, 1, 2, 2, 0, 0]], jnp.int32)  # switches mid-clip
  z = jax.random.normal(_key(2), (batch, SMALL["style_dim"]))
  sampler = sampling.make_sampler(model, Options(temperature=1.0, top_k=8))
  no_prompt = jnp.zeros((batch, frames, 3, 2, 2), jnp.int32)
  codes, cache = sampler(params, mel, episode, z, _key(3), model.init_cache(batch), no_prompt, 0)
  assert codes.shape == (batch, frames, 3, 2, 2) and codes.dtype == jnp.int32
  assert codes.min() >= 0 and codes.max() < SMALL["num_codes"]
  assert len(np.unique(np.asarray(codes))) > 3
  # The next window reuses the returned cache and keeps its first frames from the prompt.
  again, cache = sampler(params, mel, episode, z, _key(4), cache, codes, 3)
  np.testing.assert_array_equal(again[:, :3], codes[:, :3])
  assert not np.array_equal(again[:, 3:], codes[:, 3:])
  again, _ = sampler(params, mel, episode, z, _key(5), cache, codes, 1)
  assert sampler._cache_size() == 1  # one compilation for every window


@pytest.mark.parametrize("decoder", ["far", "mar"])
def test_greedy_samples_are_the_teacher_forced_argmax(decoder):
  """Greedy decoding through scan + cache agrees with the full forward pass on its output."""
  model, params = _prior(decoder)
  batch, frames = 1, 6
  mel = jax.random.normal(_key(6), (batch, 4 * frames, 80)) * 4 - 8
  episode = jnp.array([1], jnp.int32)
  z = jax.random.normal(_key(7), (batch, SMALL["style_dim"]))
  sampler = sampling.make_sampler(model, Options(temperature=0.0))
  codes, _ = sampler(params, mel, episode, z, _key(0), model.init_cache(batch))
  logits, _ = model.apply({"params": params}, codes, mel, episode, train=False, z=z)
  np.testing.assert_array_equal(codes, jnp.argmax(logits, -1))


# --- classifier-free audio guidance ------------------------------------------------------------


def test_guidance_mixes_the_log_probs():
  with_audio, without = _random_logits((3, V), 1), _random_logits((3, V), 2)
  both = jnp.concatenate([with_audio, without])
  log_p, log_q = jax.nn.log_softmax(with_audio), jax.nn.log_softmax(without)
  np.testing.assert_allclose(sampling.guide(both, 1.0), log_p, atol=1e-6)
  np.testing.assert_allclose(sampling.guide(both, 0.0), log_q, atol=1e-6)
  np.testing.assert_allclose(sampling.guide(both, 3.0), log_q + 3 * (log_p - log_q), atol=1e-5)


@pytest.mark.parametrize("decoder", ["far", "mar"])
def test_greedy_guided_samples_are_the_guided_teacher_forced_argmax(decoder):
  """Guided decoding (2B rows in one cache) agrees with the guided full forward pass."""
  model, params = _prior(decoder, audio_dropout=0.5)
  params = {**params, "null_audio": jax.random.normal(_key(9), params["null_audio"].shape)}
  batch, frames, weight = 2, 6, 2.5
  mel = jax.random.normal(_key(6), (batch, 4 * frames, 80)) * 4 - 8
  episode = jnp.array([1, 2], jnp.int32)
  z = jax.random.normal(_key(7), (batch, SMALL["style_dim"]))
  options = Options(temperature=0.0, audio_guidance=weight)
  sampler = sampling.make_sampler(model, options)
  codes, _ = sampler(params, mel, episode, z, _key(0), sampling.init_cache(model, batch, options))

  def log_probs(drop):
    logits, _ = model.apply({"params": params}, codes, mel, episode, train=False, z=z,
                            drop_audio=jnp.full((batch,), drop))
    return jax.nn.log_softmax(logits)
  guided = log_probs(True) + weight * (log_probs(False) - log_probs(True))
  np.testing.assert_array_equal(codes, jnp.argmax(guided, -1))
  # Plain greedy decoding differs: the guidance changed some codes.
  plain, _ = sampling.make_sampler(model, Options(temperature=0.0))(
      params, mel, episode, z, _key(0), model.init_cache(batch))
  assert not np.array_equal(plain, codes)


@pytest.mark.parametrize("weight", [1.0, 2.5])
def test_opening_scores_are_the_frame_zero_log_likelihoods(weight):
  """A bank frame's score: the sum of its codes' (guided) log-probs as frame 0 of the window."""
  model, params = _prior("far", audio_dropout=0.5)
  params = {**params, "null_audio": jax.random.normal(_key(9), params["null_audio"].shape)}
  batch, frames = 2, 6
  mel = jax.random.normal(_key(6), (batch, 4 * frames, 80)) * 4 - 8
  episode, z = jnp.array([1, 2], jnp.int32), jax.random.normal(_key(7), (batch, SMALL["style_dim"]))
  bank = jax.random.randint(_key(8), (5, 3, 2, 2), 0, SMALL["num_codes"])
  options = Options(audio_guidance=weight)
  scores = jax.jit(functools.partial(sampling.opening_scores, model, options=options))(
      params, bank, mel, episode, z)

  def log_probs(drop):  # frame 0 of a teacher-forced window (it sees only the BOS frame)
    logits, _ = model.apply({"params": params}, jnp.zeros((batch, frames, 3, 2, 2), jnp.int32),
                            mel, episode, train=False, z=z, drop_audio=jnp.full((batch,), drop))
    return np.asarray(jax.nn.log_softmax(logits[:, 0]))
  log_p = log_probs(True) + weight * (log_probs(False) - log_probs(True))  # [B, 3, 2, 2, V]
  bank = np.asarray(bank)
  want = np.array([[sum(log_p[b, i, j, k, bank[n, i, j, k]] for i in range(3) for j in range(2)
                        for k in range(2)) for n in range(5)] for b in range(batch)])
  assert scores.shape == (batch, 5)
  np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-4)


def test_the_opening_is_the_likely_frame_nearest_the_style():
  model, params = _prior("far")
  batch, frames = 2, 6
  mel = jax.random.normal(_key(6), (batch, 4 * frames, 80)) * 4 - 8
  episode, z = jnp.array([0, 3], jnp.int32), jax.random.normal(_key(7), (batch, SMALL["style_dim"]))
  bank = jax.random.randint(_key(8), (9, 3, 2, 2), 0, SMALL["num_codes"])
  styles = jax.random.normal(_key(9), (9, SMALL["style_dim"]))  # any per-frame styles
  scores = np.asarray(sampling.opening_scores(model, params, bank, mel, episode, z))
  for m in (1, 4, 9):
    picked = np.asarray(sampling.pick_opening(model, params, bank, styles, mel, episode, z,
                                              candidates=m))
    for b in range(batch):
      top = np.argsort(-scores[b])[:m]
      want = top[np.argmin(np.sum((np.asarray(styles)[top] - np.asarray(z)[b]) ** 2, -1))]
      assert picked[b] == want, (m, b)
  # One candidate: the most likely frame.
  assert np.all(np.asarray(sampling.pick_opening(model, params, bank, styles, mel, episode, z,
                                                 candidates=1)) == scores.argmax(1))
  # A frame's style is the style encoder's posterior mean of it as a one-frame clip.
  np.testing.assert_allclose(
      sampling.opening_styles(model, params, bank)[4],
      model.apply({"params": params}, bank[4][None, None], method=model.encode_style)[0][0],
      rtol=1e-5, atol=1e-6)


def test_null_audio_ignores_the_mel():
  model, params = _prior("far", audio_dropout=0.5)
  mels = jax.random.normal(_key(1), (2, 1, 24, 80)) * 4 - 8
  z, episode = jnp.zeros((1, SMALL["style_dim"])), jnp.zeros((1,), jnp.int32)
  cond = [model.apply({"params": params}, m, episode, z, drop_audio=jnp.array([drop]),
                      method=model.encode_context)["cond"] for drop in (True, False) for m in mels]
  np.testing.assert_allclose(cond[0], cond[1])
  assert not np.allclose(cond[2], cond[3])


def test_guidance_needs_a_prior_with_null_audio():
  model, params = _prior("far")
  options = Options(audio_guidance=2.0)
  with pytest.raises(ValueError, match="audio_dropout"):
    sampling.sample_prior(model, params, jnp.zeros((1, 24, 80)), jnp.zeros((1,), jnp.int32),
                          jnp.zeros((1, SMALL["style_dim"])), _key(0),
                          sampling.init_cache(model, 1, options), options=options)
  with pytest.raises(ValueError, match="audio_guidance"):
    Options(audio_guidance=-1.0)
