"""Tests for the ``-next HOSTLISTS`` parser (nettee 0.2 man page, option -next)."""

from __future__ import annotations

import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from beokit.errors import UsageError
from beokit.nettee.hostlists import (
    EOC_MARKERS,
    MAX_HOSTLISTS,
    Endpoint,
    format_next,
    parse_endpoint,
    parse_next,
    parse_port,
)


def E(host: str, port: int | None = None) -> Endpoint:
    return Endpoint(host, port)


# ---------------------------------------------------------------- the man page example


def test_man_page_example():
    lists = parse_next("node1,[node2,node3],[node4,node5,node6],node7")
    assert lists == (
        (E("node1"),),
        (E("node2"), E("node3")),
        (E("node4"), E("node5"), E("node6")),
        (E("node7"),),
    )


def test_man_page_example_formats_back_verbatim():
    text = "node1,[node2,node3],[node4,node5,node6],node7"
    assert format_next(parse_next(text)) == text


def test_single_hostname_is_one_hostlist_of_one():
    assert parse_next("node1") == ((E("node1"),),)


def test_bracketed_single_host_is_a_hostlist_of_one():
    assert parse_next("[node1]") == ((E("node1"),),)
    assert format_next(parse_next("[node1]")) == "node1"


def test_failover_order_is_kept():
    (hl,) = parse_next("[b,a,c]")
    assert [e.host for e in hl] == ["b", "a", "c"]


def test_duplicate_hosts_are_kept_as_given():
    assert parse_next("a,a") == ((E("a"),), (E("a"),))


# ---------------------------------------------------------------- separators


@pytest.mark.parametrize(
    "text",
    [
        "node1,[node2,node3],[node4,node5,node6],node7",
        "node1 [node2 node3] [node4 node5 node6] node7",
        "node1 [node2,node3],[node4 node5,node6] node7",
        "node1 , [node2 , node3] ,  [ node4,node5 ,node6 ] ,node7",
        "node1,,[node2,,node3],,[node4,node5,node6],,node7",
        "  node1,[node2,node3],[node4,node5,node6],node7  ",
        "node1\t[node2\tnode3]\t[node4,node5,node6]\tnode7",
        "node1,[node2,node3] [node4,node5,node6],node7,",
    ],
)
def test_commas_and_spaces_are_interchangeable(text):
    assert parse_next(text) == parse_next("node1,[node2,node3],[node4,node5,node6],node7")


# ---------------------------------------------------------------- :PORT


def test_port_suffix():
    assert parse_next("node1:7000") == ((E("node1", 7000),),)


def test_port_suffix_inside_brackets_and_mixed():
    assert parse_next("a:1,[b:2,c],d:65534") == (
        (E("a", 1),),
        (E("b", 2), E("c")),
        (E("d", 65534),),
    )


def test_port_suffix_formats_back():
    text = "a:1,[b:2,c],d:65534"
    assert format_next(parse_next(text)) == text


def test_endpoint_default_port():
    assert E("a").with_default(9997) == ("a", 9997)
    assert E("a", 4000).with_default(9997) == ("a", 4000)


def test_endpoint_str():
    assert str(E("a")) == "a"
    assert str(E("a", 12)) == "a:12"


@pytest.mark.parametrize("text, port", [("1", 1), ("9997", 9997), ("65534", 65534), ("007", 7)])
def test_parse_port_valid(text, port):
    assert parse_port(text) == port


@pytest.mark.parametrize(
    "text", ["0", "65535", "65536", "99999999", "abc", "", "-1", "+5", " 5", "1.0"]
)
def test_parse_port_invalid(text):
    with pytest.raises(UsageError) as exc:
        parse_port(text, "-port")
    assert repr(text) in str(exc.value)
    assert "-port" in str(exc.value)


# ---------------------------------------------------------------- hostnames


@pytest.mark.parametrize(
    "host",
    ["node1", "n", "1", "_x", "10.0.0.1", "node-1", "a.b.example.org", "a.", "N_1", "a" * 253],
)
def test_valid_hostnames(host):
    assert parse_endpoint(host) == E(host)
    assert parse_next(host) == ((E(host),),)


