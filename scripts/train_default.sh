#!/usr/bin/env bash
# Reproduce the embedded default model (UniTok-Shapes) from nothing, deterministically for a seed:
# Shapes shards (faithful renderings, prompts in the training phrasing families, questions, edits)
# -> shapes64 image tokenizer (a patch encoder: each code from its own 8x8 pixels; any rendering
# in, the clean scene out) -> its decoder trained on alone (codes unchanged) -> code shards of
# every view -> shapes-tiny LM (every task in one stage: drawing, captioning, rewriting, answering,
# verifying, editing) -> export -> pipeline in unitok/assets/unitok-shapes -> evaluation report.
#
#   bash scripts/train_default.sh            # SEED=0, runs in ./data and ./runs
#
# Runs on 2 CPU cores, in the precision the hardware computes fastest (unitok/precision.py); set
# OMP_NUM_THREADS=1 if the machine is shared (tiny matrices: one uncontended thread beats two
# contended ones). Each stage skips its work when its output exists, so a killed run continues
# where it stopped (delete the stage's folder to redo it). Each stage line says how long the
# previous stages took.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${SEED:-0}
UNITOK=${UNITOK:-.venv/bin/unitok}
PY=${PY:-.venv/bin/python}
ASSET=unitok/assets/unitok-shapes

START=$SECONDS
LAST=$SECONDS
stage() {
  echo "== $(date +%H:%M:%S) $* (previous stage $(( (SECONDS - LAST) / 60 )) min, total $(( (SECONDS - START) / 60 )) min)"
  LAST=$SECONDS
}

[ -d data/shapes/train ] || { stage "Shapes shards"; \
  $UNITOK data shapes --out data/shapes/train --num 60000 --size 64 --seed "$SEED"; \
  $UNITOK data shapes --out data/shapes/val --num 500 --size 64 --seed "$SEED" --split val; }

[ -f runs/shapes64/export/config.json ] || { stage "image tokenizer (shapes64)"; \
  $UNITOK tokenizer fit --config configs/tokenizer/shapes64.yaml --seed_everything "$SEED"; \
  $UNITOK tokenizer export runs/shapes64/checkpoints/last.ckpt runs/shapes64/export; }

[ -f runs/shapes64-decoder/export/config.json ] || { stage "image decoder (shapes64-decoder, encoder frozen)"; \
  $UNITOK tokenizer fit --config configs/tokenizer/shapes64.yaml --config configs/tokenizer/shapes64-decoder.yaml \
    --seed_everything "$SEED"; \
  $UNITOK tokenizer export runs/shapes64-decoder/checkpoints/last.ckpt runs/shapes64-decoder/export; }

[ -d data/shapes-codes/val ] || { stage "code shards"; \
  $UNITOK tokenize --tokenizer runs/shapes64/export --shards data/shapes/train --out data/shapes-codes/train; \
  $UNITOK tokenize --tokenizer runs/shapes64/export --shards data/shapes/val --out data/shapes-codes/val; }

[ -f runs/shapes-tiny/export/config.json ] || { stage "unified LM (shapes-tiny)"; \
  $UNITOK lm fit --config configs/lm/shapes-tiny.yaml --seed_everything "$SEED"; \
  $UNITOK lm export runs/shapes-tiny/checkpoints/last.ckpt runs/shapes-tiny/export; }

stage "pipeline -> $ASSET"
# Sampling defaults picked on held-out scenes the report does not use (docs/results.md: "Sampling defaults").
$PY scripts/assemble_pipeline.py runs/shapes-tiny/export runs/shapes64-decoder/export "$ASSET" --fp16 --guidance 1 --temperature 0.7 --candidates 16 --consensus-weight 4 --rewrite-prompts

stage "evaluation"
$UNITOK eval shapes --model "$ASSET" --out runs/eval-shapes
stage "done"
