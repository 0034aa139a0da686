"""Fast unit tests of the pure parts: event validation, back-off, routing patterns,
settings and cron parsing. No Redis, no worker."""

from __future__ import annotations

import json
import random
import re
from datetime import timedelta

import pytest
from celery import Celery

from fanout_celery import (
    ConfigurationError,
    Event,
    InvalidEventError,
    RetryAfterError,
    RetryPolicy,
)
from fanout_celery.engine.router import Router
from fanout_celery.model.cron import parse_cron
from fanout_celery.model.definition import Subscription
from fanout_celery.model.events import dumps, now_ms, prepare, prepare_batch
from fanout_celery.model.patterns import check_pattern, matches, resolve_path
from fanout_celery.model.records import new_run, pack_step, step_status, unpack_step
from fanout_celery.model.retry import retry_at_ms
from fanout_celery.model.settings import Settings, redact_url
from fanout_celery.store.memory import MemoryStore

LIMIT = 512 * 1024

# -- events.prepare ----------------------------------------------------------------------


def test_prepare_fills_in_an_id_and_a_timestamp():
    before = now_ms()
    record = prepare(Event(name="app/x", data={"a": 1}), max_bytes=LIMIT)
    assert record["name"] == "app/x" and record["data"] == {"a": 1}
    assert re.fullmatch(r"[0-9a-f]{32}", record["id"])
    assert before <= record["ts"] <= now_ms()
    assert set(record) == {"name", "data", "id", "ts"}


def test_prepare_keeps_a_given_id_ts_user_and_version():
    record = prepare({"name": "app/x", "id": "e-1", "ts": 5, "user": {"u": 1}, "v": "2"},
                     max_bytes=LIMIT, event_id="ignored")
    assert (record["id"], record["ts"], record["user"], record["v"]) == ("e-1", 5, {"u": 1}, "2")


def test_prepare_uses_the_supplied_id_only_for_an_event_without_one():
    assert prepare({"name": "app/x"}, max_bytes=LIMIT, event_id="derived")["id"] == "derived"


def test_prepare_returns_the_json_round_trip_of_the_data():
    record = prepare({"name": "app/x", "data": {"t": (1, 2), "n": None}}, max_bytes=LIMIT)
    assert record["data"] == {"t": [1, 2], "n": None}


def test_prepare_accepts_an_event_of_exactly_the_size_limit_and_not_one_byte_more():
    def sized(n: int) -> dict:
        return {"name": "app/x", "data": {"b": "x" * n}, "id": "e", "ts": 1}

    limit = len(dumps(sized(100)).encode())
    assert prepare(sized(100), max_bytes=limit)["data"]["b"] == "x" * 100
    with pytest.raises(InvalidEventError,
                       match=rf"is {limit + 1} bytes, over the limit of {limit} "
                             r"\(fanout_max_event_bytes\)"):
        prepare(sized(101), max_bytes=limit)


def test_prepare_counts_the_size_in_utf8_bytes():
    with pytest.raises(InvalidEventError, match="over the limit"):
        prepare({"name": "app/x", "data": {"s": "é" * 60}}, max_bytes=100)


def test_prepare_rejects_reserved_names_unless_allowed():
    with pytest.raises(InvalidEventError, match="reserved for the library"):
        prepare({"name": "fanout/function.failed"}, max_bytes=LIMIT)
    assert prepare({"name": "fanout/function.failed"}, max_bytes=LIMIT,
                   allow_system=True)["name"] == "fanout/function.failed"


def test_prepare_rejects_unknown_fields_and_negative_timestamps():
    with pytest.raises(InvalidEventError, match="colour"):
        prepare({"name": "app/x", "colour": "red"}, max_bytes=LIMIT)
    with pytest.raises(InvalidEventError, match="cannot be negative"):
        prepare({"name": "app/x", "ts": -1}, max_bytes=LIMIT)


