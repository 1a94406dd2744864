"""Teacher-forced next-frame lipsync: the prior's lipsync when it never sees its own samples.

Each frame's codes are drawn from the prior given the dVAE's codes of the true frames before it
(in windows as long as the prior's training windows; a window's frame 0 is the true frame's
codes), rendered and read by the probe. Against free-running generation's `lipsync_r`, the gap
is what the prior loses by depending on its own past (exposure bias): the issue's bar wants it
within 0.1.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nwt_jax.data import audio as audio_lib
from nwt_jax.data import constants
from nwt_jax.evaluation import metrics as m
from nwt_jax.evaluation import probe as probe_lib
from nwt_jax.inference import controls
from nwt_jax.inference import sampling
from nwt_jax.inference.generator import Generator
from nwt_jax.runtime import compile_options

MOUTH_OPEN = "mouth_open"


def next_frame_codes(models, codes: np.ndarray, mels: np.ndarray, episodes: np.ndarray,
                     z: np.ndarray, options: sampling.SamplingOptions, seed: int = 0
                     ) -> np.ndarray:
  """Codes [B, T, gh, gw, K] -> each frame drawn given the true frames before it in its window
  (windows of `models.window_frames`; frame 0 of a window keeps its true codes; priors with an
  anchor see the clip's frame 0 as theirs). mels
  [B, 4T, 80], episodes [B, T], z [B, style_dim]."""
  prior, params = models.prior, models.prior_params
  w = models.window_frames
  batch, frames = codes.shape[:2]

  @functools.partial(jax.jit, compiler_options=compile_options.prior())
  def draw(window_codes, mel, episode, anchor, rng):
    def logits_of(c, me, ep, zz, an, drop=None):
      return prior.apply({"params": params}, c, me, ep, train=False, z=zz, drop_audio=drop,
                         anchor=an)[0]
    if options.guided:
      two = lambda x: jnp.concatenate([x, x])
      drop = jnp.arange(2 * batch) >= batch
      logits = sampling.guide(logits_of(two(window_codes), two(mel), two(episode), two(z),
                                        two(anchor), drop), options.audio_guidance)
    else:
      logits = logits_of(window_codes, mel, episode, z, anchor)
    drawn = sampling.sample_logits(rng, logits, options)
    if options.change_threshold:
      prev = jnp.concatenate([window_codes[:, :1], window_codes[:, :-1]], axis=1)
      drawn = sampling.sample_changes(rng, logits, prev, options, prior.hidden_codes())
    return drawn.at[:, 0].set(window_codes[:, 0])

  out = np.empty_like(codes)
  rng = jax.random.key(seed)
  for index, start in enumerate(range(0, frames, w)):
    stop = min(start + w, frames)
    pad = w - (stop - start)
    window = np.pad(codes[:, start:stop], ((0, 0), (0, pad)) + ((0, 0),) * 3, mode="edge")
    mel = np.pad(mels[:, constants.MEL_PER_FRAME * start:constants.MEL_PER_FRAME * stop],
                 ((0, 0), (0, constants.MEL_PER_FRAME * pad), (0, 0)), mode="edge")
    episode = np.pad(episodes[:, start:stop], ((0, 0), (0, pad)), mode="edge")
    # The anchor is the clip's opening frame in every window, as in generation.
    drawn = draw(jnp.asarray(window), jnp.asarray(mel), jnp.asarray(episode),
                 jnp.asarray(codes[:, 0]), jax.random.fold_in(rng, index))
    out[:, start:stop] = np.asarray(drawn)[:, :stop - start]
  return out


def teacher_forced_lipsync(models, probe: probe_lib.Probe, clips: list[dict], *,
                           options: sampling.SamplingOptions, seed: int = 0) -> dict:
  """{'lipsync_r_teacher_forced': r of the probe's mouth reading of next-frame-sampled videos
  against the truth}, the clips' own episode and copied style, as `jobs.evaluate_generation`."""
  dvae, dvae_params = models.dvae, models.dvae_params
  encode = jax.jit(lambda v: dvae.apply({"params": dvae_params}, v, method=dvae.encode),
                   compiler_options=compile_options.dvae())
  codes = np.stack([np.asarray(encode(jnp.asarray(c["video"]))) for c in clips])
  mels = np.stack([audio_lib.frame_features(c["audio"].astype(np.float32) / 32768.0)[0]
                   for c in clips])
  frames = codes.shape[1]
  episodes = np.stack([np.full(frames, c["episode"], np.int32) for c in clips])
  z = np.stack([controls.reference_style(models, c["video"]) for c in clips])
  drawn = next_frame_codes(models, codes, mels, episodes, z, options, seed)
  video = Generator(models, options, batch=len(clips)).frames(drawn, episodes)
  flat = probe_lib.probe_predict(probe, video.reshape((-1,) + video.shape[2:]))
  read = flat[MOUTH_OPEN].reshape(video.shape[:2])
  truth = [c["truth"][:, list(m.TRUTH_KEYS).index(MOUTH_OPEN)] for c in clips]
  return {"lipsync_r_teacher_forced": m.lipsync(list(read), truth)["r"]}
