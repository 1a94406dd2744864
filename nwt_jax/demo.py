"""The main job on the built-in synthetic world: `make demo` runs `python -m nwt_jax.demo`.

    python -m nwt_jax.demo --workdir=runs/demo

It chains the commands a user runs (README), each as its own process, then measures the result:
  data      build the `nwt_clips` synthetic TFDS dataset into WORKDIR/tfds, print its summary;
  dvae      python -m nwt_jax.train --config=configs/dvae.py:tiny   (on that dataset);
  tokenize  python -m nwt_jax.tokenize                              (frozen dVAE -> codes);
  prior     python -m nwt_jax.train --config=configs/prior.py:tiny,far;
  generate  python -m nwt_jax.generate on a held-out clip's audio with an episode switch;
  evaluate  the probe (trained once, checked against its r >= 0.95 bar) reads held-out generated
            videos: lipsync, style and episode control, traversals; dVAE PSNR/SSIM and codes;
  report    WORKDIR/report.html: sample videos, a reconstruction grid, a traversal grid, training
            curves and the metrics table with their bars.
A rerun resumes: finished training runs and tokens are kept, the rest is redone.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

from nwt_jax import host_malloc
from nwt_jax import synthetic

FLAGS = flags.FLAGS
def _define_flags() -> None:
  """The command-line flags, defined only when the module runs as a program (tests and
  other modules import it, and absl allows one definition of each name per process)."""
  flags.DEFINE_string("workdir", "runs/demo", "Where the dataset, runs and report go.")
  flags.DEFINE_integer("num_train_clips", 384, "Synthetic clips in the train split.")
  flags.DEFINE_integer("num_validation_clips", 64, "Synthetic clips in the validation split.")
  flags.DEFINE_integer("num_frames", 32, "Frames per clip (30 fps).")
  flags.DEFINE_integer("dvae_steps", 400, "dVAE training steps (the demo stops before the adversarial phase).")
  flags.DEFINE_integer("prior_steps", 600, "Prior training steps.")
  flags.DEFINE_string("prior_preset", "tiny,far", "configs/prior.py preset.")
  flags.DEFINE_integer("eval_clips", 16, "Held-out clips the evaluation generates.")
  flags.DEFINE_integer("eval_frames", 64, "Frames per held-out clip (two prior windows).")
  flags.DEFINE_float("temperature", 0.7, "Sampling temperature of the demo's videos.")
  flags.DEFINE_float("audio_guidance", 3.0, "Classifier-free audio guidance weight (1: off).")
  flags.DEFINE_float("change_threshold", 0.2, "A code keeps the previous frame's unless "
                     "P(change) is above this (0: plain sampling; README, Generation).")

REPO = pathlib.Path(__file__).resolve().parents[1]
DEMO_FRAME_SIZE = (64, 56)  # (H, W) of the demo's clips: the `tiny` dVAE's frames
# The training curves the report plots, per stage (TensorBoard tags the trainers write).
CURVES = {
    "dvae": ("train/loss", "train/l1", "eval/psnr", "eval/ssim", "eval/usage_min",
             "eval/mouth_r"),
    "prior": ("train/loss", "eval/nll", "eval/mouth_change_p", "eval/audio_gap",
              "eval/mouth_audio_gap", "eval/style_gap"),
}


def _nwt_clips():
  """The `nwt_clips` builder module from the repository's tfds_builders/ (not a pip package)."""
  builders = REPO / "tfds_builders"
  if not (builders / "nwt_clips").is_dir():
    raise SystemExit(f"error: {builders}/nwt_clips not found; run the demo from a clone of the "
                     "repository (pip install -e .).")
  sys.path.insert(0, str(builders))
  from nwt_clips import nwt_clips_dataset_builder  # pylint: disable=g-import-not-at-top
  return nwt_clips_dataset_builder


def dataset_builder(data_dir: pathlib.Path, *, num_train_clips: int, num_validation_clips: int,
                    num_frames: int):
  """The `nwt_clips` builder of the demo's synthetic dataset of these sizes in `data_dir`."""
  nwt_clips = _nwt_clips()
  # The sizes are in the config's name: TFDS takes a built name as done, whatever its sizes.
  config = nwt_clips.NwtClipsConfig(
      name=f"demo_t{num_frames}_{num_train_clips}_{num_validation_clips}",
      num_frames=num_frames, num_train_clips=num_train_clips,
      num_validation_clips=num_validation_clips, height=DEMO_FRAME_SIZE[0],
      width=DEMO_FRAME_SIZE[1], description="The demo's synthetic talking-head clips.")
  return nwt_clips.Builder(config=config, data_dir=str(data_dir))


