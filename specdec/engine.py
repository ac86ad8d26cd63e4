"""The decode loop: prefill, draft K, verify all K in one target forward, accept, roll back, repeat.

Invariants between rounds (per row b, L = tokens in the row so far, prompt included):
  seq[b, :L]            the row's tokens; seq[b, L-1] is the newest and in no KV cache yet
  target arena length   L - 1
  draft arena length    L - feed, the same `feed` >= 1 for every unfinished row: the tokens the draft's next
                        step feeds (1 after a round that rejected a draft, 2 after one that accepted all K,
                        one more per K=0 round; ModelDrafter.rollback derives it from its arena's lengths)
Every round appends 1 .. K+1 tokens to each unfinished row (K may be 0: the target alone for that round); rows
finish independently (EOS or max_new_tokens) and a finished row simply stops growing while the batch runs on.
"""
import functools
import time
from dataclasses import dataclass, field

import torch

from . import calibration, costs
from .arena import Arena
from .drafters import as_drafter, last_tokens
from .inputs import check_arguments, eos_ids, position_limit, prompt_rows
from .linear import fast_linears, mode as linear_mode, plans_in_use, remeasure
from .costs import DENSE, padded_rows
from .policy import FixedK, resolve
from .profiler import Profiler, synchronize
from .sampling import Sampler, accept_greedy, accept_sampled


@dataclass
class Result:
    tokens: list  # per row, the NEW token ids (prompt excluded), EOS included when it was produced
    stats: dict = field(default_factory=dict)


@torch.inference_mode()
def generate(target, input_ids, *, draft=None, attention_mask=None, k=4, max_new_tokens=32,
             temperature=0.0, top_k=None, top_p=None, seed=None, verify="parallel",
             eos_token_id=None, profile=False, streamer=None, same_tokenizer=False,
             repetition_penalty=None) -> Result:
    """Speculative decoding of `target` with `draft`: a model, "prompt_lookup", a drafter object
    (the protocol in specdec.drafters: start, prefill, propose, rollback), or None for the target-only
    baseline. `k`: how K is chosen (specdec.policy.resolve): an int 1..64, "auto" (per round, from measured
    costs and acceptance; 0 = the target alone for that round), "adaptive" (HF's +2/-1 schedule), or a policy.
    `streamer`: a transformers streamer (e.g. TextStreamer), fed row 0's prompt, then its tokens as
    they are accepted. `same_tokenizer=True`: you know draft and target share one tokenizer
    (load_pair checks it: pass pair.same_tokenizer), so output sizes may differ by padding rows.
    `repetition_penalty`: transformers' repetition penalty over each row's prompt and tokens so far (drafts
    included), applied before the warpers to target and draft alike, as `generate` applies it.
    Greedy output is token-identical to the target alone (in float32/64; see README for half
    precision); sampled output has the target's distribution. See README for the arguments."""
    rows = prompt_rows(input_ids, attention_mask)
    policy = resolve(k, drafting=draft is not None)
    check_arguments(target, draft, rows, policy.k_max, max_new_tokens, temperature, top_k, top_p, verify,
                    same_tokenizer)
    drafter, draft_model = as_drafter(draft)  # below here, `draft` is one of these two
    sampler = Sampler(temperature, top_k, top_p, seed, target.device, repetition_penalty)
    judged = costs.pair_key(target, draft_model, len(rows))  # what the calibration check is about
    recalibrate_if_stale(judged, target, draft_model, len(rows))
    prices = functools.partial(costs.prices, target, draft_model, len(rows))  # the machine's price list
    with fast_linears([target, draft_model]):  # the measured few-row linear path (specdec.linear), CPU only
        decoder = Decoder(target, drafter, rows, max_new_tokens, sampler, verify, eos_ids(target, eos_token_id),
                          profile, policy, prices, streamer)
        result = decoder.run()
    # k: the fixed K, else the policy's label; policy and k_max: which policy chose K, up to what
    result.stats.update(k=policy.k_max if policy.label == "fixed" else policy.label, policy=policy.label,
                        k_max=policy.k_max)
    predicted = costs.predict(target, draft_model, len(rows), result.stats["k_per_iteration"])
    result.stats.update(calibration.check(judged, predicted, result.stats["rounds_seconds"]))
    return result


