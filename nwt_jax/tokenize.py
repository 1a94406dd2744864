"""Stage 1 -> 2: the frozen dVAE encoder turns every clip of each split into Memcode indices.

    python -m nwt_jax.tokenize --dvae_workdir=runs/dvae --output=runs/dvae/tokens
    python -m nwt_jax.tokenize --dvae_workdir=runs/dvae --output=T --source=tfds \\
        --data_dir=data/tfds --tfds_name=nwt_clips/synthetic

The work is `nwt_jax.training.tokens.tokenize`: rerunning an interrupted command writes only the
shards that are missing, and every process of a pod takes its share of the shards.
"""

import os

from absl import flags
from absl import logging
from etils import epath
import jax

from nwt_jax import cli
from nwt_jax.data import input_pipeline
from nwt_jax.training import checkpoint
from nwt_jax.training import restore
from nwt_jax.training import tokens

FLAGS = flags.FLAGS
flags.DEFINE_string("dvae_workdir", None, "Stage-1 workdir (the trained dVAE).")
flags.DEFINE_integer("step", None, "dVAE checkpoint step (default: the latest).")
flags.DEFINE_string("output", None, "Tokens directory (default: <dvae_workdir>/tokens).")
flags.DEFINE_list("splits", list(input_pipeline.SPLITS), "Splits to tokenize.")
flags.DEFINE_integer("clips_per_shard", 64, "Clips per shard file.")
flags.DEFINE_integer("encode_batch", 256, "Frames per encoder call.")
flags.DEFINE_enum("source", None, sorted(input_pipeline.SOURCES),
                  "Clip source (default: the dVAE config's data.source).")
flags.DEFINE_string("data_dir", None, "source=tfds: TFDS data_dir.")
flags.DEFINE_string("tfds_name", None, "source=tfds: '<dataset>/<config>[:version]'.")
flags.DEFINE_integer("num_train_clips", None, "source=synthetic_inline: train clips.")
flags.DEFINE_integer("num_validation_clips", None, "source=synthetic_inline: validation clips.")
flags.DEFINE_integer("process_index", None, "This process (default: jax.process_index()).")
flags.DEFINE_integer("process_count", None, "Processes (default: jax.process_count()).")


def main() -> None:
  model, params, dvae_config = restore.dvae(FLAGS.dvae_workdir, FLAGS.step)
  step = FLAGS.step
  if step is None:
    with checkpoint.Checkpointer(FLAGS.dvae_workdir, dvae_config) as ckpt:
      step = ckpt.latest_step()
  dvae_json = dvae_config.to_dict() if hasattr(dvae_config, "to_dict") else dict(dvae_config)
  data_cfg = tokens.clip_data_config(
      dvae_json.get("data"), source=FLAGS.source, data_dir=FLAGS.data_dir,
      tfds_name=FLAGS.tfds_name, num_train_clips=FLAGS.num_train_clips,
      num_validation_clips=FLAGS.num_validation_clips)
  output = FLAGS.output or str(epath.Path(FLAGS.dvae_workdir) / "tokens")
  workdir = FLAGS.dvae_workdir  # recorded absolute (a gs:// path already is)
  workdir = workdir if "://" in workdir else os.path.abspath(workdir)
  index = jax.process_index() if FLAGS.process_index is None else FLAGS.process_index
  count = jax.process_count() if FLAGS.process_count is None else FLAGS.process_count
  written = tokens.tokenize(
      model, params, data_cfg, output,
      dvae_info={"workdir": workdir, "step": step, "config": tokens.jsonable(dvae_json)},
      splits=tuple(FLAGS.splits), clips_per_shard=FLAGS.clips_per_shard,
      encode_batch=FLAGS.encode_batch, process_index=index, process_count=count)
  logging.info("Done: wrote %d shards into %s.", len(written), output)


if __name__ == "__main__":
  flags.mark_flags_as_required(["dvae_workdir"])
  cli.run(main)
