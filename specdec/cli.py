"""`python -m specdec generate "prompt" --pair qwen2.5-coder -k 4`: one generation, streamed,
with a one-line summary of how speculation went."""
import argparse
import logging
import sys

from transformers import TextStreamer

from .engine import VERIFY_MODES, generate
from .policy import MAX_K
from .models import PAIRS, load_pair

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
    p = argparse.ArgumentParser(prog="python -m specdec", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text from one prompt, streamed")
    g.add_argument("prompt")
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
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if bool(args.pair) == bool(args.target):
        parser().error("give either --pair NAME or --target MODEL (with --draft MODEL for a draft model)")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        parser().error(f"--top-p must be in (0, 1], not {args.top_p}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        pair = load_pair(args.pair or args.target, args.draft if args.target else None,
                         device=args.device, dtype=args.dtype, draft_dtype=args.draft_dtype)
    except (ValueError, RuntimeError) as e:
        parser().error(str(e))
    if args.drafter == "model" and pair.draft is None:
        parser().error("this target has no draft model: pass --draft MODEL or --drafter prompt_lookup")
    draft = {"model": pair.draft, "prompt_lookup": "prompt_lookup", "none": None}[args.drafter]
    ids = pair.tokenizer.encode(args.prompt, add_special_tokens=False)
    print(args.prompt, end="", flush=True)
    streamer = TextStreamer(pair.tokenizer, skip_special_tokens=True)
    try:
        result = generate(pair.target, [ids], draft=draft, k=args.k, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                          verify=args.verify, streamer=streamer, same_tokenizer=pair.same_tokenizer)
    except ValueError as e:
        parser().error(str(e))
    s = result.stats
    print(f"\n[{s['new_tokens']} tokens in {s['seconds']:.2f} s: {s['throughput']:.1f} tok/s, "
          f"acceptance {s['acceptance_rate']:.0%}, {s['tokens_per_target_forward']:.2f} tokens per target forward, "
          f"k={s['k']}, drafter={args.drafter}]")
    return 0
