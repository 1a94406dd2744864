"""A PyTorch peer of the dVAE-Adv and prior train steps, for `python -m nwt_jax.bench --peer=torch`.

The same models as `nwt_jax.models` — same layers, widths, parameter shapes, losses and
optimisers — written in plain torch so the benchmark can time both frameworks side by side on one
machine. Parameters keep the Flax tree's names, so `load_flax_params(module, params)` copies a
Flax parameter tree into a peer (conv kernels HWIO -> OIHW; everything else as is), and the tests
check that the peer's loss at init equals JAX's with the same weights and noise.

Only `nwt_jax.bench` imports this module, lazily: the GPU/TPU images need no torch.

    gen, disc = build_dvae(config)             # from a configs/dvae.py config
    step = DVAETrainStep(config, gen, disc)    # both AdamW updates in one call
    metrics = step(batch)                      # batch: video uint8 [B, T, H, W, 3], episode [B]

Layouts: activations are NCHW (torch's native conv layout); Memcodes and the transformers work on
channel-last views, as in JAX. Flax 'SAME' padding is reproduced exactly (asymmetric where XLA
pads asymmetrically, e.g. a stride-2 3x3 conv on an even size pads 0 before and 1 after).
"""

import math
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

PyTree = Any


# ---------------------------------------------------------------------------------------------
# Layers with Flax parameter names


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """XLA's 'SAME' padding (before, after) of one spatial dim."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _lecun_normal_(w: torch.Tensor, fan_in: int) -> None:
  with torch.no_grad():
    w.normal_(0.0, 1.0 / math.sqrt(fan_in))


class Conv2d(nn.Module):
  """flax `nn.Conv(features, (k, k), strides, padding='SAME')` on NCHW; params kernel, bias."""

  def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1):
    super().__init__()
    self.kernel_size, self.stride = kernel, stride
    self.kernel = nn.Parameter(torch.empty(cout, cin, kernel, kernel))  # OIHW
    self.bias = nn.Parameter(torch.zeros(cout))
    _lecun_normal_(self.kernel, cin * kernel * kernel)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    ph = _same_pads(x.shape[2], self.kernel_size, self.stride)
    pw = _same_pads(x.shape[3], self.kernel_size, self.stride)
    if ph[0] == ph[1] and pw[0] == pw[1]:
      return F.conv2d(x, self.kernel, self.bias, self.stride, (ph[0], pw[0]))
    x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]))
    return F.conv2d(x, self.kernel, self.bias, self.stride)

  def load_flax(self, p: dict) -> None:
    self.kernel.copy_(_t(p["kernel"]).permute(3, 2, 0, 1))
    self.bias.copy_(_t(p["bias"]))


class Conv1d(nn.Module):
  """flax 1-D `nn.Conv` 'SAME' on [B, C, L]; params kernel (WIO in Flax), bias."""

  def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
    super().__init__()
    self.kernel_size, self.stride = kernel, stride
    self.kernel = nn.Parameter(torch.empty(cout, cin, kernel))
    self.bias = nn.Parameter(torch.zeros(cout))
    _lecun_normal_(self.kernel, cin * kernel)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    pl, pr = _same_pads(x.shape[2], self.kernel_size, self.stride)
    if pl == pr:
      return F.conv1d(x, self.kernel, self.bias, self.stride, pl)
    return F.conv1d(F.pad(x, (pl, pr)), self.kernel, self.bias, self.stride)

  def load_flax(self, p: dict) -> None:
    self.kernel.copy_(_t(p["kernel"]).permute(2, 1, 0))
    self.bias.copy_(_t(p["bias"]))


class Dense(nn.Module):
  """flax `nn.Dense`: kernel [in, out] (Flax layout, so it copies as is), optional bias."""

  def __init__(self, cin: int, cout: int, bias: bool = True):
    super().__init__()
    self.kernel = nn.Parameter(torch.empty(cin, cout))
    self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
    _lecun_normal_(self.kernel, cin)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, self.kernel.t(), self.bias)


class Embed(nn.Module):
  """flax `nn.Embed`: param embedding [num, features]."""

  def __init__(self, num: int, features: int):
    super().__init__()
    self.embedding = nn.Parameter(torch.randn(num, features))

  def forward(self, ids: torch.Tensor) -> torch.Tensor:
    return F.embedding(ids, self.embedding)


class GroupNorm(nn.GroupNorm):
  """`layers.group_norm`: gcd(groups, channels) groups, eps 1e-6; params scale, bias."""

  def __init__(self, channels: int, groups: int):
    super().__init__(math.gcd(groups, channels), channels, eps=1e-6)

  def load_flax(self, p: dict) -> None:
    self.weight.copy_(_t(p["scale"]))
    self.bias.copy_(_t(p["bias"]))


class LayerNorm(nn.LayerNorm):
  """`transformer.layer_norm`: eps 1e-6; params scale, bias."""

  def __init__(self, features: int):
    super().__init__(features, eps=1e-6)

  def load_flax(self, p: dict) -> None:
    self.weight.copy_(_t(p["scale"]))
    self.bias.copy_(_t(p["bias"]))


def _param(*shape: int, std: float = 1.0) -> nn.Parameter:
  return nn.Parameter(torch.randn(*shape) * std)


def _t(x) -> torch.Tensor:
  return torch.from_numpy(np.array(x, dtype=np.float32))


@torch.no_grad()
def load_flax_params(module: nn.Module, params: PyTree) -> int:
  """Copies a Flax parameter tree (nested dicts of arrays) into `module`; returns the number of
  values copied. Every Flax leaf must find its torch parameter, and every torch parameter a leaf."""
  copied = 0

  def walk(mod: nn.Module, tree: dict, path: str):
    nonlocal copied
    if hasattr(mod, "load_flax"):
      mod.load_flax(tree)
      copied += sum(int(np.prod(np.shape(v))) for v in _leaves(tree))
      return
    for name, value in tree.items():
      if isinstance(value, dict):
        if name not in mod._modules:
          raise KeyError(f"torch peer has no module {path}{name}")
        walk(mod._modules[name], value, f"{path}{name}.")
      else:
        target = mod._parameters.get(name)
        if target is None or tuple(target.shape) != tuple(np.shape(value)):
          raise KeyError(f"torch peer parameter {path}{name} missing or shaped "
                         f"{None if target is None else tuple(target.shape)} != {np.shape(value)}")
        target.copy_(_t(value))
        copied += target.numel()

  walk(module, dict(params), "")
  total = num_params(module)
  if copied != total:
    raise ValueError(f"copied {copied} values into a peer of {total} parameters")
  return copied


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


def num_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# dVAE-Adv (nwt_jax/models/{layers,memcodes,dvae,discriminator}.py)


class ResBlock(nn.Module):
  def __init__(self, cin: int, features: int, groups: int, cond_dim: int | None = None):
    super().__init__()
    self.norm1 = GroupNorm(cin, groups)
    self.conv1 = Conv2d(cin, features)
    self.norm2 = GroupNorm(features, groups)
    self.film = Dense(cond_dim, 2 * features) if cond_dim else None
    self.conv2 = Conv2d(features, features)
    self.skip = Conv2d(cin, features, 1) if cin != features else None

  def forward(self, x, cond=None):
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.norm2(h)
    if self.film is not None:
      gamma, beta = self.film(cond).chunk(2, dim=-1)
      h = h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
    h = self.conv2(F.silu(h))
    return (x if self.skip is None else self.skip(x)) + h


def _fold_taps(w: torch.Tensor, dim: int) -> torch.Tensor:
  """3 taps on `dim` -> [2 phases, ...] of 2 taps: a nearest 2x upsample folded into the kernel
  (`nwt_jax.models.layers.subpixel_kernels`)."""
  w0, w1, w2 = w.unbind(dim)
  return torch.stack([torch.stack([w0, w1 + w2], dim), torch.stack([w0 + w1, w2], dim)])


class _Resample(nn.Module):
  """A stride-2 3x3 conv (down) or, as `layers.Upsample`, a nearest 2x upsample then a 3x3 conv
  computed as one 2x2 conv with the four output phases as channels (4/9 of the FLOPs)."""

  def __init__(self, cin: int, cout: int, stride: int, up: bool):
    super().__init__()
    self.up = up
    self.conv = Conv2d(cin, cout, 3, stride)

  def forward(self, x):
    if not self.up:
      return self.conv(x)
    n, _, h, w = x.shape
    kernel = self.conv.kernel  # [out, in, 3 (kh), 3 (kw)]
    phases = _fold_taps(_fold_taps(kernel, 2), 4).transpose(0, 1)  # [a, b, out, in, 2, 2]
    y = F.conv2d(F.pad(x, (1, 1, 1, 1)), phases.flatten(0, 2))  # [n, (a, b, out), h+1, w+1]
    y = y.unflatten(1, (2, 2, -1))
    # Phase (a, b) of output pixel (2i + a, 2j + b) sits at y[..., i + a, j + b].
    rows = [torch.stack([y[:, a, b, :, a:a + h, b:b + w] for b in range(2)], dim=-1)
            for a in range(2)]  # each [n, out, h, w, 2 (b)]
    y = torch.stack(rows, dim=3).reshape(n, -1, 2 * h, 2 * w)
    return y + self.conv.bias[:, None, None]


class Encoder(nn.Module):
  def __init__(self, channels, res_blocks, dim, groups):
    super().__init__()
    self.stem = Conv2d(3, channels[0])
    self.order = []
    for level, (width, blocks) in enumerate(zip(channels, res_blocks)):
      cin = width if level == 0 else channels[level]
      for i in range(blocks):
        self.add_module(f"level{level}_block{i}", ResBlock(cin, width, groups))
        self.order.append(f"level{level}_block{i}")
      if level + 1 < len(channels):
        self.add_module(f"down{level}", _Resample(width, channels[level + 1], 2, False))
        self.order.append(f"down{level}")
    self.out_norm = GroupNorm(channels[-1], groups)
    self.out = Conv2d(channels[-1], dim, 1)

  def forward(self, x):
    x = self.stem(x)
    for name in self.order:
      x = self._modules[name](x)
    return self.out(F.silu(self.out_norm(x)))


class Decoder(nn.Module):
  def __init__(self, channels, res_blocks, num_episodes, episode_dim, dim, groups):
    super().__init__()
    self.episode_embed = Embed(num_episodes, episode_dim)
    self.stem = Conv2d(dim, channels[-1])
    self.order = []
    for level in reversed(range(len(channels))):
      for i in range(res_blocks[level]):
        name = f"level{level}_block{i}"
        self.add_module(name, ResBlock(channels[level], channels[level], groups, episode_dim))
        self.order.append((name, True))
      if level > 0:
        self.add_module(f"up{level}", _Resample(channels[level], channels[level - 1], 1, True))
        self.order.append((f"up{level}", False))
    self.out_norm = GroupNorm(channels[0], groups)
    self.out = Conv2d(channels[0], 3)

  def forward(self, x, episode):
    cond = self.episode_embed(episode)
    x = self.stem(x)
    for name, conditioned in self.order:
      x = self._modules[name](x, cond) if conditioned else self._modules[name](x)
    return torch.tanh(self.out(F.silu(self.out_norm(x))))


class Memcodes(nn.Module):
  """nwt_jax.models.memcodes.Memcodes on channel-last x [..., dim]."""

  def __init__(self, dim, num_codes, heads, temperature):
    super().__init__()
    d = dim // heads
    self.dim, self.heads, self.temperature = dim, heads, temperature
    self.codes = _param(heads, num_codes, d)
    bound = d ** -0.5
    self.to_k = nn.Parameter(torch.empty(heads, d, d).uniform_(-bound, bound))
    self.to_v = nn.Parameter(torch.empty(heads, d, d).uniform_(-bound, bound))

  def forward(self, x, gumbel=None):
    d = self.dim // self.heads
    q = x.reshape(x.shape[:-1] + (self.heads, d)) * d ** -0.5  # [..., h, d]
    k = torch.einsum("hnd,hdc->hnc", self.codes, self.to_k)
    v = torch.einsum("hnd,hdc->hnc", self.codes, self.to_v)
    logits = torch.einsum("...hd,hnd->...hn", q, k)
    if gumbel is None:
      u = torch.rand_like(logits).clamp_(torch.finfo(logits.dtype).tiny, 1.0)
      gumbel = -torch.log(-torch.log(u))
    noisy = logits + gumbel
    y_soft = torch.softmax(noisy / self.temperature, dim=-1)
    indices = noisy.argmax(dim=-1)
    y_hard = F.one_hot(indices, logits.shape[-1]).to(y_soft.dtype)
    attn = y_hard + y_soft - y_soft.detach()  # straight-through
    out = torch.einsum("...hn,hnc->...hc", attn, v)
    return out.reshape(x.shape), indices


class DVAE(nn.Module):
  def __init__(self, channels, res_blocks, decoder_res_blocks, dim, num_codes, heads,
               temperature, num_episodes, episode_dim, norm_groups):
    super().__init__()
    self.num_codes = num_codes
    self.encoder = Encoder(channels, res_blocks, dim, norm_groups)
    self.quantizer = Memcodes(dim, num_codes, heads, temperature)
    self.decoder = Decoder(channels, res_blocks if decoder_res_blocks is None
                           else decoder_res_blocks, num_episodes, episode_dim, dim, norm_groups)

  def forward(self, x, episode, gumbel=None):
    """x float NCHW in [-1, 1], episode [N] -> (recon NCHW, indices [N, gh, gw, heads], counts)."""
    z = self.encoder(x).permute(0, 2, 3, 1)  # [N, gh, gw, dim]
    z, indices = self.quantizer(z, gumbel)
    recon = self.decoder(z.permute(0, 3, 1, 2), episode)
    heads = indices.shape[-1]
    flat = indices.reshape(-1, heads) + torch.arange(heads) * self.num_codes
    counts = torch.bincount(flat.reshape(-1), minlength=heads * self.num_codes)
    return recon, indices, counts.reshape(heads, self.num_codes).float()


class PatchDiscriminator(nn.Module):
  def __init__(self, channels, groups):
    super().__init__()
    self.n = len(channels)
    cin = 3
    for i, width in enumerate(channels):
      self.add_module(f"conv{i}", Conv2d(cin, width, 4, 2))
      if i > 0:
        self.add_module(f"norm{i}", GroupNorm(width, groups))
      cin = width
    self.logits = Conv2d(cin, 1)

  def forward(self, x):
    features = []
    for i in range(self.n):
      x = self._modules[f"conv{i}"](x)
      if i > 0:
        x = self._modules[f"norm{i}"](x)
      x = F.leaky_relu(x, 0.2)
      features.append(x)
    return self.logits(x), features


class MultiScaleDiscriminator(nn.Module):
  def __init__(self, channels, num_scales, norm_groups):
    super().__init__()
    self.num_scales = num_scales
    for s in range(num_scales):
      self.add_module(f"scale{s}", PatchDiscriminator(channels, norm_groups))

  def forward(self, x):
    logits, features = [], []
    for s in range(self.num_scales):
      if s > 0:
        x = F.avg_pool2d(x, 2)
      out, feats = self._modules[f"scale{s}"](x)
      logits.append(out)
      features.append(feats)
    return logits, features


def build_dvae(config) -> tuple[DVAE, MultiScaleDiscriminator]:
  """The peer generator and discriminator of a configs/dvae.py config."""
  c, d = config.dvae, config.disc
  tup = lambda x: None if x is None else tuple(x)
  gen = DVAE(tup(c.channels), tup(c.res_blocks), tup(c.decoder_res_blocks), c.dim, c.num_codes,
             c.heads, c.temperature, c.num_episodes, c.episode_dim, c.norm_groups)
  disc = MultiScaleDiscriminator(tup(d.channels), d.num_scales, d.norm_groups)
  return gen, disc


def _mean(values):
  return sum(values) / len(values)


def dvae_losses(gen, disc, frames, episode, *, scale, loss_config, gumbel=None):
  """The JAX step's loss terms (nwt_jax.training.dvae.train_step) on uint8 frames [N, H, W, 3].

  Returns (generator loss, discriminator loss, terms, counts). As in the JAX step the
  discriminator runs once on the real frames and once on the reconstruction: take the
  discriminator loss's gradient with respect to the discriminator's parameters only (the
  reconstruction is then a constant to it) and the generator loss's with `retain_graph=True`.
  The generator loss sees the discriminator's real features detached.
  """
  lc = loss_config
  target = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0
  recon, _, counts = gen(target, episode, gumbel)
  l1 = (recon - target).abs().mean()
  real_logits, real_features = disc(target)
  fake_logits, fake_features = disc(recon)
  g_adv = _mean([-x.mean() for x in fake_logits])
  flat = lambda features: [f for scale_feats in features for f in scale_feats]
  fm = _mean([(fake - real.detach()).abs().mean()
              for real, fake in zip(flat(real_features), flat(fake_features))])
  g_loss = lc.l1_weight * l1 + scale * (lc.adv_weight * g_adv + lc.fm_weight * fm)
  d_loss = _mean([F.relu(1 - real).mean() + F.relu(1 + fake).mean()
                  for real, fake in zip(real_logits, fake_logits)])
  return g_loss, d_loss, {"l1": l1, "g_adv": g_adv, "fm": fm}, counts


def warmup_cosine(step: int, peak: float, warmup: int, decay: int, end: float) -> float:
  """optax.warmup_cosine_decay_schedule(0, peak, warmup, decay, end) at `step`."""
  if step < warmup:
    return peak * step / max(warmup, 1)
  frac = min(max(step - warmup, 0) / max(decay - warmup, 1), 1.0)
  return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * frac))


def _adamw(params, lr, b1, b2, weight_decay, decay_all=True):
  params = list(params)
  groups = ([{"params": params, "weight_decay": weight_decay}] if decay_all else
            [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}])
  try:
    return torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=1e-8, fused=True)
  except (RuntimeError, TypeError):  # no fused kernel for this device
    return torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=1e-8, foreach=True)


def _set_lr(opt, lr):
  for group in opt.param_groups:
    group["lr"] = lr


class DVAETrainStep:
  """One dVAE-Adv update of both networks (as `train_dvae.train_step` with the adversarial
  branch on): losses, two gradient passes, global-norm clipping, a finite check, two AdamW
  steps with warmup-cosine learning rates."""

  def __init__(self, config, gen: DVAE, disc: MultiScaleDiscriminator, compile: bool = False):
    self.config, self.gen, self.disc = config, gen, disc
    o = config.optim
    self.opt_g = _adamw(gen.parameters(), o.lr, o.b1, o.b2, o.weight_decay)
    self.opt_d = _adamw(disc.parameters(), o.disc_lr, o.disc_b1, o.disc_b2, o.weight_decay)
    self.g_params, self.d_params = list(gen.parameters()), list(disc.parameters())
    self.step = 0
    self.losses = torch.compile(dvae_losses) if compile else dvae_losses

  def scale(self) -> float:
    lc = self.config.loss
    if self.step < lc.adv_start_step:
      return 0.0
    return min(max((self.step - lc.adv_start_step + 1) / max(lc.adv_ramp_steps, 1), 0.0), 1.0)

  def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    o, lc = self.config.optim, self.config.loss
    frames = batch["video"].reshape((-1,) + tuple(batch["video"].shape[-3:]))
    episode = batch["episode"].repeat_interleave(batch["video"].shape[1])
    g_loss, d_loss, terms, counts = self.losses(
        self.gen, self.disc, frames, episode, scale=self.scale(), loss_config=lc)
    g_grads = torch.autograd.grad(g_loss, self.g_params, retain_graph=True)
    d_grads = torch.autograd.grad(d_loss, self.d_params)
    for params, grads in ((self.g_params, g_grads), (self.d_params, d_grads)):
      for p, g in zip(params, grads):
        p.grad = g
    g_norm = torch.nn.utils.clip_grad_norm_(self.g_params, o.clip_norm)
    d_norm = torch.nn.utils.clip_grad_norm_(self.d_params, o.clip_norm)
    finite = bool(torch.isfinite(g_loss + d_loss + g_norm + d_norm))
    if finite:  # the JAX step's apply_if_finite
      _set_lr(self.opt_g, warmup_cosine(self.step, o.lr, o.warmup_steps, o.decay_steps,
                                        o.lr * o.end_lr_factor))
      d_step = max(self.step - max(lc.adv_start_step, 0), 0)
      _set_lr(self.opt_d, warmup_cosine(d_step, o.disc_lr, o.warmup_steps,
                                        o.decay_steps - max(lc.adv_start_step, 0),
                                        o.disc_lr * o.end_lr_factor))
      self.opt_g.step()
      self.opt_d.step()
    self.step += 1
    used = (counts > 0).float().mean(dim=-1)
    return {"loss": g_loss.detach(), "d_loss": d_loss.detach(), **terms,
            "g_grad_norm": g_norm, "d_grad_norm": d_norm, "batch_usage_min": used.min()}


# ---------------------------------------------------------------------------------------------
# Prior (nwt_jax/models/{transformer,prior}.py)


class HeadsProjection(nn.Module):
  def __init__(self, d, heads, head_dim):
    super().__init__()
    self.kernel = nn.Parameter(torch.randn(d, heads, head_dim) / math.sqrt(d))

  def forward(self, x):  # [..., d] -> [..., heads, head_dim]
    k = self.kernel
    return (x @ k.reshape(k.shape[0], -1)).unflatten(-1, k.shape[1:])


class MergeHeads(nn.Module):
  def __init__(self, heads, head_dim, d):
    super().__init__()
    self.kernel = nn.Parameter(torch.randn(heads, head_dim, d) / math.sqrt(heads * head_dim))

  def forward(self, x):  # [..., heads, head_dim] -> [..., d]
    return x.flatten(-2) @ self.kernel.reshape(-1, self.kernel.shape[-1])


class Attention(nn.Module):
  def __init__(self, d, heads, head_dim):
    super().__init__()
    self.query = HeadsProjection(d, heads, head_dim)
    self.key = HeadsProjection(d, heads, head_dim)
    self.value = HeadsProjection(d, heads, head_dim)
    self.out = MergeHeads(heads, head_dim, d)

  def project_kv(self, x):
    return self.key(x), self.value(x)

  def attend(self, x, kv, mask=None):
    q = self.query(x).transpose(1, 2)  # [B, heads, T, hd]
    k, v = (a.transpose(1, 2) for a in kv)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return self.out(out.transpose(1, 2))

  def attend_local(self, x, block):
    """As the JAX `Attention.attend_local`: block b's queries against blocks b-1 and b."""
    b, length = x.shape[:2]
    n = length // block
    q = self.query(x)
    k, v = self.project_kv(x)
    split = lambda a: a.reshape(b, n, block, *a.shape[2:])
    with_previous = lambda a: torch.cat([F.pad(a[:, :-1], (0, 0, 0, 0, 0, 0, 1, 0)), a], dim=2)
    k, v = with_previous(split(k)), with_previous(split(v))
    i = torch.arange(block, device=x.device)[:, None]
    j = torch.arange(2 * block, device=x.device)[None, :]
    first = (torch.arange(n, device=x.device) > 0)[:, None, None]
    mask = (j <= i + block)[None] & (first | (j >= block)[None])  # [n, block, 2 * block]
    mask = mask[None, :, None].expand(b, n, 1, block, 2 * block).reshape(b * n, 1, block, -1)
    flat = lambda a: a.reshape(b * n, *a.shape[2:]).transpose(1, 2)  # [B*n, heads, len, hd]
    out = F.scaled_dot_product_attention(flat(split(q)), flat(k), flat(v), attn_mask=mask)
    return self.out(out.transpose(1, 2).reshape(q.shape))