def build_dataset(data_dir: pathlib.Path, **sizes) -> dict:
  """Builds (or finds already built) the synthetic dataset; returns its summary."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = dataset_builder(data_dir, **sizes)
  name = builder.builder_config.name
  start = time.perf_counter()
  built_now = not builder.is_prepared()
  if built_now:
    logging.info("Building nwt_clips/%s into %s ...", name, data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
  info = builder.info
  video = info.features["video"]
  return {
      "dataset": f"nwt_clips/{name}",
      "data_dir": str(data_dir),
      "built_now": built_now,
      "seconds": round(time.perf_counter() - start, 1),
      "splits": {split: info.splits[split].num_examples for split in info.splits},
      "clip_shape": list(video.shape),
      "fps": synthetic.FPS,
      "audio_sample_rate": info.features["audio"].sample_rate,
      "episodes": info.features["episode"].num_classes,
      "bytes": info.dataset_size,
      "truth": list(synthetic.TRUTH_KEYS),
  }


def _run(stage: str, args: list[str], log_path: pathlib.Path) -> float:
  """Runs `python -m ARGS` (its output streamed and kept in log_path); returns its seconds."""
  print(f"\n=== {stage}: python -m {' '.join(args)}", flush=True)
  start = time.perf_counter()
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  with open(log_path, "w") as log:
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
      log.write(line)
      if _worth_showing(line):
        print(line.rstrip(), flush=True)
    if proc.wait():
      raise SystemExit(f"error: the {stage} stage failed (exit {proc.returncode}); its log is "
                       f"{log_path}")
  seconds = time.perf_counter() - start
  print(f"=== {stage}: {seconds:.0f} s", flush=True)
  return seconds


def _start_probe(workdir: pathlib.Path, height: int, width: int) -> subprocess.Popen | None:
  """Trains the evaluation probe in a background process at low priority (nice 10) while the
  tokenizer and the prior run: they leave part of the CPU idle, and the probe needs none of their
  outputs. None if the probe is already saved. Its log is workdir/probe.log."""
  path = workdir / "probe.npz"
  if path.exists():
    return None
  code = ("import os; os.nice(10); from nwt_jax import evaluate; "
          f"evaluate.load_or_train_probe({str(path)!r}, {height}, {width})")
  print(f"\n=== probe: training in the background (log: {workdir / 'probe.log'})", flush=True)
  with open(workdir / "probe.log", "w") as log:
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _wait_for_probe(proc: subprocess.Popen | None, workdir: pathlib.Path) -> None:
  """Waits for `_start_probe`'s process; if it failed, the evaluation trains the probe itself."""
  if proc is not None and proc.wait():
    print(f"warning: the background probe failed (exit {proc.returncode}; see "
          f"{workdir / 'probe.log'}); the evaluation trains it again", flush=True)


def _worth_showing(line: str) -> bool:
  """Progress, eval and error lines; not TF/absl start-up chatter."""
  keep = ("steps/s", "eval", "Resumed", "error", "Error", "Wrote", "probe", "Done", "shards")
  return any(k in line for k in keep) and "WARNING: All log messages" not in line


def _train_args(config: str, workdir: pathlib.Path, overrides: dict) -> list[str]:
  return (["nwt_jax.train", f"--config={config}", f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in overrides.items()])


def _write_clip_audio(path: pathlib.Path, clip: dict) -> None:
  """A held-out clip's audio as a 24 kHz mono wav (what a user would pass to generate)."""
  import wave  # pylint: disable=g-import-not-at-top
  with wave.open(str(path), "wb") as f:
    f.setnchannels(1)
    f.setsampwidth(2)
    f.setframerate(synthetic.SAMPLE_RATE)
    f.writeframes(clip["audio"].astype("<i2").tobytes())