# -- events.prepare_batch ----------------------------------------------------------------

def test_prepare_batch_wraps_a_single_event_in_a_list():
    assert [r["name"] for r in prepare_batch(Event(name="app/x"), max_bytes=LIMIT)] == ["app/x"]
    assert [r["name"] for r in prepare_batch({"name": "app/y"}, max_bytes=LIMIT)] == ["app/y"]


def test_prepare_batch_keeps_order_and_drops_repeated_ids():
    records = prepare_batch([{"name": "app/a", "id": "1"}, {"name": "app/b", "id": "2"},
                             {"name": "app/c", "id": "1"}], max_bytes=LIMIT)
    assert [(r["id"], r["name"]) for r in records] == [("1", "app/a"), ("2", "app/b")]


def test_prepare_batch_gives_ids_from_id_for_by_position():
    records = prepare_batch([{"name": "app/a"}, {"name": "app/b", "id": "own"}],
                            max_bytes=LIMIT, id_for=lambda i: f"step-{i}")
    assert [r["id"] for r in records] == ["step-0", "own"]


def test_prepare_batch_names_the_bad_event_and_says_nothing_was_sent():
    with pytest.raises(InvalidEventError, match=r"event #2 of the batch: .*nothing was sent"):
        prepare_batch([{"name": "app/a"}, {"name": "app/b"}, {"name": ""}], max_bytes=LIMIT)


@pytest.mark.parametrize("events", [None, 3, "app/x", {"app/x"}])
def test_prepare_batch_rejects_what_is_not_an_event_or_a_list(events):
    with pytest.raises(InvalidEventError, match="expected an Event, a dict, a list of them or an iterator"):
        prepare_batch(events, max_bytes=LIMIT)


def test_prepare_batch_of_an_empty_list_is_empty():
    assert prepare_batch([], max_bytes=LIMIT) == []


# -- events.resolve_path -----------------------------------------------------------------

DOC = {"data": {"user": {"id": 7, "tags": ["a", "b"]}, "zero": 0, "none": None}}


@pytest.mark.parametrize("path, expected", [
    ("data.user.id", 7),
    ("data.user", {"id": 7, "tags": ["a", "b"]}),
    ("data.user.tags.1", "b"),
    ("data.zero", 0),
    ("data.none", None),
    ("data.missing", None),
    ("data.user.id.deeper", None),
    ("data.user.tags.2", None),
    ("data.user.tags.-1", None),
    ("data.user.tags.first", None),
    ("", None),
])
def test_resolve_path_follows_dotted_paths_through_dicts_and_lists(path, expected):
    assert resolve_path(DOC, path) == expected


def test_resolve_path_never_evaluates_the_path():
    assert resolve_path({"a": 1}, "__class__") is None
    assert resolve_path({"a": 1}, "a.__class__") is None


# -- RetryPolicy.delay -------------------------------------------------------------------

def test_delay_grows_by_the_backoff_factor():
    policy = RetryPolicy(backoff=0.5, backoff_factor=3, backoff_max=1000, jitter=0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 13.5]


def test_delay_is_capped_at_backoff_max():
    policy = RetryPolicy(backoff=1, backoff_factor=2, backoff_max=10, jitter=0)
    assert [policy.delay(n) for n in (3, 4, 5, 50)] == [4, 8, 10, 10]


def test_a_constant_backoff_with_factor_one():
    policy = RetryPolicy(backoff=2, backoff_factor=1, jitter=0)
    assert {policy.delay(n) for n in range(1, 20)} == {2}


def test_jitter_stays_within_its_fraction_and_varies():
    random.seed(1234)
    policy = RetryPolicy(backoff=10, backoff_factor=1, jitter=0.25)
    delays = [policy.delay(1) for _ in range(2000)]
    assert all(7.5 <= d <= 12.5 for d in delays)
    assert min(delays) < 8.5 and max(delays) > 11.5  # spreads across the range
    assert len(set(delays)) > 1000


