#!/usr/bin/env bash
# GPU check (issue 23), prepared to run unattended in <= 10 minutes on one H100/H200 without network:
# a Qwen3-8B-shaped random bf16 pair on the GPU; hf, the ensemble and the token_level router (the MoE once it exists)
# timed on lm-eval scoring and batch-1/batch-8 generation, with peak GPU memory; one table, and JSON.
#
# Here (with network), once:   make gpu-check-prep   (wheels of what the GPU image lacks into .whl/: lm-eval,
#                                                     pydantic, torchao; Qwen3's tokenizer into .cache/sopmoe/)
# There (the device tool, carry [".whl", ".cache/sopmoe"]):
#   bash benchmarks/gpu_check.sh --json "$OUT/gpu_check.json" --quantization int8,int4
# On a CPU, the same code paths in about a minute (CI runs this):  bash benchmarks/gpu_check.sh --size tiny
# The GPU image has torch, transformers, accelerate and peft; the carried wheels install beside them into a
# temporary folder (never over them). sopmoe itself runs from this working tree. Arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false TQDM_DISABLE=1 PYTHONUNBUFFERED=1
if ! "$PY" -c "import lm_eval, pydantic" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "gpu_check.sh: lm-eval or pydantic is missing and there are no wheels in .whl/; run 'make gpu-check-prep' with network first" >&2
    exit 2
  fi
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, transformers, lm_eval; print('torch', torch.__version__, '| transformers', transformers.__version__, '| lm_eval', lm_eval.__version__, '| cuda', torch.cuda.is_available())"
exec timeout "${GPU_CHECK_TIMEOUT:-570}" "$PY" benchmarks/gpu_check.py "$@"
