"""specdec vs Hugging Face generate, same models, prompt and K, in one run (ratios, not absolutes).

    python benchmarks/vs_hf.py [--k 4] [--new-tokens 64] [--hidden 512] [--layers 8] [--draft-layers 2]

Random-weight Llama models big enough that the model dominates; the draft is the target's first
layers (same embeddings and head) and the target's deeper layers are damped, so the draft agrees
with the target often but not always (like a real pair; the acceptance rate is printed). Greedy,
batch 1. Compares, on the same prompt:
  target alone          specdec baseline, and HF generate()
  fixed K               specdec speculative   vs  generate(assistant_model=draft), K fixed (constant schedule)
  chosen K              specdec k="auto"      vs  generate(assistant_model=draft) at HF's defaults
                                                  (20 tokens, confidence threshold 0.4: what a user gets)
and checks that all six produce the same tokens. For the real Qwen pair and the prompt set use
python -m specdec.study.bench (modes baseline,speculative,auto,hf_assisted,hf_assisted_default).
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
    torch.manual_seed(1)
    prompt = torch.randint(0, target.config.vocab_size, (1, args.prompt_len))
    mask = torch.ones_like(prompt)
    hf_kw = dict(attention_mask=mask, do_sample=False, max_new_tokens=args.new_tokens,
                 min_new_tokens=args.new_tokens, pad_token_id=0)
    sd_kw = dict(max_new_tokens=args.new_tokens, eos_token_id=[])
    fixed = dict(num_assistant_tokens=args.k, num_assistant_tokens_schedule="constant",
                 assistant_confidence_threshold=0.0)  # never stop drafting early: K is fixed
    defaults = dict(num_assistant_tokens=20, num_assistant_tokens_schedule="constant",
                    assistant_confidence_threshold=0.4)  # transformers' GenerationConfig defaults

    def hf_assisted(config):
        def run():
            draft.generation_config.update(**config)  # reset before each call: HF may adapt it in place
            return target.generate(prompt, assistant_model=draft, **hf_kw)[0, args.prompt_len:].tolist()
        return run

    runs = {
        f"specdec K={args.k}": lambda: specdec.generate(target, prompt, draft=draft, k=args.k, **sd_kw).tokens[0],
        f"HF assisted K={args.k}": hf_assisted(fixed),
        "specdec auto": lambda: specdec.generate(target, prompt, draft=draft, k="auto", **sd_kw).tokens[0],
        "HF assisted default": hf_assisted(defaults),
        "specdec baseline": lambda: specdec.generate(target, prompt, **sd_kw).tokens[0],
        "HF generate": lambda: target.generate(prompt, **hf_kw)[0, args.prompt_len:].tolist(),
    }
    outputs = {name: fn() for name, fn in runs.items()}
    same = all(out == outputs["HF generate"] for out in outputs.values())
    stats = specdec.generate(target, prompt, draft=draft, k=args.k, **sd_kw).stats
    auto = specdec.generate(target, prompt, draft=draft, k="auto", **sd_kw).stats
    with torch.inference_mode():
        seconds = {name: median_seconds(fn, args.min_run_time) for name, fn in runs.items()}

    print(f"target: Llama hidden {args.hidden}, {args.layers} layers; draft: its first {args.draft_layers} layers; "
          f"K={args.k}, {args.new_tokens} new tokens, prompt {args.prompt_len}, greedy, batch 1, "
          f"{torch.get_num_threads()} threads")
    print(f"acceptance rate {stats['acceptance_rate']:.2f} at K={args.k}; auto chose K per round "
          f"{auto['k_per_iteration']} (mean {auto['mean_k']:.1f}); outputs identical: {same}")
    for name, s in seconds.items():
        print(f"  {name:22s} {s * 1e3:8.1f} ms  {args.new_tokens / s:7.1f} tok/s")
    ratio = lambda a, b: f"{seconds[b] / seconds[a]:.2f}x"
    print(f"specdec K={args.k} / HF assisted K={args.k}:       {ratio(f'specdec K={args.k}', f'HF assisted K={args.k}')}")
    print(f"specdec auto / HF assisted default: {ratio('specdec auto', 'HF assisted default')}")
    print(f"specdec auto / target alone:        {ratio('specdec auto', 'specdec baseline')}")
    print(f"specdec K={args.k} / target alone:        {ratio(f'specdec K={args.k}', 'specdec baseline')}")
    print(f"specdec baseline / HF generate:     {ratio('specdec baseline', 'HF generate')}")
    if not same:
        raise SystemExit("outputs differ: see above")


if __name__ == "__main__":
    main()