class Mlp(nn.Module):
  def __init__(self, d, hidden):
    super().__init__()
    self.wi = Dense(d, hidden, bias=False)
    self.wo = Dense(hidden, d, bias=False)

  def forward(self, x):
    return self.wo(F.gelu(self.wi(x), approximate="tanh"))


class Block(nn.Module):
  def __init__(self, d, heads, head_dim, mlp_dim, cross, dropout, local_block=0):
    super().__init__()
    self.local_block = local_block
    self.self_norm = LayerNorm(d)
    self.self_attn = Attention(d, heads, head_dim)
    if cross:
      self.cross_norm = LayerNorm(d)
      self.cross_attn = Attention(d, heads, head_dim)
    self.cross = cross
    self.mlp_norm = LayerNorm(d)
    self.mlp = Mlp(d, mlp_dim)
    self.dropout = nn.Dropout(dropout)

  def forward(self, x, mask=None, cross_kv=None):
    h = self.self_norm(x)
    if self.local_block:
      h = self.self_attn.attend_local(h, self.local_block)
    else:
      h = self.self_attn.attend(h, self.self_attn.project_kv(h), mask)
    x = x + self.dropout(h)
    if self.cross:
      x = x + self.dropout(self.cross_attn.attend(self.cross_norm(x), cross_kv))
    return x + self.dropout(self.mlp(self.mlp_norm(x)))


