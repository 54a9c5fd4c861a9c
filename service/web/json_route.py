"""The route class of every ERS router: a JSON body that gives one key twice in an object
(``{"confirm": false, "confirm": true}``) is refused with a 422 naming the key, as a query
parameter given twice is, instead of taking the last value as ``json.loads`` does: which one
was meant cannot be told, and a proxy or a log that read the first would disagree with ERS.
A JSON body sent with two Content-Type headers is refused the same way, and so is one sent
with a Content-Encoding (gzip, br, ...): ERS decodes none, so a compressed body would be
refused as bytes that are not UTF-8, and a plain one labelled compressed taken as it is.

FastAPI decodes the body with ``Request.json``; the route hands its handler a request whose
``json`` decodes with a check of each object's keys, and a repeated key is a
``json.JSONDecodeError``, so FastAPI's own handling (a token check first, then the 422 that
``service.web.http_errors`` words) is the one every malformed body gets."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from telemetry.json_keys import RepeatedKey, TooLongNumber, loads_once_each

# How the decode error's message begins: ``service.web.http_errors`` gives it as it is.
REPEATED_KEY = "the request body gives the key"
TOO_LONG_NUMBER = f"a number in the request body has more than {TooLongNumber.digits} digits"
CONTENT_TYPES = "the request carries"
ENCODED = "the request body is sent with Content-Encoding"
REFUSED_AS_SENT = (REPEATED_KEY, CONTENT_TYPES, ENCODED, TOO_LONG_NUMBER)


class _OneValueEachRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            kinds = self.headers.getlist("content-type")
            if len(kinds) > 1:  # FastAPI reads the first; a proxy may read another
                raise json.JSONDecodeError(
                    f"{CONTENT_TYPES} {len(kinds)} Content-Type headers; send one, "
                    "Content-Type: application/json",
                    "",
                    0,
                )
            codings = ",".join(self.headers.getlist("content-encoding")).split(",")
            encoded = [c.strip() for c in codings if c.strip().lower() not in ("", "identity")]
            if encoded:
                raise json.JSONDecodeError(
                    f"{ENCODED} {', '.join(encoded)}, which ERS does not decode; send the "
                    "JSON uncompressed, without a Content-Encoding header",
                    "",
                    0,
                )
            body = await self.body()
            try:
                self._json = loads_once_each(body)
            except RepeatedKey as exc:
                shown = exc.shown
                message = (
                    f"{REPEATED_KEY} {shown} more than once in one object; give each key "
                    "once (which value was meant cannot be told)"
                )
                text = body.decode("utf-8", "replace")
                first = text.find(shown)
                again = text.find(shown, first + 1) if first >= 0 else -1
                raise json.JSONDecodeError(message, text, max(again, 0)) from None
            except TooLongNumber:
                raise json.JSONDecodeError(
                    f"{TOO_LONG_NUMBER}; send it shorter, or as a string", "", 0
                ) from None
        return self._json


class JsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def one_value_each(request: Request) -> Response:
            return await handler(_OneValueEachRequest(request.scope, request.receive))

        return one_value_each
