"""Stop signals, with real signals to a real process: abandon the step where allowed, else finish it;
a second signal forces the exit."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

SCRIPT = """
import sys, time
from orchestrator.stop_signals import StopRequested, StopSignals, stop_in
stop = StopSignals().install()
mode = sys.argv[1]
stop.abandonable = mode == "abandon"
try:
    print("ready", flush=True)  # the signal may land inside print's C code: a SystemError with it as context
    for _ in range(600):
        time.sleep(0.05)
        if mode == "finish" and stop.received is not None:
            print("step finished", flush=True)
            stop.check()
except Exception as err:
    e = stop_in(err)
    if e is None:
        raise
    print(f"checkpoint, then exit: {e}", flush=True)
    sys.exit(e.exit_code)
print("ran to the end", flush=True)
"""


def _run(mode, signals):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline() == "ready\n"
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.5)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_sigterm_abandons_a_step_that_may_be_dropped():
    code, out, err = _run("abandon", [signal.SIGTERM])
    assert code == 143 and out == "checkpoint, then exit: stopped by SIGTERM\n"
    assert "SIGTERM: abandoning this step, then checkpointing and exiting" in err


def test_sigint_during_an_update_finishes_the_step_first():
    code, out, err = _run("finish", [signal.SIGINT])
    assert code == 130 and out == "step finished\ncheckpoint, then exit: stopped by SIGINT\n"
    assert "SIGINT: finishing this step" in err


def test_a_second_signal_forces_the_exit():
    code, out, err = _run("hold", [signal.SIGINT, signal.SIGINT])
    assert code == 130 and out == ""
    assert "SIGINT again: stopping now, without a checkpoint" in err


def test_exit_codes_and_restore():
    from orchestrator.stop_signals import StopRequested, StopSignals

    assert StopRequested(signal.SIGTERM).exit_code == 143 and StopRequested(signal.SIGINT).exit_code == 130
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        stop.check()  # nothing received: no stop
    assert signal.getsignal(signal.SIGTERM) == before
    with pytest.raises(StopRequested):
        stop.received = signal.SIGTERM
        stop.check()


def test_stop_in_finds_the_request_behind_what_c_code_and_wrappers_raise():
    from orchestrator.stop_signals import StopRequested, stop_in

    def c_call_interrupted():
        try:
            raise StopRequested(signal.SIGTERM)  # the handler's exception...
        except StopRequested:
            raise SystemError("<cyfunction CoreWorker.wait> returned a result with an exception set")

    with pytest.raises(RuntimeError) as caught:
        try:
            c_call_interrupted()
        except SystemError as err:
            raise RuntimeError("step 1 failed") from err  # ...as the driver's wrapper sees it
    found = stop_in(caught.value)
    assert isinstance(found, StopRequested) and found.exit_code == 143
    assert stop_in(RuntimeError("a real failure")) is None and stop_in(None) is None
    loop = RuntimeError("a")
    loop.__context__ = RuntimeError("b")
    loop.__context__.__context__ = loop
    assert stop_in(loop) is None  # a cycle ends the walk


def test_install_again_after_something_took_the_signal_over_restores_the_original():
    from orchestrator.stop_signals import StopSignals

    original = signal.getsignal(signal.SIGTERM)
    stop = StopSignals().install()
    signal.signal(signal.SIGTERM, lambda *a: None)  # what ray.init does
    stop.install()
    assert signal.getsignal(signal.SIGTERM) == stop._handle
    stop.restore()
    assert signal.getsignal(signal.SIGTERM) == original
