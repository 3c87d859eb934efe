"""Tests for nettee's wire protocol: framing, typed messages, handshake, data header, reports."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beokit import auth
from beokit.errors import WireError
from beokit.nettee.handshake import (
    answer_hello,
    check_join,
    check_welcome,
    data_token,
    hello,
    welcome,
)
from beokit.nettee.messages import (
    Abort,
    Adopted,
    Await,
    End,
    Fail,
    Heal,
    Hello,
    Join,
    Kid,
    MessageDecoder,
    Ping,
    Ready,
    Refuse,
    SubtreeReport,
    Welcome,
    decode,
)
from beokit.nettee.messages import encode as encode_message
from beokit.nettee.protocol import (
    CODE_MAX,
    CODE_TEXT,
    DATA_HEADER,
    FRAME,
    MAGIC,
    MAX_FRAME,
    NAME_MAX,
    TEXT_MAX,
    VERSION,
    AuthError,
    Code,
    CommandResult,
    Commands,
    FrameDecoder,
    NodeResult,
    ProtocolError,
    chain_line,
    check_counts,
    child_line,
    data_header,
    format_codes,
    parse_data_header,
    printable,
    sort_codes,
)
from beokit.nettee.protocol import encode_frame as encode

NONCE_C = bytes(range(16))
NONCE_P = bytes(range(100, 132))
SECRET = b"correct horse battery staple"
CHILD_ID = "child-uuid"
PATH = ["root-uuid", "mid-uuid"]


def wire(msg):
    """Send one message through encode/MessageDecoder, as it would cross the socket."""
    (got,) = MessageDecoder().feed(encode_message(msg))
    return got


def as_json(msg) -> dict:
    """A message as the JSON object on the wire."""
    (got,) = FrameDecoder().feed(encode_message(msg))
    return got


def parse_report(obj: dict) -> list[NodeResult]:
    msg = decode(obj)
    if not isinstance(msg, SubtreeReport):
        raise ProtocolError("bad report")
    return list(msg.nodes)


def report(nodes: list[NodeResult]) -> SubtreeReport:
    return SubtreeReport(tuple(nodes))


def frame(body: bytes) -> bytes:
    return FRAME.pack(len(body)) + body


# ================================================================ framing


def test_encode_is_length_prefixed_compact_json():
    raw = encode({"t": "x", "n": 1})
    assert raw == b"\x00\x00\x00\x0f" + b'{"t":"x","n":1}'
    assert FRAME.size == 4


def test_decode_one_frame():
    d = FrameDecoder()
    assert d.feed(encode({"t": "hello", "v": 1})) == [{"t": "hello", "v": 1}]
    assert d.pending == 0


def test_byte_at_a_time():
    msgs = [{"t": "a", "x": [1, 2, 3]}, {"t": "b"}, {"t": "c", "s": "é\u2603"}]
    stream = b"".join(encode(m) for m in msgs)
    d = FrameDecoder()
    out = []
    for i in range(len(stream)):
        got = d.feed(stream[i : i + 1])
        assert len(got) <= 1
        out += got
        if got:
            assert d.pending == 0
    assert out == msgs
    assert d.pending == 0


def test_nothing_until_the_frame_is_complete():
    raw = encode({"t": "x", "pad": "y" * 100})
    d = FrameDecoder()
    assert d.feed(raw[:2]) == []  # not even a length yet
    assert d.pending == 2
    assert d.feed(raw[2:-1]) == []
    assert d.pending == len(raw) - 1
    assert d.feed(raw[-1:]) == [{"t": "x", "pad": "y" * 100}]
    assert d.pending == 0


def test_multiple_frames_per_feed():
    msgs = [{"t": str(i), "i": i} for i in range(50)]
    d = FrameDecoder()
    assert d.feed(b"".join(encode(m) for m in msgs)) == msgs


def test_multiple_frames_plus_a_partial_one():
    a, b, c = encode({"t": "a"}), encode({"t": "b"}), encode({"t": "c"})
    d = FrameDecoder()
    assert d.feed(a + b + c[:3]) == [{"t": "a"}, {"t": "b"}]
    assert d.pending == 3
    assert d.feed(c[3:]) == [{"t": "c"}]


def test_empty_feed():
    d = FrameDecoder()
    assert d.feed(b"") == []
    assert d.pending == 0


def test_oversize_frame_announced_is_rejected_at_once():
    d = FrameDecoder()
    with pytest.raises(ProtocolError, match="frame of"):
        d.feed(FRAME.pack(MAX_FRAME + 1))
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


def test_frame_of_exactly_max_size_is_waited_for():
    d = FrameDecoder()
    assert d.feed(FRAME.pack(MAX_FRAME) + b"{") == []


def test_oversize_frame_after_good_ones():
    d = FrameDecoder()
    with pytest.raises(ProtocolError):
        d.feed(encode({"t": "a"}) + FRAME.pack(MAX_FRAME + 1))


def test_encode_refuses_oversize_message():
    with pytest.raises(ProtocolError, match="too large"):
        encode({"t": "x", "blob": "a" * (MAX_FRAME + 1)})


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"{",
        b'{"t": "x"',
        b"\xff\xfe\xfd\xfc",
        b"\x80abc",
        b"[1, 2]",
        b'"t"',
        b"42",
        b"null",
        b"{}",
        b'{"t": 5}',
        b'{"t": null}',
        b'{"t": ["x"]}',
        b'{"type": "x"}',
    ],
)
def test_garbage_is_a_protocol_error(body):
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(frame(body))


def test_http_request_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_deeply_nested_json_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(frame(b"[" * 100_000))


def test_huge_integer_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(frame(b'{"t":"x","n":' + b"9" * 5000 + b"}"))


# ---------------------------------------------------------------- framing properties

JSON_SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
MESSAGE = st.builds(
    lambda t, rest: {**rest, "t": t},
    st.text(max_size=10),
    st.dictionaries(st.text(max_size=8), JSON_VALUE, max_size=4),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(MESSAGE, max_size=6), st.data())
def test_messages_survive_any_split(msgs, data):
    stream = b"".join(encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    bounds = [0, *cuts, len(stream)]
    d = FrameDecoder()
    out = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        out += d.feed(stream[a:b])
    assert out == msgs
    assert d.pending == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=64) | st.binary(max_size=64).map(frame), max_size=6))
def test_feed_on_arbitrary_bytes_only_raises_protocol_error(chunks):
    d = FrameDecoder()
    try:
        for chunk in chunks:
            for msg in d.feed(chunk):
                assert isinstance(msg, dict) and isinstance(msg["t"], str)
    except ProtocolError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_feed_on_arbitrary_framed_body_only_raises_protocol_error(body):
    try:
        msgs = FrameDecoder().feed(frame(body))
    except ProtocolError:
        return
    assert len(msgs) == 1 and isinstance(msgs[0]["t"], str)


# ================================================================ handshake


def run_handshake(secret_c: bytes | None, secret_p: bytes | None, offset: int = 0):
    h = hello(NONCE_C, secret_c, "child")
    join, nonce_c = answer_hello(wire(h), NONCE_P, secret_p, "parent", "session-1", PATH)
    assert nonce_c == NONCE_C
    nonce_p = check_join(wire(join), NONCE_C, secret_c, CHILD_ID)
    assert nonce_p == NONCE_P
    w = welcome(NONCE_C, nonce_p, secret_c, "child")
    name = check_welcome(wire(w), nonce_c, NONCE_P, secret_p)
    tok_p = data_token(secret_p, nonce_c, NONCE_P)
    tok_c = data_token(secret_c, NONCE_C, nonce_p)
    assert tok_p == tok_c
    assert len(tok_p) == 16
    assert parse_data_header(data_header(tok_p, offset), tok_c) == offset
    return h, join, w, name, tok_p


@pytest.mark.parametrize("secret", [SECRET, None])
def test_happy_path(secret):
    h, join, w, name, _tok = run_handshake(secret, secret)
    assert name == "child"
    h, join, w = as_json(h), as_json(join), as_json(w)
    assert h == {"t": "hello", "v": VERSION, "nonce": NONCE_C.hex(), "auth": secret is not None,
                 "name": "child"}  # fmt: skip
    assert join["t"] == "join" and join["v"] == VERSION
    assert join["nonce"] == NONCE_P.hex()
    assert join["name"] == "parent" and join["session"] == "session-1" and join["path"] == PATH
    assert w["t"] == "welcome" and w["name"] == "child"
    if secret is None:
        assert join["mac"] is None and w["mac"] is None
    else:
        assert isinstance(join["mac"], str) and isinstance(w["mac"], str)
        assert join["mac"] != w["mac"]  # parent and child proofs use different labels


def test_proofs_are_beokit_auth_macs_with_one_label_per_direction():
    join, _ = answer_hello(hello(NONCE_C, SECRET, "c"), NONCE_P, SECRET, "p", "s", PATH)
    assert join.mac == auth.mac(SECRET, "nettee-parent", NONCE_C, NONCE_P).hex()
    w = welcome(NONCE_C, NONCE_P, SECRET, "c")
    assert w.mac == auth.mac(SECRET, "nettee-child", NONCE_P, NONCE_C).hex()
    assert data_token(SECRET, NONCE_C, NONCE_P) == auth.mac(SECRET, "nettee-data", NONCE_C,
                                                            NONCE_P)[:16]  # fmt: skip


def test_happy_path_with_offset():
    run_handshake(SECRET, SECRET, offset=2**40 + 7)


def test_secret_never_crosses_the_wire():
    h, join, w, _name, _tok = run_handshake(SECRET, SECRET)
    for msg in (h, join, w):
        blob = encode_message(msg)
        assert SECRET not in blob and SECRET.hex().encode() not in blob


def test_token_depends_on_secret_and_nonces():
    base = data_token(SECRET, NONCE_C, NONCE_P)
    assert data_token(None, NONCE_C, NONCE_P) != base
    assert data_token(b"other", NONCE_C, NONCE_P) != base
    assert data_token(SECRET, NONCE_P[:16], NONCE_P) != base
    assert data_token(SECRET, NONCE_C, NONCE_C + NONCE_C) != base
    assert data_token(SECRET, NONCE_C, NONCE_P) == base  # deterministic


def test_check_welcome_name_fallback():
    w = {"t": "welcome", "mac": None}
    assert check_welcome(decode(w), NONCE_C, NONCE_P, None) == "?"
    assert check_welcome(decode({**w, "name": ""}), NONCE_C, NONCE_P, None) == "?"
    assert check_welcome(decode({**w, "name": 7}), NONCE_C, NONCE_P, None) == "?"


# ---------------------------------------------------------------- wrong or missing secret


def test_wrong_secret_child_detects_parent():
    h = hello(NONCE_C, b"child-secret", "child")
    join, _ = answer_hello(h, NONCE_P, b"parent-secret", "parent", "s", PATH)
    with pytest.raises(AuthError, match="parent failed"):
        check_join(join, NONCE_C, b"child-secret", CHILD_ID)


def test_wrong_secret_parent_detects_child():
    w = welcome(NONCE_C, NONCE_P, b"child-secret", "child")
    with pytest.raises(AuthError, match="child failed"):
        check_welcome(w, NONCE_C, NONCE_P, b"parent-secret")


def test_welcome_proof_is_bound_to_the_nonces():
    w = welcome(NONCE_C, NONCE_P, SECRET, "child")
    with pytest.raises(AuthError):
        check_welcome(w, NONCE_C, bytes(32), SECRET)


def test_join_proof_is_bound_to_the_nonces():
    join, _ = answer_hello(hello(NONCE_C, SECRET, "c"), NONCE_P, SECRET, "p", "s", PATH)
    with pytest.raises(AuthError):
        check_join(join, bytes(16), SECRET, CHILD_ID)


def test_replayed_parent_proof_as_child_proof_fails():
    join, _ = answer_hello(hello(NONCE_C, SECRET, "c"), NONCE_P, SECRET, "p", "s", PATH)
    with pytest.raises(AuthError):
        check_welcome(Welcome(join.mac, "c"), NONCE_C, NONCE_P, SECRET)


def test_secret_on_child_only_parent_tells():
    h = hello(NONCE_C, SECRET, "child")
    with pytest.raises(AuthError) as exc:
        answer_hello(h, NONCE_P, None, "parent", "s", PATH)
    msg = str(exc.value)
    assert "requires a shared secret" in msg and "this node has none" in msg


def test_secret_on_child_only_child_tells():
    # a parent without a secret sends no proof; a child holding a secret notices
    join, _ = answer_hello(hello(NONCE_C, None, "c"), NONCE_P, None, "p", "s", PATH)
    with pytest.raises(AuthError) as exc:
        check_join(join, NONCE_C, SECRET, CHILD_ID)
    msg = str(exc.value)
    assert "parent sent no proof" in msg and "NETTEE_SECRET" in msg


def test_secret_on_parent_only_parent_tells():
    h = hello(NONCE_C, None, "child")
    with pytest.raises(AuthError) as exc:
        answer_hello(h, NONCE_P, SECRET, "parent", "s", PATH)
    assert "it has no shared secret and this node requires one" in str(exc.value)


def test_auth_error_for_peer_defaults_to_the_message():
    err = AuthError("wrong secret")
    assert str(err) == "wrong secret" and err.for_peer == "wrong secret"
    assert isinstance(err, ProtocolError) and isinstance(err, WireError)


def test_secret_on_child_only_for_peer_wording():
    with pytest.raises(AuthError) as exc:
        answer_hello(hello(NONCE_C, SECRET, "c"), NONCE_P, None, "p", "s", PATH)
    # sent to the child in a refuse: worded from the child's point of view
    assert exc.value.for_peer == "the parent has no shared secret and this node requires one"


def test_secret_on_parent_only_for_peer_wording():
    with pytest.raises(AuthError) as exc:
        answer_hello(hello(NONCE_C, None, "c"), NONCE_P, SECRET, "p", "s", PATH)
    peer = exc.value.for_peer
    assert "this node has no shared secret and the parent requires one" in peer
    assert "NETTEE_SECRET" in peer


def test_secret_on_parent_only_welcome_without_proof_fails():
    w = welcome(NONCE_C, NONCE_P, None, "child")
    with pytest.raises(AuthError):
        check_welcome(w, NONCE_C, NONCE_P, SECRET)


@pytest.mark.parametrize("mac", [None, 5, "", "zz", "00" * 32, "not hex at all"])
def test_check_welcome_bad_proofs(mac):
    with pytest.raises(AuthError):
        check_welcome(decode({"t": "welcome", "mac": mac, "name": "c"}), NONCE_C, NONCE_P, SECRET)


@pytest.mark.parametrize("mac, why", [("zz", "malformed"), ("00" * 32, "wrong secret"),
                                      (None, "no proof"), (7, "no proof")])  # fmt: skip
def test_check_join_bad_proofs(mac, why):
    join = {"t": "join", "v": VERSION, "nonce": NONCE_P.hex(), "mac": mac, "path": []}
    with pytest.raises(AuthError, match=why):
        check_join(decode(join), NONCE_C, SECRET, CHILD_ID)


def test_refuse_is_an_auth_error_with_the_reason():
    with pytest.raises(AuthError, match="refused: busy"):
        answer_hello(Refuse("busy"), NONCE_P, None, "p", "s", PATH)
    with pytest.raises(AuthError, match="refused: loop"):
        check_welcome(decode({"t": "refuse", "why": "loop"}), NONCE_C, NONCE_P, None)
    with pytest.raises(AuthError, match="no reason given"):
        check_welcome(decode({"t": "refuse"}), NONCE_C, NONCE_P, None)
    with pytest.raises(AuthError, match="refused: busy"):
        check_join(Refuse("busy"), NONCE_C, None, CHILD_ID)


# ---------------------------------------------------------------- malformed handshake messages


def good_hello(**kw) -> dict:
    return {**as_json(hello(NONCE_C, None, "child")), **kw}


def good_join(**kw) -> dict:
    join, _ = answer_hello(decode(good_hello()), NONCE_P, None, "parent", "s", PATH)
    return {**as_json(join), **kw}


@pytest.mark.parametrize(
    "msg",
    [
        {"t": "join"},
        {},
        good_hello(v=VERSION + 1),
        good_hello(v=None),
        good_hello(nonce="abcd"),  # too short
        good_hello(nonce="zz" * 16),
        good_hello(nonce=12345),
        good_hello(nonce=None),
        {"t": "hello", "v": VERSION, "auth": False},
    ],
)
def test_answer_hello_rejects_bad_hello(msg):
    with pytest.raises(ProtocolError) as exc:
        answer_hello(decode(msg), NONCE_P, None, "p", "s", PATH)
    assert type(exc.value) is ProtocolError


@pytest.mark.parametrize(
    "msg",
    [
        good_hello(t="welcome"),
        good_join(v=0),
        good_join(nonce="00"),
        good_join(nonce=None),
        good_join(path=None),
        good_join(path="root-uuid"),
        {k: v for k, v in good_join().items() if k != "path"},
    ],
)
def test_check_join_rejects_bad_join(msg):
    with pytest.raises(ProtocolError) as exc:
        check_join(decode(msg), NONCE_C, None, CHILD_ID)
    assert type(exc.value) is ProtocolError


def test_check_welcome_rejects_other_types():
    with pytest.raises(ProtocolError) as exc:
        check_welcome(hello(NONCE_C, None, "c"), NONCE_C, NONCE_P, None)
    assert type(exc.value) is ProtocolError


@pytest.mark.parametrize("path", [[CHILD_ID], ["root-uuid", CHILD_ID], [CHILD_ID, "x", "y"]])
@pytest.mark.parametrize("secret", [None, SECRET])
def test_loop_detection(path, secret):
    join, _ = answer_hello(hello(NONCE_C, secret, "c"), NONCE_P, secret, "p", "s", path)
    with pytest.raises(ProtocolError, match="loop") as exc:
        check_join(wire(join), NONCE_C, secret, CHILD_ID)
    assert not isinstance(exc.value, AuthError)


def test_no_loop_when_absent_from_path():
    join, _ = answer_hello(hello(NONCE_C, None, "c"), NONCE_P, None, "p", "s", [])
    assert check_join(join, NONCE_C, None, CHILD_ID) == NONCE_P


# ---------------------------------------------------------------- data header


def test_data_header_layout():
    token = data_token(SECRET, NONCE_C, NONCE_P)
    raw = data_header(token, 5)
    assert len(raw) == DATA_HEADER.size == 32
    assert raw[:8] == MAGIC
    assert raw[8:24] == token
    assert int.from_bytes(raw[24:], "big") == 5


@pytest.mark.parametrize("offset", [0, 1, 2**32, 2**64 - 1])
def test_data_header_round_trip(offset):
    token = data_token(None, NONCE_C, NONCE_P)
    assert parse_data_header(data_header(token, offset), token) == offset


def test_data_header_default_offset_is_zero():
    token = data_token(None, NONCE_C, NONCE_P)
    assert parse_data_header(data_header(token), token) == 0


def test_wrong_token_is_auth_error():
    good = data_token(SECRET, NONCE_C, NONCE_P)
    bad = data_token(b"other", NONCE_C, NONCE_P)
    with pytest.raises(AuthError, match="wrong token"):
        parse_data_header(data_header(bad), good)


def test_token_from_another_handshake_is_auth_error():
    good = data_token(None, NONCE_C, NONCE_P)
    other = data_token(None, NONCE_C, bytes(32))
    with pytest.raises(AuthError):
        parse_data_header(data_header(other), good)


def test_bad_magic_is_protocol_error():
    token = data_token(None, NONCE_C, NONCE_P)
    raw = b"HTTP/1.1" + data_header(token)[8:]
    with pytest.raises(ProtocolError, match="not a nettee data") as exc:
        parse_data_header(raw, token)
    assert not isinstance(exc.value, AuthError)


@pytest.mark.parametrize("size", [0, 1, 31, 33, 64])
def test_data_header_of_wrong_length(size):
    token = data_token(None, NONCE_C, NONCE_P)
    raw = (data_header(token) * 2)[:size]
    with pytest.raises(ProtocolError, match="short data header"):
        parse_data_header(raw, token)


# ================================================================ error codes and reports


def test_man_page_codes():
    assert [c.value for c in Code][:8] == [
        "NONE",
        "NWF",
        "LWF",
        "NRF",
        "LRF",
        "BBC",
        "BSTAT",
        "NNF",
    ]
    assert CODE_TEXT[Code.NONE] == "no errors"
    assert CODE_TEXT[Code.NWF] == "network write failure"
    assert CODE_TEXT[Code.LWF] == "local write failure"
    assert CODE_TEXT[Code.NRF] == "network read failure"
    assert CODE_TEXT[Code.LRF] == "local read failure"
    assert CODE_TEXT[Code.BBC] == "child returned incorrect byte count"
    assert CODE_TEXT[Code.BSTAT] == "child returned unknown or bad status"
    assert CODE_TEXT[Code.NNF] == "could not connect to (one or more) child nodes"
    assert set(CODE_TEXT) == set(Code)


def test_man_page_message_formats():
    assert child_line(0, "node34", ["NWF"]) == "Failures detected in child 0 [node34]: NWF"
    assert child_line(1, "node35", []) == "Failures detected in child 1 [node35]: NONE"
    assert chain_line(["NWF"]) == "Failures detected in chain: NWF"
    assert chain_line([]) == "Failures detected in chain: NONE"


def test_lines_accept_code_enums_and_drop_none():
    assert child_line(0, "n", [Code.NONE]) == "Failures detected in child 0 [n]: NONE"
    assert chain_line([Code.NONE, Code.NWF, Code.NONE]) == "Failures detected in chain: NWF"
    assert chain_line(iter(["LRF", "NWF", "LRF"])) == "Failures detected in chain: NWF LRF"


def test_sort_codes():
    assert sort_codes([]) == []
    assert sort_codes(["NONE"]) == []
    assert sort_codes(["NNF", "NWF", "NONE", "NWF", "LWF"]) == ["NWF", "LWF", "NNF"]
    assert sort_codes(["SIG", "BSTAT", "BBC", "LRF", "NRF", "LWF", "NWF", "NNF"]) == [
        "NWF", "LWF", "NRF", "LRF", "BBC", "BSTAT", "NNF", "SIG",
    ]  # fmt: skip
    assert sort_codes(["ZZZ", "AAA", "NWF", "AAA"]) == ["NWF", "AAA", "ZZZ"]


def test_format_codes():
    assert format_codes([]) == "NONE"
    assert format_codes(["NONE", "NONE"]) == "NONE"
    assert format_codes(["BBC"]) == "BBC"
    assert format_codes(["NRF", "NWF"]) == "NWF NRF"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([c.value for c in Code]) | st.text(min_size=1, max_size=5)))
def test_sort_codes_properties(codes):
    out = sort_codes(codes)
    assert len(out) == len(set(out))
    assert set(out) == set(codes) - {"NONE"}
    assert sort_codes(out) == out
    assert format_codes(codes) == (" ".join(out) or "NONE")


def node(name="n", depth=0, **kw) -> NodeResult:
    return NodeResult(name=name, depth=depth, **kw)


def test_report_round_trip():
    nodes = [
        node("node33", 1, bytes_in=1000, bytes_out=1000, seconds=1.5),
        node("node34", 2, bytes_in=1000, bytes_out=0, codes=["LWF"], detail="disk full",
             local_out=False),
        node("node35", 3, bytes_in=500, codes=["NRF", "BBC"], fatal=True),
    ]  # fmt: skip
    msg = report(nodes)
    assert as_json(msg)["t"] == "report"
    assert list(wire(msg).nodes) == nodes


def test_from_dict_optional_fields_default():
    d = {"name": "a", "depth": 1, "bytes_in": 2, "bytes_out": 3, "codes": [], "seconds": 0}
    assert NodeResult.from_dict(d) == node("a", 1, bytes_in=2, bytes_out=3)


NODE = st.builds(
    NodeResult,
    name=st.text(max_size=20).filter(str.isprintable),
    depth=st.integers(0, 1000),
    bytes_in=st.integers(0, 2**63),
    bytes_out=st.integers(0, 2**63),
    codes=st.lists(st.sampled_from([c.value for c in Code]), max_size=4),
    seconds=st.floats(0, 1e9, allow_nan=False),
    detail=st.text(max_size=30).filter(str.isprintable),
    local_out=st.booleans(),
    fatal=st.booleans(),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.lists(NODE, min_size=1, max_size=10))
def test_report_round_trip_property(nodes):
    assert list(wire(report(nodes)).nodes) == nodes


GOOD_NODE = {"name": "a", "depth": 0, "bytes_in": 0, "bytes_out": 0, "codes": [], "seconds": 0}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.text(max_size=3000))
def test_report_names_and_reasons_are_made_printable(name, text):
    """Whatever a child puts in its report reaches the root's terminal escaped and bounded."""
    node = {**GOOD_NODE, "name": name, "detail": text, "codes": [name], "digest": text}
    (got,) = parse_report({"t": "report", "nodes": [node]})
    for value, limit in ((got.name, NAME_MAX), (got.detail, TEXT_MAX), (got.codes[0], CODE_MAX),
                         (got.digest, TEXT_MAX)):  # fmt: skip
        assert value.isprintable() and len(value) <= limit
    if name.isprintable() and len(name) <= NAME_MAX:
        assert got.name == name  # a clean name is left alone


