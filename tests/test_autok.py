"""k="auto": the cost model picks K (0 included), rows re-probe, and it stays lossless."""
import json
import random

import pytest

import specdec
from specdec import costs, profiler, policy as policies
from specdec.policy import AutoK, best_k, expected_tokens
from specdec.study import bench, modes, references
from conftest import tiny_gpt2
from test_engine import PROMPTS, hf_greedy
from test_sampling import NEW, PROMPT, ROWS, chi_square_pvalue, exact_joint, models  # noqa: F401 (fixture)

FLAT = dict(verify_s=[0.0] + [1.0] * 9, draft_s=0.05)                        # constant-time verification
LINEAR = dict(verify_s=[0.0] + [1.0 * t for t in range(1, 10)], draft_s=0.3)  # verify cost grows with T


class Scripted:
    """A K schedule fixed in advance (0 = target alone), to force catch-up after K=0 rounds."""

    label = "scripted"

    def __init__(self, ks, high=4):
        self.ks, self.k_max, self.i = ks, high, 0

    def begin(self, batch, prices):
        return self.ks[0]

    def next_k(self, k, accepted):
        self.i += 1
        return self.ks[self.i % len(self.ks)]


def test_expected_tokens():
    assert expected_tokens(0.0, 5) == 1
    assert expected_tokens(1.0, 4) == 5
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)
    # over a Beta(1, 1) posterior (alpha 0.5 measured on 2 drafts): E[a^2] = 1/3, not 1/4
    assert expected_tokens(0.5, 2, weight=2) == pytest.approx(1 + 0.5 + 1 / 3)
    assert expected_tokens(0.7, 4, weight=1e9) == pytest.approx(expected_tokens(0.7, 4))  # certain: the mean
    assert expected_tokens(1.0, 4, weight=3) == 5 and expected_tokens(0.0, 4, weight=3) == 1


# The committed float32 pair's prices on this machine (data/cpu/calibration.txt): K=2 pays from acceptance 0.6,
# a forward over 5 tokens costs 1.7x one over 3.
F32 = dict(verify_s=[0.0, 0.2429, 0.2627, 0.2686, 0.4616, 0.4616, 0.4813, 0.4813, 0.4813, 0.4813], draft_s=0.0702)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_row_that_accepts_steadily_keeps_the_k_that_pays(seed):
    """Drafts accepted with probability 0.75, independently: at these prices K=2 has the most tokens per second
    (K=1 7% fewer, K=8 37% fewer). Auto must not chase runs of luck: rejections in a row once dropped such rows to
    K=1 and K=0, and runs of acceptances lifted them to K=8 (a quarter of all rounds)."""
    rng, policy = random.Random(seed), AutoK(high=8, costs=F32)
    k, ks = policy.begin(1, None), []
    for _ in range(200):
        ks.append(k)
        k = policy.next_k(k, [next((i for i in range(k) if rng.random() > 0.75), k)])
    assert ks.count(2) >= 0.85 * len(ks) and max(ks) == 2, sorted(ks)


def test_cost_picks_k():
    assert best_k([0.95], FLAT["verify_s"], FLAT["draft_s"], 8) >= 6   # cheap rounds, high acceptance: long
    assert best_k([0.1], FLAT["verify_s"], FLAT["draft_s"], 8) <= 1
    assert best_k([0.6] * 4, LINEAR["verify_s"], LINEAR["draft_s"], 8) == 0  # nothing pays: target alone


