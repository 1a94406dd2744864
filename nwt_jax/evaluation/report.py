"""The report of any run (`python -m nwt_jax.report`, and the demo's report stage): one HTML page
with its media beside it, written by `build` from a dVAE workdir, a prior workdir or a demo run
directory. Sections, each present when its data exists (docs/report.md):

  metrics       the demo's bars (when the run was measured) and the explorer's numbers;
  training      every scalar each run logged, grouped (losses, adversarial, learning rate, eval,
                other), and the dVAE's reconstruction grids over its training steps;
  code usage    per-head usage histograms, the most used code of each grid cell and its share,
                perplexity;
  generation    held-out ground truth beside the generated video, the probe's mouth reading
                against the truth and the audio envelope, lipsync r by audio-video offset with
                the shuffled-audio control, the sampling settings and seed (`measure`);
  controls      random style, episode switch, style traversal;
  explorer      what each code draws, which cells and codes follow the audio (and, on the
                synthetic world, their overlap with the mouth), episode and style codes, and a
                code swapped throughout a held-out clip (`nwt_jax.evaluation.explore`).

Everything the page shows lies next to it (relative links), so the folder can be copied or served
as it is. The page checks its own media once loaded: `document.body.dataset.media` becomes a JSON
list of {src, ok, width, height} (a video counts when its first frame decoded, an image when it
has pixels), which the browser test reads back.
"""

import dataclasses
import html
import json
import shutil
import struct
import time
from collections.abc import Mapping, Sequence

from etils import epath
import imageio.v3 as iio
import jax
import ml_collections
import numpy as np

from nwt_jax import errors
from nwt_jax.data import constants
from nwt_jax.data import video_io
from nwt_jax.evaluation import explore
from nwt_jax.evaluation import jobs
from nwt_jax.evaluation import metrics as metrics_lib
from nwt_jax.evaluation import teacher_forced
from nwt_jax.inference import generator
from nwt_jax.training import checkpoint
from nwt_jax.training import dvae_eval
from nwt_jax.training import restore


def save_png(path: str, image: np.ndarray) -> None:
  """uint8 [H, W, 3] -> PNG."""
  iio.imwrite(path, np.asarray(image, np.uint8), extension=".png")


def grid(rows: Sequence[np.ndarray], *, gap: int = 2) -> np.ndarray:
  """Rows of frames, each [N, H, W, 3] (same N, H, W), -> one uint8 image, white gaps between."""
  rows = [np.asarray(r, np.uint8) for r in rows]
  n, h, w, _ = rows[0].shape
  out = np.full((len(rows) * (h + gap) - gap, n * (w + gap) - gap, 3), 255, np.uint8)
  for i, row in enumerate(rows):
    for j, frame in enumerate(row):
      out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = frame
  return out


def _events(logdir: str):
  """The Event protos of every events file in `logdir`, oldest file first. Read as TFRecords
  with tensorboard's protos: tensorboard's own loader imports TensorFlow where it is installed
  (~10 s)."""
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  for path in sorted(epath.Path(logdir).glob("events.out.tfevents.*")):
    data, at = path.read_bytes(), 0
    while at + 12 <= len(data):
      (length,) = struct.unpack("<Q", data[at:at + 8])
      record = data[at + 12:at + 12 + length]
      if len(record) < length:  # a record still being written
        break
      at += 12 + length + 4  # length, its CRC, the record, its CRC
      yield event_pb2.Event.FromString(record)


