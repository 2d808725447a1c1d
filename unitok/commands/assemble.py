"""``unitok assemble LM_DIR TOKENIZER_DIR OUT_DIR``: an exported LM and an image tokenizer saved as
one ``UniTokPipeline`` folder, the ``--model`` of every other command.

``LM_DIR`` is an exported UniTok LM (``unitok lm export``: HF model + tokenizer files +
``unitok_vocabulary.json``), ``TOKENIZER_DIR`` an image tokenizer folder (``unitok tokenizer
export``). The parts are checked against the vocabulary, then written with ``save_pretrained``
(atomically). ``--fp16`` stores the LM weights in half precision to halve the folder; loading
brings them back to fp32 on CPU. The sampling flags set the defaults the pipeline saves with it
(used by ``unitok generate``, the HTTP API and ``unitok eval`` when not given there).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from generation.settings import JUDGES
from unitok.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("lm_dir", type=Path, metavar="LM_DIR", help="an exported LM (unitok lm export)")
    parser.add_argument("tokenizer_dir", type=Path, metavar="TOKENIZER_DIR",
                        help="an image tokenizer folder (unitok tokenizer export)")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="the pipeline folder to write (replaced atomically)")
    parser.add_argument("--fp16", action="store_true", help="store the LM weights in float16")
    parser.add_argument("--guidance", type=float, default=3.0, help="default guidance scale (default 3.0)")
    parser.add_argument("--temperature", type=float, default=1.0, help="default temperature; 0 = greedy (default 1.0)")
    parser.add_argument("--top-k", type=int, default=None, help="default top-k (default: off)")
    parser.add_argument("--top-p", type=float, default=None, help="default top-p (default: off)")
    parser.add_argument("--candidates", type=int, default=1,
                        help="default candidates per image, reranked by the model's own captioning (default 1)")
    parser.add_argument("--consensus-weight", type=float, default=0.0,
                        help="default weight of the candidates' agreement in reranking (generation.rerank; default 0)")
    parser.add_argument("--rewrite-prompts", action="store_true",
                        help="rewrite prompts before drawing by default (an LM trained with the rewriting task)")
    parser.add_argument("--judge", choices=JUDGES, default=None,
                        help="default judge of candidates: the model's yes/no verdict on the prompt or the prompt's "
                             "likelihood as their caption (default: the verdict where the LM was trained to verify)")
    parser.add_argument("--edit-temperature", type=float, default=0.0,
                        help="default sampling temperature of edits (default 0: greedy)")
    parser.add_argument("--edit-candidates", type=int, default=1,
                        help="default edits sampled per image, the best kept (generation.rerank.rerank_edits; default 1)")
    parser.add_argument("--edit-consensus-weight", type=float, default=0.0,
                        help="default weight of the edited candidates' agreement in reranking (default 0)")


def run(args: argparse.Namespace) -> int:
    for folder, made_by in ((args.lm_dir, "unitok lm export"), (args.tokenizer_dir, "unitok tokenizer export")):
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder; make it with '{made_by}'")
    import torch

    from generation.pipeline import UniTokPipeline

    pipeline = UniTokPipeline.from_parts(args.lm_dir, args.tokenizer_dir, default_guidance_scale=args.guidance,
                                         default_temperature=args.temperature, default_top_k=args.top_k,
                                         default_top_p=args.top_p, default_num_candidates=args.candidates,
                                         default_consensus_weight=args.consensus_weight,
                                         default_rewrite_prompts=args.rewrite_prompts, default_judge=args.judge,
                                         default_edit_temperature=args.edit_temperature,
                                         default_edit_num_candidates=args.edit_candidates,
                                         default_edit_consensus_weight=args.edit_consensus_weight)
    if args.fp16:
        pipeline.lm.to(torch.float16)
    pipeline.save_pretrained(args.out_dir)
    size = sum(f.stat().st_size for f in args.out_dir.rglob("*") if f.is_file()) / 1e6
    print(f"wrote {args.out_dir} ({size:.1f} MB)")
    return 0
