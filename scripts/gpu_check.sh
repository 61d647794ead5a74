#!/usr/bin/env bash
# The GPU checks of issue 7 (item 7), prepared so that a session lent a GPU spends its device time on
# them and not on setting up. Two steps:
#
#   bash scripts/gpu_check.sh prepare    # here, on the CPU machine: wheels and data into .gpu/ (git-ignored)
#   bash scripts/gpu_check.sh run        # there, as the device command, carrying .gpu
#
# `run` writes to $OUT (or ./gpu_check_out): gpu.txt (name, driver, date), tests.log (the CUDA-graph
# tests, the real capture included), bench.log and bench_gpu.json (the trainer's episodes/s on the MAML
# 5-way 1-shot preset, eager vs hardware.cuda_graph=true, and the smoke trainer runs). About 5 minutes
# on an H100. Why a script: the device machine starts bare (no hydra-core or omegaconf; ../shared does
# not travel), and a lent machine's time is counted from its start.
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    mkdir -p .gpu/whl .gpu/omniglot
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    # pure-Python wheels (py3-none-any), so they install on the device's Python 3.12 whatever this one is;
    # antlr4's runtime is published as a source archive only, so pip builds its wheel here
    python -m pip wheel -q --no-deps -w .gpu/whl hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3
    cp ../shared/data/omniglot/images_background_small*.zip .gpu/omniglot/
    du -sh .gpu
    echo "now: run(command='bash scripts/gpu_check.sh run', carry=['.gpu'], timeout_s=540)"
    ;;
run)
    OUT=${OUT:-gpu_check_out}
    mkdir -p "$OUT"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    { nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u +%F; \
      python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } | tee "$OUT/gpu.txt"
    python3 -m pytest tests/test_cuda_graph.py -q -rs 2>&1 | tee "$OUT/tests.log"
    python3 scripts/bench_gpu.py --sections trainer --omniglot .gpu/omniglot --json "$OUT/bench_gpu.json" 2>&1 \
        | tee "$OUT/bench.log"
    ;;
*)
    echo "usage: bash scripts/gpu_check.sh prepare|run  (prepare here, run on the GPU machine)" >&2
    exit 2
    ;;
esac
