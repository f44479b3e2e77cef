"""OPC UA node references and reading timestamps (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.errors import ConfigError
from edge_agent.sources.opcua.mapping import (
    MAX_CLOCK_AHEAD_NS,
    NodeRef,
    parse_node,
    reading_timestamp_ns,
)

URI = "urn:edge-agent:sim:machines"
S = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"nsu={URI};s=robot.EnergyTotal", NodeRef("s", "robot.EnergyTotal", namespace_uri=URI)),
        ("ns=2;i=1042", NodeRef("i", "1042", namespace_index=2)),
        ("ns=0;i=2258", NodeRef("i", "2258", namespace_index=0)),
        ("i=2258", NodeRef("i", "2258")),
        # a string id may itself contain ';' and '='
        (f"nsu={URI};s=a;b=c", NodeRef("s", "a;b=c", namespace_uri=URI)),
        (
            "/Objects/2:Plant/2:Laser/2:EnergyTotal",
            NodeRef(browse_path=("Objects", "2:Plant", "2:Laser", "2:EnergyTotal")),
        ),
    ],
)
def test_parse_node_forms(text: str, expected: NodeRef) -> None:
    assert parse_node(text) == expected


@pytest.mark.parametrize("text", ["EnergyTotal", "ns=x;i=1", "nsu=;s=a", "/", "ns=2;q=1"])
def test_parse_node_rejects_what_is_not_a_node_id(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_node(text)
    assert repr(text) in str(caught.value)


def test_namespace_uri_follows_the_servers_current_index() -> None:
    ref = parse_node(f"nsu={URI};s=robot.State")
    assert ref.node_id_string(["http://opcfoundation.org/UA/", URI]) == "ns=1;s=robot.State"
    # after a restart the server registered two other namespaces first
    shifted = ["http://opcfoundation.org/UA/", "urn:a", "urn:b", URI]
    assert ref.node_id_string(shifted) == "ns=3;s=robot.State"


def test_missing_namespace_names_what_the_server_has() -> None:
    ref = parse_node(f"nsu={URI};s=robot.State")
    with pytest.raises(LookupError, match="urn:other"):
        ref.node_id_string(["http://opcfoundation.org/UA/", "urn:other"])


def test_index_form_is_taken_as_written() -> None:
    assert parse_node("ns=5;g=09087e75-8e5e-499b-954f-f2a9603db28a").node_id_string([]) == (
        "ns=5;g=09087e75-8e5e-499b-954f-f2a9603db28a"
    )


# -- reading timestamps ---------------------------------------------------------------------

NOW = 1_800_000_000 * S


def test_fresh_source_timestamp_is_used() -> None:
    source = NOW - S // 10
    assert (
        reading_timestamp_ns(source, now_ns=NOW, asof_ns=NOW, fresh_ns=S, last_emitted_ns=None)
        == source
    )


def test_old_source_timestamp_means_unchanged_so_the_reading_is_stamped_asof() -> None:
    # a PLC that stamps a value only when it changes: the value was read now, so it holds now
    old = NOW - 3600 * S
    assert (
        reading_timestamp_ns(old, now_ns=NOW, asof_ns=NOW, fresh_ns=S, last_emitted_ns=None) == NOW
    )


def test_server_clock_ahead_is_not_trusted() -> None:
    ahead = NOW + MAX_CLOCK_AHEAD_NS + 1
    assert (
        reading_timestamp_ns(ahead, now_ns=NOW, asof_ns=NOW, fresh_ns=S, last_emitted_ns=None)
        == NOW
    )
    # slightly ahead (less than the skew allowance) is clipped to now, never in the future
    assert (
        reading_timestamp_ns(
            NOW + S // 2, now_ns=NOW, asof_ns=NOW, fresh_ns=S, last_emitted_ns=None
        )
        == NOW
    )


def test_no_source_timestamp() -> None:
    assert (
        reading_timestamp_ns(
            None, now_ns=NOW, asof_ns=NOW - 2 * S, fresh_ns=2 * S, last_emitted_ns=None
        )
        == NOW - 2 * S
    )


def test_nothing_new_gives_nothing() -> None:
    # subscribe mode: the held value was emitted at its source time, and the instant it is
    # known current up to has not moved past that yet
    source = NOW - S
    assert (
        reading_timestamp_ns(
            source, now_ns=NOW, asof_ns=NOW - 2 * S, fresh_ns=2 * S, last_emitted_ns=source
        )
        is None
    )
    # once asof passes it, the unchanged value is confirmed at asof
    assert (
        reading_timestamp_ns(
            source, now_ns=NOW + 2 * S, asof_ns=NOW, fresh_ns=2 * S, last_emitted_ns=source
        )
        == NOW
    )


@given(
    source=st.none() | st.integers(NOW - 100 * S, NOW + 100 * S),
    lag=st.integers(0, 10 * S),
    fresh=st.integers(0, 10 * S),
    last=st.none() | st.integers(NOW - 100 * S, NOW + 2 * S),
)
def test_timestamps_only_increase_and_never_pass_now(
    source: int | None, lag: int, fresh: int, last: int | None
) -> None:
    ts = reading_timestamp_ns(
        source, now_ns=NOW, asof_ns=NOW - lag, fresh_ns=fresh, last_emitted_ns=last
    )
    if ts is None:
        assert last is not None
        assert last >= NOW - lag
    else:
        assert last is None or ts > last
        assert ts <= NOW
        # the instant it is known current, or the value's own time (clipped to now)
        assert ts == NOW - lag or (source is not None and ts == min(source, NOW))