def test_jitter_applies_after_the_cap():
    policy = RetryPolicy(backoff=1, backoff_factor=10, backoff_max=5, jitter=0.1)
    assert all(4.5 <= policy.delay(10) <= 5.5 for _ in range(500))


def test_zero_backoff_means_no_delay():
    assert RetryPolicy(backoff=0, jitter=0.5).delay(3) == 0.0


def test_retries_as_an_int_keeps_the_default_back_off():
    assert RetryPolicy.coerce(2) == RetryPolicy(max_retries=2)
    policy = RetryPolicy(max_retries=1)
    assert RetryPolicy.coerce(policy) is policy


def test_retry_after_overrides_the_back_off():
    policy = RetryPolicy(backoff=100, jitter=0)
    assert retry_at_ms(policy, 1, 1000) == 101_000
    assert retry_at_ms(policy, 1, 1000, RetryAfterError("later", 2.5)) == 3500
    assert retry_at_ms(policy, 1, 1000, RetryAfterError("later", timedelta(seconds=1))) == 2000
    assert retry_at_ms(policy, 1, 1000, RetryAfterError("now", -5)) == 1000


# -- routing -----------------------------------------------------------------------------

@pytest.mark.parametrize("pattern, name, expected", [
    ("app/x", "app/x", True),
    ("app/x", "app/xy", False),
    ("app/x", "app/X", False),
    ("app/*", "app/x", True),
    ("app/*", "app/user.created", True),
    ("app/*", "app", False),
    ("app/*", "apple/x", False),
    ("app/user.*", "app/user.created", True),
    ("app/user.*", "app/users.created", False),
    ("fanout/function.failed", "fanout/function.failed", True),
])
def test_matches_exact_names_and_trailing_wildcards(pattern, name, expected):
    assert matches(pattern, name) is expected


def test_a_wildcard_never_matches_system_events():
    # check_pattern refuses "fanout/*"; matches() refuses system names to any wildcard.
    assert matches("fanout/function.*", "fanout/function.failed") is False
    assert matches("fanout/*", "fanout/function.finished") is False
    assert matches("fanout.*", "fanout.x") is True  # no slash: an ordinary user name


@pytest.mark.parametrize("pattern", ["app/x", "app/*", "app/user.*", "a", "a_b-c.d/e:f@g+h",
                                     "fanout/function.failed"])
def test_check_pattern_returns_valid_patterns_unchanged(pattern):
    assert check_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["app*", "*/x", "*", "app/*/x", "app/**", "/*", "",
                                     " app/x", "app/x y", "a" * 256, "fanout/*", 3, None])
def test_check_pattern_rejects_invalid_patterns(pattern):
    with pytest.raises(ConfigurationError):
        check_pattern(pattern)


# -- settings ----------------------------------------------------------------------------

def make_app(broker: str = "redis://localhost:6379/3", **conf) -> Celery:
    app = Celery("units", broker=broker, set_as_current=False)
    app.conf.update(conf)
    return app


def test_settings_default_to_the_redis_broker_and_documented_values():
    s = Settings.from_app(make_app())
    assert s.redis_url == "redis://localhost:6379/3"
    assert (s.key_prefix, s.retention, s.event_dedupe_window) == ("fanout", 7 * 86400.0,
                                                                  86400.0)
    assert (s.max_event_bytes, s.max_step_output_bytes, s.max_steps) == (
        512 * 1024, 4 * 1024 * 1024, 1000)
    assert s.lease_seconds == 30.0


def test_settings_read_app_conf_and_convert_timedeltas():
    s = Settings.from_app(make_app(fanout_redis_url="rediss://cache:6380/1",
                                   fanout_key_prefix="acme", fanout_retention=timedelta(hours=1),
                                   fanout_lease_seconds=5, fanout_max_steps=10))
    assert (s.redis_url, s.key_prefix, s.retention, s.lease_seconds, s.max_steps) == (
        "rediss://cache:6380/1", "acme", 3600.0, 5.0, 10)


