"""Stage 2: the audio-conditioned prior over the frozen dVAE's Memcode indices.

    python -m nwt_jax.tokenize --dvae_workdir=runs/dvae            # once: clips -> tokens
    python -m nwt_jax.train --config=configs/prior.py:tiny,far --workdir=runs/prior_far \\
        --config.dvae_workdir=runs/dvae

The trainers' shape (`training.loop`): `create_train_state`, `train_step`, `eval_step`, a cached
`setup(config, manifest, devices)` and `train_and_evaluate(config, workdir)`; `restore.prior`
loads a trained prior for generation. The grid, code heads, codebook size and episode count come
from the tokens' manifest (they are the dVAE's); everything else from the config.

Training is teacher-forced: cross-entropy per code plus the style latent's KL, weighted by
`loss.kl_weight` (linearly annealed from 0 over `loss.kl_anneal_steps`) and divided by the codes
in a window, so weight 1 is the ELBO per code.

Evaluation on held-out clips (the validation split) reports the per-code NLL and accuracy and two
controls that show the conditioning is used:
  * audio: NLL with the clip's own log-mel vs another clip's (the batch rolled by one), over all
    codes and over the mouth-region codes (synthetic data: the grid cells the mouth can cover);
    `audio_gap` = NLL(other audio) - NLL(own audio) > 0 when the prior listens;
  * style: NLL with the clip's own posterior mean z vs another clip's; `style_gap` > 0 when z
    carries the clip's look.
Each gap also comes as `<gap>_z`: its mean over windows divided by its paired standard error
(the windows are independent clips), so "clearly lower" is a number: z > 3.
"""

from collections.abc import Callable
import functools
import json
import os
from typing import Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import optax

from nwt_jax.data import frame_bank
from nwt_jax.data import token_pipeline
from nwt_jax.models import prior as prior_lib
from nwt_jax.runtime import compile_options
from nwt_jax.training import audio_cells
from nwt_jax.training import loop
from nwt_jax.training import losses
from nwt_jax.training import metric_writer
from nwt_jax.training import previews
from nwt_jax.training import sharding

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


WORKDIR_MANIFEST = "tokens_manifest.json"  # the tokens' manifest, copied into the workdir


def window_frames(config: ml_collections.ConfigDict, manifest: dict) -> int:
  """T': frames per training example (the whole clip when data.frames_per_example is 0)."""
  frames = config.data.frames_per_example or manifest["num_frames"]
  if frames > config.prior.max_frames:
    raise ValueError(f"windows of {frames} frames exceed prior.max_frames="
                     f"{config.prior.max_frames}")
  return frames


