#!/usr/bin/env bash
# The main job: fine-tune a CogVLM model with SAT + DeepSpeed and report what it learned.
#
#   bash finetune/run.sh                 # cogvlm-tiny on fresh synthetic data, CPU or all GPUs (~8 min on 2 CPU cores)
#   bash finetune/run.sh --help          # every option and its COGCOT_* environment variable
#   bash finetune/run.sh --from-pretrained /ckpt/cogvlm-chat-v1.1 --train-data train.jsonl \
#       --valid-data valid.jsonl --finetune-mode lora --num-gpus 8 --lr 1e-5 --train-iters 2000
#
# Sets up the environment if needed (setup_env.sh), then finetune/launch.py generates the default data,
# checks the options and runs finetune/finetune.py through the DeepSpeed launcher.
set -euo pipefail
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC1091
. "$_here/../setup_env.sh"
exec python -m finetune.launch "$@"