def test_acceptance_moves_k_and_a_row_at_zero_reprobes():
    policy = AutoK(high=8, costs=FLAT)
    start = policy.begin(1, None)
    assert start > 0
    k = start
    for _ in range(6):  # every draft rejected: acceptance falls, K falls to 0
        k = policy.next_k(k, [0]) if k else policy.next_k(0, [0])
    assert k <= 1
    ks = []
    for _ in range(2 * policies.PROBE_EVERY):
        k = policy.next_k(k, [0])
        ks.append(k)
    assert 0 in ks
    # a round at K=0 teaches nothing, so it must probe again within PROBE_EVERY rounds at 0
    zeros = max(len(run) for run in "".join("0" if k == 0 else "x" for k in ks).split("x"))
    assert zeros <= policies.PROBE_EVERY
    for _ in range(2 * policies.PROBE_EVERY):  # acceptance recovered: a probe sees it and K grows again
        k = policy.next_k(k, [k])
    assert k > 1


def test_a_burst_of_rejections_in_a_well_accepting_generation_pauses_drafting_briefly():
    """Prices where K=2 pays from an acceptance of about 0.55 (the int4 pair's on a Zen 4): after rounds that accepted
    everything, a few fully rejected rounds stop drafting, but rounds at K=0 carry the generation's own rate back
    into the estimate, so drafting resumes within a few rounds, well before the next probe."""
    verify = [0.0, 0.0332, 0.0342, 0.0350, 0.0369, 0.0475, 0.050, 0.057, 0.061, 0.070]
    policy = AutoK(high=8, costs=dict(verify_s=verify, draft_s=0.0131))
    k = policy.begin(1, None)
    for _ in range(8):
        k = policy.next_k(k, [k]) if k else policy.next_k(0, [None])
    assert k >= 2
    while k:  # rejected rounds until drafting stops (a few)
        k = policy.next_k(k, [0])
    zeros = 0
    while k == 0 and zeros < policies.PROBE_EVERY:
        k, zeros = policy.next_k(0, [0]), zeros + 1
    assert k > 0 and zeros <= 3


def test_one_rejected_first_draft_pauses_drafting_for_one_round_not_until_probe_every():
    """The committed int4 pair's prices on a Zen 4 (data/cpu/precision): a rejected first draft leaves the estimate
    under break-even; the FIRST_PROBE-th round at K=0 probes, and drafting then grows with acceptance (the rule before
    probed every PROBE_EVERY-th: seven rounds at K=0)."""
    verify = [0.0, 0.0302, 0.0311, 0.0319, 0.0333, 0.0421, 0.0426, 0.0476, 0.0497, 0.0579]
    policy = AutoK(high=8, costs=dict(verify_s=verify, draft_s=0.0118))
    ks = [policy.begin(1, None)]
    ks.append(policy.next_k(ks[-1], [0]))
    for _ in range(8):
        ks.append(policy.next_k(ks[-1], [ks[-1]] if ks[-1] else [0]))
    assert ks[:2] == [1, 0] and ks.index(1, 1) == policies.FIRST_PROBE and ks[-1] >= 3, ks


def test_probes_that_find_nothing_back_off_to_probe_every():
    policy = AutoK(high=8, costs=dict(verify_s=[0.0] + [1.0] * 9, draft_s=0.3))
    k = policy.begin(1, None)
    ks = []
    for _ in range(6 * policies.PROBE_EVERY):  # every draft rejected
        k = policy.next_k(k, [0])
        ks.append(k)
    waits = [len(run) for run in "".join("0" if k == 0 else "x" for k in ks).split("x")[1:-1]]
    assert waits[:3] == [policies.FIRST_PROBE - 1, 2 * policies.FIRST_PROBE - 1, 4 * policies.FIRST_PROBE - 1], ks
    assert waits[-1] == policies.PROBE_EVERY - 1 and max(waits) == policies.PROBE_EVERY - 1, ks


def test_the_first_round_probes_where_only_better_acceptance_than_the_prior_would_pay():
    costs = dict(verify_s=[0.0] + [1.0] * 9, draft_s=0.7)  # K=1 pays above acceptance 0.7; the prior is 0.6
    assert best_k([policies.PRIOR], costs["verify_s"], costs["draft_s"], 8) == 0
    assert AutoK(high=8, costs=costs).begin(1, None) == 1