class Transformer(nn.Module):
  def __init__(self, layers, d, heads, head_dim, mlp_dim, cross=False, dropout=0.0,
               local_block=0):
    super().__init__()
    self.layers, self.local_block = layers, local_block
    for i in range(layers):
      self.add_module(f"block{i}",
                      Block(d, heads, head_dim, mlp_dim, cross, dropout, local_block))
    self.final_norm = LayerNorm(d)

  def cross_kv(self, context):
    return [self._modules[f"block{i}"].cross_attn.project_kv(context) for i in range(self.layers)]

  def forward(self, x, mask=None, cross_kv=None):
    for i in range(self.layers):
      x = self._modules[f"block{i}"](x, mask, None if cross_kv is None else cross_kv[i])
    return self.final_norm(x)


class AudioEncoder(nn.Module):
  def __init__(self, d, layers, heads, head_dim, mlp_dim, max_frames, mel_mean, mel_std,
               dropout, mel_bins=80):
    super().__init__()
    self.mel_mean, self.mel_std = mel_mean, mel_std
    self.conv = Conv1d(mel_bins, d, 5)
    self.down0 = Conv1d(d, d, 4, 2)
    self.down1 = Conv1d(d, d, 4, 2)
    self.pos = _param(max_frames, d, std=0.02)
    self.transformer = Transformer(layers, d, heads, head_dim, mlp_dim, dropout=dropout)

  def forward(self, mel):  # [B, 4T, bins] -> [B, T, d]
    x = ((mel - self.mel_mean) / self.mel_std).transpose(1, 2)
    for conv in (self.conv, self.down0, self.down1):
      x = F.gelu(conv(x), approximate="tanh")
    x = x.transpose(1, 2)
    return self.transformer(x + self.pos[:x.shape[1]])


