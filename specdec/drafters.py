"""Who proposes tokens. A drafter has three methods, called by the engine:

    prefill(prompt_tokens)                       once, before the first round
    propose(seq, lengths, k, sampler) -> (drafts [B, k], probs [B, k, V] or None)
    rollback(lengths, longest, behind)           after each round: rows now hold `lengths` tokens;
                                                 `behind`: some row accepted all its drafts

`seq` [B, capacity] is the engine's token buffer (prompt + accepted tokens), `lengths` [B] the
number of valid tokens per row; the last token of each row is not yet in any KV cache.
`probs` is the draft distribution q the tokens were sampled from (None when greedy); a drafter
whose proposals are deterministic returns one-hot q, which keeps sampling lossless.
"""
import torch

from .arena import Arena


def last_tokens(seq: torch.Tensor, lengths: torch.Tensor, n: int) -> torch.Tensor:
    """The last `n` tokens of each row: [B, n]."""
    offsets = torch.arange(-n, 0, device=seq.device)
    return seq.gather(1, lengths[:, None] + offsets)


class ModelDrafter:
    """A small causal LM with its own KV arena and its own per-row lengths."""

    def __init__(self, model):
        self.model = model
        self.arena = None
        self.feed = 1  # tokens fed at the first draft step of a round (1, or 2 to catch up)
        self.forwards = 0  # draft model forwards in this generation (prefill included)

    def start(self, batch_size: int, capacity: int):
        self.arena = Arena(self.model, batch_size, capacity)
        self.forwards = 0

    def prefill(self, prompt_tokens: torch.Tensor):
        self.arena.forward(prompt_tokens, keep=1)  # only the cache matters here
        self.forwards += 1

    def rollback(self, lengths: torch.Tensor, longest: int, behind: bool):
        # The draft's cache lacks the newest token, and also the one before it in a row that
        # accepted all K drafts (d_K was never fed to the draft). If any row is behind, every row
        # is pointed two back and fed two tokens: rewriting a slot with the same token is harmless,
        # and one shape for all rows keeps the batch in one forward.
        self.feed = 2 if behind else 1
        self.arena.point_to(lengths - self.feed, longest - self.feed)

    def propose(self, seq, lengths, k, sampler):
        tokens = last_tokens(seq, lengths, self.feed)
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
    like any proposal but is still lossless. Proposals are deterministic, so q is one-hot."""

    def __init__(self, vocab_size: int, max_ngram: int = 3):
        self.vocab_size = vocab_size
        self.max_ngram = max_ngram
        self.forwards = 0  # no model: never any draft forwards

    def start(self, batch_size: int, capacity: int):
        pass

    def prefill(self, prompt_tokens):
        pass

    def rollback(self, lengths, longest, behind):
        pass

    def propose(self, seq, lengths, k, sampler):
        follow = self.match(seq, lengths)  # [B] index of the first proposed token, -1: no match
        follow = torch.where(follow < 0, lengths - 1, follow)
        # Never read past the row's end (a match near the end has fewer than K successors).
        idx = torch.minimum(follow[:, None] + torch.arange(k, device=seq.device), lengths[:, None] - 1)
        drafts = seq.gather(1, idx)
        if sampler.greedy:
            return drafts, None
        return drafts, torch.nn.functional.one_hot(drafts, self.vocab_size).to(torch.float32)

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

    def next_k(self, k: int, accepted: list[int]) -> int:
        if accepted and all(a == k for a in accepted):
            return min(k + 2, self.high)
        return max(k - 1, self.low)