def make_model(config: ml_collections.ConfigDict, manifest: dict) -> prior_lib.Prior:
  """The Prior: architecture from `config.prior`, code layout from the tokens' manifest."""
  return prior_lib.Prior(
      grid=tuple(manifest["grid"]), code_heads=manifest["code_heads"],
      num_codes=manifest["num_codes"], num_episodes=manifest["num_episodes"],
      dtype=DTYPES[config.dtype],
      **{**config.prior, "hidden_cells": tuple(config.prior.get("hidden_cells", ()))})


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """adamw with linear warm-up then cosine decay, after global-norm clipping; no weight decay on
  vectors (norm scales, biases)."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, optim.lr, optim.warmup_steps, max(optim.decay_steps, optim.warmup_steps + 1),
      end_value=optim.lr * optim.end_lr_factor)
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(optim.clip_norm),
      optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay,
                  mask=decay_mask))


def kl_weight(step: jax.Array, weight: float, anneal_steps: int) -> jax.Array:
  """`weight` * min(1, step / anneal_steps): the KL term fades in (0 steps: at once)."""
  if anneal_steps <= 0:
    return jnp.float32(weight)
  return weight * jnp.minimum(1.0, step.astype(jnp.float32) / anneal_steps)


def example_batch(manifest: dict, frames: int, batch: int = 1) -> dict[str, jax.Array]:
  """Zeros shaped like a token batch of `batch` windows of `frames` frames."""
  gh, gw = manifest["grid"]
  return {"codes": jnp.zeros((batch, frames, gh, gw, manifest["code_heads"]), jnp.int32),
          "mel": jnp.zeros((batch, 4 * frames, manifest["mel_bins"]), jnp.float32),
          "episode": jnp.zeros((batch,), jnp.int32)}


def create_train_state(model: prior_lib.Prior, tx: optax.GradientTransformation,
                       example: dict[str, jax.Array], rng: jax.Array) -> loop.TrainState:
  """Parameters (logically boxed) and optimiser state; run under `sharded_initializer`."""
  variables = model.init({"params": rng, "style": rng}, example["codes"], example["mel"],
                         example["episode"], train=False)
  params = variables["params"]
  return loop.TrainState.create(params, tx.init(params))


def _accuracy(logits: jax.Array, codes: jax.Array) -> jax.Array:
  return (jnp.argmax(logits, axis=-1) == codes).astype(jnp.float32)


def train_step(state: loop.TrainState, batch: dict[str, jax.Array], *,
               model: prior_lib.Prior, tx: optax.GradientTransformation, rng: jax.Array,
               kl_weight_max: float, kl_anneal_steps: int, label_smoothing: float,
               nan_at_step: int, change_weight: float = 1.0,
               frame0_weight: float | None = None
               ) -> tuple[loop.TrainState, dict[str, jax.Array]]:
  """One teacher-forced update; step s's randomness is fold_in(rng, s)."""
  style_rng, dropout_rng = jax.random.split(jax.random.fold_in(rng, state.step))
  codes = batch["codes"]  # [B, T, gh, gw, K]
  codes_per_window = codes[0].size
  beta = kl_weight(state.step, kl_weight_max, kl_anneal_steps)

  def loss_fn(params):
    # batch['anchor'] (data.anchor_frame): a distant frame of the clip as the identity anchor.
    logits, aux = model.apply({"params": params}, codes, batch["mel"], batch["episode"],
                              train=True, anchor=batch.get("anchor"),
                              rngs={"style": style_rng, "dropout": dropout_rng})
    # The change-weighted loss (losses.change_weighted_cross_entropy) and the plain NLL metric.
    ce, nll, w = losses.code_losses(logits, codes, change_weight,
                                    label_smoothing=label_smoothing, prev=aux["prev_codes"],
                                    first_weight=frame0_weight)
    loss = jnp.sum(w * ce) / jnp.sum(w) + beta * aux["kl"] / codes_per_window
    loss = loop.inject_nan(loss, state.step, nan_at_step)
    return loss, {"nll": jnp.mean(nll), "accuracy": jnp.mean(_accuracy(logits, codes)),
                  "kl": aux["kl"]}

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(params=optax.apply_updates(state.params, updates),
                            opt_state=opt_state)
  state, guard = loop.apply_if_finite(state, new_state, loss, grads)
  return state, {"loss": loss, **metrics, "kl_weight": beta,
                 "grad_norm": optax.tree.norm(grads), **guard}


def _paired_sums(name: str, control: jax.Array, nll: jax.Array, weight: jax.Array
                 ) -> dict[str, jax.Array]:
  """Per-window gaps d_w = mean over the window's weighted codes of (control - nll), summed as
  count, sum and sum of squares, for the gap's paired standard error over windows."""
  batch = nll.shape[0]
  w = weight.reshape(batch, -1).sum(axis=1)
  gap = ((control - nll) * weight).reshape(batch, -1).sum(axis=1) / jnp.maximum(w, 1.0)
  valid = (w > 0).astype(jnp.float32)
  return {f"{name}_windows": valid.sum(), f"{name}_sum": (gap * valid).sum(),
          f"{name}_sq": (gap**2 * valid).sum()}


def eval_step(params: Any, batch: dict[str, jax.Array], *,
              model: prior_lib.Prior) -> dict[str, jax.Array]:
  """Sums over a batch of held-out windows (see the module docstring for the controls).

  "Other" is the batch rolled by one clip: row i gets row i+1's audio or z.
  """
  variables = {"params": params}
  codes, mel, episode = batch["codes"], batch["mel"], batch["episode"]
  mu, log_sigma = model.apply(variables, codes, method=prior_lib.Prior.encode_style)
  other = lambda x: jnp.roll(x, 1, axis=0)

  def forward(audio, z):
    logits, _ = model.apply(variables, codes, audio, episode, train=False, z=z)
    return logits, losses.code_cross_entropy(logits, codes)  # [B, T, gh, gw, K]

  logits, nll = forward(mel, mu)
  _, nll_audio = forward(other(mel), mu)
  _, nll_z = forward(mel, other(mu))
  sums = {"count": jnp.float32(nll.size), "clips": jnp.float32(codes.shape[0]),
          "nll": nll.sum(), "correct": _accuracy(logits, codes).sum(),
          "nll_other_audio": nll_audio.sum(), "nll_other_z": nll_z.sum(),
          "kl": prior_lib.gaussian_kl(mu, log_sigma).sum()}
  # Codes that differ from the previous frame's (frame 0 has none): the rare changes that the
  # audio must explain, and that plain NLL hides among the repeats. change_p is the mean
  # probability the prior gives the new code there.
  prev = prior_lib.previous_frame_codes(codes)
  changed = ((codes != prev) & (prev >= 0)).astype(jnp.float32)
  sums.update(change_count=changed.sum(), change_p=(jnp.exp(-nll) * changed).sum())
  ones = jnp.ones_like(nll)
  sums.update(_paired_sums("audio_gap", nll_audio, nll, ones))
  sums.update(_paired_sums("style_gap", nll_z, nll, ones))
  if "mouth" in batch:
    mask = jnp.broadcast_to(batch["mouth"][..., None], nll.shape).astype(jnp.float32)
    sums.update(mouth_count=mask.sum(), mouth_nll=(nll * mask).sum(),
                mouth_nll_other_audio=(nll_audio * mask).sum(),
                mouth_nll_other_z=(nll_z * mask).sum(), mouth_change_count=(changed * mask).sum(),
                mouth_change_p=(jnp.exp(-nll) * changed * mask).sum())
    sums.update(_paired_sums("mouth_audio_gap", nll_audio, nll, mask))
  return sums


