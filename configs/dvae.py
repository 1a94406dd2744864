"""Stage 1 config: the adversarial dVAE with the Memcodes bottleneck.

    python -m nwt_jax.train --config=configs/dvae.py:tiny --workdir=runs/dvae_tiny
    python -m nwt_jax.train --config=configs/dvae.py:paper_mem16 --workdir=runs/dvae_mem16 \\
        --config.data.source=tfds --config.data.data_dir=/data/tfds --config.mesh.fsdp=4

Presets (one word, parsed by `nwt_jax.presets`):
  tiny         64x56 frames, x4 down-sampling to a 16x14 grid, small widths; trains on a CPU.
  base         (default) 128x112 frames, x8 to 16x14, dim 256: a single-accelerator run.
  paper_mem16  the paper's Mem16: 256x224 frames, x16 to 16x14, dim 512, 8 heads, 1024 codes.
  paper_mem8   the paper's Mem8: as Mem16 with one more level, x32 to 8x7.

`base` is built first and every other preset overrides only the fields that differ. Any field
can be overridden on the command line: `--config.optim.lr=3e-4`.
"""

import ml_collections

from nwt_jax import presets
from nwt_jax.data import input_pipeline

SIZES = ("base", "tiny", "paper_mem16", "paper_mem8")

# What each preset changes in `base`, as {section: {field: value}}.
PRESETS = {
    "base": {},
    "tiny": dict(
        dtype="float32",  # CPU: XLA's CPU bf16 matmul is slower than fp32
        data=dict(height=64, width=56,  # frames
                  batch_size=16,  # clips per step, one frame of each (frames_per_example)
                  num_train_clips=512),  # 16k train frames, rendered on first use
        dvae=dict(channels=(16, 48, 96),  # x4: 64x56 -> 16x14 grid (measured vs (32, 64, 128))
                  res_blocks=(0, 1, 2),  # full resolution kept thin: no block there
                  dim=128,  # Memcodes width
                  num_codes=32,  # codes per head (measured at argmax, step 400: 64 codes left
                                 # 66% unused, 32 codes 44%, for 0.8 dB less PSNR)
                  heads=4,  # 32 features a head
                  episode_dim=32,  # episode embedding width
                  norm_groups=8),  # GroupNorm groups
        disc=dict(channels=(16, 32, 64),  # 64x56 -> 8x7 patch logits at scale 0
                  num_scales=2),  # frame and 2x pooled
        loss=dict(adv_start_step=800,  # adversarial terms for the last 200 steps (CPU cost)
                  adv_ramp_steps=100),  # ...at full weight after 100 of them
        optim=dict(lr=2e-3,  # generator peak learning rate
                   disc_lr=2e-4,  # discriminator peak learning rate
                   warmup_steps=100,  # linear warm-up
                   decay_steps=1000),  # cosine over the whole run
        train=dict(num_steps=1000,  # docs/experiments.md: the measured curve (< 15 min, 2 cores)
                   log_every=50,  # steps per console/TensorBoard line
                   eval_every=200,  # steps between held-out evaluations
                   checkpoint_every=400),  # steps between checkpoints
    ),
    "paper_mem16": dict(
        data=dict(height=256, width=224),  # the paper's frames
        dvae=dict(channels=(64, 128, 256, 256, 512),  # x16: 256x224 -> 16x14 grid
                  res_blocks=(1, 1, 2, 2, 2),  # ResBlocks per level
                  dim=512,  # the paper's Memcodes width
                  num_codes=1024,  # the paper's codes per head
                  heads=8),  # the paper's heads
        disc=dict(channels=(64, 128, 256, 512),  # 256x224 -> 16x14 patch logits
                  num_scales=3),  # frame, 2x and 4x pooled
        loss=dict(adv_start_step=30_000),  # adversarial terms after the L1 autoencoder settles
        optim=dict(decay_steps=300_000),  # cosine over the whole run
        train=dict(num_steps=300_000),  # total updates
    ),
    "paper_mem8": dict(
        dvae=dict(channels=(64, 128, 256, 256, 512, 512),  # x32: 256x224 -> 8x7 grid
                  res_blocks=(1, 1, 2, 2, 2, 2)),  # ResBlocks per level
    ),
}
# paper_mem8 is paper_mem16 plus its own changes.
PARENT = {"paper_mem8": "paper_mem16"}


