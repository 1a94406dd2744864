import numpy as np
import pytest

from nwt_jax.data import audio


def _speechlike(num_samples, seed=0):
  rng = np.random.default_rng(seed)
  t = np.arange(num_samples) / audio.SAMPLE_RATE
  wave = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((140, 280, 700, 1200, 2500), 1))
  return (0.2 * wave * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(num_samples))


def test_log_mel_matches_librosa():
  import librosa  # pylint: disable=g-import-not-at-top  (an I/O dependency, not a core one)
  wave = _speechlike(24000).astype(np.float32)
  ours = audio.log_mel(wave)
  ref = librosa.feature.melspectrogram(
      y=wave, sr=audio.SAMPLE_RATE, n_fft=audio.N_FFT, hop_length=audio.HOP_LENGTH,
      win_length=audio.WIN_LENGTH, n_mels=audio.N_MELS, fmin=audio.FMIN, fmax=audio.FMAX,
      center=True, pad_mode="constant", power=2.0)
  ref = np.log(np.maximum(ref, audio.LOG_FLOOR)).T[: ours.shape[0]]
  assert ours.shape == (120, 80)
  np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=0)


def test_four_mel_frames_per_video_frame_and_alignment():
  # A tone burst in video frame 5 (samples [4000, 4800)) lights up mel rows [20, 24) most.
  num_frames = 10
  wave = np.zeros(num_frames * 800, np.float32)
  t = np.arange(800) / audio.SAMPLE_RATE
  wave[4000:4800] = 0.5 * np.sin(2 * np.pi * 1000 * t)
  mel = audio.log_mel(wave)
  assert mel.shape == (4 * num_frames, 80)
  energy = mel.max(axis=1)
  assert set(np.argsort(energy)[-4:]) <= set(range(19, 25))
  assert energy[:15].max() == pytest.approx(np.log(audio.LOG_FLOOR))


def test_log_mel_accepts_int16_and_rejects_stereo():
  wave = (_speechlike(8000) * 20000).astype(np.int16)
  np.testing.assert_allclose(
      audio.log_mel(wave), audio.log_mel(wave.astype(np.float32) / 32768.0), atol=1e-5)
  with pytest.raises(ValueError, match="mono"):
    audio.log_mel(np.zeros((800, 2), np.float32))


def test_long_audio_is_computed_in_blocks_equal_to_one_pass(monkeypatch):
  """Blocks of frames (memory flat in the length) give the single-block spectrogram."""
  rng = np.random.default_rng(0)
  wave = rng.normal(0, 0.3, 24000 * 3).astype(np.float32)
  whole = audio.log_mel(wave)
  monkeypatch.setattr(audio, "MEL_BLOCK", 97)  # 360 frames: 3 full blocks and a partial one
  np.testing.assert_allclose(audio.log_mel(wave), whole, atol=1e-5)  # BLAS blocking: ulps
  assert whole.shape == (360, audio.N_MELS)
