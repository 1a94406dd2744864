"""The metrics of DESIGN §6, as pure functions over probe readings, frames and code indices.

Readings are what `nwt_jax.probe.probe_predict` returns: a dict of per-frame float arrays keyed by
`synthetic.TRUTH_KEYS`, plus `episode_probs` [T, E] and `episode` [T].

- lipsync: `lipsync` (r at offset 0, best audio-video offset) and `shuffled_lipsync` (the control:
  each clip's mouth against another clip's audio truth, ~0).
- style control: `style_error` (probe camera/zoom vs a reference clip's truth) and
  `traversal_monotonicity` (along one latent dimension's mu - 2 sigma ... mu + 2 sigma).
- episode control: `episode_accuracy`, overall and in a window after each mid-video switch.
- reconstruction: `psnr`, `ssim` (dm-pix), `code_usage` (per-head usage and perplexity), and
  `mouth_recoverability` (the dVAE's mouth bar) with its probe-free pixel measure
  `mouth_area_ratio`.
"""

from collections.abc import Mapping, Sequence
import functools
import time

import numpy as np

from nwt_jax import synthetic
# pearson lives in probe.py (its quality gate needs it) and is part of this module's API too.
from nwt_jax.probe import TRUTH_RANGES, Probe, pearson, probe_predict

TRUTH_KEYS = synthetic.TRUTH_KEYS
STYLE_ERROR_KEYS = ("cam_x", "cam_y", "zoom")  # per-clip constants; tilt also sways


def truth_dict(truth: np.ndarray) -> dict[str, np.ndarray]:
  """Truth [T, 7] (TRUTH_KEYS order) -> {key: [T]}, the layout of probe readings."""
  truth = np.asarray(truth)
  return {key: truth[:, i] for i, key in enumerate(TRUTH_KEYS)}


def _as_list(seqs) -> list[np.ndarray]:
  """One sequence [T] or several (a list of [T_i], or [N, T]) -> a list of float arrays."""
  if np.ndim(seqs[0]) == 0:
    return [np.asarray(seqs, np.float64)]
  return [np.asarray(s, np.float64) for s in seqs]


# ----------------------------------------------------------------------------------------------
# Lipsync


def _shifted_pairs(preds: list[np.ndarray], truths: list[np.ndarray], offset: int):
  """(pred[t + offset], truth[t]) over every t valid in each clip, pooled over the clips."""
  p, t = [], []
  for pred, truth in zip(preds, truths):
    n = len(pred)
    lo, hi = max(0, -offset), min(n, n - offset)
    p.append(pred[lo + offset:hi + offset])
    t.append(truth[lo:hi])
  return np.concatenate(p), np.concatenate(t)


def lipsync(pred_mouth_open, true_mouth_open, *, max_offset: int = 5) -> dict:
  """Lipsync r of probe mouth_open on generated frames against the driving audio's truth.

  Takes one clip ([T] arrays) or lists of clips (pooled: pairs never cross a clip boundary).
  At offset k the pairs are (pred[t + k], truth[t]): k > 0 means the video lags the audio by k
  frames. Returns {'r': r at offset 0, 'best_offset': argmax over k in [-max_offset, max_offset]
  of r(k) (0 if every r is NaN), 'best_r': r there, 'offsets': [2K+1], 'r_by_offset': [2K+1]}.
  """
  preds, truths = _as_list(pred_mouth_open), _as_list(true_mouth_open)
  if len(preds) != len(truths) or any(len(p) != len(t) for p, t in zip(preds, truths)):
    raise ValueError("every predicted sequence needs a truth sequence of the same length")
  if min(len(p) for p in preds) <= max_offset:
    raise ValueError(f"clips must be longer than max_offset={max_offset} frames")
  offsets = np.arange(-max_offset, max_offset + 1)
  rs = np.array([pearson(*_shifted_pairs(preds, truths, int(k))) for k in offsets])
  # Ties (e.g. a linear ramp) go to the offset nearest 0; NaNs (constant signals) never win.
  nearest_first = np.argsort(np.abs(offsets), kind="stable")
  ranked = np.nan_to_num(np.round(rs[nearest_first], 12), nan=-np.inf)
  best = int(nearest_first[np.argmax(ranked)])
  return {"r": float(rs[max_offset]), "best_offset": int(offsets[best]),
          "best_r": float(rs[best]), "offsets": offsets, "r_by_offset": rs}


