"""The committed cpu run was timed in pairs: in every sweep's results.jsonl under data/cpu/ (as git's index holds
it), each block's runs (one prompt group's cells at one iteration and attempt, specdec.study.pairing) are one
consecutive stretch, so a mode and the target alone it is divided by ran back to back, in the same machine state."""
import json

import pytest

from specdec.study import llamacpp, llamacpp_run, pairing, results
from test_readme_numbers import git

COMMITTED = [name for name in (git("ls-files", "--", "data/cpu") or "").split() if name.endswith(results.RESULTS)]
SWEEPS = [name for name in COMMITTED if "/llama_cpp/" not in name and "verification_latency" not in name]
LLAMA_SWEEPS = [name for name in COMMITTED if "/llama_cpp/" in name]


def committed_rows(name) -> list[dict]:
    rows = [json.loads(line) for line in git("show", f":{name}").splitlines() if line.strip()]
    assert rows, f"{name} is empty"
    return rows


@pytest.mark.skipif(not SWEEPS, reason="no committed cpu run in this checkout (an sdist)")
@pytest.mark.parametrize("name", SWEEPS)
def test_every_comparison_in_the_committed_run_was_timed_back_to_back(name):
    rows = committed_rows(name)
    assert all(r.get("attempt") for r in rows), f"{name} has rows from before paired timing"
    assert pairing.not_consecutive(rows) == [], f"{name}: blocks not timed back to back"


@pytest.mark.skipif(not LLAMA_SWEEPS, reason="no committed llama.cpp rows in this checkout")
@pytest.mark.parametrize("name", LLAMA_SWEEPS)
def test_llama_cpp_and_specdecs_target_alone_were_timed_in_the_same_blocks(name):
    """specdec against llama.cpp is a comparison too: specdec's target alone runs in each prompt's block of
    llama.cpp's sweep, and each block's runs are one consecutive stretch."""
    rows = committed_rows(name)
    tools = {r["tool"] for r in rows if r.get("status") == "ok"}
    assert {llamacpp.SPECDEC, llamacpp_run.COMPLETION_BIN} <= tools, f"{name}: specdec and llama.cpp not both timed"
    assert pairing.not_consecutive(rows, block=llamacpp.block_of) == [], f"{name}: blocks not back to back"
