import logging

import pytest

from rsd_rerank.prompt import (
    IDENTIFIERS,
    PromptConfig,
    build_prompt,
    check_candidates,
    ranking_layout,
    ranking_text,
    warn_context_cuts,
)


def test_layout_reproduces_the_tokenizers_own_encoding(smollm2):
    tok = smollm2.tokenizer
    layout = ranking_layout(tok, 20)
    assert tok.convert_ids_to_tokens(list(layout.head)) == ["["]
    assert tok.convert_ids_to_tokens(list(layout.sep)) == ["]", "Ġ>", "Ġ["]
    assert tok.convert_ids_to_tokens(list(layout.first_ids)) == list(IDENTIFIERS[:20])
    ranking = [3, 0, 19, 7] + [i for i in range(20) if i not in (3, 0, 19, 7)]
    assert layout.tokens(ranking) == tok.encode(ranking_text(ranking), add_special_tokens=False)
    assert ranking_text([1, 0, 2]) == "[B] > [A] > [C]"


class _SplitsQ:
    """A stand-in tokenizer: one token per character, except that 'Q' becomes two tokens."""

    def encode(self, text, add_special_tokens=False):
        out = []
        for ch in text:
            out += [900, 901] if ch == "Q" else [ord(ch)]
        return out

    def convert_ids_to_tokens(self, ids):
        return [str(i) for i in ids]


class _QIsP(_SplitsQ):
    """'Q' and 'P' tokenise alike: two identifiers the LLM cannot tell apart."""

    def encode(self, text, add_special_tokens=False):
        return [ord("P") if ch == "Q" else ord(ch) for ch in text]


def test_layout_takes_multi_token_identifiers_and_names_ambiguous_ones():
    assert ranking_layout(_SplitsQ(), 16).single_token  # A..P are single characters
    layout = ranking_layout(_SplitsQ(), 17)
    assert not layout.single_token and layout.later_pieces[16] == (900, 901)
    with pytest.raises(ValueError, match=r"'\[Q\]'.*prefix-free"):
        ranking_layout(_QIsP(), 17)


@pytest.mark.parametrize(
    ("docids", "message"),
    [([], "no candidates"), (["a", "b", "a"], "duplicate docid 'a'"), ([str(i) for i in range(27)], "27 candidates")],
)
def test_bad_candidate_lists(docids, message):
    with pytest.raises(ValueError, match=message):
        check_candidates(docids)


def test_prompt_is_rankllms_with_chat_template(smollm2, query_docs):
    query, docs = query_docs[0]
    prompt = build_prompt(smollm2.tokenizer, query, docs)
    text = smollm2.tokenizer.decode(prompt.token_ids)
    assert text.startswith("<|im_start|>system\nYou are RankLLM")
    assert text.endswith("<|im_start|>assistant\n[")  # the first-slot distribution is read after "["
    assert f"[T] {docs[19]['text']}" in text and f"search query: {query}" in text
    assert prompt.passage_words == 300 and prompt.truncated_passages == 0


def test_long_passages_shrink_to_fit_the_context(smollm2, caplog):
    docs = [" ".join(f"word{i}x{j}" for j in range(400)) for i in range(20)]
    config = PromptConfig(context_size=2000)
    with caplog.at_level(logging.WARNING):
        prompt = build_prompt(smollm2.tokenizer, "q", docs, config)
    assert len(prompt.token_ids) + len(prompt.layout.tokens(range(20))) <= 2000
    assert prompt.passage_words < 300 and prompt.truncated_passages == 20
    assert caplog.text == ""  # one prompt of many: a run reports its cuts once
    with caplog.at_level(logging.WARNING):
        warn_context_cuts([prompt.passage_words, 300, prompt.passage_words], config)
    assert caplog.text.count("WARNING") == 1
    assert f"in 2 of 3 prompts (down to {prompt.passage_words} words)" in caplog.text


