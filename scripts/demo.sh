#!/usr/bin/env bash
# `make demo`: text-to-image and captioning with the embedded default model. While the default is
# not shipped yet (scripts/train_default.sh trains it), show what exists instead: Shapes training
# shards and a grid of their captions beside the rendered scenes, read back by the analyzer.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PROMPT="a large red circle at the top left and a small blue square at the center on a white background"
mkdir -p out
if "$BIN/python" -c "from generation.default_model import default_model_dir; default_model_dir()" 2>/dev/null; then
  "$BIN/unitok" generate "$PROMPT" -n 4 --seed 0 --out out/demo
  "$BIN/unitok" generate "$PROMPT" -n 4 --seed 0 --grid --out out/demo-grid.png
  "$BIN/unitok" caption out/demo/*.png
  exit 0
fi
echo "The embedded default model is not installed in this checkout yet (train it: bash scripts/train_default.sh)."
echo "Showing the Shapes domain it is trained on instead:"
"$BIN/unitok" data shapes --out out/demo-shards --num 16 --seed 0 --split val --shard-size 16
"$BIN/python" - <<'PY'
from unitok.data import shapes
from unitok.data.shards import iterate_samples
from unitok.evaluation.shapes_eval import example_grid
from PIL import Image

examples = []
for sample in iterate_samples("out/demo-shards"):
    scene = shapes.Scene.from_dict(sample["meta"]["scene"])
    image = Image.fromarray(sample["image"])
    examples.append((sample["caption"], image, shapes.analyze(image) == scene))
example_grid(examples).save("out/demo.png")
print(f"wrote out/demo.png: {len(examples)} scenes with their captions, {sum(ok for *_, ok in examples)} read back exactly")
PY
