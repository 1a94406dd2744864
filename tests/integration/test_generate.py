"""Generation: controls, windowed decoding with one compilation, the mp4, and bad input.

Models here are small and randomly initialised: these tests pin the mechanics (what is decoded,
written, refused); quality (lipsync, style, episode accuracy) is measured on trained models by the
demo and `nwt_jax.evaluate`.
"""

import dataclasses
import functools
import pathlib
import wave

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nwt_jax.inference import sampling
from nwt_jax.data import synthetic
from nwt_jax.data import video_io
from nwt_jax.models import dvae as dvae_lib
from nwt_jax.models import prior as prior_lib
from nwt_jax.data import audio as audio_lib
from nwt_jax.inference import controls
from nwt_jax import errors
from nwt_jax.inference import generator
from nwt_jax.inference import job

H, W = 32, 28  # x4 down-sampling -> an 8x7 grid
WINDOW = 8
GREEDY = sampling.SamplingOptions(temperature=0.0)


def _key(seed):
  return jax.random.key(seed, impl="rbg")


@functools.lru_cache(maxsize=None)
def _models(decoder="far", num_episodes=4, grid=(8, 7), anchor=False) -> generator.Models:
  dvae = dvae_lib.DVAE(channels=(8, 16, 16), res_blocks=(0, 0, 1), dim=16, num_codes=16,
                       heads=2, num_episodes=num_episodes, episode_dim=8, norm_groups=4)
  dvae_params = jax.jit(functools.partial(dvae.init, train=False))(
      _key(0), jnp.zeros((1, H, W, 3), jnp.uint8), jnp.zeros((1,), jnp.int32))["params"]
  prior = prior_lib.Prior(decoder=decoder, grid=grid, code_heads=2, num_codes=16,
                          num_episodes=num_episodes, max_frames=WINDOW, d_model=32, num_heads=2,
                          head_dim=16, mlp_dim=64, temporal_layers=1, spatial_layers=1,
                          audio_layers=1, code_embed_dim=4, style_dim=4, style_hidden=16,
                          depth_dim=16, depth_layers=1, anchor=anchor, copy_gate=anchor)
  codes = jnp.zeros((1, WINDOW) + grid + (2,), jnp.int32)
  mel = jnp.zeros((1, 4 * WINDOW, 80), jnp.float32)
  prior_params = jax.jit(functools.partial(prior.init, train=False))(
      _key(1), codes, mel, jnp.zeros((1,), jnp.int32))["params"]
  return generator.Models(dvae, nn.unbox(dvae_params), prior, nn.unbox(prior_params), (H, W))


def _speech(seconds, seed=0):
  audio, _ = synthetic.make_speech(seed, int(seconds * synthetic.SAMPLE_RATE))
  return audio


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
  """1 s of synthetic speech as a 44.1 kHz stereo wav (resampled and down-mixed on reading)."""
  path = tmp_path_factory.mktemp("audio") / "speech.wav"
  speech = _speech(1.0)
  t = np.arange(44100) / 44100
  resampled = np.interp(t, np.arange(len(speech)) / synthetic.SAMPLE_RATE, speech)
  stereo = (np.stack([resampled, 0.5 * resampled], axis=1) * 32767).astype("<i2")
  with wave.open(str(path), "wb") as f:
    f.setnchannels(2)
    f.setsampwidth(2)
    f.setframerate(44100)
    f.writeframes(stereo.tobytes())
  return path


# --- controls --------------------------------------------------------------------------------


def test_episode_schedule_switches_at_the_given_seconds():
  episodes = controls.parse_schedule("0:1, 0.5:3", num_frames=30, num_episodes=4)
  np.testing.assert_array_equal(episodes, [1] * 15 + [3] * 15)
  assert controls.parse_schedule("0:2", 5, 4).tolist() == [2] * 5


