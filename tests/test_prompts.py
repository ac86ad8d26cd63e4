"""Prompt sets: both file formats, chat-template encoding (and its refusal), stratified subsets, the smoke set."""
import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from specdec.models import ByteTokenizer
from specdec.study.prompts import encode, load_prompts, stratified

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "data" / "prompts"
CATEGORIES = {"code", "chat", "translation", "summarization", "qa", "math", "rag", "extraction"}


@pytest.fixture(scope="module")
def chat_tokenizer():
    """A word-level tokenizer with a chat template, built in-process (no files, no hub)."""
    words = ["[UNK]", "<user>", "<assistant>", "hello", "there", "hi"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
                          "{% if add_generation_prompt %}<assistant>{% endif %}")
    return fast


def test_both_formats_load():
    population = load_prompts(PROMPTS / "population.jsonl")
    assert len(population) == 64 and {p["format"] for p in population} == {"chat", "raw"}
    assert all(("messages" in p) == (p["format"] == "chat") for p in population)
    old = load_prompts(PROMPTS / "prompts.jsonl")  # no `format` on its lines: raw
    assert len(old) == 10 and {p["format"] for p in old} == {"raw"}
    assert [p["id"] for p in load_prompts(PROMPTS / "population.jsonl", categories=["math"])][:1] == \
        [next(p["id"] for p in population if p["category"] == "math")]


def test_a_bad_line_names_itself(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(dict(id="x-1", category="x", format="chat", text="no messages")) + "\n")
    with pytest.raises(ValueError, match=r"line 1 \(x-1\).*missing \['messages'\]"):
        load_prompts(path)


def test_chat_prompt_through_the_template(chat_tokenizer):
    chat = dict(id="chat-x", category="chat", format="chat", messages=[{"role": "user", "content": "hello there"}])
    ids = encode(chat_tokenizer, chat)
    assert ids == [1, 3, 4, 2] and all(type(t) is int for t in ids)  # <user> hello there <assistant>, plain ints
    assert encode(chat_tokenizer, dict(chat, format="raw", text="hi hello")) == [5, 3]


def test_chat_prompt_without_a_template_is_refused():
    chat = load_prompts(PROMPTS / "population.jsonl", categories=["chat"])[0]
    with pytest.raises(ValueError, match=rf"{chat['id']}.*no chat template.*raw prompts.*smoke.jsonl"):
        encode(ByteTokenizer(), chat)


def test_stratified_is_deterministic_and_balanced():
    population = load_prompts(PROMPTS / "population.jsonl")
    subset = stratified(population, 2, seed=3)
    assert subset == stratified(population, 2, seed=3)
    assert [p["id"] for p in subset] != [p["id"] for p in stratified(population, 2, seed=4)]
    cats = [p["category"] for p in subset]
    assert cats == [c for c in dict.fromkeys(p["category"] for p in population) for _ in range(2)]  # grouped, in order
    order = [p["id"] for p in population]
    assert all(order.index(a["id"]) < order.index(b["id"]) for a, b in zip(subset[::2], subset[1::2]))
    with pytest.raises(ValueError, match="fewer than per_category=9"):
        stratified(population, 9)


def test_a_stratified_sample_can_contain_a_smaller_subset():
    """Notebook 01's headline sample holds the subset its repeats and fixed K ran on (timed once, not again)."""
    population = load_prompts(PROMPTS / "population.jsonl")
    small = stratified([p for p in population if p["category"] in ("code", "qa")], 1, seed=5)
    sample = stratified(population, 2, seed=0, keep=small)
    ids = [p["id"] for p in sample]
    assert {p["id"] for p in small} <= set(ids) and len(ids) == len(set(ids)) == 16
    assert [p["category"] for p in sample] == [c for c in dict.fromkeys(p["category"] for p in population) for _ in range(2)]
    assert sample == stratified(population, 2, seed=0, keep=small)
    assert stratified(population, 2, seed=0, keep=()) == stratified(population, 2, seed=0)


def test_smoke_set_is_short_raw_and_covers_every_category():
    smoke = load_prompts(PROMPTS / "smoke.jsonl")
    assert len(smoke) == 16 and {p["format"] for p in smoke} == {"raw"}
    population = load_prompts(PROMPTS / "population.jsonl")
    assert {p["category"] for p in smoke} == CATEGORIES == {p["category"] for p in population}
    assert all([p["category"] for p in smoke].count(c) == 2 for c in CATEGORIES)
    assert len({p["id"] for p in smoke}) == 16 and all(p["id"].startswith(f"smoke-{p['category']}-") for p in smoke)
    assert {p["licence"] for p in smoke} == {"CC0-1.0"}
    # one token per byte: more than a subword tokenizer makes; tiny test models allow 64-128 positions
    assert max(len(ByteTokenizer().encode(p["text"])) for p in smoke) < 40
