"""Who proposes tokens. A drafter is any object with these four methods, called by the engine:

    start(batch_size, capacity)                  once per generation, before anything else
    prefill(prompt_tokens)                       once, after the target's prefill: [B, P], right-padded
    propose(seq, lengths, k, sampler) -> (drafts [B, k], q [B, k, V_draft] or None)
    rollback(lengths, longest, behind, aligned)  after each round: rows now hold `lengths` tokens

`seq` [B, capacity] is the engine's token buffer (prompt + accepted tokens) and `lengths` [B] (on the
device) the number of valid tokens per row; the last token of each row is not yet in any KV cache.
`q` is the draft distribution the tokens were sampled from, after the sampler's warpers; None means
the drafts are a deterministic function of the context (q one-hot at each draft, e.g. prompt lookup),
and is always fine when greedy. In rollback, `longest` is max(lengths) as a host int, `behind` says some
row accepted all its drafts, and `aligned` that every row has length `longest` (both host bools).
"""
import torch

from .arena import Arena


def last_tokens(seq: torch.Tensor, lengths: torch.Tensor, n: int) -> torch.Tensor:
    """The last `n` tokens of each row: [B, n]."""
    offsets = torch.arange(-n, 0, device=seq.device)
    return seq.gather(1, (lengths[:, None] + offsets).clamp_min(0))  # a row shorter than n repeats its slot 0


class ModelDrafter:
    """A small causal LM with its own KV arena and its own per-row lengths."""

    def __init__(self, model):
        self.model = model
        self.vocab = model.get_input_embeddings().num_embeddings
        self.arena = None
        self.feed = 0  # tokens fed at the first draft step of a round (1, or more to catch up); see start
        self.proposed = False  # whether the round that just ended drafted (K=0 rounds do not)
        self.forwards = 0  # draft model forwards in this generation (prefill included)

    def start(self, batch_size: int, capacity: int):
        self.arena = Arena(self.model, batch_size, capacity)
        self.forwards = 0
        # Per generation: the rollback after prefill then feeds just the first new token (the prompt is cached),
        # and a drafter reused across generations does not carry the last one's catch-up into the next.
        self.feed, self.proposed = 0, False

    def prefill(self, prompt_tokens: torch.Tensor):
        self.arena.forward(prompt_tokens, keep=1)  # only the cache matters here
        self.forwards += 1

    def rollback(self, lengths: torch.Tensor, longest: int, behind: bool, aligned: bool = False):
        # After a drafting round the draft's cache lacks the newest token, and also the one before it
        # in a row that accepted all K drafts (d_K was never fed to the draft). After a round at K=0
        # (the target alone) it saw nothing, so every row is one more token behind than before.
        # Every row is pointed `feed` back and fed `feed` tokens: rewriting a slot with the same token
        # is harmless, and one shape for all rows keeps the batch in one forward. Host ints only.
        self.feed = (2 if behind else 1) if self.proposed else self.feed + 1
        self.proposed = False
        # A finished row stops growing, so after a long K=0 streak it may be shorter than `feed`: clamp it
        # at 0. Its draft cache then holds garbage, which is harmless: its drafts are never kept. Every
        # unfinished row grew by one token per K=0 round, so it is at least `feed` long.
        self.arena.point_to((lengths - self.feed).clamp_min(0), longest - self.feed, aligned)

    def propose(self, seq, lengths, k, sampler):
        tokens = last_tokens(seq, lengths, self.feed)  # see rollback
        # A target with padded output rows (same_tokenizer) could emit an id past the draft's embedding; such a
        # token has no text, so any stand-in only changes what the draft proposes, never what is kept.
        tokens = tokens.clamp_max(self.vocab - 1)
        self.proposed = True
        drafts, probs = [], []
        for _ in range(k):
            logits = self.arena.forward(tokens, keep=1)[:, -1]
            self.arena.advance(tokens.shape[1])
            self.forwards += 1
            token, q = sampler.pick(logits)
            drafts.append(token)
            probs.append(q)
            tokens = token[:, None]
        return torch.stack(drafts, 1), (None if sampler.greedy else torch.stack(probs, 1))


class PromptLookupDrafter:
    """Model-free drafting (prompt lookup decoding): find the most recent earlier occurrence of the
    row's last n-gram in its own context (n from `max_ngram` down to 1) and propose the K tokens
    that followed it. Rows without a match propose their last token repeated, which costs a verify
    like any proposal but is still lossless. Proposals are deterministic: q is None (one-hot)."""

    def __init__(self, max_ngram: int = 3):
        self.max_ngram = max_ngram
        self.forwards = 0  # no model: never any draft forwards

    def start(self, batch_size: int, capacity: int):
        pass

    def prefill(self, prompt_tokens):
        pass

    def rollback(self, lengths, longest, behind, aligned=False):
        pass

    def propose(self, seq, lengths, k, sampler):
        follow = self.match(seq, lengths)  # [B] index of the first proposed token, -1: no match
        follow = torch.where(follow < 0, lengths - 1, follow)
        # Never read past the row's end (a match near the end has fewer than K successors).
        idx = torch.minimum(follow[:, None] + torch.arange(k, device=seq.device), lengths[:, None] - 1)
        return seq.gather(1, idx), None

    def match(self, seq, lengths):
        """For each row, the index right after the most recent earlier occurrence of its longest
        matching tail n-gram; -1 where no n-gram (n >= 1) recurs."""
        found = torch.full_like(lengths, -1)
        for n in range(self.max_ngram, 0, -1):
            if seq.shape[1] <= n:
                continue
            windows = seq.unfold(1, n, 1)  # [B, W, n]; window i covers tokens i .. i+n-1
            tail_idx = (lengths[:, None] - n + torch.arange(n, device=seq.device)).clamp_min(0)
            tail = seq.gather(1, tail_idx)
            start = torch.arange(windows.shape[1], device=seq.device)
            # An earlier occurrence must be followed by a real token: i + n < L (this also
            # excludes the tail itself, which starts at L - n).
            hit = (windows == tail[:, None]).all(-1) & (start + n < lengths[:, None])
            latest = torch.where(hit, start, -1).max(1).values
            found = torch.where((found < 0) & (latest >= 0), latest + n, found)
        return found


class AdaptiveK:
    """Dynamic K, Hugging Face's heuristic schedule per batch: +2 after a round in which every
    unfinished row accepted all K drafts, -1 (not below `low`) after any other round."""

    def __init__(self, start: int = 4, low: int = 1, high: int = 16):
        if not 1 <= low <= start <= high:
            raise ValueError(f"AdaptiveK needs 1 <= low <= start <= high; got low={low}, start={start}, high={high}")
        self.start, self.low, self.high = start, low, high

    def next_k(self, k: int, accepted: list) -> int:
        """`accepted[b]`: drafts row b accepted in the round just run; None for finished rows."""
        accepted = [a for a in accepted if a is not None]
        if accepted and all(a == k for a in accepted):
            return min(k + 2, self.high)
        return max(k - 1, self.low)
