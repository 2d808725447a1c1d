"""``unitok edit``: edit an image as an instruction says.

``unitok edit IMAGE "INSTRUCTION" --out OUT.png`` writes the edited image. ``--edits-file F.jsonl
--out DIR`` reads lines ``{"image": PATH, "instruction": TEXT}`` and writes ``DIR/{L:05d}.png``
for line ``L`` (0-based). Every path written is printed. The model's edit settings by default
(``default_edit_*``: greedy for a model saved without them); when sampling, line ``L`` uses seed
``--seed + L``, whatever the batch size.
Every line is checked, and every image found, before the model loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from unitok.commands._files import read_image, read_requests, save_image, single_request
from unitok.commands._options import (
    add_runtime_arguments,
    check_runtime_arguments,
    load_pipeline,
    show_progress,
)
from unitok.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", metavar="IMAGE", help="the image to edit (or use --edits-file)")
    parser.add_argument("instruction", nargs="?", metavar="INSTRUCTION", help="what to change")
    parser.add_argument("--edits-file", metavar="FILE",
                        help='JSON lines {"image": PATH, "instruction": TEXT}; edits go to --out DIR')
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="the edited image (default edited.png), or a folder with --edits-file (default edited/)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature; 0 = greedy (default: the model's)")
    parser.add_argument("--candidates", type=int, default=None,
                        help="sample this many edits per image and keep the one the model judges best "
                             "(default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="base seed when sampling (default 0)")
    add_runtime_arguments(parser, default_batch_size=16)


def run(args: argparse.Namespace) -> int:
    check_runtime_arguments(args)
    if args.temperature is not None and not 0.0 <= args.temperature <= 10.0:
        raise UserError(f"--temperature must be in [0, 10], got {args.temperature}")
    if args.candidates is not None and not 1 <= args.candidates <= 64:
        raise UserError(f"--candidates must be in [1, 64], got {args.candidates}")
    if args.candidates is not None and args.candidates > 1 and args.temperature == 0:
        raise UserError(f"--candidates {args.candidates} needs sampling: give --temperature > 0")
    if args.edits_file is not None:
        if args.image is not None:
            raise UserError("give IMAGE INSTRUCTION or --edits-file FILE, not both")
        requests = read_requests(args.edits_file, "instruction")
    else:
        if args.image is None or args.instruction is None:
            raise UserError("give IMAGE and INSTRUCTION, or --edits-file FILE")
        requests = [single_request(args.image, args.instruction, "instruction")]
    paths = _output_paths(args, requests)
    pipeline = load_pipeline(args, progress=show_progress(args) and len(requests) == 1)

    import torch
    from tqdm.auto import tqdm

    with tqdm(total=len(requests), unit="edit", disable=not show_progress(args) or len(requests) == 1) as bar:
        for start in range(0, len(requests), args.batch_size):
            batch = requests[start:start + args.batch_size]
            images = [read_image(request.image, request.where) for request in batch]
            generators = [torch.Generator().manual_seed(args.seed + request.line) for request in batch]
            edited = pipeline.edit(images, [request.text for request in batch], temperature=args.temperature,
                                   num_candidates=args.candidates, generator=generators, batch_size=args.batch_size).images
            for request, image in zip(batch, edited, strict=True):
                save_image(image, paths[request.line], _image_format(paths[request.line]))
                print(paths[request.line], flush=True)
            bar.update(len(batch))
    return 0


def _output_paths(args: argparse.Namespace, requests) -> dict[int, Path]:
    """Where each request's edit goes, decided (and checked) before any work."""
    if args.edits_file is None:
        from PIL import Image

        out = Path(args.out or "edited.png")
        if out.is_dir():
            raise UserError(f"--out {out} is a folder; give a file name such as {out / 'edited.png'}")
        if out.suffix.lower() not in Image.registered_extensions():
            raise UserError(f"--out {out}: unknown image extension {out.suffix!r} (use .png, .jpg, ...)")
        return {0: out}
    out = Path(args.out or "edited")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder (with --edits-file, --out is a folder)")
    if out.suffix:
        raise UserError(f"with --edits-file, --out must be a folder (files are named after their lines), got {out}")
    return {request.line: out / f"{request.line:05d}.png" for request in requests}


def _image_format(path: Path) -> str:
    from PIL import Image

    return Image.registered_extensions()[path.suffix.lower()]