def test_max_passage_words_cuts_each_passage(smollm2):
    docs = [{"title": "T", "text": "alpha beta gamma delta"}, "one two"]
    prompt = build_prompt(smollm2.tokenizer, "q", docs, PromptConfig(max_passage_words=3))
    text = smollm2.tokenizer.decode(prompt.token_ids)
    assert "[A] Title: T Content:\n" in text  # RankLLM counts title words too
    assert prompt.truncated_passages == 1


def test_prompt_errors(smollm2):
    with pytest.raises(ValueError, match="even with 1 word per passage"):
        build_prompt(smollm2.tokenizer, "q " * 300, ["a", "b"], PromptConfig(context_size=200))
    with pytest.raises(ValueError, match="none of the fields RankLLM reads"):
        build_prompt(smollm2.tokenizer, "q", [{"url": "x"}, "b"])
    with pytest.raises(ValueError, match="neither a file nor one of RankLLM's templates"):
        build_prompt(smollm2.tokenizer, "q", ["a", "b"], PromptConfig(template="nope.yaml"))
    with pytest.raises(ValueError, match="not a RankLLM 'singleturn_listwise'"):
        build_prompt(smollm2.tokenizer, "q", ["a", "b"], PromptConfig(template="duot5_template.yaml"))


def test_one_candidate_layout_keeps_the_identifier_token(smollm2):
    layout = ranking_layout(smollm2.tokenizer, 1)
    assert smollm2.tokenizer.convert_ids_to_tokens(list(layout.first_ids)) == ["A"]
    assert layout.tokens([0]) == smollm2.tokenizer.encode("[A]", add_special_tokens=False)


def test_a_second_command_over_the_same_requests_builds_no_prompt(tmp_path, monkeypatch, requests_json):
    """``compare`` twice over the same requests: the first builds every prompt through RankLLM, the second
    none (they come from the content-keyed cache), and both give the same table. A changed passage budget
    or passage text is another prompt, built anew."""
    import json

    import rsd_rerank.prompt as prompt
    from rsd_rerank import prompt_cache
    from rsd_rerank.cli import main

    monkeypatch.setattr(prompt_cache, "ROOT", tmp_path / "prompts")
    built = []
    real = prompt._fitted_prompt
    monkeypatch.setattr(prompt, "_fitted_prompt", lambda *a, **k: built.append(a[1]) or real(*a, **k))
    requests = tmp_path / "r.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in requests_json))
    args = ["compare", "--model", "random-llama", "--requests", str(requests), "--methods", "std,gsd", "--budgets", "1"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert len(built) == len(requests_json)
    assert main([*args, "--out", str(tmp_path / "two")]) == 0
    assert len(built) == len(requests_json)  # none built the second time
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert [r["ranking"] for r in one["records"]] == [r["ranking"] for r in two["records"]]
    assert main([*args, "--max-passage-words", "50", "--out", str(tmp_path / "three")]) == 0
    assert len(built) == 2 * len(requests_json)
    edited = [dict(requests_json[0], candidates=[dict(c) for c in requests_json[0]["candidates"]])]
    edited[0]["candidates"][3]["doc"] = {"text": "another passage"}
    requests.write_text(json.dumps(edited[0]) + "\n")
    assert main([*args, "--out", str(tmp_path / "four")]) == 0
    assert len(built) == 2 * len(requests_json) + 1


def test_a_cached_prompt_equals_a_fresh_one(smollm2, query_docs, tmp_path, monkeypatch):
    from rsd_rerank import prompt_cache

    monkeypatch.setattr(prompt_cache, "ROOT", tmp_path / "prompts")
    query, docs = query_docs[0]
    config = PromptConfig(max_passage_words=8)  # a cut prompt: passage_words and truncation are kept too
    fresh = build_prompt(smollm2.tokenizer, query, docs, config)
    assert len(list((tmp_path / "prompts").rglob("*.json"))) == 1
    assert build_prompt(smollm2.tokenizer, query, docs, config) == fresh and fresh.truncated_passages > 0
    (entry,) = (tmp_path / "prompts").rglob("*.json")
    entry.write_text("{not json")  # a damaged entry is rebuilt, not trusted
    assert build_prompt(smollm2.tokenizer, query, docs, config) == fresh
