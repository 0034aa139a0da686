"""Property tests (hypothesis) of the public API against untrusted input.

Every generated input is either accepted or rejected with a typed ``FanoutError`` (never
another exception); a rejected call writes nothing to Redis (a byte-for-byte snapshot of
every key, broker included); no crafted id reaches another run's keys; and bad step ids
never crash a worker.

Redis-touching properties are an inner ``@given`` function called from an ordinary test:
the fixtures (app, Redis, worker) are set up once per test, and each example resets the
state it depends on itself.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fanout_celery import (
    CancelOn,
    ConfigurationError,
    Event,
    Fanout,
    FanoutError,
    InvalidEventError,
    InvalidStepError,
    RetryPolicy,
)
from fanout_celery.model.cron import next_fire_times, parse_cron
from fanout_celery.model.durations import MAX_SECONDS, parse_duration
from fanout_celery.model.events import now_ms
from fanout_celery.model.patterns import check_path, resolve_path

# Modest counts: the whole file runs in well under a minute.
PURE = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
REDIS = settings(max_examples=100, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WORKER = settings(max_examples=20, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

MAX_EVENT_BYTES = 4096

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-./:@+]{0,254}")
EVENT_ID_RE = re.compile(r"[A-Za-z0-9_\-.]{1,128}")
FUNCTION_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-.]{0,127}")
PATH_RE = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
KEY_TRICKS = "{}:*"

# -- strategies ------------------------------------------------------------------------

surrogates = st.characters(codec=None, categories=["Cs"])
tricky_char = st.one_of(
    st.characters(),
    surrogates,
    st.sampled_from(list("{}:*\n\r\t \x00/.@+-_\u202e\ufeff")),
)
tricky_text = st.text(tricky_char, max_size=40)
not_strings = st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=8),
                        st.lists(st.integers(), max_size=2), st.booleans())

valid_names = st.one_of(
    st.from_regex(r"app/[A-Za-z0-9_\-./:@+]{0,40}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_\-./:@+]{0,60}", fullmatch=True),
).filter(lambda n: not n.startswith("fanout/"))
event_names = st.one_of(
    valid_names,
    st.sampled_from([
        "", " app/x", "app/x ", "app/x\n", "app/x\r\n", "/app", "-app", "{app}/x", "app/{x}",
        "app/*", "app/x*", "fanout/function.failed", "fanout/x", "a" * 255, "a" * 256,
        "app/\u00fc", "app/x\x00", "app/\ud800",
    ]),
    tricky_text,
    not_strings,
)

valid_event_ids = st.from_regex(r"[A-Za-z0-9_\-.]{1,128}", fullmatch=True)
event_ids = st.one_of(
    st.none(),
    valid_event_ids,
    st.sampled_from(["x{y}", "x}", "{x", "a:b", "a*", "*", "", "x" * 128, "x" * 129,
                     "id\n", "../x", "\u00e9", "a b", "{x}:run", "x}:steps"]),
    tricky_text,
    not_strings,
)

json_leaves = st.one_of(st.none(), st.booleans(), st.integers(),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=25,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


class Opaque:
    """An object JSON cannot represent."""


class Nested(list):  # type: ignore[type-arg]
    """Lists nested ``depth`` deep, shown briefly (hypothesis prints failing inputs)."""

    def __init__(self, depth: int) -> None:
        value: Any = 1
        for _ in range(depth - 1):
            value = [value]
        super().__init__([value])
        self.depth = depth

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def __repr__(self) -> str:
        return f"Nested({self.depth})"


def nested(depth: int) -> Nested:
    return Nested(depth)


# Values JSON cannot represent: each makes an event (or step output) invalid.
non_json = st.one_of(
    st.sets(st.integers(), max_size=3),
    st.frozensets(st.text(max_size=3), max_size=3),
    st.binary(max_size=8),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.builds(Opaque),
    st.just(Decimal("1.5")),
    st.just(datetime(2024, 1, 1)),
    st.just(10 ** 5000),  # more digits than Python converts to text
    st.text(surrogates, min_size=1, max_size=3),  # lone surrogates are not UTF-8
    st.dictionaries(st.text(surrogates, min_size=1, max_size=2), st.integers(), min_size=1,
                    max_size=1),
    st.dictionaries(st.tuples(st.integers(), st.integers()), st.integers(), min_size=1,
                    max_size=2),
    st.just(nested(5000)),  # deeper than the interpreter's recursion limit
    st.just(print),
)


@st.composite
def with_bad_leaf(draw: Any) -> dict[str, Any]:
    """A JSON object with one non-JSON value put somewhere inside it."""
    data: dict[str, Any] = draw(json_objects)
    target: Any = data
    while True:
        items = target.items() if isinstance(target, dict) else enumerate(target)
        inner = [k for k, v in items if isinstance(v, (dict, list))]
        if not inner or draw(st.booleans()):
            break
        target = target[draw(st.sampled_from(inner))]
    leaf = draw(non_json)
    if isinstance(target, dict):
        target[draw(st.text(max_size=5))] = leaf
    else:
        target.append(leaf)
    return data


huge_data = st.one_of(
    st.integers(MAX_EVENT_BYTES, 5 * MAX_EVENT_BYTES).map(lambda n: {"blob": "x" * n}),
    # Fewer characters than the limit, more bytes: the limit counts UTF-8 bytes.
    st.integers(MAX_EVENT_BYTES // 2, MAX_EVENT_BYTES - 10).map(lambda n: {"blob": "\u20ac" * n}),
    st.integers(MAX_EVENT_BYTES, 2 * MAX_EVENT_BYTES).map(lambda n: {"k": ["a"] * n}),
)

# (data, verdict): "json" must be accepted when everything else is valid, "bad" and "huge"
# must be rejected, "any" may go either way but only with InvalidEventError.
event_data = st.one_of(
    json_objects.map(lambda d: (d, "json")),
    with_bad_leaf().map(lambda d: (d, "bad")),
    huge_data.map(lambda d: (d, "huge")),
    st.one_of(not_strings, st.text(max_size=5)).map(lambda d: (d, "bad")),
    st.just((nested(50), "bad")),  # a list is not an object
    st.just(({"deep": nested(200)}, "json")),
)


@st.composite
def events(draw: Any) -> tuple[Any, bool | None]:
    """An event (a dict, an ``Event`` or garbage) and whether it must be accepted (True),
    must be rejected (False) or may be either (None)."""
    name = draw(event_names)
    event_id = draw(event_ids)
    data, verdict = draw(event_data)
    fields: dict[str, Any] = {"name": name, "data": data}
    if event_id is not None:
        fields["id"] = event_id
    extra = draw(st.sampled_from(["", "", "", "ts", "bad_ts", "user", "v", "unknown"]))
    ok_extra = extra in ("", "ts", "user", "v")
    if extra == "ts":
        fields["ts"] = draw(st.integers(0, 2 ** 62))
    elif extra == "bad_ts":
        fields["ts"] = draw(st.one_of(st.integers(max_value=-1), st.just("soon"),
                                      st.just(1.5), st.just([1])))
    elif extra == "user":
        fields["user"] = draw(st.dictionaries(st.text(max_size=5), json_leaves, max_size=2))
    elif extra == "v":
        fields["v"] = draw(st.text(max_size=5))
    elif extra == "unknown":
        fields["secret"] = 1
    name_ok = isinstance(name, str) and NAME_RE.fullmatch(name) is not None \
        and not name.startswith("fanout/")
    id_ok = event_id is None or (isinstance(event_id, str)
                                 and EVENT_ID_RE.fullmatch(event_id) is not None)
    expect: bool | None
    if not (name_ok and id_ok and ok_extra) or verdict in ("bad", "huge"):
        expect = False
    elif verdict == "json":
        size = len(json.dumps(fields, ensure_ascii=False).encode())
        expect = True if size + 100 < MAX_EVENT_BYTES else None
    else:
        expect = None
    return fields, expect


# -- helpers -----------------------------------------------------------------------------

def snapshot(client: redis.Redis) -> dict[bytes, bytes | None]:
    """Every key of the Redis (run state and broker) with its serialized value."""
    return {key: client.dump(key) for key in client.scan_iter()}


def listening_fanout(app: Celery) -> Fanout:
    """A Fanout with a function on ``app/*``: an event that passed validation would write
    an event, a run and a broker message."""
    app.conf.fanout_max_event_bytes = MAX_EVENT_BYTES
    fanout = Fanout(app)

    @fanout.function("listener", event="app/*")
    def listener(ctx):
        return None

    return fanout


def outcome(call: Callable[[], Any]) -> tuple[bool, Any]:
    """(True, result) or (False, the FanoutError); any other exception fails the test."""
    try:
        return True, call()
    except FanoutError as exc:
        return False, exc


# -- events ------------------------------------------------------------------------------

pytestmark = pytest.mark.integration


def test_send_accepts_or_rejects_every_event_with_invalid_event_error(app, redis_client):
    fanout = listening_fanout(app)

    @REDIS
    @given(case=events())
    @example(case=({"name": "app/x", "data": {"s": "\ud800"}}, False))
    @example(case=({"name": "app/x", "data": {"\udfff": 1}}, False))
    @example(case=({"name": "app/x", "data": {"deep": nested(5000)}}, False))
    @example(case=({"name": "app/x", "data": {"n": 10 ** 5000}}, False))
    @example(case=({"name": "app/x", "data": {"n": math.nan}}, False))
    @example(case=({"name": "app/x\n", "data": {}}, False))
    @example(case=({"name": "app/x", "id": "abc\n", "data": {}}, False))
    @example(case=({"name": "app/x", "data": {}, "v": "\ud800"}, False))
    @example(case=({"name": "app/x", "data": {"blob": "\u20ac" * 2000}}, False))
    @example(case=({"name": "app/x", "data": {"ok": "\u00e9\U0001f600"}}, True))
    def check(case: tuple[dict[str, Any], bool | None]) -> None:
        fields, expect = case
        redis_client.flushall()
        before = snapshot(redis_client)
        accepted, result = outcome(lambda: fanout.send(fields))
        if not accepted:
            assert isinstance(result, InvalidEventError), repr(result)
            assert expect is not True, f"a valid event was rejected: {result}"
            assert snapshot(redis_client) == before, "a rejected event wrote to Redis"
            return
        assert expect is not False, f"an invalid event was accepted: {fields!r}"
        [event_id] = result
        assert EVENT_ID_RE.fullmatch(event_id)
        stored = fanout.get_event(event_id)
        assert stored["name"] == fields["name"]
        assert stored["data"] == fields["data"]  # JSON round trip, unchanged
        runs = fanout.runs_for_event(event_id)
        listens = fields["name"].startswith("app/")
        assert [r.function_id for r in runs] == (["listener"] if listens else [])

    check()


def test_event_model_accepts_or_rejects_with_invalid_event_error():
    @PURE
    @given(case=events())
    def check(case: tuple[dict[str, Any], bool | None]) -> None:
        fields, expect = case
        accepted, result = outcome(lambda: Event(**fields))
        if accepted:
            # The model checks names, ids and types; JSON and size are checked by send.
            assert isinstance(result, Event)
            assert NAME_RE.fullmatch(result.name)
            assert result.id is None or EVENT_ID_RE.fullmatch(result.id)
        else:
            assert isinstance(result, InvalidEventError)

    check()


def test_send_rejects_anything_but_events_with_invalid_event_error(app, redis_client):
    fanout = listening_fanout(app)

    @PURE
    @given(value=st.one_of(not_strings.filter(lambda v: v != []), st.text(max_size=5), st.sets(st.integers(), max_size=2),
                           st.lists(st.one_of(st.integers(), st.text(max_size=3)),
                                    min_size=1, max_size=3),
                           st.dictionaries(st.integers(), st.integers(), min_size=1,
                                           max_size=2)))
    def check(value: Any) -> None:
        before = snapshot(redis_client)
        with pytest.raises(InvalidEventError):
            fanout.send(value)
        assert snapshot(redis_client) == before

    check()


@st.composite
def batches_with_a_bad_event(draw: Any) -> tuple[list[dict[str, Any]], int]:
    good = draw(st.lists(st.builds(lambda n, d: {"name": n, "data": d},
                                   st.from_regex(r"app/[a-z.]{1,10}", fullmatch=True),
                                   st.dictionaries(st.text(max_size=5), json_leaves,
                                                   max_size=3)),
                         min_size=1, max_size=6))
    bad_cases = events().filter(lambda case: case[1] is False).map(lambda case: case[0])
    bad = draw(st.lists(bad_cases, min_size=1, max_size=2))
    batch: list[dict[str, Any]] = list(good)
    for event in bad:
        batch.insert(draw(st.integers(0, len(batch))), event)
    first_bad = min(batch.index(e) for e in bad)
    return batch, first_bad


def test_a_batch_with_one_bad_event_sends_nothing(app, redis_client):
    fanout = listening_fanout(app)

    @REDIS
    @given(case=batches_with_a_bad_event())
    def check(case: tuple[list[dict[str, Any]], int]) -> None:
        batch, first_bad = case
        redis_client.flushall()
        fanout.send({"name": "app/earlier"})  # existing state must survive untouched
        before = snapshot(redis_client)
        with pytest.raises(InvalidEventError, match=f"event #{first_bad} of the batch"):
            fanout.send(batch)
        assert snapshot(redis_client) == before

    check()


# -- ids cannot reach other runs' keys ---------------------------------------------------

def crafted_around(victim: str) -> st.SearchStrategy[str]:
    """Strings built around an existing id to reach its keys through a hash tag or a key
    separator."""
    return st.one_of(
        st.sampled_from([
            f"{victim}}}", f"{{{victim}}}", f"{victim}}}:steps", f"{victim}}}:run",
            f"fanout:{{{victim}}}:steps", f"{victim}:runs", f"{victim}*", "*", f"{victim}\n",
            f"{victim} ", victim.upper(), f"{victim}}}:x{{", f"x}}:{victim}",
        ]),
        st.builds(lambda a, b: f"{a}{victim}{b}",
                  st.text(st.sampled_from(KEY_TRICKS), min_size=1, max_size=3),
                  st.text(st.sampled_from(KEY_TRICKS + "abc"), max_size=3)),
    )


def test_crafted_event_ids_are_rejected_and_touch_no_other_run(app, redis_client):
    fanout = listening_fanout(app)
    [victim_event] = fanout.send({"name": "app/victim", "data": {"v": 1}})
    [victim_run] = fanout.runs_for_event(victim_event)

    @REDIS
    @given(event_id=st.one_of(
        crafted_around(victim_event), crafted_around(victim_run.id),
        st.text(st.sampled_from(KEY_TRICKS + "ab09"), min_size=1, max_size=20),
    ).filter(lambda s: not EVENT_ID_RE.fullmatch(s)))
    def check(event_id: str) -> None:
        before = snapshot(redis_client)
        with pytest.raises(InvalidEventError):
            fanout.send({"name": "app/attack", "id": event_id, "data": {}})
        with pytest.raises(InvalidEventError):
            Event(name="app/attack", id=event_id)
        # Reading by a crafted id finds nothing and writes nothing.
        assert fanout.runs_for_event(event_id) == []
        assert fanout.get_event(event_id) is None
        assert snapshot(redis_client) == before

    check()
    assert fanout.get_run(victim_run.id) == victim_run


def test_crafted_run_ids_read_and_cancel_nothing(app, redis_client):
    fanout = listening_fanout(app)
    [victim_event] = fanout.send({"name": "app/victim", "data": {"v": 1}})
    [victim] = fanout.runs_for_event(victim_event)

    @REDIS
    @given(run_id=crafted_around(victim.id).filter(lambda s: s != victim.id))
    def check(run_id: str) -> None:
        before = snapshot(redis_client)
        assert fanout.get_run(run_id) is None
        assert fanout.cancel(run_id) == "missing"
        assert snapshot(redis_client) == before

    check()
    assert fanout.get_run(victim.id).status == "queued"


def test_function_ids_with_key_characters_are_rejected():
    app = Celery("ids", set_as_current=False)
    app.conf.broker_url = "redis://127.0.0.1:1/0"  # never connected to
    fanout = Fanout(app)
    declared: set[str] = set()

    @PURE
    @given(function_id=st.one_of(
        st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_\-.]{0,127}", fullmatch=True),
        st.sampled_from(["a{b}", "a}", "{a", "a:b", "a*", "*", "", "-a", ".a", "a" * 129,
                         "a\n", "a b", "\u00e9", "a/b", "a}:steps"]),
        tricky_text, not_strings))
    @example(function_id="fn\n")  # `$` also matched before a trailing newline
    def check(function_id: Any) -> None:
        accepted, result = outcome(lambda: fanout.function(function_id)(lambda ctx: None))
        if accepted:
            assert FUNCTION_ID_RE.fullmatch(function_id)
            assert function_id not in declared
            declared.add(function_id)
        else:
            assert isinstance(result, ConfigurationError), repr(result)
            valid = isinstance(function_id, str) and FUNCTION_ID_RE.fullmatch(function_id)
            assert not valid or function_id in declared  # only a duplicate is refused

    check()
    app.close()


def test_event_triggers_are_validated_with_configuration_error():
    app = Celery("triggers", set_as_current=False)
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    fanout = Fanout(app)
    counter = iter(range(10 ** 6))

    @PURE
    @given(pattern=st.one_of(valid_names, valid_names.map(lambda n: n.rstrip("*/.") + "/*"),
                             event_names))
    @example(pattern="app/x\n")
    @example(pattern="app/\n*")
    def check(pattern: Any) -> None:
        fid = f"f{next(counter)}"
        accepted, result = outcome(lambda: fanout.function(fid, event=pattern)(lambda c: None))
        if accepted:
            if not isinstance(pattern, str):  # None or []: an invoke-only function
                assert fanout.functions[fid].definition.events == ()
                return
            head = pattern[:-1] if pattern.endswith("*") else pattern
            assert NAME_RE.fullmatch(head), pattern
            assert "{" not in pattern and "}" not in pattern
        else:
            assert isinstance(result, ConfigurationError), repr(result)

    check()
    app.close()


# -- cron, durations, match paths -------------------------------------------------------

cron_field = st.one_of(
    st.just("*"), st.integers(0, 70).map(str), st.builds("{}-{}".format, st.integers(0, 60),
                                                        st.integers(0, 60)),
    st.builds("*/{}".format, st.integers(0, 70)), st.sampled_from(["L", "?", "R", "H", "5#2",
                                                                    "MON", "jan", "1,2,3",
                                                                    "-1", "*/", ",", ""]),
    st.text(tricky_char, max_size=4),
)
cron_strings = st.one_of(
    st.lists(cron_field, min_size=4, max_size=7).map(" ".join),
    st.builds(lambda z, rest: f"TZ={z} {rest}",
              st.one_of(st.sampled_from(["Europe/Paris", "UTC", "America/New_York",
                                         "../../etc/passwd", "", "Nowhere/City",
                                         "a" * 300, "Europe/Paris\x00"]),
                        tricky_text),
              st.lists(cron_field, min_size=5, max_size=5).map(" ".join)),
    st.sampled_from(["0 12 * * 5", "*/5 * * * *", "0 0 31 2 *", "0 0 30 2 *", "0 0 29 2 *",
                     "@daily", "@reboot", "* * * * * * *", "60 * * * *", "0 24 * * *",
                     "TZ=Europe/Paris 0 2 * * *", "CRON_TZ=UTC 0 0 1 1 *"]),
    tricky_text,
    not_strings,
)


