"""The evaluation probe (nwt_jax/evaluation/probe.py) and the metrics (nwt_jax/evaluation/metrics.py)."""

import numpy as np
import pytest

from nwt_jax.evaluation import probe
from nwt_jax.data import synthetic
from nwt_jax.data import audio as audio_lib
from nwt_jax.inference import generator
from nwt_jax.evaluation import jobs
from nwt_jax.evaluation import metrics
import shared_probe

KEYS = synthetic.TRUTH_KEYS


@pytest.fixture(scope="module")
def trained_probe():
  # The default probe, probe.train_probe(seed=0): trained here, or the one the session's demo
  # run trained with that same call (tests/support/shared_probe.py).
  return shared_probe.default_probe()


@pytest.fixture(scope="module")
def undertrained_probe():
  return probe.train_probe(seed=0, steps=1, num_random=64, num_clips=1)


# ----------------------------------------------------------------------------------------------
# The probe


@pytest.mark.slow
def test_trained_probe_is_trusted_at_its_size_and_on_resized_frames(trained_probe):
  quality = probe.require_trusted(trained_probe, num_frames=1024)
  for key in probe.GATED_KEYS + ("blink",):
    assert quality["r"][key] >= 0.95, (key, quality)
  assert quality["episode_accuracy"] >= 0.99, quality
  # Frames of another size are resized to the probe's and read just as well.
  resized = probe.probe_quality(trained_probe, seed=1, num_frames=256, height=128, width=112)
  for key in probe.GATED_KEYS:
    assert resized["r"][key] >= 0.95, (key, resized)
  assert resized["episode_accuracy"] >= 0.99, resized


def test_quality_gate_refuses_an_undertrained_probe(undertrained_probe):
  with pytest.raises(probe.UntrustedProbeError, match=r"mouth_open r=.*needs r >= 0.95"):
    probe.require_trusted(undertrained_probe, num_frames=128)


def test_probe_save_load_round_trip_and_reading_format(undertrained_probe, tmp_path):
  path = str(tmp_path / "probe.npz")
  probe.save_probe(undertrained_probe, path)
  loaded = probe.load_probe(path)
  assert (loaded.height, loaded.width) == (64, 56)
  frames, _, _ = probe.heldout_frames(0, 5)
  a = probe.probe_predict(undertrained_probe, frames)
  b = probe.probe_predict(loaded, frames)
  assert set(a) == set(KEYS) | {"episode_probs", "episode"}
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert a["mouth_open"].shape == (5,) and a["episode_probs"].shape == (5, 8)
  np.testing.assert_allclose(a["episode_probs"].sum(axis=1), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="uint8"):
    probe.probe_predict(loaded, frames.astype(np.float32))


def test_heldout_frames_are_deterministic_and_match_their_truth():
  frames, truth, episodes = probe.heldout_frames(7, 6, 32, 28)
  again, _, _ = probe.heldout_frames(7, 6, 32, 28)
  np.testing.assert_array_equal(frames, again)
  np.testing.assert_array_equal(frames, synthetic.render_frames(truth, episodes, 32, 28))
  lo, hi = probe.TRUTH_RANGES[:, 0], probe.TRUTH_RANGES[:, 1]
  assert np.all(truth >= lo) and np.all(truth <= hi)


# ----------------------------------------------------------------------------------------------
# Lipsync


def _smooth_signal(seed: int, length: int) -> np.ndarray:
  noise = np.random.default_rng(seed).standard_normal(length + 4)
  return np.convolve(noise, np.ones(5) / 5, "valid")  # correlated over a few frames, like speech


def test_heldout_clips_from_a_later_first_clip_are_the_later_clips():
  clips = jobs.heldout_clips(3, 8, 32, 28)
  later = jobs.heldout_clips(2, 8, 32, 28, first=1)
  for a, b in zip(clips[1:], later):
    np.testing.assert_array_equal(a["audio"], b["audio"])
    np.testing.assert_array_equal(a["video"], b["video"])
  assert not np.array_equal(clips[0]["audio"], later[0]["audio"])


