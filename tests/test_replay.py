"""Replaying K policies on recorded greedy generations (specdec.study.replay) must be what the engine does."""
import numpy as np
import pytest

import specdec
from specdec.costs import ROUND_S
from specdec.policy import AdaptiveK, FixedK
from specdec.study import replay
from test_engine import PROMPTS

PRICES = dict(verify_s=[0.0, 1.0, 1.1, 1.2, 1.3, 2.0, 2.1, 2.2, 2.3, 2.4], draft_s=0.2, draft_prefill_s=0.01)


@pytest.mark.parametrize("policy", [lambda: FixedK(3), lambda: AdaptiveK(start=2, high=6)])
def test_a_replay_runs_the_rounds_the_engine_ran(pair, policy):
    """Same prompts, same policy (one whose K depends on acceptance only): the replay's K per round is the engine's."""
    _, target, draft = pair
    for row in PROMPTS:
        result = specdec.generate(target, [row], draft=draft, k=policy(), max_new_tokens=20, eos_token_id=[])
        match = replay.agreement(draft, row, result.tokens[0])
        _, ks = replay.replay(policy(), match, len(row), PRICES)
        assert ks == result.stats["k_per_iteration"], row
        assert 0 < sum(match[1:]) < len(match) - 1  # partial agreement: rounds that reject and rounds that accept


def test_a_replay_prices_its_rounds():
    alone, ks = replay.replay(FixedK(0), [1] * 7, 10, PRICES)
    assert ks == [0] * 6 and alone == pytest.approx(6 * (1.0 + ROUND_S))  # the target alone: no draft prefill
    seconds, ks = replay.replay(FixedK(2), [1] * 7, 10, PRICES)
    assert ks == [2, 2] and seconds == pytest.approx(10 * 0.01 + 2 * (2 * 0.2 + 1.2 + ROUND_S))
    seconds, ks = replay.replay(FixedK(4), [1, 1, 0, 1, 1, 1], 10, PRICES)  # new token 2 rejected, then room for 2
    assert ks == [4, 2]
    assert seconds == pytest.approx(0.1 + (4 * 0.2 + 2.0) + (2 * 0.2 + 1.2) + 2 * ROUND_S)


def test_compare_ranks_fixed_k_and_auto_on_the_same_prompts():
    rng = np.random.default_rng(0)
    traces = [dict(prompt_id=f"p{i}", category="ab"[i % 2], prompt_tokens=20,
                   match=[int(x) for x in rng.random(40) < (0.9 if i % 2 else 0.5)]) for i in range(8)]
    table = replay.compare(traces, PRICES, high=6)
    line = lambda policy: table[table["policy"] == policy].iloc[0]
    fixed = table[table["policy"] == replay.FIXED].set_index("k")["speedup"]
    assert list(fixed.index) == list(range(1, 7)) and line(replay.VS_BEST)["k"] == fixed.idxmax()
    # per prompt, auto over the best K's speedup: its geometric mean is the ratio of theirs
    assert line(replay.VS_BEST)["speedup"] == pytest.approx(line(replay.AUTO)["speedup"] / fixed.max())
    assert line(replay.VS_OWN)["speedup"] <= line(replay.VS_BEST)["speedup"]
    assert (table["prompts"] == 8).all() and (table["speedup_lo"] <= table["speedup_hi"]).all()
    assert replay.compare([], PRICES).empty
