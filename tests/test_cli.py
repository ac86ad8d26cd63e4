"""The generate command line: the prompt once, then the streamed answer (chat) or continuation (raw), a
summary, and bad arguments refused with a message that names the fix."""
import dataclasses
import io
import re
import subprocess
import sys

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from specdec import cli, qkernel
from specdec.policy import AutoK
from specdec.cli import main
from specdec.models import ByteTokenizer

PROMPT = "def add(a, b):"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SUMMARY = (r"\[12 new tokens, decode [\d.]+ tok/s, first token after [\d.]+ m?s; "
           r"(acceptance \d+% \(\d+/\d+ drafts\)|no drafts: .+|target alone \(--drafter none\)); "
           r"[\d.]+ tokens per target forward; (mean K [\d.]+ \((auto|adaptive), up to \d+\)|K \d+); drafter=\w+\]")


def chat_tokenizer():
    """A real HF tokenizer with ByteTokenizer's ids (bytes 0..255, <bos> <eos> <pad>) and a chat template,
    so the tiny random pairs can be asked."""
    vocab = {char: byte for byte, char in bytes_to_unicode().items()} | {"<bos>": 256, "<eos>": 257, "<pad>": 258}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   chat_template=TEMPLATE)


@pytest.fixture
def calls(monkeypatch):
    """What main() passed to generate() and got back: [(prompt ids, result)]."""
    seen, real = [], cli.generate

    def generate(target, input_ids, **kwargs):
        seen.append((input_ids[0], real(target, input_ids, **kwargs)))
        return seen[-1][1]
    monkeypatch.setattr(cli, "generate", generate)
    return seen


@pytest.fixture
def with_template(monkeypatch):
    """The tiny pairs loaded with chat_tokenizer() in place of their template-less ByteTokenizer."""
    tokenizer, load = chat_tokenizer(), cli.load_pair
    monkeypatch.setattr(cli, "load_pair", lambda *a, **kw: dataclasses.replace(load(*a, **kw), tokenizer=tokenizer))
    return tokenizer


def tiny(*args, pair="tiny-llama", tokens=12):
    return main(["generate", *args, "--pair", pair, "--max-new-tokens", str(tokens)])


@pytest.mark.parametrize("extra", [["-k", "3"], ["--drafter", "prompt_lookup", "-k", "2"], ["-k", "adaptive"],
                                   ["--drafter", "none"], ["--temperature", "0.8", "--top-k", "20", "--seed", "1"]])
def test_raw_prints_the_prompt_once_then_its_continuation(capsys, calls, extra):
    assert tiny(PROMPT, *extra) == 0
    ids, result = calls[-1]
    assert ids == list(PROMPT.encode())  # no template on the ByteTokenizer: raw by default
    out = capsys.readouterr().out
    answer, summary, setup = out.rsplit("\n", 3)[:3]
    assert answer == PROMPT + ByteTokenizer().decode(result.tokens[0])  # once, and exactly the returned tokens
    assert re.fullmatch(SUMMARY, summary), summary
    assert re.fullmatch(r"\[(first run .+|load [\d.]+ m?s; calibration reused from .+)\]", setup), setup


def test_chat_applies_the_template_and_prints_the_question_once(capsys, with_template, calls):
    assert tiny(PROMPT) == 0
    ids, result = calls[-1]
    messages = [{"role": "user", "content": PROMPT}]
    assert ids == with_template.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    out = capsys.readouterr().out
    assert out.startswith(PROMPT + "\n" + with_template.decode(result.tokens[0], skip_special_tokens=True) + "\n[")
    assert out.count(PROMPT) == 1 and "<|" not in out  # the template's text is not shown


def test_raw_on_a_chat_tokenizer_continues_the_text(capsys, with_template, calls):
    assert tiny(PROMPT, "--raw") == 0
    ids, result = calls[-1]
    assert ids == with_template.encode(PROMPT, add_special_tokens=False)
    assert capsys.readouterr().out.startswith(PROMPT + with_template.decode(result.tokens[0]) + "\n[")


def test_system_message_goes_into_the_template(with_template, calls):
    assert tiny(PROMPT, "--system", "Be brief.", tokens=4) == 0
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    assert calls[-1][0] == with_template.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]


def test_prompt_from_stdin(monkeypatch, capsys, calls):
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin"))
    assert tiny("-", tokens=4) == 0
    assert calls[-1][0] == list(b"from stdin")
    assert capsys.readouterr().out.startswith("from stdin")


