"""Prompt sets for the study: loading (data/prompts/*.jsonl), tokenizing a prompt, stratified subsets.

A prompt is {"id", "category", "format", ...}: format "raw" carries `text` (continued as it is), format "chat"
carries `messages` (a list of {"role", "content"}, rendered with the tokenizer's chat template). Lines without
`format` (the older prompts.jsonl) are raw. data/prompts/README.md describes the files.
"""
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

PROMPTS_FILE = Path("data") / "prompts" / "prompts.jsonl"  # relative to the checkout the study runs from
SMOKE_FILE = Path("data") / "prompts" / "smoke.jsonl"  # short raw prompts: any tokenizer, any tiny model
FORMATS = {"raw": "text", "chat": "messages"}  # format -> the field that holds its content


def load_prompts(path=None, categories=None, ids=None) -> list[dict]:
    """The prompts of a .jsonl file (default data/prompts/prompts.jsonl under the current folder: the files live in
    the repository checkout, not inside the package), each with its `format` ("raw" where the line has none),
    optionally filtered by category or id (ids keep the order given)."""
    path = Path(path or PROMPTS_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"prompt set not found at {path}: run from a source checkout of specdec "
                                f"(data/prompts/prompts.jsonl), or pass its path")
    prompts = [parse_line(line, path, n) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if categories is not None:
        unknown = set(categories) - {p["category"] for p in prompts}
        if unknown:
            raise ValueError(f"unknown prompt categories {sorted(unknown)}; choose from "
                             f"{sorted({p['category'] for p in prompts})}")
        prompts = [p for p in prompts if p["category"] in categories]
    if ids is not None:
        by_id = {p["id"]: p for p in prompts}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ValueError(f"unknown prompt ids {unknown}; choose from {sorted(by_id)}")
        prompts = [by_id[i] for i in ids]
    if not prompts:
        raise ValueError(f"no prompts left after filtering {path} (categories={categories}, ids={ids})")
    return prompts


def parse_line(line, path, n) -> dict:
    """One line of a prompt file, checked: a bad line names itself rather than failing later in a sweep."""
    prompt = json.loads(line)
    prompt = dict(prompt, format=prompt.get("format", "raw"))
    field = FORMATS.get(prompt["format"])
    missing = [k for k in ("id", "category", field) if k is not None and k not in prompt]
    if field is None or missing:
        raise ValueError(f"{path} line {n} ({prompt.get('id', 'no id')}): format {prompt['format']!r} needs "
                         f"id, category and {field or 'one of ' + str(sorted(FORMATS))}; missing {missing}")
    return prompt


def encode(tokenizer, prompt) -> list[int]:
    """A prompt's token ids: raw text as tokenizer.encode gives it, chat messages through the tokenizer's chat
    template with the assistant's turn opened (what an instruct model answers)."""
    if prompt.get("format", "raw") == "raw":  # a dict without a format (older sets, callers) is raw text
        return list(tokenizer.encode(prompt["text"]))
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"prompt {prompt['id']!r} is a chat prompt, but the tokenizer "
                         f"({getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}) has no chat template: "
                         f"use raw prompts with this model, e.g. {SMOKE_FILE}")
    ids = tokenizer.apply_chat_template(prompt["messages"], add_generation_prompt=True, tokenize=True)
    if isinstance(ids, Mapping):  # transformers 5 returns a BatchEncoding (input_ids and attention_mask)
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def stratified(prompts, per_category, seed=0, keep=()) -> list[dict]:
    """`per_category` prompts from every category, chosen at random but deterministically in `seed`: categories
    in the order they first appear, each one's prompts in file order, so the subset of a seed never changes.
    `keep`: prompts chosen first where their category has room (a sample that contains a smaller subset)."""
    rng = np.random.default_rng([seed, 23])  # its own stream: independent of sampling and run order
    categories = list(dict.fromkeys(p["category"] for p in prompts))
    kept = {p["id"] for p in keep}
    subset = []
    for cat in categories:
        members = [p for p in prompts if p["category"] == cat]
        if per_category > len(members):
            raise ValueError(f"category {cat!r} has {len(members)} prompts, fewer than per_category={per_category}")
        first = [i for i, p in enumerate(members) if p["id"] in kept][:per_category]
        rest = [i for i in range(len(members)) if i not in first]
        chosen = sorted(first + list(rng.choice(rest, size=per_category - len(first), replace=False)))
        subset += [members[i] for i in chosen]
    return subset
