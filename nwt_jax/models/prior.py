"""NWT's stage-2 prior: audio, episode and a style latent -> Memcode indices, frame by frame.

Codes are int32 [B, T, gh, gw, K] (K = Memcodes heads, values in [0, num_codes)); log-mel is
[B, 4T, 80]; episode ids are [B] (one per clip) or [B, T] (per frame, so the episode may switch
mid-video). Both decoder variants share a two-level layout whose cost is linear in frames:

  * temporal: one token per frame. Token t = summary of frame t-1's codes (a learned BOS frame
    at t = 0) + the aligned audio feature + episode(t) + style z + time position; a causal
    transformer over frames that also cross-attends to the whole audio encoding.
  * spatial: the frame's P = gh*gw positions (or P / S**2 tokens of S x S positions each,
    `spatial_patch`), each = the frame's temporal output (+ its cond, `cond_skip`) + a position
    embedding + the previous frame's codes there (scaled by (1 + W h_t), `spatial_film`); a small
    bidirectional transformer. With `copy_gate`, each code's logits also get g * one_hot(the
    previous frame's code at its position and head).
  * FAR ('far'): all codes of frame t are predicted in parallel from the spatial output.
  * MAR ('mar'): a causal depth transformer over the frame's L = P*K codes in raster order
    (position-major, head-minor; as RQ-Transformer's depth stack): code j of frame t sees
    frames < t and codes < j of frame t.

Teacher forcing (training, evaluation):

    logits, aux = model.apply(v, codes, mel, episode, train=True, rngs={'style': k})
    # logits float32 [B, T, gh, gw, K, num_codes]; aux: kl (batch mean), mu, log_sigma, z and
    # prev_codes (what each frame saw as its previous frame; -1: the BOS frame)

Incremental decoding (what `nwt_jax.inference.sampling` drives inside `jax.lax.scan`):

    mu, _ = model.apply(v, reference_codes, method=Prior.encode_style)     # or z ~ N(0, I)
    context = model.apply(v, mel, episode, z, method=Prior.encode_context)  # once per window
    cache = model.init_cache(batch)                                         # zeros, fixed size
    # FAR, t = 0 .. T-1 (prev_codes: frame t-1's codes [B, gh, gw, K]; ignored at t = 0):
    logits, cache = model.apply(v, context, prev_codes, t, cache, method=Prior.far_frame_step)
    # MAR, per frame t, then per code j = 0 .. L-1 (prev_code: code j-1 [B]; ignored at j = 0):
    frame_ctx, cache = model.apply(v, context, prev_codes, t, cache, method=Prior.mar_frame_step)
    # (frame_ctx: {'inputs': [B, L, dd], 'prev_frame': [B, L]}, passed through unchanged)
    logits, cache = model.apply(v, frame_ctx, prev_code, j, cache, method=Prior.mar_code_step)

The cache holds max_frames temporal positions (and L depth positions for MAR); `t` and `j` are
traced, so one compilation serves every step and every window of up to max_frames frames.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nwt_jax.models import transformer
from nwt_jax.models.prior_depth import MARDepth
from nwt_jax.models.prior_encoders import (MEL_FRAMES_PER_FRAME, AudioEncoder, FrameEmbed,
                                           StyleEncoder, dense, gaussian_kl, partitioned,
                                           per_frame_episode)

Dtype = Any
DECODERS = ("far", "mar")


class Prior(MARDepth):
  """The NWT prior (see the module docstring for the layout and the decode API; the MAR depth
  decoder's layers and methods are in `nwt_jax.models.prior_depth.MARDepth`)."""
  decoder: str = "far"  # 'far' (a frame's codes in parallel) | 'mar' (code by code)
  grid: tuple[int, int] = (8, 7)  # dVAE code grid (gh, gw)
  code_heads: int = 4  # Memcodes heads K (codes per grid position)
  num_codes: int = 256  # codebook size per head
  num_episodes: int = 8  # episode embedding table size
  max_frames: int = 32  # frames per window (position tables and the KV cache)
  d_model: int = 256  # width of the audio encoder and the temporal/spatial transformers
  num_heads: int = 4  # attention heads (all stacks)
  head_dim: int = 64  # width per attention head (temporal, spatial, audio)
  mlp_dim: int = 1024  # MLP hidden width (temporal, spatial, audio)
  temporal_layers: int = 4  # causal blocks over frames (with cross-attention to audio)
  spatial_layers: int = 1  # bidirectional blocks over a frame's positions (0: none)
  # S > 1: the spatial stack works on S x S patches of grid positions (one token a patch carries
  # its cells' previous codes and predicts their codes), so a frame is P / S**2 tokens: the
  # stack's cost falls ~S**2 (its attention's ~S**4) and each token sees a whole mouth.
  spatial_patch: int = 1
  audio_layers: int = 2  # bidirectional blocks of the audio encoder
  code_embed_dim: int = 16  # per-position code embedding width (previous-frame input)
  style_dim: int = 16  # style latent width
  style_hidden: int = 256  # style encoder MLP width
  depth_dim: int = 128  # MAR depth transformer width (heads: num_heads of depth_dim/num_heads)
  depth_layers: int = 2  # MAR depth transformer blocks
  # MAR: 0 = each code attends to every earlier code of its frame; R > 0 = to the codes of its own
  # block of R grid rows and of the block before (W = R * gw * K codes a block, so W..2W-1 codes
  # back), at cost L * 2W instead of L**2. The whole frame's context still reaches every code
  # through the temporal and spatial stacks.
  depth_window_rows: int = 0
  mel_mean: float = -8.0  # log-mel normalisation offset
  mel_std: float = 4.0  # log-mel normalisation scale
  dropout_rate: float = 0.0  # residual dropout in every transformer (rng stream 'dropout')
  # Training only: each frame's view of the previous frame is replaced by the BOS frame with this
  # probability (rng stream 'dropout'), so audio, episode and style must explain frames on their
  # own instead of being ignored in favour of copying the last frame (word dropout, Bowman et
  # al. 2016, against posterior collapse and exposure bias).
  prev_frame_dropout: float = 0.0
  # Training only: each frame t >= 2 sees, with this probability, an older frame of its window
  # (uniform over frames 0 .. t-2) as its previous frame (rng stream 'dropout'). Teacher forcing
  # always shows the true last frame, so the prior learns that copying it is nearly always right
  # and never learns to correct a wrong one; free-sampled mouths then stick open or shut. A stale
  # frame keeps the look (episode, style, background), and its mouth is the audio of another
  # moment, so the model must move the mouth to where this frame's audio puts it. The codes the
  # model saw come back as aux['prev_codes'], for the change-weighted loss.
  stale_frame_rate: float = 0.0
  # Training only: a window's audio features are replaced by a learned null feature with this
  # probability (rng stream 'dropout'), so one model is both p(codes | audio) and p(codes | no
  # audio), the pair that classifier-free guidance (Ho & Salimans 2022; `nwt_jax.inference.sampling`'s
  # audio_guidance) contrasts at sampling time to strengthen what the audio changes: the mouth.
  audio_dropout: float = 0.0
  # Most codes repeat the previous frame's (86% of the mouth-region codes of the `tiny` dVAE).
  # With copy_gate, each code's logits get g * one_hot(the previous frame's code at its
  # position and head), g predicted per code (pointer-generator style, zero at start): copying
  # is free from the first step, and the model's capacity goes to the codes that change, where
  # the audio matters.
  copy_gate: bool = False
  # The spatial tokens' previous-frame input is scaled per channel by (1 + W h_t) (FiLM, zero at
  # start): the frame's conditioning (audio, episode, style) multiplies what each cell showed,
  # so "this cell is mouth" x "the audio opens the mouth" is one product, not an MLP's job.
  spatial_film: bool = False
  # The frame's conditioning (audio at t, episode, style, time) also goes straight to its spatial
  # tokens, not only through the temporal stack, which (measured on `tiny`) keeps little of it:
  # a linear read-out of mouth_open from the audio feature reaches r = 0.92, from the temporal
  # output 0.56.
  cond_skip: bool = False
  # An identity anchor (Wav2Lip's reference frame; the sink frame Live Avatar uses against drift):
  # every frame t >= 1 also sees one clean frame's codes, in training its window's first frame,
  # in generation the stream's opening frame, through its spatial tokens and (FAR, copy_gate) a
  # second copy gate. Look and detail can then be restored from a frame that never drifts,
  # instead of only copied from the predecessor, whose sampling errors would persist. Frame 0
  # sees a learned null anchor.
  anchor: bool = False
  # Training only: each cell of a frame's previous-frame input is replaced, with this
  # probability, by the K codes of a random cell of a random frame of its window (rng stream
  # 'dropout'): the stray pieces (an eye on a cheek) free-running sampling makes. Teacher
  # forcing never shows them, so the prior learns to keep them; this teaches it to repair them.
  prev_code_noise: float = 0.0
  # False: no frame sees its predecessor (every frame sees the BOS frame, in training and in
  # generation), so each frame is drawn from the audio, episode, style and (with `anchor`) the
  # anchor alone: the prior cannot drift or learn to continue its own samples, at the price of
  # temporal coherence the audio does not explain (blinks, sway).
  autoregressive: bool = True
  # Grid cells (row-major indices) whose codes the prior never sees in the previous frame or the
  # anchor: each shows a learned "hidden" embedding and has no copy path, so the prior must draw
  # those cells from the audio (and the cells around them) in every frame and cannot continue
  # its own past there. Wav2Lip hides the lower half of the face by hand; here training picks
  # the cells whose codes follow the audio, from the tokens alone (`training.audio_cells`).
  hidden_cells: tuple[int, ...] = ()
  dtype: Dtype = jnp.float32  # compute dtype
  param_dtype: Dtype = jnp.float32  # parameter dtype (norms always run in float32)

  @property
  def positions(self) -> int:
    """P = gh * gw grid positions per frame."""
    return self.grid[0] * self.grid[1]

  @property
  def codes_per_frame(self) -> int:
    """L = P * K codes per frame (the MAR depth sequence length)."""
    return self.positions * self.code_heads

  def setup(self):
    if self.decoder not in DECODERS:
      raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    stack = dict(num_heads=self.num_heads, head_dim=self.head_dim, mlp_dim=self.mlp_dim,
                 dropout_rate=self.dropout_rate, **kw)
    d, e, s = self.d_model, self.code_embed_dim, self.spatial_patch
    if self.grid[0] % s or self.grid[1] % s:
      raise ValueError(f"spatial_patch={s} must divide the grid {self.grid}")
    p = self.positions
    self.audio_encoder = AudioEncoder(
        self.d_model, self.audio_layers, max_frames=self.max_frames, mel_mean=self.mel_mean,
        mel_std=self.mel_std, **stack)
    self.style_encoder = StyleEncoder(self.num_codes, self.code_heads, self.style_dim,
                                      self.code_embed_dim, self.style_hidden, **kw)
    if self.has_null_audio:
      self.null_audio = self.param("null_audio", partitioned(nn.initializers.normal(0.02), "embed"),
                                   (d,), self.param_dtype)
    self.episode_embed = nn.Embed(
        self.num_episodes, d, param_dtype=self.param_dtype,
        embedding_init=partitioned(nn.initializers.normal(1.0), None, "embed"))
    self.audio_proj = dense(d, ("embed", "mlp"), name="audio_proj", **kw)
    self.style_proj = dense(d, (None, "embed"), name="style_proj", **kw)
    self.time_pos = self.param("time_pos", partitioned(nn.initializers.normal(0.02), None, "embed"),
                               (self.max_frames, d), self.param_dtype)
    self.frame_embed = FrameEmbed(self.num_codes, self.code_heads, e, self.param_dtype)
    self.bos_frame = self.param("bos_frame", partitioned(nn.initializers.normal(1.0), None, "embed"),
                                (p, e), self.param_dtype)
    self.frame_summary = dense(d, ("mlp", "embed"), name="frame_summary", **kw)
    self.temporal = transformer.Transformer(self.temporal_layers, d, cross_attention=True,
                                            **stack)
    self.spatial_pos = self.param("spatial_pos",
                                  partitioned(nn.initializers.normal(0.02), None, "embed"),
                                  (p // s**2, d), self.param_dtype)
    # Not flattened: flattening the moved-axis patches [B, T, P', S*S*e] got wrong gradients
    # from XLA's SPMD partitioner (jax 0.10, 2x2x2 mesh, MAR with change weighting: 1 vs 8
    # devices in tests/integration/test_train_prior.py); this projection is small.
    self.prev_proj = dense(d, (None, "embed"), name="prev_proj", flat=False, **kw)
    if self.anchor:
      self.null_anchor = self.param(
          "null_anchor", partitioned(nn.initializers.normal(1.0), None, "embed"), (p, e),
          self.param_dtype)
      self.anchor_proj = dense(d, (None, "embed"), name="anchor_proj", flat=False, **kw)
    if self.hidden_cells:
      self.hidden_cell = self.param(
          "hidden_cell", partitioned(nn.initializers.normal(1.0), None, "embed"), (p, e),
          self.param_dtype)
    if self.cond_skip:
      self.cond_proj = dense(d, ("embed", "mlp"), name="cond_proj", **kw)
    if self.spatial_film:
      self.film = dense(d, ("embed", "mlp"), name="film", kernel_init=nn.initializers.zeros_init(),
                         **kw)
    if self.spatial_layers:
      self.spatial = transformer.Transformer(self.spatial_layers, d, **stack)
    if self.decoder == "far":
      self.head_norm = transformer.layer_norm("head_norm", self.param_dtype)
      # [d, S*S*K, V]: fan-in d (a patch's cells x heads are a batch of independent outputs).
      self.head = self.param(
          "head", partitioned(nn.initializers.lecun_normal(0, -1, (1,)), "embed", None, "vocab"),
          (d, s * s * self.code_heads, self.num_codes), self.param_dtype)
      if self.copy_gate:
        self.copy = dense(s * s * self.code_heads, ("embed", None), name="copy", use_bias=True,
                           kernel_init=nn.initializers.zeros_init(), **kw)
        if self.anchor:
          self.anchor_copy = dense(s * s * self.code_heads, ("embed", None), name="anchor_copy",
                                   use_bias=True, kernel_init=nn.initializers.zeros_init(), **kw)
    else:
      self._setup_depth(kw)

  # --- conditioning ----------------------------------------------------------------------------

  def encode_style(self, codes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Codes [B, T, gh, gw, K] -> (mu, log_sigma), each float32 [B, style_dim]."""
    return self.style_encoder(codes)

  @property
  def has_null_audio(self) -> bool:
    """Whether the model learnt a null audio (audio_dropout > 0), which guidance needs."""
    return self.audio_dropout > 0

  def encode_context(self, mel: jax.Array, episode: jax.Array, z: jax.Array, *,
                     deterministic: bool = True, drop_audio: jax.Array | None = None
                     ) -> dict[str, Any]:
    """Everything per window that does not depend on codes; compute once before decoding.

    mel [B, 4T, bins], episode [B] or [B, T], z [B, style_dim] -> {'cond': [B, T, d] (audio at
    frame t + episode(t) + style + time position), 'cross_kv': per temporal layer (k, v), each
    [B, T, heads, head_dim]}. drop_audio bool [B]: those rows see the null audio instead.
    """
    audio = self.audio_encoder(mel, deterministic=deterministic)  # [B, T, d]
    if drop_audio is not None:
      if not self.has_null_audio:
        raise ValueError("this prior has no null audio (trained with audio_dropout=0)")
      audio = jnp.where(drop_audio[:, None, None], self.null_audio.astype(audio.dtype), audio)
    frames = audio.shape[1]
    episode = per_frame_episode(episode, frames)  # [B, T]
    cond = (self.audio_proj(audio.astype(self.dtype))
            + self.episode_embed(episode).astype(self.dtype)
            + self.style_proj(z.astype(self.dtype))[:, None]
            + self.time_pos[:frames].astype(self.dtype))
    return {"cond": cond, "cross_kv": self.temporal.cross_kv(audio)}

  def _frame_input(self, h: jax.Array, cond: jax.Array) -> jax.Array:
    """What a frame's spatial tokens share: the temporal output h [B, T, d] (+ its cond)."""
    return h + self.cond_proj(cond.astype(self.dtype)) if self.cond_skip else h

  # --- shared frame path -----------------------------------------------------------------------

  def _to_patches(self, x: jax.Array) -> jax.Array:
    """[B, T, P, ...] (raster order) -> [B, T, P / S**2, S*S, ...] (patches, cells raster)."""
    s, (gh, gw) = self.spatial_patch, self.grid
    lead, rest = x.shape[:2], x.shape[3:]
    x = jnp.moveaxis(x.reshape(lead + (gh // s, s, gw // s, s) + rest), 4, 3)
    return x.reshape(lead + (gh * gw // s**2, s * s) + rest)

  def _from_patches(self, x: jax.Array) -> jax.Array:
    """Inverse of `_to_patches`: [B, T, P / S**2, S*S, ...] -> [B, T, P, ...]."""
    s, (gh, gw) = self.spatial_patch, self.grid
    lead, rest = x.shape[:2], x.shape[4:]
    x = jnp.moveaxis(x.reshape(lead + (gh // s, gw // s, s, s) + rest), 3, 4)
    return x.reshape(lead + (gh * gw,) + rest)

  def _temporal_inputs(self, cond: jax.Array, prev: jax.Array) -> jax.Array:
    """cond [B, T, d] + summary of the previous frames' embeddings prev [B, T, P, e]."""
    batch, frames = prev.shape[:2]
    flat = prev.reshape(batch, frames, -1).astype(self.dtype)  # [B, T, P*e]
    return cond + self.frame_summary(flat)

  def _patch_tokens(self, emb: jax.Array) -> jax.Array:
    """Per-position embeddings [B, T, P, e] -> [B, T, P', S*S*e] (a patch's cells side by side)."""
    patches = self._to_patches(emb.astype(self.dtype))  # [B, T, P', S*S, e]
    return patches.reshape(patches.shape[:3] + (-1,))

  def _spatial(self, h: jax.Array, prev: jax.Array, deterministic: bool,
               anchor: jax.Array | None = None) -> jax.Array:
    """Temporal outputs h [B, T, d], previous-frame embeddings [B, T, P, e] (and, with `anchor`,
    the anchor frame's [B, T, P, e]) -> [B, T, P', d] (P' = P / S**2 patch tokens)."""
    batch, frames = prev.shape[:2]
    shown = self.prev_proj(self._patch_tokens(prev))  # [B, T, P', d]
    if self.anchor:
      shown = shown + self.anchor_proj(self._patch_tokens(anchor))
    if self.spatial_film:
      shown = shown * (1 + self.film(h.astype(self.dtype))[:, :, None])
    c = h.astype(self.dtype)[:, :, None] + self.spatial_pos.astype(self.dtype) + shown
    if self.spatial_layers:
      c = c.reshape((batch * frames,) + c.shape[2:])  # [B*T, P', d]: each frame on its own
      c = self.spatial(c, deterministic=deterministic)
      c = c.reshape((batch, frames) + c.shape[1:])  # [B, T, P', d]
    return c

  def _copy_logits(self, gate: jax.Array, prev_codes: jax.Array) -> jax.Array:
    """gate [..., K] * one_hot(prev_codes [..., K]) -> float32 [..., K, V] (-1: no copy)."""
    return (gate.astype(jnp.float32)[..., None]
            * jax.nn.one_hot(prev_codes, self.num_codes, dtype=jnp.float32))

  def _gate(self, layer: nn.Module, x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """A copy gate per code: [B, T, P', d] -> [B, T, gh, gw, K]."""
    gate = layer(x).reshape(x.shape[:3] + (self.spatial_patch**2, self.code_heads))
    return self._from_patches(gate).reshape(shape)

  def _far_logits(self, c: jax.Array, prev_codes: jax.Array,
                  anchor_codes: jax.Array | None = None) -> jax.Array:
    """[B, T, P', d], previous codes [B, T, gh, gw, K] (-1: none; and with `anchor` the anchor's,
    -1: none) -> logits [B, T, gh, gw, K, V]."""
    x = self.head_norm(c).astype(self.dtype)
    logits = transformer.flat_dot(x, self.head.astype(self.dtype))  # [.., P', S*S*K, V]
    logits = self._from_patches(logits.reshape(logits.shape[:3] + (self.spatial_patch**2, -1)))
    logits = logits.reshape(c.shape[:2] + self.grid + (self.code_heads, self.num_codes)
                            ).astype(jnp.float32)
    if self.copy_gate:
      logits = logits + self._copy_logits(self._gate(self.copy, x, prev_codes.shape), prev_codes)
      if self.anchor:
        gate = self._gate(self.anchor_copy, x, anchor_codes.shape)
        logits = logits + self._copy_logits(gate, anchor_codes)
    return logits

  def _previous_frame_sources(self, batch: int, frames: int, train: bool) -> jax.Array | None:
    """Which frame each frame sees as its previous one, int32 [B, T] (-1: BOS), or None for
    the true one (t - 1). In training: -1 with P = prev_frame_dropout, else an older frame
    (uniform over 0 .. t-2) with P = stale_frame_rate (t >= 2)."""
    if not train or (self.prev_frame_dropout <= 0 and self.stale_frame_rate <= 0):
      return None
    t = jnp.arange(frames)
    source = jnp.broadcast_to(t - 1, (batch, frames))
    if self.stale_frame_rate > 0:
      pick, lag = jax.random.split(self.make_rng("dropout"))
      stale = jax.random.bernoulli(pick, self.stale_frame_rate, (batch, frames)) & (t >= 2)
      older = jnp.floor(jax.random.uniform(lag, (batch, frames)) * (t - 1)).astype(jnp.int32)
      source = jnp.where(stale, older, source)
    if self.prev_frame_dropout > 0:
      drop = jax.random.bernoulli(self.make_rng("dropout"), self.prev_frame_dropout,
                                  (batch, frames))
      source = jnp.where(drop, -1, source)
    return source

  def _previous_codes(self, codes: jax.Array, train: bool) -> jax.Array:
    """Codes [B, T, gh, gw, K] -> the codes each frame sees as its previous frame's (-1: the
    BOS frame): frame t-1's, or in training what prev_frame_dropout and stale_frame_rate make
    of them."""
    if not self.autoregressive:
      return jnp.full_like(codes, -1)
    source = self._previous_frame_sources(codes.shape[0], codes.shape[1], train)
    if source is None:
      prev = previous_frame_codes(codes)
    else:
      padded = jnp.concatenate([jnp.full_like(codes[:, :1], -1), codes], axis=1)
      prev = jnp.take_along_axis(padded, (source + 1)[:, :, None, None, None], axis=1)
    if train and self.prev_code_noise > 0:
      prev = self._add_code_noise(codes, prev)
    return prev

  def _add_code_noise(self, codes: jax.Array, prev: jax.Array) -> jax.Array:
    """`prev_code_noise`: cells of prev [B, T, gh, gw, K] (not BOS frames) replaced by the
    codes of random cells of random frames of `codes` (the same window)."""
    batch, frames = codes.shape[:2]
    cells = frames * self.positions
    hit_key, source_key = jax.random.split(self.make_rng("dropout"))
    hit = jax.random.bernoulli(hit_key, self.prev_code_noise, prev.shape[:-1])  # [B, T, gh, gw]
    source = jax.random.randint(source_key, (batch, cells, 1), 0, cells)
    flat = codes.reshape(batch, cells, self.code_heads)
    stray = jnp.take_along_axis(flat, source, axis=1).reshape(codes.shape)
    return jnp.where(hit[..., None] & (prev >= 0), stray, prev)

  def _anchor_codes(self, codes: jax.Array, anchor: jax.Array | None = None) -> jax.Array:
    """Teacher forcing: the anchor each frame sees, [B, T, gh, gw, K]: `anchor` [B, gh, gw, K]
    if given (e.g. another frame of the window's clip), else the window's first frame; -1 (the
    null anchor) at frame 0."""
    source = codes[:, :1] if anchor is None else anchor[:, None].astype(codes.dtype)
    first = jnp.broadcast_to(source, codes.shape)
    return jnp.where((jnp.arange(codes.shape[1]) == 0)[None, :, None, None, None], -1, first)

  def _hidden_mask(self) -> np.ndarray:
    """bool [gh, gw]: the `hidden_cells`."""
    mask = np.zeros(self.grid[0] * self.grid[1], bool)
    mask[list(self.hidden_cells)] = True
    return mask.reshape(self.grid)

  def hidden_codes(self) -> np.ndarray:
    """bool [gh, gw, K]: the codes of `hidden_cells` (for samplers; no parameters needed)."""
    return np.broadcast_to(self._hidden_mask()[:, :, None], self.grid + (self.code_heads,))

  def _hide(self, frame_codes: jax.Array | None) -> jax.Array | None:
    """Codes [B, T, gh, gw, K] of shown frames (previous or anchor) -> -1 at `hidden_cells`
    (frames that are -1 throughout, BOS or the null anchor, stay as they are)."""
    if not self.hidden_cells or frame_codes is None:
      return frame_codes
    return jnp.where(self._hidden_mask()[:, :, None], -1, frame_codes)

  def _hidden_embed(self, emb: jax.Array, codes: jax.Array) -> jax.Array:
    """The hidden embedding at hidden cells of frames that are not -1 throughout."""
    if not self.hidden_cells:
      return emb
    shown = jnp.any(codes >= 0, axis=(2, 3, 4))  # [B, T]
    hidden = shown[..., None] & self._hidden_mask().reshape(-1)  # [B, T, P]
    return jnp.where(hidden[..., None], self.hidden_cell.astype(emb.dtype), emb)

  def _embed_anchor(self, anchor_codes: jax.Array | None) -> jax.Array | None:
    """Anchor codes [B, T, gh, gw, K] (-1: none) -> [B, T, P, e] (the null anchor where -1
    throughout)."""
    if not self.anchor:
      return None
    emb = self.frame_embed(jnp.maximum(anchor_codes, 0))
    unset = jnp.all(anchor_codes < 0, axis=(2, 3, 4))  # [B, T]
    emb = jnp.where(unset[..., None, None], self.null_anchor.astype(emb.dtype), emb)
    return self._hidden_embed(emb, anchor_codes)

  def _embed_previous(self, prev_codes: jax.Array) -> jax.Array:
    """Previous-frame codes [B, T, gh, gw, K] (-1 throughout: BOS frame) -> [B, T, P, e]."""
    emb = self.frame_embed(jnp.maximum(prev_codes, 0))
    is_bos = jnp.all(prev_codes < 0, axis=(2, 3, 4))  # [B, T]
    emb = jnp.where(is_bos[..., None, None], self.bos_frame.astype(emb.dtype), emb)
    return self._hidden_embed(emb, prev_codes)

  def _decode(self, codes: jax.Array, prev_codes: jax.Array, context: dict[str, jax.Array],
              deterministic: bool, anchor: jax.Array | None = None) -> jax.Array:
    """The temporal and spatial stacks and the head: logits [B, T, gh, gw, K, V] of `codes`
    with `prev_codes` as each frame's previous frame (-1: BOS)."""
    prev_codes = self._hide(prev_codes)
    prev = self._embed_previous(prev_codes)  # [B, T, P, e]
    x = self._temporal_inputs(context["cond"], prev)  # [B, T, d]
    frames = jnp.arange(codes.shape[1])
    h = self.temporal(x, mask=transformer.causal_mask(frames, frames),
                      cross_kv=context["cross_kv"], deterministic=deterministic)
    h = self._frame_input(h, context["cond"])
    anchor_codes = self._hide(self._anchor_codes(codes, anchor)) if self.anchor else None
    c = self._spatial(h, prev, deterministic, self._embed_anchor(anchor_codes))  # [B, T, P', d]
    if self.decoder == "far":
      return self._far_logits(c, prev_codes, anchor_codes)
    return self._mar_logits(c, codes, prev_codes, deterministic)

  # --- teacher forcing -------------------------------------------------------------------------

  def __call__(self, codes: jax.Array, mel: jax.Array, episode: jax.Array, *, train: bool,
               z: jax.Array | None = None, drop_audio: jax.Array | None = None,
               anchor: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """codes [B, T, gh, gw, K], mel [B, 4T, bins], episode [B] | [B, T] -> (logits, aux).

    logits are float32 [B, T, gh, gw, K, num_codes]; the logits of frame t (MAR: of code j of
    frame t) depend only on codes before it. z defaults to a posterior sample (train; rng stream
    'style') or its mean (eval); pass z to condition on another latent. drop_audio bool [B]: rows
    that see the null audio (default: none, or P = audio_dropout each in training). anchor
    [B, gh, gw, K] (priors with `anchor`): the frame frames t >= 1 see as their anchor (default:
    the window's frame 0).
    """
    if codes.shape[2:] != self.grid + (self.code_heads,):
      raise ValueError(f"codes {codes.shape} do not match grid {self.grid} x {self.code_heads}")
    if mel.shape[1] != MEL_FRAMES_PER_FRAME * codes.shape[1]:
      raise ValueError(f"mel {mel.shape} does not cover {codes.shape[1]} frames")
    mu, log_sigma = self.encode_style(codes)
    if z is None:
      # Reparameterised posterior sample in training; its mean at evaluation.
      noise = jax.random.normal(self.make_rng("style"), mu.shape) if train else 0.0
      z = mu + jnp.exp(log_sigma) * noise
    deterministic = not train
    if drop_audio is None and train and self.audio_dropout > 0:
      drop_audio = jax.random.bernoulli(self.make_rng("dropout"), self.audio_dropout,
                                        (codes.shape[0],))
    context = self.encode_context(mel, episode, z, deterministic=deterministic,
                                  drop_audio=drop_audio)
    prev_codes = self._previous_codes(codes, train)  # [B, T, gh, gw, K]
    logits = self._decode(codes, prev_codes, context, deterministic, anchor)
    kl = jnp.mean(gaussian_kl(mu, log_sigma))
    return logits, {"kl": kl, "mu": mu, "log_sigma": log_sigma, "z": z,
                    "prev_codes": prev_codes}

  # --- incremental decoding --------------------------------------------------------------------

  def init_cache(self, batch: int) -> dict[str, transformer.Cache]:
    """Zero KV caches for one window (works on an unbound module: no parameters needed).

    {'temporal': temporal_layers x {'k','v'} [B, max_frames, heads, head_dim]} and, for MAR,
    {'depth': depth_layers x {'k','v'} [B, L, heads, depth_dim / heads]}.
    """
    cache = {"temporal": transformer.init_cache(
        self.temporal_layers, batch, self.max_frames, self.num_heads, self.head_dim, self.dtype)}
    if self.decoder == "mar":
      cache["depth"] = transformer.init_cache(
          self.depth_layers, batch, self.codes_per_frame, self.num_heads,
          self.depth_dim // self.num_heads, self.dtype)
    if self.anchor:  # -1: the window's frame 0 becomes the anchor (see `_frame_step`)
      cache["anchor"] = jnp.full((batch,) + self.grid + (self.code_heads,), -1, jnp.int32)
    return cache

  def _frame_step(self, context, prev_codes, t, cache):
    """Temporal step for frame t from frame t-1's codes [B, gh, gw, K] -> ([B, 1, P', d], the
    codes it saw as its previous frame [B, 1, gh, gw, K] (-1: the BOS frame, at t = 0 or when
    not autoregressive), the anchor it saw (the same shape) or None, cache). The anchor is
    cache['anchor']: the caller's, or where that is -1, the window's frame 0 (stored at t = 1,
    when frame 0 is the previous frame)."""
    shown = self._hide(jnp.where((t == 0) | (not self.autoregressive), -1, prev_codes)[:, None])
    prev = self._embed_previous(shown)  # [B, 1, P, e]
    cond = jax.lax.dynamic_slice_in_dim(context["cond"], t, 1, axis=1)  # [B, 1, d]
    x = self._temporal_inputs(cond, prev)  # [B, 1, d]
    h, temporal_cache = self.temporal.decode(x, cache["temporal"], t, context["cross_kv"])
    cache = {**cache, "temporal": temporal_cache}
    h = self._frame_input(h, cond)
    anchor_codes = None
    if self.anchor:
      stored = cache["anchor"]
      unset = (stored[:, 0, 0, 0] < 0)[:, None, None, None]
      stored = jnp.where((t == 1) & unset, prev_codes, stored)
      cache = {**cache, "anchor": stored}
      anchor_codes = self._hide(jnp.where(t == 0, -1, stored)[:, None])  # [B, 1, gh, gw, K]
    c = self._spatial(h, prev, True, self._embed_anchor(anchor_codes))
    return c, shown, anchor_codes, cache

  def far_frame_step(self, context: dict[str, Any], prev_codes: jax.Array, t: jax.Array,
                     cache: dict[str, transformer.Cache]
                     ) -> tuple[jax.Array, dict[str, transformer.Cache]]:
    """FAR: frame t-1's codes [B, gh, gw, K] -> (logits of frame t [B, gh, gw, K, V], cache)."""
    if self.decoder != "far":
      raise ValueError("far_frame_step needs decoder='far'")
    c, shown, anchor_codes, cache = self._frame_step(context, prev_codes, t, cache)
    return self._far_logits(c, shown, anchor_codes)[:, 0], cache

  def mar_frame_step(self, context: dict[str, Any], prev_codes: jax.Array, t: jax.Array,
                     cache: dict[str, transformer.Cache]
                     ) -> tuple[jax.Array, dict[str, transformer.Cache]]:
    """MAR: frame t-1's codes [B, gh, gw, K] -> (frame t's context, cache).

    The context is {'inputs': the depth inputs [B, L, dd], 'prev_frame': frame t-1's codes
    [B, L] (-1 at t = 0), what `mar_code_step` copies from}.
    """
    if self.decoder != "mar":
      raise ValueError("mar_frame_step needs decoder='mar'")
    c, shown, _, cache = self._frame_step(context, prev_codes, t, cache)
    prev_frame = shown.reshape(prev_codes.shape[0], -1)
    return {"inputs": self._depth_context(c)[:, 0], "prev_frame": prev_frame}, cache


def num_params(params: Any) -> int:
  """Total parameter count of a (possibly boxed or abstract) parameter tree."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params)))


def previous_frame_codes(codes: jax.Array) -> jax.Array:
  """Codes [B, T, ...] -> the codes of the frame before each, [B, T, ...] (-1 at frame 0)."""
  return jnp.concatenate([jnp.full_like(codes[:, :1], -1), codes[:, :-1]], axis=1)
