"""Text-to-image sampling speed: our batched-CFG sampler vs transformers ``generate`` with CFG.

Both sides run the same LM on the same Shapes prompts with guidance 3, temperature 1, no top-k /
top-p, and draw exactly one image's worth of codes (``h * w`` tokens) restricted to the
image-code range. transformers runs CFG as ``generate(guidance_scale=..., negative_prompt_ids=...)``
(its unconditional rows are a second, sequential model call per token) with a logits processor
that masks everything but image codes. Timings are interleaved (ours, theirs, ours, ...) and the
median of ``--repeats`` runs is reported, so machine load hits both sides alike. An LM with an
image-position table (the default has one) runs without it on the transformers side, which knows
nothing of it: the same matrix work less one embedding add per token, so the times compare, but
only our side's codes are the model's drawing.

Then ``unitok generate`` is timed end to end for one image from a cold process (interpreter
start, imports, model load, sampling, decoding, PNG write), next to the bare import time.

    python scripts/bench_generate.py                  # random model of the default architecture
    python scripts/bench_generate.py --model DIR      # a saved UniTokPipeline folder
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from generation.pipeline import UniTokPipeline
from generation.random_model import random_pipeline, shapes_prompts
from generation.sampler import sample_image_codes
from generation.token_choice import SamplingOptions
from unitok.lm.sequences import text_to_image_prompt, unconditional_prompt
from unitok.lm.text_tokenizer import encode_text
from unitok.vocabulary import UnifiedVocabulary

GUIDANCE = 3.0


class ImageCodesOnly(LogitsProcessor):
    """transformers' side of "sample only image codes": every other id gets -inf."""

    def __init__(self, vocabulary: UnifiedVocabulary, device: torch.device):
        self.blocked = ~vocabulary.image_mask(device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.masked_fill(self.blocked, -float("inf"))


def ours(pipe: UniTokPipeline, text_ids: list[list[int]], seed: int) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(text_ids))]
    return sample_image_codes(pipe.lm, pipe.vocabulary, text_ids, guidance_scale=GUIDANCE,
                              options=SamplingOptions(temperature=1.0), generator=generators)


def transformers_generate(pipe: UniTokPipeline, text_ids: list[list[int]], seed: int) -> torch.Tensor:
    vocab = pipe.vocabulary
    cond = text_to_image_prompt(text_ids, vocab)
    uncond = unconditional_prompt(len(text_ids), vocab)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = pipe.lm.generate(
            input_ids=cond.input_ids, attention_mask=cond.attention_mask,
            negative_prompt_ids=uncond.input_ids, negative_prompt_attention_mask=uncond.attention_mask,
            guidance_scale=GUIDANCE, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            max_new_tokens=vocab.tokens_per_image, min_new_tokens=vocab.tokens_per_image,
            logits_processor=LogitsProcessorList([ImageCodesOnly(vocab, pipe.lm.device)]),
            pad_token_id=vocab.pad_id,
        )
    return out[:, cond.input_ids.shape[1]:]


def timed(fn, *args) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def bench_batch(pipe: UniTokPipeline, prompts: list[str], batch: int, repeats: int) -> dict:
    text_ids = [encode_text(pipe.text_tokenizer, p) for p in prompts[:batch]]
    tokens = batch * pipe.vocabulary.tokens_per_image
    ours(pipe, text_ids, 0), transformers_generate(pipe, text_ids, 0)  # warm-up, both sides
    times = {"ours": [], "transformers": []}
    for r in range(repeats):
        seconds, codes = timed(ours, pipe, text_ids, r)
        assert codes.numel() == tokens
        times["ours"].append(seconds)
        seconds, ids = timed(transformers_generate, pipe, text_ids, r)
        assert ids.shape == (batch, pipe.vocabulary.tokens_per_image)
        assert bool(((ids >= pipe.vocabulary.image_offset) & (ids < pipe.vocabulary.size)).all())
        times["transformers"].append(seconds)
    return {side: statistics.median(ts) for side, ts in times.items()} | {"tokens": tokens, "batch": batch}


def cold_generate(model_dir: Path, out_dir: Path, threads: int | None) -> tuple[float, float]:
    """Seconds for `unitok generate` (one image) and for the bare imports, each a fresh process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, transformers, diffusers"], check=True)
    imports = time.perf_counter() - start
    command = [sys.executable, "-m", "unitok.cli", "generate", "a large red circle at the center on a white background",
               "--model", str(model_dir), "--out", str(out_dir / "cold.png"), "--no-progress"]
    start = time.perf_counter()
    subprocess.run(command + (["--threads", str(threads)] if threads else []),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, imports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a UniTokPipeline folder (default: random default-size model)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model_dir = Path(args.model)
            pipe = UniTokPipeline.from_pretrained(model_dir)
        else:
            pipe = random_pipeline(image_positions=True)
            model_dir = Path(tmp) / "random-pipeline"
            pipe.save_pretrained(model_dir)
        pipe.set_progress_bar_config(disable=True)
        lm_params = sum(p.numel() for p in pipe.lm.parameters()) / 1e6
        vocab = pipe.vocabulary
        print(f"LM: {type(pipe.lm).__name__} {lm_params:.1f}M params, vocabulary {vocab.size} ids "
              f"({vocab.codebook_size} image codes), {vocab.tokens_per_image} codes per image; "
              f"{'trained ' + str(model_dir) if args.model else 'random weights'}; "
              f"torch threads {torch.get_num_threads()}; guidance {GUIDANCE}; median of {args.repeats}")
        prompts = shapes_prompts(max(args.batch_sizes))
        print(f"{'batch':>5} | {'ours tok/s':>10} {'s/image':>8} | {'HF tok/s':>10} {'s/image':>8} | ours/HF")
        for batch in args.batch_sizes:
            r = bench_batch(pipe, prompts, batch, args.repeats)
            ours_tps, hf_tps = r["tokens"] / r["ours"], r["tokens"] / r["transformers"]
            print(f"{batch:>5} | {ours_tps:>10.0f} {r['ours'] / batch:>8.3f} | {hf_tps:>10.0f} "
                  f"{r['transformers'] / batch:>8.3f} | {ours_tps / hf_tps:.2f}x", flush=True)
        total, imports = cold_generate(model_dir, Path(tmp), args.threads)
        print(f"unitok generate, one image, cold process: {total:.2f} s (of which importing torch, "
              f"transformers and diffusers alone takes {imports:.2f} s)")


if __name__ == "__main__":
    main()
