"""HTTP to an OpenAI-compatible server: JSON requests, SSE streams, faults as one line each.

A configuration mistake the server reveals (a refused key, a missing model, a URL that is not
an API) raises UserError (exit 2); the server's own trouble (not running, overloaded, a 5xx, a
read timeout, a malformed or cut-off stream) raises ServerError (exit 1).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_sse import SSEError, connect_sse

from engine.errors import ServerError, UserError

CONNECT_TIMEOUT_S = 5.0


def api_key(env_name: str | None, setting: str = "api_key_env =") -> str | None:
    """The key from the environment variable `env_name` (empty or None = no key); never from a
    file. `setting` names where the variable's name came from, for the error."""
    if not env_name:
        return None
    key = os.environ.get(env_name, "")
    if not key:
        raise UserError(f"{setting} {env_name}: the environment variable {env_name} is not set")
    return key


def server_message(response: httpx.Response) -> str:
    """The server's own words about an error response, one line, at most 200 characters."""
    try:
        body = json.loads(response.read() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError, httpx.HTTPError):
        body = None
    text: object = body
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message", body)))
        text = err.get("message", err) if isinstance(err, dict) else err
    if text is None:
        text = response.text if not response.is_stream_consumed else ""
    line = " ".join(str(text).split())
    return line[:200] or response.reason_phrase


class RemoteClient:
    def __init__(self, base_url: str, key_env: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.key_env = key_env
        self.timeout_s = timeout_s
        parts = urlsplit(self.base_url)
        self.host = parts.netloc
        # the server's root: /tokenize, /props and /health live beside /v1, not under it
        self.root = self.base_url.removesuffix("/v1")
        key = api_key(key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s))
        self.http = httpx.Client(headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    # faults ---------------------------------------------------------------------------

    def transport_fault(self, exc: httpx.HTTPError, url: str) -> UserError:
        if isinstance(exc, httpx.ConnectError):
            text = str(exc)
            if "Name or service not known" in text or "nodename" in text or "resolve" in text:
                return UserError(f"cannot resolve the host of base_url {self.base_url}: check it")
            return ServerError(
                f"cannot connect to {self.base_url}: {text or 'connection refused'}; "
                "is the server running?"
            )
        if isinstance(exc, httpx.TimeoutException):
            return ServerError(
                f"no answer from {url} within request_timeout_s = {self.timeout_s:g} s"
            )
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
            return ServerError(f"the server at {self.host} closed the connection: {exc}")
        return ServerError(f"{url}: {type(exc).__name__}: {exc}")

    def status_fault(self, response: httpx.Response, models: list[str] | None = None) -> UserError:
        code, url, said = response.status_code, str(response.request.url), server_message(response)
        if code in (401, 403):
            how = (
                f"check the key in ${self.key_env} (api_key_env)"
                if self.key_env
                else "set api_key_env to the NAME of the environment variable holding the key"
            )
            return UserError(f"{url}: HTTP {code}: the server refused the API key ({said}); {how}")
        if code == 404:
            if models:
                return UserError(f"{url}: HTTP 404: {said}; the server has: {', '.join(models)}")
            return UserError(f"{url}: HTTP 404 ({said}): check base_url (it usually ends in /v1)")
        if code in (400, 413, 422):
            return UserError(f"{url}: HTTP {code}: the server refused the request: {said}")
        return ServerError(f"{url}: HTTP {code}: {said}")

    # requests -------------------------------------------------------------------------

    def get_json(self, url: str) -> Any:
        try:
            response = self.http.get(url)
        except httpx.HTTPError as exc:
            raise self.transport_fault(exc, url) from None
        if response.status_code >= 400:
            raise self.status_fault(response)
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ServerError(f"{url}: the server's answer is not JSON") from None

    def try_json(self, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
        """An optional endpoint's JSON, or None when the server lacks it (any 4xx/5xx, not JSON);
        a server that cannot be reached still raises."""
        try:
            response = self.http.request(method, url, json=body)
            if response.status_code >= 400:
                return None
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        except httpx.HTTPError as exc:
            raise self.transport_fault(exc, url) from None

    def models(self) -> list[dict[str, Any]]:
        """The server's /v1/models entries."""
        data = self.get_json(f"{self.base_url}/models")
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ServerError(f"{self.base_url}/models: no model list in the answer")
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)]

    def stream(
        self, path: str, body: dict[str, Any], cancel: threading.Event, models: list[str]
    ) -> Iterator[dict[str, Any]]:
        """The JSON chunks of a streamed completion, until [DONE]. Cancel closes the stream at
        once (a watcher closes the response even while a read is waiting)."""
        url = f"{self.base_url}{path}"
        finished = threading.Event()
        try:
            with connect_sse(self.http, "POST", url, json=body) as source:
                response = source.response
                if response.status_code >= 400:
                    raise self.status_fault(response, models)

                def watch() -> None:
                    while not finished.is_set():
                        if cancel.wait(0.05):
                            response.close()
                            return

                threading.Thread(target=watch, name="remote-cancel", daemon=True).start()
                for sse in source.iter_sse():
                    if cancel.is_set():
                        return
                    if sse.data.strip() == "[DONE]":
                        return
                    if not sse.data.strip():
                        continue
                    try:
                        chunk = json.loads(sse.data)
                    except json.JSONDecodeError:
                        raise ServerError(
                            f"{url}: malformed chunk from the server: {sse.data[:80]!r}"
                        ) from None
                    if not isinstance(chunk, dict):
                        raise ServerError(f"{url}: malformed chunk from the server: not an object")
                    if "error" in chunk:
                        err = chunk["error"]
                        said = err.get("message", err) if isinstance(err, dict) else err
                        raise ServerError(f"{url}: the server failed mid-reply: {said}")
                    yield chunk
                if not cancel.is_set():
                    raise ServerError(f"the server at {self.host} ended the stream without [DONE]")
        except SSEError as exc:
            raise ServerError(f"{url}: not an event stream: {exc}") from None
        except httpx.HTTPError as exc:
            if cancel.is_set():
                return  # we closed it
            raise self.transport_fault(exc, url) from None
        finally:
            finished.set()
