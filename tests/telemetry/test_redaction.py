"""The one redaction of a URL that the OTLP intake applies to other services' spans and a
remote agent's attempt span applies to its own: no secret a URL may carry is kept."""

from __future__ import annotations

import pytest

from telemetry.redaction import (
    is_secret_header,
    redact_attributes,
    redacted_text,
    redacted_url,
)


@pytest.mark.parametrize(
    "url,redacted",
    [
        # user information: a name and a password, a name alone (may be a token), an "@"
        # inside the password, percent-encoded parts
        (
            "https://user:pw@h.example/p",
            "https://REDACTED:REDACTED@h.example/p",
        ),
        ("https://ghp-token@h.example/p", "https://REDACTED:REDACTED@h.example/p"),
        ("https://user:@h.example/p", "https://REDACTED:REDACTED@h.example/p"),
        ("https://user:p@ss@h.example/p", "https://REDACTED:REDACTED@h.example/p"),
        ("https://us%40er:p%3Aw@h.example/p", "https://REDACTED:REDACTED@h.example/p"),
        ("postgres://admin:hunter2@db/pay", "postgres://REDACTED:REDACTED@db/pay"),
        # query values under any name; names, empty values and bare names kept
        (
            "http://h.example/v1?key=k-1&api-version=2024&empty=&flag",
            "http://h.example/v1?key=REDACTED&api-version=REDACTED&empty=&flag",
        ),
        ("http://h.example/p?a=1&a=2", "http://h.example/p?a=REDACTED&a=REDACTED"),
        ("http://h.example/p?next=http://a:b@c/x", "http://h.example/p?next=REDACTED"),
        # fragments: a token in key=value form is redacted, an anchor kept
        (
            "https://h.example/cb?x=1#access_token=t-1&state=s",
            "https://h.example/cb?x=REDACTED#access_token=REDACTED&state=REDACTED",
        ),
        ("https://h.example/doc#section-2", "https://h.example/doc#section-2"),
        # IPv6 hosts
        (
            "https://user:pw@[::1]:8080/p?k=v",
            "https://REDACTED:REDACTED@[::1]:8080/p?k=REDACTED",
        ),
        ("http://[fe80::1%25eth0]/p?k=v", "http://[fe80::1%25eth0]/p?k=REDACTED"),
        # no scheme, or a scheme-relative URL
        ("user:pw@h.example/p?key=1", "REDACTED:REDACTED@h.example/p?key=REDACTED"),
        ("//user:pw@h.example/p?key=1", "//REDACTED:REDACTED@h.example/p?key=REDACTED"),
        ("h.example/p?key=1", "h.example/p?key=REDACTED"),
        # malformed: no parser accepts these, the secrets go all the same
        ("http://u:pw@[::1/p?x=1#t=2", "http://REDACTED:REDACTED@[::1/p?x=REDACTED#t=REDACTED"),
        (
            "https://u:pw@h.example:port/p?x=1",
            "https://REDACTED:REDACTED@h.example:port/p?x=REDACTED",
        ),
        # nothing to redact: unchanged, an "@" in the path is not user information
        ("http://127.0.0.1:8600/chat", "http://127.0.0.1:8600/chat"),
        ("https://h.example/users/@bob", "https://h.example/users/@bob"),
        ("", ""),
    ],
)
def test_a_url_keeps_no_secret(url: str, redacted: str) -> None:
    assert redacted_url(url) == redacted


@pytest.mark.parametrize(
    "text,redacted",
    [
        (
            "no route to postgres://admin:pw-1@db/pay",
            "no route to postgres://REDACTED:REDACTED@db/pay",
        ),
        (
            "clone https://ghp-token@git.example/x failed",
            "clone https://REDACTED:REDACTED@git.example/x failed",
        ),
        ("https://u:p@ss@h.example refused", "https://REDACTED:REDACTED@h.example refused"),
        # an "@" after the authority, or in other words, is no user information
        (
            "GET https://h.example/users/@bob by bob@example.org",
            "GET https://h.example/users/@bob by bob@example.org",
        ),
        ("https://h.example?to=a@b", "https://h.example?to=REDACTED"),
    ],
)
def test_text_keeps_no_credentials_of_the_urls_in_it(text: str, redacted: str) -> None:
    assert redacted_text(text) == redacted