def _bars(metrics: dict) -> list[dict]:
  """The metrics table: value, bar and pass/fail for every measured bar of the issues."""
  rows = []

  def row(name, value, bar=None, ok=None, fmt="{:.3f}"):
    status = "" if ok is None else ("pass" if ok else "fail")
    rows.append({"name": name, "value": fmt.format(value), "bar": bar or "", "status": status})

  m = metrics
  row("dVAE PSNR (dB, held-out)", m["psnr"], ">= 26", m["psnr"] >= 26, "{:.2f}")
  row("dVAE SSIM", m["ssim"])
  row("codes in use, least-used head", m["code_usage_min"], ">= 0.5", m["code_usage_min"] >= 0.5)
  row("mouth recoverable from reconstructions (r)", m["mouth_recoverability_r"], ">= 0.9",
      m["mouth_recoverability_r"] >= 0.9)
  row("lipsync r (copied style)", m["lipsync_r"], ">= 0.6", m["lipsync_r"] >= 0.6)
  row("lipsync r, shuffled-audio control", m["lipsync_shuffled_r"], "|r| <= 0.15",
      abs(m["lipsync_shuffled_r"]) <= 0.15)
  row("best audio-video offset (frames)", m["lipsync_best_offset"], "0",
      m["lipsync_best_offset"] == 0, "{:d}")
  row("lipsync r (random style)", m["lipsync_r_random_style"])
  row("episode accuracy", m["episode_accuracy"], ">= 0.9", m["episode_accuracy"] >= 0.9)
  row("episode accuracy within 1 s after a switch", m["episode_accuracy_after_switch"],
      ">= 0.9", m["episode_accuracy_after_switch"] >= 0.9)
  row("style error, copied style (cam x/y, zoom)", m["style_error_copied"],
      "<= 0.5 x random", m["style_error_copied"] <= 0.5 * m["style_error_random"])
  row("style error, random style", m["style_error_random"])
  row(f"traversal: dim {m['traversal_best_dim']} moves {m['traversal_best_controls']} "
      "(Spearman)", m["traversal_best_spearman"])
  return rows