def test_lipsync_finds_a_known_video_lag():
  truth = _smooth_signal(0, 200)
  lagged = np.roll(truth, 3)  # the video shows at t what the audio said at t - 3
  result = metrics.lipsync(lagged, truth, max_offset=5)
  assert result["best_offset"] == 3
  assert result["best_r"] > 0.99
  assert result["r"] < 0.5  # at offset 0 a 3-frame lag of 5-frame-smooth noise decorrelates
  assert list(result["offsets"]) == list(range(-5, 6)) and len(result["r_by_offset"]) == 11
  # Pooled over clips, a lead of 2 frames is found, and an in-sync video scores r = 1 at 0.
  truths = [_smooth_signal(s, 120) for s in range(3)]
  leading = [np.roll(t, -2) for t in truths]
  assert metrics.lipsync(leading, truths)["best_offset"] == -2
  in_sync = metrics.lipsync(truths, truths)
  assert in_sync["best_offset"] == 0 and in_sync["r"] == pytest.approx(1.0)
  # A ramp correlates perfectly at every offset: the tie goes to the offset nearest 0.
  ramp = np.arange(20.0)
  assert metrics.lipsync(ramp, ramp)["best_offset"] == 0
  assert metrics.lipsync(np.ones(20), ramp)["best_offset"] == 0  # all NaN


def test_shuffled_lipsync_is_near_zero_for_independent_clips_and_one_for_copies():
  truths = [synthetic.make_speech(seed, 24000 * 8)[1]["mouth_open"] for seed in range(6)]
  assert abs(metrics.shuffled_lipsync(truths, truths)) < 0.15
  assert metrics.lipsync(truths, truths)["r"] == pytest.approx(1.0)
  # Identical clips paired "with another clip" are the same signal: the control would read 1.
  same = [truths[0]] * 3
  assert metrics.shuffled_lipsync(same, same) == pytest.approx(1.0)
  with pytest.raises(ValueError):
    metrics.shuffled_lipsync(truths[:1], truths[:1])


# ----------------------------------------------------------------------------------------------
# Style and traversals


def test_style_error_is_zero_for_identical_readings_and_the_offset_otherwise():
  clip = synthetic.make_clip(3, num_frames=8)
  reference = metrics.truth_dict(clip["truth"])
  errors = metrics.style_error(reference, reference)
  assert errors == {"cam_x": 0.0, "cam_y": 0.0, "zoom": 0.0, "mean": 0.0}
  shifted = dict(reference, cam_x=reference["cam_x"] + 0.3, zoom=reference["zoom"][:5] - 0.6)
  errors = metrics.style_error(shifted, reference)
  assert errors["cam_x"] == pytest.approx(0.3) and errors["zoom"] == pytest.approx(0.6)
  assert errors["mean"] == pytest.approx(0.3)


def test_traversal_monotonicity_separates_monotone_from_shuffled():
  steps = np.linspace(-1, 1, 9)
  readings = {key: np.zeros(9) for key in KEYS}
  readings["zoom"] = 0.8 * steps  # this latent dimension drives zoom
  readings["cam_x"] = -0.1 * steps ** 3  # and weakly, decreasingly, cam_x
  readings["mouth_open"] = 0.5 + 0.1 * steps[[4, 0, 8, 2, 6, 1, 7, 3, 5]]  # unrelated jitter
  result = metrics.traversal_monotonicity(readings)
  assert result["spearman"]["zoom"] == pytest.approx(1.0)
  assert result["monotone_fraction"]["zoom"] == 1.0
  assert result["spearman"]["cam_x"] == pytest.approx(-1.0)
  assert abs(result["spearman"]["mouth_open"]) < 0.3
  assert result["monotone_fraction"]["mouth_open"] <= 0.5
  assert np.isnan(result["spearman"]["blink"]) and result["span"]["blink"] == 0.0
  assert result["controls"] == "zoom" and result["controls_spearman"] == pytest.approx(1.0)
  assert result["span"]["zoom"] == pytest.approx(0.8)  # 1.6 of zoom's range of 2
  # [S, T] readings (T frames per step) are averaged per step.
  per_frame = {key: np.repeat(v[:, None], 4, axis=1) for key, v in readings.items()}
  assert metrics.traversal_monotonicity(per_frame)["spearman"]["zoom"] == pytest.approx(1.0)


