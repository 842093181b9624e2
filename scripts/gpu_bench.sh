#!/usr/bin/env bash
# GPU check of the speed targets: `peftds bench` on the T5-base shape (random init from conf/model/t5_base.yaml
# with model.pretrained=false, so no weights are needed; bf16 autocast; bench=gpu: batch 128, source 128,
# target 8, median of 20 steps) for the designs spindle_t5base, lora, adapter and prefix against peft LoRA
# (q,v, rank from the same 0.5% budget), the frozen floor, full fine-tuning and forward only, all in ONE
# process; then eager vs torch.compile at source 32 (target: compiled design <= 0.5x the eager floor, outputs
# equal within bf16 tolerance); one merged table at the end. Planned to finish in under 6 minutes on one H100.
#
# How to run it
#   1. Here (a machine whose pip reaches the package registry), once:
#          scripts/gpu_bench.sh fetch
#      writes .whl/ (hydra-core, omegaconf, antlr4-python3-runtime: what the GPU image lacks; it has torch,
#      transformers, peft, accelerate, safetensors, pyyaml, numpy) and git-ignores it (.git/info/exclude).
#   2. On the lent GPU machine, through the device tool:
#          run(command="bash scripts/gpu_bench.sh", carry=[".whl"], timeout_s=420)
#      The JSON records and the log land in $OUT (/tmp/gpu_bench_out when OUT is unset); the merged table is
#      the last thing printed. The project is put on PYTHONPATH (its pyproject pins Python 3.11 and the CPU
#      torch of the dev box, so it is not pip-installed there); the wheels go to /tmp/site.
#   CPU dry run of this script (checks it end to end in ~1 minute, tiny_t5 instead of T5-base):
#          GPU_BENCH_DRY=1 bash scripts/gpu_bench.sh
#
# Llama-3.1-8B shape (a separate run, so the T5 plan above keeps its time):
#          run(command="bash scripts/gpu_bench.sh llama", carry=[".whl"], timeout_s=420)
#      times one decoder-only step on conf/model/llama3_8b.yaml with model.pretrained=false (random init, bf16
#      autocast, sequence classification, batch 16 x 256 tokens): design spindle vs peft LoRA (q,v) at the same
#      0.5% budget vs the frozen floor. LLAMA_LAYERS (8) keeps the first 8 of the 32 blocks (every block has
#      the 8B's exact shape; 32 would need ~4 x 30 GB of fp32 copies, one per variant); ratios are per-block
#      dominated. Planned under 5 minutes. CPU dry run: GPU_BENCH_DRY=1 bash scripts/gpu_bench.sh llama
#      (tiny_llama). Not yet run on a GPU.
#
# Environment knobs: STEPS (20), COMPILE_SRC (32), DESIGNS ("lora,adapter,prefix"), COMPILE_VARIANTS ("design"),
# BUDGET (330 s for all benches), PYTHON (python3).
# Compiled prefix designs: prefix.py pads its attention mask inside the graph while compiling (no id()-keyed
# cache as a dynamo guard), so a compiled design that holds prefixes (spindle_t5base) compiles once and is
# timed; bench prints its frames, graphs, graph breaks and recompiles, and still reports a variant that
# recompiles on every step as "NOT TIMED" rather than timing eager steps.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "fetch" ]]; then
    set -e
    PY="${PYTHON:-.venv/bin/python}"
    mkdir -p .whl
    exclude="$(git rev-parse --git-path info/exclude)"
    mkdir -p "$(dirname "$exclude")" && touch "$exclude"
    grep -qx '/.whl/' "$exclude" || echo '/.whl/' >> "$exclude"
    "$PY" -m pip download --no-deps --only-binary=:all: -d .whl hydra-core==1.3.8 omegaconf==2.3.1
    "$PY" -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3  # sdist only: built here (pure Python)
    ls -l .whl
    exit 0
fi

PY="${PYTHON:-python3}"
[[ -n "${GPU_BENCH_DRY:-}" && -z "${PYTHON:-}" && -x .venv/bin/python ]] && PY=.venv/bin/python
OUTDIR="${OUT:-/tmp/gpu_bench_out}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_bench.log"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_bench: installing .whl/ failed" | tee -a "$LOG"; exit 1; }
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

