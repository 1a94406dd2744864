"""The data iterator: determinism, exact resume, process sharding, alignment, both sources."""

import functools
import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from nwt_jax.data import audio
from nwt_jax.data import input_pipeline
from nwt_jax.data import synthetic

REPO = pathlib.Path(__file__).resolve().parents[3]
TINY = dict(num_frames=8, height=32, width=28, num_train_clips=6, num_validation_clips=5)


def _config(**overrides):
  return ml_collections.ConfigDict({**TINY, "batch_size": 4, **overrides})


def _batches(config, n, *, split="train", seed=0, **kwargs):
  with input_pipeline.create_iterator(config, split, seed=seed, **kwargs) as it:
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b, mel_atol=0.0):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_allclose(x[key], y[key], rtol=0, atol=mel_atol if key == "mel" else 0,
                                 err_msg=key)


@functools.lru_cache(maxsize=None)
def _clip(split, index):
  return synthetic.make_clip(input_pipeline.synthetic_clip_seed(split, index), num_frames=8,
                             height=32, width=28)


def _locate(row_video, split="train", num_clips=6):
  """(clip index, window start) of a batch row, found by content."""
  for index in range(num_clips):
    video = _clip(split, index)["video"]
    for start in range(len(video) - len(row_video) + 1):
      if np.array_equal(video[start:start + len(row_video)], row_video):
        return index, start
  raise AssertionError("row matches no clip window")


def test_batch_format():
  batch = _batches(_config(frames_per_example=3), 1)[0]
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      "video": ((4, 3, 32, 28, 3), np.uint8), "mel": ((4, 12, 80), np.float32),
      "episode": ((4,), np.int32), "truth": ((4, 3, 7), np.float32)}


def test_same_seed_same_batches_other_seed_other_batches():
  config = _config(frames_per_example=4)
  first = _batches(config, 4, seed=1)
  _assert_batches_equal(first, _batches(config, 4, seed=1))
  other = _batches(config, 4, seed=2)
  assert not all(np.array_equal(a["video"], b["video"]) for a, b in zip(first, other))


def test_resume_at_batch_k_continues_exactly():
  config = _config(frames_per_example=2)
  straight = _batches(config, 7, seed=3)  # crosses epoch boundaries (6 clips, 4 a batch)
  with input_pipeline.create_iterator(config, "train", seed=3) as it:
    for _ in range(4):
      next(it)
    state = json.loads(json.dumps(it.get_state()))
  assert state == {"step": 4}
  with input_pipeline.create_iterator(config, "train", seed=3) as resumed:
    resumed.set_state(state)
    _assert_batches_equal(straight[4:], [next(resumed) for _ in range(3)])
    resumed.set_state({"step": 1})  # also backwards, mid-stream, with batches prefetched
    _assert_batches_equal(straight[1:3], [next(resumed) for _ in range(2)])


def test_two_processes_split_the_global_batch():
  config = _config(frames_per_example=3, num_train_clips=8)  # 2 whole batches an epoch
  whole = _batches(config, 3, seed=5)
  halves = [_batches(config, 3, seed=5, process_index=p, process_count=2) for p in (0, 1)]
  for k, batch in enumerate(whole):
    assert halves[0][k]["video"].shape[0] == 2
    for key in batch:
      np.testing.assert_array_equal(
          np.concatenate([halves[0][k][key], halves[1][k][key]]), batch[key])
    rows = [_locate(v, num_clips=8) for half in halves for v in half[k]["video"]]
    assert len({index for index, _ in rows}) == 4  # disjoint rows: 4 different clips


def test_each_epoch_is_a_permutation_with_a_new_order():
  epochs = _batches(_config(num_train_clips=8), 4, seed=0)  # 2 epochs of 2 batches
  order = [_locate(v, num_clips=8)[0] for b in epochs for v in b["video"]]
  assert sorted(order[:8]) == sorted(order[8:]) == list(range(8))
  assert order[:8] != order[8:]