@pytest.mark.parametrize(
    ("raw", "limit", "want"),
    [
        ("node34", 127, "node34"),
        ("a\x1b[31mb", 127, "a\\x1b[31mb"),
        ("two\nlines", 127, "two\\nlines"),
        ("\u202eevil", 127, "\\u202eevil"),
        ("x" * 200, 10, "xxxxxxx..."),
        ("\x1b" * 10, 10, "\\x1b..."),
        (42, 127, "42"),
    ],
)  # fmt: skip
def test_printable_escapes_and_cuts(raw, limit, want):
    assert printable(raw, limit) == want


def test_names_from_the_handshake_are_made_printable():
    welcome_msg = welcome(NONCE_C, NONCE_P, None, "\x1b]0;pwned\x07" + "y" * 500)
    name = check_welcome(wire(welcome_msg), NONCE_C, NONCE_P, None)  # decode makes it printable
    assert name.isprintable() and len(name) <= NAME_MAX and name.startswith("\\x1b]0;pwned")
    with pytest.raises(AuthError) as exc:
        check_welcome(decode({"t": "refuse", "why": "\x1b[2J" * 1000}), NONCE_C, NONCE_P, None)
    assert str(exc.value).isprintable() and len(str(exc.value)) < TEXT_MAX + 20


@pytest.mark.parametrize(
    "msg",
    [
        {"t": "report", "nodes": []},
        {"t": "report"},
        {"t": "report", "nodes": "x"},
        {"t": "report", "nodes": None},
        {"t": "end", "nodes": [GOOD_NODE]},
        {"t": "report", "nodes": [{}]},
        {"t": "report", "nodes": [None]},
        {"t": "report", "nodes": ["a"]},
        {"t": "report", "nodes": [[1, 2]]},
        {"t": "report", "nodes": [{**GOOD_NODE, "depth": "deep"}]},
        {"t": "report", "nodes": [{**GOOD_NODE, "depth": None}]},
        {"t": "report", "nodes": [{**GOOD_NODE, "bytes_in": [1]}]},
        {"t": "report", "nodes": [{**GOOD_NODE, "codes": 5}]},
        {"t": "report", "nodes": [{**GOOD_NODE, "seconds": "soon"}]},
        {"t": "report", "nodes": [GOOD_NODE, {"name": "b"}]},
    ],
)
def test_bad_reports(msg):
    with pytest.raises(ProtocolError):
        parse_report(msg)


