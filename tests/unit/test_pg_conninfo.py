from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drctl.pg.conninfo import (
    ConninfoError,
    make_conninfo,
    make_url,
    merge_conninfo,
    parse_conninfo,
    parse_host_port,
    parse_hosts,
    quote_value,
    split_password,
)


def test_quote_value() -> None:
    assert quote_value("abc") == "abc"
    assert quote_value(5432) == "5432"
    assert quote_value("") == "''"
    assert quote_value("a b") == "'a b'"
    assert quote_value("it's") == r"'it\'s'"
    assert quote_value("back\\slash") == r"'back\\slash'"
    assert quote_value(True) == "1"


def test_make_conninfo_skips_none_and_keeps_order() -> None:
    s = make_conninfo({"host": "/run/pg sock", "port": 5433}, user="rep", password=None, dbname="postgres")
    assert s == "host='/run/pg sock' port=5433 user=rep dbname=postgres"


def test_make_conninfo_rejects_bad_keyword() -> None:
    with pytest.raises(ConninfoError):
        make_conninfo({"host x": "a"})


# Text libpq accepts in a value: no NUL (the C string ends there).
_values = st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=30)


@given(password=_values, app=_values)
def test_conninfo_roundtrip_through_libpq(password: str, app: str) -> None:
    s = make_conninfo(host="127.0.0.1", port=5432, password=password, application_name=app)
    parsed = parse_conninfo(s)
    assert parsed["password"] == password
    assert parsed["application_name"] == app


def test_split_password() -> None:
    rest, pw = split_password("host=h port=1 user=u password='p w\\'d'")
    assert pw == "p w'd"
    assert "password" not in parse_conninfo(rest)
    assert parse_conninfo(rest)["user"] == "u"
    rest, pw = split_password("postgresql://u:p%40ss@h:5/db")
    assert pw == "p@ss" and parse_conninfo(rest) == {"user": "u", "host": "h", "port": "5", "dbname": "db"}
    assert split_password("host=h")[1] is None


def test_merge_conninfo() -> None:
    s = merge_conninfo("host=h port=1 application_name=x", application_name="r1", port=None)
    assert parse_conninfo(s) == {"host": "h", "application_name": "r1"}


def test_parse_conninfo_error() -> None:
    with pytest.raises(ConninfoError):
        parse_conninfo("host='unterminated")


def test_make_url_multi_host() -> None:
    url = make_url(
        [("10.0.0.1", 5432), ("10.0.0.2", 5433), ("::1", 5434)],
        user="app user",
        password="p@ss:/w",
        dbname="my db",
        params={"target_session_attrs": "read-write", "connect_timeout": 2, "sslmode": None},
    )
    assert url == (
        "postgresql://app%20user:p%40ss%3A%2Fw@10.0.0.1:5432,10.0.0.2:5433,[::1]:5434/my%20db"
        "?target_session_attrs=read-write&connect_timeout=2"
    )
    parsed = parse_conninfo(url)
    assert parsed["user"] == "app user" and parsed["password"] == "p@ss:/w" and parsed["dbname"] == "my db"
    assert parsed["host"] == "10.0.0.1,10.0.0.2,::1" and parsed["port"] == "5432,5433,5434"
    assert parse_hosts(url) == [("10.0.0.1", 5432), ("10.0.0.2", 5433), ("::1", 5434)]


def test_make_url_errors() -> None:
    with pytest.raises(ConninfoError):
        make_url([])
    with pytest.raises(ConninfoError):
        make_url([("h", 1)], password="x")
    with pytest.raises(ConninfoError):
        make_url([("/run/postgresql", 5432)])


def test_parse_hosts_variants() -> None:
    assert parse_host_port("postgresql://u@db.example:6543/x") == ("db.example", 6543)
    assert parse_host_port("postgresql://db.example/x") == ("db.example", 5432)
    assert parse_hosts("postgres://a,b:7/x") == [("a", 5432), ("b", 7)]
    assert parse_hosts("host=a,b port=5433") == [("a", 5433), ("b", 5433)]
    assert parse_hosts("host=a,b port=1,2") == [("a", 1), ("b", 2)]
    assert parse_hosts("host=/tmp/sock port=5") == [("/tmp/sock", 5)]
    assert parse_hosts("postgresql:///db?host=/tmp/sock&port=6") == [("/tmp/sock", 6)]
    assert parse_hosts("dbname=x") == [("localhost", 5432)]
    with pytest.raises(ConninfoError):
        parse_hosts("host=a,b,c port=1,2")
