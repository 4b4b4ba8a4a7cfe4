"""Docs and recorded results name commands relative to the repository, never a path of the machine
that wrote them (deploy/ is left out: its absolute paths are inside the cluster's containers)."""
import os
import re
import subprocess
import sys
import tempfile

from tests.conftest import ROOT

MACHINE_PATH = re.compile(r"(?<![\w.$~-])/(?:work|root|home|tmp|Users|mnt|opt)/")
SCANNED = ["README.md", "docs", "bench", "configs"]


def _files():
    listed = subprocess.run(["git", "ls-files", *SCANNED], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in listed.stdout.split() if name.endswith((".md", ".json", ".py", ".yaml"))]


def test_no_machine_paths_in_docs_and_results():
    files = _files()
    assert len(files) > 20 and any(f.name == "benchmarks.md" for f in files)
    found = []
    for path in files:
        for no, line in enumerate(path.read_text().splitlines(), start=1):
            if MACHINE_PATH.search(line) or str(ROOT) in line:
                found.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()[:120]}")
    assert not found, "\n".join(found)


def test_results_are_recorded_relative_to_the_repo(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT))
    from bench.results import repo_relative, save_result

    record = {"model": str(ROOT / "models/SmolLM2-135M-Instruct"), "root": str(ROOT),
              "overrides": [f"output.dir={tempfile.gettempdir()}/e2e_ours_x1", "rollout.group_size=8"],
              "nested": {"python": f"{sys.executable} -m pytest"}, "n": 3}
    assert repo_relative(record) == {"model": "models/SmolLM2-135M-Instruct", "root": ".",
                                     "overrides": ["output.dir=$TMPDIR/e2e_ours_x1", "rollout.group_size=8"],
                                     "nested": {"python": "python -m pytest"}, "n": 3}
    monkeypatch.setattr(sys, "argv", ["bench/x.py", "--out", str(ROOT / "docs/bench/x.json")])
    save_result(str(tmp_path / "r.json"), record)
    saved = (tmp_path / "r.json").read_text()
    assert str(ROOT) not in saved and '"command": "python bench/x.py --out docs/bench/x.json"' in saved
    assert not MACHINE_PATH.search(saved.replace(str(tmp_path), ""))
