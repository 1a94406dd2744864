"""The demo's HTML report: sample videos, image grids, training curves and the metrics table.

Everything the page shows lies next to it (relative links), so the folder can be copied or served
as it is. The page checks its own media once loaded: `document.body.dataset.media` becomes a JSON
list of {src, ok, width, height} (a video counts when its first frame decoded, an image when it
has pixels), which the browser test reads back.
"""

import html
import json
from collections.abc import Mapping, Sequence

from etils import epath
import imageio.v3 as iio
import numpy as np


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


def read_scalars(logdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """TensorBoard scalars of one run: {tag: (steps, values)}."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"scalars": 0, "tensors": 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags().get("scalars", []):
    events = acc.Scalars(tag)
    out[tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
  # Runs written by clu's writer (before the training loop wrote simple values) hold scalar
  # tensors.
  for tag in acc.Tags().get("tensors", []):
    events = acc.Tensors(tag)
    values = [np.asarray(_tensor_value(e.tensor_proto)) for e in events]
    if all(v.ndim == 0 for v in values):
      out[tag] = (np.array([e.step for e in events]), np.array(values, np.float64))
  return out


def _tensor_value(proto):
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  return tensor_util.make_ndarray(proto)


def plot_curves(path: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *,
                title: str) -> None:
  """One PNG with a panel per curve {name: (steps, values)}."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names = list(curves)
  cols = min(3, len(names))
  rows = -(-len(names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
  for ax, name in zip(axes.flat, names):
    steps, values = curves[name]
    ax.plot(steps, values, marker="." if len(steps) < 30 else None)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
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


def write_html(path: str, *, title: str, intro: str, metrics: Sequence[Mapping[str, str]],
               videos: Sequence[tuple[str, str]], images: Sequence[tuple[str, str]],
               details: Mapping[str, object]) -> None:
  """Writes the report. metrics: rows {'name', 'value', 'bar', 'status'}; videos and images:
  (caption, path relative to the report); details: shown as JSON at the end."""
  esc = html.escape
  rows = "\n".join(
      f"<tr class='{esc(m.get('status', ''))}'><td>{esc(m['name'])}</td>"
      f"<td>{esc(m['value'])}</td><td>{esc(m.get('bar', ''))}</td>"
      f"<td>{esc(m.get('status', ''))}</td></tr>" for m in metrics)
  video_html = "\n".join(
      f"<figure><video src='{esc(src)}' controls muted loop preload='auto'></video>"
      f"<figcaption>{esc(caption)}</figcaption></figure>" for caption, src in videos)
  image_html = "\n".join(
      f"<figure><img src='{esc(src)}' alt='{esc(caption)}'><figcaption>{esc(caption)}"
      f"</figcaption></figure>" for caption, src in images)
  page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1100px; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
tr.pass td:last-child {{ color: #080; }} tr.fail td:last-child {{ color: #b00; }}
figure {{ display: inline-block; margin: 8px; vertical-align: top; }}
video {{ height: 192px; image-rendering: pixelated; }} img {{ max-width: 1050px; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head>
<body>
<h1>{esc(title)}</h1>
<p>{esc(intro)}</p>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>value</th><th>bar</th><th>status</th></tr>
{rows}
</table>
<h2>Generated videos</h2>
{video_html}
<h2>Images</h2>
{image_html}
<h2>Details</h2>
<pre>{esc(json.dumps(details, indent=2, default=str))}</pre>
{_CHECK_SCRIPT}
</body></html>
"""
  path = epath.Path(path)
  tmp = path.parent / f"{path.name}.tmp"
  tmp.write_text(page)
  tmp.replace(path)