def read_scalars(logdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """TensorBoard scalars of one run: {tag: (steps, values)}, in step order. Runs written by
  clu's writer (before the training loop wrote simple values) hold scalar tensors."""
  found = {}
  for event in _events(logdir):
    for value in event.summary.value:
      if value.HasField("simple_value"):
        number = value.simple_value
      elif value.HasField("tensor") and not value.tensor.tensor_shape.dim:
        number = float(np.asarray(_tensor_value(value.tensor)))
      else:
        continue
      found.setdefault(value.tag, {})[event.step] = number  # a rerun's step replaces the old
  return {tag: (np.array(sorted(v)), np.array([v[k] for k in sorted(v)], np.float64))
          for tag, v in found.items()}


def _tensor_value(proto):
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  return tensor_util.make_ndarray(proto)


def plot_curves(path: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                title: str) -> None:
  """One PNG with a panel per curve {name: (steps, values)}, or per list of labelled curves
  {name: [(label, (steps, values)), ...]}."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(curves)
  cols = min(3, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.5 * rows), squeeze=False)
  for ax, name in zip(axes.flat, names):
    lines = curves[name] if isinstance(curves[name], list) else [(None, curves[name])]
    for label, (steps, values) in lines:
      ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=label)
    if len(lines) > 1:
      ax.legend(fontsize=6)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=72)
  plt.close(fig)


_CHECK_SCRIPT = """
<script>
window.addEventListener('load', async () => {
  const wait = (el) => new Promise((resolve) => {
    if (el.tagName === 'VIDEO') {
      if (el.readyState >= 2) return resolve();
      el.addEventListener('loadeddata', resolve, {once: true});
      el.addEventListener('error', resolve, {once: true});
      el.load();
    } else {
      if (el.complete) return resolve();
      el.addEventListener('load', resolve, {once: true});
      el.addEventListener('error', resolve, {once: true});
    }
  });
  const media = Array.from(document.querySelectorAll('video, img'));
  await Promise.all(media.map(wait));
  document.body.dataset.media = JSON.stringify(media.map((el) => {
    const video = el.tagName === 'VIDEO';
    const width = video ? el.videoWidth : el.naturalWidth;
    const height = video ? el.videoHeight : el.naturalHeight;
    return {src: el.getAttribute('src'), ok: width > 0 && height > 0 && !el.error,
            width: width, height: height};
  }));
});
</script>
"""


_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1100px; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 4px 10px; }
tr.pass td:last-child { color: #080; } tr.fail td:last-child { color: #b00; }
figure { display: inline-block; margin: 8px; vertical-align: top; }
video { height: 192px; image-rendering: pixelated; } img { max-width: 1050px; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


@dataclasses.dataclass
class Section:
  """One part of the page: a heading, a paragraph, a table (rows of {column: text}; a 'status'
  column of 'pass'/'fail' colours its row), videos and images ((caption, path relative to the
  page)), and a preformatted block."""
  title: str
  text: str = ""
  table: Sequence[Mapping[str, str]] = ()
  videos: Sequence[tuple[str, str]] = ()
  images: Sequence[tuple[str, str]] = ()
  pre: str = ""


def _section_html(s: Section) -> str:
  esc = html.escape
  parts = [f"<h2>{esc(s.title)}</h2>"]
  if s.text:
    parts.append(f"<p>{esc(s.text)}</p>")
  if s.table:
    columns = list(s.table[0])
    parts.append("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>")
    parts += [f"<tr class='{esc(str(row.get('status', '')))}'>"
              + "".join(f"<td>{esc(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
              for row in s.table]
    parts.append("</table>")
  parts += [f"<figure><video src='{esc(src)}' controls muted loop preload='auto'></video>"
            f"<figcaption>{esc(caption)}</figcaption></figure>" for caption, src in s.videos]
  parts += [f"<figure><img src='{esc(src)}' alt='{esc(caption)}'><figcaption>{esc(caption)}"
            f"</figcaption></figure>" for caption, src in s.images]
  if s.pre:
    parts.append(f"<pre>{esc(s.pre)}</pre>")
  return "\n".join(parts)


def write_html(path: str, *, title: str, intro: str, sections: Sequence[Section]) -> None:
  """Writes the page (atomically), its sections in order, with the media self-check."""
  esc = html.escape
  body = "\n".join(_section_html(s) for s in sections)
  page = (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>\n"
          f"<style>{_STYLE}</style></head>\n<body>\n<h1>{esc(title)}</h1>\n<p>{esc(intro)}</p>\n"
          f"{body}\n{_CHECK_SCRIPT}\n</body></html>\n")
  path = epath.Path(path)
  tmp = path.parent / f"{path.name}.tmp"
  tmp.write_text(page)
  tmp.replace(path)


# ----------------------------------------------------------------------------------------------
# The demo's bars


def bar_table(metrics: Mapping) -> list[dict]:
  """The demo's metrics table: value, bar and pass/fail for every measured bar of the issues
  (rows {'name', 'value', 'bar', 'status'})."""
  rows = []

  def row(name, value, bar=None, ok=None, fmt="{:.3f}"):
    status = "" if ok is None else ("pass" if ok else "fail")
    rows.append({"name": name, "value": fmt.format(value), "bar": bar or "", "status": status})

  m = metrics
  row("dVAE PSNR (dB, held-out)", m["psnr"], ">= 26", m["psnr"] >= 26, "{:.2f}")
  row("dVAE SSIM", m["ssim"])
  row("codes in use, least-used head", m["usage_min"], ">= 0.5", m["usage_min"] >= 0.5)
  row("mouth recoverable from reconstructions (r)", m["mouth_r"], ">= 0.9",
      m["mouth_r"] >= 0.9)
  if "integrity_psnr_by_second" in m and "integrity_psnr_reconstruction" in m:
    floor = m["integrity_psnr_reconstruction"] - 2
    row("frame integrity, reconstructions (dB)", m["integrity_psnr_reconstruction"], "", None,
        "{:.2f}")
    row("frame integrity, generated: worst second (dB)", min(m["integrity_psnr_by_second"]),
        f">= {floor:.2f} (reconstructions - 2)", min(m["integrity_psnr_by_second"]) >= floor,
        "{:.2f}")
  row("lipsync r (copied style)", m["lipsync_r"], ">= 0.75", m["lipsync_r"] >= 0.75)
  if "lipsync_r_teacher_forced" in m:
    tf = m["lipsync_r_teacher_forced"]
    row("lipsync r, teacher-forced next frame", tf, f"free-running >= {tf - 0.1:.3f}",
        m["lipsync_r"] >= tf - 0.1)
  row("lipsync r, shuffled-audio control", m["lipsync_shuffled_r"], "|r| <= 0.1",
      abs(m["lipsync_shuffled_r"]) <= 0.1)
  row("best audio-video offset (frames)", m["lipsync_best_offset"], "0",
      m["lipsync_best_offset"] == 0, "{:d}")
  row("lipsync r (random style)", m["lipsync_r_random_style"])
  row("episode accuracy", m["episode_accuracy"], ">= 0.95", m["episode_accuracy"] >= 0.95)
  row("episode accuracy within 1 s after a switch", m["episode_accuracy_after_switch"],
      ">= 0.95", m["episode_accuracy_after_switch"] >= 0.95)
  row("style error, copied style (cam x/y, zoom)", m["style_error_copied"],
      "<= 0.4 x random", m["style_error_copied"] <= 0.4 * m["style_error_random"])
  row("style error, random style", m["style_error_random"])
  row(f"traversal: dim {m['traversal_best_dim']} moves {m['traversal_best_controls']} "
      "(Spearman)", m["traversal_best_spearman"])
  return rows


# ----------------------------------------------------------------------------------------------
# Which run


@dataclasses.dataclass(frozen=True)
class Run:
  """A run directory and the workdirs in it: kind 'demo' (dvae/ and prior/ under root), 'prior'
  (a prior workdir; its dVAE is the one its config names) or 'dvae'."""
  kind: str
  root: epath.Path
  dvae: epath.Path
  prior: epath.Path | None = None


def _saved_config(workdir: epath.Path) -> ml_collections.ConfigDict:
  with checkpoint.Checkpointer(str(workdir), {}, async_save=False) as reader:
    step = reader.latest_step()
    if step is None:
      raise errors.MissingInput(f"No finished checkpoint in {workdir}/checkpoints.")
    return ml_collections.ConfigDict(reader.saved_config(step))


def find_run(path: str) -> Run:
  """What `path` holds: a demo run directory, a prior workdir or a dVAE workdir."""
  root = epath.Path(path).resolve() if "://" not in str(path) else epath.Path(path)
  has_ckpt = lambda d: (d / "checkpoints").is_dir()
  if has_ckpt(root / "dvae"):
    return Run("demo", root, root / "dvae", root / "prior" if has_ckpt(root / "prior") else None)
  if not has_ckpt(root):
    raise errors.MissingInput(f"{path} is neither a run directory (with dvae/) nor a workdir "
                              "(with checkpoints/)")
  config = _saved_config(root)
  if config.get("model") == "prior":
    dvae = epath.Path(config.get("dvae_workdir") or "")
    if not str(dvae) or not has_ckpt(dvae):
      raise errors.MissingInput(f"the prior in {path} names the dVAE workdir {str(dvae)!r}, which "
                                "holds no checkpoints")
    return Run("prior", root, dvae, root)
  return Run("dvae", root, root)


# ----------------------------------------------------------------------------------------------
# Measuring generation (the demo's evaluate stage; the CLI when a prior and a probe are given)

MEASUREMENTS = "measurements.json"  # in the report's folder: what `measure` found


def measure(models: generator.Models, probe, clips: list[dict], out: epath.Path, *, options,
            opening: str, seed: int, traverse_dims: int = 0, log=print) -> dict:
  """Scores reconstruction and generation on held-out clips (`jobs.evaluate_reconstruction`,
  `jobs.evaluate_generation`) and writes into `out` what the report shows of them: the sample
  videos, a reconstruction grid and MEASUREMENTS (metrics, settings, curves). Returns the
  metrics."""
  out.mkdir(parents=True, exist_ok=True)
  metrics, recon = jobs.evaluate_reconstruction(models, clips, probe=probe)
  generation, samples = jobs.evaluate_generation(models, probe, clips, options=options,
                                                 opening=opening, seed=seed,
                                                 traverse_dims=traverse_dims, log=log)
  metrics.update(generation)
  metrics.update(teacher_forced.teacher_forced_lipsync(models, probe, clips, options=options,
                                                       seed=seed))
  num_frames = samples["copied"].shape[1]
  audio = clips[0]["audio"][:num_frames * constants.SAMPLES_PER_FRAME]
  videos = []
  truth_beside = np.concatenate([clips[0]["video"][:num_frames], samples["copied"][0]], axis=2)
  trav = samples["traversal"]  # [5, T, H, W, 3]
  for name, caption, frames, section in [
      ("truth_vs_generated.mp4", "held-out ground truth (left) and the video generated from its "
       "audio, style copied from it (right)", truth_beside, "generation"),
      ("copied_style.mp4", "held-out audio, style copied from the clip", samples["copied"][0],
       "generation"),
      ("random_style.mp4", "the same audio, style z ~ N(0, I)", samples["random"][0],
       "controls"),
      ("episode_switch.mp4", f"episode {samples['own_episode'][0, 0]} -> "
       f"{samples['switched_episode'][0, -1]} at {num_frames // 2 / constants.FPS:.2f} s",
       samples["switched"][0], "controls"),
      ("traversal.mp4", f"traversal of style dim {metrics['traversal_best_dim']}: -2..2 sigma",
       generator.tile(trav), "controls")]:
    video_io.write_video(str(out / name), frames, fps=constants.FPS,
                         audio=audio[:len(frames) * constants.SAMPLES_PER_FRAME])
    videos.append([section, caption, name])
  originals = np.stack([c["video"][::8][:8] for c in clips[:4]])
  recon_rows = recon[:4, ::8][:, :8]
  save_png(str(out / "reconstructions.png"),
           grid([f for pair in zip(originals, recon_rows) for f in pair]))
  save_png(str(out / "traversal.png"), grid(list(trav[:, ::4][:, :8])))
  data = {
      "metrics": metrics,
      "settings": {**dataclasses.asdict(options), "opening": opening, "seed": seed,
                   "num_clips": len(clips), "num_frames": num_frames,
                   "first_clip": "validation 0"},
      "videos": videos,
      "lipsync": {"offsets": samples["lipsync_offsets"].tolist(),
                  "r_by_offset": samples["lipsync_r_by_offset"].tolist(),
                  "shuffled_r_by_offset": samples["lipsync_shuffled_r_by_offset"].tolist()},
      "mouth": {"read": samples["mouth_read"][0].tolist(),
                "true": samples["mouth_true"][0].tolist(),
                "loudness": explore.loudness(clips[0]["audio"], num_frames).tolist()},
  }
  (out / MEASUREMENTS).write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
  return metrics


def _json_default(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


# ----------------------------------------------------------------------------------------------
# Sections

_GROUPS = (("learning rate", ("lr", "learning_rate")),
           ("adversarial", ("adv", "d_loss", "d_real", "d_fake", "/fm", "d_grad", "disc")),
           ("losses", ("loss", "l1", "nll", "kl", "/ce", "perceptual")))


def group_of(tag: str) -> str:
  """The curve group of a logged scalar: eval (eval/...), learning rate, adversarial, losses or
  other."""
  if tag.startswith("eval/"):
    return "eval"
  return next((name for name, keys in _GROUPS if any(k in tag for k in keys)), "other")


def _per_head_together(curves: Mapping[str, tuple]) -> dict:
  """Curves 'a/headK' of every head K go into one panel 'a/head*' (a list of curves)."""
  out = {}
  for tag, curve in curves.items():
    prefix, _, last = tag.rpartition("/")
    key = f"{prefix}/head*" if last.startswith("head") and last[4:].isdigit() else tag
    out.setdefault(key, []).append((last, curve))
  return {k: v if k.endswith("head*") else v[0][1] for k, v in out.items()}


def _curves(run: Run, out: epath.Path) -> Section | None:
  images = []
  for name, workdir in (("dvae", run.dvae), ("prior", run.prior)):
    if workdir is None:
      continue
    scalars = read_scalars(str(workdir))
    groups = {}
    for tag in sorted(scalars):
      groups.setdefault(group_of(tag), {})[tag] = scalars[tag]
    groups = {group: _per_head_together(curves) for group, curves in groups.items()}
    for group in ("losses", "adversarial", "learning rate", "eval", "other"):
      if group in groups:
        file = f"{name}_{group.replace(' ', '_')}.png"
        plot_curves(str(out / file), groups[group], title=f"{name}: {group}")
        images.append((f"{name} training: {group}", file))
    samples = sorted((workdir / "samples").glob("recon_*.png") if name == "dvae" else [],
                     key=lambda p: int(p.stem.split("_")[1]))
    if samples:
      picks = sorted({samples[i] for i in np.linspace(0, len(samples) - 1,
                                                        min(6, len(samples))).astype(int)},
                     key=lambda p: int(p.stem.split("_")[1]))
      for path in picks:
        shutil.copyfile(path, out / f"dvae_{path.name}")
        images.append((f"dVAE reconstructions at step {path.stem.split('_')[1]} (originals "
                       "above, reconstructions below)", f"dvae_{path.name}"))
  if not images:
    return None
  return Section("Training", "Every scalar each run logged, grouped; the dVAE's held-out "
                 "reconstructions over its training steps.", images=images)


def _explore_clips(config, num_clips: int, num_frames: int, num_episodes: int) -> list[dict]:
  """Held-out clips for the code sections: the synthetic world's validation clips (with audio and
  truth) when the dVAE was trained on it, else the dVAE's own eval frames as one clip per
  eval_frames_per_clip frames (no audio)."""
  source, name = config.data.get("source", ""), config.data.get("tfds_name", "") or ""
  if source == "synthetic" or name.startswith("nwt_clips"):
    return jobs.heldout_clips(num_clips, num_frames, config.data.height, config.data.width,
                              num_episodes)
  eval_set = dvae_eval.load_eval_set(config)
  t = config.train.eval_frames_per_clip
  n = min(num_clips, len(eval_set["video"]) // t)
  return [{"video": eval_set["video"][i * t:(i + 1) * t],
           "episode": int(eval_set["episode"][i * t])} for i in range(n)]


def _bar_chart(path: str, use: np.ndarray, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  heads = len(use)
  fig, axes = plt.subplots(1, heads, figsize=(3.2 * heads, 2.6), squeeze=False)
  for h, ax in enumerate(axes[0]):
    order = np.argsort(-use[h], kind="stable")
    share = use[h][order] / max(use[h].sum(), 1)
    ax.bar(np.arange(len(order)), share, width=1.0)
    ax.set_title(f"head {h}: {int((use[h] > 0).sum())} codes used", fontsize=9)
    ax.set_xlabel("codes, most used first", fontsize=8)
  axes[0][0].set_ylabel("share of uses", fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def _maps(path: str, panels: Sequence[tuple[str, np.ndarray, str]], title: str) -> None:
  """One PNG of grid maps: (title, [gh, gw] array, colormap) each."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cols = min(4, len(panels))
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 3.0 * rows), squeeze=False)
  for ax, (name, image, cmap) in zip(axes.flat, panels):
    shown = ax.imshow(image, cmap=cmap, interpolation="nearest")
    if cmap != "tab20":
      fig.colorbar(shown, ax=ax, fraction=0.046)
    ax.set_title(name, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def _line_plot(path: str, lines: Mapping[str, tuple[np.ndarray, np.ndarray]], *, title: str,
               xlabel: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 3))
  for name, (x, y) in lines.items():
    ax.plot(x, y, marker="." if len(x) < 30 else None, label=name)
  ax.set_xlabel(xlabel)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def _patch_strips(codes, recon, use, factor: int, per_head: int = 16) -> tuple[np.ndarray, list]:
  """Per head a row of the most used codes' mean decoded patches (x6): one image, and per head
  the (code, share) shown."""
  rows, shown = [], []
  margin = factor // 2
  for h, order in enumerate(explore.ranked(use)):
    which = order[:per_head]
    patches = explore.mean_patches(codes, recon, h, which, factor=factor, margin=margin)
    patches = np.repeat(np.repeat(patches, 6, axis=1), 6, axis=2)
    padded = np.full((per_head,) + patches.shape[1:], 255, np.uint8)
    padded[:len(patches)] = patches
    rows.append(padded)
    shown.append([(int(c), float(use[h, c] / use[h].sum())) for c in which])
  return grid(rows), shown