def test_spearman_handles_ties_like_average_ranks():
  assert metrics.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)


# ----------------------------------------------------------------------------------------------
# Episode control


def test_episode_accuracy_overall_and_after_a_switch():
  requested = np.array([2] * 10 + [5] * 10)
  predicted = requested.copy()
  predicted[10:13] = 2  # the first 3 frames after the switch still show the old episode
  probs = np.eye(8)[predicted] * 0.9 + 0.1 / 8
  result = metrics.episode_accuracy(probs, requested, window=5)
  assert result == {"accuracy": 17 / 20, "after_switch_accuracy": 2 / 5, "num_switches": 1}
  assert metrics.episode_accuracy(predicted, requested, window=30)["after_switch_accuracy"] \
      == pytest.approx(7 / 10)  # the window stops at the video's end
  no_switch = metrics.episode_accuracy(np.zeros(4, int), np.zeros(4, int))
  assert no_switch["accuracy"] == 1.0 and np.isnan(no_switch["after_switch_accuracy"])


# ----------------------------------------------------------------------------------------------
# Reconstruction


def test_psnr_of_identical_frames_is_infinite_and_of_known_noise_matches_the_formula():
  gray = np.full((2, 16, 16, 3), 128, np.uint8)
  assert metrics.psnr(gray, gray) == np.inf
  assert metrics.ssim(gray, gray) == pytest.approx(1.0)
  signs = np.where(np.indices((16, 16)).sum(axis=0) % 2 == 0, 1, -1)[None, :, :, None]
  noisy = (gray.astype(int) + 10 * signs).astype(np.uint8)  # every pixel off by exactly 10
  expected = 10 * np.log10(255.0 ** 2 / 10 ** 2)
  assert metrics.psnr(gray, noisy) == pytest.approx(expected, abs=1e-3)
  # Float frames in [-1, 1] give the same numbers as their uint8 originals.
  as_float = lambda x: x.astype(np.float32) / 127.5 - 1.0
  assert metrics.psnr(as_float(gray), as_float(noisy)) == pytest.approx(expected, abs=1e-3)


def _ssim_by_hand(a: np.ndarray, b: np.ndarray) -> float:
  """Wang et al.'s SSIM with an 11-tap, sigma-1.5 Gaussian window, valid positions, per channel."""
  taps = np.exp(-0.5 * (np.arange(11) - 5) ** 2 / 1.5 ** 2)
  taps /= taps.sum()
  def blur(x):  # [H, W, C] -> [H - 10, W - 10, C]: Gaussian average over each 11x11 window
    windows = np.lib.stride_tricks.sliding_window_view(x, (11, 11), axis=(0, 1))
    return np.einsum("hwcij,i,j->hwc", windows, taps, taps)
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  mu_a, mu_b = blur(a), blur(b)
  var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
  cov = blur(a * b) - mu_a * mu_b
  ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
              / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
  return float(ssim_map.mean())


def test_ssim_on_noise_matches_a_hand_computation():
  rng = np.random.default_rng(0)
  clean = synthetic.make_clip(0, num_frames=2)["video"]
  noisy = np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255).astype(np.uint8)
  expected = np.mean([_ssim_by_hand(c / 255.0, n / 255.0) for c, n in zip(clean, noisy)])
  got = metrics.ssim(clean, noisy)
  assert got == pytest.approx(expected, abs=1e-4)
  assert 0.3 < got < 0.95


