"""The main job on the built-in synthetic world: `make demo` runs `python -m nwt_jax.demo`.

    python -m nwt_jax.demo --workdir=runs/demo

Stages, each skipped when its output is already in the workdir (so a rerun resumes):
  data   build the `nwt_clips/synthetic` TFDS dataset into WORKDIR/tfds and print its summary.
"""

import json
import pathlib
import sys
import time

from absl import app
from absl import flags
from absl import logging

from nwt_jax import synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/demo", "Where the dataset, runs and report go.")
flags.DEFINE_integer("num_train_clips", 512, "Synthetic clips in the train split.")
flags.DEFINE_integer("num_validation_clips", 64, "Synthetic clips in the validation split.")
flags.DEFINE_integer("num_frames", 32, "Frames per clip (30 fps).")

REPO = pathlib.Path(__file__).resolve().parents[1]


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
      num_validation_clips=num_validation_clips,
      description="The demo's synthetic talking-head clips.")
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir = pathlib.Path(FLAGS.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  summary = build_dataset(workdir / "tfds", num_train_clips=FLAGS.num_train_clips,
                          num_validation_clips=FLAGS.num_validation_clips,
                          num_frames=FLAGS.num_frames)
  (workdir / "dataset_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  print("Dataset summary:")
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)