@pytest.mark.parametrize(
    "bad",
    [
        "-node",
        ".node",
        "node-",
        "node.-",
        "nöde",
        "no/de",
        "no!de",
        "a" * 254,
        "a:1:2",
        "a;b",
        "a*",
    ],
)
def test_bad_host_characters_raise_naming_the_value(bad):
    with pytest.raises(UsageError) as exc:
        parse_next(bad)
    assert bad in str(exc.value)


def test_carriage_return_in_a_host_name_is_rejected():
    with pytest.raises(UsageError):
        parse_next("a\r,b")


@pytest.mark.parametrize("bad", ["a\n,b", "a\n:5,b", "a\n b"])
def test_newline_in_a_host_name_is_rejected(bad):
    with pytest.raises(UsageError):
        parse_next(bad)


# ---------------------------------------------------------------- End of Chain


@pytest.mark.parametrize("marker", [".", ",", "_EOC_", " . ", "  _EOC_\t", " , "])
def test_end_of_chain_markers(marker):
    assert parse_next(marker) == ()


def test_absent_next_is_end_of_chain():
    assert parse_next(None) == ()


def test_eoc_markers_constant():
    assert EOC_MARKERS == {".", ",", "_EOC_"}


def test_format_of_end_of_chain_parses_back_to_end_of_chain():
    assert format_next(()) == "_EOC_"
    assert parse_next(format_next(())) == ()


@pytest.mark.parametrize(
    "text, marker",
    [
        ("node1,.", "."),
        (". node1", "."),
        ("node1,_EOC_", "_EOC_"),
        ("_EOC_,node1", "_EOC_"),
        ("[node1,_EOC_]", "_EOC_"),
        ("[.,node1]", "."),
        ("_EOC_ _EOC_", "_EOC_"),
        (". .", "."),
    ],
)
def test_end_of_chain_beside_other_hostlists_fails(text, marker):
    with pytest.raises(UsageError) as exc:
        parse_next(text)
    msg = str(exc.value)
    assert repr(text) in msg
    assert "End of Chain" in msg
    assert repr(marker) in msg


# ---------------------------------------------------------------- number of hostlists


@pytest.mark.parametrize("n", range(1, MAX_HOSTLISTS + 1))
def test_one_to_eight_hostlists(n):
    text = ",".join(f"n{i}" for i in range(n))
    assert len(parse_next(text)) == n


def test_eight_bracketed_hostlists():
    text = " ".join(f"[a{i},b{i}]" for i in range(8))
    lists = parse_next(text)
    assert len(lists) == 8 and all(len(hl) == 2 for hl in lists)


def test_failover_lists_do_not_count_towards_the_limit():
    text = "[" + ",".join(f"n{i}" for i in range(20)) + "]"
    (hl,) = parse_next(text)
    assert len(hl) == 20


@pytest.mark.parametrize(
    "text",
    [
        ",".join(f"n{i}" for i in range(9)),
        " ".join(f"[a{i},b{i}]" for i in range(9)),
        ",".join(f"n{i}" for i in range(30)),
    ],
)
def test_nine_or_more_hostlists_fail(text):
    with pytest.raises(UsageError) as exc:
        parse_next(text)
    msg = str(exc.value)
    assert repr(text) in msg
    assert "at most 8" in msg


# ---------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    "text, why",
    [
        ("[node1,node2", "without matching"),
        ("node1,[node2", "without matching"),
        ("[", "without matching"),
        ("node1]", "without '['"),
        ("]", "without '['"),
        ("node1,node2]", "without '['"),
        ("[node1]]", "after ']'"),
        ("[a,[b,c]]", "nest"),
        ("[[a]]", "nest"),
        ("[a,[b]", "nest"),
        ("[]", "empty"),
        ("[ ]", "empty"),
        ("[,]", "empty"),
        ("a,[],b", "empty"),
        ("[a]b", "after ']'"),
        ("a[b]", "inside a host name"),
        ("a,b[c,d]", "inside a host name"),
        ("", "empty"),
        ("   ", "empty"),
        (",,", "no host"),
        (", ,", "no host"),
    ],
)
def test_malformed_hostlists_raise_usage_error(text, why):
    with pytest.raises(UsageError) as exc:
        parse_next(text)
    msg = str(exc.value)
    assert "-next" in msg
    assert repr(text.strip()) in msg
    assert why in msg


