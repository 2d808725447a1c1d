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

Roofline figures beside them: the machine's measured matrix-product rate in the LM's dtype and
its memory bandwidth, the model's FLOPs per decoding step (2 per weight and row, plus attention
over the context so far), the share of that rate each side achieves (MFU), and at batch 1 the
time the weights alone take to stream from memory once per step. Last, the time one step's matrix
products alone take at the decoding shape (2 rows per image against each weight matrix, timed on
the model's own weights): the ceiling of any decoding loop on this machine, as tokens/s and as a
multiple of transformers' measured rate.

Then ``unitok generate`` is timed end to end for one image from a cold process (interpreter
start, imports, model load, sampling, decoding, PNG write), next to the bare import time.

    python scripts/bench_generate.py                          # random model of the default's size
    python scripts/bench_generate.py --lm-size medium         # Llama 12x512, 16x16 codes, 1,024-code VQ
    python scripts/bench_generate.py --lm-size medium --dtype float32 bfloat16  # both dtypes, one run
    python scripts/bench_generate.py --lm-size 0.5b-shape --dtype bfloat16   # Qwen2.5-0.5B's layers (GPUs)
    python scripts/bench_generate.py --model DIR              # a saved UniTokPipeline folder
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from generation import packed_linear
from generation.pipeline import UniTokPipeline
from generation.random_model import random_pipeline, shapes_prompts
from generation.runtime import DTYPES
from generation.sampler import sample_image_codes
from generation.token_choice import SamplingOptions
from unitok.lm.model import ScratchConfig
from unitok.lm.sequences import text_to_image_prompt, unconditional_prompt
from unitok.lm.text_tokenizer import encode_text
from unitok.vocabulary import UnifiedVocabulary

GUIDANCE = 3.0
# Random pipelines by size: (LM, image tokenizer). "default" is the embedded default's shape;
# "medium" a 41.6M-parameter Llama drawing 16x16 codes from a 1,024-code VQ; "0.5b-shape" the layer
# sizes of Qwen2.5-0.5B (24 x 896, 14 heads, 2 KV heads), with UniTok's own small vocabulary.
LM_SIZES = {
    "default": (ScratchConfig(), {"fsq_levels": (8, 5, 5, 5)}),
    "medium": (ScratchConfig(hidden_size=512, num_layers=12, num_heads=8, num_kv_heads=8, intermediate_size=1536,
                             max_positions=1024),
               {"image_size": 128, "quantizer": "vq", "codebook_size": 1024}),
    "0.5b-shape": (ScratchConfig(hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864,
                                 max_positions=1024),
                   {"image_size": 128, "quantizer": "vq", "codebook_size": 1024}),
}


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
    vocab, device = pipe.vocabulary, pipe.lm.device
    cond = text_to_image_prompt(text_ids, vocab)
    uncond = unconditional_prompt(len(text_ids), vocab)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = pipe.lm.generate(
            input_ids=cond.input_ids.to(device), attention_mask=cond.attention_mask.to(device),
            negative_prompt_ids=uncond.input_ids.to(device),
            negative_prompt_attention_mask=uncond.attention_mask.to(device),
            guidance_scale=GUIDANCE, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            max_new_tokens=vocab.tokens_per_image, min_new_tokens=vocab.tokens_per_image,
            logits_processor=LogitsProcessorList([ImageCodesOnly(vocab, pipe.lm.device)]),
            pad_token_id=vocab.pad_id,
        )
    return out[:, cond.input_ids.shape[1]:].cpu()


def timed(fn, *args) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def bench_batch(pipes: dict[str, UniTokPipeline], prompts: list[str], batch: int, repeats: int) -> dict[str, dict]:
    """Median seconds of both sides for each dtype's pipeline, all timings interleaved."""
    first = next(iter(pipes.values()))
    text_ids = [encode_text(first.text_tokenizer, p) for p in prompts[:batch]]
    tokens = batch * first.vocabulary.tokens_per_image
    for pipe in pipes.values():
        ours(pipe, text_ids, 0), transformers_generate(pipe, text_ids, 0)  # warm-up, both sides
    times = {dtype: {"ours": [], "transformers": []} for dtype in pipes}
    for r in range(repeats):
        for dtype, pipe in pipes.items():
            seconds, codes = timed(ours, pipe, text_ids, r)
            assert codes.numel() == tokens
            times[dtype]["ours"].append(seconds)
            seconds, ids = timed(transformers_generate, pipe, text_ids, r)
            assert ids.shape == (batch, pipe.vocabulary.tokens_per_image)
            assert bool(((ids >= pipe.vocabulary.image_offset) & (ids < pipe.vocabulary.size)).all())
            times[dtype]["transformers"].append(seconds)
    return {dtype: {side: statistics.median(ts) for side, ts in sides.items()} | {"tokens": tokens, "batch": batch}
            for dtype, sides in times.items()}


def matmul_rate(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a ``size``-square matrix product in ``dtype``: what the machine can do at best."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def memory_bandwidth(device: torch.device, megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes/s of a large copy (read + write), the ceiling of streaming weights each step."""
    source = torch.empty(megabytes * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    _synchronize(device)
    return 2 * source.numel() * 4 * repeats / (time.perf_counter() - start)


def weight_products_seconds(pipe: UniTokPipeline, rows: int, repeats: int = 5) -> float:
    """Seconds of one decoding step's matrix products alone: ``F.linear`` of ``rows`` inputs by
    every weight matrix of the blocks and the image-code rows of the head, the model's own weights
    (packed as the decoder packs them: ``generation.packed_linear``), nothing around them. Why: at the decoding shapes (a few rows against each weight) these run far
    below the square-matrix rate, and no loop, ours or transformers', can step faster than them."""
    lm, vocab = pipe.lm, pipe.vocabulary
    weights = [p for name, p in lm.named_parameters() if ".layers." in name and p.dim() == 2]
    weights.append(lm.get_output_embeddings().weight[vocab.image_offset:vocab.size])
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device) for w in weights}
    products = [(packed_linear.product(w, None, packed_linear.wants_packing(w)), inputs[w.shape[1]]) for w in weights]
    with torch.inference_mode():
        for product, x in products:
            product(x)
        _synchronize(lm.device)
        start = time.perf_counter()
        for _ in range(repeats):
            for product, x in products:
                product(x)
        _synchronize(lm.device)
    return (time.perf_counter() - start) / repeats


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_image(pipe: UniTokPipeline, prompt_length: int, rows_per_image: int) -> float:
    """FLOPs to draw one image's codes (prefill excluded): per step, 2 per weight and row of the
    blocks and the head, plus attention (QK and AV) over the context so far."""
    config = pipe.lm.config
    blocks = sum(p.numel() for name, p in pipe.lm.named_parameters() if ".layers." in name)
    head = pipe.lm.config.vocab_size * config.hidden_size
    steps = pipe.vocabulary.tokens_per_image
    mean_context = prompt_length + steps / 2
    attention = 4 * config.num_hidden_layers * config.hidden_size * mean_context
    return rows_per_image * steps * (2 * (blocks + head) + attention)


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
    parser.add_argument("--model", default=None, help="a UniTokPipeline folder (default: a random model of --lm-size)")
    parser.add_argument("--lm-size", choices=sorted(LM_SIZES), default="default",
                        help="size of the random pipeline when no --model is given")
    parser.add_argument("--dtype", choices=sorted(DTYPES), nargs="+", default=["float32"],
                        help="the LM's dtype, both sides; several: each timed in turn in one run, and our rate in "
                             "each compared with the first's")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    parser.add_argument("--no-cold", action="store_true", help="skip timing `unitok generate` from a cold process")
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
            lm_config, tokenizer_config = LM_SIZES[args.lm_size]
            pipe = random_pipeline(lm_config, tokenizer_config, image_positions=True)
            model_dir = Path(tmp) / "random-pipeline"
            pipe.save_pretrained(model_dir)
        device = torch.device(args.device)
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        pipes = {name: copy.deepcopy(pipe) for name in args.dtype}
        for name, copied in pipes.items():
            copied.lm.to(DTYPES[name])
        lm_params = sum(p.numel() for p in pipe.lm.parameters()) / 1e6
        vocab = pipe.vocabulary
        print(f"LM: {type(pipe.lm).__name__} {lm_params:.1f}M params in {', '.join(args.dtype)} on {device}, vocabulary "
              f"{vocab.size} ids ({vocab.codebook_size} image codes), {vocab.tokens_per_image} codes per image; "
              f"{'trained ' + str(model_dir) if args.model else 'random weights, ' + args.lm_size}; "
              f"torch threads {torch.get_num_threads()}; guidance {GUIDANCE}; median of {args.repeats}")
        bandwidth, rates = memory_bandwidth(device), {name: matmul_rate(DTYPES[name], device) for name in args.dtype}
        for name, copied in pipes.items():
            weight_bytes = sum(p.numel() * p.element_size() for p in copied.lm.parameters())
            print(f"machine: matmul 2048^2 in {name} {rates[name] / 1e9:.0f} GFLOP/s, copy bandwidth "
                  f"{bandwidth / 1e9:.1f} GB/s; weights in {name} {weight_bytes / 1e6:.1f} MB, streamed once per "
                  f"step at least {1e3 * weight_bytes / bandwidth:.2f} ms")
        prompts = shapes_prompts(max(args.batch_sizes))
        prompt_length = round(statistics.mean(len(encode_text(pipe.text_tokenizer, p)) for p in prompts)) + 2
        print(f"{'batch':>5} {'dtype':>8} | {'ours tok/s':>10} {'s/image':>8} {'MFU':>6} | {'HF tok/s':>10} "
              f"{'s/image':>8} {'MFU':>6} | ours/HF | products alone: ms/step  tok/s ceiling  /HF")
        ours_rates = {}
        for batch in args.batch_sizes:
            for name, r in bench_batch(pipes, prompts, batch, args.repeats).items():
                rate, copied = rates[name], pipes[name]
                ours_tps, hf_tps = r["tokens"] / r["ours"], r["tokens"] / r["transformers"]
                ours_rates[batch, name] = ours_tps
                flops = batch * flops_per_image(copied, prompt_length, rows_per_image=2)  # conditional + unconditional
                products = weight_products_seconds(copied, rows=2 * batch)
                print(f"{batch:>5} {name:>8} | {ours_tps:>10.0f} {r['ours'] / batch:>8.3f} "
                      f"{flops / r['ours'] / rate:>6.1%} | {hf_tps:>10.0f} {r['transformers'] / batch:>8.3f} "
                      f"{flops / r['transformers'] / rate:>6.1%} | {ours_tps / hf_tps:.2f}x  | "
                      f"{1e3 * products:>23.2f} {batch / products:>13.0f} {batch / products / hf_tps:>4.2f}x", flush=True)
        for name in args.dtype[1:]:
            print(f"ours in {name} / ours in {args.dtype[0]}: " + ", ".join(
                f"{ours_rates[batch, name] / ours_rates[batch, args.dtype[0]]:.2f}x at batch {batch}"
                for batch in args.batch_sizes))
        if not args.no_cold:
            total, imports = cold_generate(model_dir, Path(tmp), args.threads)
            print(f"unitok generate, one image, cold process: {total:.2f} s (of which importing torch, "
                  f"transformers and diffusers alone takes {imports:.2f} s)")


if __name__ == "__main__":
    main()
