"""Who proposes tokens. A drafter is any object with these four methods, called by the engine:

    start(batch_size, capacity)                  once per generation, before anything else
    prefill(prompt_tokens)                       once, after the target's prefill: [B, P], right-padded
    propose(seq, lengths, k, sampler) -> (drafts [B, k], q [B, k, V_draft] or None)
    rollback(lengths, host_lengths, done)        after the prefill and after each round

`seq` [B, capacity] is the engine's token buffer (prompt + accepted tokens) and `lengths` [B] (on the
device) the number of valid tokens per row; the last token of each row is not yet in any KV cache.
`q` is the draft distribution the tokens were sampled from, after the sampler's warpers; None means
the drafts are a deterministic function of the context (q one-hot at each draft, e.g. prompt lookup),
and is always fine when greedy. In rollback, rows now hold `lengths` tokens; `host_lengths` are the same
numbers as host ints and `done[b]` says row b has finished (host bools), both from the engine's one read of the
round, so a drafter never needs a device read of its own.
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
        self.feed = 1  # tokens the next propose feeds first: set by every rollback from the arena's lengths
        self.forwards = 0  # draft model forwards in this generation (prefill included)

    def start(self, batch_size: int, capacity: int):
        self.arena = Arena(self.model, batch_size, capacity)
        self.forwards = 0

    def prefill(self, prompt_tokens: torch.Tensor):
        self.arena.forward(prompt_tokens, keep=1)  # only the cache matters here
        # Every row now holds P slots; past a row's own prompt they hold padding, which rollback never keeps.
        self.arena.advance(prompt_tokens.shape[1])
        self.forwards += 1

    def rollback(self, lengths: torch.Tensor, host_lengths: list, done: list):
        # Row b's draft cache holds arena.host[b] tokens, of which the first min(held, L - 1) are right: the
        # target's newest token is in no cache, and every token the draft fed before it was an accepted draft
        # (the first rejected one sits at L - 1). Its gap L - right is 1 after a round that rejected a draft,
        # 2 after one that accepted all K (d_K was never fed), one more per K=0 round (the draft saw nothing).
        # Every row is pointed back by the largest gap among unfinished rows and re-fed that many tokens:
        # rewriting a slot with the same token is harmless, and one shape keeps the batch in one forward.
        # A finished row may be shorter than that: clamped at 0, its draft cache then holds garbage, which
        # is harmless (its drafts are never kept).
        gaps = [n - min(held, n - 1) for n, held, d in zip(host_lengths, self.arena.host, done) if not d]
        self.feed = max(gaps, default=1)
        host = [max(n - self.feed, 0) for n in host_lengths]
        self.arena.point_to((lengths - self.feed).clamp_min(0), max(host), len(set(host)) == 1, host=host)

    def propose(self, seq, lengths, k, sampler):
        tokens = last_tokens(seq, lengths, self.feed)  # see rollback
        # A target with padded output rows (same_tokenizer) could emit an id past the draft's embedding; such a
        # token has no text, so any stand-in only changes what the draft proposes, never what is kept.
        tokens = tokens.clamp_max(self.vocab - 1)
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


class ModelFreeDrafter:
    """A drafter without a model (no cache to fill or roll back): only `propose` is its own."""
    forwards = 0  # never any draft forwards

    def start(self, batch_size: int, capacity: int):
        pass

    def prefill(self, prompt_tokens):
        pass

    def rollback(self, lengths, host_lengths, done):
        pass


class PromptLookupDrafter(ModelFreeDrafter):
    """Model-free drafting (prompt lookup decoding): find the most recent earlier occurrence of the
    row's last n-gram in its own context (n from `max_ngram` down to 1) and propose the K tokens
    that followed it. Rows without a match propose their last token repeated, which costs a verify
    like any proposal but is still lossless. Proposals are deterministic: q is None (one-hot)."""

    def __init__(self, max_ngram: int = 3):
        self.max_ngram = max_ngram

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


def as_drafter(draft) -> tuple:
    """(drafter, draft model or None) behind generate's `draft` (checked already): None, a model, "prompt_lookup" or
    a drafter object. The model is what the prices charge a draft step for; the other drafters' work is free."""
    if isinstance(draft, torch.nn.Module):
        return ModelDrafter(draft), draft
    return (PromptLookupDrafter() if draft == "prompt_lookup" else draft), None