class FrameEmbed(nn.Module):
  def __init__(self, num_codes, heads, features):
    super().__init__()
    self.num_codes, self.heads = num_codes, heads
    self.table = Embed(heads * num_codes, features)

  def forward(self, codes):  # [..., gh, gw, K] -> [..., P, f]
    offsets = torch.arange(self.heads, device=codes.device) * self.num_codes
    emb = self.table(codes + offsets).sum(dim=-2)
    return emb.flatten(-3, -2)


class StyleEncoder(nn.Module):
  def __init__(self, num_codes, heads, positions, style_dim, embed_dim, hidden):
    super().__init__()
    self.embed = FrameEmbed(num_codes, heads, embed_dim)
    self.add_module("in", Dense(positions * embed_dim, hidden))
    self.hidden = Dense(hidden, hidden)
    self.out = Dense(hidden, 2 * style_dim)
    with torch.no_grad():
      self.out.kernel.zero_()

  def forward(self, codes):
    x = self.embed(codes).flatten(2)  # [B, T, P*e]
    x = F.gelu(self._modules["in"](x), approximate="tanh")
    x = F.gelu(self.hidden(x), approximate="tanh").mean(dim=1)
    return self.out(x).chunk(2, dim=-1)


class Prior(nn.Module):
  """nwt_jax.models.prior.Prior's teacher-forced forward (FAR or MAR)."""

  def __init__(self, *, decoder, grid, code_heads, num_codes, num_episodes, max_frames, d_model,
               num_heads, head_dim, mlp_dim, temporal_layers, spatial_layers, audio_layers,
               code_embed_dim, style_dim, style_hidden, depth_dim, depth_layers, mel_mean,
               mel_std, dropout_rate, prev_frame_dropout=0.0, depth_window_rows=0,
               spatial_patch=1, copy_gate=False, spatial_film=False, cond_skip=False,
               audio_dropout=0.0, stale_frame_rate=0.0, mel_bins=80):
    super().__init__()
    self.prev_frame_dropout, self.audio_dropout = prev_frame_dropout, audio_dropout
    self.stale_frame_rate = stale_frame_rate
    d, p, e, s = d_model, grid[0] * grid[1], code_embed_dim, spatial_patch
    self.s, self.copy_gate = s, copy_gate
    self.decoder, self.grid, self.k, self.v = decoder, tuple(grid), code_heads, num_codes
    self.p, self.d = p, d
    stack = dict(heads=num_heads, head_dim=head_dim, mlp_dim=mlp_dim)
    self.audio_encoder = AudioEncoder(d, audio_layers, max_frames=max_frames, mel_mean=mel_mean,
                                      mel_std=mel_std, dropout=dropout_rate, mel_bins=mel_bins,
                                      **stack)
    self.style_encoder = StyleEncoder(num_codes, code_heads, p, style_dim, e, style_hidden)
    self.null_audio = _param(d, std=0.02) if audio_dropout > 0 else None
    self.episode_embed = Embed(num_episodes, d)
    self.audio_proj = Dense(d, d, bias=False)
    self.style_proj = Dense(style_dim, d, bias=False)
    self.time_pos = _param(max_frames, d, std=0.02)
    self.frame_embed = FrameEmbed(num_codes, code_heads, e)
    self.bos_frame = _param(p, e)
    self.frame_summary = Dense(p * e, d, bias=False)
    self.temporal = Transformer(temporal_layers, d, cross=True, dropout=dropout_rate, **stack)
    self.spatial_pos = _param(p // s**2, d, std=0.02)
    self.prev_proj = Dense(s * s * e, d, bias=False)
    self.cond_proj = Dense(d, d, bias=False) if cond_skip else None
    self.film = Dense(d, d, bias=False) if spatial_film else None
    if spatial_film:
      with torch.no_grad():
        self.film.kernel.zero_()
    self.spatial = (Transformer(spatial_layers, d, dropout=dropout_rate, **stack)
                    if spatial_layers else None)
    if decoder == "far":
      self.head_norm = LayerNorm(d)
      self.head = nn.Parameter(torch.randn(d, s * s * code_heads, num_codes) / math.sqrt(d))
      if copy_gate:
        self.copy = Dense(d, s * s * code_heads)
    else:
      dd = depth_dim
      self.dd = dd
      self.depth_in = Dense(d, s * s * dd, bias=False)
      self.depth_pos = _param(p * code_heads, dd, std=0.02)
      self.depth_token = Embed(code_heads * num_codes, dd)
      self.depth_bos = _param(dd)
      self.depth = Transformer(depth_layers, dd, num_heads, dd // num_heads, 4 * dd,
                               dropout=dropout_rate,
                               local_block=depth_window_rows * grid[1] * code_heads)
      self.depth_head = nn.Parameter(torch.randn(code_heads, dd, num_codes) / math.sqrt(dd))
      if copy_gate:
        self.depth_copy = nn.Parameter(torch.zeros(code_heads, dd))
        self.depth_copy_bias = nn.Parameter(torch.zeros(code_heads))

  def forward(self, codes, mel, episode, noise=None):
    """codes [B, T, gh, gw, K], mel [B, 4T, bins], episode [B] -> (logits [B, T, gh, gw, K, V],
    kl, the previous frames' codes the model saw [B, T, gh, gw, K]); z = mu + sigma * noise
    (noise ~ N(0, I) unless given)."""
    b, t = codes.shape[:2]
    mu, log_sigma = self.style_encoder(codes)
    if noise is None:
      noise = torch.randn_like(mu)
    z = mu + log_sigma.exp() * noise
    audio = self.audio_encoder(mel)  # [B, T, d]
    if self.training and self.audio_dropout > 0:
      drop = torch.rand(b, device=mel.device) < self.audio_dropout
      audio = torch.where(drop[:, None, None], self.null_audio, audio)
    episode = episode[:, None].expand(b, t) if episode.ndim == 1 else episode
    cond = (self.audio_proj(audio) + self.episode_embed(episode)
            + self.style_proj(z)[:, None] + self.time_pos[:t])
    cross_kv = self.temporal.cross_kv(audio)
    prev_codes = self._previous_codes(codes)
    logits = self._decode(codes, prev_codes, cond, cross_kv)
    kl = 0.5 * (mu ** 2 + (2 * log_sigma).exp() - 1 - 2 * log_sigma).sum(-1).mean()
    return logits, kl, prev_codes

  def _decode(self, codes, prev_codes, cond, cross_kv):
    b, t = codes.shape[:2]
    prev = self.frame_embed(prev_codes.clamp(min=0))  # [B, T, P, e]
    is_bos = (prev_codes[:, :, 0, 0, 0] < 0)[..., None, None]
    prev = torch.where(is_bos, self.bos_frame.expand_as(prev), prev)
    x = cond + self.frame_summary(prev.flatten(2))
    causal = torch.ones(t, t, dtype=torch.bool, device=codes.device).tril()
    h = self.temporal(x, causal, cross_kv)
    if self.cond_proj is not None:
      h = h + self.cond_proj(cond)
    shown = self.prev_proj(self._to_patches(prev).flatten(3))  # [B, T, P', d]
    if self.film is not None:
      shown = shown * (1 + self.film(h)[:, :, None])
    c = h[:, :, None] + self.spatial_pos + shown  # [B, T, P', d]
    if self.spatial is not None:
      c = self.spatial(c.flatten(0, 1)).unflatten(0, (b, t))
    if self.decoder == "far":
      x = self.head_norm(c)
      logits = (x @ self.head.reshape(self.d, -1)).reshape(b, t, -1, self.s ** 2, self.k * self.v)
      logits = self._from_patches(logits).unflatten(-1, (self.k, self.v))  # [B, T, P, K, V]
      if self.copy_gate:
        gate = self._from_patches(self.copy(x).unflatten(-1, (self.s ** 2, self.k)))
        logits = logits + self._copy_logits(gate, prev_codes.flatten(2, 3))
    else:
      logits = self._mar_logits(c, codes, prev_codes)
    return logits.reshape((b, t) + self.grid + (self.k, self.v))

  def _previous_codes(self, codes):  # as the JAX Prior._previous_codes (its own random draws)
    b, t = codes.shape[:2]
    padded = torch.cat([torch.full_like(codes[:, :1], -1), codes], dim=1)
    if not self.training or (self.stale_frame_rate <= 0 and self.prev_frame_dropout <= 0):
      return padded[:, :-1]  # frame t-1's (-1 at t = 0), as JAX's path without a draw
    frame = torch.arange(t, device=codes.device)
    source = (frame - 1).expand(b, t)
    if self.training and self.stale_frame_rate > 0:
      stale = (torch.rand(b, t, device=codes.device) < self.stale_frame_rate) & (frame >= 2)
      older = (torch.rand(b, t, device=codes.device) * (frame - 1)).floor().long()
      source = torch.where(stale, older, source)
    if self.training and self.prev_frame_dropout > 0:
      source = torch.where(torch.rand(b, t, device=codes.device) < self.prev_frame_dropout,
                           -1, source)
    index = (source + 1).reshape(b, t, 1, 1, 1).expand((b, t) + codes.shape[2:])
    return torch.gather(padded, 1, index)

  def _copy_logits(self, gate, prev_codes):  # [..., K] x codes [..., K] (-1: none) -> [..., K, V]
    hot = F.one_hot(prev_codes.clamp(min=0), self.v).float() * (prev_codes >= 0)[..., None]
    return gate[..., None] * hot

  def _to_patches(self, x):  # [B, T, P, ...] -> [B, T, P / S**2, S*S, ...] (as the JAX model)
    (gh, gw), s = self.grid, self.s
    x = x.reshape(x.shape[:2] + (gh // s, s, gw // s, s) + x.shape[3:]).movedim(4, 3)
    return x.reshape(x.shape[:2] + (gh * gw // s**2, s * s) + x.shape[6:])

  def _from_patches(self, x):  # [B, T, P / S**2, S*S, ...] -> [B, T, P, ...]
    (gh, gw), s = self.grid, self.s
    x = x.reshape(x.shape[:2] + (gh // s, gw // s, s, s) + x.shape[4:]).movedim(3, 4)
    return x.reshape(x.shape[:2] + (gh * gw,) + x.shape[6:])

  def _mar_logits(self, c, codes, prev_codes):
    b, t = codes.shape[:2]
    length, k, v = self.p * self.k, self.k, self.v
    flat = codes.reshape(b, t, length)
    rows = (torch.arange(length - 1, device=codes.device) % k) * v + flat[..., :-1]
    prev = torch.cat([self.depth_bos.expand(b, t, 1, -1), self.depth_token(rows)], dim=2)
    x = self._from_patches(self.depth_in(c).unflatten(-1, (self.s ** 2, self.dd)))  # [B,T,P,dd]
    x = x.repeat_interleave(k, dim=2) + self.depth_pos + prev  # [B, T, L, dd]
    causal = torch.ones(length, length, dtype=torch.bool, device=codes.device).tril()
    y = self.depth(x.reshape(b * t, length, self.dd),
                   None if self.depth.local_block else causal)
    y = y.reshape(b, t, self.p, k, self.dd)
    logits = torch.einsum("btpkd,kdv->btpkv", y, self.depth_head)
    if self.copy_gate:
      gate = torch.einsum("btpkd,kd->btpk", y, self.depth_copy) + self.depth_copy_bias
      logits = logits + self._copy_logits(gate, prev_codes.flatten(2, 3))
    return logits


# The JAX prior's fields the peer does not implement, and the values it matches them at: the
# identity anchor and the training-only stray-cell noise came after the peer.
NOT_IN_PEER = {"anchor": False, "prev_code_noise": 0.0, "autoregressive": True,
               "hidden_cells": ()}


def build_prior(config, manifest: dict) -> Prior:
  """The peer of `train_prior.make_model(config, manifest)` (for a config without the fields of
  NOT_IN_PEER: time the JAX prior with --config.prior.anchor=False
  --config.prior.prev_code_noise=0 to compare it with the peer)."""
  fields = dict(config.prior)
  as_tuple = lambda x: tuple(x) if isinstance(x, (list, tuple)) else x
  differ = {k: fields[k] for k, v in NOT_IN_PEER.items()
            if k in fields and as_tuple(fields[k]) != v}
  if differ:
    raise NotImplementedError(f"the PyTorch peer has no {sorted(differ)}; pass "
                              + " ".join(f"--config.prior.{k}={v}" for k, v in NOT_IN_PEER.items()))
  for k in NOT_IN_PEER:
    fields.pop(k, None)
  return Prior(grid=tuple(manifest["grid"]), code_heads=manifest["code_heads"],
               num_codes=manifest["num_codes"], num_episodes=manifest["num_episodes"],
               mel_bins=manifest.get("mel_bins", 80), **fields)


def prior_loss(model, codes, mel, episode, *, beta, label_smoothing, change_weight=1.0,
               noise=None):
  """train_prior.train_step's loss: code cross-entropy (the codes that differ from the previous
  frame's weighted `change_weight` times, logit-adjusted as nwt_jax.training.losses does) + beta * KL /
  codes per window."""
  logits, kl, prev = model(codes, mel, episode, noise)  # prev: what the model saw
  v = logits.shape[-1]
  nll = F.cross_entropy(logits.reshape(-1, v), codes.reshape(-1))
  if change_weight == 1.0:
    ce = nll if not label_smoothing else F.cross_entropy(
        logits.reshape(-1, v), codes.reshape(-1), label_smoothing=label_smoothing)
  else:
    shift = math.log(change_weight) * F.one_hot(prev.clamp(min=0), v) * (prev >= 0)[..., None]
    per_code = F.cross_entropy((logits - shift).reshape(-1, v), codes.reshape(-1),
                               label_smoothing=label_smoothing, reduction="none")
    w = torch.where(codes != prev, change_weight, 1.0).reshape(-1)  # frame 0: all new
    ce = (w * per_code).sum() / w.sum()
  accuracy = (logits.argmax(-1) == codes).float().mean()
  return ce + beta * kl / codes[0].numel(), {"nll": nll, "kl": kl, "accuracy": accuracy}


class PriorTrainStep:
  """One teacher-forced prior update: loss, backward, clipping, finite check, AdamW (no weight
  decay on vectors) with a warmup-cosine learning rate."""

  def __init__(self, config, model: Prior, compile: bool = False):
    self.config, self.model = config, model
    o = config.optim
    self.opt = _adamw(model.parameters(), o.lr, o.b1, o.b2, o.weight_decay, decay_all=False)
    self.params = list(model.parameters())
    self.step = 0
    self.loss = torch.compile(prior_loss) if compile else prior_loss

  def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    o, lc = self.config.optim, self.config.loss
    beta = (lc.kl_weight if lc.kl_anneal_steps <= 0
            else lc.kl_weight * min(1.0, self.step / lc.kl_anneal_steps))
    loss, metrics = self.loss(self.model, batch["codes"], batch["mel"], batch["episode"],
                              beta=beta, label_smoothing=lc.label_smoothing,
                              change_weight=lc.change_weight)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(self.params, o.clip_norm)
    if bool(torch.isfinite(loss + norm)):
      _set_lr(self.opt, warmup_cosine(self.step, o.lr, o.warmup_steps, o.decay_steps,
                                      o.lr * o.end_lr_factor))
      self.opt.step()
    self.step += 1
    return {"loss": loss.detach(), **metrics, "grad_norm": norm}