def recalibrate_if_stale(key, target, draft, batch):
    """Before a generation, never inside one: measure the plans and cost curves of these models again when
    generations ran consistently slower than they predict, or they were measured on a busy machine."""
    models = [m for m in (target, draft) if m is not None]
    in_use = plans_in_use(models) + costs.in_use(target, draft, batch)
    name = " + ".join(type(m).__name__ for m in models) + f", batch {batch}"
    if calibration.stale(key, in_use) and calibration.may_remeasure(key, name):
        if linear_mode() == "auto":
            remeasure(models)
        costs.remeasure(target, draft, batch)
        calibration.healed(key)


def read_host(tensor: torch.Tensor) -> list:
    """The engine's one device -> host read per round (a small [B, K+4] tensor); one function so
    that tests can count it."""
    return tensor.tolist()


class Decoder:
    """One generation: owns the token buffer, both arenas and the counters."""

    def __init__(self, target, drafter, rows, max_new_tokens, sampler, verify, eos, profile, policy, prices,
                 streamer=None):
        # policy.k_max, the largest K this generation may use, sizes the arenas; the policy picks each round's K.
        self.target, self.sampler = target, sampler
        k = policy.k_max
        self.verify_mode, self.eos, self.max_new = verify, eos, max_new_tokens
        self.device = target.device
        self.batch = len(rows)
        self.prompt_lengths = [len(r) for r in rows]
        # begin() runs outside the timed run: "auto" reads the price list there (measured once per machine).
        self.k = policy.begin(len(rows), prices)
        if drafter is not None and not getattr(policy, "drafts", lambda *_: True)(max(self.prompt_lengths),
                                                                                 max_new_tokens):
            drafter, policy, self.k = None, FixedK(0), 0  # no K pays back the draft's prefill: the target alone
        self.drafter, self.policy = drafter, policy
        # The target's forwards over T tokens run as padded[T] tokens where that is cheaper (specdec.costs):
        # the padding needs DENSE spare slots and must stay inside the model's position limit.
        self.padded = padded_rows(target, self.batch)
        self.position_limit = position_limit(target) or 1 << 62
        capacity = max(self.prompt_lengths) + max_new_tokens + k + 1 + (DENSE if self.padded else 0)
        self.seq = torch.zeros(self.batch, capacity, dtype=torch.long, device=self.device)
        self.seq[:, : max(self.prompt_lengths)] = torch.tensor(
            [r + [0] * (max(self.prompt_lengths) - len(r)) for r in rows], device=self.device)
        self.arena = Arena(target, self.batch, capacity)
        # Per-row state the loop updates on the device (no host -> device copy per round); the host
        # keeps its own copy from the round's one read.
        self.eos_ids = torch.tensor(sorted(eos), dtype=torch.long, device=self.device)
        self.budget = torch.full((self.batch,), max_new_tokens, device=self.device)  # tokens a row may add
        self.finished = torch.zeros(self.batch, dtype=torch.bool, device=self.device)
        self.rows = rows
        if drafter is not None:
            drafter.start(self.batch, capacity)
        self.out = [[] for _ in rows]  # new tokens per row, on the host
        self.done = [False] * self.batch
        self.prof = Profiler(self.device, profile)
        self.streamer = streamer
        self.counts = dict(proposed=0, accepted=0, target_forwards=0, iterations=0)
        self.k_per_iteration = []
        self.accepted_per_iteration = []  # per round, per row: drafts accepted (None: the row had finished)

    def run(self) -> Result:
        synchronize(self.device)
        start = time.perf_counter()
        decode_start = self.prefill()
        rounds_start = time.perf_counter()  # after the draft's prefill: what the cost curves predict starts here
        while not all(self.done):
            self.step()
        synchronize(self.device)
        end = time.perf_counter()
        if self.streamer:
            self.streamer.end()
        return Result(self.out, dict(self.stats(end - start), decode_seconds=end - decode_start,
                                     rounds_seconds=end - rounds_start))

    def prefill(self) -> float:
        """The target's prefill and first token, and the drafter's prefill; returns when the target's part ended:
        where decode time starts. The draft's prefill is a cost only speculation pays, so decode time charges it."""
        with self.prof.phase("prefill"):
            prompts = self.seq[:, : max(self.prompt_lengths)]
            # Logits only at the positions some row's prompt ends (a long prompt's other positions
            # would cost a vocabulary projection each, for nothing).
            ends = sorted({p - 1 for p in self.prompt_lengths})
            logits = self.arena.forward(prompts, keep=torch.tensor(ends, device=self.device))
            self.counts["target_forwards"] += 1
            column = torch.tensor([ends.index(p - 1) for p in self.prompt_lengths], device=self.device)
            self.sampler.see(self.seq, torch.tensor(self.prompt_lengths, device=self.device))  # repetition penalty
            first, _ = self.sampler.pick(logits[torch.arange(self.batch, device=self.device), column])
            synchronize(self.device)
        decode_start = time.perf_counter()
        with self.prof.phase("draft_prefill"):  # apart from "draft", the draft's steps: what a round's price holds
            if self.drafter is not None:
                self.drafter.prefill(prompts)
        with self.prof.phase("accept"):
            self.lengths = torch.tensor(self.prompt_lengths, device=self.device)
            if self.streamer:  # as HF generate does: the prompt first (TextStreamer(skip_prompt=True) drops it)
                self.streamer.put(torch.tensor(self.rows[0], device="cpu"))
            self.seq.scatter_(1, self.lengths[:, None], first[:, None])
            self.commit(torch.zeros_like(self.lengths), first[:, None], proposed=0)
        return decode_start

    def step(self):
        # Drafts past a row's last allowed token would be cut unread: no round drafts more than the most an
        # unfinished row may still add, less the token the target adds itself (as HF's assisted generation caps).
        k = min(self.k, max(self.max_new - len(o) for o, done in zip(self.out, self.done) if not done) - 1)
        start = time.perf_counter()
        with self.prof.phase("draft"):
            self.sampler.see(self.seq, self.lengths)  # the repetition penalty's context (no-op without one)
            if k:
                drafts, q = self.drafter.propose(self.seq, self.lengths, k, self.sampler)
            else:
                drafts, q = self.seq.new_zeros(self.batch, 0), None
        with self.prof.phase("verify"):
            block = torch.cat([last_tokens(self.seq, self.lengths, 1), drafts], 1)  # [B, K+1]
            logits = self.sampler.process(self.verify(block), drafts)  # per-position repetition penalty
        with self.prof.phase("accept"):
            if self.sampler.greedy:
                accepted, new = accept_greedy(logits, drafts)
            else:  # q None: deterministic drafts (one-hot q), or no drafts at all
                accepted, new = accept_sampled(self.sampler.probs(logits), q, drafts, self.sampler.generator)
            # new[b, :accepted[b]+1] are row b's new tokens; the rest is overwritten later.
            self.seq.scatter_(1, self.lengths[:, None] + torch.arange(k + 1, device=self.device), new)
        self.counts["iterations"] += 1
        self.k_per_iteration.append(k)
        with self.prof.phase("rollback"):
            accepted_host, kept = self.commit(accepted, new, proposed=k)
        accepted_host = [a if n else None for a, n in zip(accepted_host, kept)]
        self.accepted_per_iteration.append(accepted_host)
        if hasattr(self.policy, "observe"):  # the round ended on the host's read of `accepted` (commit)
            self.policy.observe(k, time.perf_counter() - start)
        self.k = self.policy.next_k(k, accepted_host)

    def verify(self, block):
        """Target logits for every position of `block` [B, K+1]: one forward, or K+1 (naive)."""
        if self.verify_mode == "parallel" or block.shape[1] == 1:
            self.counts["target_forwards"] += 1
            t = block.shape[1]
            rows = self.padded.get(t, t)
            if rows == t or self.arena.longest + rows > self.position_limit:
                return self.arena.forward(block)
            padding = block[:, -1:].expand(-1, rows - t)  # written past the row's length; their logits unread
            return self.arena.forward(torch.cat([block, padding], 1))[:, :t]
        logits = []
        for i in range(block.shape[1]):  # the cost the parallel path avoids: one forward per token
            logits.append(self.arena.forward(block[:, i : i + 1]))
            self.arena.advance(1)
            self.counts["target_forwards"] += 1
        return torch.cat(logits, 1)

    def kept_on_device(self, accepted, new):
        """How many of its candidates new[b, :accepted[b]+1] each row keeps: cut after the first EOS and
        at the row's remaining budget, 0 for finished rows. Updates lengths, budget and finished in place."""
        slot = torch.arange(new.shape[1], device=self.device)
        eos = torch.isin(new, self.eos_ids) & (slot <= accepted[:, None])
        upto = torch.where(eos.any(1), eos.long().argmax(1) + 1, accepted + 1)
        kept = torch.minimum(upto, self.budget).masked_fill_(self.finished, 0)
        self.finished |= (eos & (slot < kept[:, None])).any(1) | (kept == self.budget)
        self.budget -= kept
        self.lengths += kept
        return kept

    def commit(self, accepted, new, proposed):
        """Keep each row's tokens (one device -> host read per round), move every pointer."""
        kept = self.kept_on_device(accepted, new)
        host = read_host(torch.cat([accepted[:, None], kept[:, None], self.finished[:, None].long(), new], 1))
        accepted_host, kept_host = [r[0] for r in host], [r[1] for r in host]
        for b, (a, n, finished, *tokens) in enumerate(host):
            if not self.done[b]:
                # Drafts cut off by EOS or max_new_tokens are neither accepted nor proposed: their fate
                # did not matter. A cut row (n <= a) kept n accepted drafts of the n that counted.
                self.counts["proposed"] += proposed if n > a else n
                self.counts["accepted"] += min(a, n)
            self.out[b] += tokens[:n]
            self.done[b] = bool(finished)
            if self.streamer and b == 0 and n:
                self.streamer.put(torch.tensor(tokens[:n], device="cpu"))
        host_lengths = [p + len(o) for p, o in zip(self.prompt_lengths, self.out)]
        longest, aligned = max(host_lengths), len(set(host_lengths)) == 1
        self.arena.point_to(self.lengths - 1, longest - 1, aligned)
        if self.drafter is not None:
            self.drafter.rollback(self.lengths, host_lengths, self.done)
        return accepted_host, kept_host

    def stats(self, seconds) -> dict:
        c = self.counts
        new_tokens = sum(len(o) for o in self.out)
        return dict(
            c, new_tokens=new_tokens, seconds=seconds, batch_size=self.batch, k_per_iteration=self.k_per_iteration,
            accepted_per_iteration=self.accepted_per_iteration,
            mean_k=sum(self.k_per_iteration) / max(len(self.k_per_iteration), 1),
            draft_forwards=getattr(self.drafter, "forwards", 0),
            acceptance_rate=c["accepted"] / c["proposed"] if c["proposed"] else float("nan"),
            tokens_per_target_forward=new_tokens / c["target_forwards"],
            throughput=new_tokens / seconds, **self.prof.stats(),
        )
