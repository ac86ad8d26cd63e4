"""Logits -> probabilities, and the two acceptance rules (greedy and Leviathan/Chen sampling).

The same warpers (temperature, top-k, top-p; transformers' own logits processors) are applied to
target and draft distributions, as the losslessness proof requires.

Repetition penalty (transformers' RepetitionPenaltyLogitsProcessor, applied before the warpers as
`generate` does) depends on the tokens before each position, so the sampler keeps the rows' context:
`see(seq, lengths)` before a round, `pick` adds each token it picks to it (a drafter that calls `pick`
K times in order gets drafts 0..i-1 in its i-th proposal's penalty), and `process` penalises the
target's verify logits [B, K+1, V] position by position (position i sees the context and drafts 0..i-1).
"""
import torch
import torch.nn.functional as F
from transformers.generation.logits_process import (
    LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
)

# A slot that holds no token: transformers' repetition penalty clamps ids >= vocabulary size to one spare
# column that it drops, so such an id penalises nothing.
NO_TOKEN = torch.iinfo(torch.long).max


class Sampler:
    """Sampling settings plus the seeded generator that every random draw of a generation uses."""

    def __init__(self, temperature=0.0, top_k=None, top_p=None, seed=None, device="cpu", repetition_penalty=None):
        self.greedy = temperature == 0
        # HF skips a penalty of 1.0 too (it changes nothing); its constructor refuses a non-positive one.
        self.penalty = None if repetition_penalty in (None, 1.0) else \
            RepetitionPenaltyLogitsProcessor(float(repetition_penalty))
        self.context = self.running = None
        self.warpers = LogitsProcessorList()
        if not self.greedy:
            self.warpers.append(TemperatureLogitsWarper(temperature))
            if top_k is not None:
                self.warpers.append(TopKLogitsWarper(top_k))
            if top_p is not None and top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(top_p))
        self.generator = torch.Generator(device=device)
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def see(self, seq: torch.Tensor, lengths: torch.Tensor):
        """The rows' tokens so far, seq[b, :lengths[b]], for the repetition penalty (no-op without one)."""
        if self.penalty is None:
            return
        slot = torch.arange(seq.shape[1], device=seq.device)
        self.context = self.running = seq.masked_fill(slot >= lengths[:, None], NO_TOKEN)

    def penalize(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """[N, V] logits penalised for the tokens in ids [N, T]; float32 at least, as `generate` does."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return self.penalty(ids, logits)

    def process(self, logits: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
        """Target verify logits [B, K+1, V] with the repetition penalty of each position: position i sees
        the context from `see` plus drafts [B, K] 0..i-1, as a one-token-at-a-time loop would."""
        if self.penalty is None:
            return logits
        batch, n, vocab = logits.shape
        before = torch.arange(n - 1, device=logits.device) < torch.arange(n, device=logits.device)[:, None]
        preceding = torch.where(before, drafts[:, None, :], NO_TOKEN)  # [B, K+1, K]
        ids = torch.cat([self.context[:, None].expand(batch, n, -1), preceding], 2).reshape(batch * n, -1)
        return self.penalize(ids, logits.reshape(batch * n, vocab)).reshape(batch, n, vocab)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., V] logits -> [..., V] probabilities after the warpers (float32 at least)."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        flat = logits.reshape(-1, logits.shape[-1])
        flat = self.warpers(None, flat)
        return flat.softmax(-1).reshape(logits.shape)

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per distribution: [B, V] -> [B]."""
        return race(probs, self.generator)

    def pick(self, logits: torch.Tensor):
        """The next token of every row from [B, V] logits (penalised for the running context, which then
        gains the token): argmax when greedy, else a sample. Returns (token, probs or None)."""
        probs = None
        if self.penalty is not None:
            logits = self.penalize(self.running, logits)
        if self.greedy:
            token = logits.argmax(-1)
        else:
            probs = self.probs(logits)
            token = self.sample(probs)
        if self.penalty is not None:
            self.running = torch.cat([self.running, token[:, None]], 1)
        return token, probs


def accept_greedy(target_logits: torch.Tensor, drafts: torch.Tensor):
    """Longest prefix of `drafts` [B, K] equal to the target's argmax over `target_logits` [B, K+1, V].

    Returns (accepted [B], new [B, K+1]): row b's new tokens are new[b, :accepted[b] + 1], i.e. the
    accepted drafts (which equal the argmax) followed by the target's own next token.
    """
    best = target_logits.argmax(-1)
    k = drafts.shape[1]
    accepted = (drafts == best[:, :k]).long().cumprod(1).sum(1)
    return accepted, best


def race(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A sample from each row of `weights` [B, V] (non-negative, any scale): argmax(w / E), E ~ Exp(1).
    Exact (E_i / w_i ~ Exp(w_i), and the smallest of independent exponentials is i with probability
    w_i / sum w) and, unlike torch.multinomial, it never synchronises with the host."""
    noise = torch.empty_like(weights).exponential_(generator=generator)
    return (weights / noise).argmax(-1)


def accept_sampled(p: torch.Tensor, q, drafts: torch.Tensor, generator: torch.Generator):
    """Speculative sampling (Leviathan et al. 2023, Chen et al. 2023), vectorised over rows.

    p: target probs [B, K+1, V]; drafts [B, K]; q: the draft probs [B, K, V_draft] the drafts were
    sampled from, or None for deterministic drafts (q one-hot at the draft, e.g. prompt lookup). A draft
    vocabulary smaller than the target's (padded output rows) is q extended with zeros.
    Draft i is kept with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection the next
    token is drawn from norm(max(0, p - q)); if all K are kept, the bonus token is drawn from p_{K+1}.
    Returns (accepted [B], new [B, K+1]) like `accept_greedy`.
    """
    batch, k = drafts.shape
    rows = torch.arange(batch, device=p.device)
    if k == 0:  # target alone: just sample
        return torch.zeros_like(rows), race(p[:, 0], generator)[:, None]
    p_draft = p[:, :k].gather(2, drafts[..., None]).squeeze(-1)
    q_draft = 1.0 if q is None else q.gather(2, drafts[..., None]).squeeze(-1)
    r = torch.rand(batch, k, generator=generator, device=p.device, dtype=p.dtype)
    keep = r * q_draft < p_draft  # == r < p/q, without dividing; q_draft > 0 since d was drawn from q
    accepted = keep.long().cumprod(1).sum(1)

    # The residual at the first rejection; at accepted == K (all kept) q is zero there: p_{K+1} itself.
    p_next = p[rows, accepted]
    at = accepted.clamp_max(k - 1)
    rejected = (accepted < k)[:, None]
    if q is None:
        residual = p_next.scatter(1, drafts[rows, at][:, None], 0.0)  # max(0, p - onehot(d)) is p without d
        residual = torch.where(rejected, residual, p_next)
    else:
        q_next = q[rows, at] * rejected  # [B, V_draft]
        residual = p_next.clone()
        residual[:, : q.shape[-1]] -= q_next
        residual.clamp_min_(0)
    # An all-zero residual needs p == q at a rejected draft, which exact arithmetic rules out;
    # fall back to p so rounding can never produce an invalid distribution. No need to normalise.
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_next)
    nxt = race(residual, generator)[:, None]  # [B, 1]

    slot = torch.arange(k + 1, device=p.device)
    new = torch.where(slot < accepted[:, None], F.pad(drafts, (0, 1)), nxt)
    return accepted, new