def _z_score(sums: dict[str, float], name: str) -> float:
  """Mean per-window gap over its standard error (paired over held-out windows): how many
  standard errors the gap is from zero (> 3: clearly positive)."""
  n = sums[f"{name}_windows"]
  if n < 2:
    return float("nan")
  mean = sums[f"{name}_sum"] / n
  var = max(sums[f"{name}_sq"] / n - mean**2, 0.0) * n / (n - 1)
  return mean / max((var / n) ** 0.5, 1e-12)


def summarize_eval(sums: dict[str, float]) -> dict[str, float]:
  """Per-code means (and per-clip KL) from `eval_step`'s sums, with the control gaps."""
  out = {"nll": sums["nll"] / sums["count"], "accuracy": sums["correct"] / sums["count"],
         "kl": sums["kl"] / sums["clips"],
         "nll_other_audio": sums["nll_other_audio"] / sums["count"],
         "nll_other_z": sums["nll_other_z"] / sums["count"]}
  out["audio_gap"] = out["nll_other_audio"] - out["nll"]
  out["style_gap"] = out["nll_other_z"] - out["nll"]
  for prefix in ("", "mouth_"):
    if sums.get(f"{prefix}change_count"):
      out[f"{prefix}change_p"] = sums[f"{prefix}change_p"] / sums[f"{prefix}change_count"]
  for name in ("audio_gap", "style_gap", "mouth_audio_gap"):
    if sums.get(f"{name}_windows"):
      out[f"{name}_z"] = _z_score(sums, name)
  if sums.get("mouth_count"):
    for key in ("nll", "nll_other_audio", "nll_other_z"):
      out[f"mouth_{key}"] = sums[f"mouth_{key}"] / sums["mouth_count"]
    out["mouth_audio_gap"] = out["mouth_nll_other_audio"] - out["mouth_nll"]
    out["mouth_style_gap"] = out["mouth_nll_other_z"] - out["mouth_nll"]
  return out


Setup = loop.Setup  # `model` is the Prior; `eval_step(params, batch)` gives `eval_step`'s sums

# Fields the compiled steps depend on (the rest: cadences, paths, lengths of the run).
STEP_FIELDS = ("seed", "dtype", "mesh", "prior", "optim", "loss", "debug", "data")


def setup(config: ml_collections.ConfigDict, manifest: dict, devices=None) -> Setup:
  """Mesh over `devices` (default all), model, sharded initializer and jitted steps for tokens
  described by `manifest`. Cached by the STEP_FIELDS of `config`, the manifest and the devices:
  runs of the same config in one process (tests, resume) compile once."""
  return _setup(loop.config_key(config, STEP_FIELDS), json.dumps(manifest, sort_keys=True),
                tuple(jax.devices() if devices is None else devices))


