"""Optional copies of every per-step figure: TensorBoard event files and Weights & Biases.

``MetricsLogger`` (orchestrator.metrics) hands each step's record, the one it writes to metrics.jsonl,
to the sinks ``open_sinks`` builds from ``logging.tensorboard`` and ``logging.wandb_project``. Every
numeric value goes, ``worker/...`` keys and ``time`` included, ``step`` as the x axis; strings and
other non-numbers are skipped. Neither package is a dependency of grpo-ray: ``pip install
'grpo-ray[logging]'`` installs the pinned pair, and ``missing_packages`` lets config validation say
so in one line before anything starts.

TensorBoard: ``<output.dir>/tensorboard/events.out.tfevents.*``, flushed after every step. Each
writer opens with a session-start event at its first step, so TensorBoard drops what an earlier
process logged from that step on (a resumed run's abandoned steps), as metrics.jsonl does.
Values are float32 there (TensorBoard's scalar format).

W&B: one run per training process, named after the output folder, its files under
``<output.dir>/wandb/``; the run config is the whole TrainConfig. ``logging.wandb_mode='auto'``
takes W&B's own ``WANDB_MODE`` when set, else goes online when W&B finds an API key
(``WANDB_API_KEY``, ``wandb login``) and offline otherwise; online without a key, or an online start
that fails (no internet), falls back to offline. Offline runs upload later with ``wandb sync <output.dir>/wandb/offline-run-*``.
W&B prints nothing (``WANDB_SILENT`` unless set, console capture off); ``open_sinks`` prints one
line per sink: where its figures go.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import time
from typing import Callable, Optional

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'grpo-ray[logging]'"
"""The extra of pyproject.toml that pins tensorboard and wandb."""
WANDB_MODES = ("auto", "online", "offline")


def missing_packages(logging_cfg) -> list[tuple[str, str]]:
    """(config field, package) for each sink the config asks for whose package is not installed;
    looked up without importing it."""
    wanted = [("tensorboard", "tensorboard", logging_cfg.tensorboard),
              ("wandb_project", "wandb", logging_cfg.wandb_project is not None)]
    return [(name, package) for name, package, on in wanted if on and importlib.util.find_spec(package) is None]


def scalars(record: dict) -> dict[str, float]:
    """The numeric figures of a metrics.jsonl record, ``step`` (the x axis) left out."""
    return {key: float(value) for key, value in record.items()
            if key != "step" and isinstance(value, (int, float))}


class TensorBoardSink:
    """Scalars to TensorBoard event files in ``log_dir`` (tensorboard's own writer: no torch, no TF)."""

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self._writer = None

    def write(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary

        now = time.time()
        if self._writer is None:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self._writer = EventFileWriter(self.log_dir)
            # TensorBoard purges every earlier event at or after this step: a resumed run's redone steps
            self._writer.add_event(Event(wall_time=now, step=step, session_log=SessionLog(status=SessionLog.START)))
        summary = Summary(value=[Summary.Value(tag=key, simple_value=value) for key, value in values.items()])
        self._writer.add_event(Event(wall_time=now, step=step, summary=summary))
        self._writer.flush()

    def close(self, exit_code: int = 0) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def resolve_wandb_mode(mode: str) -> str:
    """The mode ``wandb.init`` gets for ``logging.wandb_mode`` (see the module docstring): under
    'auto', W&B's own ``WANDB_MODE`` when set (any of its values), else 'online' or 'offline'.
    Never touches the network."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if wandb_credentials_found() else "offline"


def wandb_credentials_found() -> bool:
    """Whether W&B has an API key (env, netrc, settings): W&B's own lookup, without the server check
    and the prompt of ``wandb.login()``."""
    try:
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth

        settings = wandb_setup.singleton().settings
        host = wbauth.HostUrl(settings.base_url, app_url=settings.app_url)
        return wbauth.authenticate_session(host=host, source="grpo", prompt=False, update_session=False) is not None
    except Exception as e:  # noqa: BLE001 - a malformed key, another wandb version: offline rather than nothing
        log.warning("W&B credentials not usable (%s)", e)
        return False


class WandbSink:
    """Scalars to a W&B run of ``project``; its files under ``<out_dir>/wandb``."""

    def __init__(self, project: str, mode: str, out_dir: str, run_name: str, config: Optional[dict] = None,
                 echo: Callable[[str], None] = print):
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        mode = resolve_wandb_mode(mode)
        if mode in ("online", "run") and not wandb_credentials_found():  # W&B would prompt for a key on a terminal
            echo("W&B: no API key (set WANDB_API_KEY or run `wandb login`); logging offline")
            mode = "offline"
        kwargs = dict(project=project, dir=os.path.abspath(out_dir), name=run_name, config=config or {},
                      reinit="create_new", settings=wandb.Settings(silent=True, console="off"))
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as e:  # noqa: BLE001 - no internet, server down, key refused
            if mode in ("offline", "dryrun"):
                raise
            echo(f"W&B: could not start an online run ({type(e).__name__}: {e}); logging offline")
            self.run = wandb.init(mode="offline", **kwargs)
        self.mode = "disabled" if self.run.disabled else "offline" if self.run.offline else "online"
        if self.mode == "online":
            echo(f"W&B run: {self.run.url}")
        elif self.mode == "offline":
            folder = os.path.dirname(self.run.dir)
            echo(f"W&B offline run: {folder} (upload: wandb sync {folder})")

    def write(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self, exit_code: int = 0) -> None:
        """End the run and wait until its files are complete: ``finish`` returns before W&B's service
        has written the run file; ``wandb.teardown`` waits for the service to exit (and uploads, online)."""
        if self.run is None:
            return
        import wandb

        self.run.finish(exit_code=exit_code)
        self.run = None
        try:
            wandb.teardown(exit_code)
        except SystemExit as e:  # teardown exits the process when W&B's service failed: not ours to end
            log.warning("W&B service ended with exit code %s", e.code)


def open_sinks(cfg, out_dir: str, echo: Callable[[str], None] = print) -> list:
    """The sinks ``cfg.logging`` (of a TrainConfig) asks for, for a run writing to ``out_dir``."""
    sinks: list = []
    if cfg.logging.tensorboard:
        sinks.append(TensorBoardSink(os.path.join(out_dir, "tensorboard")))
        echo(f"TensorBoard: tensorboard --logdir {sinks[-1].log_dir}")
    if cfg.logging.wandb_project:
        name = os.path.basename(os.path.abspath(out_dir))
        try:
            sinks.append(WandbSink(cfg.logging.wandb_project, cfg.logging.wandb_mode, out_dir, name, cfg.to_dict(), echo))
        except Exception as e:  # noqa: BLE001 - W&B is a copy of metrics.jsonl; training goes on without it
            echo(f"W&B logging off: could not start a run ({type(e).__name__}: {e})")
    return sinks
