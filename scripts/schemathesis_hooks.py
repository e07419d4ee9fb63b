"""Constraints of the CRM's APIs that JSON Schema cannot state, for schemathesis.

Business time (`occurred_at`) must fall between the configured earliest time and 24 hours
ahead of the server's clock; the OpenAPI documents say so in words and bound the year with a
pattern, but "not more than a day from now" moves with the clock. Generated bodies keep a
business time inside that window (a time past it is refused with 422 naming `occurred_at`,
which the Rust tests assert).
"""
import re
import uuid
from datetime import datetime, timedelta, timezone

import schemathesis

# CRM-Min-Position as the query API's document describes it
POSITIONS = re.compile(r"^([^:,]*customer-events:[0-9]+:[0-9]+(, *[^:,]*customer-events:[0-9]+:[0-9]+)*)?$")


def _within_window(body):
    if isinstance(body, dict) and isinstance(body.get("occurred_at"), str):
        try:
            at = datetime.fromisoformat(body["occurred_at"].replace("Z", "+00:00"))
        except ValueError:
            return body
        if at.tzinfo is None:
            return body
        latest = datetime.now(timezone.utc) + timedelta(hours=23)
        if at > latest:
            body["occurred_at"] = latest.isoformat()
    elif isinstance(body, list):
        for item in body:
            _within_window(item)
    return body


@schemathesis.hook
def map_body(ctx, body):
    return _within_window(body)


@schemathesis.hook
def map_headers(ctx, headers):
    # A client makes one Idempotency-Key per request; schemathesis draws the same few values
    # for every operation, and the server rightly refuses a key reused with another request
    # (422, tested in command-service/tests/commands.rs). Each generated request gets its own.
    # (Only keys the document allows: a negative case keeps its invalid key.)
    key = (headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and 0 < len(key.strip()) <= 200:
        headers["Idempotency-Key"] = str(uuid.uuid4())
    # A position names a record of the log: one read from a command's answer is waited for,
    # one that cannot exist is refused (both tested in crm/tests/e2e.rs); generated ones are
    # neither, so they are left out.
    # (Only well-formed ones: a negative case keeps its malformed position.)
    position = (headers or {}).get("CRM-Min-Position")
    if isinstance(position, str) and POSITIONS.match(position) and position:
        del headers["CRM-Min-Position"]
    return headers


@schemathesis.hook
def map_query(ctx, query):
    # A cursor is opaque: only a page's `next_cursor` is one (round trips tested in
    # query-service/tests/protocol.rs and endpoints.rs).
    # (Only non-empty ones: an empty cursor is a negative case, refused with 400.)
    if query and isinstance(query.get("cursor"), str) and query["cursor"]:
        del query["cursor"]
    return _period_in_order(query)


def _period_in_order(query):
    # A period's end must come after its start ([from, to); expected_close_from..to);
    # JSON Schema cannot relate two parameters. A reversed period is refused with 400, tested
    # in query-service/tests/endpoints.rs. A generated end at or before its start is moved to
    # the day after the start.
    for start, end in (("from", "to"), ("expected_close_from", "expected_close_to")):
        if not query or start not in query or end not in query:
            continue
        try:
            def parse(v):
                at = datetime.fromisoformat(str(v).replace("Z", "+00:00"))
                return at if at.tzinfo else at.replace(tzinfo=timezone.utc)

            a, b = parse(query[start]), parse(query[end])
        except ValueError:
            continue
        if b < a or (b == a and start == "from"):
            later = a.astimezone(timezone.utc) + timedelta(days=1)
            query[end] = later.date().isoformat() if len(str(query[end])) == 10 else later.isoformat()
    return query
