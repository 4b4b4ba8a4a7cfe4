"""One config tree for a whole GRPO run.

Every field carries a docstring (the string right under it); ``grpo train --help-config`` prints
them. A run's config is one YAML file plus ``a.b=c`` overrides on the command line, validated
before any actor starts; every error names the offending field.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Optional, get_args, get_origin, get_type_hints

import yaml

from orchestrator.config_checks import (  # noqa: F401  (re-exported: one import site for users)
    ATTN_IMPLEMENTATIONS, KL_ESTIMATORS, LOSS_AGGS, TASKS, ConfigError, validate as check_config,
)
from orchestrator.remote import STALL_TIMEOUT_S


@dataclass
class ModelConfig:
    path: str = "models/SmolLM2-135M-Instruct"
    """Policy initialisation: a local Hugging Face folder or a hub name. `grpo prepare-model` builds the default."""
    dtype: str = "auto"
    """Training/inference dtype: 'auto' (fp32 on CPU, bf16 on GPU), 'float32' or 'bfloat16'."""
    trust_remote_code: bool = False
    """Passed to transformers and vLLM when loading the model and tokenizer."""


@dataclass
class DataConfig:
    task: str = "arithmetic"
    """Task and verifier: 'gsm8k' (answer after '#### '), 'math' (\\boxed{} answer) or 'arithmetic' (synthetic sums)."""
    train_file: Optional[str] = None
    """Training questions: a local .jsonl path or a `datasets` hub name. Ignored for 'arithmetic'."""
    eval_file: Optional[str] = None
    """Held-out questions for evaluation (same formats as train_file)."""
    questions_per_step: int = 4
    """Questions sampled per exploration step (the batch of Algorithm 1); each gets group_size outputs."""
    max_prompt_tokens: int = 512
    """Prompts longer than this (after the chat template) are rejected when the data is loaded."""
    system_prompt: Optional[str] = None
    """Optional system message put before every question."""
    arithmetic_digits: int = 1
    """Synthetic task difficulty: number of digits of each operand of 'a + b'."""
    arithmetic_train_size: int = 2000
    """Synthetic task: number of training questions generated."""
    arithmetic_eval_size: int = 200
    """Synthetic task: number of held-out questions (disjoint from training)."""
    shuffle: bool = True
    """Shuffle training questions each epoch (seeded by the run seed)."""


@dataclass
class RolloutConfig:
    num_workers: int = 1
    """Number of vLLM engines; the questions of a step are sharded across them."""
    group_size: int = 8
    """G: outputs sampled per question (DeepSeekMath: 64)."""
    max_new_tokens: int = 1024
    """Maximum response length in tokens (DeepSeekMath: 1024)."""
    temperature: float = 1.0
    """Sampling temperature; the learner divides its logits by the same value."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0 = off, which keeps the ratio well defined)."""
    tensor_parallel_size: int = 1
    """GPUs per engine (ignored on CPU)."""
    gpu_memory_utilization: float = 0.15
    """vLLM's memory budget on GPU: the share of GPU memory for weights, activations and KV cache."""
    kv_cache_gb: Optional[float] = None
    """KV-cache size per engine in GiB; overrides gpu_memory_utilization. Unset: on GPU the budget
    above decides, on CPU 1 GiB (a share of RAM is unreliable there: vLLM measures its NUMA node)."""
    num_cpus_per_worker: float = 1.0
    """Ray CPUs reserved per engine."""
    num_gpus_per_worker: float = 0.0
    """Ray GPUs reserved per engine (set to tensor_parallel_size on GPU clusters)."""
    enforce_eager: bool = True
    """Run the engine's model eagerly. False lets vLLM compile it (torch.compile; on GPU also CUDA graphs):
    decoding ran 1.15-1.3x faster on a 2-core CPU (bench/decode_profile.py), but every engine start then
    compiles for about 70 s there (vLLM 0.32's compile cache does not reload on CPU). Worth it for long runs."""
    enable_prefix_caching: bool = True
    """Share the prompt's KV cache across the G samples of a group."""
    cpu_reserved_cores: int = 0
    """CPU engines: cores vLLM keeps for its scheduler process instead of decoding (vLLM's own default is 1).
    Phases of a step run one after another, so 0 lets decoding use every core (1.4x faster on 2 cores)."""
    dtype: str = "auto"
    """Engine dtype: 'auto' (model.dtype; with model.dtype=auto bf16 on GPU, fp32 on CPU), 'float32' or 'bfloat16'.
    bf16 engines next to an fp32 learner sample from a slightly different policy: use old_logprobs='sampler'."""
    resources: dict = field(default_factory=dict)
    """Custom Ray resources per engine, e.g. {rollout_node: 1} to pin engines to the rollout worker group."""
    max_restarts: int = 3
    """Engines that die are replaced (and given the current weights) up to this many times per run; their work is redone on the others."""