@pytest.mark.parametrize("field", ["depth", "bytes_in", "bytes_out"])
def test_infinite_count_in_report_is_protocol_error(field):
    # json.loads accepts the non-standard literal Infinity, so a peer can send this
    (msg,) = FrameDecoder().feed(encode({"t": "report", "nodes": [{**GOOD_NODE, field: float("inf")}]}))
    with pytest.raises(ProtocolError):
        parse_report(msg)


def test_codes_as_a_string_is_protocol_error():
    with pytest.raises(ProtocolError):
        parse_report({"t": "report", "nodes": [{**GOOD_NODE, "codes": "NWF"}]})


def test_check_counts():
    assert check_counts(100, [node(bytes_in=100)]) == []
    assert check_counts(100, [node(bytes_in=99)]) == ["BBC"]
    assert check_counts(100, [node(bytes_in=101), node(bytes_in=100)]) == ["BBC"]
    assert check_counts(0, []) == ["BBC"]
    assert check_counts(0, [node()]) == []
    # -flow pull: the child's report says what it sent up
    assert check_counts(50, [node(bytes_up=50)], pull=True) == []
    assert check_counts(50, [node(bytes_up=49)], pull=True) == ["BBC"]


# ================================================================ typed messages

KIDS = (Kid("n3", "127.0.0.3", 9997, (Kid("n4", "127.0.0.4", 7000),)),)
EVERY_MESSAGE = [
    Hello(NONCE_C, True, "child"),
    Hello(NONCE_C, False, "child", busy="session-1", why="already in a chain"),
    Join(NONCE_P, "ab" * 32, "parent", "session-1", tuple(PATH)),
    Join(NONCE_P, None, "parent", "s", (), adopt=True, bound=True),
    Welcome(None, "child"),
    Welcome("cd" * 32, "child", have=12345),
    Refuse("busy"),
    Refuse("busy", busy="session-1"),
    Ready(("n2", "n3")),
    Ready(("n2",), kids=KIDS),
    Ready(("n2",), kids=()),
    Ping(),
    Ping(received=2**40),
    End(1000),
    End(0, short="root: source changed"),
    Await(),
    Await(7.5),
    Abort("n3: NWF: connection lost"),
    Fail("LWF", "n4", "write to /dev/full: No space left on device"),
    SubtreeReport((node("a", 0, bytes_in=5),)),
    SubtreeReport((node("a", 0),), heals=(Heal("n3", "n2", 1.5, 2.0, (Adopted("n4", 77),), ("n5",)),)),
    SubtreeReport((node("a", 0, codes=["CMDF"], cmds=Commands(
        3, 2, 1, (CommandResult(2, "exit 3", 3, "out\n"), CommandResult(3, "sleep 9")),
        ended=False, waited=True, expired=True)),)),  # -stm with beo exec
]


