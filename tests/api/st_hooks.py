"""Schemathesis hooks for test_openapi_fuzz: each generated payment is a new client request.

A real client mints a fresh Idempotency-Key per payment. Generated keys are short and
collide ("null" twice, with different bodies), which the API rightly refuses with 422 — a
refusal schemathesis would take for a schema-valid request rejected. A valid generated key
gets a unique suffix; an invalid one (empty, too long) is left as generated. Reusing a key
is covered by tests/e2e (the same key and body replays, another body is a 422).
"""

import uuid

import schemathesis

KEY = "Idempotency-Key"
MAX_KEY = 255


@schemathesis.hook
def before_call(context, case, kwargs):
    # before_call, not map_headers: it runs before every request of every phase (the
    # coverage phase builds its cases without the map_* hooks).
    key = (case.headers or {}).get(KEY)
    if isinstance(key, str) and 1 <= len(key) <= MAX_KEY:
        case.headers[KEY] = f"{key[:MAX_KEY - 33]}-{uuid.uuid4().hex}"