def _base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = "dvae"  # nwt_jax.train dispatches to nwt_jax.training.dvae
  c.seed = 0  # parameter init, Gumbel noise (fold_in(seed, step)) and data order
  # PRNG: threefry is sharding-invariant and splits its work over devices. 'rbg' (XLA's
  # RngBitGenerator, also identical across shardings but generated whole) compiles the
  # initialiser ~3x faster, but XLA:CPU draws its bits ~4x slower: the `tiny` step's Gumbel
  # noise took 28 ms of ~500 (one core) with it (nwt_jax.bench; docs/performance.md).
  c.rng_impl = "threefry2x32"
  c.dtype = "bfloat16"  # compute dtype on GPU/TPU; params and norm statistics stay float32
  c.mesh = dict(data=-1,  # data parallel: the rest of the devices
                fsdp=1,  # parameter (ZeRO-3) sharding
                model=1)  # tensor parallel over channels, heads and codes

  # Overrides of input_pipeline.default_config(); unknown fields are an error there.
  c.data = input_pipeline.default_config()
  c.data.update(dict(
      source="synthetic_inline",  # 'tfds' reads a built nwt_clips dataset instead
      batch_size=32,  # GLOBAL clips per step
      frames_per_example=1,  # frames per clip per step (the dVAE codes frames independently)
      height=128, width=112,  # frames (H x W)
  ))

  c.dvae = dict(
      channels=(64, 128, 256, 256),  # width per level: x8, 128x112 -> 16x14 grid
      res_blocks=(1, 1, 2, 2),  # encoder ResBlocks per level
      decoder_res_blocks=None,  # decoder ResBlocks per level (None: as the encoder)
      dim=256,  # Memcodes width
      num_codes=512,  # codes per head
      heads=8,  # Memcodes heads
      temperature=1.0,  # Gumbel-softmax temperature
      num_episodes=8,  # episode ids the decoder knows (the synthetic world has 8)
      episode_dim=64,  # episode embedding width
      norm_groups=8)  # GroupNorm groups
  c.disc = dict(
      channels=(64, 128, 256),  # stride-2 conv widths of each scale's patch discriminator
      num_scales=2,  # frame, then 2x average-pooled
      norm_groups=8)  # GroupNorm groups
  c.loss = dict(
      l1_weight=1.0,  # pixel L1 (frames in [-1, 1])
      adv_weight=0.1,  # hinge generator loss, at full weight
      fm_weight=1.0,  # discriminator feature matching (L1), at full weight
      adv_start_step=20_000,  # step from which the adversarial terms (and D's updates) run
      adv_ramp_steps=2_000)  # their weights rise linearly from 0 over this many steps
  c.optim = dict(
      lr=1e-3,  # generator peak learning rate (adamw)
      disc_lr=2e-4,  # discriminator peak learning rate (adamw)
      b1=0.9, b2=0.99,  # generator Adam betas
      disc_b1=0.5, disc_b2=0.9,  # discriminator Adam betas (GAN-style)
      weight_decay=1e-4,  # adamw decoupled weight decay (both)
      warmup_steps=1_000,  # linear warm-up from 0 to the peak
      decay_steps=200_000,  # cosine length (set with train.num_steps: resuming must keep it)
      end_lr_factor=0.02,  # cosine decays to this fraction of the peak at decay_steps
      clip_norm=1.0)  # global-norm gradient clipping (each network separately)
  c.train = dict(
      num_steps=200_000,  # total updates (one global batch each)
      log_every=100,  # steps per console/TensorBoard line
      eval_every=5_000,  # steps between held-out evaluations (and at the end)
      checkpoint_every=5_000,  # steps between checkpoints (and at the end, and on SIGTERM)
      keep_checkpoints=3,  # latest checkpoints kept
      max_consecutive_nonfinite=20,  # non-finite updates in a row before the run stops
      eval_batch_size=64,  # validation clips per eval batch
      eval_frames_per_clip=2,  # frames of each (batch x frames divisible by data x fsdp)
      eval_batches=2,  # 2 x 64 clips x 2 frames = 256 held-out frames (of the 128 clips)
      eval_split="validation",  # held-out split
      num_samples=8,  # originals vs reconstructions in each samples/recon_{step}.png
  )
  c.debug = dict(nan_at_step=-1)  # >= 0: that step's loss is NaN (tests the non-finite guard)
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The dVAE config for preset `arg` (one of SIZES; default 'base')."""
  size = presets.parse(arg, size=SIZES).size
  config = _base()
  chain = [size]
  while chain[0] in PARENT:
    chain.insert(0, PARENT[chain[0]])
  for name in chain:
    presets.override(config, PRESETS[name])
  return config