@pytest.mark.parametrize("msg", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg):
    assert wire(msg) == msg
    assert decode(as_json(msg)) == msg


def test_every_message_type_has_one_writer_and_one_reader():
    from beokit.nettee import messages

    types = {type(m) for m in EVERY_MESSAGE}
    assert set(messages.WRITERS) == types
    assert set(messages.READERS) == {t.TYPE for t in types}


def test_messages_are_frozen():
    with pytest.raises(AttributeError):
        End(5).sent = 6  # type: ignore[misc]


@pytest.mark.parametrize(
    "obj, words",
    [
        ({"t": "bogus"}, "unknown message type"),
        ({"t": "end"}, "end with a bad bytes"),
        ({"t": "end", "bytes": -1}, "not a byte count"),
        ({"t": "end", "bytes": True}, "not a byte count"),
        ({"t": "end", "bytes": 2**63}, "not a byte count"),
        ({"t": "end", "bytes": "12"}, "not a byte count"),
        ({"t": "ping", "bytes": 1.5}, "not a byte count"),
        ({"t": "welcome", "mac": None, "have": -5}, "not a byte count"),
        ({"t": "ready", "nodes": [], "kids": "x"}, "kids"),
        ({"t": "ready", "nodes": [], "kids": [{"name": "a", "port": 1}]}, "without a host"),
        ({"t": "ready", "nodes": [], "kids": [{"host": "h", "port": 0}]}, "valid port"),
        ({"t": "ready", "nodes": [], "kids": [{"host": "h", "port": "1"}]}, "valid port"),
        ({"t": "ready", "nodes": [], "kids": [{"host": "h", "port": 1, "kids": 5}]}, "kids"),
        ({"t": "ready", "nodes": [], "kids": [5]}, "kids"),
        ({"t": "report", "nodes": [GOOD_NODE], "heals": [5]}, "heals"),
        ({"t": "report", "nodes": [GOOD_NODE], "heals": [{"detected": "x"}]}, "detected"),
        ({"t": "report", "nodes": [GOOD_NODE], "heals": [{"adopted": [{"offset": -1}]}]},
         "byte count"),
        ({**good_join(), "adopt": "yes"}, "adopt"),
        ({**good_join(), "path": [1, 2]}, "path"),
        ({**good_hello(), "auth": 1}, "auth"),
    ],
)  # fmt: skip
def test_readers_check_every_field(obj, words):
    with pytest.raises(ProtocolError, match=words):
        decode(obj)


