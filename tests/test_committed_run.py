"""The committed cpu run was timed in pairs: in every sweep's results.jsonl under data/cpu/ (as git's index holds
it), each block's runs (one prompt group's cells at one iteration and attempt, specdec.study.pairing) are one
consecutive stretch, so a mode and the target alone it is divided by ran back to back, in the same machine state."""
import json

import pytest

from specdec.study import pairing, results
from test_readme_numbers import git

SWEEPS = [name for name in (git("ls-files", "--", "data/cpu") or "").split()
          if name.endswith(results.RESULTS) and "/llama_cpp/" not in name and "verification_latency" not in name]


@pytest.mark.skipif(not SWEEPS, reason="no committed cpu run in this checkout (an sdist)")
@pytest.mark.parametrize("name", SWEEPS)
def test_every_comparison_in_the_committed_run_was_timed_back_to_back(name):
    rows = [json.loads(line) for line in git("show", f":{name}").splitlines() if line.strip()]
    assert rows, f"{name} is empty"
    assert all(r.get("attempt") for r in rows), f"{name} has rows from before paired timing"
    assert pairing.not_consecutive(rows) == [], f"{name}: blocks not timed back to back"
