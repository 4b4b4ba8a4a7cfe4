#!/usr/bin/env bash
# Two Ray nodes, the learner's two ranks on both, the rollout engine on the node without rank 0.
#
#   deploy/two_node_learner.sh OUTPUT_DIR [overrides ...]
#
# Both `ray start`s run on this machine here (each node with its own temp dir and custom resource); on
# a real cluster run the first on the head and the second on the other machine with the head's address.
# The fields that place the roles are the ones any cluster uses:
#   learner.num_ranks=2 learner.placement_strategy=STRICT_SPREAD   one rank per node
#   learner.rank0_resources={node_a: 1}                            rank 0 (rendezvous, weight export) on node_a
#   rollout.resources={node_b: 1}                                  the engine on node_b, beside rank 1
# The weights then reach the engine through Ray's object store (metric sync/engines_other_node = 1).
# Every node must read output.dir and model.path: here they are local paths of the one machine.
set -euo pipefail
OUT=${1:?usage: deploy/two_node_learner.sh OUTPUT_DIR [overrides ...]}
shift
PORT=${PORT:-6390}
TMP_ROOT=${TMP_ROOT:-/tmp/grpo2n}   # short: Ray's socket paths must fit 107 bytes
RAY=${RAY:-ray}
GRPO=${GRPO:-grpo}
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}   # the head writes a token (~/.ray/auth_token) that the other node and the job read

"$RAY" start --head --port="$PORT" --num-cpus=3 --resources='{"node_a": 4}' --include-dashboard=false \
    --temp-dir="$TMP_ROOT/a" >&2
trap '"$RAY" stop --force >&2 || true' EXIT
"$RAY" start --address="127.0.0.1:$PORT" --num-cpus=3 --resources='{"node_b": 4}' --temp-dir="$TMP_ROOT/b" >&2

"$GRPO" train -c configs/tiny_cpu.yaml --address "127.0.0.1:$PORT" output.dir="$OUT" \
    learner.num_ranks=2 learner.num_cpus=1 learner.micro_batch_size=8 learner.placement_strategy=STRICT_SPREAD \
    'learner.rank0_resources={node_a: 1}' 'rollout.resources={node_b: 1}' rollout.num_cpus_per_worker=1 \
    data.questions_per_step=2 total_steps=2 rollout.max_new_tokens=8 output.checkpoint_every=0 \
    output.save_final=false "$@"