def shuffled_lipsync(pred_mouth_opens: Sequence[np.ndarray],
                     true_mouth_opens: Sequence[np.ndarray]) -> float:
  """The shuffled-audio control: clip i's predicted mouth_open against clip (i + 1) mod n's
  truth (cut to the shorter length), pooled r at offset 0. Near 0 when the video follows its
  own audio and nothing else. Needs at least two clips whose audio differs."""
  preds, truths = _as_list(pred_mouth_opens), _as_list(true_mouth_opens)
  if len(preds) != len(truths) or len(preds) < 2:
    raise ValueError("shuffled_lipsync needs two or more clips, each with its truth")
  p, t = [], []
  for i, pred in enumerate(preds):
    other = truths[(i + 1) % len(truths)]
    n = min(len(pred), len(other))
    p.append(pred[:n])
    t.append(other[:n])
  return pearson(np.concatenate(p), np.concatenate(t))


# ----------------------------------------------------------------------------------------------
# Style control


def style_error(readings: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], *,
                keys: Sequence[str] = STYLE_ERROR_KEYS) -> dict[str, float]:
  """Mean absolute error of per-frame readings against a reference clip's style.

  `reference` holds the reference clip's truth per key (e.g. `truth_dict(clip['truth'])`, or
  probe readings of the reference frames); its mean over frames is the target, so the videos may
  differ in length. Returns {key: error} and 'mean' (over keys).
  """
  errors = {key: float(np.mean(np.abs(np.asarray(readings[key], np.float64)
                                      - np.mean(reference[key])))) for key in keys}
  errors["mean"] = float(np.mean([errors[key] for key in keys]))
  return errors


