"""vLLM's shared-memory queues of a run's engines, remembered on disk, so that the start after a driver
that was killed outright removes the ones its engines left.

Each engine's vLLM processes (engine core, workers) talk through two files in /dev/shm (160 and 240 MiB
here, held in RAM by tmpfs). vLLM unlinks them when it shuts down cleanly, and the rollout pool removes
those of an engine it drops (``RolloutGroup._drop``). Nobody can when the driver itself is SIGKILLed: its
engines die with it. So the pool lists every engine's files with its node's IP address in
``<output.dir>/engine_shm.json`` once the engine is up, and the next start on that folder (the run lock
makes it the only one) removes whatever of them is still there, on their node if the cluster has it,
before it starts engines of its own.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Sequence

from orchestrator.remote import clean_up, clean_up_on

log = logging.getLogger(__name__)

RECORD = "engine_shm.json"


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # none yet, or torn by a kill mid-write: nothing to go on
        return {}


def remember(out_dir: str, engines: dict[str, tuple[str, Sequence[str]]]) -> None:
    """Add ``engines`` (name -> (node IP address, /dev/shm file names)) to the run's record."""
    path = os.path.join(out_dir, RECORD)
    data = _read(path)
    data.update({name: [ip, list(files)] for name, (ip, files) in engines.items() if files})
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def node_ips() -> dict[str, str]:
    """Node id -> IP address of the live nodes of the connected Ray cluster."""
    import ray

    return {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}


def sweep(out_dir: str, timeout_s: float) -> list[str]:
    """Remove the files an earlier start of this run recorded and left (each on its node: this machine,
    or a live node of the cluster with the recorded address; others are gone with their files), then
    forget the record. Returns the names removed."""
    import ray

    path = os.path.join(out_dir, RECORD)
    if not os.path.exists(path):
        return []
    data = _read(path)
    by_ip: dict[str, list[str]] = {}
    for entry in data.values():
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list):
            by_ip.setdefault(str(entry[0]), []).extend(str(f) for f in entry[1])
    here = ray.util.get_node_ip_address()
    node_of = {ip: node for node, ip in node_ips().items()} if set(by_ip) - {here} else {}
    removed: list[str] = []
    for ip, files in by_ip.items():
        try:
            if ip == here:
                removed += clean_up([], files)[1]
            elif ip in node_of:
                removed += clean_up_on(node_of[ip], [], files, timeout_s)[1]
        except Exception as err:  # noqa: BLE001 - an unreachable node: its files stay, the run goes on
            log.warning("could not remove the shared memory %s left on %s by an earlier start: %s", files, ip, err)
    if removed:
        log.warning("removed %d shared-memory files (%s) that the engines of an earlier start of this run "
                    "left in /dev/shm", len(removed), ", ".join(removed))
    os.unlink(path)
    return removed