def test_settings_keyword_overrides_win_over_app_conf():
    app = make_app(fanout_redis_url="redis://conf/0", fanout_key_prefix="conf")
    s = Settings.from_app(app, redis_url="unix:///run/redis.sock", key_prefix="kw")
    assert (s.redis_url, s.key_prefix) == ("unix:///run/redis.sock", "kw")
    assert Settings.from_app(app, redis_url=None).redis_url == "redis://conf/0"


@pytest.mark.parametrize("url", ["redis://h/0", "rediss://h/0", "redis+socket:///tmp/r.sock",
                                 "unix:///tmp/r.sock"])
def test_settings_accept_every_redis_url_scheme(url):
    assert Settings.from_app(make_app(broker="amqp://h//", fanout_redis_url=url)).redis_url == url


def test_settings_need_a_redis_url_when_the_broker_is_not_redis():
    with pytest.raises(ConfigurationError, match="set app.conf.fanout_redis_url"):
        Settings.from_app(make_app(broker="amqp://guest@h//"))


@pytest.mark.parametrize("conf, message", [
    ({"fanout_lease_seconds": 0}, "fanout_lease_seconds must be a positive number"),
    ({"fanout_retention": "7d"}, "fanout_retention must be a positive number"),
    ({"fanout_max_steps": True}, "fanout_max_steps must be a positive integer"),
    ({"fanout_max_event_bytes": 1.5}, "fanout_max_event_bytes must be a positive integer"),
    ({"fanout_key_prefix": "a{b}"}, "fanout_key_prefix must be a non-empty string"),
    ({"fanout_key_prefix": ""}, "fanout_key_prefix must be a non-empty string"),
    ({"fanout_cron_interval": "5s"}, "fanout_cron_interval must be a positive number"),
    ({"fanout_pump_interval": -1}, "fanout_pump_interval must be a positive number"),
    ({"fanout_pump": "no"}, "fanout_pump must be True or False"),
    ({"fanout_task_events": 1}, "fanout_task_events must be True or False"),
    ({"fanout_fast_publish": "yes"}, "fanout_fast_publish must be True or False"),
    ({"fanout_compact_records": 1}, "fanout_compact_records must be True or False"),
    ({"fanout_broker_transport": 0}, "fanout_broker_transport must be True or False"),
])
def test_settings_reject_bad_values(conf, message):
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_app(make_app(**conf))


def test_settings_repr_hides_the_redis_password():
    s = Settings.from_app(make_app(broker="redis://:s3cret@cache:6379/0"))
    assert s.redis_url == "redis://:s3cret@cache:6379/0"
    assert "s3cret" not in repr(s)
    assert "redis://:***@cache:6379/0" in repr(s)


def test_a_bad_url_error_does_not_leak_the_password():
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_app(make_app(fanout_redis_url="http://bob:s3cret@cache:80/"))
    assert "s3cret" not in str(caught.value) and "bob:***@cache" in str(caught.value)