def test_no_probe_when_nothing_could_pay():
    policy = AutoK(high=8, costs=dict(verify_s=[0.0] + [1.0 * t for t in range(1, 10)], draft_s=5.0))
    assert policy.begin(2, None) == 0
    assert all(policy.next_k(0, [0, 0]) == 0 for _ in range(3 * policies.PROBE_EVERY))


def test_auto_drafts_only_when_the_rounds_can_pay_back_the_drafts_prefill():
    policy = AutoK(high=8, costs=dict(FLAT, draft_prefill_s=0.01))
    policy.begin(1, None)
    assert policy.drafts(prompt_tokens=100, new_tokens=256)  # ~1 s of prefill against ~256 verifies saved
    assert not policy.drafts(prompt_tokens=2000, new_tokens=4)
    slow_draft = AutoK(high=8, costs=dict(verify_s=[0.0] + [1.0] * 9, draft_s=1.1, draft_prefill_s=0.001))
    slow_draft.begin(1, None)  # a draft step dearer than a verify: no K pays even with every draft accepted
    assert not slow_draft.drafts(prompt_tokens=10, new_tokens=1000)
    # Acceptance 0.6 (the prior) would save 0.25 of a verify a token here, too little for this prefill, but every
    # draft accepted would save 0.4: the prior does not decide, since rows accept in bursts.
    modest = AutoK(high=1, costs=dict(verify_s=[0.0, 1.0, 1.0, 1.0], draft_s=0.2, draft_prefill_s=0.01))
    modest.begin(1, None)
    assert modest.drafts(prompt_tokens=100, new_tokens=3)
    free = AutoK(high=8, costs=dict(verify_s=[0.0] + [1.0] * 9, draft_s=0.7))  # prompt lookup: nothing to save
    free.begin(1, None)
    assert free.drafts(prompt_tokens=10, new_tokens=1)


def auto_on_a_machine(round_factor, rounds=64, alpha=0.9, seed=1):
    """K per round of an AutoK whose rounds take round_factor(K) x their price, every draft accepted with
    probability `alpha`. Priced, drafting pays: K=2 gains 2.7 tokens for 1.7 of the target alone's seconds."""
    rng = random.Random(seed)
    costs = dict(verify_s=[0.0, 1.0] + [1.1] * 8, draft_s=0.3)
    policy = AutoK(high=4, costs=costs)
    k, ks = policy.begin(1, None), []
    for _ in range(rounds):
        ks.append(k)
        accepted = next((i for i in range(k) if rng.random() > alpha), k)
        policy.observe(k, round_factor(k) * (k * costs["draft_s"] + costs["verify_s"][k + 1]))
        k = policy.next_k(k, [accepted])
    return ks


def test_round_times_correct_the_prices():
    # Rounds as priced: auto drafts, checking the target alone every CHECK_EVERY-th round.
    as_priced = auto_on_a_machine(lambda k: 1.0)
    assert sum(k > 0 for k in as_priced) >= 0.85 * len(as_priced)
    assert as_priced[1] == 0 and 0 < as_priced.count(0) <= len(as_priced) // policies.CHECK_EVERY + 1
    # Drafting rounds take 2x their price (the curve's shape drifted, or proposing costs more than priced),
    # rounds of the target alone as priced: drafting loses, and after the first check auto stays at K=0 but
    # for its probes.
    dear = auto_on_a_machine(lambda k: 2.0 if k else 1.0)
    assert sum(k == 0 for k in dear[2:]) >= 0.8 * len(dear[2:])
    # The same factor on every K is the machine's level: no K gains on another, so auto drafts as priced.
    assert auto_on_a_machine(lambda k: 1.3) == as_priced