def test_prompt_from_a_file_raw_keeps_it_exactly_chat_strips_it(tmp_path, calls, with_template):
    path = tmp_path / "prompt.txt"
    path.write_text("from a file\n")
    assert tiny("--prompt-file", str(path), "--raw", tokens=4) == 0
    assert calls[-1][0] == list(b"from a file\n")
    assert tiny("--prompt-file", str(path), tokens=4) == 0
    messages = [{"role": "user", "content": "from a file"}]
    assert calls[-1][0] == with_template.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]


def test_auto_choosing_k0_everywhere_says_so(monkeypatch, capsys):
    monkeypatch.setattr(AutoK, "pick", lambda self, rows, alpha=None: 0)  # no K pays, not even with every draft accepted
    assert tiny(PROMPT) == 0
    summary = capsys.readouterr().out.splitlines()[-2]
    assert "no drafts: auto chose the target alone in every round" in summary and "nan" not in summary
    assert "mean K 0.0 (auto, up to 8)" in summary


def test_decode_rate_charges_the_drafts_prefill():
    """The summary's decode rate is the engine's decode time (the draft's prefill inside it), not the time after the
    first streamed token, which the engine puts after the draft's prefill."""
    stats = dict(new_tokens=11, seconds=3.0, decode_seconds=2.0, proposed=0, k_per_iteration=[0], policy="fixed",
                 k=0, tokens_per_target_forward=1.0)
    args = dataclasses.make_dataclass("Args", ["drafter"])("none")
    line = cli.summary(stats, args, ttft=1.5)  # the time-after-first-token rule would say 10 / 1.5 = 6.7 tok/s
    assert "decode 5.0 tok/s" in line, line


def test_first_run_reports_its_calibration_once(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("SPECDEC_MEASUREMENTS", str(tmp_path))  # no measured costs yet: auto-K calibrates
    assert tiny(PROMPT, tokens=2) == 0
    first = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(r"\[first run of these models on this machine: load .+, calibration [\d.]+ m?s "
                        rf"\(cached in {re.escape(str(tmp_path))}: later runs skip it\)\]", first), first
    assert tiny(PROMPT, tokens=2) == 0
    assert "calibration reused from" in capsys.readouterr().out.splitlines()[-1]


@pytest.mark.parametrize("args,message", [
    (["-k", "0"], "out of range"),
    (["-k", "lots"], "'adaptive'"),
    (["--temperature", "-1"], ">= 0"),
    (["--top-p", "1.5"], "top-p"),
    (["--max-new-tokens", "0"], "positive"),
    (["--drafter", "magic"], "invalid choice"),
    (["--verify", "fast"], "invalid choice"),
    (["--device", "tpu"], "tpu"),
    (["--chat"], "drop --chat"),  # the ByteTokenizer has no chat template
    (["--system", "Be brief."], "put the instruction in the prompt"),
    (["--system", "Be brief.", "--raw"], "drop --raw"),
    (["--chat", "--raw"], "not allowed with"),
])
def test_bad_arguments_exit_2_with_a_clear_message(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "hi", "--pair", "tiny-llama"] + args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("prompt,stdin,message", [
    ([], "", "give a prompt"),
    ([""], "", "the prompt is empty (the prompt argument)"),
    (["-"], " \n", "the prompt is empty (stdin)"),
    (["hi", "--prompt-file", "p.txt"], "", "not both"),
    (["--prompt-file", "no/such/file.txt"], "", "cannot read --prompt-file"),
])
def test_bad_prompts_are_refused_before_loading(monkeypatch, capsys, prompt, stdin, message):
    loads = []
    monkeypatch.setattr(cli, "load_pair", lambda *a, **kw: loads.append(a))
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", *prompt, "--pair", "tiny-llama"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not loads  # refused before any model was loaded


def test_pair_or_target_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "hi"])
    assert exit_info.value.code == 2
    assert "--pair" in capsys.readouterr().err


def test_module_entry_point():
    run = subprocess.run([sys.executable, "-m", "specdec", "generate", "abc", "--pair", "tiny-gpt2",
                          "--max-new-tokens", "5"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("abc") == 1 and "tokens per target forward" in run.stdout


def test_kernel_builds_and_names_its_path_without_a_warning():
    """`python -m specdec kernel` (what scripts/setup.sh runs) says which code path serves, or why none does, and
    warns about nothing (as `python -m specdec.qkernel`, run after `import specdec` had imported it, did)."""
    out = subprocess.run([sys.executable, "-W", "error", "-m", "specdec", "kernel"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("specdec quantized linear kernel: ") and "Warning" not in out.stderr
    assert (qkernel.best_path() in out.stdout) if qkernel.available() else ("not available" in out.stdout)
