import numpy as np
import pytest

from nwt_jax.data import synthetic


def _frame_rms(audio_int16):
  a = audio_int16.astype(np.float64) / 32768.0
  return np.sqrt((a.reshape(-1, synthetic.SAMPLES_PER_FRAME) ** 2).mean(axis=1))


def test_clip_is_deterministic_and_seed_dependent():
  a, b, c = synthetic.make_clip(3), synthetic.make_clip(3), synthetic.make_clip(4)
  for key in ("video", "audio", "truth", "style"):
    np.testing.assert_array_equal(a[key], b[key])
  assert a["episode"] == b["episode"]
  assert not np.array_equal(a["audio"], c["audio"])
  assert not np.array_equal(a["video"], c["video"])


def test_clip_shapes_dtypes_and_ranges():
  clip = synthetic.make_clip(0, num_frames=12, height=40, width=36, episode=5)
  assert clip["video"].shape == (12, 40, 36, 3) and clip["video"].dtype == np.uint8
  assert clip["audio"].shape == (12 * 800,) and clip["audio"].dtype == np.int16
  assert clip["truth"].shape == (12, len(synthetic.TRUTH_KEYS))
  assert clip["truth"].dtype == np.float32 and clip["episode"] == 5
  truth = {k: clip["truth"][:, i] for i, k in enumerate(synthetic.TRUTH_KEYS)}
  for key in ("mouth_open", "mouth_width", "blink"):
    assert 0.0 <= truth[key].min() and truth[key].max() <= 1.0
  for key in ("cam_x", "cam_y", "zoom"):
    assert np.all(truth[key] == truth[key][0]) and -1 <= truth[key][0] <= 1
  np.testing.assert_allclose(clip["style"][:3], [truth["cam_x"][0], truth["cam_y"][0],
                                                 truth["zoom"][0]])
  # Speech is audible but never clips.
  assert 500 < np.abs(clip["audio"]).max() < 32000


def test_mouth_follows_audio_loudness_but_blinks_do_not():
  rms, mouth, blink = [], [], []
  for seed in range(30):
    clip = synthetic.make_clip(seed)
    rms.append(_frame_rms(clip["audio"]))
    mouth.append(clip["truth"][:, 0])
    blink.append(clip["truth"][:, 6])
  rms, mouth, blink = map(np.concatenate, (rms, mouth, blink))
  assert np.corrcoef(mouth, rms)[0, 1] > 0.8
  assert blink.max() == 1.0  # blinks happen
  assert abs(np.corrcoef(blink, rms)[0, 1]) < 0.15


def test_every_vowel_and_pause_shows_in_truth():
  _, truth = synthetic.make_speech(0, 24000 * 10)
  assert truth["mouth_open"].shape == (300,)
  assert (truth["mouth_open"] < 0.02).mean() > 0.1  # pauses close the mouth
  assert truth["mouth_open"].max() > 0.7
  assert truth["mouth_width"].min() < 0.15 and truth["mouth_width"].max() > 0.8


def _truth(**values):
  row = np.zeros(len(synthetic.TRUTH_KEYS), np.float32)
  for key, value in values.items():
    row[synthetic.TRUTH_KEYS.index(key)] = value
  return row[None]


def _mouth_pixels(frame):
  mouth = np.asarray(synthetic.MOUTH) * 255
  return int((np.abs(frame.astype(np.float64) - mouth).sum(axis=-1) < 60).sum())


def test_mouth_area_grows_with_opening_and_width():
  areas = [_mouth_pixels(synthetic.render_frames(_truth(mouth_open=m, mouth_width=0.5), 0)[0])
           for m in (0.0, 0.3, 0.6, 1.0)]
  assert areas == sorted(areas) and areas[-1] > 4 * max(areas[0], 1)
  narrow, wide = (_mouth_pixels(synthetic.render_frames(_truth(mouth_open=0.5, mouth_width=w),
                                                        0)[0]) for w in (0.0, 1.0))
  assert wide > 1.5 * narrow


def test_camera_zoom_tilt_and_blink_move_the_picture():
  base = synthetic.render_frames(_truth(), 2).astype(np.int32)
  for key in ("cam_x", "cam_y", "zoom", "tilt", "blink"):
    moved = synthetic.render_frames(_truth(**{key: 1.0}), 2).astype(np.int32)
    assert np.abs(moved - base).mean() > (0.1 if key == "blink" else 1.0), key
  # Positive cam_x moves the face to the right: the skin's centre of mass shifts right.
  def skin_cx(frame):
    skin = np.abs(frame.astype(np.float64) - synthetic.SKIN * 255).sum(-1) < 30
    return np.nonzero(skin)[1].mean()
  right = synthetic.render_frames(_truth(cam_x=1.0), 2)[0]
  assert skin_cx(right) > skin_cx(base[0].astype(np.uint8)) + 4


def test_episodes_differ_and_can_switch_mid_clip():
  truth = np.repeat(_truth(mouth_open=0.3), 4, axis=0)
  frames = [synthetic.render_frames(truth[:1], e)[0] for e in range(synthetic.NUM_EPISODES)]
  corners = {tuple(f[1, 1]) for f in frames}
  assert len(corners) == synthetic.NUM_EPISODES  # every background differs
  switched = synthetic.render_frames(truth, np.array([0, 0, 5, 5]))
  np.testing.assert_array_equal(switched[0], frames[0])
  np.testing.assert_array_equal(switched[3], frames[5])
  with pytest.raises(ValueError, match="episode ids"):
    synthetic.render_frames(truth, 8)


def test_rendering_is_resolution_independent():
  truth = synthetic.make_clip(1)["truth"][:3]
  small = synthetic.render_frames(truth, 1, 32, 28).astype(np.float64)
  big = synthetic.render_frames(truth, 1, 128, 112).astype(np.float64)
  pooled = big.reshape(3, 32, 4, 28, 4, 3).mean(axis=(2, 4))
  assert np.abs(pooled - small).mean() < 4.0  # only anti-aliasing differs


def test_make_clip_rejects_bad_episode():
  with pytest.raises(ValueError, match="episode must be in"):
    synthetic.make_clip(0, episode=3, num_episodes=2)
