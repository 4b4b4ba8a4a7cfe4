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
from orchestrator.stop_signals import StopRequested, StopSignals
stop = StopSignals().install()
mode = sys.argv[1]
stop.abandonable = mode == "abandon"
print("ready", flush=True)
try:
    for _ in range(600):
        time.sleep(0.05)
        if mode == "finish" and stop.received is not None:
            print("step finished", flush=True)
            stop.check()
except StopRequested as e:
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