@dataclass
class RewardConfig:
    num_workers: int = 1
    """Number of reward actors; a step's episodes are split across them."""
    timeout_s: float = 10.0
    """Per-sample verifier deadline; a sample that takes longer scores incorrect and is counted in reward/timeouts."""
    verifier_memory_mb: int = 1024
    """Address-space cap (RLIMIT_AS, MiB) of each verifier process; a sample that needs more scores incorrect
    and is counted in reward/verifier_errors (like one whose verifier raises or dies)."""
    correct_reward: float = 1.0
    """Reward for a verified correct final answer."""
    incorrect_reward: float = 0.0
    """Reward for a wrong or missing final answer."""
    num_cpus_per_worker: float = 0.5
    """Ray CPUs reserved per reward actor."""
    resources: dict = field(default_factory=dict)
    """Custom Ray resources per reward worker, e.g. {reward_node: 1}."""
    max_restarts: int = 3
    """Reward workers that die are restarted (with the current reward models) up to this many times; their shard is rescored."""
    rule_weight: float = 1.0
    """Weight of the rule verifier's reward in the composed reward (0 = learned rewards only)."""
    orm_weight: float = 0.0
    """Weight of the outcome reward model r_phi (its probability that the answer is right) in the reward."""
    prm_weight: float = 0.0
    """Weight of the process reward model's per-step scores (process supervision only)."""
    orm_path: Optional[str] = None
    """Outcome reward model (HF folder). None with orm_weight > 0: trained at start-up from the initial policy's samples."""
    prm_path: Optional[str] = None
    """Process reward model (HF folder). None with prm_weight > 0: trained at start-up (Math-Shepherd labels)."""
    model_batch_size: int = 16
    """Sequences per forward pass when a reward worker scores with a reward model."""
    model_dtype: str = "auto"
    """Dtype reward workers score with: 'auto' (model.dtype, fp32 when that is 'auto': the workers run on
    CPU), 'float32' or 'bfloat16' (about 2x faster on CPUs with AMX or AVX512-BF16)."""
    overlap_samples: int = 8
    """Score finished samples in chunks of this many while the engines still generate the rest of the step
    (0 = score the whole step after generation)."""


@dataclass
class RewardModelConfig:
    backbone: Optional[str] = None
    """Causal LM that a new reward model starts from (a scalar head is added); None = the policy model."""
    lr: float = 1e-5
    """AdamW learning rate of reward-model training."""
    epochs: int = 2
    """Passes over each reward-model training set (the start-up set and every iteration's mix)."""
    micro_batch_size: int = 8
    """Sequences per optimizer step of reward-model training."""
    train_last_layers: int = 0
    """Train only the scalar head, the final norm and the last N transformer layers (0 = the whole model)."""
    zero_stage: Optional[int] = None
    """DeepSpeed ZeRO stage of the reward-model trainer (0, 1 or 2); None = 0, as for the learner on one rank:
    the trainer is a single rank, with nothing to partition."""
    num_cpus: float = 1.0
    """Ray CPUs reserved for the reward-model trainer actor."""
    num_gpus: float = 0.0
    """Ray GPUs for the reward-model trainer (0 = CPU with gloo)."""
    heldout_frac: float = 0.2
    """Share of each new set's questions held out to measure reward-model accuracy (rm/heldout_accuracy)."""
    bootstrap_questions: int = 16
    """Questions (x group_size samples) drawn from the initial policy to train r_phi at start-up."""
    labels_file: Optional[str] = None
    """JSONL of labelled samples (RMSample rows) to train the start-up reward model on instead of sampling."""
    prm_rollouts_per_step: int = 4
    """Math-Shepherd: completions sampled from each step prefix to label that step."""
    prm_label: str = "hard"
    """Math-Shepherd step label: 'hard' (1 if any completion is right) or 'soft' (fraction right)."""
    prm_max_prefixes: int = 256
    """Cap on step prefixes expanded per labelling round (the rest keep the outcome label)."""


@dataclass
class IterativeConfig:
    every_steps: int = 0
    """Iterative RL: every K policy steps retrain r_phi on fresh samples and reset the reference (0 = off)."""
    replay_ratio: float = 0.1
    """Share of each reward-model training mix drawn from the replay buffer of historical samples (paper: 10%)."""
    replay_max_samples: int = 20000
    """Bound of the on-disk replay buffer (a uniform reservoir over everything seen)."""
    reset_reference: bool = True
    """Reset the reference model to the current policy after each iteration (the paper does)."""


