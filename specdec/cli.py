"""`python -m specdec generate "prompt" --pair qwen2.5-coder -k 4`: one generation, streamed, with a
summary of how speculation went and what the run paid before it (load, one-off calibration).

A model whose tokenizer has a chat template is asked (the prompt becomes the user's turn; --system adds
a system turn); one without is continued. --chat / --raw override. The prompt comes from the argument,
from stdin ('-') or from --prompt-file."""
import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from . import calibrate, qkernel
from .engine import generate
from .inputs import VERIFY_MODES
from .machine import measurement_root
from .models import PAIRS, load_pair
from .policy import MAX_K
from .quantize import PRECISIONS

DRAFTERS = ("model", "prompt_lookup", "none")


def k_value(text):
    if text in ("auto", "adaptive"):
        return text
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"k must be 'auto', 'adaptive' or an int in 1..{MAX_K}, not {text!r}")
    if not 1 <= k <= MAX_K:
        raise argparse.ArgumentTypeError(f"k={k} is out of range 1..{MAX_K}")
    return k


def non_negative(text):
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, not {text}")
    return value


def parser():
    p = argparse.ArgumentParser(prog="python -m specdec", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text from one prompt, streamed")
    g.add_argument("prompt", nargs="?", help="the prompt text, or - to read it from stdin")
    g.add_argument("--prompt-file", help="read the prompt from this file instead")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--chat", action="store_true",
                      help="ask: the prompt as the user's turn of the chat template (default when there is one)")
    mode.add_argument("--raw", action="store_true",
                      help="continue the prompt text as it is (default when the tokenizer has no chat template)")
    g.add_argument("--system", help="a system message for chat mode")
    g.add_argument("--pair", help=f"a named pair: {', '.join(PAIRS)}")
    g.add_argument("--target", help="target model: hub name, local dir, .gguf file or named model")
    g.add_argument("--draft", help="draft model (default: the pair's draft)")
    g.add_argument("--drafter", choices=DRAFTERS, default="model",
                   help="model: the draft model; prompt_lookup: n-gram lookup, no model; none: target only")
    g.add_argument("-k", "--k", type=k_value, default="auto",
                   help=f"draft tokens per round: 'auto' (chosen per round from measured costs, 0 when drafting "
                        f"does not pay), 'adaptive' (HF's +2/-1 schedule) or a fixed 1..{MAX_K}")
    g.add_argument("--max-new-tokens", type=positive_int, default=64)
    g.add_argument("--temperature", type=non_negative, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=positive_int)
    g.add_argument("--top-p", type=float)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--verify", choices=VERIFY_MODES, default="parallel")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto")
    g.add_argument("--draft-dtype", default="auto", help="auto: float32 or bfloat16, whichever is faster here")
    g.add_argument("--precision", choices=PRECISIONS,
                   help="the target's weights: a float dtype, or int8/int4 (CPU; the draft then at its fastest "
                        "precision here, specdec's quantized kernel where it is built)")
    b = sub.add_parser("kernel", help="build specdec's quantized linear kernel now and say which code path runs here")
    b.add_argument("-v", "--verbose", action="store_true", help="show the compiler's output")
    c = sub.add_parser("calibrate", help="measure this machine's linear plans and auto-K costs for a pair")
    c.add_argument("--pair", default="qwen2.5-coder", help=f"a named pair (default: %(default)s): {', '.join(PAIRS)}")
    c.add_argument("--batch", default="1", help="batch sizes for auto's cost curves, e.g. 1,2,4 (default: 1)")
    c.add_argument("--force", action="store_true", help="measure again even what is cached")
    c.add_argument("--threads", type=positive_int, help="torch threads (plans hold per thread count; default: torch's)")
    c.add_argument("--device", default="auto")
    c.add_argument("--dtype", default="auto")
    c.add_argument("--precision", choices=PRECISIONS, help="calibrate the pair at this precision (int8/int4: which "
                                                           "kernel serves each shape, timed, and the draft's precision)")
    c.add_argument("--save-to", metavar="FOLDER", help="also write the calibration's record, calibration-<id>.json "
                                                        "(every plan and price it names), into this folder")
    return p


