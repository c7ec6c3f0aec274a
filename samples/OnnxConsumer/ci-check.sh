#!/usr/bin/env bash
# End-to-end check of the ONNX deployment path, run by .ci/run with the installed tool:
#   train a tiny BERT spam/ham classifier (WordPiece vocab.txt written here, 160 generated rows) for 30 batches with
#   the `composersharp` tool -> `export --format onnx` (checked by ONNX Runtime inside the export) -> the libtorch-free
#   sample samples/OnnxConsumer classifies held-out texts from the exported folder. Passes when the sample classifies
#   every text and at least 5 of the 6 correctly (the task is easy: the two classes use disjoint words).
# Usage: ci-check.sh TOOL WORKDIR
set -euo pipefail
tool="$1"; work="$2"; here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$work"; cd "$work"
spam=(free winner prize cash offer click claim urgent money bonus)
ham=(meeting lunch project report family weekend dinner schedule notes review)
{ printf '%s\n' '[PAD]' '[UNK]' '[CLS]' '[SEP]' '[MASK]' the a your our is for now please; printf '%s\n' "${spam[@]}" "${ham[@]}"; } > vocab.txt
RANDOM=7
rows() { # label words... ; 80 rows of 6 words
  local label="$1"; shift; local words=("$@")
  for _ in $(seq 80); do
    local text="" ; for _ in 1 2 3 4 5 6; do text+="${words[RANDOM % ${#words[@]}]} "; done
    printf '{"text": "%s", "label": "%s"}\n' "${text% }" "$label"
  done
}
{ rows spam "${spam[@]}" the your now; rows ham "${ham[@]}" the our please; } | shuf --random-source=<(yes) > train.jsonl
cat > onnx-ci.yaml <<'YAML'
run_name: onnx-ci
seed: 3
precision: fp32
max_duration: 30ba
tokenizer: vocab.txt
model: {name: bert_classification, num_layers: 2, hidden_size: 32, num_heads: 2, intermediate_size: 64, max_sequence_length: 16}
train_loader: {batch_size: 16, shuffle: true, dataset: {name: jsonl_classification, path: train.jsonl, max_length: 16, labels: [ham, spam]}}
optimizer: {name: adamw, lr: 3.0e-3}
YAML
"$tool" train --config onnx-ci.yaml
checkpoint="$(ls -t runs/onnx-ci/checkpoints/*.ckpt 2>/dev/null | grep -v latest | head -n 1 || true)"
[ -n "$checkpoint" ] || checkpoint="$(find . -name '*.ckpt' -newer onnx-ci.yaml | head -n 1)"
"$tool" export --load-path "$checkpoint" --output exported --format onnx
ls -l exported
out="$(dotnet run --project "$here" -c Release -- exported \
  "claim your free prize now" "urgent cash offer click" "winner bonus money" \
  "our project meeting notes" "family dinner this weekend" "please review the report schedule")"
echo "$out"
correct=$(printf '%s\n' "$out" | awk -F'\t' 'NR<=3 && $1=="spam" {n++} NR>3 && $1=="ham" {n++} END {print n+0}')
lines=$(printf '%s\n' "$out" | grep -c . || true)
echo "OnnxConsumer: $correct of 6 texts classified correctly ($lines lines)."
[ "$lines" -eq 6 ] && [ "$correct" -ge 5 ]
