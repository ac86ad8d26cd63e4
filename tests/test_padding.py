"""The engine's padded forwards (specdec.costs): a T-token forward runs as the cheapest measured forward over at
least T tokens, and the output is exactly what the unpadded forward gives."""
import pytest

import specdec
from specdec import costs, engine
from conftest import perturbed, tiny_gpt2, tiny_llama
from test_engine import PROMPTS, hf_greedy

FOUR_IS_CHEAPEST = {1: 1.0, 2: 1.0, 3: 0.9, 4: 0.8, 5: 0.85, 6: 1.2}


def test_padding_takes_the_cheapest_forward_at_or_after_t():
    assert costs.padding(FOUR_IS_CHEAPEST) == {1: 4, 2: 4, 3: 4, 4: 4, 5: 5, 6: 6}


def test_padding_ignores_gains_within_timing_noise():
    assert costs.padding({1: 1.0, 2: 0.99, 3: 1.5}) == {1: 1, 2: 2, 3: 3}


def test_a_noisy_curve_pads_only_on_gains_beyond_its_noise():
    points = {1: 1.0, 2: 0.97, 3: 0.95}
    assert costs.padding(points) == {1: 3, 2: 3, 3: 3}
    assert costs.padding(points, costs.pad_gain(noise=0.02)) == {1: 1, 2: 2, 3: 3}


def passes(curve, levels, draft=None):
    """{name: [seconds per pass]}: `curve` in machine states `levels` (one per pass), a draft step alongside."""
    times = {t: [s * level for level in levels] for t, s in curve.items()}
    return times | ({"step": [draft * level for level in levels]} if draft else {})


def test_prices_come_from_ratios_within_a_pass_so_a_state_change_moves_none():
    """The machine runs 25% slower in some passes and one forward caught a fast moment (0.7x) in one pass: a min
    over passes would price T=6 under T=4 and pad to it; the median ratio to its pass's level does not."""
    truth = {1: 1.0, 2: 1.0, 3: 0.9, 4: 0.8, 5: 0.85, 6: 0.84}
    levels = [1.0, 1.25, 1.0, 1.25, 1.25, 1.0, 1.0, 1.25]
    times = passes(truth, levels, draft=0.3)
    times[6][2] *= 0.7
    price, noise = costs.estimate(times)
    middle = 1.25 ** 0.5  # the median level: the prices are the curve in the machine's middle state
    assert price[4] == pytest.approx(0.8 * middle, rel=1e-6) and price["step"] == pytest.approx(0.3 * middle, rel=1e-6)
    assert costs.padding({t: price[t] for t in truth})[1] == 4
    assert costs.padding({t: min(s) for t, s in times.items() if t != "step"})[1] == 6  # what a min would do


def test_the_halves_of_the_passes_must_pad_alike():
    four = {1: 1.0, 4: 0.9, 6: 1.1}
    assert costs.agree(passes(four, [1.0, 1.2] * 4))
    close_call = passes(four, [1.0] * 8) | {4: [0.9, 0.99] * 4}  # even passes pad 1 -> 4, odd ones do not
    assert not costs.agree(close_call)


def test_auto_prices_every_t_at_its_padded_forward():
    verify = costs.priced(FOUR_IS_CHEAPEST, 0.1, high=5)["verify_s"]
    assert verify[1:5] == [0.8] * 4 and verify[5:] == [0.85, 1.2]


def test_beyond_dense_a_t_is_priced_as_itself_as_the_engine_runs_it():
    """The engine pads only up to DENSE tokens (the arena's spare slots), so a cheaper forward beyond prices nothing."""
    points = {t: 1.0 for t in range(1, costs.DENSE + 1)} | {17: 0.5}
    verify = costs.priced(points, 0.1, high=16)["verify_s"]
    assert verify[1:costs.DENSE + 1] == [1.0] * costs.DENSE and verify[17] == 0.5
    assert 17 not in costs.padding(points)


def widths(model):
    seen = []
    model.register_forward_pre_hook(lambda m, args, kw: seen.append(kw["input_ids"].shape[1]), with_kwargs=True)
    return seen


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_padded_target_alone_and_speculation_are_exact(build, monkeypatch):
    target = build()
    draft = perturbed(target, 0.1)
    plain = specdec.generate(target, PROMPTS, max_new_tokens=12, eos_token_id=[]).tokens
    monkeypatch.setattr(engine, "padded_rows", lambda model, batch: costs.padding(FOUR_IS_CHEAPEST))
    seen = widths(target)
    padded = specdec.generate(target, PROMPTS, max_new_tokens=12, eos_token_id=[])
    assert padded.tokens == plain
    assert set(seen[1:]) == {4}  # every one-token step after prefill ran as a 4-token forward
    assert padded.stats["target_forwards"] == 12  # still one forward per token
    spec = specdec.generate(target, PROMPTS, draft=draft, k=2, max_new_tokens=12, eos_token_id=[])
    assert spec.tokens == plain
    assert plain[0] == hf_greedy(target, PROMPTS[0], new=12, eos=[])


def test_padding_stays_inside_the_position_limit(monkeypatch):
    target = tiny_gpt2()  # 128 positions: learned position embeddings would fail beyond
    monkeypatch.setattr(engine, "padded_rows", lambda model, batch: costs.padding(FOUR_IS_CHEAPEST))
    prompt = [2 + i % 90 for i in range(120)]
    out = specdec.generate(target, [prompt], max_new_tokens=7, eos_token_id=[])
    assert out.tokens == [hf_greedy(target, prompt, new=7, eos=[])]


def test_no_padding_off_the_measured_path(monkeypatch):
    monkeypatch.setenv("SPECDEC_LINEAR", "off")
    assert costs.padded_rows(tiny_gpt2(), 1) == {}


def test_a_measurement_adds_passes_while_its_halves_pad_differently(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDEC_MEASUREMENTS", str(tmp_path))
    flat = {t: 1.0 for t in range(1, costs.DENSE + 1)}
    rounds = iter([passes(flat, [1.0] * 8) | {4: [0.9, 0.99] * 4}])  # then steady: 4 is 0.9 in every pass
    monkeypatch.setattr(costs.paired, "interleaved",
                        lambda jobs, n, **kw: next(rounds, passes(flat, [1.0] * n) | {4: [0.9] * n}))
    curve, _ = costs.price_list(tiny_gpt2(layers=1), None, 1)
    assert curve["halves_agree"] and curve["passes"] > costs.PASSES and curve["verify_s"][4] < 1.0
