"""How much of a Shapes scene the LM takes from its caption when it draws.

    python scripts/probe_conditioning.py --model runs/default/pipeline [--num 200]

Teacher-forced, on held-out val scenes (``scenes_for_split("val", ...)``, rendered and encoded as
the pipeline reads images): the nats the LM spends on a scene's image codes given its canonical
caption, given no caption (the unconditional prompt of classifier-free guidance) and given another
scene's caption, split into the codes of each image's background (its most common code) and the
rest. A model that draws what the text says spends almost nothing on the rest once given the
caption; what the caption saves over no caption is what the model has learned to take from the
text. Why: with a patch tokenizer most codes are background, so teacher-forced token accuracy is
high while the codes that decide the scene (where an object starts, its colour and shape) can
still be guessed without reading the prompt. The last lines say how often the LM's likeliest code
is the right one, given its caption, at each object's first code (the first patch in raster order
that meets the object's bounding box: where drawing commits to what the object is) and over all
the patches the object meets; a greedy drawing is right only where these are.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from generation.pipeline import UniTokPipeline
from unitok.data import shapes
from unitok.data.shapes_shards import scenes_for_split
from unitok.lm.image_positions import lm_forward
from unitok.lm.sequences import IGNORE, collate, next_token_losses, text_to_image_example


def code_nats(pipe: UniTokPipeline, codes: torch.Tensor, captions: list[str | None],
              batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, h * w]`` nats of each image code given its caption (None: the unconditional prompt),
    and whether the LM's likeliest code there is the right one."""
    rows, right = [], []
    for start in range(0, codes.shape[0], batch_size):
        examples = [text_to_image_example(None if text is None else pipe.encode_prompt(text), grid, pipe.vocabulary)
                    for grid, text in zip(codes[start : start + batch_size], captions[start : start + batch_size],
                                          strict=True)]
        batch = collate(examples, pipe.vocabulary)
        with torch.inference_mode():
            logits = lm_forward(pipe.lm, pipe.vocabulary, batch["input_ids"],
                                attention_mask=batch["attention_mask"]).logits
        losses, targets = next_token_losses(logits, batch["labels"])
        labelled = targets != IGNORE
        hits = logits[:, :-1].argmax(-1) == targets
        # Each row's labelled positions are its codes then <|eoi|>; keep the codes.
        keep = pipe.vocabulary.tokens_per_image
        rows += [row[mask][:keep] for row, mask in zip(losses, labelled, strict=True)]
        right += [row[mask][:keep] for row, mask in zip(hits, labelled, strict=True)]
    return torch.stack(rows), torch.stack(right)


def object_patches(scene: shapes.Scene, grid: tuple[int, int], size: int) -> list[torch.Tensor]:
    """Per object, the raster indices of the patches its bounding box meets (SHAPES.md geometry)."""
    rows, cols = grid
    patches = []
    for obj in scene.objects:
        col, row = obj.cell
        cx, cy, r = (col + 0.5) * size / 3, (row + 0.5) * size / 3, shapes.SIZES[obj.size] * size
        ys = [i for i in range(rows) if i * size / rows < cy + r and (i + 1) * size / rows > cy - r]
        xs = [j for j in range(cols) if j * size / cols < cx + r and (j + 1) * size / cols > cx - r]
        patches.append(torch.tensor([i * cols + j for i in ys for j in xs]))
    return patches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a UniTok pipeline folder trained on Shapes")
    parser.add_argument("--num", type=int, default=200, help="held-out val scenes (default 200)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    pipe = UniTokPipeline.from_pretrained(args.model)
    scenes = scenes_for_split("val", args.num, seed=args.seed)
    size = pipe.image_tokenizer.image_size
    codes = pipe.encode_images([shapes.render(scene, size) for scene in scenes]).flatten(1)
    captions = [shapes.canonical_caption(scene) for scene in scenes]
    background = codes == codes.mode(dim=1).values[:, None]
    others = np.roll(np.arange(len(captions)), 1)
    print(f"{args.model}: {len(scenes)} held-out scenes, {codes.shape[1]} codes each, "
          f"{(~background).sum(1).float().mean():.1f} of them not the background on average")
    print(f"{'prompt':<24} {'nats/image':>10} {'background':>10} {'the rest':>9}")
    for name, prompt in (("its caption", captions), ("no caption", [None] * len(captions)),
                         ("another scene's caption", [captions[i] for i in others])):
        nats, right = code_nats(pipe, codes.view(-1, *pipe.vocabulary.grid), prompt)
        print(f"{name:<24} {nats.sum(1).mean():>10.2f} {nats[background].sum() / len(scenes):>10.2f} "
              f"{nats[~background].sum() / len(scenes):>9.2f}")
        if name == "its caption":
            hits = right
    patches = [object_patches(scene, pipe.vocabulary.grid, size) for scene in scenes]
    first = torch.stack([row[p[0]] for row, scene_patches in zip(hits, patches, strict=True) for p in scene_patches])
    every = torch.cat([row[p] for row, scene_patches in zip(hits, patches, strict=True) for p in scene_patches])
    print(f"given its caption, the likeliest code is right at {100 * first.float().mean():.1f} % of the objects' "
          f"first codes and {100 * every.float().mean():.1f} % of their codes ({len(first)} objects)")


if __name__ == "__main__":
    main()