@pytest.mark.parametrize("spec,match", [
    ("", "empty"), ("0-1", "not SECONDS:EPISODE"), ("1:0", "start at 0"),
    ("0:1,2:2,1:3", "increase"), ("0:4", "out of range"), ("0:x", "not SECONDS:EPISODE")])
def test_malformed_schedules_are_refused(spec, match):
  with pytest.raises(errors.GenerateError, match=match):
    controls.parse_schedule(spec, 30, 4)


def test_named_episodes_become_the_ids_a_request_takes():
  """generate's --episode=bob and --episode_schedule=alice:0,bob:0.5 (names from the workdirs'
  episodes.json) reach job.Request as the ids and the SECONDS:EPISODE schedule it parses."""
  names = ["alice", "bob", "carol", "dave"]
  assert controls.resolve_episode("bob", 4, names) == 1
  assert controls.resolve_episode("3", 4, names) == 3 and controls.resolve_episode("2", 4) == 2
  spec = controls.numeric_schedule("alice:0,dave:0.5", 4, names)
  np.testing.assert_array_equal(controls.parse_schedule(spec, 30, 4), [0] * 15 + [3] * 15)
  assert controls.numeric_schedule("", 4, names) == ""
  with pytest.raises(errors.GenerateError, match=r"--episode='eve' is no episode: the models "
                                                 r"know alice \(0\), bob \(1\), carol \(2\), "
                                                 r"dave \(3\)"):
    controls.resolve_episode("eve", 4, names)


def test_style_latents():
  models = _models()
  z = controls.style_latent(models, "random", seed=3)
  assert z.shape == (4,) and not np.array_equal(z, controls.style_latent(models, "random", 4))
  np.testing.assert_array_equal(controls.style_latent(models, "z:0.5,-2,0,1", 0),
                                [0.5, -2, 0, 1])
  for spec, match in [("z:1,2", "needs 4"), ("z:a,b,c,d", "numbers"), ("zz", "use random"),
                      ("z:1,2,3,nan", "finite")]:
    with pytest.raises(errors.GenerateError, match=match):
      controls.style_latent(models, spec, 0)
  traversal = controls.traversal_latents(np.zeros(4, np.float32), 2)
  np.testing.assert_array_equal(traversal[:, 2], [-2, -1, 0, 1, 2])
  assert not traversal[:, [0, 1, 3]].any()
  with pytest.raises(errors.GenerateError, match="out of range"):
    controls.traversal_latents(np.zeros(4, np.float32), 4)


def test_reference_style_is_the_posterior_mean_of_the_clip():
  models = _models()
  frames = synthetic.make_clip(5, num_frames=12, height=H, width=W)["video"]
  z = controls.style_latent(models, "reference:unused", 0, reference_frames=frames)
  codes = models.dvae.apply({"params": models.dvae_params}, jnp.asarray(frames[:WINDOW])[None],
                            method=models.dvae.encode)
  mu, _ = models.prior.apply({"params": models.prior_params}, codes,
                             method=models.prior.encode_style)
  np.testing.assert_allclose(z, mu[0], rtol=1e-5, atol=1e-6)


# --- windowed decoding -----------------------------------------------------------------------


def test_windows_cover_the_audio_with_overlapping_prompts_and_restart_at_cuts():
  spans = list(generator.windows(70, 32, 8))
  assert spans == [(0, 0, 32), (24, 8, 56), (48, 8, 70)]
  assert list(generator.windows(32, 32, 8)) == [(0, 0, 32)]
  assert list(generator.windows(5, 32, 8)) == [(0, 0, 5)]
  # An episode switch at frame 40 ends a window there; the next starts at 40 with no prompt.
  assert list(generator.windows(70, 32, 8, cuts=[40])) == [(0, 0, 32), (24, 8, 40), (40, 0, 70)]
  assert list(generator.windows(70, 32, 8, cuts=[32, 0, 70])) == [(0, 0, 32), (32, 0, 64),
                                                                 (56, 8, 70)]
  with pytest.raises(ValueError):
    list(generator.windows(10, 8, 8))


