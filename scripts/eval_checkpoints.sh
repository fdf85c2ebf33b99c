#!/usr/bin/env bash
# Evaluate every checkpoint (*.pth, *.pth.tar) under CKPT_DIR (default checkpoints/) on DATA: one eval JSON each.
#   scripts/eval_checkpoints.sh DATA [CKPT_DIR] [main_imagenet.py flags...]
#   Arch and attention come from CKPT_DIR/manifest.csv (columns file,arch,attention_type,attention_param,sha256;
#   file relative to CKPT_DIR) when it lists the file, else from the file itself. A sha256 in the manifest is
#   checked first; a mismatch skips that file. JSONs go to OUT (results/evals/), named after the file's path.
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
MANIFEST="$CKPT_DIR/manifest.csv"

manifest_row() {  # prints "arch,attention_type,attention_param,sha256" for a file, or nothing
    [ -f "$MANIFEST" ] || return 0
    awk -F, -v file="$1" '$0 !~ /^#/ && $1 == file { print $2 "," $3 "," $4 "," $5; exit }' "$MANIFEST"
}

mkdir -p "$OUT"
found=0; failed=()
while IFS= read -r -d '' path; do
    found=$((found + 1))
    rel=${path#"$CKPT_DIR"/}
    name=${rel//\//__}; name=${name%.tar}; name=${name%.pth}
    flags=()
    IFS=, read -r arch attention param sha <<< "$(manifest_row "$rel")" || true
    [ -n "${arch:-}" ] && flags+=(-a "$arch")
    [ -n "${attention:-}" ] && flags+=(--attention_type "$attention")
    [ -n "${param:-}" ] && flags+=(--attention_param "$param")
    if [ -n "${sha:-}" ] && [ "${DRY_RUN:-0}" != "1" ]; then
        actual=$(sha256sum "$path" | cut -d' ' -f1)
        if [ "$actual" != "$sha" ]; then
            echo "error: $rel: sha256 $actual does not match the manifest's $sha; skipped" >&2
            failed+=("$rel"); continue
        fi
    fi
    echo "=> $rel" >&2
    if ! run_or_print python "$REPO/main_imagenet.py" "$DATA" -e --resume "$path" "${flags[@]}" \
            --ckpt "$OUT/runs" --eval-json "$OUT/$name.json" --no-progress "$@"; then
        failed+=("$rel")
    fi
done < <(find "$CKPT_DIR" -type f \( -name '*.pth' -o -name '*.pth.tar' \) -print0 | sort -z)

[ "$found" -gt 0 ] || { echo "error: no *.pth or *.pth.tar files under $CKPT_DIR" >&2; exit 2; }
echo "=> evaluated $((found - ${#failed[@]})) of $found checkpoint(s); JSON in $OUT" >&2
if [ ${#failed[@]} -gt 0 ]; then
    echo "error: failed: ${failed[*]}" >&2; exit 1
fi