def calibrate_main(args, p):
    try:
        batches = [positive_int(b) for b in args.batch.split(",")]
    except (ValueError, argparse.ArgumentTypeError):
        p.error(f"--batch must be comma-separated positive ints, e.g. 1,2,4; not {args.batch!r}")
    if args.pair not in PAIRS:
        p.error(f"unknown pair {args.pair!r}; choose from {', '.join(PAIRS)}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    calibrate.run(args.pair, batches, args.force, args.device, args.dtype, precision=args.precision,
                  save_to=args.save_to)
    return 0


def read_prompt(args, p):
    """The prompt text from the argument, stdin or --prompt-file; refuses none, both, or an empty one."""
    if args.prompt is not None and args.prompt_file:
        p.error("give the prompt either as an argument or with --prompt-file, not both")
    if args.prompt_file:
        try:
            text, source = Path(args.prompt_file).read_text(encoding="utf-8"), f"--prompt-file {args.prompt_file}"
        except (OSError, UnicodeDecodeError) as e:
            p.error(f"cannot read --prompt-file: {e}; pass a readable UTF-8 text file")
    elif args.prompt == "-":
        text, source = sys.stdin.read(), "stdin"
    elif args.prompt is None:
        p.error("give a prompt: as an argument, '-' to read it from stdin, or --prompt-file PATH")
    else:
        text, source = args.prompt, "the prompt argument"
    if not text.strip():
        p.error(f"the prompt is empty ({source}); give some text to ask about or continue")
    return text


def chat_mode(args, tokenizer, p) -> bool:
    """Chat when asked, or by default when the tokenizer has a template: a base model has none and
    is meant to be continued, an instruct model continued instead of asked rambles on from the prompt."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if args.chat and not has_template:
        p.error("--chat needs a chat template and this tokenizer has none (a base model?): "
                "drop --chat (or pass --raw) to continue the text")
    chat = args.chat or (has_template and not args.raw)
    if args.system and not chat:  # (--system with --raw is refused before loading)
        p.error("--system needs a chat template and this tokenizer has none: put the instruction in the prompt")
    return chat


def prompt_ids(tokenizer, text, chat, system=None) -> list:
    if not chat:
        return tokenizer.encode(text, add_special_tokens=False)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    # return_dict=False: the plain id list in transformers 4 and 5 alike (5 returns a BatchEncoding by default)
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))


class Streamer:
    """Prints row 0's new tokens as the engine accepts them and notes when the first one came.
    The engine's first put is the prompt (as in HF generate): skipped, main printed it already.
    All tokens so far are decoded each time, not piece by piece, so the printed text is exactly
    tokenizer.decode(tokens); a trailing U+FFFD (a character split between tokens) waits for the rest."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.printed = tokenizer, None, 0
        self.first_token = self.ended = None

    def put(self, tokens):
        if self.ids is None:  # the prompt
            self.ids = []
            return
        self.first_token = self.first_token or time.perf_counter()
        self.ids += tokens.tolist()
        self.show(self.text().rstrip("\ufffd"))

    def end(self):
        self.ended = time.perf_counter()  # the engine's timed run (stats["seconds"]) ended just before
        self.show(self.text())
        print(flush=True)

    def text(self):
        return self.tokenizer.decode(self.ids or [], skip_special_tokens=True)

    def show(self, text):
        print(text[self.printed:], end="", flush=True)
        self.printed = max(self.printed, len(text))


def duration(seconds) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def cache_state():
    """The measurement caches (linear plans, auto-K costs, draft dtype) change only when something
    was measured: comparing them before and after tells a first run from a later one."""
    return {p.name: p.stat().st_mtime_ns for p in measurement_root().glob("*.json")}