@pytest.mark.parametrize(
    "text,redacted",
    [
        (
            "401: header 'Authorization: Bearer sk-live-7c2e91f0' rejected",
            "401: header 'Authorization: Bearer REDACTED' rejected",
        ),
        (
            "sent authorization=basic ZXJzOnMzY3JldA== to h",
            "sent authorization=basic REDACTED to h",
        ),
        # the header quoted: its credential whatever it looks like (user:pass is 12 letters)
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic REDACTED"),
        ("proxy-authorization: Bearer abcdefgh", "proxy-authorization: Bearer REDACTED"),
        # a challenge's parameters are no credential
        (
            'WWW-Authenticate: Bearer error_description="expired"',
            'WWW-Authenticate: Bearer error_description="expired"',
        ),
        # prose about a scheme keeps its words
        ("a Bearer token is missing", "a Bearer token is missing"),
        ("Basic authentication failed", "Basic authentication failed"),
    ],
)
def test_text_keeps_no_credentials_of_an_authorization_header_it_quotes(
    text: str, redacted: str
) -> None:
    assert redacted_text(text) == redacted


@pytest.mark.parametrize(
    "text,redacted",
    [
        # the messages of httpx's and requests' HTTP errors quote the URL, API key and all
        (
            "Client error '401 Unauthorized' for url 'https://api.example/v1?api_key=k-1&x=2'",
            "Client error '401 Unauthorized' for url 'https://api.example/v1?api_key=REDACTED"
            "&x=REDACTED'",
        ),
        (
            "401 Client Error: Unauthorized for url: https://api.example/v1?key=k-2 (retry 3)",
            "401 Client Error: Unauthorized for url: https://api.example/v1?key=REDACTED (retry 3)",
        ),
        (
            'GET "https://u:pw@h.example/cb#token=t-3" failed',
            'GET "https://REDACTED:REDACTED@h.example/cb#token=REDACTED" failed',
        ),
        # no URL, or one without a query: as it was
        ("search ?q=shoes failed", "search ?q=shoes failed"),
        ("see https://docs.example/errors#E42.", "see https://docs.example/errors#E42."),
    ],
)
def test_text_keeps_no_query_value_of_the_urls_in_it(text: str, redacted: str) -> None:
    assert redacted_text(text) == redacted


@pytest.mark.parametrize(
    "text,redacted",
    [
        # libpq quoting its conninfo; urllib3 naming the path it retried, without a scheme
        (
            "connection to host=db user=ers password=hunter2 dbname=ers failed",
            "connection to host=db user=ers password=REDACTED dbname=ers failed",
        ),
        (
            "Max retries exceeded with url: /v1/chat?api_key=k-1234&model=m (Caused by ...)",
            "Max retries exceeded with url: /v1/chat?api_key=REDACTED&model=m (Caused by ...)",
        ),
        ("sslpassword='pass phrase' sslmode=require", "sslpassword=REDACTED sslmode=require"),
        ('client_secret="s3cr3t", scope=all', "client_secret=REDACTED, scope=all"),
        ("AWS_SECRET_ACCESS_KEY=abc/def+ghi", "AWS_SECRET_ACCESS_KEY=REDACTED"),
        # a bracket opened before the pair keeps its close; a value's own brackets go with it
        (
            "connect failed (host=db password=hunter2) after 3 tries",
            "connect failed (host=db password=REDACTED) after 3 tries",
        ),
        ("[token=abc123], {api_key=k-99}", "[token=REDACTED], {api_key=REDACTED}"),
        ("password=abc) and (token=f(x)", "password=REDACTED and (token=REDACTED"),
        # names that are not credentials keep their values
        ("cache key=budget:u1 missed", "cache key=budget:u1 missed"),
        ("retry=3 timeout=5", "retry=3 timeout=5"),
    ],
)
def test_text_keeps_no_value_of_a_pair_named_as_a_credential(text: str, redacted: str) -> None:
    assert redacted_text(text) == redacted


@pytest.mark.parametrize(
    "name",
    [
        "authorization",
        "set_cookie",
        "x_api_key",
        "x_goog_api_key",
        "x_auth_token",
        "x_amz_security_token",
        "openai_session_id",
        "x_signature",
        "X-Custom-Secret",
        # Authorization passed on under another name (AWS API Gateway, proxies).
        "x_amzn_remapped_authorization",
        "X-Forwarded-Authorization",
    ],
)
def test_a_header_named_as_a_credential_is_a_secret(name: str) -> None:
    assert is_secret_header(f"http.request.header.{name}")
    assert is_secret_header(f"http.response.header.{name}")


@pytest.mark.parametrize("name", ["content_type", "keep_alive", "x_request_id", "retry_after"])
def test_other_headers_are_kept(name: str) -> None:
    assert not is_secret_header(f"http.response.header.{name}")
    assert not is_secret_header("http.url")


