"""``grpo prepare-data``: GSM8K and MATH as local JSONL files, in the formats our loaders read.

    data/gsm8k/{train,test}.jsonl   rows {question, answer}                 (answer ends '#### n')
    data/math/{train,test}.jsonl    rows {problem, solution, answer[, subject, level]}
    data/SOURCES.json               where each file came from, its row count and sha256

Sources:
* the Hugging Face hub (default): ``openai/gsm8k`` (config ``main``, MIT) and
  ``EleutherAI/hendrycks_math`` (the seven subject configs of MATH, MIT);
* a local mirror (``--from DIR``): ``DIR/gsm8k/{train,test}.jsonl`` and ``DIR/math/{train,test}.jsonl``,
  where MATH's test split may also be ``dev.jsonl`` (for example a MATH-500 subset). A task whose
  mirror holds only one split is split 80/20 into disjoint train and test files (seeded; the origin
  is recorded in SOURCES.json and printed).

Every row is checked by the parser the training loaders use, so a file written here always loads;
a bad mirror row is reported with its file and line. Files are replaced atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Callable, Iterable, Optional

from orchestrator.data import DataError, gsm8k_row, iter_jsonl, math_row
from orchestrator.model_prep import quiet_hub_retries

DEFAULT_DIR = "data"
TASKS = ("gsm8k", "math")
SPLITS = ("train", "test")
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")
HUB_SOURCES = {"gsm8k": [("openai/gsm8k", "main")],
               "math": [("EleutherAI/hendrycks_math", subject) for subject in MATH_SUBJECTS]}
MIRROR_NAMES = {("gsm8k", "train"): ["train.jsonl"], ("gsm8k", "test"): ["test.jsonl"],
                ("math", "train"): ["train.jsonl"], ("math", "test"): ["test.jsonl", "dev.jsonl"]}
CARVE_TEST_FRAC = 0.2
CARVE_SEED = "prepare-data"

Splits = dict[str, tuple[list[dict], str]]
"""split -> (rows as written, where they came from)"""


class PrepareDataError(RuntimeError):
    """No source could provide a dataset; the message names both ways to get it."""


def normalise(task: str, row: dict) -> dict:
    """The row with the fields our loader reads (DataError, without location, where it would fail)."""
    if task == "gsm8k":
        gsm8k_row(row)
        return {"question": row["question"], "answer": row["answer"]}
    problem, answer = math_row(row)
    out = {"problem": problem, "solution": row.get("solution") or "", "answer": answer}
    for key, alias in (("subject", "type"), ("level", "level")):
        value = row.get(key, row.get(alias))
        if value is not None:
            out[key] = value
    return out


def read_mirror_file(task: str, path: str) -> list[dict]:
    """Normalised rows of one mirror file; DataError names the file and line of a bad one."""
    rows = []
    for line_no, row in iter_jsonl(path):
        try:
            rows.append(normalise(task, row))
        except DataError as err:
            raise DataError(f"{path}:{line_no}: bad {task} row: {err}") from None
    return rows


def carve(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """A seeded 80/20 split of one file into disjoint (train, test) rows, each in file order."""
    if len(rows) < 2:
        raise DataError(f"cannot split {len(rows)} row(s) into train and test")
    order = list(range(len(rows)))
    random.Random(CARVE_SEED).shuffle(order)
    n_test = max(1, round(len(rows) * CARVE_TEST_FRAC))
    return [rows[i] for i in sorted(order[n_test:])], [rows[i] for i in sorted(order[:n_test])]


def from_mirror(root: str, task: str) -> Splits:
    """The splits the mirror holds; a missing one is carved from the other (see the module doc)."""
    found: Splits = {}
    for split in SPLITS:
        path = next((p for name in MIRROR_NAMES[(task, split)]
                     if os.path.isfile(p := os.path.join(root, task, name))), None)
        if path:
            found[split] = (read_mirror_file(task, path), path)
    if not found:
        names = ", ".join(f"{task}/{n}" for s in SPLITS for n in MIRROR_NAMES[(task, s)])
        raise PrepareDataError(f"--from {root}: no {task} data (looked for {names})")
    if len(found) == 2:
        return found
    ((have, (rows, source)),) = found.items()
    train, test = carve(rows)
    why = (f"of {len(rows)} rows of {source}: the mirror has no {task} {'test' if have == 'train' else 'train'} "
           f"split; shuffled with seed {CARVE_SEED!r}, disjoint")
    return {"train": (train, f"{100 - round(100 * CARVE_TEST_FRAC)}% {why}"),
            "test": (test, f"{round(100 * CARVE_TEST_FRAC)}% {why}")}


def from_hub(task: str, load_dataset: Optional[Callable] = None) -> Splits:
    """Both splits downloaded with ``datasets``; PrepareDataError (one line) where the hub fails."""
    if load_dataset is None:
        from datasets import load_dataset
    with quiet_hub_retries():
        return _download(task, load_dataset)


def _download(task: str, load_dataset: Callable) -> Splits:
    result: Splits = {}
    for split in SPLITS:
        rows = []
        for name, config in HUB_SOURCES[task]:
            try:
                part = load_dataset(name, config, split=split)
            except Exception as err:  # noqa: BLE001 - any hub failure becomes the one line below
                first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                raise PrepareDataError(
                    f"could not download {task} from the Hugging Face hub ({name}:{config}:{split}: {first}); "
                    f"with internet access run `grpo prepare-data`, or copy a local mirror and run "
                    f"`grpo prepare-data --from DIR` (DIR/{task}/train.jsonl, DIR/{task}/test.jsonl)") from None
            for row_no, row in enumerate(part, start=1):
                try:
                    rows.append(normalise(task, dict(row)))
                except DataError as err:
                    raise DataError(f"{name}:{config}:{split} row {row_no}: bad {task} row: {err}") from None
        (name, config), count = HUB_SOURCES[task][0], len(HUB_SOURCES[task])
        result[split] = (rows, f"{name}:{config if count == 1 else f'{count} configs'}:{split}")
    return result


def _write_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.partial-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def prepare_data(out_dir: str = DEFAULT_DIR, mirror: Optional[str] = None, tasks: Iterable[str] = TASKS,
                 load_dataset: Optional[Callable] = None, log: Callable[[str], None] = lambda line: None) -> dict:
    """Write ``out_dir/<task>/{train,test}.jsonl`` and ``out_dir/SOURCES.json``; return the manifest."""
    if mirror is not None and not os.path.isdir(mirror):
        raise PrepareDataError(f"--from {mirror}: no such folder")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise PrepareDataError(f"unknown task {unknown[0]!r} (known: {', '.join(TASKS)})")
    manifest_path = os.path.join(out_dir, "SOURCES.json")
    manifest = {}
    if os.path.isfile(manifest_path):  # other tasks prepared earlier keep their entries
        with open(manifest_path) as f:
            manifest = json.load(f)
    for task in tasks:
        splits = from_mirror(mirror, task) if mirror is not None else from_hub(task, load_dataset)
        for split, (rows, source) in splits.items():
            path = os.path.join(out_dir, task, f"{split}.jsonl")
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
            _write_atomic(path, data)
            manifest[f"{task}/{split}"] = {"path": path, "rows": len(rows), "source": source,
                                           "sha256": hashlib.sha256(data).hexdigest()}
            log(f"{path}: {len(rows)} rows ({source})")
    _write_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
    return manifest
