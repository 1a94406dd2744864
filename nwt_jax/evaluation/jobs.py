"""The evaluation jobs: generate from held-out synthetic clips and score the videos with the probe
(`evaluate_generation`), and score the dVAE's reconstructions (`evaluate_reconstruction`)."""

import functools
import time

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from nwt_jax.data import audio as audio_lib
from nwt_jax.data import constants
from nwt_jax.data import input_pipeline
from nwt_jax.data import synthetic
from nwt_jax.evaluation import metrics as m
from nwt_jax.evaluation import probe as probe_lib
from nwt_jax.inference import controls
from nwt_jax.inference import sampling
from nwt_jax.inference.generator import Generator
from nwt_jax.models import dvae as dvae_lib
from nwt_jax.runtime import compile_options

TRUTH_KEYS = synthetic.TRUTH_KEYS
INTEGRITY_CAP_DB = 60.0  # per frame


def heldout_clips(num_clips: int, num_frames: int, height: int, width: int,
                  num_episodes: int = synthetic.NUM_EPISODES, first: int = 0) -> list[dict]:
  """Validation-split synthetic clips first .. first + num_clips - 1 (seeds no training batch
  uses), `num_frames` long."""
  return [synthetic.make_clip(input_pipeline.synthetic_clip_seed("validation", i),
                              num_frames=num_frames, height=height, width=width,
                              num_episodes=num_episodes)
          for i in range(first, first + num_clips)]


def _readings(probe: probe_lib.Probe, frames: np.ndarray) -> list[dict[str, np.ndarray]]:
  """Probe readings of each stream of frames [B, T, H, W, 3]."""
  flat = probe_lib.probe_predict(probe, frames.reshape((-1,) + frames.shape[2:]))
  batch, num_frames = frames.shape[:2]
  return [{k: v.reshape((batch, num_frames) + v.shape[1:])[i] for k, v in flat.items()}
          for i in range(batch)]


def _integrity(frames: np.ndarray, readings: list[dict[str, np.ndarray]]
               ) -> tuple[float, list[float]]:
  """Frame integrity of streams [B, T, H, W, 3] from their probe readings: (mean PSNR, per
  second), each frame's PSNR capped at INTEGRITY_CAP_DB (a frame the renderer redraws exactly
  would be +inf)."""
  psnr = np.stack([m.integrity_psnr(f, r) for f, r in zip(frames, readings)])  # [B, T]
  psnr = np.minimum(psnr, INTEGRITY_CAP_DB)
  return float(psnr.mean()), m.per_second(psnr)


def _mean_style_error(readings, clips) -> float:
  return float(np.mean([m.style_error(r, m.truth_dict(c["truth"]))["mean"]
                        for r, c in zip(readings, clips)]))


