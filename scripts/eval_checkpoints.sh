#!/usr/bin/env bash
# Evaluate every checkpoint (*.pth, *.pth.tar) under CKPT_DIR (default checkpoints/) on DATA: one eval JSON each.
#   scripts/eval_checkpoints.sh DATA [CKPT_DIR] [main_imagenet.py flags...]
#   main_imagenet.py identifies each file: from the nearest manifest.csv (its folder or above) that lists it
#   (columns file,arch,attention_type,attention_param,sha256), else from the file itself; it checks the listed
#   sha256 first, and a mismatch fails that file. JSONs go to OUT (results/evals/), named after the file's path.
#   Then: python scripts/make_results_table.py results/evals -o results/imagenet.md
#   DRY_RUN=1 scripts/eval_checkpoints.sh DATA      # print the commands only
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 0
fi
REPO=$(cd "$(dirname "$0")/.." && pwd); source "$REPO/scripts/_launch.sh"
DATA=$1; shift
CKPT_DIR=checkpoints
if [ $# -gt 0 ] && [[ $1 != -* ]]; then CKPT_DIR=$1; shift; fi
OUT=${OUT:-results/evals}
[ -d "$CKPT_DIR" ] || { echo "error: checkpoint folder not found: $CKPT_DIR" >&2; exit 2; }

mkdir -p "$OUT"
found=0; failed=()
while IFS= read -r -d '' path; do
    found=$((found + 1))
    rel=${path#"$CKPT_DIR"/}
    name=${rel//\//__}; name=${name%.tar}; name=${name%.pth}
    echo "=> $rel" >&2
    if ! run_or_print python "$REPO/main_imagenet.py" "$DATA" -e --resume "$path" \
            --ckpt "$OUT/runs" --eval-json "$OUT/$name.json" --no-progress "$@"; then
        failed+=("$rel")
    fi
done < <(find "$CKPT_DIR" -type f \( -name '*.pth' -o -name '*.pth.tar' \) -print0 | sort -z)

[ "$found" -gt 0 ] || { echo "error: no *.pth or *.pth.tar files under $CKPT_DIR" >&2; exit 2; }
echo "=> evaluated $((found - ${#failed[@]})) of $found checkpoint(s); JSON in $OUT" >&2
if [ ${#failed[@]} -gt 0 ]; then
    echo "error: failed: ${failed[*]}" >&2; exit 1
fi