def test_the_engine_reports_each_rounds_time_to_the_policy(pair):
    _, target, draft = pair

    class Recording(Scripted):
        def observe(self, k, seconds):
            self.seen.append((k, seconds))

    policy = Recording([2, 0, 1, 3])
    policy.seen = []
    result = specdec.generate(target, PROMPTS, draft=draft, k=policy, max_new_tokens=12)
    assert [k for k, _ in policy.seen] == result.stats["k_per_iteration"]
    assert all(0 < s < result.stats["decode_seconds"] for _, s in policy.seen)


def test_a_generation_auto_runs_without_its_draft_is_the_target_alone(pair):
    _, target, draft = pair
    skip = AutoK(high=4, costs=dict(FLAT, verify_s=FLAT["verify_s"][:6], draft_prefill_s=1e3))  # prefill never pays
    result = specdec.generate(target, PROMPTS, draft=draft, k=skip, max_new_tokens=8)
    assert result.tokens == [hf_greedy(target, row, 8) for row in PROMPTS]
    assert result.stats["draft_forwards"] == 0 and set(result.stats["k_per_iteration"]) == {0}
    assert result.stats["policy"] == "auto"


@pytest.mark.parametrize("ks", [[0, 3, 0, 0, 2, 4, 0], [2, 0, 1, 0, 0, 0, 3]])
def test_catch_up_after_target_alone_rounds_is_lossless(pair, ks):
    _, target, draft = pair
    result = specdec.generate(target, PROMPTS, draft=draft, k=Scripted(ks), max_new_tokens=24)
    assert result.tokens == [hf_greedy(target, r) for r in PROMPTS]
    assert 0 in result.stats["k_per_iteration"] and max(result.stats["k_per_iteration"]) > 0


