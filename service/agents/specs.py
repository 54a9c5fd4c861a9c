"""How the settings describe an agent of the team (``agents:``): an in-process Python agent,
or a remote one over HTTP. Built into agents by ``service.agents.config``; a remote agent's
client is ``service.agents.remote``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from service.config_checks import refuse_boolean_number

# An HTTP field name (RFC 9110's token): anything else fails every call, not the start-up.
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class AgentSpecBase(BaseModel):
    # allow_inf_nan off: a timeout of .nan is "not a finite number", not "more than 600".
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Tried in order when this agent cannot answer, before its cached last good answer and
    # its guidance; one in its own cooldown or with an open breaker is skipped.
    fallbacks: tuple[str, ...] = ()
    # Bulkhead: calls beyond this many at once wait up to max_wait_s, then fall back.
    max_concurrent_calls: int | None = Field(None, ge=1, le=10_000)
    max_wait_s: float = Field(0.0, ge=0, le=60)
    # One attempt's time limit; None: the service's agent_timeout_s.
    timeout_s: float | None = Field(None, gt=0, le=600)

    @field_validator(
        "max_concurrent_calls", "max_wait_s", "timeout_s", "max_connections", mode="before",
        check_fields=False,  # max_connections: a remote agent's
    )  # fmt: skip
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_boolean_number(value, cls.model_fields[str(info.field_name)].annotation)


class PythonAgentSpec(AgentSpecBase):
    kind: Literal["python"] = "python"
    # "package.module:factory" or the name of an entry point in the group "ers.agents": a
    # callable that takes the agent's name and the stores, and returns an Agent.
    factory: str = Field(min_length=1, max_length=300)

    @model_validator(mode="after")
    def _a_wait_needs_slots(self) -> PythonAgentSpec:
        # A Python agent has a bulkhead only with max_concurrent_calls (a remote one always
        # has one): the wait alone would be taken and do nothing.
        if self.max_wait_s and self.max_concurrent_calls is None:
            raise _field_error(
                "max_wait_s",
                "a Python agent waits for a slot only with max_concurrent_calls, the slots; "
                "set it too, or remove max_wait_s",
                "PythonAgentSpec",
            )
        return self


class HttpAgentSpec(AgentSpecBase):
    kind: Literal["http"] = "http"
    url: HttpUrl
    # "ers": ERS's own small JSON contract; "openai": POST {url}/v1/chat/completions.
    contract: Literal["ers", "openai"] = "ers"
    model: str | None = Field(None, max_length=200)  # the "model" of an openai request
    # The auth header's whole value is read from this file (never from the settings).
    auth_header: str = Field("Authorization", max_length=100)
    auth_file: Path | None = None
    max_connections: int = Field(10, ge=1, le=1000)

    @field_validator("url", mode="before")
    @classmethod
    def _a_host_in_the_url(cls, url: object) -> object:
        # http:///chat and http:/chat have no host; the URL parser would read http://chat/.
        parts = urlsplit(url.strip()) if isinstance(url, str) else None
        if parts is not None and parts.scheme.lower() in ("http", "https") and not parts.netloc:
            raise ValueError(
                "the url has no host (nothing between :// and the path): write it as "
                "http://HOST:PORT/PATH"
            )
        return url

    @field_validator("url")
    @classmethod
    def _no_credentials_in_the_url(cls, url: HttpUrl) -> HttpUrl:
        if url.username or url.password:
            raise ValueError(
                "credentials in the url would show in logs and traces; remove them and write "
                "the whole auth header value to the file auth_file names"
            )
        return url

    @field_validator("auth_header")
    @classmethod
    def _a_header_name(cls, name: str) -> str:
        if not HEADER_NAME.fullmatch(name):
            # The text is not quoted: "Authorization: Bearer <key>" written here holds the
            # secret, and this message goes to the terminal and the log.
            bad = next((c for c in name if not HEADER_NAME.fullmatch(c)), None)
            held = "is empty" if bad is None else f"holds {bad!r}"
            raise ValueError(
                f"not an HTTP header name (it {held}); write only the name, with letters, "
                "digits and '-' (e.g. Authorization, X-Api-Key), and the whole value in the "
                "file auth_file names"
            )
        return name

    @model_validator(mode="after")
    def _openai_names_its_model(self) -> HttpAgentSpec:
        if self.contract == "openai" and not self.model:
            raise _field_error(
                "model", "contract 'openai' needs model: the model name the server serves"
            )
        return self

    @model_validator(mode="after")
    def _only_openai_takes_a_model(self) -> HttpAgentSpec:
        if self.model is not None and self.contract != "openai":
            raise _field_error(
                "model",
                f"contract '{self.contract}' sends no model, only contract 'openai' does; "
                "remove model, or set contract: openai",
            )
        return self

    @model_validator(mode="after")
    def _a_header_needs_its_file(self) -> HttpAgentSpec:
        # Without the file no header is sent: against an API that needs it, every call
        # would be refused (401), a critical incident each.
        if "auth_header" in self.model_fields_set and self.auth_file is None:
            raise _field_error(
                "auth_header",
                "it is sent only with auth_file, the file holding its whole value; set "
                "auth_file, or remove auth_header",
            )
        return self

    @model_validator(mode="after")
    def _openai_url_is_the_base(self) -> HttpAgentSpec:
        # ERS adds /v1/chat/completions itself: a url that already ends with it (or with
        # the /v1 of an SDK's base_url) would be called at .../v1/v1/chat/completions.
        path = (self.url.path or "").rstrip("/")
        if self.contract == "openai" and path.endswith(("/v1", "/chat/completions")):
            base = path.removesuffix("/chat/completions").removesuffix("/v1")
            # Without the query: it may hold a key.
            suggested = f"{self.url.scheme}://{self.url.host}:{self.url.port}{base}"
            raise _field_error(
                "url",
                f"its path ends with {path[len(base) :]}, which ERS adds itself for contract "
                f"'openai'; write the server's base URL ({suggested}"
                + (", then the query)" if self.url.query else ")"),
            )
        return self

    @model_validator(mode="after")
    def _bulkhead_fits_the_pool(self) -> HttpAgentSpec:
        # A call let through the bulkhead would wait for a connection, and the wait would
        # time out as a failure of the agent.
        calls = self.max_concurrent_calls
        if calls is not None and calls > self.max_connections:
            raise _field_error(
                "max_concurrent_calls",
                f"{calls} calls at once need as many connections; raise max_connections "
                f"(now {self.max_connections}) or lower max_concurrent_calls",
            )
        return self

    @property
    def concurrent_calls(self) -> int:
        """Calls at once: the bulkhead's limit, the connection pool's size by default."""
        return self.max_concurrent_calls or self.max_connections


def _field_error(field: str, message: str, model: str = "HttpAgentSpec") -> ValidationError:
    """A validation error on ``field`` (so the error names the key), from a model check."""
    details = InitErrorDetails(
        type=PydanticCustomError("invalid_agent", message), loc=(field,), input=None
    )
    return ValidationError.from_exception_data(model, [details])


AgentSpec = Annotated[PythonAgentSpec | HttpAgentSpec, Field(discriminator="kind")]
