"""How llama.cpp is run and read, for specdec.study.llamacpp: its binaries `llama-completion` (the target alone)
and `llama-speculative-simple` (speculation) found in $SPECDEC_LLAMA_CPP (a folder), then where
scripts/build_llama_cpp.sh builds them by default (it builds both from the llama.cpp sources that the
llama-cpp-python sdist vendors, into the cache folder), then on the PATH; without
them the `llama_cpp` Python package (llama-cpp-python), which times the target alone only, as it ships no
draft-model speculation. Greedy, a fixed number of new tokens (EOS ignored), the prompt's exact token ids.

Each tool reports its own decode rate, which is what is compared: llama-completion's "eval time" (every token after
the one the prompt's forward gave), llama-speculative-simple's "decoded N tokens in S seconds" (drafting and
verification from the prompt's last token on), llama-cpp-python's tokens after the first over the time after the
prompt's forward.
"""
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from ..machine import cache_root

ENV = "SPECDEC_LLAMA_CPP"  # a folder holding the llama.cpp binaries
COMPLETION_BIN, SPECULATIVE_BIN = "llama-completion", "llama-speculative-simple"
PERPLEXITY_BIN = "llama-perplexity"  # optional: the quality column (specdec.study.quality)
PYTHON = "llama-cpp-python"
BUILD_HELP = (f"build llama.cpp's binaries with `bash scripts/build_llama_cpp.sh` (cmake and a C/C++ compiler); they "
              f"are found where it builds them by default, or set {ENV} to the folder it prints")
TIMEOUT_S = 600  # one llama.cpp process: loading both models and 32 tokens take seconds
# llama.cpp's binaries run with their allocations on transparent huge pages, its fastest configuration found: its
# CPU backend repacks the weights into memory it allocates, and glibc (2.35 on) asks the kernel to back that memory
# with 2 MiB pages (Linux, transparent huge pages in "madvise" mode or "always"); older glibc and other systems ignore
# the setting. On the Xeon (family 6 model 167) its Qwen2.5-Coder-1.5B Q4_K_M target alone decoded 17.4-17.7 tok/s
# with it, 14.0-14.7 without (3 pairs); its speculation 15.3 and 15.1
HUGE_PAGES = "glibc.malloc.hugetlb=1"


def built_folder() -> Path:
    """Where `bash scripts/build_llama_cpp.sh` puts the binaries when given no folder."""
    return cache_root() / "llama.cpp" / "build" / "bin"


def find() -> dict:
    """The llama.cpp this machine has: {"binaries": {name: path}, "python": llama-cpp-python's version or None}."""
    folders = [f for f in (os.environ.get(ENV), str(built_folder())) if f]
    binaries = {}
    for name in (COMPLETION_BIN, SPECULATIVE_BIN, PERPLEXITY_BIN):
        path = shutil.which(name, path=os.pathsep.join(folders)) or shutil.which(name)
        if path:
            binaries[name] = Path(path)
    python = importlib.metadata.version(PYTHON) if importlib.util.find_spec("llama_cpp") else None
    return dict(binaries=binaries, python=python)


def plan(found) -> dict:
    """{mode: tool} for what `found` can time: the target alone and speculation from one build of the binaries;
    the Python package, where the binaries are missing, for the target alone."""
    bins = found["binaries"]
    modes = {}
    if COMPLETION_BIN in bins:
        modes["target_alone"] = COMPLETION_BIN
    elif found["python"]:
        modes["target_alone"] = PYTHON
    if SPECULATIVE_BIN in bins and "target_alone" in modes:  # a speedup needs its baseline
        modes["speculative"] = SPECULATIVE_BIN
    return modes


def describe(found) -> str:
    """One sentence: what was found and what it can time."""
    have = list(found["binaries"])  # names only: a folder of this machine means nothing on the published page
    have += [f"{PYTHON} {found['python']}"] if found["python"] else []
    modes = plan(found)
    if not have:
        return f"not available here (no {COMPLETION_BIN} or {SPECULATIVE_BIN} binary and no `import llama_cpp`); {BUILD_HELP}."
    text = f"found {', '.join(have)}"
    if "target_alone" not in modes:
        text += f"; nothing of it is timed: a target alone, which speculation is compared with, needs {COMPLETION_BIN} or {PYTHON} ({BUILD_HELP})"
    elif "speculative" not in modes:
        text += f"; its target alone is timed, its speculation is not (that needs {SPECULATIVE_BIN}: {BUILD_HELP})"
    return text + "."


def completion_command(binary, model, prompt_file, n, threads) -> list[str]:
    """The target alone: greedy, exactly n new tokens, the prompt read as text with special tokens parsed."""
    return [str(binary), "-m", str(model), "-f", str(prompt_file), "-n", str(n), "--ignore-eos", "--temp", "0",
            "-t", str(threads), "-tb", str(threads), "-c", "4096", "-no-cnv", "--no-display-prompt", "--special"]


def speculative_command(binary, target, draft, prompt_file, n, threads, draft_max, p_min) -> list[str]:
    """llama.cpp's speculation with the draft model (`--spec-type draft-simple`): up to `draft_max` drafts a round,
    the draft stopping early where its greedy token's probability falls below `p_min` (0: never)."""
    return [str(binary), "-m", str(target), "-md", str(draft), "--spec-type", "draft-simple",
            "--spec-draft-n-max", str(draft_max), "--spec-draft-n-min", "0", "--spec-draft-p-min", str(p_min),
            "-f", str(prompt_file), "-n", str(n), "--ignore-eos", "--temp", "0",
            "-t", str(threads), "-tb", str(threads), "-td", str(threads), "-tbd", str(threads), "-c", "4096"]


