"""Secrets other services' spans may carry, taken out before ERS keeps or serves them.

ERS makes its own spans without secrets; a span another service sends to the OTLP intake
may hold any: a password in a URL (``postgres://admin:hunter2@db``, in a URL attribute or
an error message), an API key in a URL's query under any name, the value of an
``Authorization`` or ``Cookie`` header recorded as an attribute. Kept traces and incidents
are read by operators (and outside production by anyone on loopback), so these values are
replaced by ``REDACTED`` as the spans arrive; names are kept, so the span still says what
was sent.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping, Sequence
from typing import Any

REDACTED = "REDACTED"
# The user information of a URL (user:password, or a name alone, which may be a token): its
# authority up to the last "@". In any text after a scheme; a URL alone may have none.
_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#]*@")
# A URL in text, up to a space or a quote: its query and fragment run to there.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]*")
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?[^/?#]*@")
# The credentials of an Authorization header quoted in text ("rejected 'Authorization:
# Bearer sk-...'"): what follows the scheme, up to a space or a quote; a word of prose
# ("Basic authentication failed") has no digit or token punctuation, and stays.
_AUTH_SCHEME = re.compile(
    r"\b(Bearer|Basic|Token)\s+(?![\w-]+=[\"'])(?=[^\s'\"<>`,;]*[0-9_+/=-])[^\s'\"<>`,;]{8,}",
    re.IGNORECASE,
)
# The header itself quoted ("Authorization: Basic dXNlcjpwYXNz"): whatever follows its scheme
# is the credential, letters alone or short as it may be.
_AUTH_HEADER = re.compile(
    r"(\b(?:proxy-)?authorization\s*[:=]\s*['\"]?[A-Za-z][\w-]*\s+)[^\s'\"<>`,;]+",
    re.IGNORECASE,
)
# A credential written as a name=value pair outside a URL: a libpq conninfo quoted in an
# error ("host=db user=ers password=..."), a URL without its scheme ("url: /v1?api_key=...").
# The name ends in one of these words (sslpassword, client_secret, AWS_SECRET_ACCESS_KEY); a
# bare "key" (a cache's, a row's) is kept. A name is matched from its first character only,
# so the search stays linear in the text's length.
_SECRET_WORDS = (
    r"password|passwd|secret|token|apikey|api[_-]key|access[_-]key|secret[_-]key"
    r"|private[_-]key|credentials?"
)
_SECRET_PAIR = re.compile(
    rf"(?<![A-Za-z0-9_-])([A-Za-z0-9_-]{{0,40}}?(?:pwd|{_SECRET_WORDS}))"
    r"=('[^']*'|\"[^\"]*\"|[^\s&#,;'\"<>`]+)",
    re.IGNORECASE,
)
_OPENERS = {")": "(", "]": "[", "}": "{"}
# The same words ending an attribute's or a map key's name: its whole value is the secret.
# Not pwd: there it names a working directory (a process's PWD), not a password.
_SECRET_NAME = re.compile(rf"(?:{_SECRET_WORDS})$", re.IGNORECASE)
# Query parameters that carry no secret, each with the shape its value must have to be kept:
# Azure OpenAI's api-version (?api-version=2024-02-01, 2024-02-15-preview) names the API a
# call was made to, which a span of a failing call needs; under that name any other value
# is redacted, as every value of any other parameter is (a key goes under any name).
PUBLIC_QUERY_VALUES = {"api-version": re.compile(r"\d{4}-\d{2}-\d{2}(?:-[a-z]{1,12})?")}
# Attributes holding a whole URL, or its query alone (the stable and the old conventions;
# the old ``http.target`` is a server's path and query, /orders/7?api_key=...).
URL_ATTRIBUTES = frozenset({"url.full", "http.url", "http.target"})
QUERY_ATTRIBUTES = frozenset({"url.query"})
# Headers whose values are credentials (captured as http.request.header.<name> and
# http.response.header.<name>).
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"}
)
# And any header with one of these words in its name (x-goog-api-key, x-auth-token,
# x-amz-security-token, x-session-id, x-forwarded-authorization): a provider names its key
# header as it likes, and a gateway passes Authorization on under a name of its own
# (x-amzn-remapped-authorization).
SECRET_HEADER_WORDS = frozenset(
    {"key", "apikey", "token", "secret", "password", "auth", "credential", "credentials"}
    | {"session", "signature", "cookie", "authorization"}
)
_HEADER_PREFIXES = ("http.request.header.", "http.response.header.")
# Headers whose values are URLs: a redirect's Location keeps the query it was asked with,
# an API key in it too; their credentials and query values are redacted as url.full's.
URL_HEADERS = frozenset({"location", "content-location", "referer"})


def is_secret_header(attribute: str) -> bool:
    """Whether ``attribute`` is a captured header (``http.request.header.<name>``) whose
    value is a credential. The name is matched with ``_`` read as ``-``: the Python
    instrumentations write ``x-api-key`` as ``http.request.header.x_api_key``."""
    name = _header_name(attribute)
    if name is None:
        return False
    return name in SECRET_HEADERS or not SECRET_HEADER_WORDS.isdisjoint(name.split("-"))


def is_secret_name(key: str) -> bool:
    """Whether an attribute, or a key in an attribute's map, is named as a credential: a
    captured credential header, a header recorded under its own name (``authorization``,
    ``Cookie``, in a map of headers too), or a name ending as a credential's does (a kvlist of
    settings with its ``password``, ``db.api_key``)."""
    if is_secret_header(key):
        return True
    return key.lower().replace("_", "-") in SECRET_HEADERS or bool(_SECRET_NAME.search(key))


def is_url_header(attribute: str) -> bool:
    """Whether ``attribute`` is a captured header whose value is a URL (``Location``)."""
    return _header_name(attribute) in URL_HEADERS


def _header_name(attribute: str) -> str | None:
    """The header a captured-header attribute names, lower case with ``_`` read as ``-``;
    None for any other attribute."""
    if not attribute.startswith(_HEADER_PREFIXES):
        return None
    return attribute.rsplit(".", 1)[-1].lower().replace("_", "-")


def redacted_text(text: str) -> str:
    """``text`` with the credentials and the query values of every URL in it redacted: an
    error message quotes the URL it failed on (``Client error '401 Unauthorized' for url
    'https://api.example/v1?key=...'``), API key and all; the credentials of an
    Authorization header it quotes (``Bearer sk-...``); and the value of a pair named as a
    credential outside a URL (``password=...``, ``/v1?api_key=...``)."""
    if "uthorization" in text or "UTHORIZATION" in text:
        text = _AUTH_HEADER.sub(rf"\1{REDACTED}", text)
    text = _AUTH_SCHEME.sub(rf"\1 {REDACTED}", text)
    if "=" in text:
        text = _SECRET_PAIR.sub(_redacted_credential, text)
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda url: redacted_url(url.group()), _without_credentials(text))


def _redacted_credential(pair: re.Match[str]) -> str:
    """A credential pair with its value redacted. A closing bracket the value ends with is
    kept when the text opened one before the pair and the value opens none: ``(host=db
    password=hunter2)`` keeps its ``)``, as the value runs to a space."""
    value, text, start = pair.group(2), pair.string, pair.start()
    opener = _OPENERS.get(value[-1])
    opened = opener is not None and text.rfind(opener, 0, start) > text.rfind(value[-1], 0, start)
    if opened and opener not in value:
        return f"{pair.group(1)}={REDACTED}{value[-1]}"
    return f"{pair.group(1)}={REDACTED}"


def _without_credentials(text: str) -> str:
    return _CREDENTIALS.sub(rf"\1{REDACTED}:{REDACTED}@", text) if "://" in text else text


def redacted_query(query: str) -> str:
    """Every value of a query string redacted, its names kept, but for a parameter known
    to carry none (``PUBLIC_QUERY_VALUES``) whose value has the shape it is known by."""
    pairs = (pair.partition("=") for pair in query.split("&"))
    return "&".join(_redacted_pair(name, sep, value) for name, sep, value in pairs)


def _redacted_pair(name: str, sep: str, value: str) -> str:
    if not value:
        return name + sep
    return f"{name}={value if is_public_query_value(name, value) else REDACTED}"


def is_public_query_value(name: str, value: str) -> bool:
    """Whether a query's ``name=value`` is one known to carry no secret."""
    shape = PUBLIC_QUERY_VALUES.get(name)
    return shape is not None and shape.fullmatch(value) is not None