def test_code_usage_and_perplexity_on_hand_made_indices():
  uniform = np.arange(12)[:, None] % 4  # head 0 uses codes 0..3 equally often
  one_code = np.zeros((12, 1), int)  # head 1 uses one code
  indices = np.concatenate([uniform, one_code], axis=1).reshape(3, 2, 2, 2)  # [..., heads]
  stats = metrics.code_usage(indices, num_codes=16)
  np.testing.assert_allclose(stats["perplexity"], [4.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(stats["usage"], [4 / 16, 1 / 16])
  skewed = metrics.code_usage(np.array([[0], [0], [0], [1]]), num_codes=2)
  expected = np.exp(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
  assert skewed["perplexity"][0] == pytest.approx(expected) and skewed["usage"][0] == 1.0
  with pytest.raises(ValueError):
    metrics.code_usage(np.array([[16]]), num_codes=16)


def test_mouth_recoverability_by_pixels_follows_the_mouth_and_not_a_shuffled_one():
  clips = [synthetic.make_clip(seed, num_frames=16) for seed in range(1, 7)]
  frames = np.concatenate([c["video"] for c in clips])
  truth = np.concatenate([c["truth"] for c in clips])
  episodes = np.repeat([c["episode"] for c in clips], 16)
  assert metrics.mouth_recoverability(metrics.mouth_area_ratio(frames, truth, episodes), truth) > 0.99
  # The measure is linear in mouth_open over random truth (0.1 closed, 1.0 open).
  heldout, heldout_truth, heldout_episodes = probe.heldout_frames(0, 64)
  ratio = metrics.mouth_area_ratio(heldout, heldout_truth, heldout_episodes)
  slope, intercept = np.polyfit(heldout_truth[:, 0], ratio, 1)
  assert slope == pytest.approx(0.9, abs=0.05) and intercept == pytest.approx(0.1, abs=0.05)
  # Frames whose mouths belong to other frames' truth are not recoverable.
  shuffled = truth.copy()
  shuffled[:, 0] = np.random.default_rng(0).permutation(truth[:, 0])
  wrong_mouths = synthetic.render_frames(shuffled, episodes, 64, 56)
  assert abs(metrics.mouth_recoverability(
      metrics.mouth_area_ratio(wrong_mouths, truth, episodes), truth)) < 0.3


# ----------------------------------------------------------------------------------------------
# The evaluation job, driven by an oracle generator whose answers are known


# Frames at the start of a window drawn afresh after the first whose mouth the oracle gets wrong.
RESET_FRAMES = 6


class _Oracle:
  """Stands in for the `generator.Generator` class (patched in as `jobs.Generator`): each call
  returns an `_OracleGenerator` for that call's overlap (the real default: a quarter window), and
  records the overlap in `overlaps`."""

  def __init__(self, clips):
    self._clips = {audio_lib.frame_features(c["audio"].astype(np.float32) / 32768.0)[0][:4]
                   .tobytes(): c for c in clips}
    self.overlaps = []

  def __call__(self, models, options, batch=1, overlap=None, opening="bank"):
    del options, batch, opening
    window = models.window_frames
    overlap = window // 4 if overlap is None else overlap
    self.overlaps.append(overlap)
    return _OracleGenerator(self._clips, window, overlap)


class _OracleGenerator:
  """Draws each requested stream from its clip's truth with the requested per-frame episodes and
  the style z[:3] as (cam_x, cam_y, zoom), in the real generator's windows
  (`generator.windows`): a window after the first that starts afresh (no prompt: each one with
  overlap 0, and the one at an episode switch) has not seen the mouth before it, so its first
  RESET_FRAMES frames show the mouth wide open, whatever the audio says."""

  def __init__(self, clips, window, overlap):
    self._clips, self._window, self._overlap = clips, window, overlap
    self._truth = None

  def codes(self, mel, episodes, z, seed):
    del seed
    episodes = np.broadcast_to(episodes, (len(z), np.shape(episodes)[-1]))
    mel = np.broadcast_to(mel, (len(z),) + np.shape(mel)[-2:])
    num_frames = episodes.shape[1]
    truths = []
    for row in range(len(z)):
      truth = self._clips[mel[row, :4].tobytes()]["truth"][:num_frames].copy()
      truth[:, [KEYS.index(k) for k in ("cam_x", "cam_y", "zoom")]] = np.clip(z[row, :3], -1, 1)
      cuts = np.flatnonzero(np.diff(episodes[row])) + 1
      for start, prompt, _ in generator.windows(num_frames, self._window, self._overlap, cuts):
        if start > 0 and prompt == 0:
          truth[start:start + RESET_FRAMES, KEYS.index("mouth_open")] = 1.0
      truths.append(truth)
    self._truth = np.stack(truths)
    return np.zeros(episodes.shape + (1, 1, 1), np.int32)

  def frames(self, codes, episodes):
    episodes = np.broadcast_to(episodes, codes.shape[:2])
    return np.stack([synthetic.render_frames(t, e) for t, e in zip(self._truth, episodes)])


def _lipsync_of_reset_truth(clips, reset_at):
  """The lipsync r of the clips' true mouths with RESET_FRAMES frames from `reset_at` wide open,
  against the true mouths: what the oracle's reset costs, without the probe."""
  true_mouth = [c["truth"][:, KEYS.index("mouth_open")] for c in clips]
  reset = [t.copy() for t in true_mouth]
  for t in reset:
    t[reset_at:reset_at + RESET_FRAMES] = 1.0
  return metrics.lipsync(reset, true_mouth)["r"]


def test_evaluation_job_reports_known_answers_for_an_oracle(trained_probe, monkeypatch):
  import types
  clips = jobs.heldout_clips(6, 48, 64, 56)
  style_of = {c["video"][0].tobytes(): c["style"] for c in clips}
  oracle = _Oracle(clips)
  monkeypatch.setattr(jobs, "Generator", oracle)
  monkeypatch.setattr(jobs.controls, "reference_style",
                      lambda models, frames: np.pad(style_of[frames[0].tobytes()], (0, 12)))
  models = types.SimpleNamespace(prior=types.SimpleNamespace(num_episodes=8), window_frames=32)
  metrics, samples = jobs.evaluate_generation(models, trained_probe, clips,
                                                  independent_windows=True, log=lambda _: 0)
  # The probe's own ceiling on rendered speech clips is about 0.89 (mouths are mostly near closed).
  assert metrics["lipsync_r"] > 0.8 and metrics["lipsync_best_offset"] == 0, metrics
  # Windows drawn afresh (overlap 0: frames 32.. start without a prompt) lose the mouth for
  # RESET_FRAMES frames; the default windows (a prompt of 8 frames) never do.
  expected = _lipsync_of_reset_truth(clips, reset_at=32)  # 0.66, from the truth itself
  assert metrics["lipsync_r_independent_windows"] == pytest.approx(expected, abs=0.1), metrics
  assert metrics["lipsync_r_independent_windows"] < metrics["lipsync_r"] - 0.15, metrics
  assert sorted(set(oracle.overlaps)) == [0, 8], oracle.overlaps
  assert abs(metrics["lipsync_shuffled_r"]) < 0.3, metrics
  assert metrics["style_error_copied"] < 0.5 * metrics["style_error_random"], metrics
  assert metrics["episode_accuracy"] > 0.95 and metrics["episode_accuracy_after_switch"] > 0.9
  # Only z[:3] moves the picture: the best traversal is one of them, monotone in its key.
  assert metrics["traversal_best_dim"] in (0, 1, 2), metrics
  assert metrics["traversal_best_controls"] == ("cam_x", "cam_y", "zoom")[
      metrics["traversal_best_dim"]]
  assert abs(metrics["traversal_best_spearman"]) > 0.95  # the oracle clips -2 and -1 alike
  assert samples["switched"].shape == (6, 48, 64, 56, 3)
  assert (samples["switched_episode"][:, 24:] != samples["own_episode"][:, 24:]).all()
