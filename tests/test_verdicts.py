"""Two runs compared verdict by verdict: ratios matched by table and name, each side's verdict from its interval,
throughputs and tables carried along unchanged left out."""
import pandas as pd

from specdec.study import verdicts


def table(folder, name, rows):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def two_runs(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, (auto, k2) in ((first, ((0.93, 0.89, 0.97), (1.09, 1.02, 1.17))),
                               (second, ((0.94, 0.90, 0.99), (1.02, 0.90, 1.19)))):
        rows = [dict(mode=m, k=k, speedup=e, speedup_lo=lo, speedup_hi=hi, throughput=2.5, throughput_lo=2.4,
                     throughput_hi=2.6) for m, k, (e, lo, hi) in (("auto", None, auto), ("speculative", 2, k2))]
        table(folder, "k_sweep/headline.csv", rows)
    carried = [dict(mode="auto", speedup=1.25, speedup_lo=1.23, speedup_hi=1.26)]
    table(first, "bench/summary.csv", carried)
    table(second, "bench/summary.csv", carried)
    return first, second


def test_a_flip_is_found_and_an_agreement_is_not(tmp_path):
    both = verdicts.compare(*two_runs(tmp_path))
    assert set(both.column) == {"speedup"}  # the throughput's interval is no ratio against 1
    assert set(both.table) == {"k_sweep/headline.csv"}  # the identical table was carried, not measured twice
    by_mode = both.set_index("row")
    assert by_mode.loc["mode=auto", "verdict_first"] == by_mode.loc["mode=auto", "verdict_second"] == "below 1"
    assert not by_mode.loc["mode=auto", "flipped"]
    flip = by_mode.loc["mode=speculative; k=2"]
    assert (flip.verdict_first, flip.verdict_second, flip.flipped) == ("above 1", verdicts.NO_DIFFERENCE, True)


def test_the_oracles_chosen_k_does_not_keep_two_runs_apart(tmp_path):
    """oracle.csv's k is the K each run's strategy chose (4 in one run, 2 in the other): the rows still match."""
    runs = {"first": ("4 / 4", 0.83, 1.16), "second": ("2 / 2", 0.77, 0.98)}
    for folder, (k, lo, hi) in ((tmp_path / name, run) for name, run in runs.items()):
        table(folder, "k_sweep/oracle.csv", [dict(strategy="best fixed K, cross-fitted", chosen_on="both", k=k,
                                                  auto_vs=0.9, auto_vs_lo=lo, auto_vs_hi=hi)])
    both = verdicts.compare(tmp_path / "first", tmp_path / "second")
    assert list(both.row) == ["strategy=best fixed K, cross-fitted; chosen_on=both"] and both.flipped.all()


def test_autos_mean_k_in_a_drafters_label_does_not_keep_two_runs_apart(tmp_path):
    """Notebook 05's tables label auto by the mean K it chose (2.9 in one run, 2.6 in the other): the rows still
    match, by their mode."""
    for folder, (mean_k, e) in ((tmp_path / "first", (2.9, 1.16)), (tmp_path / "second", (2.6, 0.98))):
        table(folder, "drafters/over_prompts.csv", [
            dict(category="overall", mode="auto", drafter=f"specdec auto K (mean K {mean_k}, up to 8)", speedup=e,
                 speedup_lo=e - 0.05, speedup_hi=e + 0.05),
            dict(category="overall", mode="speculative", drafter="specdec, draft model, K=3", speedup=1.2,
                 speedup_lo=1.1, speedup_hi=1.3)])
    both = verdicts.compare(tmp_path / "first", tmp_path / "second").set_index("row")
    assert both.loc["category=overall; mode=auto", "flipped"] and len(both) == 2


def test_command_line_prints_the_flips_and_writes_every_match(tmp_path, capsys):
    first, second = two_runs(tmp_path)
    assert verdicts.main([str(first), str(second), "--out", str(tmp_path / "v.csv")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("1 of 2 verdicts flipped (ratios with an interval in both runs): 1 within the runs' "
                              "noise (the intervals overlap), 0 apart; 0 A/A controls")
    assert out[0].startswith("k_sweep/headline.csv [mode=speculative; k=2] speedup: 1.09x [1.02, 1.17] above 1")
    assert len(pd.read_csv(tmp_path / "v.csv")) == 2


def test_an_aa_control_is_never_a_verdict_so_it_cannot_flip(tmp_path, capsys):
    """The target alone timed twice: 0.99x [0.97, 1.01] in one run, 1.05x [1.02, 1.08] in the other is a bias the
    pairing carried, not "faster"; an effect beside it still flips."""
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, aa, effect in ((first, (0.99, 0.97, 1.01), (1.10, 1.02, 1.20)),
                               (second, (1.05, 1.02, 1.08), (1.05, 0.96, 1.15))):
        rows = [dict(mode=m, speedup=e, speedup_lo=lo, speedup_hi=hi)
                for m, (e, lo, hi) in (("target_again", aa), ("auto", effect))]
        table(folder, "precision/cells.csv", rows)
        table(folder, "precision/aa_control.csv", [dict(group="int4", by="precision", speedup=aa[0],
                                                        speedup_lo=aa[1], speedup_hi=aa[2])])
    both = verdicts.compare(first, second).set_index(["table", "row"])
    controls = both[both.control]
    assert len(controls) == 2 and set(controls.verdict_first) == set(controls.verdict_second) == {verdicts.CONTROL}
    assert not controls.flipped.any()
    assert both.loc[("precision/cells.csv", "mode=auto"), "flipped"]
    verdicts.main([str(first), str(second)])
    said = capsys.readouterr().out
    assert "1 of 1 verdicts flipped" in said and "2 A/A controls, never a verdict, 2 of them with an interval off 1" in said


def test_a_flip_says_whether_the_two_intervals_overlap(tmp_path):
    """K=2 tipped from above 1 to no clear difference with overlapping intervals (noise at the boundary); auto moved
    from below 1 to above it with intervals apart (the runs measured different values)."""
    for folder, (auto, k2) in ((tmp_path / "first", ((0.90, 0.85, 0.95), (1.09, 1.02, 1.17))),
                               (tmp_path / "second", ((1.20, 1.10, 1.30), (1.02, 0.90, 1.19)))):
        table(folder, "k_sweep/headline.csv", [dict(mode=m, speedup=e, speedup_lo=lo, speedup_hi=hi)
                                               for m, (e, lo, hi) in (("auto", auto), ("speculative", k2))])
    both = verdicts.compare(tmp_path / "first", tmp_path / "second").set_index("row")
    assert both.flipped.all()
    assert both.loc["mode=speculative", "overlap"] and not both.loc["mode=auto", "overlap"]


def test_a_readout_verdict_judges_an_effect_against_its_own_batch_sizes_aa_control(tmp_path, capsys):
    """Batch 1 and 2 both measured 1.05x [1.01, 1.08-1.09]: above 1 by the interval in both. The readouts ask whether
    the estimate clears the A/A control of its batch size: batch 1's control reached 1.08x in the first run (no clear
    difference there) and 1.03x in the second (above 1): a flip of the conclusion that no interval shows."""
    for folder, floor1, hi in ((tmp_path / "first", (0.95, 1.08), 1.09), (tmp_path / "second", (0.97, 1.03), 1.08)):
        effect = dict(speedup=1.05, speedup_lo=1.01, speedup_hi=hi)  # tables the same byte for byte were carried
        table(folder, "batch_sweep/cells.csv", [dict(mode="speculative", batch_size=b, **effect) for b in (1, 2)])
        table(folder, "batch_sweep/aa_control.csv", [
            dict(group=1, by="batch_size", speedup=1.0, speedup_lo=floor1[0], speedup_hi=floor1[1]),
            dict(group=2, by="batch_size", speedup=1.0, speedup_lo=0.97, speedup_hi=1.03)])
    both = verdicts.compare(tmp_path / "first", tmp_path / "second").set_index("row")
    one, two = both.loc["mode=speculative; batch_size=1"], both.loc["mode=speculative; batch_size=2"]
    assert one.verdict_first == one.verdict_second == two.readout_first == two.readout_second == "above 1"
    assert (one.readout_first, one.readout_second) == (verdicts.NO_DIFFERENCE, "above 1") and one.readout_flipped
    assert not one.flipped and not two.readout_flipped
    verdicts.main([str(tmp_path / "first"), str(tmp_path / "second")])
    assert "1 of 2 flipped as the readouts judge them" in capsys.readouterr().out


def test_an_experiment_without_an_aa_control_is_judged_by_its_intervals_alone(tmp_path):
    for folder, hi in ((tmp_path / "first", 1.09), (tmp_path / "second", 1.08)):
        table(folder, "k_sweep/headline.csv", [dict(mode="auto", speedup=1.05, speedup_lo=1.01, speedup_hi=hi)])
    both = verdicts.compare(tmp_path / "first", tmp_path / "second")
    assert list(both.readout_first) == list(both.verdict_first) == ["above 1"]