def redacted_url(url: str) -> str:
    """``url`` without its user information and with every value of its query and fragment
    redacted (an API key may go in the query under any name, a token in the fragment); read
    as text, so a URL no parser accepts is redacted too."""
    url = _USERINFO.sub(rf"\1{REDACTED}:{REDACTED}@", _without_credentials(url), count=1)
    rest, hash_, fragment = url.partition("#")
    rest, question, query = rest.partition("?")
    return f"{rest}{question}{redacted_query(query)}{hash_}{redacted_query(fragment)}"


def without(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each of ``secrets`` (values known to be credentials) replaced, a longer
    one first, as it may hold another."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def redact_attributes(attributes: MutableMapping[str, Any]) -> None:
    """Redact, in place, what ``attributes`` may hold of secrets (see the module): in the
    strings of array and map values too (a process's arguments, a kvlist of settings); the
    whole value of one named as a credential (``is_secret_name``), in a map too."""
    for key, value in attributes.items():
        if is_secret_name(key):
            attributes[key] = [REDACTED] if isinstance(value, list) else REDACTED
        elif isinstance(value, str | list | dict):
            attributes[key] = _redacted_value(key, value)


def _redacted_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        if key in URL_ATTRIBUTES or is_url_header(key):
            return redacted_url(value)
        if key in QUERY_ATTRIBUTES:
            return redacted_query(value)
        return redacted_text(value)
    if isinstance(value, list):
        return [_redacted_value(key, item) for item in value]
    if isinstance(value, dict):
        redact_attributes(value)
    return value