def _ranks(x: np.ndarray) -> np.ndarray:
  """Ranks 0..n-1 with ties sharing their average rank."""
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x))
  for value in np.unique(x):
    tied = x == value
    ranks[tied] = ranks[tied].mean()
  return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman rank correlation (Pearson r of the ranks); NaN if either is constant."""
  return pearson(_ranks(np.asarray(x, np.float64)), _ranks(np.asarray(y, np.float64)))


def traversal_monotonicity(readings: Mapping[str, np.ndarray], *,
                           keys: Sequence[str] = TRUTH_KEYS) -> dict:
  """How monotonically each truth key follows a traversal of one latent dimension.

  `readings[key]` is [S] or [S, T]: probe readings at S increasing latent values (mu - 2 sigma
  ... mu + 2 sigma), T frames each (averaged). Returns per key: 'spearman' (rank correlation with
  the step index; 1 or -1 when monotone, NaN when constant), 'monotone_fraction' (the larger of
  the fractions of steps that rise and that fall) and 'span' (max - min of the reading over the
  key's full range, TRUTH_RANGES); and 'controls', the key with the largest span (the one this
  latent dimension moves most), with 'controls_spearman'.
  """
  spearmans, fractions, spans = {}, {}, {}
  for key in keys:
    values = np.asarray(readings[key], np.float64)
    values = values.mean(axis=tuple(range(1, values.ndim))) if values.ndim > 1 else values
    steps = np.diff(values)
    spearmans[key] = spearman(np.arange(len(values)), values)
    fractions[key] = float(max(np.mean(steps > 0), np.mean(steps < 0)))
    lo, hi = TRUTH_RANGES[TRUTH_KEYS.index(key)]
    spans[key] = float((values.max() - values.min()) / (hi - lo))
  controls = max(keys, key=lambda k: spans[k])
  return {"spearman": spearmans, "monotone_fraction": fractions, "span": spans,
          "controls": controls, "controls_spearman": spearmans[controls]}


# ----------------------------------------------------------------------------------------------
# Episode control


def episode_accuracy(predicted: np.ndarray, requested: np.ndarray, *,
                     window: int = synthetic.FPS) -> dict:
  """Probe episode accuracy against the requested per-frame episode ids of one video.

  `predicted` is episode probabilities [T, E] or ids [T]. 'after_switch_accuracy' covers the
  `window` frames from each frame whose requested episode differs from the previous frame's (cut
  at the next switch); NaN when the video has no switch. Returns {'accuracy',
  'after_switch_accuracy', 'num_switches'}.
  """
  predicted, requested = np.asarray(predicted), np.asarray(requested)
  ids = predicted.argmax(axis=-1) if predicted.ndim == 2 else predicted
  if ids.shape != requested.shape:
    raise ValueError(f"predicted {ids.shape} and requested {requested.shape} frames differ")
  correct = ids == requested
  switches = np.flatnonzero(requested[1:] != requested[:-1]) + 1
  in_window = np.zeros(len(requested), bool)
  for start, end in zip(switches, np.append(switches[1:], len(requested))):
    in_window[start:min(start + window, end)] = True
  after = float(correct[in_window].mean()) if in_window.any() else float("nan")
  return {"accuracy": float(correct.mean()), "after_switch_accuracy": after,
          "num_switches": int(len(switches))}


# ----------------------------------------------------------------------------------------------
# Reconstruction


def _unit_range(frames: np.ndarray) -> np.ndarray:
  """uint8 [0, 255] or float [-1, 1] frames [..., H, W, 3] -> float32 [N, H, W, 3] in [0, 1]."""
  frames = np.asarray(frames)
  if frames.dtype == np.uint8:
    unit = frames.astype(np.float32) / 255.0
  elif np.issubdtype(frames.dtype, np.floating):
    unit = (frames.astype(np.float32) + 1.0) / 2.0
  else:
    raise ValueError(f"frames must be uint8 or float in [-1, 1], got {frames.dtype}")
  return unit.reshape((-1,) + unit.shape[-3:])


def psnr(originals: np.ndarray, reconstructions: np.ndarray) -> float:
  """Mean per-frame PSNR in dB (dm-pix, peak 1 after mapping to [0, 1]).

  Each input is uint8 [..., H, W, 3] in [0, 255] or float [..., H, W, 3] in [-1, 1] (the models'
  range), judged by its dtype. Identical frames have infinite PSNR, so the mean is +inf then.
  """
  import dm_pix  # lazily: GPU machines lack it

  return float(np.mean(np.asarray(
      dm_pix.psnr(_unit_range(originals), _unit_range(reconstructions)))))


def ssim(originals: np.ndarray, reconstructions: np.ndarray) -> float:
  """Mean per-frame SSIM (dm-pix defaults: 11-tap Gaussian window, sigma 1.5, k1 0.01, k2 0.03,
  peak 1 after mapping to [0, 1]); inputs as for `psnr`. 1.0 for identical frames."""
  import dm_pix  # lazily: GPU machines lack it

  return float(np.mean(np.asarray(
      dm_pix.ssim(_unit_range(originals), _unit_range(reconstructions), max_val=1.0))))


def code_usage(indices: np.ndarray, num_codes: int) -> dict[str, np.ndarray]:
  """Per-head code usage from Memcodes indices [..., heads] (int, in [0, num_codes)).

  Returns 'usage' [heads] (fraction of the num_codes codes used at least once) and 'perplexity'
  [heads] (exp of the entropy of the empirical code distribution: k when k codes are used
  equally often, 1 when one code is used), as `memcodes.usage_stats` defines them.
  """
  indices = np.asarray(indices)
  flat = indices.reshape(-1, indices.shape[-1])
  if flat.size and (flat.min() < 0 or flat.max() >= num_codes):
    raise ValueError(f"indices must be in [0, {num_codes})")
  counts = np.stack([np.bincount(flat[:, h], minlength=num_codes) for h in range(flat.shape[1])])
  probs = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  entropy = -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0), axis=1)
  return {"usage": (counts > 0).mean(axis=1), "perplexity": np.exp(entropy)}


def _darkness(frames: np.ndarray) -> np.ndarray:
  """Per pixel, 0 for skin and 1 for the mouth's colour (by luma), clipped to [0, 1]."""
  luma = lambda rgb: rgb @ np.array([0.299, 0.587, 0.114])
  skin, mouth = luma(synthetic.SKIN), luma(synthetic.MOUTH)
  return np.clip((skin - luma(frames.astype(np.float64) / 255.0)) / (skin - mouth), 0.0, 1.0)