def test_a_bad_report_names_its_kind():
    """The node tells a child's bad report (BSTAT) from a broken connection by it."""
    with pytest.raises(ProtocolError) as exc:
        MessageDecoder().feed(encode({"t": "report", "nodes": [{"name": "x"}]}))
    assert exc.value.kind == "report"
    with pytest.raises(ProtocolError) as exc:
        decode({"t": "report", "nodes": []})
    assert exc.value.kind == "report"


def test_texts_from_a_peer_are_printable_and_bounded():
    evil = "\x1b[31m" + "x" * 5000
    msgs = [decode({"t": "fail", "code": evil, "node": evil, "why": evil}),
            decode({"t": "abort", "why": evil}), decode({"t": "end", "bytes": 1, "short": evil}),
            decode({"t": "refuse", "why": evil}), decode({"t": "ready", "nodes": [evil, 5]})]  # fmt: skip
    fail, abort, end, refuse, ready = msgs
    assert len(fail.code) <= CODE_MAX and len(fail.node) <= NAME_MAX and len(fail.why) <= TEXT_MAX
    for text in (fail.code, fail.node, fail.why, abort.why, end.short, refuse.why, *ready.nodes):
        assert text.isprintable() and len(text) <= TEXT_MAX
    assert len(ready.nodes) == 1  # a name that is not a string is dropped


