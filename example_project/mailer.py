"""A fake SMTP-like mail server that "delivers" into the database's outbox table.

It behaves like the real thing in the two ways that matter for retries:

- an invalid address is a permanent rejection (SMTP 550): it raises
  ``NonRetriableError``, so the step fails at once and only that run fails;
- the relay is flaky: the first connection for every third user id is dropped with a
  transient ``ConnectionError`` (SMTP 421), which the step's retry policy absorbs.

Attempts are counted in the database, not in memory, because a retry may run in
another worker thread or process.
"""

from __future__ import annotations

import re

from fanout_celery import NonRetriableError

from . import users

# Deliberately simple: one "@", a non-empty local part, a dotted domain.
ADDRESS_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")

#: The first attempt for users whose id is a multiple of this fails transiently.
FLAKY_EVERY = 3


def is_flaky_for(user_id: int) -> bool:
    """Whether the relay drops the first connection for this user."""
    return user_id % FLAKY_EVERY == 0


def send(user_id: int, to: str, subject: str, body: str) -> int:
    """Deliver one message to the outbox; returns its outbox id.

    Raises:
        NonRetriableError: the address is invalid (retrying cannot help).
        ConnectionError: the relay dropped the connection (try again later).
    """
    if not ADDRESS_RE.match(to):
        raise NonRetriableError(f"550 5.1.3 invalid recipient address {to!r}")
    with users.connect() as conn:
        conn.execute(
            "INSERT INTO mail_attempts (user_id, attempts) VALUES (?, 1) "
            "ON CONFLICT (user_id) DO UPDATE SET attempts = attempts + 1", (user_id,))
        attempt = conn.execute("SELECT attempts FROM mail_attempts WHERE user_id = ?",
                               (user_id,)).fetchone()[0]
    if attempt == 1 and is_flaky_for(user_id):
        raise ConnectionError("421 4.4.2 connection dropped by relay, try again later")
    with users.connect() as conn:
        cursor = conn.execute(
            "INSERT INTO outbox (user_id, email, subject, body) VALUES (?, ?, ?, ?)",
            (user_id, to, subject, body))
        return int(cursor.lastrowid or 0)
