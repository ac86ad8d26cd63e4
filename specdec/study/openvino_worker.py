"""OpenVINO GenAI's side of notebook 06's outside reference: a process that runs in OpenVINO's own environment
(scripts/setup_openvino.sh makes it: its exporter needs an older transformers than specdec's), never imported by
specdec. specdec.study.openvino_run starts it, once per sweep:

    <openvino venv>/bin/python openvino_worker.py TARGET_IR DRAFT_IR THREADS

It loads two pipelines on the CPU, the int4 target alone and the target with the int4 draft (OpenVINO's own
speculative decoding), prints one JSON line {"ready": version}, then answers each JSON line on stdin,
{"mode": "target_alone" | "speculative", "ids": [...], "n": new tokens, "k": drafts per round}, with one JSON line:
the new text (greedy, EOS ignored) and the timings, or {"error": ...}. Whatever the libraries print goes to
stderr: stdout carries only the answers.

Timing, in specdec's terms (one definition of decode for every engine): decode runs from the end of the target's
prefill to the last token, the draft's prefill inside it. The pipelines' own clocks (their perf metrics): the target
alone's decode is its generation's duration less its time to the first token (the prompt's forward). OpenVINO's
speculative pipeline runs the draft's prefill before its first token too (its time to the first token was the target
alone's plus ~0.2 s on a 130-token prompt), where that measure would hide it; so a speculative request first runs
the target alone over the prompt for one token, and its decode is the speculative generation's duration less that
run's prefill.
"""
import json
import os
import sys

# The answers get a stream of their own, and fd 1 becomes stderr before OpenVINO is imported: its libraries print
# to fd 1 (at import too), and a stray line on the answers' stream would break the protocol.
ANSWERS = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

import numpy as np  # noqa: E402
import openvino as ov  # noqa: E402
import openvino_genai as genai  # noqa: E402


def pipelines(target, draft, threads):
    """(target alone, target with the draft): greedy, on `threads` threads, latency-first (one request at a time),
    without prefix caching (on by default: a prompt run again would skip its prefill, which llama.cpp and specdec
    pay every run)."""
    scheduler = genai.SchedulerConfig()
    scheduler.enable_prefix_caching = False
    props = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "scheduler_config": scheduler}
    alone = genai.LLMPipeline(target, "CPU", **props)
    assisted = genai.LLMPipeline(target, "CPU", draft_model=genai.draft_model(draft, "CPU", **props), **props)
    return alone, assisted


def config(n, k=None):
    c = genai.GenerationConfig()
    c.max_new_tokens, c.min_new_tokens, c.ignore_eos, c.do_sample = n, n, True, False
    if k is not None:
        c.num_assistant_tokens = k
    return c


def timed(pipe, ids, c) -> tuple[float, float, list]:
    """(seconds to the first token, seconds in all, new token ids) of one greedy generation on the exact prompt ids,
    by the pipeline's own clock."""
    out = pipe.generate(ov.Tensor(np.array([ids], dtype=np.int64)), c)
    m = out.perf_metrics
    return m.get_ttft().mean / 1e3, m.get_generate_duration().mean / 1e3, [int(t) for t in out.tokens[0]]


def answer(alone, assisted, mode, ids, n, k=None) -> dict:
    if mode == "target_alone":
        prefill, total, tokens = timed(alone, ids, config(n))
    elif mode == "speculative":
        prefill, _, _ = timed(alone, ids, config(1))  # the target's own prefill over this prompt
        _, total, tokens = timed(assisted, ids, config(n, k))
    else:
        raise ValueError(f"mode {mode!r}: target_alone or speculative")
    return dict(prompt_tokens=len(ids), prefill_s=prefill, new_tokens=len(tokens), decode_tokens=len(tokens) - 1,
                decode_s=total - prefill, text=alone.get_tokenizer().decode(tokens))


def main():
    target, draft, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    alone, assisted = pipelines(target, draft, threads)
    print(json.dumps({"ready": genai.__version__}), file=ANSWERS, flush=True)
    for line in sys.stdin:
        try:
            reply = answer(alone, assisted, **json.loads(line))
        except Exception as e:  # noqa: BLE001 (a failed run is the parent's row, with its error; the worker goes on)
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), file=ANSWERS, flush=True)


if __name__ == "__main__":
    main()
