"""Schemathesis hooks for the signed-webhooks run: requests to Twilio's webhook routes are signed as Twilio
signs them, so the fuzzer gets past the signature check to the handlers behind it.

schemathesis.toml gives the spec's `twilioSignature` scheme a placeholder value, and each request whose
header still holds it is signed just before it is sent. A request without the header, or with a value
of the fuzzer's own (the `ignored_auth` check sends both), goes out as it is and must get its 403.
The signature is made over the request exactly as sent (requests' prepared URL and body), keyed with
TWILIO_AUTH_TOKEN: base64 HMAC-SHA1 of the URL followed by every form name and value, sorted and
deduplicated as src/carrier/signature.rs (after twilio-python's request_validator) does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from urllib.parse import parse_qsl

import requests
import schemathesis

HEADER = "X-Twilio-Signature"
PLACEHOLDER = "signed-when-sent"  # schemathesis.toml, [auth.openapi.twilioSignature]


def sign(token: str, url: str, body: bytes | str | None) -> str:
    if isinstance(body, str):
        body = body.encode("utf-8")
    pairs = parse_qsl((body or b"").decode("utf-8", errors="replace"), keep_blank_values=True)
    mac = hmac.new(token.encode("utf-8"), url.encode("utf-8"), hashlib.sha1)
    for name, value in sorted({(n.encode("utf-8"), v.encode("utf-8")) for n, v in pairs}):
        mac.update(name)
        mac.update(value)
    return base64.b64encode(mac.digest()).decode("ascii")


class TwilioSignature(requests.auth.AuthBase):
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if request.headers.get(HEADER) == PLACEHOLDER:
            request.headers[HEADER] = sign(self.token, request.url, request.body)
        return request


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path.startswith("/twilio/"):
        kwargs["auth"] = TwilioSignature(os.environ["TWILIO_AUTH_TOKEN"])
