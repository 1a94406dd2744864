import os

import numpy as np
import pytest

from nwt_jax.data import video_io
import media_fixtures


def _bands(height, widths, colors):
  """One frame of vertical colour bands."""
  return np.concatenate([np.broadcast_to(np.array(c, np.uint8), (height, w, 3))
                         for w, c in zip(widths, colors)], axis=1)


def test_write_then_read_round_trip(tmp_path):
  t = np.arange(30)
  frames = np.zeros((30, 28, 32, 3), np.uint8)
  frames[..., 0] = (t * 8)[:, None, None]  # red ramps over time
  frames[..., 1] = np.linspace(0, 255, 32).astype(np.uint8)[None, None, :]
  tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(24000) / 24000)
  path = tmp_path / "clip.mp4"
  video_io.write_video(path, frames, fps=30, audio=(tone * 32767).astype(np.int16))

  info = video_io.probe(path)
  assert (info.has_video, info.has_audio, info.fps, info.height, info.width, info.sample_rate) == (
      True, True, 30.0, 28, 32, 24000)
  assert info.duration == pytest.approx(1.0, abs=0.05)
  video = video_io.read_video(path, height=28, width=32)
  assert video.shape == frames.shape and video.dtype == np.uint8
  assert np.abs(video.astype(int) - frames).mean() < 3  # H.264 at crf 18
  audio = video_io.read_audio(path)
  assert audio.dtype == np.float32 and abs(len(audio) - 24000) <= 800
  assert media_fixtures.dominant_hz(audio[2400:-2400], 24000) == pytest.approx(440, abs=5)
  assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary left behind


def test_frame_rate_is_resampled_to_30(tmp_path):
  # 2 s at 25 fps whose frame k is grey level 5k: at 30 fps each source frame shows once or twice.
  source = np.repeat((np.arange(50) * 5).astype(np.uint8), 16 * 16 * 3).reshape(50, 16, 16, 3)
  path = tmp_path / "25fps.mp4"
  video_io.write_video(path, source, fps=25)
  assert video_io.probe(path).fps == 25.0
  video = video_io.read_video(path, fps=30, height=16, width=16)
  assert len(video) == 60
  index = np.round(video.mean(axis=(1, 2, 3)) / 5).astype(int)
  assert index[0] == 0 and index[-1] == 49
  assert np.all(np.diff(index) >= 0) and set(np.bincount(index)) <= {1, 2}


def test_centre_crop_to_target_aspect(tmp_path):
  # 96x32: red | green | blue bands of 34, 28, 34 pixels.
  red, green, blue = (220, 20, 20), (20, 220, 20), (20, 20, 220)
  frame = _bands(32, (34, 28, 34), (red, green, blue))
  path = tmp_path / "wide.mp4"
  video_io.write_video(path, np.stack([frame] * 3), fps=30)
  tall = video_io.read_video(path, height=32, width=28)  # aspect 0.875: the middle 28 columns
  assert tall.shape == (3, 32, 28, 3)
  assert np.abs(tall[:, 4:-4, 3:-3].astype(int) - green).max() < 30
  same_aspect = video_io.read_video(path, height=8, width=24)  # aspect 3: nothing cropped
  assert np.abs(same_aspect[:, :, 0].astype(int) - red).max() < 40
  assert np.abs(same_aspect[:, :, -1].astype(int) - blue).max() < 40


def test_audio_downmix_and_resample_equal_librosa(tmp_path):
  import librosa  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  t = np.arange(44100) / 44100
  stereo = np.stack([0.4 * np.sin(2 * np.pi * 300 * t), 0.3 * np.sin(2 * np.pi * 3000 * t)], 1)
  stereo += 0.01 * rng.standard_normal(stereo.shape)
  path = media_fixtures.write_wav(tmp_path / "stereo.wav", stereo, 44100)
  pcm = np.round(np.clip(stereo, -1, 1) * 32767) / 32768  # what the WAV holds
  expected = librosa.resample(pcm.mean(axis=1).astype(np.float32), orig_sr=44100,
                              target_sr=24000)  # soxr_hq
  audio = video_io.read_audio(path, sample_rate=24000)
  n = min(len(audio), len(expected))
  assert abs(len(audio) - 24000) <= 1 and n >= 23999
  rel = np.sqrt(np.mean((audio[:n] - expected[:n]) ** 2) / np.mean(expected ** 2))
  assert rel < 1e-5


