"""Where a training run keeps its outputs under its folder (``trainer.default_root_dir``).

One place for the layout that ``unitok.lightning_runs`` gives every LightningCLI run and that
``unitok train`` composes and reads back. No torch import here: ``unitok train --help`` reads it.
"""

CHECKPOINTS = "checkpoints"  # ROOT/checkpoints/last.ckpt, replaced in place, so a resume finds it
LOGS = "logs"  # ROOT/logs/version_N: the CSV logs, one version per launch
LAST_CHECKPOINT = "last.ckpt"  # ModelCheckpoint(save_last=True)'s file name