def perplexity_command(binary, model, text_file, n_ctx, chunks, threads) -> list[str]:
    """llama-perplexity over the first `chunks` chunks of n_ctx tokens of a text (specdec.study.quality's
    definition is this tool's)."""
    return [str(binary), "-m", str(model), "-f", str(text_file), "-c", str(n_ctx), "-b", str(n_ctx),
            "--chunks", str(chunks), "-t", str(threads), "-tb", str(threads)]


def perplexity(found, gguf, text_file, n_ctx, chunks, threads) -> dict | None:
    """llama.cpp's perplexity of `gguf` on a text (parse_perplexity), or None without its binary."""
    binary = found["binaries"].get(PERPLEXITY_BIN)
    if binary is None:
        return None
    return run_binary(perplexity_command(binary, gguf, text_file, n_ctx, chunks, threads), parse_perplexity)[0]


def parse_perplexity(log) -> dict:
    """llama-perplexity's final estimate: {perplexity, perplexity_se, chunks}."""
    return dict(perplexity=_number(r"Final estimate: PPL = ([\d.]+)", log),
                perplexity_se=_number(r"Final estimate: PPL = [\d.]+ \+/- ([\d.]+)", log),
                chunks=_number(r"perplexity over (\d+) chunks", log, int))


def _number(pattern, log, cast=float):
    found = re.search(pattern, log)
    if found is None:
        raise ValueError(f"llama.cpp's output has no line matching {pattern!r}; its last lines:\n{log[-1500:]}")
    return cast(found.group(1))


def parse_completion(log) -> dict:
    """llama-completion's timings (llama_perf_context_print): prompt tokens, prefill and decode seconds."""
    steps = _number(r"\beval time =\s*[\d.]+ ms /\s*(\d+) runs", log, int)  # one token each, after the first
    return dict(prompt_tokens=_number(r"prompt eval time =\s*[\d.]+ ms /\s*(\d+) tokens", log, int),
                prefill_s=_number(r"prompt eval time =\s*([\d.]+) ms", log) / 1e3,
                new_tokens=steps + 1, decode_tokens=steps,
                decode_s=_number(r"\beval time =\s*([\d.]+) ms /\s*\d+ runs", log) / 1e3)


def parse_speculative(log) -> dict:
    """llama-speculative-simple's summary: prompt tokens, prefill and decode seconds, drafts made and accepted."""
    new = _number(r"decoded\s+(\d+) tokens", log, int)  # every new token, the first included
    return dict(prompt_tokens=_number(r"encoded\s+(\d+) tokens", log, int),
                prefill_s=_number(r"encoded\s+\d+ tokens in\s+([\d.]+) seconds", log),
                new_tokens=new, decode_tokens=new,
                decode_s=_number(r"decoded\s+\d+ tokens in\s+([\d.]+) seconds", log),
                drafted=_number(r"n_drafted\s*=\s*(\d+)", log, int),
                accepted=_number(r"n_accept\s*=\s*(\d+)", log, int))


def environment() -> dict:
    """This process's environment with HUGE_PAGES added to glibc's tunables (what every llama.cpp binary runs in)."""
    tunables = [t for t in os.environ.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb=")]
    return {**os.environ, "GLIBC_TUNABLES": ":".join(tunables + [HUGE_PAGES])}


def run_binary(cmd, parse) -> tuple[dict, str]:
    """Run one llama.cpp process; its parsed timings and its stdout (the text it generated)."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=environment())
    if out.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} exited {out.returncode}: {out.stderr[-1500:]}")
    return parse(out.stderr + out.stdout), out.stdout


_LOADED = {}  # llama-cpp-python models by (path, threads): loaded once per process, as a binary loads per run


def python_target_alone(gguf, ids, n, threads) -> tuple[dict, str]:
    """llama-cpp-python's target alone on the exact token ids: the prompt's forward, then n - 1 greedy steps."""
    import llama_cpp  # the optional package, imported only once find() has seen it (no cycle is being dodged)

    key = (str(gguf), threads)
    if key not in _LOADED:
        _LOADED.clear()  # one model at a time
        _LOADED[key] = llama_cpp.Llama(str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads,
                                       verbose=False)
    llm = _LOADED[key]
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    middle = time.perf_counter()
    tokens = []
    for i in range(n):
        tokens.append(llm.sample(temp=0.0))
        if i < n - 1:
            llm.eval([tokens[-1]])
    end = time.perf_counter()
    timing = dict(prompt_tokens=len(ids), prefill_s=middle - start, new_tokens=n, decode_tokens=n - 1,
                  decode_s=end - middle)
    return timing, llm.detokenize(tokens).decode("utf-8", "replace")


def prompt_file(folder, prompt_id, text) -> Path:
    """The prompt as a file for `-f`, which drops one trailing newline: written with one more, so the binary
    tokenizes exactly `text` (a chat prompt ends "<|im_start|>assistant\n")."""
    path = Path(folder) / f"{prompt_id}.txt"
    path.write_text(text + "\n")
    return path
