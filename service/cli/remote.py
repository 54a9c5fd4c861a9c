"""Commands that talk to a running ERS over HTTP."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class RemoteError(Exception):
    pass


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=os.environ.get("ERS_URL", DEFAULT_URL), help="ERS base URL ($ERS_URL)"
    )
    parser.add_argument("--json", action="store_true", help="print the raw JSON reply")


def client(args: argparse.Namespace) -> httpx.Client:
    headers = {}
    token = os.environ.get("ERS_ADMIN_TOKEN")
    token_file = os.environ.get("ERS_ADMIN_TOKEN_FILE")
    if not token and token_file:
        with open(token_file, encoding="utf-8") as handle:
            token = handle.read().strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=args.url, headers=headers, timeout=30.0)


def call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    try:
        with client(args) as http:
            response = http.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise RemoteError(f"cannot reach ERS at {args.url} ({exc}); is it running?") from None
    try:
        data = response.json()
    except ValueError:
        data = {"detail": response.text[:300]}
    if response.status_code >= 400:
        detail = data.get("detail") if isinstance(data, dict) else data
        raise RemoteError(f"{method} {path} answered {response.status_code}: {detail}")
    return data


def run_remote(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except RemoteError as exc:
            print(f"ers: {exc}", file=sys.stderr)
            return 1

    return wrapped


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))
