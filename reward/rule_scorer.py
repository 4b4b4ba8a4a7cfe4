"""The protected rule scorer: rule verifiers in a killable, memory-capped process, one deadline per sample.

A policy can write anything, so one completion may cost its own sample and nothing more.
``RuleRewardScorer.score`` gives every item a ``Verdict`` and never raises for a completion's sake:

* the verifier answers: ``correct_reward`` or ``incorrect_reward``;
* it raises (``RecursionError`` on deeply nested LaTeX, ``MemoryError`` at the memory cap, a bug):
  the sample is wrong, ``Verdict.error`` says why and it counts in ``verifier_errors``; the process
  is unharmed and scores the next sample;
* its process dies (a crash in C code, a kill): the same, and a new process scores the rest;
* it runs past ``timeout_s`` (``\\boxed{9^{9^{9^{9}}}}``): the sample is wrong and counts in
  ``timeouts``; the process is killed and a new one scores the rest.

Process supervision's rule step rewards (``reward.steps.arithmetic_step_rewards``, when ``score`` gets
the samples' step texts) are computed in the same process under the same deadline: a sample with no
verdict gets ``incorrect_reward`` on every step.

The process runs under ``RLIMIT_AS`` (``memory_mb``), and math-verify's own ``signal.alarm``
timeouts stay off (``reward.verifiers``): the deadline is kept here. Only an unknown task (a
configuration error) and a process that cannot start raise ``RewardError``.

Used by the reward workers (``reward.pool``) and, as a local instance, by evaluation
(``orchestrator.evaluate.grade``: ``grpo eval`` and the driver's periodic evaluation).
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Callable, Mapping, NamedTuple, Optional, Sequence

from reward.steps import arithmetic_step_rewards
from reward.verifiers import VERIFIERS, answer_key, warm_up

if TYPE_CHECKING:
    from orchestrator.config import RewardConfig

Item = tuple[str, str, str, str]
"""One sample to score: (task, completion, gold, uid)."""

STARTUP_TIMEOUT_S = 300.0
"""Deadline for starting a verifier process and importing the parsers (not a sample's time)."""

_HEADROOM_MB = 16
"""A verifier process must be able to allocate this much at start (see ``_warm_up_under_cap``)."""

_ERROR_CHARS = 300
"""A recorded error is cut to this many characters (an exception may quote a 100k-character completion)."""


class RewardError(RuntimeError):
    """Scoring failed for a reason other than a wrong answer; the message names the sample or worker."""


class Verdict(NamedTuple):
    """One sample's score."""

    reward: float
    correct: bool
    error: Optional[str] = None
    """Why the verifier gave no verdict (its exception, or its process's death); None if it answered or timed out."""
    answer: Optional[str] = None
    """The completion's final answer as a voting key (``reward.verifiers.answer_key``), when asked for."""
    step_rewards: Optional[tuple[float, ...]] = None
    """Rule reward of each reasoning step, when ``score`` was given the step texts (process supervision)."""


# -- in the verifier process ----------------------------------------------------------------------

def _start_verifier_process(memory_mb: int) -> None:
    """Pool-process initializer: cap the address space, and exit if the parent dies (no strays)."""
    import resource

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))


def _describe(err: BaseException) -> str:
    """'ValueError: message' on one line, cut to _ERROR_CHARS."""
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return " ".join(text.split())[:_ERROR_CHARS]


def _judge(verifier: Callable[[str, str], bool], task: str, completion: str, gold: str, with_answer: bool,
           step_texts: Optional[Sequence[str]], rewards: tuple[float, float]
           ) -> tuple[bool, Optional[str], Optional[str], Optional[tuple[float, ...]]]:
    """(correct, answer key or None, error or None, step rewards or None) of one sample; runs in the
    verifier process. ``rewards``: (correct_reward, incorrect_reward) for the step rewards."""
    try:
        correct = bool(verifier(completion, gold))
        answer = answer_key(task, completion) if with_answer else None
        steps = None if step_texts is None else tuple(arithmetic_step_rewards(step_texts, correct, *rewards))
        return correct, answer, None, steps
    except BaseException as err:  # noqa: BLE001 - whatever a completion makes the verifier do costs that sample only
        return False, None, _describe(err), None


