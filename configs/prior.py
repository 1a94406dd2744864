"""Stage 2, the prior: `get_config('<size>,<decoder>')`, size tiny|base|paper, decoder far|mar.

    python -m nwt_jax.tokenize --dvae_workdir=runs/dvae          # writes runs/dvae/tokens
    python -m nwt_jax.train --config=configs/prior.py:tiny,far --workdir=runs/prior_far \\
        --config.dvae_workdir=runs/dvae

`tiny` trains on a 2-core CPU in minutes (the README's measured table), `base` on one GPU,
`paper` (the paper's scale, bf16, FSDP) on a TPU pod slice or a multi-GPU host. The code grid,
heads, codebook and episode count are not here: they are the dVAE's, read from the tokens'
manifest.
"""

import ml_collections

from nwt_jax import presets

SIZES = ("tiny", "base", "paper")
DECODERS = ("far", "mar")

# Per size, the fields that differ from `tiny` (the defaults below); each field's meaning is on its
# line in get_config.
_SIZE_OVERRIDES = {
    "tiny": {},
    "base": {
        "prior": dict(max_frames=32, d_model=512, num_heads=8, head_dim=64, mlp_dim=2048,
                      temporal_layers=8, spatial_layers=2, audio_layers=4, code_embed_dim=32,
                      style_dim=32, style_hidden=512, depth_dim=256, depth_layers=3,
                      spatial_patch=1, dropout_rate=0.1),
        "data": dict(batch_size=64, frames_per_example=32),
        "optim": dict(lr=5e-4, warmup_steps=2000, decay_steps=200_000),
        "loss": dict(kl_anneal_steps=20_000),
        "train": dict(num_steps=200_000, log_every=100, eval_every=2000, checkpoint_every=2000,
                      eval_batches=16, eval_batch_size=64),
        "dtype": "bfloat16",
    },
    "paper": {
        "prior": dict(max_frames=64, d_model=1024, num_heads=16, head_dim=64, mlp_dim=4096,
                      temporal_layers=12, spatial_layers=4, audio_layers=6, code_embed_dim=64,
                      style_dim=32, style_hidden=1024, depth_dim=512, depth_layers=4,
                      depth_window_rows=0, spatial_patch=1, dropout_rate=0.1),
        "data": dict(batch_size=256, frames_per_example=64),
        "optim": dict(lr=3e-4, warmup_steps=5000, decay_steps=500_000),
        "loss": dict(kl_anneal_steps=50_000, label_smoothing=0.1),
        "train": dict(num_steps=500_000, log_every=100, eval_every=5000, checkpoint_every=5000,
                      eval_batches=32, eval_batch_size=256),
        "mesh": dict(data=-1, fsdp=8, model=1),
        "dtype": "bfloat16",
    },
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  choice = presets.parse(arg, size=SIZES, decoder=DECODERS)
  c = ml_collections.ConfigDict()
  c.model = "prior"  # nwt_jax.train dispatches to nwt_jax.training.prior
  c.seed = 0  # parameter init (seed), step randomness (seed + 1) and data order
  c.dtype = "float32"  # compute dtype: fp32 on CPU (XLA's CPU bf16 is slower), bf16 on GPU/TPU
  c.mesh = dict(data=-1, fsdp=1, model=1)  # device mesh; -1 = filled from the device count
  c.dvae_workdir = ""  # stage-1 workdir (tokens default to <dvae_workdir>/tokens)

  c.data = dict(
      source="tokens",  # tokenized clips (nwt_jax.data.token_pipeline)
      tokens_dir="",  # output of `python -m nwt_jax.tokenize` ('' = <dvae_workdir>/tokens)
      batch_size=16,  # global batch of windows
      frames_per_example=8,  # T': frames per window, cut at a random offset from each clip
      shuffle=True,  # train: a new clip order every epoch
      repeat=True,  # train: endless
      drop_remainder=True,  # eval: whole batches only
      prefetch=2,  # batches prepared ahead
      num_workers=1,  # threads cutting windows (memory-mapped: cheap)
      anchor_frame="distant",  # train windows' anchor: another moment of the clip | '' (first)
  )

  c.prior = dict(
      decoder=choice.decoder,  # 'far' (a frame's codes in parallel) | 'mar' (code by code)
      max_frames=16,  # longest window (position tables, KV cache); >= frames_per_example
      d_model=128,  # width of the audio encoder and the temporal/spatial transformers
      num_heads=4,  # attention heads
      head_dim=32,  # width per head
      mlp_dim=512,  # MLP hidden width
      temporal_layers=3,  # causal blocks over frames, cross-attending to the audio
      spatial_layers=1,  # bidirectional blocks over a frame's grid positions (or patches)
      spatial_patch=2,  # S: the spatial stack sees S x S patches of grid positions (1: cells)
      audio_layers=2,  # bidirectional blocks of the audio encoder
      code_embed_dim=64,  # per-position code embedding width (the sum of its K heads' codes)
      style_dim=16,  # style latent width
      style_hidden=128,  # style encoder MLP width
      depth_dim=32,  # MAR depth transformer width (its ~115k tokens a step cost most on CPU)
      depth_layers=1,  # MAR depth transformer blocks
      depth_window_rows=1,  # MAR: grid rows per local depth-attention block (0: whole frame)
      mel_mean=-8.0,  # log-mel normalisation offset
      mel_std=4.0,  # log-mel normalisation scale
      dropout_rate=0.0,  # residual dropout (tiny: none, the data is plentiful)
      prev_frame_dropout=0.0,  # P(a frame sees the BOS frame instead of its predecessor)
      stale_frame_rate=0.5,  # P(frame t >= 2 sees an older frame of its window as its predecessor)
      audio_dropout=0.2,  # P(a window sees the learned null audio): what audio guidance needs
      copy_gate=True,  # each code's logits + g * one_hot(the previous frame's code there)
      spatial_film=True,  # the previous frame's cells scaled by (1 + W h_t): audio x content
      cond_skip=True,  # the frame's cond (audio, episode, style) also straight to its cells
      anchor=True,  # every frame also sees (and may copy) a clean anchor frame: the opening one
      prev_code_noise=0.1,  # P(a cell of the previous-frame input shows a random cell's codes)
      autoregressive=True,  # False: no frame sees its predecessor (anchor, audio, style only)
      hidden_cells=(),  # cells never shown in the previous frame / anchor (train.hide_audio_cells)
  )

  c.loss = dict(
      kl_weight=1.0,  # final KL weight; the KL is divided by the codes per window (1 = ELBO)
      kl_anneal_steps=500,  # KL weight rises linearly from 0 over this many steps
      label_smoothing=0.0,  # cross-entropy label smoothing
      change_weight=20.0,  # loss weight of codes that differ from the previous frame's,
                           # logit-adjusted: the rare changes carry the audio
      frame0_weight=5.0,  # loss weight of codes with no previous frame (frame 0, BOS dropout):
                          # 20 gave frame 0 69% of the loss, 2 weakened the style latent
  )

  c.optim = dict(
      lr=1e-3,  # peak learning rate
      warmup_steps=100,  # linear warm-up from 0
      decay_steps=2000,  # cosine decay length (fixed here, not train.num_steps, so resuming
                         # with a longer run does not change past steps' schedule)
      end_lr_factor=0.05,  # cosine decays to this fraction of the peak at decay_steps
      b1=0.9,  # Adam beta1
      b2=0.98,  # Adam beta2
      weight_decay=0.01,  # decoupled weight decay (matrices only)
      clip_norm=1.0,  # global gradient-norm clipping
  )

  c.train = dict(
      num_steps=2000,  # total updates
      log_every=50,  # train metrics every N steps
      eval_every=250,  # held-out NLL and the audio/style controls every N steps (and at the end)
      checkpoint_every=250,  # checkpoint every N steps (and at the end, and on SIGTERM)
      keep_checkpoints=3,  # latest checkpoints kept
      eval_batches=8,  # validation batches per eval (0 = the whole split)
      eval_batch_size=16,  # global eval batch (>= 2: the controls pair each clip with the next)
      max_consecutive_nonfinite=10,  # stop after this many skipped (non-finite) updates in a row
      # > 0: before training, the cells whose codes follow the audio (score >= this x the best
      # cell's; training.audio_cells, from the tokens alone) become prior.hidden_cells.
      hide_audio_cells=0.025,
      hide_margin=0,  # ... grown by this many cells every way (the face moves)
  )
  c.debug = dict(nan_at_step=-1)  # fault injection: NaN loss at this step (-1 = never)

  return presets.override(c, _SIZE_OVERRIDES[choice.size])
