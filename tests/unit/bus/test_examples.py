"""The shipped mosquitto example files agree with what the tests' broker runs."""

from __future__ import annotations

from pathlib import Path

from vnet.testing.broker import acl_text, conf_text

EXAMPLES = Path(__file__).parents[3] / "docs" / "examples" / "mosquitto"


def test_the_example_acl_is_the_one_the_broker_tests_use():
    assert (EXAMPLES / "vnet.acl").read_text() == acl_text()


def settings(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition(" ")
            out[key] = value
    return out


def test_the_example_conf_has_the_settings_the_design_relies_on(tmp_path):
    example = settings((EXAMPLES / "vnet.conf").read_text())
    tested = settings(conf_text(1883, tmp_path))
    for key in ("per_listener_settings", "allow_anonymous", "max_queued_messages",
                "max_inflight_messages", "max_packet_size"):
        assert example[key] == tested[key], key
    assert int(example["autosave_interval"]) <= 60
    assert {"password_file", "acl_file", "listener"} <= set(example)