@functools.lru_cache(maxsize=8)
def _setup(config_json: str, manifest_json: str, devices: tuple[jax.Device, ...]) -> Setup:
  config, manifest = ml_collections.ConfigDict(json.loads(config_json)), json.loads(manifest_json)
  mesh = sharding.make_mesh(config.mesh, devices)
  model, tx = make_model(config, manifest), make_optimizer(config.optim)
  example = example_batch(manifest, window_frames(config, manifest))
  init = functools.partial(create_train_state, model, tx, example)
  init_state, state_shardings = sharding.sharded_initializer(init, mesh,
                                                             jax.random.key(config.seed))
  step = functools.partial(
      train_step, model=model, tx=tx, rng=jax.random.key(config.seed + 1),
      kl_weight_max=config.loss.kl_weight, kl_anneal_steps=config.loss.kl_anneal_steps,
      label_smoothing=config.loss.label_smoothing, nan_at_step=config.debug.nan_at_step,
      change_weight=config.loss.change_weight, frame0_weight=config.loss.frame0_weight)
  train, evaluate = loop.jit_steps(mesh, state_shardings, step,
                                   functools.partial(eval_step, model=model),
                                   compile_options.prior(),
                                   constrain_activations=False)
  return Setup(config=config, mesh=mesh, model=model, init_state=init_state,
               state_shardings=state_shardings, train_step=train, eval_step=evaluate)


def make_eval_fn(s: Setup, config: ml_collections.ConfigDict, root: str, writer=None
                 ) -> Callable[[loop.TrainState, int], dict[str, float]]:
  """`eval_fn(state, step)` for `loop.run`: `summarize_eval` of the sums over
  `train.eval_batches` validation batches (0: the whole split) of the tokens in `root`; with a
  `writer` (and the dVAE's workdir in the config), also an image of the first batch's frames,
  true above and teacher-forced below (`previews`)."""
  previewer = (previews.Previewer(config.dvae_workdir, s.model) if writer is not None
               and config.get("dvae_workdir") and jax.process_count() == 1 else None)

  def eval_fn(state, step):
    sums = {}
    with token_pipeline.create_iterator(
        config.data, "validation", seed=config.seed, root=root,
        process_index=jax.process_index(), process_count=jax.process_count(),
        batch_size=config.train.eval_batch_size) as it:
      for i, batch in enumerate(it):
        if config.train.eval_batches and i >= config.train.eval_batches:
          break
        if i == 0 and previewer is not None:
          writer.write_images(step, {"eval/previews": previewer(state.params, batch)})
        out = jax.device_get(s.eval_step(state.params, sharding.put_batch(batch, s.mesh)))
        for key, value in out.items():
          sums[key] = sums.get(key, 0.0) + float(value)
    if not sums:
      raise ValueError("the validation split gave no batch to evaluate")
    return summarize_eval(sums)

  return eval_fn


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> loop.TrainState:
  """Trains (or resumes) the prior in `workdir` on the tokens `config` names, evaluating every
  `train.eval_every` steps; returns the final state. What `python -m nwt_jax.train` calls for
  `config.model == 'prior'`."""
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)  # orbax refuses relative checkpoint paths
  root = token_pipeline.tokens_dir(config)
  manifest = token_pipeline.read_manifest(root)
  if jax.process_index() == 0:  # the workdir then holds all that generation needs
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    token_pipeline.write_json_atomic(str(epath.Path(workdir) / WORKDIR_MANIFEST), manifest)
    # What a FAR prior's first frames are retrieved from (a MAR prior draws them code by code).
    if config.prior.decoder == "far" and frame_bank.load(workdir) is None:
      frame_bank.save(workdir, frame_bank.build(token_pipeline.TokenSource(root, "train")))
  if config.train.get("hide_audio_cells") and not config.prior.get("hidden_cells"):
    # Found from the tokens (the same on every process and on resume), kept in the config the
    # checkpoint stores, so generation builds the same prior.
    config.prior.hidden_cells = audio_cells.find(root, config.train.hide_audio_cells,
                                                 margin=config.train.get("hide_margin", 0))
    logging.info("Hiding the previous frame's audio-following cells %s (of %d).",
                 list(config.prior.hidden_cells), manifest["grid"][0] * manifest["grid"][1])
  s = setup(config, manifest)
  logging.info("Prior (%s) on tokens %s: grid %s x %d heads, %d codes, %d episodes; %.2fM "
               "parameters.", config.prior.decoder, root, manifest["grid"],
               manifest["code_heads"], manifest["num_codes"], manifest["num_episodes"],
               prior_lib.num_params(jax.eval_shape(s.init_state).params) / 1e6)
  train_iter = token_pipeline.create_iterator(
      config.data, "train", seed=config.seed, root=root, process_index=jax.process_index(),
      process_count=jax.process_count())
  writer = metric_writer.create_writer(workdir)
  try:
    return loop.run(config, workdir, s, train_iter,
                    eval_fn=make_eval_fn(s, config, root, writer), writer=writer)
  finally:
    writer.close()
    train_iter.close()
