"""``unitok ask``: answer a question about an image (greedy, so deterministic).

``unitok ask IMAGE "QUESTION"`` prints the answer. ``--questions-file F.jsonl`` reads lines
``{"image": PATH, "question": TEXT}`` and prints one JSON line ``{"image", "question", "answer"}``
per request, in order (``image`` as written in the file). Every line is checked, and every image
found, before the model loads.
"""

from __future__ import annotations

import argparse
import json

from unitok.commands._files import read_image, read_requests, single_request
from unitok.commands._options import (
    add_runtime_arguments,
    check_runtime_arguments,
    load_pipeline,
    show_progress,
)
from unitok.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", metavar="IMAGE", help="the image to ask about (or use --questions-file)")
    parser.add_argument("question", nargs="?", metavar="QUESTION", help="the question")
    parser.add_argument("--questions-file", metavar="FILE",
                        help='JSON lines {"image": PATH, "question": TEXT}; answers are printed as JSON lines')
    parser.add_argument("--seed", type=int, default=0,
                        help="seed (answers are greedy, so it changes nothing; accepted as by every command)")
    add_runtime_arguments(parser, default_batch_size=32)


def run(args: argparse.Namespace) -> int:
    check_runtime_arguments(args)
    if args.questions_file is not None:
        if args.image is not None:
            raise UserError("give IMAGE QUESTION or --questions-file FILE, not both")
        requests = read_requests(args.questions_file, "question")
    else:
        if args.image is None or args.question is None:
            raise UserError("give IMAGE and QUESTION, or --questions-file FILE")
        requests = [single_request(args.image, args.question, "question")]
    pipeline = load_pipeline(args)

    from tqdm.auto import tqdm

    with tqdm(total=len(requests), unit="question", disable=not show_progress(args) or len(requests) == 1) as bar:
        for start in range(0, len(requests), args.batch_size):
            batch = requests[start:start + args.batch_size]
            images = [read_image(request.image, request.where) for request in batch]
            answers = pipeline.answer(images, [request.text for request in batch], batch_size=args.batch_size)
            for request, answer in zip(batch, answers, strict=True):
                if args.questions_file is None:
                    print(answer, flush=True)
                else:
                    print(json.dumps({"image": request.name, "question": request.text, "answer": answer}),
                          flush=True)
            bar.update(len(batch))
    return 0

