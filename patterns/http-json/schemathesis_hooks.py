"""Schemathesis hooks for the orders API (tests/schemathesis.rs and the gateway's test).

Generated Idempotency-Key values repeat ("0", "00"), and a key sent again with another body is
refused (422), as the service must: a run would spend its creates on that one refusal and could
not tell it from a body the service wrongly refuses. Each valid key is made fresh before the
request is sent; a key the case breaks on purpose (empty, too long, not visible ASCII) is left as
generated, so the service's refusal of it is still checked. Replays of one key are tested by hand
(tests/api.rs).
"""

import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"^[!-~]{1,255}$")


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers
    if not headers:
        return
    key = headers.get("idempotency-key")
    if isinstance(key, str) and VALID_KEY.fullmatch(key):
        headers["idempotency-key"] = f"st-{uuid.uuid4()}"
