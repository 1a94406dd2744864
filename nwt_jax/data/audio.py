"""Log-mel features: 80 bins, hop 200 at 24 kHz, so exactly 4 mel frames per 30 fps video frame.

Written in numpy (not by calling librosa) because GPU machines and the in-memory synthetic source
have no librosa; `tests/unit/data/test_audio.py` pins it to `librosa.feature.melspectrogram`
with the same parameters. Audio file reading and resampling (ffmpeg's soxr, as librosa's
default) live in `video_io.py`.
"""

import functools

import numpy as np

from nwt_jax.data import constants
from nwt_jax.data.constants import HOP_LENGTH, N_MELS, SAMPLE_RATE

N_FFT = 1024
WIN_LENGTH = 800  # 33 ms analysis window, zero-padded to N_FFT
FMIN, FMAX = 0.0, 8000.0  # speech band
MEL_BLOCK = 4096  # mel frames per FFT block (34 s of audio)
LOG_FLOOR = 1e-5  # log(mel) is clamped here, so silence is finite


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
  """Slaney's mel scale (librosa's default): linear below 1 kHz, logarithmic above."""
  hz = np.asarray(hz, np.float64)
  mel = hz / (200.0 / 3)
  log_region = hz >= 1000.0
  return np.where(log_region, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27),
                  mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
  mel = np.asarray(mel, np.float64)
  return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27) * (mel - 15.0)),
                  mel * (200.0 / 3))


@functools.lru_cache(maxsize=None)
def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = FMIN, fmax: float = FMAX) -> np.ndarray:
  """Triangular, area-normalised (slaney) mel filters [n_mels, 1 + n_fft // 2], as librosa's."""
  fft_hz = np.linspace(0.0, sample_rate / 2, 1 + n_fft // 2)
  edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
  widths = np.diff(edges_hz)
  ramps = edges_hz[:, None] - fft_hz[None, :]
  rising = -ramps[:-2] / widths[:-1, None]
  falling = ramps[2:] / widths[1:, None]
  weights = np.maximum(0.0, np.minimum(rising, falling))
  weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
  return weights.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _window() -> np.ndarray:
  """Periodic Hann of WIN_LENGTH, centred in N_FFT zeros (librosa's `pad_center`)."""
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN_LENGTH) / WIN_LENGTH)
  left = (N_FFT - WIN_LENGTH) // 2
  return np.pad(hann, (left, N_FFT - WIN_LENGTH - left))


def num_mel_frames(num_samples: int) -> int:
  """Mel frames kept for `num_samples` of audio: one per full hop."""
  return num_samples // HOP_LENGTH


def log_mel(audio: np.ndarray) -> np.ndarray:
  """Log-mel spectrogram of mono 24 kHz audio -> float32 [num_samples // 200, 80].

  `audio` is float in [-1, 1] or int16. Frame j is centred on sample 200·j (zero padding at the
  edges, as librosa's `center=True`), so video frame t owns mel rows [4t, 4t + 4).
  """
  audio = np.asarray(audio)
  if audio.ndim != 1:
    raise ValueError(f"log_mel expects mono audio of shape [num_samples], got {audio.shape}.")
  if audio.dtype == np.int16:
    audio = audio.astype(np.float32) / 32768.0
  audio = audio.astype(np.float32)
  num_frames = num_mel_frames(audio.shape[0])
  padded = np.pad(audio, (N_FFT // 2, N_FFT // 2))
  frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:num_frames]
  out = np.empty((num_frames, N_MELS), np.float32)
  window, filterbank = _window().astype(np.float32), mel_filterbank().T
  # Frames are independent, so the spectrum is taken a block at a time: memory stays at one
  # block's complex FFT (~40 MB) however long the audio (10 minutes at once would need ~1 GB).
  for start in range(0, num_frames, MEL_BLOCK):
    block = frames[start:start + MEL_BLOCK] * window
    power = np.abs(np.fft.rfft(block, axis=-1)) ** 2
    # Far below LOG_FLOOR, so the output is unchanged; it keeps float32 denormals (pure tones,
    # digital silence) out of the matmul, which otherwise runs ~1000x slower.
    power = np.maximum(power.astype(np.float32), 1e-30)
    out[start:start + MEL_BLOCK] = np.log(np.maximum(power @ filterbank, LOG_FLOOR))
  return out


def frame_features(audio: np.ndarray) -> tuple[np.ndarray, int]:
  """24 kHz mono audio -> (log-mel [4T, 80] for its T whole frames, T)."""
  num_frames = len(audio) // constants.SAMPLES_PER_FRAME
  mel = log_mel(audio[:num_frames * constants.SAMPLES_PER_FRAME])
  return mel[:num_frames * constants.MEL_PER_FRAME], num_frames
