#!/bin/bash
# Per-process wall time of `cad segment` on the hippocampus sample: the engine at REV (a temporary worktree) against
# this checkout, five runs each, interleaved. Run on a quiet machine from the repository root:
#     bash benchmarks/startup_compare.sh d4826fb
set -euo pipefail
REV=${1:?give the revision to compare with}
REPO=$(pwd)
BEFORE=$(mktemp -d)/before
OUT=$(mktemp -d)
git worktree add -q --detach "$BEFORE" "$REV"
trap 'git worktree remove --force "$BEFORE"; rm -rf "$OUT"' EXIT
IMG=$REPO/sample_data/hippocampus/imagesTr/hippocampus_015.nii.gz
for i in 1 2 3 4 5; do
  for tree in "$BEFORE" "$REPO"; do
    rm -f "$OUT"/seg.nii.gz "$OUT"/seg.nii.gz.json
    start=$(date +%s.%N)
    PYTHONPATH=$tree/CADExtension OMP_NUM_THREADS=2 "$REPO"/.venv/bin/python -m cadcore segment "$IMG" \
      -m hippocampus-unet -o "$OUT"/seg.nii.gz --device cpu > /dev/null
    end=$(date +%s.%N)
    echo "$([ "$tree" = "$REPO" ] && echo after || echo before) $(echo "$end - $start" | bc) s"
  done
done
