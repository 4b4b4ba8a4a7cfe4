"""`grpo prepare-data`: local mirrors, carved splits, the hub path (a stand-in loader), failures in one line."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from orchestrator.config import ConfigError, load_config
from orchestrator.data import DataError, load_gsm8k, load_math, missing_data_hint
from orchestrator.prepare_data import HUB_SOURCES, MATH_SUBJECTS, PrepareDataError, carve, prepare_data
from tests.conftest import ROOT, SHARED_DATA

GSM8K_ROWS = [{"question": f"Q{i}?", "answer": f"work\n#### {i}"} for i in range(10)]
MATH_ROWS = [{"problem": "1+1?", "solution": "It is $\\boxed{2}$.", "level": "Level 1", "type": "Algebra"},
             {"problem": "2+2?", "solution": "so", "answer": "4", "subject": "Prealgebra", "level": "Level 2"}]


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_full_mirror_is_copied_in_loader_format(tmp_path):
    mirror = tmp_path / "mirror"
    _jsonl(mirror / "gsm8k/train.jsonl", GSM8K_ROWS[:7])
    _jsonl(mirror / "gsm8k/test.jsonl", GSM8K_ROWS[7:])
    _jsonl(mirror / "math/train.jsonl", MATH_ROWS[:1])
    _jsonl(mirror / "math/test.jsonl", MATH_ROWS[1:])
    out = tmp_path / "data"
    manifest = prepare_data(str(out), mirror=str(mirror))
    assert _rows(out / "gsm8k/train.jsonl") == GSM8K_ROWS[:7] and _rows(out / "gsm8k/test.jsonl") == GSM8K_ROWS[7:]
    # MATH rows gain the answer our verifier grades against; 'type' becomes 'subject'
    assert _rows(out / "math/train.jsonl") == [{"problem": "1+1?", "solution": "It is $\\boxed{2}$.", "answer": "2",
                                                "subject": "Algebra", "level": "Level 1"}]
    assert _rows(out / "math/test.jsonl") == [{"problem": "2+2?", "solution": "so", "answer": "4",
                                               "subject": "Prealgebra", "level": "Level 2"}]
    assert [p.gold for p in load_gsm8k(str(out / "gsm8k/test.jsonl"))] == ["7", "8", "9"]
    assert [p.gold for p in load_math(str(out / "math/train.jsonl"))] == ["2"]
    assert json.loads((out / "SOURCES.json").read_text()) == manifest
    for key, entry in manifest.items():
        data = (out / f"{key}.jsonl").read_bytes()
        assert entry["rows"] == len(data.splitlines()) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["source"] == str(mirror / f"{key}.jsonl")
    assert not list(out.rglob("*.partial-*"))


def test_a_split_the_mirror_lacks_is_carved_disjoint_and_reproducibly(tmp_path):
    mirror = tmp_path / "mirror"
    _jsonl(mirror / "gsm8k/train.jsonl", GSM8K_ROWS)
    first = prepare_data(str(tmp_path / "a"), mirror=str(mirror), tasks=["gsm8k"])
    second = prepare_data(str(tmp_path / "b"), mirror=str(mirror), tasks=["gsm8k"])
    train, test = _rows(tmp_path / "a/gsm8k/train.jsonl"), _rows(tmp_path / "a/gsm8k/test.jsonl")
    assert (len(train), len(test)) == (8, 2)
    assert sorted(r["question"] for r in train + test) == sorted(r["question"] for r in GSM8K_ROWS)
    assert first["gsm8k/test"]["sha256"] == second["gsm8k/test"]["sha256"]
    assert "the mirror has no gsm8k test split" in first["gsm8k/test"]["source"]
    assert first["gsm8k/train"]["source"].startswith("80% of 10 rows")
    # file order is kept within each part
    assert [r["question"] for r in train] == [r["question"] for r in GSM8K_ROWS if r in train]
    with pytest.raises(DataError, match="cannot split 1 row"):
        carve(GSM8K_ROWS[:1])


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data")
def test_the_shared_mirror(tmp_path):
    """../shared/data has GSM8K train and 100 MATH dev problems: test and train are carved."""
    manifest = prepare_data(str(tmp_path), mirror=str(SHARED_DATA))
    assert {k: v["rows"] for k, v in manifest.items()} == {"gsm8k/train": 5978, "gsm8k/test": 1495,
                                                           "math/train": 80, "math/test": 20}
    assert manifest["math/test"]["source"].startswith(f"20% of 100 rows of {SHARED_DATA / 'math/dev.jsonl'}")
    assert len(load_math(str(tmp_path / "math/test.jsonl"))) == 20


def test_bad_mirror_rows_name_file_and_line(tmp_path):
    mirror = tmp_path / "mirror"
    _jsonl(mirror / "gsm8k/train.jsonl", GSM8K_ROWS[:2] + [{"question": "no answer"}])
    with pytest.raises(DataError, match=r"gsm8k/train\.jsonl:3: bad gsm8k row: missing or empty field 'answer'"):
        prepare_data(str(tmp_path / "out"), mirror=str(mirror), tasks=["gsm8k"])
    (mirror / "gsm8k/train.jsonl").write_bytes(b'{"question": "q", "answer": "#### 1"}\n\xff\xfe\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: not UTF-8"):
        prepare_data(str(tmp_path / "out"), mirror=str(mirror), tasks=["gsm8k"])
    with pytest.raises(PrepareDataError, match="no math data"):
        prepare_data(str(tmp_path / "out"), mirror=str(mirror), tasks=["math"])
    with pytest.raises(PrepareDataError, match="no such folder"):
        prepare_data(str(tmp_path / "out"), mirror=str(tmp_path / "nowhere"))


def test_hub_path_reads_every_source(tmp_path):
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        if name == "openai/gsm8k":
            return GSM8K_ROWS[:3] if split == "train" else GSM8K_ROWS[3:4]
        return [{"problem": f"{config} {split}", "solution": "$\\boxed{1}$", "level": "Level 3", "type": config}]

    manifest = prepare_data(str(tmp_path), load_dataset=load_dataset)
    assert sorted(calls) == sorted([("openai/gsm8k", "main", s) for s in ("train", "test")]
                                   + [("EleutherAI/hendrycks_math", c, s) for c in MATH_SUBJECTS for s in ("train", "test")])
    assert manifest["gsm8k/train"]["rows"] == 3 and manifest["gsm8k/test"]["source"] == "openai/gsm8k:main:test"
    assert manifest["math/test"]["rows"] == len(MATH_SUBJECTS) == len(HUB_SOURCES["math"])
    assert manifest["math/train"]["source"] == "EleutherAI/hendrycks_math:7 configs:train"
    assert {r["subject"] for r in _rows(tmp_path / "math/train.jsonl")} == set(MATH_SUBJECTS)


def test_unreachable_hub_is_one_line_naming_both_ways(tmp_path):
    def offline(name, config, split):
        raise ConnectionError("Couldn't reach the Hub\nsecond line of detail")

    with pytest.raises(PrepareDataError) as info:
        prepare_data(str(tmp_path), load_dataset=offline)
    message = str(info.value)
    assert "\n" not in message and "second line" not in message
    assert "openai/gsm8k:main:train: Couldn't reach the Hub" in message
    assert "with internet access run `grpo prepare-data`" in message and "`grpo prepare-data --from DIR`" in message


def test_cli_offline_prints_one_line(tmp_path):
    """The real `datasets` client with the hub switched off (never contacted): exit 2, one line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "prepare-data", "--out", str(tmp_path / "d")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not download gsm8k"), proc.stderr
    assert not (tmp_path / "d" / "gsm8k").exists()


