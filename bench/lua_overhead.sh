#!/usr/bin/env bash
# What the Lua layer costs in decode throughput: the same model, prompt and
# token count through
#   c      build/lumen_c_generate   (a pure-C loop: lm_sampler_sample in C)
#   lua    build/lumen generate     (pipelines/generate.lua, the default C sampler chain)
#   lua+s  bench/lua_sampler.lua    (a sampler with a link written in Lua)
# alternating, RUNS times each; prints medians of decode tok/s and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
N=${N:-128}
THREADS=${THREADS:-2}
PROMPT=${PROMPT:-"Once upon a time, in a small village by the sea, there lived"}
export LUMEN_MODEL=${LUMEN_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}

rate() { sed -n 's/.*decode: [0-9]* tokens in [0-9.]* s (\([0-9.]*\) tok\/s).*/\1/p' | tail -1; }
declare -a C L S
for i in $(seq "$RUNS"); do
  C+=("$(build/lumen_c_generate generate -m "$LUMEN_MODEL" -p "$PROMPT" -n "$N" -t "$THREADS" --temp 0.8 --top-p 1 --min-p 0 --seed "$i" 2>&1 >/dev/null | rate)")
  L+=("$(build/lumen generate -p "$PROMPT" -n "$N" -t "$THREADS" --temp 0.8 --top-p 1 --min-p 0 --seed "$i" 2>&1 >/dev/null | rate)")
  S+=("$(build/lumen run bench/lua_sampler.lua "$PROMPT" "$N" "$i" 2>&1 >/dev/null | rate)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mc=$(median "${C[@]}"); ml=$(median "${L[@]}"); ms=$(median "${S[@]}")
echo "decode tok/s, median of $RUNS runs ($N tokens, $THREADS threads):"
echo "  pure-C loop:                 $mc    (runs: ${C[*]})"
echo "  lumen generate (Lua loop):   $ml    (runs: ${L[*]})  ratio $(awk -v a="$ml" -v b="$mc" 'BEGIN{printf "%.3f", a/b}')"
echo "  Lua-written sampler link:    $ms    (runs: ${S[*]})  ratio $(awk -v a="$ms" -v b="$mc" 'BEGIN{printf "%.3f", a/b}')"