def mouth_area_ratio(frames: np.ndarray, truth: np.ndarray, episode) -> np.ndarray:
  """A probe-free mouth-opening measure for frames whose truth is known (reconstructions).

  The mouth region is where the frame drawn from `truth` with the mouth fully open differs from
  it drawn with the mouth closed, grown by one pixel (for blur and the closed lips' line). The
  measure is the frame's darkness (0 skin, 1 mouth colour) summed over the region, divided by the
  fully open mouth's: linear in mouth_open (about 0.1 closed, 1.0 fully open) at any width, zoom
  or tilt. frames uint8 [T, H, W, 3], truth [T, 7], episode int or int [T] -> float [T].
  """
  frames = np.asarray(frames)
  size = frames.shape[1:3]
  drawn = {}
  for mouth_open in (0.0, 1.0):
    edited = np.array(truth, np.float32)
    edited[:, TRUTH_KEYS.index("mouth_open")] = mouth_open
    drawn[mouth_open] = synthetic.render_frames(edited, episode, *size)
  changed = np.any(drawn[0.0] != drawn[1.0], axis=-1)
  region = changed.copy()
  for axis in (1, 2):  # grow by one pixel (the mouth never reaches the frame's edge)
    for shift in (-1, 1):
      region |= np.roll(changed, shift, axis=axis)
  open_darkness = (_darkness(drawn[1.0]) * region).sum(axis=(1, 2))
  return (_darkness(frames) * region).sum(axis=(1, 2)) / np.maximum(open_darkness, 1e-9)


def mouth_recoverability(frames: np.ndarray, truth: np.ndarray, episode, *,
                         probe: Probe | None = None) -> float:
  """Pearson r between truth mouth_open and the mouth read from frames (reconstructions of the
  frames that `truth` describes): by the probe when given, else by `mouth_area_ratio`."""
  truth = np.asarray(truth)
  if probe is not None:
    measured = probe_predict(probe, np.asarray(frames))["mouth_open"]
  else:
    measured = mouth_area_ratio(frames, truth, episode)
  return pearson(measured, truth[:, TRUTH_KEYS.index("mouth_open")])


# ----------------------------------------------------------------------------------------------
# The evaluation job: `python -m nwt_jax.evaluate` (and the demo's evaluate stage)


def heldout_clips(num_clips: int, num_frames: int, height: int, width: int,
                  num_episodes: int = synthetic.NUM_EPISODES, first: int = 0) -> list[dict]:
  """Validation-split synthetic clips first .. first + num_clips - 1 (seeds no training batch
  uses), `num_frames` long."""
  from nwt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return [synthetic.make_clip(input_pipeline.synthetic_clip_seed("validation", i),
                              num_frames=num_frames, height=height, width=width,
                              num_episodes=num_episodes)
          for i in range(first, first + num_clips)]


def _readings(probe: Probe, frames: np.ndarray) -> list[dict[str, np.ndarray]]:
  """Probe readings of each stream of frames [B, T, H, W, 3]."""
  flat = probe_predict(probe, frames.reshape((-1,) + frames.shape[2:]))
  batch, num_frames = frames.shape[:2]
  return [{k: v.reshape((batch, num_frames) + v.shape[1:])[i] for k, v in flat.items()}
          for i in range(batch)]