def evaluate_and_report(workdir: pathlib.Path, *, num_clips: int, num_frames: int, options,
                        timings: dict, prior_preset: str = "tiny,far"):
  """The evaluate and report stages (in this process; options: `sampling.SamplingOptions`):
  returns the metrics."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from nwt_jax import evaluate  # pylint: disable=g-import-not-at-top
  from nwt_jax import generate  # pylint: disable=g-import-not-at-top
  from nwt_jax import report  # pylint: disable=g-import-not-at-top
  from nwt_jax import video_io  # pylint: disable=g-import-not-at-top

  print("\n=== evaluate", flush=True)
  start = time.perf_counter()
  models = generate.load_models(str(workdir / "dvae"), str(workdir / "prior"))
  height, width = models.frame_size
  probe = evaluate.load_or_train_probe(str(workdir / "probe.npz"), height, width)
  clips = evaluate.heldout_clips(num_clips, num_frames, height, width,
                                 models.prior.num_episodes)
  metrics, recon = evaluate.evaluate_reconstruction(models, clips, probe=probe)
  generation, samples = evaluate.evaluate_generation(models, probe, clips, options=options)
  metrics.update(generation)
  timings["evaluate"] = time.perf_counter() - start

  site = workdir / "report"
  site.mkdir(exist_ok=True)
  audio = clips[0]["audio"]
  videos = []
  for name, caption, frames in [
      ("copied_style.mp4", "held-out audio, style copied from the clip", samples["copied"][0]),
      ("random_style.mp4", "the same audio, style z ~ N(0, I)", samples["random"][0]),
      ("episode_switch.mp4", f"episode {samples['own_episode'][0, 0]} -> "
       f"{samples['switched_episode'][0, -1]} at {num_frames // 2 / synthetic.FPS:.2f} s",
       samples["switched"][0])]:
    video_io.write_video(str(site / name), frames, fps=synthetic.FPS, audio=audio)
    videos.append((caption, name))
  trav = samples["traversal"]  # [5, T, H, W, 3]
  video_io.write_video(str(site / "traversal.mp4"), generate.tile(trav), fps=synthetic.FPS,
                       audio=audio[:trav.shape[1] * synthetic.SAMPLES_PER_FRAME])
  videos.append((f"traversal of style dim {metrics['traversal_best_dim']}: -2..2 sigma",
                 "traversal.mp4"))
  if (workdir / "generated.mp4").exists():
    os.replace(workdir / "generated.mp4", site / "generated.mp4")
  if (site / "generated.mp4").exists():
    videos.append(("python -m nwt_jax.generate on a held-out wav, --episode_schedule",
                   "generated.mp4"))

  originals = np.stack([c["video"][::8][:8] for c in clips[:4]])
  recon_rows = recon[:4, ::8][:, :8]
  report.save_png(str(site / "reconstructions.png"),
                  report.grid([f for pair in zip(originals, recon_rows) for f in pair]))
  report.save_png(str(site / "traversal.png"), report.grid(list(trav[:, ::4][:, :8])))
  images = [("held-out frames (odd rows) and their dVAE reconstructions (even rows)",
             "reconstructions.png"),
            (f"traversal of style dim {metrics['traversal_best_dim']} (rows: -2..2 sigma)",
             "traversal.png")]
  for stage, tags in CURVES.items():
    scalars = report.read_scalars(str(workdir / stage))
    curves = {tag: scalars[tag] for tag in tags if tag in scalars}
    if curves:
      report.plot_curves(str(site / f"{stage}_curves.png"), curves, title=f"{stage} training")
      images.append((f"{stage} training curves", f"{stage}_curves.png"))

  table = _bars(metrics)
  report.write_html(
      str(site / "report.html"), title="nwt_jax demo: the synthetic world",
      intro=(f"A tiny dVAE and a {prior_preset} prior trained on this machine "
             f"({os.cpu_count()} CPU cores), evaluated on {num_clips} held-out clips of "
             f"{num_frames} frames by a probe that reads the truth back from frames."),
      metrics=table, videos=videos, images=images,
      details={"metrics": metrics, "seconds": timings})
  (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
  return metrics, table


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  host_malloc.tune_for_cpu()
  workdir = pathlib.Path(FLAGS.workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  timings, start = {}, time.perf_counter()
  summary = build_dataset(workdir / "tfds", num_train_clips=FLAGS.num_train_clips,
                          num_validation_clips=FLAGS.num_validation_clips,
                          num_frames=FLAGS.num_frames)
  timings["data"] = summary["seconds"]
  (workdir / "dataset_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  print("Dataset summary:")
  print(json.dumps(summary, indent=2))

  data = {"data.source": "tfds", "data.data_dir": workdir / "tfds",
          "data.tfds_name": summary["dataset"]}
  timings["dvae"] = _run("dvae", _train_args(
      "configs/dvae.py:tiny", workdir / "dvae",
      {**data, "train.num_steps": FLAGS.dvae_steps}), workdir / "dvae.log")
  probe = _start_probe(workdir, *DEMO_FRAME_SIZE)
  timings["tokenize"] = _run("tokenize", [
      "nwt_jax.tokenize", f"--dvae_workdir={workdir / 'dvae'}", f"--output={workdir / 'tokens'}",
      "--source=tfds", f"--data_dir={workdir / 'tfds'}", f"--tfds_name={summary['dataset']}"],
      workdir / "tokenize.log")
  timings["prior"] = _run("prior", _train_args(
      f"configs/prior.py:{FLAGS.prior_preset}", workdir / "prior",
      {"dvae_workdir": workdir / "dvae", "data.tokens_dir": workdir / "tokens",
       "train.num_steps": FLAGS.prior_steps}), workdir / "prior.log")

  from nwt_jax import evaluate  # pylint: disable=g-import-not-at-top
  clip = evaluate.heldout_clips(1, 120, *DEMO_FRAME_SIZE)[0]
  _write_clip_audio(workdir / "heldout.wav", clip)
  timings["generate"] = _run("generate", [
      "nwt_jax.generate", f"--dvae_workdir={workdir / 'dvae'}",
      f"--prior_workdir={workdir / 'prior'}", f"--audio={workdir / 'heldout.wav'}",
      f"--output={workdir / 'generated.mp4'}",
      f"--episode_schedule=0:{clip['episode']},2:{(clip['episode'] + 3) % 8}",
      f"--temperature={FLAGS.temperature}", f"--audio_guidance={FLAGS.audio_guidance}",
      f"--change_threshold={FLAGS.change_threshold}"],
      workdir / "generate.log")

  _wait_for_probe(probe, workdir)
  from nwt_jax import sampling  # pylint: disable=g-import-not-at-top
  metrics, table = evaluate_and_report(
      workdir, num_clips=FLAGS.eval_clips, num_frames=FLAGS.eval_frames,
      options=sampling.SamplingOptions(temperature=FLAGS.temperature,
                                       audio_guidance=FLAGS.audio_guidance,
                                       change_threshold=FLAGS.change_threshold),
      timings=timings, prior_preset=FLAGS.prior_preset)
  timings["total"] = time.perf_counter() - start
  print("\n=== metrics (held-out synthetic clips)")
  width = max(len(r["name"]) for r in table)
  for r in table:
    print(f"{r['name']:<{width}}  {r['value']:>8}  {r['bar']:<16} {r['status']}")
  print("\nseconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
  print(f"Report: {workdir / 'report' / 'report.html'}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
