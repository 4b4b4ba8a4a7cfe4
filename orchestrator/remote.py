"""Helpers for calling groups of Ray actors: contiguous sharding and deadline-bound gathering.

Every remote call in the system goes through ``gather`` so that a late, failed or dead actor is
named in the error instead of hanging the run.
"""
from __future__ import annotations

from typing import Sequence


def shard_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges splitting n items into ``parts`` near-equal shards (earlier ones larger)."""
    size, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


class ActorDied:
    """Marker returned by ``gather_tolerating_deaths`` in place of a dead actor's answer."""

    def __init__(self, name: str, error: BaseException):
        self.name, self.error = name, error

    def __repr__(self) -> str:
        return f"ActorDied({self.name})"


def task_failure(what: str, name: str, err: BaseException, error_cls: type = RuntimeError) -> BaseException:
    """``error_cls`` naming the actor whose call raised ``err`` (a RayTaskError), with the actor's own
    exception as the message rather than Ray's wrapper."""
    cause = err.cause if getattr(err, "cause", None) is not None else err
    return error_cls(f"{what}: {name} failed: {cause}")


def gather_tolerating_deaths(calls: Sequence[tuple[str, "object"]], timeout_s: float, what: str,
                             error_cls: type = RuntimeError) -> list:
    """ray.get every (actor name, ObjectRef) under one deadline. An actor that died answers
    ``ActorDied`` (the caller redoes its work elsewhere); a late actor or a failed call raises
    ``error_cls`` naming it."""
    import ray

    refs = [ref for _, ref in calls]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    ready_set = set(ready)
    late = [name for name, ref in calls if ref not in ready_set]
    if late:
        raise error_cls(f"{what}: {', '.join(late)} did not answer within {timeout_s:.1f}s")
    values: list = []
    for name, ref in calls:
        try:
            values.append(ray.get(ref, timeout=timeout_s))
        except ray.exceptions.GetTimeoutError as err:
            raise error_cls(f"{what}: {name} did not answer within {timeout_s:.1f}s") from err
        except ray.exceptions.RayActorError as err:
            values.append(ActorDied(name, err))
        except ray.exceptions.RayTaskError as err:
            raise task_failure(what, name, err, error_cls) from err
    return values


def gather(calls: Sequence[tuple[str, "object"]], timeout_s: float, what: str, error_cls: type = RuntimeError) -> list:
    """Every answer, under one deadline; a late, failed or dead actor raises ``error_cls`` naming it."""
    values = gather_tolerating_deaths(calls, timeout_s, what, error_cls)
    for value in values:
        if isinstance(value, ActorDied):
            raise error_cls(f"{what}: {value.name} died: {value.error}") from value.error
    return values
