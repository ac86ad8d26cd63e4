"""The generate command line: streams text, ends with a summary line, refuses bad arguments."""
import re
import subprocess
import sys

import pytest

from specdec.cli import main


@pytest.mark.parametrize("extra", [["-k", "3"], ["--drafter", "prompt_lookup", "-k", "2"], ["-k", "adaptive"],
                                   ["--drafter", "none"], ["--temperature", "0.8", "--top-k", "20", "--seed", "1"]])
def test_generate_prints_text_and_summary(capsys, extra):
    assert main(["generate", "def add(a, b):", "--pair", "tiny-llama", "--max-new-tokens", "12"] + extra) == 0
    out = capsys.readouterr().out
    assert out.startswith("def add(a, b):")
    summary = out.strip().splitlines()[-1]
    assert re.fullmatch(r"\[12 tokens in [\d.]+ s: [\d.]+ tok/s, acceptance (\d+%|nan%), "
                        r"[\d.]+ tokens per target forward, k=\S+, drafter=\w+\]", summary), summary


@pytest.mark.parametrize("args,message", [
    (["-k", "0"], "out of range"),
    (["-k", "lots"], "'adaptive'"),
    (["--temperature", "-1"], ">= 0"),
    (["--top-p", "1.5"], "top-p"),
    (["--max-new-tokens", "0"], "positive"),
    (["--drafter", "magic"], "invalid choice"),
    (["--verify", "fast"], "invalid choice"),
    (["--device", "tpu"], "tpu"),
])
def test_bad_arguments_exit_2_with_a_clear_message(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "hi", "--pair", "tiny-llama"] + args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_pair_or_target_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "hi"])
    assert exit_info.value.code == 2
    assert "--pair" in capsys.readouterr().err


def test_module_entry_point():
    run = subprocess.run([sys.executable, "-m", "specdec", "generate", "abc", "--pair", "tiny-gpt2",
                          "--max-new-tokens", "5"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "tokens per target forward" in run.stdout
