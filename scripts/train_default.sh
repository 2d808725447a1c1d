#!/usr/bin/env bash
# Reproduce the embedded default model (UniTok-Shapes) from nothing, deterministically for a seed:
# `unitok train` with the Shapes recipe (configs/recipes/shapes.yaml): Shapes shards (faithful
# renderings, prompts in the training phrasing families, questions, edits) -> shapes64 image
# tokenizer (a patch encoder: each code from its own 8x8 pixels; any rendering in, the clean scene
# out) -> its decoder trained on alone (codes unchanged) -> code shards of every view -> shapes-tiny
# LM (every task in one stage) -> pipeline; then the pipeline is copied to unitok/assets/unitok-shapes
# and evaluated.
#
#   bash scripts/train_default.sh            # SEED=0, everything in ./runs/default
#
# Runs on 2 CPU cores, in the precision the hardware computes fastest (unitok/precision.py); set
# OMP_NUM_THREADS=1 if the machine is shared (tiny matrices: one uncontended thread beats two
# contended ones). A killed run goes on where it stopped when started again: `unitok train` skips
# the stages that are done and resumes a stopped one from its last.ckpt. It prints each stage's time.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${SEED:-0}
UNITOK=${UNITOK:-.venv/bin/unitok}
RUN=${RUN:-runs/default}
ASSET=unitok/assets/unitok-shapes

$UNITOK train --config configs/recipes/shapes.yaml --out "$RUN" --seed "$SEED"

echo "== $(date +%H:%M:%S) $RUN/pipeline -> $ASSET"
# The recipe's assemble stage made it, with the sampling defaults picked on held-out scenes the
# report does not use (docs/results.md, "Sampling defaults"). Copied beside, then swapped in.
rm -rf "$ASSET.new" && cp -r "$RUN/pipeline" "$ASSET.new" && rm -rf "$ASSET" && mv "$ASSET.new" "$ASSET"

echo "== $(date +%H:%M:%S) evaluation"
$UNITOK eval shapes --model "$ASSET" --out "$RUN/eval-shapes"
echo "== $(date +%H:%M:%S) done"