@pytest.mark.parametrize("decoder", ["far", "mar"])
def test_long_audio_reuses_one_compilation_and_keeps_its_first_window(decoder):
  models = _models(decoder)
  gen = generator.Generator(models, GREEDY, overlap=2)
  z = np.zeros((1, 4), np.float32)
  long_mel, frames = audio_lib.frame_features(_speech(1.0))  # 30 frames: 5 windows of 8
  assert frames == 30 and long_mel.shape == (120, 80)
  episodes = np.zeros(frames, np.int32)
  codes = gen.codes(long_mel, episodes, z, seed=0)
  short = gen.codes(long_mel[:4 * WINDOW], episodes[:WINDOW], z, seed=0)
  assert gen._sampler._cache_size() == 1  # 5 windows of one audio, 1 of another: one compile
  assert codes.shape == (1, 30, 8, 7, 2) and codes.min() >= 0 and codes.max() < 16
  # Greedy: the first window does not depend on what follows it.
  np.testing.assert_array_equal(codes[:, :WINDOW], short)
  # Each later window is the model's continuation of the prompt it was given: re-decoding the
  # window starting at frame 6 with frames 6..7 as the prompt gives the same frames 8..13.
  cache = models.prior.init_cache(1)
  mel = jnp.asarray(long_mel[4 * 6:4 * 14])[None]
  again, _ = gen._sampler(models.prior_params, mel, jnp.zeros((1, WINDOW), jnp.int32),
                          jnp.asarray(z), jax.random.fold_in(jax.random.key(0), 1), cache,
                          jnp.asarray(codes[:, 6:14]), jnp.int32(2))
  np.testing.assert_array_equal(np.asarray(again), codes[:, 6:14])


def test_a_batch_of_streams_equals_each_stream_alone():
  models = _models()
  mels = np.stack([audio_lib.frame_features(_speech(0.4, seed))[0] for seed in (1, 2)])
  # Streams of one batch share their windows, so they share their switch frame (a cut for all).
  episodes = np.array([[0] * 6 + [3] * 6, [1] * 6 + [2] * 6], np.int32)
  z = np.array([[0, 0, 0, 0], [1, -1, 0.5, 0]], np.float32)
  both = generator.Generator(models, GREEDY, batch=2).codes(mels, episodes, z, seed=0)
  alone = generator.Generator(models, GREEDY)
  for i in range(2):
    np.testing.assert_array_equal(both[i], alone.codes(mels[i], episodes[i], z[i:i + 1], 0)[0])


def test_fresh_windows_open_on_the_picked_bank_frame():
  models = _models()
  bank = np.asarray(jax.random.randint(_key(5), (6, 8, 7, 2), 0, 16), np.int32)
  banked = dataclasses.replace(models, frame_bank=bank)
  mel = audio_lib.frame_features(_speech(0.8, 3))[0][:4 * 20]
  episodes = np.array([0] * 12 + [3] * 8, np.int32)  # a switch at frame 12: a fresh window
  z = np.array([[0.5, -1, 0, 1]], np.float32)
  gen = generator.Generator(banked, GREEDY, overlap=2)
  codes = gen.codes(mel, episodes, z, seed=0)
  styles = sampling.opening_styles(models.prior, models.prior_params, jnp.asarray(bank))
  for start, stop in ((0, 8), (12, 20)):  # the two windows that start afresh
    picked = sampling.pick_opening(models.prior, models.prior_params, jnp.asarray(bank), styles,
                                   jnp.asarray(mel[None, 4 * start:4 * stop]),
                                   jnp.asarray(episodes[None, start:stop]), jnp.asarray(z))
    np.testing.assert_array_equal(codes[0, start], bank[int(picked[0])])
  # The frames after an opening continue from it: the window re-decoded with it as a prompt.
  again, _ = gen._sampler(models.prior_params, jnp.asarray(mel[None, :4 * WINDOW]),
                          jnp.zeros((1, WINDOW), jnp.int32), jnp.asarray(z),
                          jax.random.fold_in(jax.random.key(0), 0), models.prior.init_cache(1),
                          jnp.asarray(codes[:, :WINDOW]), jnp.int32(1))
  np.testing.assert_array_equal(np.asarray(again), codes[:, :WINDOW])
  # Drawn openings (opening='sample', or a workdir without a bank) are the greedy frame 0.
  drawn = generator.Generator(banked, GREEDY, overlap=2, opening="sample").codes(
      mel, episodes, z, seed=0)
  np.testing.assert_array_equal(drawn, generator.Generator(models, GREEDY, overlap=2).codes(
      mel, episodes, z, seed=0))
  assert not any(np.array_equal(drawn[0, 0], frame) for frame in bank)
  with pytest.raises(errors.GenerateError, match="opening"):
    generator.Generator(banked, GREEDY, opening="first")