@pytest.mark.parametrize("url, redacted", [
    ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://user:pw@h:6379/0", "redis://user:***@h:6379/0"),
    ("rediss://user:p%40ss@h/0", "rediss://user:***@h/0"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("unix:///tmp/r.sock", "unix:///tmp/r.sock"),
])
def test_redact_url_replaces_only_the_password(url, redacted):
    assert redact_url(url) == redacted


# -- cron --------------------------------------------------------------------------------

def test_parse_cron_reads_five_fields_in_utc():
    spec = parse_cron("0 12 * * 5")
    assert (spec.expr, spec.zone, spec.text) == ("0 12 * * 5", "UTC", "0 12 * * 5")


def test_parse_cron_reads_a_tz_prefix():
    spec = parse_cron("TZ=Europe/Paris 0 12 * * 5")
    assert (spec.expr, spec.zone) == ("0 12 * * 5", "Europe/Paris")
    assert spec.tz.key == "Europe/Paris"
    assert parse_cron("CRON_TZ=America/New_York 0 9 * * 1-5").zone == "America/New_York"


def test_parse_cron_normalises_whitespace_and_accepts_six_fields():
    assert parse_cron("  */5   *  * * *  ").expr == "*/5 * * * *"
    assert parse_cron("* * * * * */2").expr == "* * * * * */2"


@pytest.mark.parametrize("text, message", [
    ("", "non-empty string"),
    (None, "non-empty string"),
    (5, "non-empty string"),
    ("* * * *", "must have 5 fields"),
    ("* * * * * * *", "must have 5 fields"),
    ("60 * * * *", "does not parse"),
    ("* 24 * * *", "does not parse"),
    ("0 12 * * funday", "does not parse"),
    ("TZ=Nowhere/Special 0 12 * * *", "unknown time zone 'Nowhere/Special'"),
    ("TZ= 0 12 * * *", "unknown time zone"),
])
def test_parse_cron_rejects_bad_expressions(text, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_cron(text)


def test_celerys_full_jitter_spreads_delays_from_zero_to_the_computed_one():
    policy = RetryPolicy(backoff=10, backoff_factor=1, jitter=True)
    delays = [policy.delay(1) for _ in range(400)]
    assert all(0 <= d <= 10 for d in delays)
    assert min(delays) < 2 and max(delays) > 8  # the whole range, not +-10 %
    assert {RetryPolicy(backoff=10, jitter=False).delay(1) for _ in range(20)} == {10}


def test_a_bad_cron_interval_fails_the_cron_declaration_naming_the_setting():
    from fanout_celery import Fanout

    fanout = Fanout(make_app(fanout_cron_interval="5s"))
    with pytest.raises(ConfigurationError, match="fanout_cron_interval must be a positive"):
        fanout.function("every-5s", cron="* * * * * */5")(lambda ctx: None)


def test_an_unknown_fanout_setting_warns_with_the_closest_name(caplog):
    with caplog.at_level("WARNING", logger="fanout"):
        Settings.from_app(make_app(fanout_lease_second=10, fanout_colour="red"))
    messages = [r.getMessage() for r in caplog.records]
    assert any("unknown setting fanout_lease_second is ignored; did you mean "
               "fanout_lease_seconds?" in m for m in messages), messages
    assert any(m.endswith("unknown setting fanout_colour is ignored") for m in messages)


@pytest.mark.parametrize("options, message", [
    ("cluster", "fanout_redis_options must be a dict"),
    ({"colour": 1}, "unknown option 'colour'; the options are"),
    ({"sentinels": []}, r"fanout_redis_options\['sentinels'\] must be a list"),
    ({"sentinels": ["nohost"]}, r"\['sentinels'\] must be a list"),
    ({"wait_replicas": -1}, r"\['wait_replicas'\] must be an integer >= 0"),
    ({"socket_timeout": "1s"}, r"\['socket_timeout'\] must be a number of seconds"),
])
def test_bad_redis_options_are_rejected_naming_the_option(options, message):
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_app(make_app(fanout_redis_options=options))


def test_a_sentinel_url_needs_a_service_name_and_takes_the_brokers_master_name():
    with pytest.raises(ConfigurationError, match="name the service in fanout_redis_options"):
        Settings.from_app(make_app(fanout_redis_url="sentinel://127.0.0.1:26379"))
    s = Settings.from_app(make_app(broker="sentinel://:pw@h1:26379;sentinel://h2:26379/2",
                                   broker_transport_options={"master_name": "main"}))
    assert s.redis_url.startswith("sentinel://") and s.redis_options["service_name"] == "main"
    assert "pw" not in repr(s)


def test_a_sentinel_url_and_options_become_the_sentinels_and_the_masters_login():
    from fanout_celery.store.redis.connect import sentinel_target

    target = sentinel_target("sentinel://:s3cret@h1:26379;sentinel://h2:26380/3",
                             {"service_name": "main", "sentinels": ["h3:26381"],
                              "socket_timeout": 2})
    assert target is not None
    assert target.sentinels == [("h1", 26379), ("h2", 26380), ("h3", 26381)]
    assert target.service_name == "main"
    assert target.connection == {"password": "s3cret", "db": 3, "socket_timeout": 2}
    assert sentinel_target("redis://h:6379/0", {}) is None


class _NextDue:
    def __init__(self, due: int | None) -> None:
        self.due = due

    def next_due(self) -> int | None:
        return self.due


@pytest.mark.parametrize(("due_in_ms", "expected"), [
    (None, 5.0),  # no timer: a whole interval
    (300, 0.3),  # a timer due before the interval ends: until then
    (60_000, 5.0),  # far off: the interval bounds it (timers set elsewhere meanwhile)
    (-2_000, 0.001),  # overdue: at once
])
def test_the_pump_waits_until_the_earliest_timer_at_most_an_interval(due_in_ms, expected):
    from fanout_celery.engine.pump import Pump
    from fanout_celery.model.events import now_ms

    due = None if due_in_ms is None else now_ms() + due_in_ms
    pump = Pump(_NextDue(due), None, None, None, None)  # type: ignore[arg-type]
    assert pump.pause(5.0) == pytest.approx(expected, abs=0.05)


# -- step records as stored -------------------------------------------------------------
@pytest.mark.parametrize("record", [
    {"status": "completed", "output": {"a": [1, "x"]}, "attempts": 1, "started_at": 1_796_000_000_000,
     "ended_at": 1_796_000_000_042, "seq": 3},
    {"status": "retrying", "error": {"type": "E", "message": "m"}, "attempts": 2,
     "retry_at": 7, "started_at": 5, "ended_at": 5, "seq": 0},
    {"status": "waiting", "kind": "wait_for_event", "event": "app/x", "timeout_at": 9,
     "started_at": 4, "seq": 1},
    {"status": "completed", "kind": "send_event", "output": ["id"], "sent": 1, "seq": 2},
    {"status": "completed", "output": None, "attempts": 1, "started_at": "5", "ended_at": "6"},
    {"status": "sleeping", "kind": "sleep", "wake_at": 8, "attempts": 0, "seq": 4},
], ids=["run", "retrying", "waiting", "send_event", "text-times", "no-attempt-yet"])
def test_a_step_record_reads_back_as_it_was_written(record):
    assert unpack_step(pack_step(record)) == record


def test_a_completed_step_of_a_small_output_fits_a_redis_listpack_value():
    # Redis keeps a hash as a listpack while every value is at most 64 bytes
    # (hash-max-listpack-value): a step table of small outputs stays compact.
    stored = pack_step({"status": "completed", "output": 12345, "attempts": 1,
                        "started_at": 1_796_235_794_103, "ended_at": 1_796_235_794_150,
                        "seq": 99})
    assert len(stored.encode()) <= 64, stored
    assert "status" not in stored and '"a"' not in stored  # completed, in one attempt


def test_a_step_record_in_the_earlier_format_is_read_as_it_is():
    earlier = ('{"status":"completed","output":28,"attempts":1,"started_at":1796235676167,'
               '"ended_at":1796235676167,"seq":7}')
    assert unpack_step(earlier) == {"status": "completed", "output": 28, "attempts": 1,
                                    "started_at": 1796235676167, "ended_at": 1796235676167,
                                    "seq": 7}
    assert step_status(earlier) == "completed"
    assert step_status(pack_step({"status": "sleeping", "seq": 0})) == "sleeping"
    assert step_status(None) is None


# -- routing ----------------------------------------------------------------------------
def test_the_router_matches_names_and_filters_and_sees_a_function_declared_later():
    router = Router(MemoryStore())
    router.add(Subscription("exact", ("shop/order.paid",), task="t1"))
    router.add(Subscription("all-shop", ("shop/*",), task="t2"))
    router.add(Subscription("big", ("shop/order.paid",), task="t3",
                            where=(("data.total", 100),)))

    def ids(name: str, **data: object) -> list[str]:
        return sorted(s.function_id for s in router.subscribers({"name": name, "data": data}))

    assert ids("shop/order.paid", total=5) == ["all-shop", "exact"]
    assert ids("shop/order.paid", total=100) == ["all-shop", "big", "exact"]  # same name
    assert ids("shop/refund") == ["all-shop"]
    assert ids("mail/sent") == []
    router.add(Subscription("mail", ("mail/*",), task="t4"))  # after those names were seen
    assert ids("mail/sent") == ["mail"]
    assert ids("shop/order.paid", total=5) == ["all-shop", "exact"]


def test_a_function_declared_while_a_send_routes_its_name_is_seen_by_the_next_send():
    router = Router(MemoryStore())
    router.add(Subscription("f1", ("app/x",), task="t1"))
    snapshot = router._snapshot

    def declared_meanwhile():  # another thread declares f2 right after the table is read
        taken = snapshot()
        router.add(Subscription("f2", ("app/x",), task="t2"))
        return taken

    event = {"name": "app/x", "data": {}}
    router._snapshot = declared_meanwhile  # type: ignore[method-assign]
    assert [s.function_id for s in router.subscribers(event)] == ["f1"]
    router._snapshot = snapshot  # type: ignore[method-assign]
    assert sorted(s.function_id for s in router.subscribers(event)) == ["f1", "f2"]


# -- run records as the Redis store lays them out ---------------------------------------
@pytest.mark.parametrize("event", [
    {"name": "app/x", "data": {"a": [1, "é"]}, "id": "01ab", "ts": 1_796_000_000_000},
    {"name": "app/x", "data": {}, "id": 'a "quoted" \\ id\n', "ts": 5, "user": {"u": 1}},
    {"id": "only-id", "ts": 7.5},
], ids=["plain", "odd-id", "no-body"])
def test_an_event_split_for_a_compact_run_reads_back_whole(event):
    from fanout_celery.store.redis.base import encode_event, expand, read_event, static_fields

    body, record = encode_event(event)
    assert "id" not in json.loads(record) and read_event(event["id"], record) == event
    assert read_event("other", json.dumps(event)) == event  # a record with its id
    assert "id" not in json.loads(body) and "ts" not in json.loads(body)
    run = new_run(Subscription("f", ("app/x",), task="fanout.f", queue="q"),
                  [{**event, "name": event.get("name", "app/x")}])
    fields = static_fields(run)
    raw = dict(zip(fields[::2], fields[1::2], strict=True))
    assert "task" not in raw  # the default task name is read back from the function
    read = expand(raw)
    assert json.loads(read["events"]) == list(run.events)
    assert read["task"] == "fanout.f" and read["queue"] == "q"


def test_a_run_of_several_events_keeps_them_as_a_list():
    from fanout_celery.store.redis.base import expand, static_fields

    sub = Subscription("f", ("app/x",), task="tasks.named")
    run = new_run(sub, [{"name": "app/x", "id": "1", "ts": 1}, {"name": "app/x", "id": "2",
                                                                 "ts": 2}])
    fields = static_fields(run)
    raw = dict(zip(fields[::2], fields[1::2], strict=True))
    assert raw["events"] == run.events_json and raw["task"] == "tasks.named"
    assert expand(dict(raw))["events"] == run.events_json
    earlier = static_fields(run, compact=False)
    assert earlier[0] == "meta" and json.loads(earlier[1])["task"] == "tasks.named"