def test_cron_strings_are_accepted_and_fire_or_are_rejected_with_configuration_error():
    now = now_ms()

    @PURE
    @given(text=cron_strings)
    @example(text="0 0 31 2 *")  # valid syntax, never fires
    @example(text="TZ=" + "a" * 300 + " * * * * *")  # ZoneInfo: OSError, name too long
    def check(text: Any) -> None:
        accepted, result = outcome(lambda: parse_cron(text))
        if not accepted:
            assert isinstance(result, ConfigurationError), repr(result)
            return
        # An accepted expression fires: beat and `celery fanout functions` can use it.
        [when] = next_fire_times(result, now, 1)
        assert when.timestamp() * 1000 > now

    check()


def test_cron_functions_validate_their_expressions():
    app = Celery("crons", set_as_current=False)
    app.conf.broker_url = "redis://127.0.0.1:1/0"
    fanout = Fanout(app)
    counter = iter(range(10 ** 6))

    @settings(PURE, max_examples=100)
    @given(text=cron_strings)
    def check(text: Any) -> None:
        fid = f"cron{next(counter)}"
        accepted, result = outcome(lambda: fanout.function(fid, cron=text)(lambda c: None))
        if not accepted:
            assert isinstance(result, ConfigurationError), repr(result)

    check()
    now = now_ms()
    for definition in (task.definition for task in fanout.functions.values()):
        for text in definition.crons:
            assert len(next_fire_times(parse_cron(text), now, 1)) == 1
    app.close()