def test_the_anchor_is_the_opening_frame_until_a_cut():
  """A prior with `anchor`: every window sees its stream's opening frame as the anchor (the
  picked bank frame, or the drawn frame 0 of the first window), a new one after a switch."""
  models = _models(anchor=True)
  bank = np.asarray(jax.random.randint(_key(5), (6, 8, 7, 2), 0, 16), np.int32)
  mel = audio_lib.frame_features(_speech(1.0, 3))[0][:4 * 24]
  episodes = np.array([0] * 14 + [3] * 10, np.int32)  # windows 0-8, 6-14 | 14-22, 20-24
  z = np.array([[0.5, -1, 0, 1]], np.float32)
  for bank_or_none in (bank, None):
    gen = generator.Generator(dataclasses.replace(models, frame_bank=bank_or_none), GREEDY,
                              overlap=2)
    seen, sampler = [], gen._sampler

    def recording(*args, sampler=sampler, seen=seen):
      seen.append(np.asarray(args[-1]).copy())
      return sampler(*args)

    gen._sampler = recording
    codes = gen.codes(mel, episodes, z, seed=0)
    assert len(seen) == 4
    if bank_or_none is None:  # drawn: -1 (frame 0 of the window), then the drawn frame 0
      assert np.all(seen[0] == -1) and np.all(seen[2] == -1)
    for window, (start, opening) in enumerate(((0, 0), (6, 0), (14, 14), (20, 14))):
      if bank_or_none is not None or window % 2:
        np.testing.assert_array_equal(seen[window][0], codes[0, opening], err_msg=str(window))


def test_frames_decode_in_chunks_with_per_frame_episodes():
  models = _models()
  gen = generator.Generator(models, GREEDY)
  codes = np.random.default_rng(0).integers(0, 16, (2, 40, 8, 7, 2)).astype(np.int32)
  episodes = np.array([0] * 20 + [3] * 20, np.int32)
  frames = gen.frames(codes, episodes)
  assert frames.shape == (2, 40, H, W, 3) and frames.dtype == np.uint8
  direct = models.dvae.apply({"params": models.dvae_params}, jnp.asarray(codes[1, 25:27]),
                             jnp.full((2,), 3), method=models.dvae.decode)
  expected = np.round((np.clip(np.asarray(direct), -1, 1) + 1) * 127.5)
  np.testing.assert_allclose(frames[1, 25:27], expected, atol=1)
  tiled = generator.tile(frames)
  assert tiled.shape == (40, H, 2 * W, 3)
  np.testing.assert_array_equal(tiled[:, :, W:], frames[1])


# --- the job and its refusals ----------------------------------------------------------------