def test_deeply_nested_kids_are_a_protocol_error_not_a_crash():
    kid: dict = {"host": "h", "port": 1}
    for _ in range(5000):
        kid = {"host": "h", "port": 1, "kids": [kid]}
    try:
        raw = encode({"t": "ready", "nodes": [], "kids": [kid]})
    except (ProtocolError, RecursionError):
        return  # too deep to even encode here
    with pytest.raises(ProtocolError):
        MessageDecoder().feed(raw)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=64) | st.binary(max_size=64).map(frame), max_size=6))
def test_message_decoder_on_arbitrary_bytes_only_raises_protocol_error(chunks):
    d = MessageDecoder()
    try:
        for chunk in chunks:
            for msg in d.feed(chunk):
                assert type(msg).TYPE
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([m.TYPE for m in EVERY_MESSAGE]),
       st.dictionaries(st.sampled_from(["v", "nonce", "auth", "name", "busy", "why", "mac",
                                        "session", "path", "adopt", "bound", "have", "nodes",
                                        "kids", "bytes", "short", "code", "node", "heals"]),
                       JSON_VALUE, max_size=8))  # fmt: skip
def test_decode_of_any_fields_gives_a_message_or_protocol_error(kind, fields):
    try:
        msg = decode({**fields, "t": kind})
    except ProtocolError:
        return
    assert msg.TYPE == kind
    assert wire(msg) == msg  # what was accepted can be sent on as it is