def _warm_up_under_cap() -> bool:
    """Import the parsers, then show that the memory cap leaves room to work: a cap below what the process
    already maps fails here, at start, even when the parsers fit in memory the process had already."""
    bytearray(_HEADROOM_MB << 20)
    return warm_up()


# -- in the owning process ------------------------------------------------------------------------

def _mp_context() -> multiprocessing.context.BaseContext:
    """forkserver where available (cheap restarts from a warm server), else spawn.

    Never plain fork: the Ray actor or driver that owns the process runs threads.
    """
    if sys.platform != "win32" and "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


def _peak_rss_kb(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in KiB; 0 where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    except (OSError, ValueError, IndexError):
        return 0


def _death(process: Optional[multiprocessing.process.BaseProcess]) -> str:
    """How a verifier process ended: 'exit code 3', 'killed by SIGKILL'."""
    if process is None:
        return "exit status unknown"
    process.join(timeout=5.0)
    code = process.exitcode
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class RuleRewardScorer:
    """Scores items with rule verifiers in one warm worker process, each sample under its own deadline."""

    def __init__(
        self,
        correct_reward: float = 1.0,
        incorrect_reward: float = 0.0,
        timeout_s: float = 10.0,
        verifiers: Optional[Mapping[str, Callable[[str, str], bool]]] = None,
        memory_mb: int = 1024,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if memory_mb <= 0:
            raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
        self.correct_reward = float(correct_reward)
        self.incorrect_reward = float(incorrect_reward)
        self.timeout_s = float(timeout_s)
        self.memory_mb = int(memory_mb)
        self.verifiers = dict(VERIFIERS if verifiers is None else verifiers)
        self._pool: Optional[cf.ProcessPoolExecutor] = None
        self._process: Optional[multiprocessing.process.BaseProcess] = None
        self._peak_kb = 0
        self._context = _mp_context()
        if self._context.get_start_method() == "forkserver":
            # Imported once by the fork server, so a restarted verifier process is ready in
            # well under a second (no effect if this process's fork server already runs).
            modules = {"math_verify", "reward.steps", "reward.verifiers", __name__}
            modules |= {fn.__module__ for fn in self.verifiers.values()}
            self._context.set_forkserver_preload(sorted(modules))

    @classmethod
    def from_config(cls, reward: "RewardConfig",
                    verifiers: Optional[Mapping[str, Callable[[str, str], bool]]] = None) -> "RuleRewardScorer":
        """Rewards, deadline and memory cap from the ``reward`` config section."""
        return cls(reward.correct_reward, reward.incorrect_reward, reward.timeout_s, verifiers,
                   reward.verifier_memory_mb)

    # -- process lifecycle ----------------------------------------------------------------

    @property
    def process_id(self) -> Optional[int]:
        """The verifier process's id; None before ``start`` and after ``close``."""
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start the verifier process and import the parsers, outside any sample's deadline."""
        if self._pool is not None:
            return
        pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=self._context,
                                      initializer=_start_verifier_process, initargs=(self.memory_mb,))
        try:
            pool.submit(_warm_up_under_cap).result(timeout=STARTUP_TIMEOUT_S)
        except BaseException as err:
            self._kill(pool)
            raise RewardError(f"could not start the verifier process (memory cap {self.memory_mb} MiB, "
                              f"reward.verifier_memory_mb): {type(err).__name__}: {err}") from err
        self._pool = pool
        self._process = next(iter((getattr(pool, "_processes", None) or {}).values()), None)

    def close(self) -> None:
        """Kill the verifier process (idempotent)."""
        if self._pool is not None:
            if self._process is not None:
                self._peak_kb = max(self._peak_kb, _peak_rss_kb(self._process.pid))
            self._kill(self._pool)
            self._pool, self._process = None, None

    def __enter__(self) -> "RuleRewardScorer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _kill(pool: cf.ProcessPoolExecutor) -> None:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for process in processes:
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5.0)

    # -- scoring --------------------------------------------------------------------------

    def _verifier(self, task: str, uid: str) -> Callable[[str, str], bool]:
        try:
            return self.verifiers[task]
        except KeyError:
            known = ", ".join(sorted(self.verifiers))
            raise RewardError(f"sample {uid!r}: unknown task {task!r} (known: {known})") from None

    def _submit(self, items: Sequence[Item], with_answers: bool,
                step_texts: Sequence[Optional[Sequence[str]]]) -> list[cf.Future]:
        """Queue every item on a live verifier process (one that died while idle is replaced first:
        no sample is blamed for it)."""
        if self._process is not None and not self._process.is_alive():
            self.close()
        self.start()
        assert self._pool is not None
        rewards = (self.correct_reward, self.incorrect_reward)
        return [self._pool.submit(_judge, self._verifier(task, uid), task, completion, gold, with_answers, texts,
                                  rewards)
                for (task, completion, gold, uid), texts in zip(items, step_texts)]

    def score(self, items: Sequence[Item], with_answers: bool = False,
              step_texts: Optional[Sequence[Sequence[str]]] = None) -> tuple[list[Verdict], dict]:
        """One Verdict per item, in order (with answer keys if ``with_answers``, with rule step rewards
        if ``step_texts``, one list of step texts per item, is given), and
        {'timeouts', 'verifier_errors', 'seconds', 'peak_rss_mb'}.

        All pending items are queued at once; the single worker runs them in order, so waiting on
        each future in turn with ``timeout_s`` gives every sample its own deadline, measured from
        when the previous one finished. After a timeout or a death the rest of the items are queued
        again on a new process. ``peak_rss_mb`` is the largest peak RSS of the processes that
        scored them (a process that died takes its figure with it).
        """
        started = time.monotonic()
        for task, _, _, uid in items:
            self._verifier(task, uid)  # fail on an unknown task before any work
        if step_texts is not None and len(step_texts) != len(items):
            raise ValueError(f"{len(step_texts)} step-text lists for {len(items)} items")
        texts: Sequence[Optional[Sequence[str]]] = [None] * len(items) if step_texts is None else step_texts

        def wrong(k: int, error: Optional[str] = None) -> Verdict:
            steps = None if texts[k] is None else (self.incorrect_reward,) * len(texts[k])
            return Verdict(self.incorrect_reward, False, error, None, steps)

        self._peak_kb = 0
        verdicts: list[Verdict] = []
        timeouts = errors = 0
        while len(verdicts) < len(items):
            done = len(verdicts)
            for future in self._submit(items[done:], with_answers, texts[done:]):
                k = len(verdicts)
                try:
                    correct, answer, error, steps = future.result(timeout=self.timeout_s)
                except cf.TimeoutError:
                    timeouts += 1
                    verdicts.append(wrong(k))
                    self.close()  # kill the stuck process; the rest is queued again on a new one
                    break
                except BrokenProcessPool:
                    errors += 1
                    verdicts.append(wrong(k, f"verifier process died ({_death(self._process)})"))
                    self.close()
                    break
                except Exception as err:  # noqa: BLE001 - e.g. a result that could not travel back: start clean
                    errors += 1
                    verdicts.append(wrong(k, _describe(err)))
                    self.close()
                    break
                if error is not None:
                    errors += 1
                    verdicts.append(wrong(k, error))
                    continue
                reward = self.correct_reward if correct else self.incorrect_reward
                verdicts.append(Verdict(reward, correct, None, answer, steps))
        if self._process is not None:
            self._peak_kb = max(self._peak_kb, _peak_rss_kb(self._process.pid))
        return verdicts, {"timeouts": timeouts, "verifier_errors": errors, "seconds": time.monotonic() - started,
                          "peak_rss_mb": self._peak_kb / 1024}