def test_generate_writes_the_video_with_the_audio(wav, tmp_path):
  out = tmp_path / "out.mp4"
  result = job.generate(_models(), job.Request(
      str(wav), str(out), episode_schedule="0:0,0.5:2", options=GREEDY))
  assert result["frames"] == 30 and result["rtf"] > 0
  np.testing.assert_array_equal(result["episodes"], [0] * 15 + [2] * 15)
  info = video_io.probe(str(out))
  assert info.has_audio and (info.height, info.width) == (H, W)
  assert video_io.read_video(str(out), height=H, width=W).shape[0] == 30
  assert abs(len(video_io.read_audio(str(out))) / 24000 - 1.0) < 0.05


def test_traversal_writes_five_streams_side_by_side(wav, tmp_path):
  out = tmp_path / "grid.mp4"
  result = job.generate(_models(), job.Request(
      str(wav), str(out), style="z:0,0,0,0", traverse_dim=1, options=GREEDY))
  assert result["streams"] == 5 and result["z"][:, 1].tolist() == [-2, -1, 0, 1, 2]
  assert video_io.probe(str(out)).width == 5 * W


def test_silence_is_valid_input(tmp_path):
  silent = tmp_path / "silence.mp4"
  video_io.write_video(str(silent), np.zeros((10, 16, 16, 3), np.uint8), fps=30,
                       audio=np.zeros(8000, np.float32))
  result = job.generate(_models(), job.Request(str(silent), str(tmp_path / "o.mp4")))
  assert result["frames"] >= 9


def _bad_inputs(tmp_path, wav):
  text = tmp_path / "notes.wav"
  text.write_text("not audio at all\n")
  tiny = tmp_path / "tiny.mp4"
  video_io.write_video(str(tiny), np.zeros((2, 16, 16, 3), np.uint8), fps=30,
                       audio=np.zeros(300, np.float32))
  video_only = tmp_path / "video_only.mp4"
  video_io.write_video(str(video_only), np.zeros((4, 16, 16, 3), np.uint8), fps=30)
  return {
      "missing audio": (dict(audio=str(tmp_path / "nope.wav")), "cannot read audio"),
      "text named .wav": (dict(audio=str(text)), "cannot read audio"),
      "no audio stream": (dict(audio=str(video_only)), "no audio stream"),
      "shorter than a frame": (dict(audio=str(tiny)), "shorter than one video frame"),
      "episode out of range": (dict(episode=4), "out of range"),
      "malformed schedule": (dict(episode_schedule="0:1;2:2"), "SECONDS:EPISODE"),
      "malformed z": (dict(style="z:1,2"), "needs 4"),
      "missing directory": (dict(output=str(tmp_path / "no" / "out.mp4")), "does not exist"),
  }


def test_bad_input_is_one_clear_error_and_no_output(wav, tmp_path):
  for name, (change, match) in _bad_inputs(tmp_path, wav).items():
    request = dict(audio=str(wav), output=str(tmp_path / "out.mp4"))
    request.update(change)
    with pytest.raises(errors.GenerateError, match=match):
      job.generate(_models(), job.Request(**request))
    assert not pathlib.Path(request["output"]).exists(), name
    assert not list(tmp_path.glob("*.partial")), name


def test_models_that_do_not_belong_together_are_refused():
  models = _models()
  other = _models(num_episodes=3)
  mixed = generator.Models(models.dvae, models.dvae_params, other.prior, other.prior_params,
                          (H, W))
  with pytest.raises(errors.GenerateError, match="num_episodes 4 vs 3"):
    mixed.check_compatible()
  wrong_grid = generator.Models(models.dvae, models.dvae_params, models.prior,
                               models.prior_params, (64, 56))
  with pytest.raises(errors.GenerateError, match=r"grid \(16, 14\) vs \(8, 7\)"):
    wrong_grid.check_compatible()


def test_audio_guidance_needs_a_prior_with_null_audio():
  with pytest.raises(errors.GenerateError, match="prior.audio_dropout > 0"):
    generator.Generator(_models(), sampling.SamplingOptions(audio_guidance=2.0))
  # With guidance off the same prior samples as before.
  assert generator.Generator(_models(), sampling.SamplingOptions(audio_guidance=1.0)).batch == 1
