"""The batch input contract without AWS or models: line validation, the header, line splitting."""
from __future__ import annotations

import json

import pytest

from functions.core.batch.job import job_id_for
from functions.core.batch.objects import iter_lines
from functions.core.batch.formats import LineError, LineInput, parse_header, parse_line


def parse(raw: bytes, **kw):
    return parse_line(7, raw, model=kw.get("model", "m"), task=kw.get("task"), max_chars=kw.get("max_chars", 50))


def test_valid_line_takes_file_defaults_and_keeps_its_id():
    got = parse(b'{"id": "a1", "input": "hello"}', model="dflt", task="embed")
    assert got == LineInput(7, "hello", "dflt", "embed", "a1")


def test_a_chat_line_carries_its_request_body_and_needs_no_input():
    got = parse(b'{"id": 1, "body": {"messages": []}}', model="gen", task="chat")
    assert got == LineInput(7, "", "gen", "chat", 1, body={"messages": []})
    assert parse(b'{"body": {"messages": []}}', model="gen").task == "chat"   # a body makes it a chat line


@pytest.mark.parametrize("raw, task, code", [
    (b'{"body": {}}', "embed", "invalid_value"),                 # body is for chat lines only
    (b'{"body": {}, "input": "x"}', None, "invalid_value"),      # one or the other
    (b'{"id": 2}', "chat", "missing_field"),
    (b'{"body": "hi"}', "chat", "wrong_type"),
])
def test_malformed_chat_lines_are_line_errors(raw, task, code):
    got = parse(raw, task=task)
    assert isinstance(got, LineError) and got.code == code


def test_line_fields_override_file_defaults():
    got = parse(b'{"input": "x", "model": "other", "task": "classify", "id": 3}', model="dflt", task="embed")
    assert (got.model, got.task, got.id) == ("other", "classify", 3)


@pytest.mark.parametrize("raw, code", [
    (b"\xff\xfe{}", "invalid_utf8"),
    (b"   ", "empty_line"),
    (b"", "empty_line"),
    (b'{"input": "x"', "invalid_json"),
    (b'["x"]', "wrong_type"),
    (b'{"text": "x"}', "unknown_field"),
    (b'{"id": "z"}', "missing_field"),
    (b'{"input": 5}', "wrong_type"),
    (b'{"input": ["a", "b"]}', "wrong_type"),
    (b'{"input": "  "}', "invalid_value"),
    (b'{"input": "' + b"a" * 51 + b'"}', "input_too_long"),
    (b'{"input": "x", "id": {"a": 1}}', "wrong_type"),
    (b'{"input": "x", "id": true}', "wrong_type"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),          # past the parser's recursion limit
    (b'{"input": "x", "task": "generate"}', "invalid_value"),
    (b'{"input": "x", "model": ""}', "wrong_type"),
])
def test_bad_lines_become_errors_with_a_stable_code(raw, code):
    got = parse(raw)
    assert isinstance(got, LineError) and got.code == code and got.line == 7
    out = json.loads(got.json())
    assert set(out) == {"line", "id", "error"} and out["error"]["code"] == code


def test_error_line_carries_the_id_when_the_line_had_one():
    got = parse(b'{"id": "k9", "input": 1}')
    assert json.loads(got.json())["id"] == "k9"


def test_error_message_never_echoes_the_input_text():
    got = parse(b'{"input": "' + b"secret " * 20 + b'"}', max_chars=10)
    assert "secret" not in got.message


def test_header_is_recognised_only_in_its_exact_shape():
    assert parse_header(b'{"defaults": {"model": "m", "task": "classify"}}').task == "classify"
    assert parse_header(b'{"input": "x"}') is None
    assert parse_header(b"not json") is None
    assert parse_header(b"[" * 100_000 + b"]" * 100_000) is None   # nested past the parser: a bad line
    with pytest.raises(ValueError):
        parse_header(b'{"defaults": {"task": "generate"}}')
    with pytest.raises(ValueError):
        parse_header(b'{"defaults": {}, "extra": 1}')


def lines_of(data: bytes, limit: int = 10, block: int = 3):
    blocks = [data[i:i + block] for i in range(0, len(data), block)]
    return list(iter_lines(blocks, limit))


def test_iter_lines_sizes_add_up_to_the_bytes_and_crlf_is_stripped():
    data = b'ab\r\ncd\n\nlast'
    got = lines_of(data)
    assert got == [(b"ab", 4), (b"cd", 3), (b"", 1), (b"last", 4)]
    assert sum(size for _, size in got) == len(data)


def test_iter_lines_trailing_newline_does_not_make_an_extra_line():
    assert [c for c, _ in lines_of(b"a\nb\n")] == [b"a", b"b"]


@pytest.mark.parametrize("block", [1, 2, 5, 64])
def test_iter_lines_marks_overlong_lines_without_losing_the_next(block):
    data = b"short\n" + b"x" * 25 + b"\nafter\n" + b"y" * 11
    got = lines_of(data, limit=10, block=block)
    assert got == [(b"short", 6), (None, 26), (b"after", 6), (None, 11)]


def test_job_id_is_stable_for_the_same_object_and_differs_for_new_bytes():
    a = job_id_for("b", "jobs/input/x.jsonl", '"etag1"')
    assert a == job_id_for("b", "jobs/input/x.jsonl", "etag1")  # S3 events drop the quotes
    assert a != job_id_for("b", "jobs/input/x.jsonl", "etag2")
    assert a.startswith("job_") and len(a) == 28