durations = st.one_of(
    st.integers(), st.integers(min_value=10 ** 300), st.floats(),
    st.timedeltas(), st.just(timedelta.max), st.just(-timedelta.resolution),
    st.builds(lambda n, u: f"{n}{u}", st.integers(-5, 10 ** 6),
              st.sampled_from(["ms", "s", "m", "h", "d", "w", "y", "", "S", " s"])),
    st.lists(st.builds(lambda n, u: f"{n}{u}", st.floats(0, 1000).map(lambda f: f"{f:g}"),
                       st.sampled_from(["ms", "s", "m", "h", "d", "w"])),
             min_size=1, max_size=4).map("".join),
    st.sampled_from(["1h30m", "1e3s", "nan", "inf", "-1s", "0", "0s", "", " ", "1 h", "1.5.5s",
                     "9" * 400 + "s", "1h 30m", "\u0663s", "s", "1", "one second"]),
    tricky_text, st.none(), st.booleans(), st.binary(max_size=4), st.just(Decimal("1")),
    st.just(datetime(2024, 1, 1)),
)


def test_durations_are_seconds_within_a_year_or_invalid_step_error():
    @PURE
    @given(value=durations, allow_zero=st.booleans())
    @example(value=10 ** 400, allow_zero=True)  # too large for a float
    def check(value: Any, allow_zero: bool) -> None:
        accepted, result = outcome(lambda: parse_duration(value, allow_zero=allow_zero))
        if not accepted:
            assert isinstance(result, InvalidStepError), repr(result)
            return
        assert isinstance(result, float)
        assert 0 <= result <= MAX_SECONDS and not math.isnan(result)
        assert result > 0 or allow_zero
        assert not isinstance(value, bool)

    check()


