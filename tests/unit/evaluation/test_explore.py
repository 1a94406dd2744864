"""The Memcodes explorer's numbers: swaps (a self-swap is bitwise the same; a swap reaches only
the decoder's receptive field, but for GroupNorm's statistics), the scores against planted codes,
and, on the synthetic world, the audio cells against the truth's mouth."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nwt_jax.evaluation import explore
from nwt_jax.evaluation import jobs
from nwt_jax.models import dvae as dvae_lib

# A random-init dVAE of the `tiny` layout (x4: 64x56 frames -> a 16x14 grid), small widths.
SMALL = dict(channels=(8, 16, 32), res_blocks=(0, 1, 1), dim=32, num_codes=16, heads=4,
             num_episodes=4, episode_dim=16, norm_groups=4)


@functools.lru_cache(maxsize=None)
def _dvae():
  model = dvae_lib.DVAE(**SMALL)
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0, impl="rbg"), jnp.zeros((1, 64, 56, 3), jnp.uint8),
      jnp.zeros((1,), jnp.int32))
  return model, nn.unbox(variables["params"])


def _codes(frames=3, seed=0):
  return np.random.default_rng(seed).integers(0, SMALL["num_codes"], (frames, 16, 14, 4))


def test_swapping_a_code_to_itself_is_bitwise_identical():
  model, params = _dvae()
  codes = _codes()
  head, code = 2, int(codes[0, 5, 5, 2])
  edit = explore.swap(model, params, codes, np.zeros(3, np.int32), head=head, old=code, new=code)
  assert edit["changed"].sum() > 0  # it did replace cells (by the same code)
  np.testing.assert_array_equal(edit["codes"], codes)
  assert np.array_equal(edit["edited"], edit["original"])  # bitwise, float32
  assert edit["change"].max() == 0.0


def test_a_swap_changes_only_pixels_within_the_decoders_reach():
  model, params = _dvae()
  codes = _codes(frames=2)
  cells = np.zeros((16, 14), bool)
  cells[8, 7] = True
  old = codes[:, 8, 7, 1]
  codes[:, 8, 7, 1] = 3  # one code in one cell of every frame, swapped 3 -> 9
  edit = explore.swap(model, params, codes, np.ones(2, np.int32), head=1, old=3, new=9,
                      cells=cells)
  assert edit["changed"].sum() == 2 and np.all(old >= 0)
  radius = explore.receptive_radius(model)
  # Stem (4) + level-2 and level-1 ResBlocks (2*4 + 2*2) + two upsamples (4 + 2) + output (1).
  assert radius == 23
  reach = explore.within_reach(cells, model.downsample_factor, radius)
  diff = np.abs(edit["edited"] - edit["original"]).max(axis=-1)  # [T, H, W]
  inside, outside = diff[:, reach].max(), diff[:, ~reach].max()
  assert inside > 0.05, inside
  # Outside the convolutions' reach only GroupNorm's per-frame mean and variance carry the
  # change: a small shift, far below the change inside (measured: 0.021 x; a reach of 15 px
  # instead of 23 would leave 0.067 x outside).
  assert outside < 0.03 * inside, (inside, outside)
  # The cell itself changes most.
  top = np.unravel_index(np.argmax(diff.max(axis=0)), diff.shape[1:])
  assert 8 * 4 - radius <= top[0] < 9 * 4 + radius and 7 * 4 - radius <= top[1] < 8 * 4 + radius


def _planted(num_clips=8, num_frames=40, seed=0):
  """Codes [N, T, 4, 3, 2] of 4 codes, loudness [N, T]: head 0 of cell (1, 2) is code 3 when
  the clip is loud (else 0); head 1 of every cell is code 1 in loud clips (a clip-level
  confound: it follows the clip's mean loudness, not the frame's), else 2; the rest random."""
  rng = np.random.default_rng(seed)
  loud = rng.uniform(0, 1, (num_clips, num_frames)) + np.arange(num_clips)[:, None] % 2
  codes = rng.integers(0, 4, (num_clips, num_frames, 4, 3, 2))
  above = loud > np.median(loud, axis=1, keepdims=True)
  codes[:, :, 1, 2, 0] = np.where(above, 3, 0)
  codes[..., 1] = np.where((np.arange(num_clips) % 2 == 1)[:, None, None, None], 1, 2)
  return codes, loud


def test_audio_scores_find_the_planted_cell_and_code_and_ignore_a_clip_level_confound():
  codes, loud = _planted()
  r = explore.indicator_r(codes, loud, 4)
  assert r.shape == (4, 3, 2, 4)
  assert r[1, 2, 0, 3] > 0.8 and r[1, 2, 0, 0] < -0.8, r[1, 2, 0]
  # Head 1 follows the clips' mean loudness only: within clips it never varies, so r is 0.
  assert np.all(r[..., 1, :] == 0)
  eta = explore.cell_eta2(codes, loud, 4)  # [4, 3, 2]
  assert eta[1, 2, 0] > 0.5 and eta[1, 2, 1] == 0.0  # the confound explains nothing in-clip
  assert np.all(np.delete(eta[..., 0].ravel(), 5) < 0.05)  # chance alone: about 0
  found = explore.audio_following(codes, loud, 4)
  expected = np.zeros((4, 3), bool)
  expected[1, 2] = True
  np.testing.assert_array_equal(found["cells"], expected)
  assert explore.iou(found["cells"], expected) == 1.0
  assert found["top"][0][:2] in [(0, 3), (0, 0)] and abs(found["top"][0][2]) > 0.8


def test_episode_and_style_scores():
  codes, _ = _planted()
  episodes = np.repeat((np.arange(8) % 2)[:, None], codes.shape[1], axis=1)  # = the confound
  scores = explore.episode_scores(codes, episodes, 4)
  assert scores["top"][0][0] == 1 and scores["top"][0][2] > 0.99  # head 1 is the episode
  np.testing.assert_allclose(explore.eta_squared(np.array([[0.], [0.], [1.], [1.]]),
                                                 np.array([0, 0, 1, 1])), [1.0])
  style = np.stack([np.arange(8) % 2, np.linspace(-1, 1, 8)], axis=1)  # [N, D]
  out = explore.style_scores(codes, style, 4)
  assert out["r"].shape == (2, 2, 4)
  assert out["top"][0][0][0] == 1 and abs(out["top"][0][0][2]) > 0.99


def test_usage_ranking_maps_and_patches():
  codes = np.zeros((1, 4, 2, 2, 1), np.int64)
  codes[0, :3, 0, 0, 0] = 2  # cell (0, 0) uses code 2 in 3 of 4 frames
  use = explore.counts(codes, 3)
  np.testing.assert_array_equal(use, [[13, 0, 3]])
  assert explore.ranked(use)[0].tolist() == [0, 2]
  top, share = explore.dominant(codes, 3)
  assert top[0, 0, 0] == 2 and share[0, 0, 0] == 0.75 and share[1, 1, 0] == 1.0
  frames = np.zeros((1, 4, 8, 8, 3), np.uint8)
  frames[0, :, :4, :4] = 200  # cell (0, 0)'s pixels (x4)
  patches = explore.mean_patches(codes, frames, 0, np.array([2, 1]), factor=4)
  assert patches.shape == (2, 4, 4, 3) and np.all(patches[0] == 200) and np.all(patches[1] == 0)


def test_on_the_synthetic_world_the_audio_cells_sit_on_the_mouth():
  # A stand-in for a trained dVAE that is known to code what it sees: each cell's mean colour,
  # one head per channel, quantised to 16 levels. The audio-following cells it yields (found
  # without truth) must overlap the truth's mouth cells.
  clips = jobs.heldout_clips(16, 48, 64, 56)
  videos = np.stack([c["video"] for c in clips]).astype(np.float64)  # [N, T, 64, 56, 3]
  cells = videos.reshape(16, 48, 16, 4, 14, 4, 3).mean(axis=(3, 5))  # [N, T, 16, 14, 3]
  codes = np.minimum(cells // 16, 15).astype(np.int64)
  loud = np.stack([explore.loudness(c["audio"], 48) for c in clips])
  found = explore.audio_following(codes, loud, 16)
  mouth = explore.mouth_cells(clips, (16, 14))
  assert 2 <= mouth.sum() <= 20, mouth.sum()
  iou = explore.iou(found["cells"], mouth)
  assert iou >= 0.5, (iou, found["cells"].astype(int), mouth.astype(int))


def test_within_reach_and_loudness():
  cells = np.zeros((3, 3), bool)
  cells[1, 1] = True
  reach = explore.within_reach(cells, 2, 1)
  assert reach.sum() == 16 and reach[1:5, 1:5].all()
  audio = np.concatenate([np.zeros(800), np.full(800, 16384)]).astype(np.int16)
  np.testing.assert_allclose(explore.loudness(audio, 2), [0.0, 0.5])
