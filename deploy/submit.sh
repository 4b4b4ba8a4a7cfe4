#!/usr/bin/env bash
# Submit a grpo-ray training run to a Ray cluster through the Job API and follow its logs.
#   deploy/submit.sh http://HEAD:8265 configs/deepseekmath_7b.yaml output.dir=/shared/runs/dsm7b
# The driver joins the cluster (--address auto) and places its actors there; the Ray dashboard
# (same address) shows the job, its actors and the grpo_* metrics.
set -euo pipefail
ADDRESS=${1:?usage: submit.sh DASHBOARD_ADDRESS CONFIG [overrides...]}
CONFIG=${2:?usage: submit.sh DASHBOARD_ADDRESS CONFIG [overrides...]}
shift 2
cd "$(dirname "$0")/.."
exec ray job submit --address "$ADDRESS" --runtime-env deploy/runtime_env.yaml \
  -- python -m orchestrator.cli train -c "$CONFIG" --address auto "$@"
