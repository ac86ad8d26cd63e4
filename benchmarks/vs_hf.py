"""specdec vs Hugging Face generate, same models, prompt and K, in one run (ratios, not absolutes).

    python benchmarks/vs_hf.py [--k 4] [--new-tokens 64] [--hidden 512] [--layers 8] [--draft-layers 2]

Random-weight Llama models big enough that the model dominates; the draft is the target's first
layers (same embeddings and head) and the target's deeper layers are damped, so the draft agrees
with the target often but not always (like a real pair; the acceptance rate is printed). Greedy,
batch 1. Compares:
  specdec speculative   vs  generate(assistant_model=draft), K fixed (constant schedule)
  specdec baseline      vs  generate()
and checks that all four produce the same tokens.
"""
import argparse

import torch
from torch.utils.benchmark import Timer
from transformers import LlamaConfig, LlamaForCausalLM

import specdec


def models(hidden, layers, draft_layers, deep_scale=0.04, vocab=32000, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 4,
                         num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=4096)
    target = LlamaForCausalLM(config).eval()
    draft_config = LlamaConfig(**{**config.to_dict(), "num_hidden_layers": draft_layers})
    draft = LlamaForCausalLM(draft_config).eval()
    with torch.no_grad():  # damp the target's deeper layers so its first layers (the draft) often agree
        for layer in target.model.layers[draft_layers:]:
            layer.self_attn.o_proj.weight.mul_(deep_scale)
            layer.mlp.down_proj.weight.mul_(deep_scale)
    draft.load_state_dict(target.state_dict(), strict=False)  # shared embeddings, head, first layers
    return target, draft


def median_seconds(fn, min_run_time):
    fn()  # warm-up
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--draft-layers", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--min-run-time", type=float, default=10.0, help="seconds of timing per contender")
    args = p.parse_args()

    target, draft = models(args.hidden, args.layers, args.draft_layers)
    draft.generation_config.num_assistant_tokens = args.k
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0  # never stop drafting early: K is fixed
    torch.manual_seed(1)
    prompt = torch.randint(0, target.config.vocab_size, (1, args.prompt_len))
    mask = torch.ones_like(prompt)
    hf_kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=args.new_tokens,
                 min_new_tokens=args.new_tokens, pad_token_id=0)
    sd_kw = dict(max_new_tokens=args.new_tokens, eos_token_id=[])

    runs = {
        "specdec speculative": lambda: specdec.generate(target, prompt, draft=draft, k=args.k, **sd_kw).tokens[0],
        "HF assisted": lambda: target.generate(prompt, assistant_model=draft, **hf_kw)[0, args.prompt_len:].tolist(),
        "specdec baseline": lambda: specdec.generate(target, prompt, **sd_kw).tokens[0],
        "HF generate": lambda: target.generate(prompt, **hf_kw)[0, args.prompt_len:].tolist(),
    }
    outputs = {name: fn() for name, fn in runs.items()}
    same = all(out == outputs["HF generate"] for out in outputs.values())
    stats = specdec.generate(target, prompt, draft=draft, k=args.k, **sd_kw).stats
    with torch.inference_mode():
        seconds = {name: median_seconds(fn, args.min_run_time) for name, fn in runs.items()}

    print(f"target: Llama hidden {args.hidden}, {args.layers} layers; draft: its first {args.draft_layers} layers; "
          f"K={args.k}, {args.new_tokens} new tokens, prompt {args.prompt_len}, greedy, batch 1, "
          f"{torch.get_num_threads()} threads")
    print(f"acceptance rate {stats['acceptance_rate']:.2f}, outputs identical: {same}")
    for name, s in seconds.items():
        print(f"  {name:22s} {s * 1e3:8.1f} ms  {args.new_tokens / s:7.1f} tok/s")
    print(f"specdec speculative / HF assisted: {seconds['HF assisted'] / seconds['specdec speculative']:.2f}x faster")
    print(f"specdec baseline / HF generate:    {seconds['HF generate'] / seconds['specdec baseline']:.2f}x faster")
    print(f"specdec speculative / baseline:    {seconds['specdec baseline'] / seconds['specdec speculative']:.2f}x faster")
    if not same:
        raise SystemExit("outputs differ: see above")


if __name__ == "__main__":
    main()
