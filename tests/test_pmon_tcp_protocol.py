"""The PMON TCP wire format and its [pmon_tcp] section, without a running pmon."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pmon import config as config_module
from pmon.errors import ConfigError
from pmon.extensions.pmon_tcp import protocol as p


@pytest.mark.parametrize("line", [
    b"op#pw#START_ALL\n", b"op#pw#START_ALL:\n", b"op#pw#START_ALL: \n", b"op#pw#START_ALL:\r\n",
    b"op#pw#start_all:", b"op#pw# START_ALL:  \r\n",
])
def test_the_spellings_of_one_command_are_one_request(line):
    assert p.parse(line) == p.Request("op", "pw", "START_ALL:", "")


def test_a_request_splits_into_credentials_command_and_arguments():
    assert p.parse(b"##SINGLE_MGR:INS 2 WCCOAui once 30 3 1 -m gedi -num 6\n") == p.Request(
        "", "", "SINGLE_MGR:INS", "2 WCCOAui once 30 3 1 -m gedi -num 6")
    assert p.parse(b"##MGRLIST:LIST\n").command == "MGRLIST:LIST"


@pytest.mark.parametrize("line, reply", [
    (b"MGRLIST:LIST\n", p.ERR_MALFORMED),
    (b"only#one\n", p.ERR_MALFORMED),
    (b"\xff\xfe##PROJECT:\n", p.ERR_NOT_TEXT),
    (b"##PRO\x00JECT:\n", p.ERR_NOT_TEXT),
])
def test_a_line_that_is_no_request_gets_an_error(line, reply):
    with pytest.raises(p.Malformed) as caught:
        p.parse(line)
    assert caught.value.reply == reply


def test_errors_stay_on_one_line():
    assert p.error("errIns", "first\n  second\n") == b"ERROR errIns :first; second"


def test_indexes_are_plain_decimal_numbers():
    assert [p.parse_index(t) for t in ("0", "12", "", "-1", "1 2", "x", "\u0663")] == [
        0, 12, None, None, None, None, None]


@pytest.fixture
def utc():
    """Local time = UTC for the duration of a test."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_rows_have_the_exact_shape_of_pmon_output(utc):
    assert p.stati_row(2, 33540, "manual", 1764838302.036, 1) == "2;33540;0;2025.12.04 08:51:42.036;  1"
    assert p.stati_row(0, -1, "always", None, 2) == "0;   -1;2;1970.01.01 00:00:00.000;  2"
    assert p.list_row("WCCOAui", "once", 30, 3, 1, "-m gedi -n -num 4") == "WCCOAui;1;30;3;1;-m gedi -n -num 4"
    assert p.list_reply(["a", "b"], "2 MONITOR_MODE 0 0") == b"LIST:2\na\nb\n2 MONITOR_MODE 0 0\n;\n"
    assert p.list_reply([]) == b"LIST:0\n;\n"
    assert p.props("once", 30, 3, 1, "-m gedi -n -num 4") == b"once 30 3 1 -m gedi -n -num 4"
    assert p.props("manual", 0, 0, 0, "") == b"manual 0 0 0"


def test_options_lose_one_pair_of_quotes_and_split_like_a_shell():
    assert p.split_options('"-m gedi -n -num 6"') == ["-m", "gedi", "-n", "-num", "6"]
    assert p.split_options('-p "a b" -num 2') == ["-p", "a b", "-num", "2"]
    assert p.split_options('"-p" "a b"') == ["-p", "a b"]  # not one pair: quotes kept as such
    assert p.join_options(["-p", "a b"]) == "-p 'a b'"
    assert p.join_options(["-t", "a\nb"]) == "-t 'a\\nb'"  # a row stays one line
    with pytest.raises(ValueError):
        p.split_options('-p "open')


def test_the_manager_number_comes_from_num_then_from_the_options():
    assert p.manager_number(["-num", "4"], None) == 4
    assert p.manager_number(["-num", "4"], 9) == 9
    assert p.manager_number(["-f", "x.lst"], None) == 1
    assert p.manager_number(["-num"], None) == 1


def test_properties_take_words_or_numbers_for_the_start_mode():
    assert p.parse_props("once 30 3 1 -m gedi -num 4") == p.Props("once", 30, 3, 1, ["-m", "gedi", "-num", "4"])
    assert p.parse_props("2 30 3 1").mode == "always"
    for text, message in [
        ("sometimes 1 1 1", "start mode 'sometimes'"),
        ("once -30 3 1", "secKill '-30'"),
        ("once 30 3", "expected <manual|once|always>"),
        ('once 1 1 1 "-p x', "options:"),
    ]:
        with pytest.raises(ValueError, match=message):
            p.parse_props(text)


# --- [pmon_tcp] ----------------------------------------------------------------------


def parse(tmp_path: Path, section: dict | None) -> config_module.Config:
    data = {"project": {"name": "x"}, "managers": []}
    if section is not None:
        data["pmon_tcp"] = section
    return config_module.parse(data, tmp_path / "pmon.toml")


def test_the_listener_is_off_unless_configured(tmp_path):
    assert parse(tmp_path, None).pmon_tcp is None
    assert parse(tmp_path, {"enabled": False}).pmon_tcp is None
    spec = parse(tmp_path, {})
    assert (spec.pmon_tcp.address, spec.pmon_tcp.port, spec.pmon_tcp.password) == ("127.0.0.1", 4999, "")


def test_a_network_address_needs_a_password(tmp_path):
    with pytest.raises(ConfigError, match=r"\[pmon_tcp\], key 'address': '0.0.0.0' is not a loopback"):
        parse(tmp_path, {"address": "0.0.0.0"})
    with pytest.raises(ConfigError, match="not a loopback"):
        parse(tmp_path, {"address": "plant-server"})
    assert parse(tmp_path, {"address": "0.0.0.0", "password": "pw"}).pmon_tcp.password == "pw"
    assert parse(tmp_path, {"address": "::1"}).pmon_tcp.address == "::1"


def test_credentials_from_a_file(tmp_path):
    (tmp_path / "pmon.pw").write_text("op#s3cret\n")
    spec = parse(tmp_path, {"address": "0.0.0.0", "password_file": "pmon.pw"}).pmon_tcp
    assert (spec.user, spec.password) == ("op", "s3cret")
    (tmp_path / "only.pw").write_text("s3cret")
    spec = parse(tmp_path, {"user": "op", "password_file": "only.pw"}).pmon_tcp
    assert (spec.user, spec.password) == ("op", "s3cret")


@pytest.mark.parametrize("section, message", [
    ({"password_file": "missing.pw"}, "key 'password_file': cannot read"),
    ({"password": "a", "password_file": "x"}, "password or password_file, not both"),
    ({"password": "a#b"}, "key 'password': expected a string without '#'"),
    ({"port": 70000}, "key 'port': expected a port number"),
    ({"max_clients": 0}, "key 'max_clients': expected a whole number >= 1"),
    ({"pasword": "x"}, "did you mean 'password'"),
])
def test_a_bad_section_is_named_with_its_key(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message):
        parse(tmp_path, section)