def _swap_pick(audio: dict, use: np.ndarray) -> tuple[int, int, int]:
  """(head, old, new) for the swap demonstration: the top audio-following code, replaced by the
  code of its head whose use among the audio cells goes most the other way with the loudness
  (e.g. an open mouth's by a closed one's), or else by that head's most used other code."""
  head, old, r = audio["top"][0]
  others = audio["code_r"][head].copy()
  others[old] = 0.0
  new = int(np.argmin(others * np.sign(r))) if np.any(others * np.sign(r) < 0) else -1
  if new < 0:
    order = [c for c in np.argsort(-use[head], kind="stable") if c != old]
    new = int(order[0])
  return head, old, new


def _explorer(run: Run, out: epath.Path, *, num_clips: int, num_frames: int,
              models: generator.Models | None, log) -> tuple[list[Section], dict]:
  """The code-usage and explorer sections, and their numbers."""
  if models is not None:  # the dVAE is already loaded; its config has no parameters to restore
    dvae, params, config = models.dvae, models.dvae_params, _saved_config(run.dvae)
  else:
    dvae, params, config = restore.dvae(str(run.dvae))
  num_codes, factor = dvae.num_codes, dvae.downsample_factor
  clips = _explore_clips(config, num_clips, num_frames, dvae.num_episodes)
  if not clips:
    return [], {}
  t0 = time.perf_counter()
  videos = np.stack([c["video"] for c in clips])
  episodes = np.stack([np.full(len(c["video"]), c["episode"]) for c in clips])
  codes = explore.encode(dvae, params, videos)  # [N, T, gh, gw, K]
  recon = explore.decode(dvae, params, codes, episodes)
  use = explore.counts(codes, num_codes)
  usage = metrics_lib.code_usage(codes, num_codes)  # per head: share of codes used, perplexity
  numbers = {"explore_clips": len(clips), "explore_frames": int(codes.shape[1])}
  _bar_chart(str(out / "code_usage.png"), use, "per-head code usage (held-out frames)")
  top, share = explore.dominant(codes, num_codes)
  _maps(str(out / "code_maps.png"),
        [(f"head {h}: most used code", top[..., h], "tab20") for h in range(dvae.heads)]
        + [(f"head {h}: its share of frames", share[..., h], "viridis")
           for h in range(dvae.heads)],
        "which cells use which codes")
  usage_table = [{"head": str(h), "codes used": f"{usage['usage'][h]:.3f}",
                  "perplexity": f"{usage['perplexity'][h]:.2f}"} for h in range(dvae.heads)]
  sections = [Section(
      "Code usage", f"{len(clips)} held-out clips of {codes.shape[1]} frames, a "
      f"{codes.shape[2]}x{codes.shape[3]} grid of {dvae.heads} heads x {num_codes} codes. "
      "Maps: per cell, its most used code (colours repeat past 20 codes) and the share of frames "
      "that use it.", table=usage_table,
      images=[("per-head usage histograms", "code_usage.png"),
              ("which cells use which codes", "code_maps.png")])]

  strips, shown = _patch_strips(codes, recon, use, factor)
  save_png(str(out / "code_patches.png"), strips)
  text = ("Each row is a head; its most used codes, left to right, each drawn as the mean "
          "decoded patch (the cell and half a cell around it, x6) where the code is used. "
          + " ".join(f"Head {h}: " + ", ".join(f"{c} ({s:.0%})" for c, s in row) + "."
                     for h, row in enumerate(shown)))
  explorer = [Section("Explorer: what each code looks like", text,
                      images=[("the most used codes of each head", "code_patches.png")])]

  table = []
  if "audio" in clips[0]:
    loud = np.stack([explore.loudness(c["audio"], codes.shape[1]) for c in clips])
    audio = explore.audio_following(codes, loud, num_codes)
    numbers["audio_cells"] = int(audio["cells"].sum())
    panels = [("audio score per cell (eta^2)", audio["cell_score"], "viridis"),
              ("audio cells (found without truth)", audio["cells"].astype(float), "gray")]
    text = ("Per cell, how much of the frames' loudness (centred on each clip's mean) its code "
            "explains (eta^2, adjusted for chance; the best head); the audio cells score at "
            "least 0.4 x the best cell. Top codes: the within-clip r of their use among the "
            "audio cells with the loudness.")
    if "truth" in clips[0]:
      mouth = explore.mouth_cells(clips, codes.shape[2:4])
      numbers["audio_mouth_iou"] = explore.iou(audio["cells"], mouth)
      panels.append(("truth: mouth cells", mouth.astype(float), "gray"))
      text += (f" On the synthetic world the audio cells overlap the truth's mouth cells with "
               f"IoU {numbers['audio_mouth_iou']:.2f}.")
    _maps(str(out / "audio_cells.png"), panels, "which cells follow the audio")
    table = [{"head": str(h), "code": str(c), "r with loudness": f"{r:+.3f}",
              "use": f"{use[h, c] / use[h].sum():.1%}"} for h, c, r in audio["top"]]
    numbers["audio_top_r"] = float(abs(audio["top"][0][2]))
    explorer.append(Section("Explorer: which codes follow the audio", text, table=table,
                            images=[("audio cells", "audio_cells.png")]))

    head, old, new = _swap_pick(audio, use)
    edit = explore.swap(dvae, params, codes[0], episodes[0], head=head, old=old, new=new,
                        cells=audio["cells"])
    side = np.concatenate([explore.decode(dvae, params, codes[0], episodes[0]),
                           explore.decode(dvae, params, edit["codes"], episodes[0])], axis=2)
    video_io.write_video(str(out / "swap.mp4"), side, fps=constants.FPS,
                         audio=clips[0]["audio"][:codes.shape[1] * constants.SAMPLES_PER_FRAME])
    _maps(str(out / "swap_change.png"),
          [("mean |change| per pixel", edit["change"], "magma"),
           ("cells swapped (share of frames)", edit["changed"].mean(axis=0), "gray")],
          f"head {head}: code {old} -> {new}")
    numbers.update(swap_head=head, swap_old=old, swap_new=new,
                   swap_cells=int(edit["changed"].sum()))
    explorer.append(Section(
        "Explorer: swap a code", f"Head {head}'s code {old} (the top audio code) replaced by "
        f"code {new} in the audio cells of every frame of held-out clip 0 "
        f"({int(edit['changed'].sum())} cell-frames), decoded: original left, edited right.",
        videos=[("original | edited", "swap.mp4")],
        images=[("per-pixel change", "swap_change.png")]))

  episode = explore.episode_scores(codes, episodes, num_codes)
  rows = [{"head": str(h), "code": str(c), "eta^2 with the episode": f"{e:.3f}"}
          for h, c, e in episode["top"]]
  numbers["episode_top_eta2"] = float(episode["top"][0][2])
  text = ("The correlation ratio (eta^2) of each code's per-frame use (share of the grid) with "
          "the episode id: the share of its variance the episode explains.")
  style_rows = []
  if models is not None:
    # Each clip's posterior mean z from its first window (`controls.reference_style`).
    window = codes[:, :models.window_frames]
    z = np.asarray(jax.jit(lambda p, c: models.prior.apply(
        {"params": p}, c, method=models.prior.encode_style)[0])(models.prior_params, window))
    style = explore.style_scores(codes, z, num_codes, k=3)
    for d, tops in enumerate(style["top"]):
      for h, c, r in tops[:1]:
        style_rows.append({"style dim": str(d), "head": str(h), "code": str(c),
                           "r": f"{r:+.3f}"})
  explorer.append(Section("Explorer: which codes carry the episode", text, table=rows))
  if style_rows:
    explorer.append(Section(
        "Explorer: which codes carry the style",
        "Per dimension of the prior's style latent (the posterior mean of each clip), the code "
        "whose per-frame use correlates most with it (r over frames).", table=style_rows))
  log(f"report: code sections in {time.perf_counter() - t0:.1f}s")
  return sections + explorer, numbers