@pytest.mark.parametrize(
    "text, bad",
    [
        ("node1:0", "node1:0"),
        ("node1:65535", "node1:65535"),
        ("node1:65536", "node1:65536"),
        ("node1:abc", "node1:abc"),
        ("node1:", "node1:"),
        ("node1:-5", "node1:-5"),
        ("a,[b,c:0]", "c:0"),
        ("a [b c:abc] d", "c:abc"),
        (":80", ":80"),
    ],
)
def test_bad_port_raises_naming_the_entry(text, bad):
    with pytest.raises(UsageError) as exc:
        parse_next(text)
    assert repr(bad) in str(exc.value)


@pytest.mark.parametrize("text", ["node:²", "node:①", "[a,b:³]"])
def test_unicode_non_decimal_digit_port_is_a_usage_error(text):
    with pytest.raises(UsageError):
        parse_next(text)


def test_non_ascii_decimal_digit_port_is_rejected():
    with pytest.raises(UsageError):
        parse_next("node:٣")


# ---------------------------------------------------------------- properties

_FIRST = string.ascii_letters + string.digits + "_"
HOST = st.builds(str.__add__, st.sampled_from(_FIRST), st.text(_FIRST + ".-", max_size=20)).filter(
    lambda h: not h.endswith("-") and h not in EOC_MARKERS
)
ENDPOINT = st.builds(Endpoint, HOST, st.none() | st.integers(1, 65534))
HOSTLIST = st.lists(ENDPOINT, min_size=1, max_size=5).map(tuple)
HOSTLISTS = st.lists(HOSTLIST, min_size=1, max_size=MAX_HOSTLISTS).map(tuple)
SEP = st.sampled_from([",", " ", ", ", " ,", ",,", "  ", "\t", " , "])


@settings(max_examples=80, deadline=None)
@given(HOSTLISTS)
def test_parse_of_format_round_trips(lists):
    text = format_next(lists)
    assert parse_next(text) == lists
    assert format_next(parse_next(text)) == text


@settings(max_examples=60, deadline=None)
@given(HOSTLISTS, st.data())
def test_any_separators_parse_to_the_same_hostlists(lists, data):
    def sep() -> str:
        return data.draw(SEP)

    parts = []
    for hl in lists:
        if len(hl) == 1 and data.draw(st.booleans()):
            parts.append(str(hl[0]))
        else:
            parts.append("[" + sep().join(str(e) for e in hl) + "]")
    text = sep().join(parts)
    if data.draw(st.booleans()):
        text = f"  {text} "
    assert parse_next(text) == lists
    assert parse_next(format_next(parse_next(text))) == lists


@settings(max_examples=25, deadline=None)
@given(st.lists(HOST, min_size=MAX_HOSTLISTS + 1, max_size=MAX_HOSTLISTS + 6))
def test_too_many_hostlists_always_fail(hosts):
    with pytest.raises(UsageError):
        parse_next(",".join(hosts))


@settings(max_examples=300, deadline=None)
@given(st.text())
@example("[a,[b]]")
@example("]]][[[")
@example("a:")
@example(":")
@example("[:]")
@example("_EOC_:1")
def test_parse_next_only_raises_usage_error(text):
    try:
        lists = parse_next(text)
    except UsageError:
        return
    assert isinstance(lists, tuple)
    assert len(lists) <= MAX_HOSTLISTS
    for hl in lists:
        assert hl and all(isinstance(e, Endpoint) for e in hl)
        for e in hl:
            assert e.port is None or 1 <= e.port <= 65534


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab1:,[] ._-\t", max_size=30))
def test_parse_next_only_raises_usage_error_on_grammar_characters(text):
    try:
        lists = parse_next(text)
    except UsageError:
        return
    # Whatever parses must survive a format/parse cycle unchanged.
    assert parse_next(format_next(lists)) == lists