def test_missing_data_files_say_what_to_run():
    assert missing_data_hint("data/gsm8k/train.jsonl") == (
        " (run `grpo prepare-data` to download GSM8K and MATH, or `grpo prepare-data --from DIR` to copy a local mirror)")
    assert "`grpo prepare-data --out mine`" in missing_data_hint("mine/math/test.jsonl")
    assert "`grpo prepare-data --out /srv/shared/data`" in missing_data_hint("/srv/shared/data/gsm8k/train.jsonl")
    assert missing_data_hint("elsewhere/train.jsonl") == ""
    with pytest.raises(DataError, match=r"data/gsm8k/test\.jsonl: no such file \(run `grpo prepare-data`"):
        load_gsm8k("data/gsm8k/test.jsonl")
    with pytest.raises(ConfigError, match=r"data\.eval_file='data/math/test\.jsonl': no such file \(run `grpo prepare-data`"):
        load_config(None, ["data.task=math", f"data.train_file={SHARED_DATA / 'math/dev.jsonl'}",
                           "data.eval_file=data/math/test.jsonl"])


def test_training_files_that_are_not_utf8_or_json(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"question": "q", "answer": "#### 1"}\n{"question": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl:2: not UTF-8"):
        load_gsm8k(str(path))
    path.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(DataError, match=r"rows\.jsonl:2: not JSON"):
        load_gsm8k(str(path))