def _generation(out: epath.Path) -> tuple[list[Section], dict]:
  """The generation and controls sections from `measure`'s MEASUREMENTS in `out`."""
  path = out / MEASUREMENTS
  if not path.exists():
    return [], {}
  data = json.loads(path.read_text())
  lip, mouth = data["lipsync"], data["mouth"]
  _line_plot(str(out / "lipsync_by_offset.png"),
             {"generated vs its audio": (lip["offsets"], lip["r_by_offset"]),
              "shuffled audio (control)": (lip["offsets"], lip["shuffled_r_by_offset"])},
             title="lipsync r by offset (> 0: the video lags)", xlabel="offset (frames)")
  seconds = np.arange(len(mouth["read"])) / constants.FPS
  loud = np.asarray(mouth["loudness"])
  _line_plot(str(out / "mouth_over_time.png"),
             {"mouth read by the probe (generated)": (seconds, mouth["read"]),
              "mouth in the truth": (seconds, mouth["true"]),
              "audio envelope (scaled)": (seconds, loud / max(loud.max(), 1e-9))},
             title="held-out clip 0: the generated mouth against the audio", xlabel="seconds")
  by = {}
  for section, caption, name in data["videos"]:
    by.setdefault(section, []).append((caption, name))
  if (out / "generated.mp4").exists():
    by["generation"].append(("python -m nwt_jax.generate on a held-out wav, --episode_schedule",
                             "generated.mp4"))
  settings = json.dumps(data["settings"], indent=2)
  generation = Section(
      "Generation", "Held-out clips' audio, the style copied from each clip; the probe reads the "
      "mouth back from the generated frames.", videos=by.get("generation", []),
      images=[("mouth over time", "mouth_over_time.png"),
              ("lipsync by offset", "lipsync_by_offset.png"),
              ("held-out frames (odd rows) and their dVAE reconstructions (even rows)",
               "reconstructions.png")],
      pre="sampling settings and seed:\n" + settings)
  controls_ = Section("Controls", "Style and episode control.", videos=by.get("controls", []),
                      images=[("traversal (rows: -2..2 sigma)", "traversal.png")])
  return [generation, controls_], data["metrics"]