MODE="${1:-t5}"
STEPS="${STEPS:-20}"
COMPILE_SRC="${COMPILE_SRC:-32}"
DESIGNS="${DESIGNS:-lora,adapter,prefix}"
COMPILE_VARIANTS="${COMPILE_VARIANTS:-design}"
MODEL=(model=t5_base model.pretrained=false bench=gpu "bench.steps=$STEPS")
BUDGET="${BUDGET:-330}"  # seconds for all benches together (the whole script must stay under 6 minutes)
LIMIT_A=150
LIMIT_B=240
if [[ -n "${GPU_BENCH_DRY:-}" ]]; then  # CPU dry run: tiny shapes, few steps
    MODEL=(model=tiny_t5 bench.batch_size=4 bench.source_len=32 bench.target_len=4 bench.steps=2 bench.warmup=1)
    LIMIT_A=300
    LIMIT_B=400
    BUDGET=800
fi

{
    echo "== gpu_bench $(date -u +%FT%TZ) host $(hostname)"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" -c "import sys, torch, transformers, peft; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'peft', peft.__version__)"
} 2>&1 | tee -a "$LOG"

bench() {  # bench <limit_s> <name> overrides...  (the limit is cut to what is left of BUDGET)
    local limit="$1" name="$2"
    shift 2
    local left=$((BUDGET - SECONDS))
    (( left < limit )) && limit=$left
    if (( limit < 30 )); then
        echo "== $name: skipped (${left}s left of the ${BUDGET}s budget)" | tee -a "$LOG"
        return 124
    fi
    echo "== $name (limit ${limit}s): peftds bench $*" | tee -a "$LOG"
    local t0=$SECONDS
    timeout "$limit" "$PY" -m peftds.bench.cli bench "$@" "bench.out=$OUTDIR/$name.json" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
    return "$rc"
}

if [[ "$MODE" == "llama" ]]; then
    LLAMA_LAYERS="${LLAMA_LAYERS:-8}"
    LLAMA=(model=llama3_8b model.pretrained=false "model.shape.num_hidden_layers=$LLAMA_LAYERS" bench=gpu
           bench.batch_size=16 bench.source_len=256 "bench.steps=$STEPS" "bench.variants=[design,peft_lora,floor]")
    LIMIT_C=300
    if [[ -n "${GPU_BENCH_DRY:-}" ]]; then
        LLAMA=(model=tiny_llama bench.batch_size=4 bench.source_len=32 bench.steps=2 bench.warmup=1
               "bench.variants=[design,peft_lora,floor]")
        BUDGET=800
    fi
    bench "$LIMIT_C" gpu_bench_llama "${LLAMA[@]}" design=spindle
    rc=$?
    [[ -f "$OUTDIR/gpu_bench_llama.json" ]] && "$PY" -m peftds.bench.tables "$OUTDIR/gpu_bench_llama.json" 2>&1 | tee -a "$LOG"
    exit "$rc"
fi

# A. every design against the baselines, source 128 (one process: the baselines are measured once).
#    If a design fails to build or run there, each design is retried with the baselines alone.
bench "$LIMIT_A" gpu_bench_designs "${MODEL[@]}" design=spindle_t5base "bench.designs=[$DESIGNS]"
rc=$?
if (( rc != 0 && rc != 124 )); then
    for d in spindle_t5base ${DESIGNS//,/ }; do
        bench 60 "gpu_bench_$d" "${MODEL[@]}" "design=$d" "bench.variants=[design,peft_lora,floor]" || true
    done
fi

# B. eager vs compiled at a GLUE length (eager is overhead-bound there): compiled design vs eager floor.
bench "$LIMIT_B" gpu_bench_compiled "${MODEL[@]}" design=spindle_t5base "bench.source_len=$COMPILE_SRC" \
    bench.compile=true "bench.compile_variants=[$COMPILE_VARIANTS]" "bench.variants=[design,floor]" \
    bench.steps=10 bench.warmup=2 || true

echo "== merged table (median ms/step; ratios to the floor and to peft LoRA of the same run)" | tee -a "$LOG"
files=()
for n in designs spindle_t5base ${DESIGNS//,/ } compiled; do
    [[ -f "$OUTDIR/gpu_bench_$n.json" ]] && files+=("$OUTDIR/gpu_bench_$n.json")
done
if (( ${#files[@]} )); then
    "$PY" -m peftds.bench.tables "${files[@]}" 2>&1 | tee -a "$LOG"
else
    echo "gpu_bench: no bench finished (see $LOG)" | tee -a "$LOG"
    exit 1
fi
