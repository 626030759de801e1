"""Ray token authentication in cluster mode: where kdflow finds the token, how it sends it, and
the one line it fails with when the dashboard wants a token it did not get or refuses it.

The dashboard here is a small HTTP server in a thread that answers as Ray's does with token
auth on (ray/_private/authentication/http_token_authentication.py): 401 "Unauthorized: Missing
authentication token" without an Authorization header, 403 "Forbidden: Invalid authentication
token" with a wrong one. The real Ray cluster is in tests/integration/test_ray_cluster.py.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import ray

from kdflow.config import DistillConfig
from kdflow.distill.cluster import AuthToken, _client, find_auth_token, submit_distillation
from kdflow.errors import KdflowError

TOKEN = "0123456789abcdef" * 4
AUTH_VARS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")


@pytest.fixture(autouse=True)
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No Ray auth variables and an empty HOME: the machine's own ~/.ray/auth_token is unseen."""
    for name in AUTH_VARS:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    # Ray's client adds a token it cached once per process (an earlier test's, or the one in
    # the machine's own ~/.ray/auth_token): forget it, so only what kdflow sends is seen.
    _reset_ray_token_cache()
    yield home
    _reset_ray_token_cache()


def _reset_ray_token_cache() -> None:
    from ray._raylet import AuthenticationTokenLoader

    AuthenticationTokenLoader.instance().reset_cache()


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- where the token comes from ----------------------------------------------------------------


def test_no_token_anywhere_is_none() -> None:
    assert find_auth_token() is None


def test_home_file_is_the_last_resort(home: Path) -> None:
    _write(home / ".ray" / "auth_token", f"  {TOKEN}\n")
    token = find_auth_token()
    assert token is not None
    assert token.value == TOKEN
    assert token.source == str(home / ".ray" / "auth_token")


def test_path_variable_comes_before_the_home_file(home, tmp_path, monkeypatch) -> None:
    _write(home / ".ray" / "auth_token", "from-home")
    path = _write(tmp_path / "secret" / "token", f"{TOKEN}\nsecond line is ignored\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    token = find_auth_token()
    assert token is not None
    assert token.value == TOKEN  # the first line, trimmed, as Ray reads it
    assert token.source == f"RAY_AUTH_TOKEN_PATH ({path})"


def test_token_variable_comes_first(home, tmp_path, monkeypatch) -> None:
    _write(home / ".ray" / "auth_token", "from-home")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(_write(tmp_path / "t", "from-path")))
    monkeypatch.setenv("RAY_AUTH_TOKEN", f"{TOKEN}\n")
    token = find_auth_token()
    assert token is not None
    assert (token.value, token.source) == (TOKEN, "RAY_AUTH_TOKEN")


def test_an_empty_token_variable_is_unset(home, monkeypatch) -> None:
    _write(home / ".ray" / "auth_token", TOKEN)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "")
    token = find_auth_token()
    assert token is not None and token.value == TOKEN


@pytest.mark.parametrize("content", [None, "", "\n", "   \n"])
def test_a_path_variable_to_no_token_is_an_error(home, tmp_path, monkeypatch, content) -> None:
    # As in Ray: a RAY_AUTH_TOKEN_PATH that is set must hold the token; no quiet fallback.
    _write(home / ".ray" / "auth_token", "from-home")
    path = tmp_path / "mounted" / "token"
    if content is not None:
        _write(path, content)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    with pytest.raises(KdflowError, match=r"RAY_AUTH_TOKEN_PATH is .*missing, unreadable or empty"):
        find_auth_token()


def test_auth_mode_disabled_sends_no_token(home, monkeypatch) -> None:
    _write(home / ".ray" / "auth_token", TOKEN)
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert find_auth_token() is None


def test_the_token_never_shows_in_repr_or_str() -> None:
    token = AuthToken(TOKEN, "RAY_AUTH_TOKEN")
    assert TOKEN not in repr(token) and TOKEN not in str(token)
    assert token.headers() == {"Authorization": f"Bearer {TOKEN}"}


# --- against a dashboard that wants a token ----------------------------------------------------