def build(path: str, *, output: str = "", num_clips: int = 16, num_frames: int = 64,
          intro: str = "", extra: Mapping | None = None, sections: Sequence[Section] = (),
          log=print) -> epath.Path:
  """Writes the report of the run at `path` (`find_run`) into `output` (default PATH/report)
  and returns the page's path. Generation sections come from a `measure` already in `output`;
  the code sections encode `num_clips` held-out clips of `num_frames` frames. `intro` and
  `extra` (details shown at the end) are kept in `output` for later builds; `sections` (a
  caller's own, e.g. another run kind's metrics) come first."""
  run = find_run(path)
  out = epath.Path(output) if output else run.root / "report"
  out.mkdir(parents=True, exist_ok=True)
  # The page's intro and extra details are kept, so a later build (the command on a demo run)
  # writes the same page.
  page_info = out / "page.json"
  if intro or extra:
    page_info.write_text(json.dumps({"intro": intro, "extra": extra or {}}, default=_json_default))
  elif page_info.exists():
    kept = json.loads(page_info.read_text())
    intro, extra = kept["intro"], kept["extra"]
  models = (generator.load_models(str(run.dvae), str(run.prior)) if run.prior is not None
            else None)
  if (run.root / "generated.mp4").exists():  # the demo's generate stage (the CLI's output)
    shutil.copyfile(run.root / "generated.mp4", out / "generated.mp4")
  generation, measured = _generation(out)
  code_sections, numbers = _explorer(run, out, num_clips=num_clips, num_frames=num_frames,
                                     models=models, log=log)
  sections = list(sections)
  if measured:
    try:
      sections.append(Section("Metrics", "The measured bars (held-out synthetic clips).",
                              table=bar_table(measured)))
    except KeyError:  # measured by another version: shown among the details only
      pass
  if numbers:
    sections.append(Section("Explorer numbers", table=[
        {"name": k, "value": f"{v:.3f}" if isinstance(v, float) else str(v)}
        for k, v in numbers.items()]))
  training = _curves(run, out)
  sections += generation + ([training] if training else []) + code_sections
  sections.append(Section("Details", pre=json.dumps(
      {"run": {"kind": run.kind, "dvae": str(run.dvae), "prior": str(run.prior or "")},
       "explorer": numbers, "metrics": measured, **(extra or {})},
      indent=2, default=_json_default)))
  page = out / "report.html"
  write_html(str(page), title=f"nwt_jax report: {run.root.name}",
             intro=intro or f"The {run.kind} run in {run.root}.", sections=sections)
  return page
