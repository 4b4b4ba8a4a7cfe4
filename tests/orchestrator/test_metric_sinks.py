"""TensorBoard and W&B copies of metrics.jsonl (orchestrator.metric_sinks), read back with each
tool's own reader: TensorBoard's EventAccumulator, W&B's run file (its records, W&B's protobufs)."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import struct
import threading

import pytest

from orchestrator.checkpoint import truncate_jsonl
from orchestrator.config import ConfigError, TrainConfig, load_config
from orchestrator.metric_sinks import WandbSink, open_sinks, resolve_wandb_mode
from orchestrator.metrics import MetricsLogger, read_metrics


def _step(step: int, scale: float = 1.0) -> dict:
    return {"reward/mean": 0.25 * step * scale, "loss/kl": 1e-3 / step * scale, "response/length_max": 17 + step,
            f"worker/engine_{step % 2}/tokens_per_s": 123.5 * step, "eval/accuracy": float("nan") if step == 2 else 0.5,
            "note": "not a number", "nested": {"a": 1}}


def _numeric(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}


def _cfg(tmp_path, **logging) -> TrainConfig:
    cfg = TrainConfig()
    cfg.output.dir = str(tmp_path)
    for key, value in logging.items():
        setattr(cfg.logging, key, value)
    return cfg.validate()


def _log(cfg, steps, scale=1.0, echo=print) -> None:
    with MetricsLogger(cfg.output.dir, cfg.total_steps, ray_metrics=False, echo=echo,
                       sinks=open_sinks(cfg, cfg.output.dir, echo)) as logger:
        for step in steps:
            logger.log(step, _step(step, scale))


def _by_step(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    series: dict = {}
    for record in records:
        for key, value in _numeric(record).items():
            series.setdefault(key, []).append((record["step"], value))
    return series


def _tensorboard_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_same(got: dict, want: dict, rel: float) -> None:
    assert sorted(got) == sorted(want)
    for key, points in want.items():
        assert [s for s, _ in got[key]] == [s for s, _ in points], key
        for (_, g), (_, w) in zip(got[key], points):
            assert g == pytest.approx(w, rel=rel, nan_ok=True), key


def test_tensorboard_holds_every_numeric_figure_of_metrics_jsonl(tmp_path):
    cfg = _cfg(tmp_path, tensorboard=True)
    lines: list[str] = []
    _log(cfg, [1, 2, 3], echo=lines.append)
    assert lines[0] == f"TensorBoard: tensorboard --logdir {tmp_path / 'tensorboard'}" and len(lines) == 4
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2, 3]
    scalars = _tensorboard_scalars(str(tmp_path / "tensorboard"))
    assert "worker/engine_1/tokens_per_s" in scalars and "time" in scalars and "note" not in scalars
    _assert_same(scalars, _by_step(records), rel=1e-6)  # float32 in event files


def test_tensorboard_after_resume_shows_what_metrics_jsonl_keeps(tmp_path):
    cfg = _cfg(tmp_path, tensorboard=True)
    _log(cfg, [1, 2, 3])                             # steps 2 and 3 logged, then the run dies
    truncate_jsonl(str(tmp_path / "metrics.jsonl"), 1)  # resume from the step-1 checkpoint (the driver's cut)
    _log(cfg, [2, 3], scale=10.0)                     # the redone steps
    records = read_metrics(str(tmp_path))
    assert [r["reward/mean"] for r in records] == [0.25, 5.0, 7.5]
    _assert_same(_tensorboard_scalars(str(tmp_path / "tensorboard")), _by_step(records), rel=1e-6)


def _wandb_records(run_file: str) -> list:
    """W&B's run file: a ':W&B' header, then LevelDB-log framing (32 KiB blocks, 7-byte record headers:
    crc32c, length, type full/first/middle/last) around serialized ``wandb_internal_pb2.Record``s."""
    from wandb.proto import wandb_internal_pb2

    data = open(run_file, "rb").read()
    assert data[:4] == b":W&B"
    records, pos, chunks = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer too short for a header: zero padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def wandb_run(out) -> tuple[dict, object, int]:
    """The one offline W&B run under ``out``: its figures as {key: [(step, value)]} (W&B's own
    ``_step``/``_runtime``/... left out), its run record, its exit code (None: never finished)."""
    run_file, = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    series, run, exit_code = {}, None, None
    for r in _wandb_records(run_file):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    value = json.loads(item.value_json)
                    series.setdefault(key, []).append((r.history.step.num, float("nan") if value == "NaN" else value))
        elif kind == "run":
            run = r.run
        elif kind == "exit":
            exit_code = r.exit.exit_code
    return series, run, exit_code


@contextlib.contextmanager
def network_trap(monkeypatch, home, proxies: bool = True):
    """W&B pointed at a local socket (its server and, with ``proxies``, every HTTP(S) proxy): yields the
    list of the requests that reached it. W&B's settings, cache and netrc: fresh ones under ``home``."""
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.settimeout(0.2)
    accepted, done = [], threading.Event()

    def serve():
        while not done.is_set():
            try:
                conn, _ = trap.accept()
            except OSError:
                continue
            accepted.append(conn.recv(200))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{trap.getsockname()[1]}"
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SILENT", "WANDB_NAME", "WANDB_ENTITY", "NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "")  # so that teardown restores the variable's absence (the sink sets WANDB_SILENT)
        monkeypatch.delenv(var)
    monkeypatch.setenv("WANDB_BASE_URL", url)
    if proxies:  # not with Ray: its gRPC would go through them
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
            monkeypatch.setenv(var, url)
    home.mkdir()
    (home / "netrc").write_text("")
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("NETRC", str(home / "netrc"))
    try:
        yield accepted
    finally:
        done.set()
        thread.join(timeout=2)
        trap.close()


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    with network_trap(monkeypatch, tmp_path / "home") as accepted:
        yield accepted