@dataclass
class AlgorithmConfig:
    clip_eps: float = 0.2
    """epsilon of the clipped ratio (DeepSeekMath: 0.2)."""
    kl_coef: float = 0.04
    """beta: weight of the k3 KL to the reference model in the loss (DeepSeekMath: 0.04)."""
    mu: int = 1
    """Policy updates per exploration step (DeepSeekMath: 1)."""
    adv_eps: float = 1e-6
    """Added to the group std when normalising rewards."""
    supervision: str = "outcome"
    """'outcome': the normalised final reward on every token; 'process': each token gets the sum of the
    normalised rewards of its own and all later reasoning steps (DeepSeekMath section 4.1.3)."""
    step_separator: str = "\n\n"
    """Process supervision: text that ends a reasoning step (default: a blank line)."""
    normalize_std: bool = True
    """Divide group-centred rewards by the group std (the paper); false keeps only the mean baseline."""
    loss_agg: str = "seq-mean-token-mean"
    """How token terms become the loss: 'seq-mean-token-mean' (paper), 'token-mean' or 'seq-mean-token-sum'."""
    kl_estimator: str = "k3"
    """KL(pi_theta || pi_ref) estimator: 'k3' (paper, unbiased and >= 0), 'k1' (log ratio) or 'k2' (squared log ratio / 2)."""
    kl_placement: str = "loss"
    """'loss': beta*KL inside the objective (paper); 'reward': beta*sum of KL subtracted from each reward (outcome only)."""
    old_logprobs: str = "learner"
    """Logprobs of the policy that sampled, for the ratio: 'learner' (recomputed, the first update's ratio is
    exactly 1) or 'sampler' (vLLM's, saves nothing on CPU but tests the sampler/learner gap)."""
    off_policy_lag: int = 0
    """0: every step samples from the current policy (the paper). 1: the engines generate step k+1 while the
    learner trains on step k, so samples are one update old; needs old_logprobs='sampler' (the ratio then
    corrects for the lag, and clipping bounds it)."""


