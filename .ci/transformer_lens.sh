#!/usr/bin/env bash
# TransformerLens tests for CI (called by .ci/run): the optional `tl` extra is not in .[dev].
set -euo pipefail
cd "$(dirname "$0")/.."
# TransformerLens (the optional `tl` extra; not in .[dev]): 3.x against the venv's transformers 4.x
# (HookedTransformer and TransformerBridge), 4.x with transformers 5 (TransformerBridge only).
# pip resolves each against the venv with the named venv packages pinned; the packages it would
# add or change go, without dependencies, into a temporary target folder (the venv is untouched).
tl_tests() {  # $1: requirement; $2...: venv packages to pin (pip freeze names, regex)
    local dir pins
    dir=$(mktemp -d)
    pins=$(IFS='|'; echo "${*:2}")
    .venv/bin/python -m pip freeze | grep -iE "^($pins)==" > "$dir/pins.txt"
    .venv/bin/python -m pip install --quiet --dry-run --report "$dir/report.json" -c "$dir/pins.txt" "$1"
    .venv/bin/python -c "import json, sys; print('\n'.join(p['metadata']['name'] + '==' + p['metadata']['version'] for p in json.load(open(sys.argv[1]))['install']))" "$dir/report.json" > "$dir/requirements.txt"
    .venv/bin/python -m pip install --quiet --no-deps --target "$dir/site" -r "$dir/requirements.txt"
    PYTHONPATH="$dir/site" HF_HUB_OFFLINE=1 .venv/bin/python -c "import transformers; from captum_gndi.adapters.transformer_lens import transformer_lens_api as api, transformer_lens_version as v; print('transformer_lens', v(), api(), 'transformers', transformers.__version__)"
    PYTHONPATH="$dir/site" HF_HUB_OFFLINE=1 .venv/bin/python -m pytest tests/test_transformer_lens.py -p no:cacheprovider -q
}
tl_tests "transformer-lens>=3,<4" torch numpy transformers 'huggingface[-_]hub' tokenizers safetensors
tl_tests "transformer-lens>=4,<5" torch numpy