def test_wandb_offline_run_holds_every_numeric_figure_and_prints_one_line(tmp_path, no_network, capfd):
    out = tmp_path / "run_a"
    cfg = _cfg(out, wandb_project="grpo-test", wandb_mode="offline")
    lines: list[str] = []
    _log(cfg, [1, 2, 3], echo=lines.append)
    records = read_metrics(str(out))
    runs = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1
    folder = os.path.dirname(runs[0])
    assert lines[0] == f"W&B offline run: {folder} (upload: wandb sync {folder})"
    assert [line.split("]")[0] for line in lines[1:]] == ["[step 1/10", "[step 2/10", "[step 3/10"]
    series, run, exit_code = wandb_run(out)
    _assert_same(series, _by_step(records), rel=0)  # W&B keeps doubles
    assert run.project == "grpo-test" and run.display_name == "run_a" and exit_code == 0
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["output"]["dir"] == str(out) and config["total_steps"] == cfg.total_steps
    assert no_network == []  # not one connection to the W&B server or through a proxy
    captured = capfd.readouterr()
    assert "wandb" not in (captured.out + captured.err).lower()


def test_wandb_auto_mode_goes_online_only_with_a_key(no_network, monkeypatch):
    assert resolve_wandb_mode("offline") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B's own switch wins under 'auto'
    assert resolve_wandb_mode("auto") == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert resolve_wandb_mode("auto") == "offline"  # no WANDB_API_KEY, empty netrc
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef" * 2 + "01234567")
    assert resolve_wandb_mode("auto") == "online"
    assert no_network == []  # the key is found, not checked with the server


def test_wandb_online_start_that_fails_falls_back_to_offline(tmp_path, no_network, monkeypatch):
    import wandb

    real_init, modes = wandb.init, []

    def init(mode, **kwargs):
        modes.append(mode)
        if mode == "online":
            raise wandb.errors.CommError("no route to host")
        return real_init(mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef" * 2 + "01234567")
    lines: list[str] = []
    sink = WandbSink("grpo-test", "online", str(tmp_path), "run_b", echo=lines.append)
    sink.write(1, {"reward/mean": 0.5})
    sink.close(exit_code=1)
    assert modes == ["online", "offline"] and sink.mode == "offline"
    assert lines[0].startswith("W&B: could not start an online run (CommError: no route to host)")
    series, _, exit_code = wandb_run(tmp_path)
    assert series == {"reward/mean": [(1, 0.5)]} and exit_code == 1 and no_network == []


def test_a_failing_sink_is_dropped_and_metrics_jsonl_goes_on(tmp_path):
    class Broken:
        closed = 0

        def write(self, step, values):
            raise OSError("disk full")

        def close(self, exit_code=0):
            Broken.closed += 1

    logger = MetricsLogger(str(tmp_path), 2, ray_metrics=False, echo=lambda line: None, sinks=[Broken()])
    logger.log(1, {"reward/mean": 1.0})
    logger.log(2, {"reward/mean": 2.0})
    logger.close()
    logger.close()
    assert [r["reward/mean"] for r in read_metrics(str(tmp_path))] == [1.0, 2.0]
    assert logger.sinks == [] and Broken.closed == 1  # closed once, when dropped


@pytest.mark.parametrize("override,package", [("logging.tensorboard=true", "tensorboard"),
                                              ("logging.wandb_project=grpo", "wandb")])
def test_a_missing_package_is_one_config_error_naming_the_install(monkeypatch, override, package):
    import importlib.util

    load_config(None, [override])  # installed here (the dev extra): validates
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    message = str(e.value)
    assert "\n" not in message and f"{package!r} package" in message
    assert message.endswith("pip install 'grpo-ray[logging]'") and override.split("=")[0] in message


def test_logging_fields_are_checked():
    with pytest.raises(ConfigError, match="logging.wandb_mode='upload' must be one of"):
        load_config(None, ["logging.wandb_mode=upload"])
    with pytest.raises(ConfigError, match="logging.wandb_project=' ' must name a project"):
        load_config(None, ["logging.wandb_project=' '"])
    cfg = load_config(None, [])
    assert not cfg.logging.tensorboard and cfg.logging.wandb_project is None and open_sinks(cfg, "unused") == []


def test_wandb_mode_from_wandbs_own_switch(tmp_path, no_network, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    lines: list[str] = []
    sink = WandbSink("grpo-test", "auto", str(tmp_path), "run_c", echo=lines.append)
    sink.write(1, {"reward/mean": 0.5})
    sink.close()
    assert sink.mode == "disabled" and lines == [] and not (tmp_path / "wandb").exists()


def test_the_tested_packages_are_the_pinned_ones():
    import importlib.metadata
    import tomllib

    from tests.conftest import ROOT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = dict(pin.split("==") for pin in extras["logging"])
    assert sorted(pins) == ["tensorboard", "wandb"] and "grpo-ray[logging]" in extras["dev"]
    assert {name: importlib.metadata.version(name) for name in pins} == pins


def test_wandb_online_without_a_key_logs_offline_rather_than_prompting(tmp_path, no_network):
    lines: list[str] = []
    sink = WandbSink("grpo-test", "online", str(tmp_path), "run_d", echo=lines.append)
    sink.write(1, {"reward/mean": 0.5})
    sink.close()
    assert sink.mode == "offline" and lines[0].startswith("W&B: no API key")
    assert wandb_run(tmp_path)[0] == {"reward/mean": [(1, 0.5)]} and no_network == []
