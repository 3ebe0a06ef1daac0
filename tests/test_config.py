"""alarmd.config: the example files load, and every validation rule reports file:line:col.

One fixture file per rule lives in tests/fixtures/config/; each test states the exact line a
user would see, so a change of wording or position is a deliberate change of this file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydantic
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from alarmd.config import (
    AccountConfig,
    AlarmdConfig,
    ConfigError,
    ConfigProblem,
    Listen,
    RoutingFiles,
    check_config,
    default_config_path,
    load_accounts,
    load_config,
)
from alarmd.model import EventKind
from alarmd.protocols.dc09 import KeyFormat, StalePolicy

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "alarmd.example.yaml"
EXAMPLE_ACCOUNTS = REPO / "config" / "accounts.example.yaml"
EXAMPLE_CENTRE = REPO / "config" / "centre.example.yaml"
EXAMPLE_TENANTS = REPO / "config" / "tenants"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "config"

EXAMPLE_KEYS = (
    "0123456789ABCDEF",
    "93FE9380523AFB1F30064F3B5A50F9747B47B76E86F41CCE",
    "C0E6E7FF6410E41F1E9A911E7799167EDD91799D052B1C8E6FC22850BAEA4098",
)
ALARM_KINDS = (
    "assistance, fall, inactivity, fire, gas, water, exit, bed_exit, epilepsy, medication,"
    " panic, intruder, other_alarm"
)


def problems_of(name: str) -> list[str]:
    return [str(p) for p in check_config(FIXTURES / name)]


def account_problems_of(name: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_accounts(FIXTURES / name)
    return [str(p) for p in caught.value.problems]


# --- the example files ---------------------------------------------------------------------


def test_example_files_load() -> None:
    config = load_config(EXAMPLE)
    assert check_config(EXAMPLE) == []
    assert config.data_dir == Path("var")
    assert (config.log.level, config.log.format) == ("info", "json")
    assert (config.api.host, config.api.port) == ("127.0.0.1", 8780)
    assert (config.dc09.host, config.dc09.port) == ("127.0.0.1", 12128)
    assert config.dc09.enabled
    assert config.dc09.idle_timeout_s == 300
    assert config.dc09.max_connections == 20000
    assert config.dc09.max_frame_bytes == 2048
    assert config.store.path == Path("alarmd.sqlite")
    assert config.store.dedup_window_s == 86400
    policy = config.dc09.timestamp.to_policy()
    assert (policy.ahead.total_seconds(), policy.behind.total_seconds()) == (20, 40)
    assert policy.stale_clear_text is StalePolicy.ACCEPT_AND_FLAG
    assert config.accounts_file == EXAMPLE.parent / "accounts.example.yaml"
    assert config.source_files == (
        EXAMPLE.resolve(),
        EXAMPLE_ACCOUNTS.resolve(),
        EXAMPLE_CENTRE.resolve(),
        *sorted(p.resolve() for p in EXAMPLE_TENANTS.glob("*.yaml")),
    )
    assert config.routing.centre == Path("centre.example.yaml")  # as written; see RoutingFiles
    assert config.routing.tenants == Path("tenants")
    assert len(config.config_hash) == 64


def test_example_accounts() -> None:
    accounts = load_config(EXAMPLE).accounts
    assert {"1234", "5678", "9757", "0809", "36214", "21401"} <= set(accounts)
    assert accounts["1234"].tenant == "eksempel-kommune"
    assert accounts["1234"].supervision_interval_s == 90000
    clear = accounts["1234"].to_dc09()
    assert clear.account == "1234"
    assert clear.key is None
    assert dict(clear.zone_kinds) == {3: EventKind.FALL}
    assert accounts["5678"].to_dc09().key == b"0123456789ABCDEF"
    key_lengths = sorted(len(a.to_dc09().key or b"") for a in accounts.values())
    assert {16, 24, 32} <= set(key_lengths)
    assert accounts == load_accounts(EXAMPLE_ACCOUNTS)


def test_example_key_decrypts_the_reference_frame() -> None:
    """The AES-128 vector of PROTOCOLS.md 1.4, with the key as the config decodes it."""
    ciphertext = bytes.fromhex(
        "26E872B9FFD723A3FE1A30962EFF9F7CD71AF1CDF9590C77709C38074C9CBE21"
        "E8DEED35EA8DC83B147497E6A9331A93"
    )
    key = load_config(EXAMPLE).accounts["5678"].to_dc09().key
    assert key is not None
    decryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).decryptor()
    plaintext = decryptor.update(ciphertext) + decryptor.finalize()
    assert plaintext.endswith(b"|#5678|1100 01 005]_12:00:00,01-15-2025")


def test_default_config_path_is_the_example() -> None:
    assert default_config_path() == EXAMPLE


# --- defaults and values -------------------------------------------------------------------


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    path = tmp_path / "alarmd.yaml"
    path.write_text("# nothing set\n")
    config = load_config(path)
    assert config.model_dump(exclude={"source_files", "config_hash"}) == AlarmdConfig().model_dump(
        exclude={"source_files", "config_hash"}
    )
    assert config.accounts == {}
    assert config.accounts_file is None
    assert config.routing == RoutingFiles(centre=None, tenants=None)  # the centre's defaults
    assert config.source_files == (path.resolve(),)


def test_null_section_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "alarmd.yaml"
    path.write_text("log:\ndc09:\n  timestamp:\n")
    config = load_config(path)
    assert config.log.level == "info"
    assert config.dc09.timestamp.ahead_s == 20


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("0.0.0.0:12128", "0.0.0.0", 12128),
        ("localhost:65535", "localhost", 65535),
        ('"[::1]:8780"', "::1", 8780),
        ('"[::]:0"', "::", 0),
    ],
)
def test_listen_is_split_into_host_and_port(
    tmp_path: Path, text: str, host: str, port: int
) -> None:
    path = tmp_path / "alarmd.yaml"
    path.write_text(f"api:\n  listen: {text}\n")
    api = load_config(path).api
    assert (api.host, api.port) == (host, port)
    assert api.listen == Listen(host, port)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8780", "expected host:port, e.g. 127.0.0.1:8780, 0.0.0.0:12128 or [::1]:8780 (a string)"),
        (
            "localhost",
            "expected host:port, e.g. 127.0.0.1:8780, 0.0.0.0:12128 or [::1]:8780;"
            " the port is missing",
        ),
        ("::1:8780", "an IPv6 address needs brackets: [::1]:8780"),
        ('"[::g]:1"', "'::g' in brackets is not an IPv6 address"),
        ("host:http", "port 'http' is not a number"),
        ("bad_host:1", "'bad_host' is not a host name or IPv4 address"),
        (
            "[::1]",
            "an IPv6 address in brackets must be quoted (unquoted, YAML reads a list),"
            ' e.g. listen: "[::1]:8780"',
        ),
    ],
)
def test_bad_listen(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "alarmd.yaml"
    path.write_text(f"api:\n  listen: {text}\n")
    assert [str(p) for p in check_config(path)] == [f"{path}:2:11: api.listen: {message}"]


def test_unquoted_ipv6_listen_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "alarmd.yaml"
    path.write_text("api:\n  listen: [::1]:8780\n")
    assert [str(p) for p in check_config(path)] == [
        f"{path}:2:16: YAML syntax error: expected <block end>, but found '<scalar>';"
        " an IPv6 address in brackets must be quoted (unquoted, YAML reads a list):"
        ' listen: "[::1]:8780"'
    ]


def test_account_is_uppercased_and_found_case_insensitively(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    path.write_text('accounts:\n  - account: "abc123"\n    tenant: t-1\n')
    accounts = load_accounts(path)
    assert list(accounts) == ["ABC123"]
    assert accounts["ABC123"].to_dc09().account == "ABC123"


def test_config_is_frozen_and_read_only() -> None:
    config = load_config(EXAMPLE)
    with pytest.raises(pydantic.ValidationError):
        config.log = config.log  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.accounts["FFFF"] = config.accounts["1234"]  # type: ignore[index]
    with pytest.raises(TypeError):
        config.accounts["1234"].zones[4] = EventKind.FIRE  # type: ignore[index]


def test_config_hash_follows_the_bytes_of_every_file(tmp_path: Path) -> None:
    main = tmp_path / "alarmd.yaml"
    shutil.copy(EXAMPLE, main)
    shutil.copy(EXAMPLE_ACCOUNTS, tmp_path / "accounts.example.yaml")
    shutil.copy(EXAMPLE_CENTRE, tmp_path / "centre.example.yaml")
    shutil.copytree(EXAMPLE_TENANTS, tmp_path / "tenants")
    first = load_config(main).config_hash
    assert load_config(main).config_hash == first
    with (tmp_path / "accounts.example.yaml").open("a") as handle:
        handle.write("# a comment is a change too\n")
    second = load_config(main).config_hash
    assert second != first
    with (tmp_path / "tenants" / "demo-bydel.yaml").open("a") as handle:
        handle.write("# and so is one in a tenant file\n")
    assert load_config(main).config_hash != second


def test_key_format_without_key(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    path.write_text('accounts:\n  - account: "1234"\n    tenant: t\n    key_format: hex\n')
    with pytest.raises(ConfigError) as caught:
        load_accounts(path)
    assert str(caught.value) == f"{path}:2:5: accounts[0]: key_format is set but key is missing"


# --- one rule, one fixture -----------------------------------------------------------------


def test_unknown_key_at_top_level() -> None:
    assert problems_of("unknown_key_top.yaml") == [
        f"{FIXTURES}/unknown_key_top.yaml:4:1: dc9: unknown key; did you mean 'dc09'?"
    ]


def test_unknown_key_nested() -> None:
    assert problems_of("unknown_key_nested.yaml") == [
        f"{FIXTURES}/unknown_key_nested.yaml:5:5: dc09.timestamp.behind: unknown key;"
        " did you mean 'behind_s'?"
    ]


def test_unknown_key_without_a_close_match_lists_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "alarmd.yaml"
    path.write_text("log:\n  colour: red\n")
    assert [str(p) for p in check_config(path)] == [
        f"{path}:2:3: log.colour: unknown key; expected one of: level, format"
    ]


def test_bad_type() -> None:
    assert problems_of("bad_type.yaml") == [
        f"{FIXTURES}/bad_type.yaml:3:20: dc09.max_connections: expected a whole number"
    ]


def test_bad_port() -> None:
    assert problems_of("bad_port.yaml") == [
        f"{FIXTURES}/bad_port.yaml:3:11: api.listen: port 65536 is out of range 0-65535"
    ]


def test_missing_accounts_file() -> None:
    assert problems_of("missing_accounts_file.yaml") == [
        f"{FIXTURES}/missing_accounts_file.yaml:2:16: accounts_file: accounts file not found:"
        f" {FIXTURES}/no-such-accounts.yaml"
    ]


def test_yaml_syntax_error() -> None:
    assert problems_of("yaml_syntax.yaml") == [
        f"{FIXTURES}/yaml_syntax.yaml:4:10: YAML syntax error: mapping values are not allowed here"
    ]


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    path = tmp_path / "alarmd.yaml"
    path.write_text("log:\n  level: info\n  level: debug\n")
    assert [str(p) for p in check_config(path)] == [
        f"{path}:3:3: duplicate key 'level': a key may appear only once in a mapping"
    ]


def test_missing_main_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert [str(p) for p in check_config(path)] == [
        f"{path}:1:1: cannot read the configuration file: No such file or directory"
    ]


def test_bad_account_hex() -> None:
    assert account_problems_of("accounts_bad_hex.yaml") == [
        f"{FIXTURES}/accounts_bad_hex.yaml:3:14: accounts[0].account:"
        " an account is 3-16 hex digits (0-9, A-F)"
    ]


def test_duplicate_account_names_both_lines() -> None:
    assert account_problems_of("accounts_duplicate.yaml") == [
        f"{FIXTURES}/accounts_duplicate.yaml:7:14: accounts[2].account:"
        " duplicate account 'ABC1', first defined on line 3"
    ]


def test_key_without_key_format() -> None:
    assert account_problems_of("accounts_key_without_format.yaml") == [
        f"{FIXTURES}/accounts_key_without_format.yaml:5:10: accounts[0].key:"
        " key_format is required when key is set: ascii or hex (a 32-character key could be"
        " either)"
    ]


def test_ascii_key_of_wrong_length() -> None:
    assert account_problems_of("accounts_ascii_key_length.yaml") == [
        f"{FIXTURES}/accounts_ascii_key_length.yaml:6:10: accounts[0].key:"
        " an ascii key must be 16, 24 or 32 characters (AES-128/192/256), not 15"
    ]


def test_hex_key_of_wrong_length() -> None:
    assert account_problems_of("accounts_hex_key_length.yaml") == [
        f"{FIXTURES}/accounts_hex_key_length.yaml:6:10: accounts[0].key:"
        " a hex key must be 32, 48 or 64 hex digits (AES-128/192/256), not 34"
    ]


def test_zone_kind_must_be_an_alarm() -> None:
    assert account_problems_of("accounts_zone_not_alarm.yaml") == [
        f"{FIXTURES}/accounts_zone_not_alarm.yaml:7:10: accounts[0].zones[4]:"
        f" 'battery_low' is a technical kind, not an alarm kind; one of: {ALARM_KINDS}"
    ]


def test_zone_kind_unknown(tmp_path: Path) -> None:
    path = tmp_path / "accounts.yaml"
    path.write_text('accounts:\n  - account: "1234"\n    tenant: t\n    zones: {3: falll}\n')
    with pytest.raises(ConfigError) as caught:
        load_accounts(path)
    assert str(caught.value) == (
        f"{path}:4:16: accounts[0].zones[3]: 'falll' is not an alarm kind; one of: {ALARM_KINDS}"
    )


def test_account_rules_apply_through_the_main_file(tmp_path: Path) -> None:
    main = tmp_path / "alarmd.yaml"
    main.write_text("accounts_file: accounts.yaml\n")
    shutil.copy(FIXTURES / "accounts_duplicate.yaml", tmp_path / "accounts.yaml")
    assert [str(p) for p in check_config(main)] == [
        f"{tmp_path}/accounts.yaml:7:14: accounts[2].account:"
        " duplicate account 'ABC1', first defined on line 3"
    ]


def test_every_problem_of_every_file_is_reported() -> None:
    main = f"{FIXTURES}/many_problems.yaml"
    accounts = f"{FIXTURES}/many_problems.accounts.yaml"
    expected = [
        f"{main}:4:10: log.level: input should be 'debug', 'info', 'warning' or 'error'",
        f"{main}:6:11: api.listen: port 99999 is out of range 0-65535",
        f"{main}:8:19: store.dedup_window_s: expected a whole number; remove the quotes",
        f"{main}:10:12: dc09.enabled: expected true or false",
        f"{main}:11:20: dc09.max_frame_bytes: input should be greater than or equal to 64",
        f'{accounts}:2:14: accounts[0].account: account must be a quoted string, e.g. "0809":'
        " unquoted, YAML reads it as a number",
        f"{accounts}:5:13: accounts[1].tenant: a tenant is a slug: lowercase letters a-z,"
        " digits and '-'",
        f"{accounts}:6:10: accounts[1].key: key_format is required when key is set: ascii or hex"
        " (a 32-character key could be either)",
        f"{accounts}:7:5: accounts[2].account: required key is missing",
    ]
    assert problems_of("many_problems.yaml") == expected
    with pytest.raises(ConfigError) as caught:
        load_config(FIXTURES / "many_problems.yaml")
    assert str(caught.value) == "\n".join(expected)
    assert caught.value.problems[0] == ConfigProblem(
        main, 4, 10, "log.level: input should be 'debug', 'info', 'warning' or 'error'"
    )
    assert caught.value.__cause__ is None  # no ValidationError (which shows inputs) attached


# --- secrets -------------------------------------------------------------------------------


def test_keys_never_appear_in_repr_str_or_dumps() -> None:
    config = load_config(EXAMPLE)
    texts = [repr(config), str(config), config.model_dump_json()]
    for account in config.accounts.values():
        texts += [repr(account), str(account), account.model_dump_json()]
    for text in texts:
        for key in EXAMPLE_KEYS:
            assert key not in text
    assert "**********" in repr(config.accounts["5678"])


def test_keys_never_appear_in_problems(tmp_path: Path) -> None:
    secret = "S3cretKeyNotShown!"  # 18 characters: a wrong length for ascii
    entry = f'  - account: "1234"\n    tenant: t\n    key_format: ascii\n    key: "{secret}"\n'
    wrong_length = tmp_path / "wrong_length.yaml"
    wrong_length.write_text("accounts:\n" + entry)
    duplicate_key = tmp_path / "duplicate_key.yaml"  # ruamel's own message would quote it
    duplicate_key.write_text("accounts:\n" + entry + f'    key: "{secret}"\n')
    for path in (wrong_length, duplicate_key):
        with pytest.raises(ConfigError) as caught:
            load_accounts(path)
        assert str(caught.value).startswith(f"{path}:")
        assert secret not in str(caught.value)


def test_account_config_built_in_code() -> None:
    account = AccountConfig(
        account="abcd",
        tenant="t",
        key_format=KeyFormat.HEX,
        key="00" * 32,  # type: ignore[arg-type]
    )
    assert account.account == "ABCD"
    assert account.to_dc09().key == bytes(32)
    assert "00" * 32 not in repr(account)