def test_frame_windows_are_random_and_mel_is_aligned():
  batches = _batches(_config(frames_per_example=3), 6, seed=0)
  starts = set()
  for batch in batches:
    for row in range(4):
      index, start = _locate(batch["video"][row])
      starts.add(start)
      clip = _clip("train", index)
      # Frame t of the window <-> mel rows [4t, 4t+4) of the whole clip's log-mel.
      mel = audio.log_mel(clip["audio"])[4 * start:4 * (start + 3)]
      np.testing.assert_array_equal(batch["mel"][row], mel)
      np.testing.assert_array_equal(batch["truth"][row], clip["truth"][start:start + 3])
      assert batch["episode"][row] == clip["episode"]
  assert len(starts) >= 3 and starts <= set(range(6))


def test_mel_rows_of_a_window_equal_the_whole_clips():
  wave = _clip("train", 0)["audio"]
  whole = audio.log_mel(wave)
  for start, stop in ((0, 4), (4, 12), (12, 32), (28, 32), (0, 32)):
    np.testing.assert_allclose(input_pipeline.mel_rows(wave, start, stop), whole[start:stop],
                               rtol=0, atol=1e-5)


def test_loud_frames_have_open_mouths():
  # Alignment by meaning: per-frame mel energy tracks mouth_open, and shifting breaks it.
  batch = _batches(_config(batch_size=6, num_frames=32, height=16, width=14), 1)[0]
  energy = np.exp(batch["mel"]).sum(-1).reshape(6, 32, 4).mean(-1)  # [B, T]
  mouth = batch["truth"][..., synthetic.TRUTH_KEYS.index("mouth_open")]
  aligned = np.corrcoef(np.log(energy).ravel(), mouth.ravel())[0, 1]
  shifted = np.corrcoef(np.log(energy[:, 6:]).ravel(), mouth[:, :-6].ravel())[0, 1]
  assert aligned > 0.7 and aligned > shifted + 0.2


def test_validation_is_one_ordered_pass():
  config = _config(batch_size=2)
  with input_pipeline.create_iterator(config, "validation", seed=0) as it:
    assert it.num_batches == 2  # 5 clips, last partial batch dropped
    batches = list(it)
  order = [_locate(v, split="validation", num_clips=5)[0] for b in batches for v in b["video"]]
  assert order == [0, 1, 2, 3]
  with input_pipeline.create_iterator(_config(batch_size=2, drop_remainder=False), "validation",
                                      seed=0, process_index=1, process_count=2) as it:
    padded = list(it)
  assert [b["mask"].tolist() for b in padded] == [[True], [True], [False]]


def test_errors_surface_clearly():
  with pytest.raises(ValueError, match="unknown data config fields"):
    input_pipeline.create_iterator(_config(batch_sise=4), "train", seed=0)
  with pytest.raises(ValueError, match="multiple of process_count"):
    input_pipeline.create_iterator(_config(batch_size=3), "train", seed=0, process_count=2)
  with pytest.raises(ValueError, match="split"):
    input_pipeline.create_iterator(_config(), "test", seed=0)
  with input_pipeline.create_iterator(_config(frames_per_example=9), "train", seed=0) as it:
    with pytest.raises(ValueError, match="exceeds"):  # raised in the prefetch thread
      next(it)


def test_synthetic_inline_imports_no_tf_tfds_or_librosa():
  code = (
      "import sys, ml_collections\n"
      "from nwt_jax.data import input_pipeline\n"
      f"c = ml_collections.ConfigDict({TINY!r}); c.batch_size = 2\n"
      "next(input_pipeline.create_iterator(c, 'train', seed=0))\n"
      "bad = ('tensorflow', 'tensorflow_datasets', 'librosa', 'imageio', 'imageio_ffmpeg', 'cv2')\n"
      "print(sorted(m for m in sys.modules if m.split('.')[0] in bad))\n")
  out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == "[]"


