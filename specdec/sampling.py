"""Logits -> probabilities, and the two acceptance rules (greedy and Leviathan/Chen sampling).

The same warpers (temperature, top-k, top-p; transformers' own logits processors) are applied to
target and draft distributions, as the losslessness proof requires.
"""
import torch
import torch.nn.functional as F
from transformers.generation.logits_process import (
    LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
)


class Sampler:
    """Sampling settings plus the seeded generator that every random draw of a generation uses."""

    def __init__(self, temperature=0.0, top_k=None, top_p=None, seed=None, device="cpu"):
        self.greedy = temperature == 0
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

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., V] logits -> [..., V] probabilities after the warpers (float32 at least)."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        flat = logits.reshape(-1, logits.shape[-1])
        flat = self.warpers(None, flat)
        return flat.softmax(-1).reshape(logits.shape)

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per distribution: [B, V] -> [B]."""
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)

    def pick(self, logits: torch.Tensor):
        """The next token from [B, V] logits: argmax when greedy, else a sample. Returns (token, probs or None)."""
        if self.greedy:
            return logits.argmax(-1), None
        probs = self.probs(logits)
        return self.sample(probs), probs


def accept_greedy(target_logits: torch.Tensor, drafts: torch.Tensor):
    """Longest prefix of `drafts` [B, K] equal to the target's argmax over `target_logits` [B, K+1, V].

    Returns (accepted [B], new [B, K+1]): row b's new tokens are new[b, :accepted[b] + 1], i.e. the
    accepted drafts (which equal the argmax) followed by the target's own next token.
    """
    best = target_logits.argmax(-1)
    k = drafts.shape[1]
    accepted = (drafts == best[:, :k]).long().cumprod(1).sum(1)
    return accepted, best


def accept_sampled(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator):
    """Speculative sampling (Leviathan et al. 2023, Chen et al. 2023), vectorised over rows.

    p: target probs [B, K+1, V]; q: draft probs [B, K, V]; drafts [B, K] sampled from q.
    Draft i is kept with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection the next
    token is drawn from norm(max(0, p - q)); if all K are kept, the bonus token is drawn from p_{K+1}.
    Returns (accepted [B], new [B, K+1]) like `accept_greedy`.
    """
    batch, k = drafts.shape
    p_draft = p[:, :k].gather(2, drafts[..., None]).squeeze(-1)
    q_draft = q.gather(2, drafts[..., None]).squeeze(-1)
    r = torch.rand(batch, k, generator=generator, device=p.device, dtype=p.dtype)
    keep = r * q_draft < p_draft  # == r < p/q, without dividing; q_draft > 0 since d was drawn from q
    accepted = keep.long().cumprod(1).sum(1)

    rows = torch.arange(batch, device=p.device)
    q_padded = F.pad(q, (0, 0, 0, 1))  # a zero row at K: the residual there is p_{K+1} itself (bonus)
    p_next = p[rows, accepted]
    residual = (p_next - q_padded[rows, accepted]).clamp_min(0)
    total = residual.sum(-1, keepdim=True)
    # An all-zero residual needs p == q at a rejected draft, which exact arithmetic rules out;
    # fall back to p so rounding can never produce an invalid distribution.
    residual = torch.where(total > 0, residual / total.clamp_min(1e-30), p_next)
    nxt = torch.multinomial(residual, 1, generator=generator)  # [B, 1]

    slot = torch.arange(k + 1, device=p.device)
    new = torch.where(slot < accepted[:, None], F.pad(drafts, (0, 1)), nxt)
    return accepted, new
