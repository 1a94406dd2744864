"""The nwt_clips TFDS builder: both configs, skip accounting, clear errors, Beam == plain."""

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
from nwt_jax.data import video_io
import media_fixtures

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tfds_builders"))  # as `tfds build tfds_builders/nwt_clips` does
from nwt_clips import nwt_clips_dataset_builder as nwt_clips  # pylint: disable=g-import-not-at-top

TINY_SYNTHETIC = nwt_clips.NwtClipsConfig(
    name="synthetic_tiny", num_frames=4, height=32, width=28, num_train_clips=4,
    num_validation_clips=2)
# dummy_data/ (made with tests/support/media_fixtures.py): alice/talk1.mp4 1.5 s 25 fps 44.1 kHz stereo
# 48x40 (5 clips of 8 frames at 30 fps), alice/talk2.mov 1.0 s 30 fps (3), bob/interview.mkv
# 1.2 s 24 fps 16 kHz 40x40 (4), bob/silent.mp4 (no audio), bob/broken.webm (random bytes),
# carol/short.webm 0.2 s (shorter than a clip). talk2.mov hashes into validation.
TINY_FOLDER = nwt_clips.NwtClipsConfig(
    name="folder_tiny", source="folder", num_frames=8, height=32, width=28)


class _TfRecordBuilderTestCase(testing.DatasetBuilderTestCase):
  """DatasetBuilderTestCase reads back with tf.data, which ArrayRecord (the default) lacks."""
  __test__ = False  # a base, not a test
  DATASET_CLASS = nwt_clips.Builder
  # tf.test.TestCase's `test_session` helper would be collected as a test that skips itself;
  # as a property it stays usable (graph-mode runs call it) but is not collected.
  test_session = property(lambda self: testing.DatasetBuilderTestCase.test_session.__get__(self))

  def _make_builder(self, config=None):
    return self.dataset_class(data_dir=self.tmp_dir, config=config, file_format="tfrecord")


class SyntheticBuilderTest(_TfRecordBuilderTestCase):
  __test__ = True
  BUILDER_CONFIG_NAMES_TO_TEST = [TINY_SYNTHETIC]
  SPLITS = {"train": 4, "validation": 2}


class FolderBuilderTest(_TfRecordBuilderTestCase):
  __test__ = True
  BUILDER_CONFIG_NAMES_TO_TEST = [TINY_FOLDER]
  SPLITS = {"train": 9, "validation": 3}


def _build(config, data_dir, manual_dir=None):
  builder = nwt_clips.Builder(config=config, data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def _examples(builder, split):
  return list(builder.as_data_source(split))


def test_config_validates_fields():
  with pytest.raises(ValueError, match="source"):
    nwt_clips.NwtClipsConfig(name="x", source="youtube")
  with pytest.raises(ValueError, match="num_frames"):
    nwt_clips.NwtClipsConfig(name="x", num_frames=0)
  with pytest.raises(ValueError, match="frame_encoding"):
    nwt_clips.NwtClipsConfig(name="x", frame_encoding="gif")
  with pytest.raises(ValueError, match="validation_fraction"):
    nwt_clips.NwtClipsConfig(name="x", validation_fraction=1.0)
  assert nwt_clips.NwtClipsConfig(name="x").frame_encoding == "png"
  assert nwt_clips.NwtClipsConfig(name="x", source="folder").frame_encoding == "jpeg"


def test_synthetic_round_trip_equals_the_generator(tmp_path):
  builder = _build(TINY_SYNTHETIC, tmp_path)
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
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
  assert not list(tmp_path.rglob("*.array_record*"))  # inspecting writes nothing


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
  # A video's clips never straddle splits.
  train_files = {e["source"] for e in _examples(builder, "train")}
  assert train_files and train_files.isdisjoint(e["source"] for e in _examples(builder,
                                                                             "validation"))
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


def test_fewer_than_two_usable_videos_is_a_clear_error(tmp_path, manual_dir):
  manual = tmp_path / "manual"
  (manual / "ep").mkdir(parents=True)
  (manual / "ep" / "only.mp4").write_bytes((manual_dir / "ep_a/clip30.mov").read_bytes())
  (manual / "ep" / "broken.mp4").write_bytes(b"junk")
  with pytest.raises(ValueError, match="1 usable video file"):
    _build(FOLDER_PNG, tmp_path / "data", manual)
  assert not (tmp_path / "data" / "nwt_clips" / "folder_png").exists()


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