def test_stereo_44k_in_mp4_at_another_size(tmp_path):
  path = media_fixtures.make_video(tmp_path / "a.mp4", seconds=1.0, fps=25, width=48, height=40,
                                   sample_rate=44100, channels=2, tone_hz=1000)
  info = video_io.probe(path)
  assert (info.fps, info.width, info.height, info.sample_rate) == (25.0, 48, 40, 44100)
  audio = video_io.read_audio(path, sample_rate=24000)
  assert abs(len(audio) - 24000) <= 800
  assert media_fixtures.dominant_hz(audio, 24000) == pytest.approx(1000, abs=5)
  assert video_io.read_video(path, height=28, width=32).shape == (30, 28, 32, 3)


def test_iter_video_streams_chunks(tmp_path):
  path = media_fixtures.make_video(tmp_path / "b.mkv", seconds=1.0, sample_rate=None)
  sizes = [len(c) for c in video_io.iter_video(path, height=8, width=8, chunk_frames=8)]
  assert sizes == [8, 8, 8, 6]
  first = next(iter(video_io.iter_video(path, height=8, width=8, chunk_frames=4)))
  assert first.shape == (4, 8, 8, 3)  # stopping early is fine


def test_errors_name_the_file(tmp_path):
  with pytest.raises(video_io.VideoIOError, match="missing.mp4: no such file"):
    video_io.probe(tmp_path / "missing.mp4")
  corrupt = tmp_path / "corrupt.mp4"
  corrupt.write_bytes(np.random.default_rng(0).bytes(5000))
  with pytest.raises(video_io.VideoIOError, match="corrupt.mp4: not a readable media file"):
    video_io.read_video(corrupt, height=8, width=8)
  silent = media_fixtures.make_video(tmp_path / "silent.mp4", seconds=0.5, sample_rate=None)
  with pytest.raises(video_io.VideoIOError, match="silent.mp4: no audio stream"):
    video_io.read_audio(silent)
  sound = media_fixtures.write_wav(tmp_path / "sound.wav", np.zeros(2400), 24000)
  assert not video_io.probe(sound).has_video
  with pytest.raises(video_io.VideoIOError, match="sound.wav: no video stream"):
    video_io.read_video(sound, height=8, width=8)


def test_failed_write_leaves_nothing(tmp_path):
  frames = np.zeros((4, 8, 8, 3), np.uint8)
  with pytest.raises(video_io.VideoIOError, match="out.mp4: encoding failed"):
    video_io.write_video(tmp_path / "out.mp4", frames, fps=30, audio=np.zeros(3200, np.int16),
                         sample_rate=-5)
  assert not os.listdir(tmp_path)
  with pytest.raises(video_io.VideoIOError, match="does not exist"):
    video_io.write_video(tmp_path / "no" / "out.mp4", frames, fps=30)
  with pytest.raises(ValueError, match="uint8"):
    video_io.write_video(tmp_path / "out.mp4", frames.astype(np.float32), fps=30)
  assert not os.listdir(tmp_path)


def test_odd_frame_size_is_padded(tmp_path):
  path = tmp_path / "odd.mp4"
  video_io.write_video(path, np.full((3, 7, 9, 3), 128, np.uint8), fps=30)
  info = video_io.probe(path)
  assert (info.height, info.width) == (8, 10)


def test_chunks_are_piped_as_they_come_and_a_failing_producer_leaves_nothing(tmp_path):
  frames = np.zeros((30, 16, 16, 3), np.uint8)
  frames[..., 2] = (np.arange(30) * 8)[:, None, None]  # blue ramps over time
  path = tmp_path / "chunked.mp4"
  video_io.write_video(path, (frames[i:i + 7] for i in range(0, 30, 7)), fps=30)
  video = video_io.read_video(path, height=16, width=16)
  assert video.shape == frames.shape
  assert np.abs(video.astype(int) - frames).mean() < 3

  def failing():
    yield frames[:10]
    raise RuntimeError("sampler died")

  with pytest.raises(RuntimeError, match="sampler died"):
    video_io.write_video(tmp_path / "broken.mp4", failing(), fps=30)
  with pytest.raises(ValueError, match="with H, W = \\(16, 16\\)"):
    video_io.write_video(tmp_path / "broken.mp4", iter([frames[:5], frames[:5, :8]]), fps=30)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["chunked.mp4"]