def summary(s, args, ttft) -> str:
    n = s["new_tokens"]
    # The engine's decode time (from the end of the target's prefill, the draft's prefill inside it), not the time
    # after the first streamed token: that token is put after the draft's prefill, which would leave it uncharged.
    decode = f"decode {(n - 1) / max(s['decode_seconds'], 1e-9):.1f} tok/s" if n > 1 else "no decode step"
    if args.drafter == "none":
        drafts = "target alone (--drafter none)"
    elif s["proposed"]:
        drafts = f"acceptance {s['acceptance_rate']:.0%} ({s['accepted']}/{s['proposed']} drafts)"
    elif not s["k_per_iteration"]:
        drafts = "no drafts: the answer ended at its first token"
    elif s["policy"] == "auto" and not any(s["k_per_iteration"]):
        drafts = "no drafts: auto chose the target alone in every round (by its measured costs drafting did not pay)"
    else:
        drafts = "no drafts counted (the generation ended before any was verified)"
    k = f"K {s['k']}" if s["policy"] == "fixed" else f"mean K {s['mean_k']:.1f} ({s['policy']}, up to {s['k_max']})"
    return (f"[{n} new token{'s' * (n != 1)}, {decode}, first token after {duration(ttft)}; {drafts}; "
            f"{s['tokens_per_target_forward']:.2f} tokens per target forward; {k}; drafter={args.drafter}]")


def setup_line(load_s, calibration_s, measured_in_load, measured_in_generate) -> str:
    if not (measured_in_load or measured_in_generate):
        return f"[load {duration(load_s)}; calibration reused from {measurement_root()}]"
    load = f"load {duration(load_s)}" + (" (with measuring the draft's dtype)" if measured_in_load else "")
    return (f"[first run of these models on this machine: {load}, calibration {duration(calibration_s)} "
            f"(cached in {measurement_root()}: later runs skip it)]")


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.command == "calibrate":
        return calibrate_main(args, p)
    if args.command == "kernel":
        print(qkernel.report(args.verbose))
        return 0
    if bool(args.pair) == bool(args.target):
        p.error("give either --pair NAME or --target MODEL (with --draft MODEL for a draft model)")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        p.error(f"--top-p must be in (0, 1], not {args.top_p}")
    if args.system and args.raw:
        p.error("--system needs chat mode: drop --raw")
    text = read_prompt(args, p)  # before loading: a bad prompt should not wait for the models
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    before, start = cache_state(), time.perf_counter()
    try:
        pair = load_pair(args.pair or args.target, args.draft if args.target else None,
                         device=args.device, dtype=args.dtype, draft_dtype=args.draft_dtype, precision=args.precision)
    except (ValueError, RuntimeError) as e:
        p.error(str(e))
    load_s, loaded = time.perf_counter() - start, cache_state()
    if args.drafter == "model" and pair.draft is None:
        p.error("this target has no draft model: pass --draft MODEL or --drafter prompt_lookup")
    draft = {"model": pair.draft, "prompt_lookup": "prompt_lookup", "none": None}[args.drafter]
    chat = chat_mode(args, pair.tokenizer, p)
    text = text.strip() if chat else text  # raw: exactly the text to continue, a file's last newline too
    ids = prompt_ids(pair.tokenizer, text, chat, args.system)
    # Chat: the question as a header line, then only the answer. Raw: the text, continued in place.
    print(text, end="\n" if chat else "", flush=True)
    streamer = Streamer(pair.tokenizer)
    called = time.perf_counter()
    try:
        result = generate(pair.target, [ids], draft=draft, k=args.k, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                          verify=args.verify, streamer=streamer, same_tokenizer=pair.same_tokenizer)
    except ValueError as e:
        p.error(str(e))
    s = result.stats
    # generate() measures (or reads from the cache) linear plans and auto-K costs before its timed run.
    run_start = streamer.ended - s["seconds"]
    print(summary(s, args, (streamer.first_token or streamer.ended) - run_start))
    print(setup_line(load_s, run_start - called, loaded != before, cache_state() != loaded))
    return 0