match_paths = st.one_of(
    st.from_regex(r"[A-Za-z0-9_\-]{1,10}(\.[A-Za-z0-9_\-]{1,10}){0,4}", fullmatch=True),
    st.sampled_from(["data.user_id", "data..x", ".data", "data.", "data.x\n", "data[0]",
                     "data.__class__", "__import__('os').system('true')", "data.x.0",
                     "a" * 257, "a" * 256, "data.{x}", "data.*", "data x", "", "data.\u00e9"]),
    tricky_text, not_strings,
)


def test_match_paths_are_dotted_names_or_invalid_step_error():
    @PURE
    @given(path=match_paths, data=json_values)
    @example(path="data.user_id\n", data=None)
    def check(path: Any, data: Any) -> None:
        accepted, result = outcome(lambda: check_path(path))
        if not accepted:
            assert isinstance(result, InvalidStepError), repr(result)
            if path is not None:  # CancelOn(match=None) cancels on any such event
                with pytest.raises(ConfigurationError):
                    CancelOn(event="app/cancel", match=path)
            return
        assert result == path and PATH_RE.fullmatch(path) and len(path) <= 256
        assert CancelOn(event="app/cancel", match=path).match == path
        # Resolving an accepted path against any event data never raises.
        resolve_path({"data": data}, path)

    check()