@dataclass
class Dashboard:
    url: str
    token: str
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    """(path, Authorization header) of each request."""


def _handler(dashboard: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            auth = self.headers.get("Authorization") or self.headers.get("X-Ray-Authorization")
            dashboard.seen.append((self.path, auth))
            if not auth:
                self._send(401, "text/plain", "Unauthorized: Missing authentication token")
            elif auth != f"Bearer {dashboard.token}":
                self._send(403, "text/plain", "Forbidden: Invalid authentication token")
            elif self.path == "/api/version":
                body = {"version": "4", "ray_version": ray.__version__, "ray_commit": "x"}
                self._send(200, "application/json", json.dumps(body))
            elif self.path.rstrip("/") == "/api/jobs":
                self._send(200, "application/json", "[]")
            else:
                self._send(404, "text/plain", "Not Found")

        def _send(self, status: int, content_type: str, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return Handler


@pytest.fixture
def dashboard() -> Iterator[Dashboard]:
    """A dashboard on 127.0.0.1 that wants `Authorization: Bearer TOKEN`, as Ray's does."""
    board = Dashboard(url="", token=TOKEN)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(board))
    board.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield board
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_no_token_fails_in_one_line_saying_what_to_set(dashboard: Dashboard) -> None:
    with pytest.raises(KdflowError) as info:
        _client(dashboard.url)
    assert str(info.value) == (
        f"--ray-address {dashboard.url}: the Ray cluster requires a token; set RAY_AUTH_TOKEN, "
        "or RAY_AUTH_TOKEN_PATH to a file holding it (on Kubeflow: the kdflow-ray Secret)"
    )
    # No token was sent. (After an in-process Ray in token mode, Ray's client refuses before
    # sending anything: the same one line.)
    assert all(auth is None for _, auth in dashboard.seen)


def test_no_token_with_auth_mode_disabled_says_to_unset_it(dashboard, monkeypatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(KdflowError) as info:
        _client(dashboard.url)
    message = str(info.value)
    assert "\n" not in message
    assert message.endswith("; and unset RAY_AUTH_MODE=disabled")


def test_a_refused_token_is_named_by_its_source_never_its_value(
    dashboard: Dashboard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    wrong = "f" * 64
    path = _write(tmp_path / "token", wrong)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    with caplog.at_level(logging.DEBUG), pytest.raises(KdflowError) as info:
        _client(dashboard.url)
    assert str(info.value) == (
        f"--ray-address {dashboard.url}: the Ray cluster refused the token from "
        f"RAY_AUTH_TOKEN_PATH ({path}); set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file "
        "holding the cluster's own token (on Kubeflow: the kdflow-ray Secret)"
    )
    assert dashboard.seen[0][1] == f"Bearer {wrong}"  # it was sent, and refused
    assert wrong not in caplog.text
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_the_token_is_sent_on_every_request_without_ray_auth_mode(
    dashboard: Dashboard, home: Path, caplog
) -> None:
    # The case that failed before: a token on disk, RAY_AUTH_MODE unset on the client.
    _write(home / ".ray" / "auth_token", TOKEN + "\n")
    with caplog.at_level(logging.DEBUG):
        client = _client(dashboard.url)
        assert client.list_jobs() == []
    assert [path for path, _ in dashboard.seen] == ["/api/version", "/api/version", "/api/jobs/"]
    assert {auth for _, auth in dashboard.seen} == {f"Bearer {TOKEN}"}
    assert TOKEN not in caplog.text
    assert f"Ray auth token from {home / '.ray' / 'auth_token'}" in caplog.text


def test_submission_fails_before_staging_anything(dashboard: Dashboard, tmp_path: Path) -> None:
    storage = tmp_path / "shared"
    cfg = DistillConfig(ray_address=dashboard.url, storage_path=str(storage))
    with pytest.raises(KdflowError, match="the Ray cluster requires a token"):
        submit_distillation(
            str(tmp_path / "no-dataset"), [str(tmp_path / "no-teacher")], cfg, {}, "run", seed=0
        )
    assert not storage.exists()
