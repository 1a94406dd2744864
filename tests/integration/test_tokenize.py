"""Tokenization: codes equal DVAE.encode of the clips, shards per process, resume writes only
the missing shards, mismatches are refused; the token iterator's batches, sharding and resume."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nwt_jax import errors
from nwt_jax.data import input_pipeline
from nwt_jax.data import token_pipeline
from nwt_jax.models import dvae
import token_fixtures
from nwt_jax.training import tokens as tokens_lib

SPLITS = ("train", "validation")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokens")
  written = token_fixtures.make_tokens(root)
  return str(root), written


def _all_clips(root, split):
  source = token_pipeline.TokenSource(root, split)
  return [source.clip(i) for i in range(len(source))]


def test_codes_are_the_dvae_encoding_of_every_clip(tokens):
  root, written = tokens
  assert len(written) == 4 + 3  # 12 train clips in shards of 3; 8 validation clips: 3, 3, 2
  manifest = token_pipeline.read_manifest(root)
  assert manifest["grid"] == [4, 2] and manifest["code_heads"] == 2
  assert manifest["num_codes"] == 16 and manifest["num_frames"] == 8
  model, params = token_fixtures.model_and_params()
  cfg = token_fixtures.data_config()
  for split in SPLITS:
    source = input_pipeline.SyntheticSource(cfg, split)
    clips = _all_clips(root, split)
    assert len(clips) == len(source) == cfg[f"num_{split}_clips"]
    for i, stored in enumerate(clips):
      clip = input_pipeline._synthetic_clip(  # pylint: disable=protected-access
          split, i, cfg.num_frames, cfg.height, cfg.width, cfg.num_episodes, cfg.synthetic_seed)
      want = model.apply({"params": params}, jnp.asarray(clip["video"]), method=dvae.DVAE.encode)
      np.testing.assert_array_equal(stored["codes"], np.asarray(want))
      np.testing.assert_array_equal(stored["mel"], clip["mel"][:4 * cfg.num_frames])
      np.testing.assert_array_equal(stored["truth"], clip["truth"])
      assert int(stored["episode"]) == clip["episode"] and int(stored["clip"]) == i
      # The mouth covers a few cells of every frame, not the whole grid.
      cells = stored["mouth"].reshape(cfg.num_frames, -1).sum(axis=1)
      assert np.all(cells >= 1) and np.all(cells <= 6), cells


def test_mouth_cells_follow_the_rendered_mouth():
  truth = np.zeros((2, 7), np.float32)
  truth[1, 2] = 1.0  # camera x: the whole face, mouth included, moves right
  cells = tokens_lib.mouth_cells(truth, 0, (64, 56), (8, 7))
  assert cells[0].any() and cells[1].any()
  cols = lambda c: np.nonzero(c.any(axis=0))[0]
  assert cols(cells[1]).mean() > cols(cells[0]).mean()
  assert not cells[:, :3].any()  # the mouth is in the lower part of the face


def _mtimes(paths):
  return {p: os.stat(os.path.join(p, "codes.npy")).st_mtime_ns for p in paths}


def test_processes_split_shards_and_a_rerun_writes_only_missing_ones(tokens, tmp_path):
  reference_root, _ = tokens
  # Process 0 of 2 ran; process 1 was interrupted mid-shard (a temporary directory is left).
  first = token_fixtures.make_tokens(tmp_path, process_index=0, process_count=2)
  names = lambda paths: sorted(os.path.relpath(p, tmp_path) for p in paths)
  assert names(first) == ["train/shard-00000-of-00004", "train/shard-00002-of-00004",
                          "validation/shard-00000-of-00003", "validation/shard-00002-of-00003"]
  os.makedirs(tmp_path / "train" / "shard-00001-of-00004.tmp-999")
  with pytest.raises(FileNotFoundError, match="rerun"):
    token_pipeline.TokenSource(str(tmp_path), "train")
  before = _mtimes(first)
  second = token_fixtures.make_tokens(tmp_path)  # the same command, one process
  assert names(second) == ["train/shard-00001-of-00004", "train/shard-00003-of-00004",
                           "validation/shard-00001-of-00003"]
  assert _mtimes(first) == before  # finished shards were not rewritten
  assert token_fixtures.make_tokens(tmp_path) == []  # nothing left to do
  for split in SPLITS:
    for got, want in zip(_all_clips(str(tmp_path), split), _all_clips(reference_root, split)):
      for key in want:
        np.testing.assert_array_equal(got[key], want[key])


def test_rerun_into_tokens_made_differently_is_refused(tokens):
  root, _ = tokens
  with pytest.raises(ValueError, match="made differently.*splits"):
    token_fixtures.make_tokens(root, clips_per_shard=4)


def _iterator(root, **kwargs):
  kwargs = {"batch_size": 4, "frames_per_example": 4, **kwargs}
  return token_pipeline.create_iterator(token_pipeline.default_config(), "train", seed=3,
                                        root=root, **kwargs)


def test_token_batches_are_deterministic_process_sharded_and_resumable(tokens):
  root, _ = tokens
  with _iterator(root) as it:
    batches = [next(it) for _ in range(5)]  # 20 rows: more than one epoch of 12 clips
    b = batches[0]
    assert b["codes"].shape == (4, 4, 4, 2, 2) and b["codes"].dtype == np.int32
    assert b["mel"].shape == (4, 16, 80) and b["episode"].shape == (4,)
    assert b["truth"].shape == (4, 4, 7) and b["mouth"].shape == (4, 4, 4, 2)
    state = it.get_state()
    after = next(it)
  # A window's codes, mel and truth come from the same frames of one clip.
  clips = _all_clips(root, "train")
  # (A random dVAE's codes of a small grid can repeat, so every window with these codes is a
  # candidate; one of them must match in mel, truth and mouth too.)
  candidates = [(i, t) for i, c in enumerate(clips) for t in range(5)
                if np.array_equal(c["codes"][t:t + 4], b["codes"][0])]
  assert candidates
  assert any(np.array_equal(clips[i]["mel"][4 * t0:4 * t0 + 16], b["mel"][0])
             and np.array_equal(clips[i]["truth"][t0:t0 + 4], b["truth"][0])
             and np.array_equal(clips[i]["mouth"][t0:t0 + 4], b["mouth"][0])
             for i, t0 in candidates), candidates
  with _iterator(root) as again:  # same seed: same batches
    for want in batches:
      jax.tree.map(np.testing.assert_array_equal, next(again), want)
  halves = [_iterator(root, process_index=p, process_count=2) for p in (0, 1)]
  for want in batches:
    rows = [next(h) for h in halves]
    for key in want:
      np.testing.assert_array_equal(np.concatenate([r[key] for r in rows]), want[key])
  for h in halves:
    h.close()
  with _iterator(root) as resumed:
    resumed.set_state(state)
    jax.tree.map(np.testing.assert_array_equal, next(resumed), after)


def test_distant_anchor_is_another_moment_of_the_windows_clip(tokens):
  """anchor_frame='distant': each train window carries the codes of one frame of its own clip
  outside the window; validation windows carry none."""
  root, _ = tokens
  clips = _all_clips(root, "train")
  with _iterator(root, anchor_frame="distant") as it:
    for _ in range(3):
      b = next(it)
      assert b["anchor"].shape == b["codes"][:, 0].shape and b["anchor"].dtype == np.int32
      for row in range(len(b["codes"])):
        window = [(c, t0) for c in clips for t0 in range(len(c["codes"]) - 3)
                  if np.array_equal(c["mel"][4 * t0:4 * t0 + 16], b["mel"][row])]
        assert window
        assert any(np.array_equal(c["codes"][a], b["anchor"][row])
                   for c, t0 in window for a in range(len(c["codes"])) if not t0 <= a < t0 + 4)
  with token_pipeline.create_iterator(
      {**token_pipeline.default_config(), "anchor_frame": "distant"}, "validation", seed=3,
      root=root, batch_size=2, frames_per_example=4) as it:
    assert "anchor" not in next(it)


def test_distant_frame_covers_every_frame_outside_the_window_and_only_those():
  picks = [token_pipeline.distant_frame(0, step, row, 10, 3, 4)
           for step in range(60) for row in range(4)]
  assert set(picks) == {0, 1, 2, 7, 8, 9}
  assert picks == [token_pipeline.distant_frame(0, step, row, 10, 3, 4)
                   for step in range(60) for row in range(4)]
  assert {token_pipeline.distant_frame(0, s, 0, 4, 0, 4) for s in range(40)} == {0, 1, 2, 3}
  with pytest.raises(errors.InvalidInput, match="anchor_frame"):
    token_pipeline.create_iterator({**token_pipeline.default_config(), "anchor_frame": "far"},
                                   "train", seed=0, root="/nonexistent")