def _mean_style_error(readings, clips) -> float:
  return float(np.mean([style_error(r, truth_dict(c["truth"]))["mean"]
                        for r, c in zip(readings, clips)]))


def evaluate_generation(models, probe: Probe, clips: list[dict], *, seed: int = 0,
                        options=None, opening: str = "bank", independent_windows: bool = False,
                        log=print) -> tuple[dict, dict]:
  """DESIGN §6's generation metrics on held-out clips: lipsync (with the shuffled-audio control
  and the best offset), style control (copied vs random style, traversal monotonicity), episode
  control (also after a mid-video switch). With `independent_windows`, also the lipsync of the
  copied-style videos with every window drawn afresh (no prompt from the previous window; the
  video jumps at each window's start): against `lipsync_r`, what continuing its own frames
  gains or loses. Returns (metrics, samples): samples holds the generated frames and their
  requests, for the demo's report. `opening`: the generator's (`nwt_jax.generate.Generator`)."""
  from nwt_jax import generate  # pylint: disable=g-import-not-at-top
  from nwt_jax import sampling  # pylint: disable=g-import-not-at-top
  options = options or sampling.SamplingOptions()
  n, num_episodes = len(clips), models.prior.num_episodes
  mels = np.stack([generate.audio_features(c["audio"].astype(np.float32) / 32768.0)[0]
                   for c in clips])
  num_frames = mels.shape[1] // generate.MEL_PER_FRAME
  own_episode = np.stack([np.full(num_frames, c["episode"], np.int32) for c in clips])
  copied_z = np.stack([generate.reference_style(models, c["video"]) for c in clips])
  random_z = np.random.default_rng([seed, 0x2A]).standard_normal(copied_z.shape).astype(
      np.float32)
  gen = generate.Generator(models, options, batch=n, opening=opening)

  def run(z, episodes, what, generator=gen):
    t0 = time.perf_counter()
    frames = generator.frames(generator.codes(mels, episodes, z, seed), episodes)
    log(f"evaluate: {what}: {n} x {num_frames} frames in {time.perf_counter() - t0:.1f}s")
    return frames

  copied = run(copied_z, own_episode, "copied style")
  randomized = run(random_z, own_episode, "random style")
  # Episode switch at half time, to another episode for every clip.
  switched_episode = own_episode.copy()
  for i in range(n):
    # Always another episode: an offset in 1 .. num_episodes - 1.
    offset = 1 + i % (num_episodes - 1)
    switched_episode[i, num_frames // 2:] = (clips[i]["episode"] + offset) % num_episodes
  switched = run(copied_z, switched_episode, "episode switch")

  copied_r, random_r, switched_r = (_readings(probe, f) for f in (copied, randomized, switched))
  true_mouth = [c["truth"][:, TRUTH_KEYS.index("mouth_open")] for c in clips]
  sync = lipsync([r["mouth_open"] for r in copied_r], true_mouth)
  episodes = [episode_accuracy(r["episode_probs"], e) for r, e in zip(copied_r, own_episode)]
  switches = [episode_accuracy(r["episode_probs"], e)
              for r, e in zip(switched_r, switched_episode)]

  # Traversals of every style dimension around the mean copied z, one window of one clip.
  window = min(num_frames, models.window_frames)
  base = copied_z.mean(axis=0)
  zs = np.concatenate([generate.traversal_latents(base, d) for d in range(base.shape[0])])
  steps = len(generate.TRAVERSE_STEPS)
  trav_gen = generate.Generator(models, options, batch=len(zs), opening=opening)
  trav_mel, trav_episode = mels[0, :generate.MEL_PER_FRAME * window], own_episode[0, :window]
  trav_frames = trav_gen.frames(trav_gen.codes(trav_mel, trav_episode, zs, seed), trav_episode)
  trav_r = _readings(probe, trav_frames)
  traversals = []
  for d in range(base.shape[0]):
    readings = {k: np.stack([trav_r[d * steps + s][k] for s in range(steps)])
                for k in TRUTH_KEYS}
    traversals.append(traversal_monotonicity(readings, keys=STYLE_ERROR_KEYS + ("tilt",)))
  best_dim = int(np.argmax([t["span"][t["controls"]] for t in traversals]))

  metrics = {
      "lipsync_r": sync["r"], "lipsync_best_offset": sync["best_offset"],
      "lipsync_shuffled_r": shuffled_lipsync([r["mouth_open"] for r in copied_r], true_mouth),
      "lipsync_r_random_style": lipsync([r["mouth_open"] for r in random_r], true_mouth)["r"],
      "style_error_copied": _mean_style_error(copied_r, clips),
      "style_error_random": _mean_style_error(random_r, clips),
      "episode_accuracy": float(np.mean([e["accuracy"] for e in episodes])),
      "episode_accuracy_switched": float(np.mean([e["accuracy"] for e in switches])),
      "episode_accuracy_after_switch": float(np.mean([e["after_switch_accuracy"]
                                                      for e in switches])),
      "traversal_best_dim": best_dim,
      "traversal_best_controls": traversals[best_dim]["controls"],
      "traversal_best_spearman": traversals[best_dim]["controls_spearman"],
      "traversal_best_span": traversals[best_dim]["span"][traversals[best_dim]["controls"]],
      "traversal_mean_abs_spearman": float(np.nanmean(
          [abs(t["controls_spearman"]) for t in traversals])),
      "num_clips": n, "num_frames": num_frames,
  }
  if independent_windows:
    fresh = run(copied_z, own_episode, "copied style, independent windows",
                generate.Generator(models, options, batch=n, overlap=0, opening=opening))
    metrics["lipsync_r_independent_windows"] = lipsync(
        [r["mouth_open"] for r in _readings(probe, fresh)], true_mouth)["r"]
  samples = {"copied": copied, "random": randomized, "switched": switched,
             "switched_episode": switched_episode, "own_episode": own_episode,
             "traversal": trav_frames[best_dim * steps:(best_dim + 1) * steps],
             "traversal_episode": trav_episode, "mels": mels}
  return metrics, samples


def evaluate_reconstruction(models, clips: list[dict], *, probe: Probe | None = None) -> dict:
  """dVAE metrics on held-out clips: PSNR/SSIM, per-head code usage, mouth recoverability."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dvae, params = models.dvae, models.dvae_params

  from nwt_jax import compile_options  # pylint: disable=g-import-not-at-top

  @functools.partial(jax.jit, compiler_options=compile_options.dvae())
  def roundtrip(frames, episode):
    indices = dvae.apply({"params": params}, frames, method=dvae.encode)
    return indices, dvae.apply({"params": params}, indices, episode, method=dvae.decode)

  indices, recon = [], []
  for clip in clips:
    i, r = roundtrip(jnp.asarray(clip["video"]), jnp.full(len(clip["video"]), clip["episode"]))
    indices.append(np.asarray(i))
    recon.append(np.round((np.clip(np.asarray(r), -1, 1) + 1) * 127.5).astype(np.uint8))
  originals = np.concatenate([c["video"] for c in clips])
  recon = np.stack(recon)
  usage = code_usage(np.concatenate(indices), dvae.num_codes)
  if probe is not None:
    mouth = _readings(probe, recon)
    measured = np.concatenate([m["mouth_open"] for m in mouth])
  else:
    measured = np.concatenate([mouth_area_ratio(r, c["truth"], c["episode"])
                               for r, c in zip(recon, clips)])
  true_mouth = np.concatenate([c["truth"][:, TRUTH_KEYS.index("mouth_open")] for c in clips])
  return {"psnr": psnr(originals, recon.reshape(originals.shape)),
          "ssim": ssim(originals, recon.reshape(originals.shape)),
          "code_usage_min": float(usage["usage"].min()),
          "code_usage_mean": float(usage["usage"].mean()),
          "code_perplexity_mean": float(usage["perplexity"].mean()),
          "mouth_recoverability_r": pearson(measured, true_mouth)}, recon


def load_or_train_probe(path: str, height: int, width: int, *, log=print) -> Probe:
  """The probe saved at `path`, or a new one trained (about a minute), checked and saved there.
  Raises UntrustedProbeError if it misses its quality bar."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from nwt_jax import probe as probe_lib  # pylint: disable=g-import-not-at-top
  if path and epath.Path(path).exists():
    probe = probe_lib.load_probe(path)
  else:
    probe = probe_lib.train_probe(height=height, width=width, log=log)
  quality = probe_lib.require_trusted(probe)
  log("probe: held-out r " + ", ".join(f"{k} {v:.3f}" for k, v in quality["r"].items())
      + f"; episode accuracy {quality['episode_accuracy']:.3f}")
  if path and not epath.Path(path).exists():
    probe_lib.save_probe(probe, path)
  return probe


def main(argv):
  import json  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from nwt_jax import generate  # pylint: disable=g-import-not-at-top
  from nwt_jax import host_malloc  # pylint: disable=g-import-not-at-top
  from nwt_jax import probe as probe_lib  # pylint: disable=g-import-not-at-top
  from nwt_jax import sampling  # pylint: disable=g-import-not-at-top
  del argv
  host_malloc.tune_for_cpu()
  f = flags.FLAGS
  try:
    models = generate.load_models(f.dvae_workdir, f.prior_workdir)
    height, width = models.frame_size
    probe = load_or_train_probe(f.probe, height, width)
    clips = heldout_clips(f.num_clips, f.num_frames, height, width, models.prior.num_episodes,
                          first=f.first_clip)
    metrics, _ = evaluate_reconstruction(models, clips, probe=probe)
    generation, _ = evaluate_generation(
        models, probe, clips, seed=f.seed,
        options=sampling.SamplingOptions(f.temperature, f.top_k, f.top_p, f.audio_guidance,
                                         f.change_threshold),
        opening=f.opening, independent_windows=f.independent_windows)
  except (generate.GenerateError, probe_lib.UntrustedProbeError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  metrics.update(generation)
  text = json.dumps(metrics, indent=2, default=float)
  print(text)
  if f.output:
    from etils import epath  # pylint: disable=g-import-not-at-top
    epath.Path(f.output).write_text(text + "\n")


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("dvae_workdir", None, "Workdir of the trained dVAE.")
  flags.DEFINE_string("prior_workdir", None, "Workdir of the prior trained on its codes.")
  flags.DEFINE_string("probe", "", "Probe .npz (trained and saved there if missing; '' = train).")
  flags.DEFINE_integer("num_clips", 16, "Held-out synthetic clips.")
  flags.DEFINE_integer("first_clip", 0, "Index of the first one in the validation split (the "
                       "demo evaluates 0..15; tune sampling settings on others).")
  flags.DEFINE_integer("num_frames", 64, "Frames per held-out clip (longer than a window).")
  flags.DEFINE_bool("independent_windows", False, "Also report lipsync_r_independent_windows: "
                    "the copied-style videos with every window drawn afresh.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
  flags.DEFINE_integer("top_k", 0, "Top-k cut (0: none).")
  flags.DEFINE_float("top_p", 1.0, "Nucleus mass (1: none).")
  flags.DEFINE_float("audio_guidance", 1.0, "Classifier-free audio guidance weight (1: off).")
  flags.DEFINE_float("change_threshold", 0.0, "FAR: a code keeps the previous frame's unless "
                     "P(change) is above this (0: plain sampling).")
  flags.DEFINE_enum("opening", "bank", ["bank", "sample"], "A FAR prior's first frame: from "
                    "the prior's frame bank (if it has one) or drawn.")
  flags.DEFINE_string("output", "", "Also write the metrics JSON here.")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