TINY_BUILD = json.dumps({"name": "synthetic_tiny", "num_frames": 8, "height": 32, "width": 28,
                         "num_train_clips": 6, "num_validation_clips": 5})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A tiny synthetic build made by the `tfds build` command line (TFRecord by default)."""
  root = tmp_path_factory.mktemp("tfds")
  proc = subprocess.run(
      [sys.executable, "-m", "tensorflow_datasets.scripts.cli.main", "build",
       str(REPO / "tfds_builders" / "nwt_clips"), f"--config={TINY_BUILD}",
       f"--data_dir={root}"],
      cwd=root, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
      timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "build summary: {'clips_train': 6, 'clips_validation': 5}" in proc.stdout + proc.stderr
  assert list(root.rglob("nwt_clips-train.tfrecord-*"))
  return root


def _builder_module():
  sys.path.insert(0, str(REPO / "tfds_builders"))
  from nwt_clips import nwt_clips_dataset_builder  # pylint: disable=g-import-not-at-top
  return nwt_clips_dataset_builder


@pytest.fixture(scope="module")
def array_record_dir(tmp_path_factory):
  """The same build as ArrayRecord (`--file_format=array_record`)."""
  root = tmp_path_factory.mktemp("tfds_ar")
  module = _builder_module()
  module.Builder(config=module.NwtClipsConfig(**json.loads(TINY_BUILD)), data_dir=root,
                 file_format="array_record").download_and_prepare()
  assert list(root.rglob("nwt_clips-train.array_record-*"))
  return root


def test_tfds_source_equals_synthetic_inline(data_dir):
  # The build stores clips in index order, so both sources give the same batches (the tfds
  # source computes only the window's mel rows: equal to float rounding).
  from_disk = _config(source="tfds", data_dir=str(data_dir), tfds_name="nwt_clips/synthetic_tiny",
                      frames_per_example=5)
  for split, n in (("train", 3), ("validation", 1)):
    kwargs = dict(split=split, seed=7, process_index=1, process_count=2)
    _assert_batches_equal(_batches(from_disk, n, **kwargs),
                          _batches(_config(frames_per_example=5), n, **kwargs), mel_atol=1e-5)


def test_tfrecord_and_array_record_builds_resume_bitwise(data_dir, array_record_dir):
  """Both file formats: the same batches, and a restart from the saved position continues
  bitwise as the uninterrupted run does (crossing an epoch: 6 clips, 4 a batch)."""
  runs = {}
  for name, root in (("tfrecord", data_dir), ("array_record", array_record_dir)):
    config = _config(source="tfds", data_dir=str(root), tfds_name="nwt_clips/synthetic_tiny",
                     frames_per_example=3)
    straight = _batches(config, 6, seed=11)
    with input_pipeline.create_iterator(config, "train", seed=11) as it:
      first = [next(it) for _ in range(4)]
      state = json.loads(json.dumps(it.get_state()))
    with input_pipeline.create_iterator(config, "train", seed=11) as restarted:
      restarted.set_state(state)
      rest = [next(restarted) for _ in range(2)]
    _assert_batches_equal(first + rest, straight)
    runs[name] = straight
  _assert_batches_equal(runs["tfrecord"], runs["array_record"])


def test_tfrecord_index_reads_each_record_by_position(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "x.tfrecord")
  records = [bytes([i]) * (i * 37) for i in range(7)]
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)
  # A local path (os.pread) and a URL (tf.io.gfile, as for gs://), each cut to [skip, take).
  index = input_pipeline.TfRecordIndex([(path, 0, -1), (f"file://{path}", 2, 3)])
  assert len(index) == 10
  assert [index[i] for i in range(10)] == records + records[2:5]
  index.close()


def test_tfds_source_errors_name_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match="tfds build tfds_builders/nwt_clips"):
    input_pipeline.create_iterator(
        _config(source="tfds", data_dir=str(tmp_path), tfds_name="nwt_clips/synthetic_tiny"),
        "train", seed=0)