def evaluate_generation(models, probe: probe_lib.Probe, clips: list[dict], *, seed: int = 0,
                        options=None, opening: str = "bank", independent_windows: bool = False,
                        traverse_dims: int = 0,
                        log=print) -> tuple[dict, dict]:
  """The generation metrics on held-out clips: lipsync (with the shuffled-audio control
  and the best offset), style control (copied vs random style, traversal monotonicity), episode
  control (also after a mid-video switch). With `independent_windows`, also the lipsync of the
  copied-style videos with every window drawn afresh (no prompt from the previous window; the
  video jumps at each window's start): against `lipsync_r`, what continuing its own frames
  gains or loses. `traverse_dims` > 0 traverses only the style latent's first dimensions (a MAR
  prior draws each traversal stream code by code). Returns (metrics, samples): samples holds the
  generated frames and their requests, the lipsync curve by offset with its shuffled control and
  the probe's mouth readings, for the report (`nwt_jax.evaluation.report.measure`). `opening`:
  the `Generator`'s."""
  options = options or sampling.SamplingOptions()
  n, num_episodes = len(clips), models.prior.num_episodes
  mels = np.stack([audio_lib.frame_features(c["audio"].astype(np.float32) / 32768.0)[0]
                   for c in clips])
  num_frames = mels.shape[1] // constants.MEL_PER_FRAME
  own_episode = np.stack([np.full(num_frames, c["episode"], np.int32) for c in clips])
  copied_z = np.stack([controls.reference_style(models, c["video"]) for c in clips])
  random_z = np.random.default_rng([seed, 0x2A]).standard_normal(copied_z.shape).astype(
      np.float32)
  gen = Generator(models, options, batch=n, opening=opening)

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
  integrity, integrity_by_second = _integrity(copied, copied_r)
  true_mouth = [c["truth"][:, TRUTH_KEYS.index("mouth_open")] for c in clips]
  sync = m.lipsync([r["mouth_open"] for r in copied_r], true_mouth)
  episodes = [m.episode_accuracy(r["episode_probs"], e) for r, e in zip(copied_r, own_episode)]
  switches = [m.episode_accuracy(r["episode_probs"], e)
              for r, e in zip(switched_r, switched_episode)]

  # Traversals of every style dimension around the mean copied z, one window of one clip.
  window = min(num_frames, models.window_frames)
  base = copied_z.mean(axis=0)
  dims = range(min(traverse_dims or base.shape[0], base.shape[0]))
  zs = np.concatenate([controls.traversal_latents(base, d) for d in dims])
  steps = len(controls.TRAVERSE_STEPS)
  trav_gen = Generator(models, options, batch=len(zs), opening=opening)
  trav_mel = mels[0, :constants.MEL_PER_FRAME * window]
  trav_episode = own_episode[0, :window]
  trav_frames = trav_gen.frames(trav_gen.codes(trav_mel, trav_episode, zs, seed), trav_episode)
  trav_r = _readings(probe, trav_frames)
  traversals = []
  for d in dims:
    readings = {k: np.stack([trav_r[d * steps + s][k] for s in range(steps)])
                for k in TRUTH_KEYS}
    traversals.append(m.traversal_monotonicity(readings, keys=m.STYLE_ERROR_KEYS + ("tilt",)))
  best_dim = int(np.argmax([t["span"][t["controls"]] for t in traversals]))

  metrics = {
      "lipsync_r": sync["r"], "lipsync_best_offset": sync["best_offset"],
      "lipsync_shuffled_r": m.shuffled_lipsync([r["mouth_open"] for r in copied_r], true_mouth),
      "lipsync_r_random_style": m.lipsync([r["mouth_open"] for r in random_r], true_mouth)["r"],
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
      "integrity_psnr": integrity, "integrity_psnr_by_second": integrity_by_second,
      "num_clips": n, "num_frames": num_frames,
  }
  if independent_windows:
    fresh = run(copied_z, own_episode, "copied style, independent windows",
                Generator(models, options, batch=n, overlap=0, opening=opening))
    metrics["lipsync_r_independent_windows"] = m.lipsync(
        [r["mouth_open"] for r in _readings(probe, fresh)], true_mouth)["r"]
  samples = {"copied": copied, "random": randomized, "switched": switched,
             "switched_episode": switched_episode, "own_episode": own_episode,
             "traversal": trav_frames[best_dim * steps:(best_dim + 1) * steps],
             "traversal_episode": trav_episode, "mels": mels,
             # The lipsync curve r(offset) and its shuffled-audio control (each clip's reading
             # against the next clip's truth, at every offset), and the readings themselves.
             "lipsync_offsets": sync["offsets"], "lipsync_r_by_offset": sync["r_by_offset"],
             "lipsync_shuffled_r_by_offset": m.lipsync(
                 [r["mouth_open"] for r in copied_r],
                 true_mouth[1:] + true_mouth[:1])["r_by_offset"],
             "mouth_read": np.stack([r["mouth_open"] for r in copied_r]),
             "mouth_true": np.stack(true_mouth)}
  return metrics, samples


def dvae_roundtrip(models, clips: list[dict]) -> tuple[np.ndarray, np.ndarray]:
  """The dVAE's codes int32 [N, T, gh, gw, K] and reconstructions uint8 [N, T, H, W, 3] of
  clips of equal length (each decoded with its own episode)."""
  dvae, params = models.dvae, models.dvae_params

  @functools.partial(jax.jit, compiler_options=compile_options.dvae())
  def roundtrip(frames, episode):
    indices = dvae.apply({"params": params}, frames, method=dvae.encode)
    recon = dvae.apply({"params": params}, indices, episode, method=dvae.decode)
    return indices, dvae_lib.frames_to_uint8(recon)

  codes, recon = [], []
  for clip in clips:
    i, r = roundtrip(jnp.asarray(clip["video"]),
                     jnp.full(len(clip["video"]), clip["episode"], jnp.int32))
    codes.append(np.asarray(i))
    recon.append(np.asarray(r))
  return np.stack(codes), np.stack(recon)


def evaluate_reconstruction(models, clips: list[dict], *,
                            probe: probe_lib.Probe | None = None) -> tuple[dict, np.ndarray]:
  """dVAE metrics on held-out clips: PSNR/SSIM, per-head code usage, mouth recoverability."""
  dvae = models.dvae
  indices, recon = dvae_roundtrip(models, clips)
  originals = np.concatenate([c["video"] for c in clips])
  flat_recon = recon.reshape(originals.shape)
  truth = np.concatenate([c["truth"] for c in clips])
  integrity = {}
  if probe is not None:
    readings = _readings(probe, recon)
    measured = np.concatenate([r["mouth_open"] for r in readings])
    integrity = {"integrity_psnr_reconstruction": _integrity(recon, readings)[0]}
  else:
    measured = np.concatenate([m.mouth_area_ratio(r, c["truth"], c["episode"])
                               for r, c in zip(recon, clips)])
  out = m.reconstruction_metrics(originals, flat_recon, np.concatenate(indices), dvae.num_codes,
                                 truth=truth, measured_mouth=measured)
  return {**out, **integrity}, recon


def load_or_train_probe(path: str, height: int, width: int, *, log=print) -> probe_lib.Probe:
  """The probe saved at `path`, or a new one trained (about a minute), checked and saved there.
  Raises UntrustedProbeError if it misses its quality bar."""
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