# -- step ids on real runs ---------------------------------------------------------------

step_ids = st.one_of(
    st.sampled_from(["a", "a", "a:1", "x}:steps", "{x}", "}", "{", "*", ":", "a:b:c", "\x00",
                     "\n", "", "s" * 256, "s" * 257, "\u00e9\u00e8", "\U0001f600", "\ud800",
                     "x\udfff", "\u202eevil", "fanout:{x}:run"]),
    tricky_text,
    st.text(max_size=300),
    st.integers(), st.none(),
)


def valid_step_id(step_id: Any) -> bool:
    if not isinstance(step_id, str) or not 0 < len(step_id) <= 256:
        return False
    try:
        step_id.encode()
    except UnicodeEncodeError:
        return False
    return True


def test_step_ids_of_any_characters_stay_fields_of_their_own_run(app, fanout, worker,
                                                                 state_client):
    plans: dict[str, list[Any]] = {}
    keys = fanout.store.keys
    broker_keys = {"celery", "unacked", "unacked_index", "unacked_mutex"}

    @fanout.function("steps", event="app/steps",
                     retries=RetryPolicy(max_retries=0, backoff=0.05, jitter=0))
    def steps(ctx):
        for step_id in plans[ctx.event.id]:
            ctx.step.run(step_id, lambda: 1)
        return len(plans[ctx.event.id])

    def run_with(step_ids_: list[Any]) -> tuple[Any, str]:
        event_id = uuid.uuid4().hex
        plans[event_id] = step_ids_
        fanout.send({"name": "app/steps", "id": event_id})
        [run] = fanout.runs_for_event(event_id)
        return fanout.wait_for_run(run.id, timeout=20), event_id

    with worker(app):
        victim, _ = run_with(["v1", "v2"])  # also creates every global index key
        assert victim.status == "completed"
        victim_keys = [keys.run(victim.id), keys.steps(victim.id)]
        victim_state = [state_client.dump(k) for k in victim_keys]

        @WORKER
        @given(ids=st.lists(step_ids, min_size=1, max_size=4))
        @example(ids=["ok", "\ud800"])  # not UTF-8: Redis cannot store it
        @example(ids=["x}:steps", "x}:steps", "{x}"])
        def check(ids: list[Any]) -> None:
            before = set(state_client.scan_iter())
            run, event_id = run_with(ids)
            bad = [i for i, s in enumerate(ids) if not valid_step_id(s)]
            if bad:
                assert run.status == "failed", run
                assert run.error["type"] == "InvalidStepError", run.error
                assert len(run.steps) == bad[0]
            else:
                assert run.status == "completed", run.error
                assert run.output == len(ids)
                assert len(run.steps) == len(ids)
            for step, step_id in zip(run.steps, ids, strict=False):
                assert step.id == step_id or step.id.startswith(f"{step_id}:")
            fields = state_client.hkeys(keys.steps(run.id))
            assert sorted(fields) == sorted(s.id for s in run.steps)
            own = {keys.run(run.id), keys.steps(run.id), keys.done(run.id),
                   keys.event(event_id), keys.event_runs(event_id)}
            if keys.sharded:  # a shard's indexes are made by the first run or event in it
                shard = keys.shard_of(run.id)
                own |= {keys.event_runs(event_id, shard), keys.function_runs("steps", shard),
                        keys.events(keys.event_shard(event_id)), keys.timers(shard),
                        keys.leases(shard), keys.dispatch(shard), keys.deadlines(shard)}
            new = set(state_client.scan_iter()) - before
            strays = {k for k in new - own
                      if k not in broker_keys and not k.startswith("_kombu.")}
            assert not strays, f"keys outside the run's own: {strays}"
            assert [state_client.dump(k) for k in victim_keys] == victim_state

        check()
        # The worker is still alive and serving runs.
        after, _ = run_with(["still", "alive"])
        assert after.status == "completed"


