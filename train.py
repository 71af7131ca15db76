"""Train a VMamba-family model from an ml_collections config.

    python train.py                                     # embedded default: configs/digits.py, CPU, ~3 min
    python train.py --config configs/cifar10.py --config.data.root /path/to/cifar10 --workdir runs/cifar10
    python train.py --config configs/imagenet.py:T --config.data.root /data/imagenet
    python train.py --config configs/digits.py --eval_only      # evaluate the latest checkpoint of --workdir

A run resumes from the latest checkpoint in --workdir by itself. SIGTERM saves a checkpoint and exits with 143.
Multi-host: auto-detected on Cloud TPU and Slurm; elsewhere pass --config.distributed.coordinator_address=host:port
--config.distributed.num_processes=N --config.distributed.process_id=i on every host.
"""

import json
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file("config", os.path.join(_HERE, "configs", "digits.py"), "Training config (.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Logs and checkpoints (default: runs/<config file name>).")
flags.DEFINE_bool("eval_only", False, "Restore the latest checkpoint of --workdir onto the current devices and "
                  "evaluate it (raw and EMA weights).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:  # Orbax logs every save at INFO; keep the console to the progress bar
        absl_logging.set_verbosity(absl_logging.WARNING)
    from vmamba_jax.train import evaluate_checkpoint, train_and_evaluate

    config_path = flags.FLAGS["config"].config_filename.split(":")[0]
    workdir = FLAGS.workdir or os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])
    if FLAGS.eval_only:
        print(json.dumps(evaluate_checkpoint(FLAGS.config, workdir), indent=2))
        return
    summary = train_and_evaluate(FLAGS.config, workdir)
    if summary["status"] == "preempted":
        sys.exit(143)


if __name__ == "__main__":
    app.run(main)
