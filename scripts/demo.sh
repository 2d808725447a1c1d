#!/usr/bin/env bash
# `make demo`: text-to-image and captioning with the embedded default model (UniTok-Shapes, shipped
# in unitok/assets/unitok-shapes; no download). Draws four prompts into out/demo/ (one PNG per
# line of out/demo-prompts.txt), then captions what it drew.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
mkdir -p out
cat > out/demo-prompts.txt <<'PROMPTS'
a large red circle at the top left on a white background
a small blue square at the center on a black background
a large green triangle at the bottom right and a small yellow plus at the top on a gray background
a big purple plus in the middle on a white background
PROMPTS
echo "== text to image: out/demo-prompts.txt -> out/demo/"
"$BIN/unitok" generate --prompts-file out/demo-prompts.txt --out out/demo
echo "== captions of the images just drawn"
"$BIN/unitok" caption out/demo/*.png