@dataclass
class LearnerConfig:
    lr: float = 1e-6
    """AdamW learning rate (DeepSeekMath: 1e-6)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_betas: tuple = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 = off)."""
    zero_stage: Optional[int] = None
    """DeepSpeed ZeRO stage (0, 1, 2 or 3). None: 0 for one learner rank (nothing to partition, and ZeRO-2's
    gradient buckets cost ~25% of a bf16 CPU learner step in copies), 2 for several."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass; gradients accumulate over the step's batch."""
    num_gpus: float = 0.0
    """Ray GPUs of each learner rank (0 = CPU training with the gloo backend)."""
    num_cpus: float = 1.0
    """Ray CPUs of each learner rank (on CPU also its torch threads)."""
    num_ranks: int = 1
    """Learner ranks: one DeepSpeed data-parallel group of this many Ray actors, each with num_gpus/num_cpus.
    Each rank trains on 1/num_ranks of the step's groups (whole groups: data.questions_per_step must divide by
    it); NCCL when every rank has a GPU, gloo on CPU. Rank 0 alone sends weights to the engines."""
    rank0_resources: dict = field(default_factory=dict)
    """Custom Ray resources of rank 0 alone, besides learner.resources: pins the rank that hosts the rendezvous
    and sends the weights to the engines to a node, e.g. {learner_head: 1}."""
    placement_strategy: str = "PACK"
    """Ray placement of the learner ranks' bundles: PACK (default: as few nodes as possible), SPREAD (across
    nodes), STRICT_PACK (one node) or STRICT_SPREAD (one rank per node)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    attn_implementation: str = "auto"
    """Attention kernel of the policy and reference: 'sdpa', 'eager', 'flash_attention_2' (GPU) or 'auto'. 'auto'
    keeps transformers' default (sdpa) on GPU; on CPU it picks eager for micro-batches up to 384 tokens wide and
    sdpa above, per micro-batch (eager fwd+bwd was 20% faster at 130 tokens, sdpa 10% faster at 600)."""
    shared_prompt: Optional[bool] = None
    """Run each distinct prompt of a micro-batch through the model once and its responses on top of its
    key/value cache, instead of prompt + response per row (same logprobs and gradients; a GRPO group's G
    rows share one prompt); micro-batches then keep a group's rows together when that costs less. The
    shared forward is two passes: None (default) uses it for a micro-batch only when it saves more tokens
    than a pass's fixed cost (measured on CPU: 160 tokens in bf16, 96 in fp32; see learner/micro_batch_plan.py),
    true whenever it saves any, false never. The policy's passes never use it under gradient_checkpointing
    (training) or ZeRO-3 with several ranks; they keep the plain or packed forward there."""
    packed_sequences: Optional[bool] = None
    """Run each micro-batch as one row: its distinct prompts once and its responses unpadded, behind a 4-D
    attention mask that keeps every token's view of its own prompt + response (same logprobs and
    gradients, one pass, no padding). Attention over the packed row is dense, so a micro-batch packs only
    when that costs less than the alternatives (learner/micro_batch_plan.py). None (default): on CPU
    (learner steps 1.3-1.65x faster than plain there, docs/benchmarks.md), off on GPU (not measured there); needs
    eager or sdpa attention (not flash_attention_2). Works with gradient checkpointing and ZeRO-3."""
    reference_overlap: Optional[bool] = None
    """Compute the reference model's logprobs of each chunk of finished samples (``reward.overlap_samples``)
    during generation, while the learner waits, instead of at the start of its update (same values).
    None (default): on when the learner has a GPU of its own; off on CPU, where the engines decode on the
    same cores and lose more than the learner gains (measured in docs/benchmarks.md). Batches prefetched
    under off_policy_lag=1 are never streamed, so they get no precomputed rows."""
    resources: dict = field(default_factory=dict)
    """Custom Ray resources for the learner (and the reward-model learners), e.g. {learner_node: 1}."""


@dataclass
class ResourcesConfig:
    address: Optional[str] = None
    """Ray cluster to join ('auto', 'ray://host:10001'); None starts a local Ray inside the program."""
    num_cpus: Optional[int] = None
    """CPUs of the local Ray started when address is None (None = all of this machine)."""
    weight_sync: str = "auto"
    """Weight transfer to engines: 'shm' (the learner writes the weights once into shared memory; engines on
    its node reload them from there, others get them through the object store), 'file' (every engine through
    the object store), 'nccl' (GPU broadcast) or 'auto' (nccl when learner and engines have GPUs, else shm)."""
    weight_sync_bucket_mb: int = 256
    """nccl: weights are packed into buckets of this size and broadcast bucket by bucket, two buffers in
    flight (vLLM's packed transfer), so a sync holds 2 buckets of extra GPU memory on each side instead of
    a copy of the model."""
    timeout_s: float = 1800.0
    """Deadline for any remote call (generation, scoring, a learner step, a sync); a late actor is named in the error."""
    stall_timeout_s: float = STALL_TIMEOUT_S
    """A rollout engine or reward worker that owes an answer and shows no progress for this long (no vLLM step,
    no streamed chunk, no heartbeat answered: a stopped or frozen process) is declared hung, killed, and its
    work redone on the others, like a dead one's (0 = off: only timeout_s ends a wait)."""
    placement_timeout_s: float = 120.0
    """How long to wait for a role's placement group (its GPUs/CPUs/custom resources) before failing with what is missing."""
    check_cluster: bool = True
    """Before starting actors, check that the cluster has the CPUs, GPUs and custom resources every role asks for."""
    check_memory: bool = True
    """Pre-flight refuses a config whose learner rank or rollout engine cannot fit its device (``grpo plan``
    shows the estimate), and on a local Ray one whose CPU roles together exceed this machine's RAM."""
    gpu_memory_gb: Optional[float] = None
    """Memory of each GPU for the memory plan; unset: the local GPU's, or 80 GiB where none is visible."""


@dataclass
class EvalConfig:
    every_steps: int = 0
    """Evaluate the current policy on held-out questions every N steps, through the rollout engines (0 = off)."""
    num_questions: int = 64
    """Held-out questions per evaluation (the first N of data.eval_file, or of the arithmetic held-out split)."""
    samples: int = 0
    """Sampled answers per question besides the greedy one: pass@k (k = 1, 2, 4, ..., N) and maj@N (0 = greedy only)."""
    temperature: float = 1.0
    """Sampling temperature for eval.samples."""


@dataclass
class LoggingConfig:
    log_every: int = 1
    """Print a progress line every N steps (metrics.jsonl always gets every step)."""
    ray_metrics: bool = True
    """Also export per-step figures as Ray metrics (Prometheus, Ray dashboard)."""
    dashboard: bool = True
    """Start the Ray dashboard with the local Ray (its address is printed); a cluster's own dashboard is used otherwise."""
    tensorboard: bool = False
    """Also write every metrics.jsonl figure to TensorBoard event files in <output.dir>/tensorboard (needs pip install 'grpo-ray[logging]')."""
    wandb_project: Optional[str] = None
    """Also log every metrics.jsonl figure to this Weights & Biases project, one run per process named after output.dir, files in <output.dir>/wandb (needs pip install 'grpo-ray[logging]')."""
    wandb_mode: str = "auto"
    """W&B mode: 'auto' (W&B's WANDB_MODE when set, else 'online' with an API key from WANDB_API_KEY or `wandb login`, else 'offline'), 'online' or 'offline'. Online without a key, or an online start that fails (no internet), falls back to offline; upload offline runs with `wandb sync <output.dir>/wandb/offline-run-*`."""


@dataclass
class OutputConfig:
    dir: str = "outputs/run"
    """Run folder: metrics.jsonl, config.yaml and final/ (the trained policy in Hugging Face format)."""
    save_final: bool = True
    """Save the policy to <dir>/final at the end of training."""
    checkpoint_every: int = 50
    """Write a resumable checkpoint to <dir>/checkpoints/step_N every N steps (0 = off); the last step always gets one."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted once a newer one is complete."""
    resume: Optional[str] = None
    """Resume from a checkpoint folder, 'auto' (the newest in <dir>/checkpoints; grpo train --resume) or 'if_exists' (auto when there is one: retried jobs)."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy model."""
    data: DataConfig = field(default_factory=DataConfig)
    """Task and questions."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """vLLM generation workers."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward workers and how rewards are composed."""
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    """Training of the learned reward models (outcome r_phi and process)."""
    iterative: IterativeConfig = field(default_factory=IterativeConfig)
    """Iterative RL: periodic reward-model retraining with replay, then a reference reset."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """GRPO objective."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """DeepSpeed learner."""
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    """Ray cluster and transfer settings."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Periodic evaluation during training (greedy accuracy, pass@k, maj@k)."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Progress and metrics."""
    output: OutputConfig = field(default_factory=OutputConfig)
    """Where results go."""
    total_steps: int = 10
    """Exploration steps (batches of questions) to train for."""
    seed: int = 0
    """Seed for data order, synthetic data and initialisation."""

    def validate(self) -> "TrainConfig":
        """Raise ConfigError naming the first bad field (``orchestrator.config_checks``); return self when all is well."""
        check_config(self)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise ConfigError."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is not None and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is tuple or origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field {name}={value!r} must be a list")
        return tuple(float(v) for v in value)
    if hint is dict or origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else {}
        if not isinstance(value, dict):
            raise ConfigError(f"config field {name}={value!r} must be a mapping, e.g. {{rollout_node: 1}}")
        return {str(k): v for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config field {name}={value!r} must be true or false")
    if hint in (int, float, str):
        if hint is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"config field {name}={value!r} must be an integer")
        if isinstance(value, bool) and hint is not str:
            raise ConfigError(f"config field {name}={value!r} must be a number")
        try:
            return hint(float(value)) if hint is int and isinstance(value, str) and "e" in value.lower() else hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config field {name}={value!r} must be of type {hint.__name__}") from None
    return value


def _apply(node: Any, updates: dict, prefix: str = "") -> None:
    hints = get_type_hints(type(node))
    fields = {f.name for f in dataclasses.fields(node)}
    for key, value in updates.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown config field {name!r} (known: {', '.join(sorted(fields))})")
        current = getattr(node, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config field {name} is a section; give its fields, e.g. {name}.<field>=...")
            _apply(current, value, prefix=f"{name}.")
        else:
            setattr(node, key, _coerce(value, hints[key], name))


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ['a.b=c', ...] into a nested dict, values parsed as YAML scalars."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.field=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return tree


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> TrainConfig:
    """Defaults, then the YAML file, then the overrides; validated."""
    cfg = TrainConfig()
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"config file {path!r} does not exist")
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path!r} must hold a mapping of sections")
        _apply(cfg, data)
    if overrides:
        _apply(cfg, parse_overrides(overrides))
    return cfg.validate()


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under each field of a config dataclass (read from its source)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def describe(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Lines 'section.field = default  # doc' for the whole tree."""
    lines, docs, default = [], field_docs(cls), cls()
    for f in dataclasses.fields(cls):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            lines += describe(type(value), prefix=f"{prefix}{f.name}.")
        else:
            lines.append(f"{prefix}{f.name} = {value!r}  # {docs.get(f.name, '')}")
    return lines
