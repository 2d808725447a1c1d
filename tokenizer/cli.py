"""``unitok tokenizer``: train, validate or export the image tokenizer.

``fit`` and ``validate`` are LightningCLI (``--config configs/tokenizer/<name>.yaml``,
``--print_config``, ``--ckpt_path`` to resume, any ``--trainer.*``/``--model.*``/``--data.*``
override). Without ``--config`` the model and data defaults are the ``shapes64`` settings.
``export CKPT OUT_DIR`` turns a Lightning checkpoint into a ``save_pretrained`` folder that
``VQTokenizer.from_pretrained`` loads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from unitok.errors import UserError

ACTIONS = ("fit", "validate", "export")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="fit / validate (LightningCLI) or export CKPT OUT_DIR")
    parser.add_argument("rest", nargs=argparse.REMAINDER,
                        help="LightningCLI arguments (try: fit --help), or CKPT OUT_DIR for export")


def run(args: argparse.Namespace) -> int:
    if args.action == "export":
        if len(args.rest) != 2:
            raise UserError("usage: unitok tokenizer export CKPT OUT_DIR")
        out = export_checkpoint(args.rest[0], args.rest[1])
        print(f"exported tokenizer to {out}")
        return 0
    return run_lightning_cli([args.action, *args.rest])


def run_lightning_cli(argv: list[str]) -> int:
    from lightning.pytorch.cli import LightningCLI

    from tokenizer.data import TokenizerDataModule
    from tokenizer.training import NonFiniteLossError, TokenizerModule

    # We pass args on purpose (they come from our own parser), so LightningCLI's warning about
    # sys.argv also being set does not apply.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    try:
        LightningCLI(
            TokenizerModule, TokenizerDataModule, args=argv,
            save_config_kwargs={"overwrite": True}, trainer_defaults=_trainer_defaults(),
        )
    except NonFiniteLossError as error:
        raise UserError(str(error)) from None
    return 0


def _trainer_defaults() -> dict:
    """Defaults every tokenizer run needs, overridable from the YAML.

    No sanity validation: k-means codebook init runs on the first forward even under no_grad, so
    a sanity pass would initialise the codebook from validation data (ECOSYSTEM-NOTES).
    """
    return {"num_sanity_val_steps": 0, "default_root_dir": "runs/tokenizer"}


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Lightning checkpoint -> ``save_pretrained`` folder (config.json + safetensors), written atomically."""
    import torch

    from tokenizer.model import VQTokenizer

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint} not found; pass a .ckpt file written by 'unitok tokenizer fit'")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = state.get("hyper_parameters", {}).get("tokenizer")
    if "state_dict" not in state or config is None:
        raise UserError(f"{checkpoint} is not a tokenizer checkpoint (no tokenizer hyper-parameters)")
    model = VQTokenizer(**config)
    weights = {k.removeprefix("tokenizer."): v for k, v in state["state_dict"].items() if k.startswith("tokenizer.")}
    model.load_state_dict(weights)
    model.to(memory_format=torch.contiguous_format)  # safetensors stores plain contiguous tensors
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