step_outputs = st.one_of(
    json_values.map(lambda v: (v, "json")),
    non_json.map(lambda v: (v, "bad")),
    with_bad_leaf().map(lambda v: (v, "bad")),
    st.integers(MAX_EVENT_BYTES, 3 * MAX_EVENT_BYTES).map(lambda n: ("\u20ac" * n, "huge")),
)


def test_step_outputs_are_json_round_trips_or_fail_with_step_output_error(app, fanout, worker):
    app.conf.fanout_max_step_output_bytes = MAX_EVENT_BYTES
    outputs: dict[str, Any] = {}

    @fanout.function("outputs", event="app/outputs",
                     retries=RetryPolicy(max_retries=0, backoff=0.05, jitter=0))
    def produce(ctx):
        return {"step": ctx.step.run("produce", lambda: outputs[ctx.event.id])}

    with worker(app):
        @WORKER
        @given(case=step_outputs)
        @example(case=("\ud800", "bad"))
        @example(case=(nested(5000), "bad"))
        @example(case=({"big": 10 ** 5000}, "bad"))
        def check(case: tuple[Any, str]) -> None:
            value, verdict = case
            event_id = uuid.uuid4().hex
            outputs[event_id] = value
            fanout.send({"name": "app/outputs", "id": event_id})
            [run] = fanout.runs_for_event(event_id)
            done = fanout.wait_for_run(run.id, timeout=20)
            if verdict == "json":
                assert done.status == "completed", done.error
                assert done.output == {"step": value}
                assert done.steps[0].output == value
            else:
                assert done.status == "failed"
                assert done.error["type"] == "StepOutputError", done.error
                assert done.steps == []  # nothing was checkpointed

        check()