@pytest.mark.parametrize("costs", [FLAT, LINEAR, None])
def test_auto_is_lossless_and_records_k(pair, costs, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDEC_MEASUREMENTS", str(tmp_path))
    _, target, draft = pair
    k = "auto" if costs is None else AutoK(costs=costs)  # None: measured on this machine
    result = specdec.generate(target, PROMPTS, draft=draft, k=k, max_new_tokens=24)
    assert result.tokens == [hf_greedy(target, r) for r in PROMPTS]
    assert result.stats["k"] == "auto"
    assert all(0 <= x <= 8 for x in result.stats["k_per_iteration"])
    if costs is LINEAR:
        assert set(result.stats["k_per_iteration"]) <= {0, 1}  # only probes


def test_sampling_with_zero_rounds_has_the_target_distribution(models):  # noqa: F811
    target, draft = models
    result = specdec.generate(target, [PROMPT] * ROWS, draft=draft, k=Scripted([0, 2], high=2),
                              max_new_tokens=NEW + 2, temperature=1.0, seed=0, eos_token_id=[])  # room for K=2
    assert result.stats["k_per_iteration"][:2] == [0, 2]
    first = [row[:NEW] for row in result.tokens]  # t1 prefill, t2 at K=0, t3 from a round after catch-up
    assert chi_square_pvalue(first, exact_joint(target, 1.0, None)) > 1e-3


def test_prices_are_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDEC_MEASUREMENTS", str(tmp_path))
    target, draft = tiny_gpt2(layers=2), tiny_gpt2(layers=1)
    calls = []
    forward = profiler.Forwards.__call__
    monkeypatch.setattr(profiler.Forwards, "__call__",
                        lambda self, tokens, **kw: calls.append(tokens) or forward(self, tokens, **kw))
    prices = costs.prices(target, draft, 2, 8)
    assert len(prices["verify_s"]) == 10 and prices["draft_s"] > 0
    n = len(calls)
    assert set(calls) == set(range(1, 10)) | {costs.PREFILL}  # dense: padding chooses among every T up to DENSE
    assert prices["draft_prefill_s"] > 0
    assert costs.prices(target, draft, 2, 8) == prices and len(calls) == n
    assert costs.prices(target, None, 2, 8)["verify_s"] == prices["verify_s"] and len(calls) == n  # the same curve
    assert len(json.loads((tmp_path / costs.COSTS).read_text())) == 2  # one target curve, one draft step
    costs.prices(target, draft, 2, 16)  # a longer reach measures the curve again, once
    assert 17 in calls[n:] and costs.reach(costs.table()[costs.entry_key("target", target, 2)]) == 17


def test_a_generation_reads_the_price_file_at_most_once(tmp_path, monkeypatch, pair):
    monkeypatch.setenv("SPECDEC_MEASUREMENTS", str(tmp_path))
    _, target, draft = pair
    specdec.generate(target, PROMPTS, draft=draft, k="auto", max_new_tokens=8)  # measures and writes the prices
    costs._tables.clear()  # as a new process would start
    reads = []
    read_cache = costs.read_cache
    monkeypatch.setattr(costs, "read_cache", lambda name: reads.append(name) or read_cache(name))
    result = specdec.generate(target, PROMPTS, draft=draft, k="auto", max_new_tokens=8)
    assert reads == [costs.COSTS] and result.stats["predicted_decode_s"] is not None


def test_bad_high_is_refused():
    with pytest.raises(ValueError, match="high"):
        AutoK(high=0)


def test_bench_plans_auto_and_hf_defaults_cells():
    prompts = [dict(id="a", category="code", text="x"), dict(id="b", category="qa", text="y")]
    cells = bench.plan_cells(["baseline", "auto", "hf_assisted", "hf_assisted_default"], [2], [1, 2], [8],
                             ["parallel"], prompts)
    modes = {(c["mode"], c["batch_size"], c["k"], c["policy"], c["k_max"]) for c in cells}
    assert ("auto", 1, None, "auto", AutoK().k_max) in modes and ("auto", 2, None, "auto", AutoK().k_max) in modes
    assert ("hf_assisted_default", 1, None, "hf_defaults", 20) in modes and ("hf_assisted", 1, 2, "fixed", 2) in modes
    assert not any(c["mode"].startswith("hf_assisted") and c["batch_size"] == 2 for c in cells)  # HF: batch 1


def test_hf_default_mode_resets_what_the_fixed_k_mode_overrode(pair):
    """hf_assisted_default must be what a user gets: HF's defaults, even after a fixed-K cell ran."""
    from types import SimpleNamespace

    import torch
    _, target, draft = pair
    seen = []

    def fake_generate(ids, assistant_model=None, **kw):
        seen.append(dict(assistant_model.generation_config.to_dict()))
        return torch.cat([ids, ids[:, -1:]], 1)

    p = SimpleNamespace(tokenizer=SimpleNamespace(pad_token_id=0), device=torch.device("cpu"),
                        target=SimpleNamespace(generate=fake_generate, generation_config=target.generation_config),
                        draft=draft, draft_in_target_dtype=lambda: draft)
    for mode, k in (("hf_assisted", 3), ("hf_assisted_default", 20)):
        references.run_hf(p, dict(mode=mode, k=k, max_new_tokens=1), [[5, 6]], 0.0, 0)
    assert (seen[0]["num_assistant_tokens"], seen[0]["assistant_confidence_threshold"]) == (3, 0)
    assert {k: seen[1][k] for k in modes.HF_ASSISTED_DEFAULTS} == modes.HF_ASSISTED_DEFAULTS


def test_catch_up_survives_a_row_finished_before_a_long_target_alone_streak(pair):
    """A finished row stops growing; a catch-up longer than that row must not break the batch."""
    _, target, draft = pair
    short = PROMPTS[3]  # one token
    eos = hf_greedy(target, short)[1]  # the short row stops after its second token
    result = specdec.generate(target, PROMPTS, draft=draft, k=Scripted([1] + [0] * 12 + [3, 2]),
                              max_new_tokens=24, eos_token_id=eos)
    assert result.tokens == [hf_greedy(target, r, eos=eos) for r in PROMPTS]
    assert len(result.tokens[3]) <= 2 and 3 in result.stats["k_per_iteration"]