def test_the_query_of_a_server_spans_http_target_keeps_no_secret() -> None:
    """The old conventions' server spans (a WSGI app's, a Java agent's) carry the request's
    path and query in http.target beside http.url: the key redacted in one was kept in the
    other."""
    attributes = {
        "http.url": "https://shop.example/orders/7?api_key=sk-live-1",
        "http.target": "/orders/7?api_key=sk-live-1&page=2#token=t-1",
    }
    redact_attributes(attributes)
    assert attributes["http.target"] == "/orders/7?api_key=REDACTED&page=REDACTED#token=REDACTED"
    assert "sk-live-1" not in str(attributes)


def test_a_captured_location_from_another_service_keeps_no_key() -> None:
    # The OTLP intake: another service's client span with the redirect it was answered.
    attributes = {
        "http.response.header.location": ["https://api.example/v1?key=k-123"],
        "http.request.header.referer": ["https://app.example/p?session=s-9"],
    }
    redact_attributes(attributes)
    assert attributes == {
        "http.response.header.location": ["https://api.example/v1?key=REDACTED"],
        "http.request.header.referer": ["https://app.example/p?session=REDACTED"],
    }


AZURE = "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions"


@pytest.mark.parametrize(
    "url",
    [
        f"{AZURE}?api-version=2024-02-01",
        f"{AZURE}?api-version=2024-02-15-preview",
        "http://h.example/p#api-version=2023-05-01",
    ],
)
def test_an_api_version_is_kept(url: str) -> None:
    """Azure OpenAI's api-version names the API, no secret; redacted, a failing call's span
    and error no longer said which version the call was made to."""
    assert redacted_url(url) == url


@pytest.mark.parametrize(
    "url,redacted",
    [
        # beside a key, under any name
        (
            f"{AZURE}?api-version=2024-02-01&api-key=k-1",
            f"{AZURE}?api-version=2024-02-01&api-key=REDACTED",
        ),
        (
            f"{AZURE}?apikey=k-1&api-version=2024-02-01",
            f"{AZURE}?apikey=REDACTED&api-version=2024-02-01",
        ),
        (
            f"{AZURE}?token=t-1&api-version=2024-02-01",
            f"{AZURE}?token=REDACTED&api-version=2024-02-01",
        ),
        # the name alone is not enough: a value not shaped as a version is redacted
        (f"{AZURE}?api-version=sk-live-51Hx", f"{AZURE}?api-version=REDACTED"),
        (f"{AZURE}?api-version=2024-02-01-{'x' * 40}", f"{AZURE}?api-version=REDACTED"),
        (f"{AZURE}?api-version=2024-02-01%26key=k", f"{AZURE}?api-version=REDACTED"),
        # nor is a value shaped as one under another name, or the name in other letters
        (f"{AZURE}?version=2024-02-01", f"{AZURE}?version=REDACTED"),
        (f"{AZURE}?API-Version=2024-02-01", f"{AZURE}?API-Version=REDACTED"),
    ],
)
def test_near_an_api_version_every_secret_goes(url: str, redacted: str) -> None:
    assert redacted_url(url) == redacted


def test_an_error_quoting_an_azure_url_keeps_its_api_version() -> None:
    text = (
        "Client error '404 Not Found' for url "
        f"'{AZURE}?api-version=2024-02-01&api_key=k-1'; password=hunter2"
    )
    assert redacted_text(text) == (
        "Client error '404 Not Found' for url "
        f"'{AZURE}?api-version=2024-02-01&api_key=REDACTED'; password=REDACTED"
    )


def test_an_attribute_or_map_key_named_as_a_credential_keeps_no_value() -> None:
    attributes = {
        "authorization": "Basic dXNlcjpwYXNz",
        "Cookie": "sid=abcdef",
        "http.request.headers": {"Authorization": "Bearer abc", "Accept": "application/json"},
        "db.settings": {"password": "hunter2", "user": "app", "port": 5432},
        "clients": [{"client_secret": "s3", "name": "billing"}],
        "auth.token": "t0k",
        "gen_ai.usage.output_tokens": 12,
        "cache.key": "user:42",
        "django": {"SECRET_KEY": "django-insecure-abc", "DEBUG": "false"},
        "process.pwd": "/srv/app",  # a working directory
    }
    redact_attributes(attributes)
    assert attributes == {
        "authorization": "REDACTED",
        "Cookie": "REDACTED",
        "http.request.headers": {"Authorization": "REDACTED", "Accept": "application/json"},
        "db.settings": {"password": "REDACTED", "user": "app", "port": 5432},
        "clients": [{"client_secret": "REDACTED", "name": "billing"}],
        "auth.token": "REDACTED",
        "gen_ai.usage.output_tokens": 12,
        "cache.key": "user:42",
        "django": {"SECRET_KEY": "REDACTED", "DEBUG": "false"},
        "process.pwd": "/srv/app",
    }
