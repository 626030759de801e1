"""How kdflow reaches a KFP API: the access options, the checked `Connection` that `connect`
returns, and kdflow's own HTTP requests (the health check before kfp.Client exists, a task's
log from the KFP UI server).

kfp.Client and kdflow's own requests are given the same host, credentials, session cookies,
CA bundle and proxy, so a health check that passes means kfp.Client's requests get through
the same way. `Connection` keeps what kdflow computed itself (the API's URL, the UI's), so
nothing here reads kfp.Client's private state; the one exception is `_kfp_pool_manager`.

No message here ever holds a token, a cookie value or proxy credentials.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import ssl
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdflow.errors import ConfigError, KdflowError

if TYPE_CHECKING:
    import kfp
    import urllib3

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
"""Seconds to wait for the API to accept a connection or answer the health check."""

READ_TIMEOUT_S = 120.0
"""Seconds to wait for any later answer; an upload of a large pipeline takes a while."""

TOKEN_ENV = "KFP_TOKEN"
COOKIES_ENV = "KFP_COOKIES"
_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"  # the variable kfp's own credentials read
_UI_ENV = "KF_PIPELINES_UI_ENDPOINT"  # kfp.Client's override of the UI's address
_KUBE_PROXY = "/api/v1/namespaces/{namespace}/services/{service}/proxy"
_KFP_NAMESPACE = "kubeflow"  # kfp.Client's default for the KFP deployment's namespace


class RemoteError(KdflowError):
    """The KFP API could not be reached, refused a request, or was asked for something invalid."""


# --- the access options ---------------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """How to reach the API beyond its host and token (see `access_options`)."""

    ca_cert: str | None = None
    """A PEM CA bundle to trust instead of certifi's (a company or cluster CA)."""
    proxy: str | None = None
    """An http:// or https:// proxy URL, without credentials."""
    cookies: str | None = field(default=None, repr=False)
    """A Cookie header value, "name=value; name=value" (Dex/OIDC session cookies)."""
    kube_context: str | None = None
    """A kubeconfig context: reach the API through its Kubernetes API server."""


def access_options(
    ca_cert: str | None = None,
    proxy: str | None = None,
    cookies: str | None = None,
    kube_context: str | None = None,
) -> Access:
    """`Access` with every value checked.

    Raises:
        ConfigError: a value is malformed (the message never shows a cookie's value).
    """
    if kube_context is not None and not kube_context.strip():
        raise ConfigError("--kube-context is empty: give a context name", option="--kube-context")
    return Access(
        ca_cert=_ca_bundle(ca_cert) if ca_cert is not None else None,
        proxy=_proxy_url(proxy) if proxy is not None else None,
        cookies=cookie_header(cookies) if cookies is not None else None,
        kube_context=kube_context.strip() if kube_context else None,
    )


def _ca_bundle(path_text: str) -> str:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise ConfigError(f"--ca-cert {path_text} does not exist", option="--ca-cert")
    if not path.is_file():
        raise ConfigError(f"--ca-cert {path_text} is not a file", option="--ca-cert")
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        raise ConfigError(
            f"--ca-cert {path_text} holds no PEM certificate ({exc.reason or exc}): give the "
            f"CA bundle, one or more '-----BEGIN CERTIFICATE-----' blocks",
            option="--ca-cert",
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"--ca-cert {path_text} cannot be read ({exc.strerror})", option="--ca-cert"
        ) from exc
    return str(path.resolve())


def _proxy_url(url: str) -> str:
    import urllib3

    try:
        parsed = urllib3.util.parse_url(url.strip())
    except urllib3.exceptions.LocationParseError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(
            "--proxy must be http://HOST:PORT or https://HOST:PORT", option="--proxy"
        )
    if parsed.auth:
        # kfp.Client's urllib3 ProxyManager sends no Proxy-Authorization.
        raise ConfigError(
            "--proxy holds credentials (user:password@), which kfp.Client cannot send: use "
            "a proxy that needs none, or a local authenticating forwarder",
            option="--proxy",
        )
    return parsed.url.rstrip("/")


_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 6265 token
_COOKIE_OCTETS = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
_COOKIE_VALUE = re.compile(rf'{_COOKIE_OCTETS}|"{_COOKIE_OCTETS}"')


def cookie_header(text: str) -> str:
    """A Cookie header value from "name=value; name=value" (a leading "Cookie:" is dropped).

    Raises:
        ConfigError: the text is not name=value pairs; the message names no value.
    """
    text = re.sub(r"^\s*cookie\s*:", "", text, flags=re.IGNORECASE)
    pairs = [part.strip() for part in text.split(";") if part.strip()]
    if not pairs:
        raise ConfigError(
            "--cookies is empty: give name=value pairs, e.g. 'authservice_session=...'",
            option="--cookies",
        )
    out = []
    for number, pair in enumerate(pairs, 1):
        name, equals, value = (s.strip() for s in pair.partition("="))
        if not equals or not _COOKIE_NAME.fullmatch(name):
            raise ConfigError(
                f"--cookies must be name=value pairs separated by ';' (e.g. "
                f"'authservice_session=...'); part {number} of {len(pairs)} is not one "
                f"(its text is not shown)",
                option="--cookies",
            )
        if not _COOKIE_VALUE.fullmatch(value):
            raise ConfigError(
                f"--cookies: the value of {name} holds a space, comma, backslash or quote, "
                f"which a cookie cannot carry: copy it again from the browser",
                option="--cookies",
            )
        out.append(f"{name}={value}")
    return "; ".join(out)


# --- the connection -------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """Where kdflow's own requests go, and how: what kfp.Client is given too."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    ca_cert: str | None = None
    proxy: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True

    def get(self, path: str, timeout_s: float, read_timeout_s: float | None = None) -> Any:
        """One GET of `url + path`: no retries, redirects not followed.

        Raises:
            urllib3.exceptions.HTTPError: no answer.
        """
        import certifi
        import urllib3

        # kfp_server_api's TLS trust (certifi unless a CA bundle is given); environment
        # proxies are not read, as kfp_server_api reads none.
        options: dict[str, Any] = {
            "cert_reqs": "CERT_REQUIRED" if self.verify else "CERT_NONE",
            "ca_certs": self.ca_cert or certifi.where(),
            "cert_file": self.cert_file,
            "key_file": self.key_file,
        }
        pool: urllib3.PoolManager = (
            urllib3.ProxyManager(self.proxy, **options)
            if self.proxy
            else urllib3.PoolManager(**options)
        )
        try:
            return pool.request(
                "GET",
                self.url + path,
                headers=dict(self.headers),
                timeout=urllib3.Timeout(connect=timeout_s, read=read_timeout_s or timeout_s),
                retries=False,
                redirect=False,
            )
        finally:
            pool.clear()


@dataclass(frozen=True)
class Connection:
    """A kfp.Client checked to reach a KFP API, with what kdflow knows about where it is."""

    client: kfp.Client
    host: str
    """The API's base URL, as messages name it."""
    ui: str
    """The KFP UI's base URL, for links ($KF_PIPELINES_UI_ENDPOINT when set)."""
    api: Endpoint
    """The API, for kdflow's own requests."""
    ui_server: Endpoint
    """The KFP UI server, which also serves pod logs (/k8s/pod/logs)."""
    namespace: str | None = None
    """The profile namespace of a multi-user API (the KFP namespace with a kube context)."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S

    def ui_url(self, fragment: str) -> str:
        return f"{self.ui}/#/{fragment}"


def connect(
    host: str | None,
    namespace: str | None = None,
    token: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    read_timeout_s: float = READ_TIMEOUT_S,
    access: Access | None = None,
) -> Connection:
    """A `Connection` to the KFP API at `host`, checked to answer before it is returned.

    Args:
        host: base URL of the API, with its scheme: `http://localhost:8080` after
            `kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`, or the Kubeflow
            gateway's `https://<domain>/pipeline`. None with `access.kube_context`.
        namespace: the Kubernetes namespace of a multi-user deployment; None for single-user.
            With a kube context, the namespace KFP is deployed in (default kubeflow).
        token: a bearer token; defaults to $KFP_TOKEN, then to the file named by
            $KF_PIPELINES_SA_TOKEN_PATH (a projected service-account token in a pod).
        timeout_s: seconds to wait for a connection or the health check.
        read_timeout_s: seconds to wait for the answer to any later request.
        access: CA bundle, proxy, session cookies, or a kube context (`access_options`).

    Raises:
        ConfigError: the options contradict each other, or the kube context is unknown.
        RemoteError: the host is malformed, unreachable, not a KFP API, refuses the
            credentials, or is multi-user and no namespace was given.
    """
    access = access or Access()
    if access.kube_context:
        api, ui_server, options = _through_kube_context(host, token, namespace, access)
        ui = _ui_base(ui_server.url)
        namespace = namespace or _KFP_NAMESPACE
    else:
        if not host:
            raise ConfigError(
                "give --host (the KFP API's URL) or --kube-context (reach the API through "
                "that context's Kubernetes API server)",
                option="--host",
            )
        host = _normalize_host(host)
        token = token or os.environ.get(TOKEN_ENV) or _token_from_file()
        api = Endpoint(host, _headers(token, access.cookies), access.ca_cert, access.proxy)
        ui_server, ui = api, _ui_base(host)
        options = {"host": host, "existing_token": token, "ssl_ca_cert": access.ca_cert}
        if namespace:
            options["namespace"] = namespace
    health = _check_health(api, timeout_s, cookies=bool(access.cookies))

    import kfp
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        with captured_stdout(), warnings.catch_warnings():
            # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later": the
            # health check above already proved a v2beta1 API.
            warnings.simplefilter("ignore", FutureWarning)
            client = kfp.Client(**options, cookies=access.cookies, proxy=access.proxy)
    except (ApiException, urllib3.exceptions.HTTPError, TimeoutError) as exc:
        raise RemoteError(f"Cannot open the KFP API at {api.url}: {failure_reason(exc)}") from exc
    if health.get("multi_user") and not client.get_user_namespace():
        raise RemoteError(
            f"The KFP API at {api.url} is multi-user: pass --namespace with your profile's "
            f"namespace"
        )
    _bound_waits(client, timeout_s, read_timeout_s)
    return Connection(
        client, api.url, ui, api, ui_server, namespace, timeout_s, read_timeout_s
    )


def _headers(authorization: str | None, cookies: str | None) -> dict[str, str]:
    headers = {}
    if authorization:
        prefixed = authorization.lower().startswith("bearer ")
        headers["Authorization"] = authorization if prefixed else f"Bearer {authorization}"
    if cookies:
        headers["Cookie"] = cookies
    return headers


def _normalize_host(host: str) -> str:
    host = host.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", host):
        raise RemoteError(
            f"KFP host {host!r} needs a scheme and a host name, e.g. http://localhost:8080 "
            f"(kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80) or "
            f"https://<kubeflow-domain>/pipeline"
        )
    return host


def _ui_base(default: str) -> str:
    # What kfp.Client links to: $KF_PIPELINES_UI_ENDPOINT, else the host; http:// if bare.
    ui = (os.environ.get(_UI_ENV) or default).strip().rstrip("/")
    return ui if ui.startswith(("http://", "https://")) else f"http://{ui}"


def _token_from_file() -> str | None:
    path = os.environ.get(_TOKEN_PATH_ENV)
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise RemoteError(
            f"${_TOKEN_PATH_ENV} names {path}, which cannot be read ({exc.strerror}): "
            f"unset it or point it at a service-account token"
        ) from exc


def _through_kube_context(
    host: str | None, token: str | None, namespace: str | None, access: Access
) -> tuple[Endpoint, Endpoint, dict[str, Any]]:
    """The API through the kube context's API server (its service proxy to ml-pipeline), as
    kfp.Client reaches it when given `kube_context` and no host; and the UI server the same
    way. Options kfp.Client would ignore or let override the context are refused."""
    name = access.kube_context
    for given, option, why in (
        (host, "--host", "kfp.Client ignores the kube context when given a host"),
        (token, "--token", "the kube context brings its own credentials"),
        (access.ca_cert, "--ca-cert", "the kube context brings its cluster's CA"),
    ):
        if given:
            raise ConfigError(f"{option} and --kube-context: {why}; give one", option=option)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise ConfigError(
            "--kube-context does not work inside a pod, where kfp.Client uses the pod's "
            "service account: pass --host http://ml-pipeline.kubeflow:8888 instead",
            option="--kube-context",
        )
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    from kubernetes.config.config_exception import ConfigException

    config = k8s_client.Configuration()
    try:  # kubeconfig from $KUBECONFIG or ~/.kube/config, as kfp.Client reads it
        k8s_config.load_kube_config(
            context=name, client_configuration=config, persist_config=False
        )
    except ConfigException as exc:
        raise ConfigError(_kube_context_problem(name or "", exc), option="--kube-context") from exc
    kfp_namespace = namespace or _KFP_NAMESPACE

    def through(service: str) -> Endpoint:
        return Endpoint(
            config.host.rstrip("/") + _KUBE_PROXY.format(namespace=kfp_namespace, service=service),
            _headers(config.get_api_key_with_prefix("authorization"), access.cookies),
            ca_cert=config.ssl_ca_cert,
            proxy=access.proxy,
            cert_file=config.cert_file,
            key_file=config.key_file,
            verify=bool(config.verify_ssl),
        )

    api = through("ml-pipeline:http")
    if "authorization" not in config.api_key:  # a client certificate: only kfp's own way
        options: dict[str, Any] = {"host": None, "kube_context": name}
    else:
        # kfp.Client's kube_context path breaks with a token user: the kubernetes package's
        # refresh hook puts the cluster's address back on every request, without the proxy
        # path. So kfp.Client gets the proxy URL as its host, and the context's token through
        # its public `credentials`, refreshed (an exec plugin's token expires) per request.
        options = {
            "host": api.url,
            "credentials": _kube_token(config),
            "ssl_ca_cert": config.ssl_ca_cert,
            "verify_ssl": bool(config.verify_ssl),
        }
    options["namespace"] = kfp_namespace
    return api, through("ml-pipeline-ui:80"), options


def _kube_token(config: Any) -> Any:
    """kfp credentials that take the bearer token from a loaded kube context each request."""
    from kfp.client.token_credentials_base import TokenCredentialsBase

    class KubeContextToken(TokenCredentialsBase):
        def refresh_api_key_hook(self, kfp_config: Any) -> None:
            value = config.get_api_key_with_prefix("authorization") or ""
            kfp_config.api_key["authorization"] = re.sub(r"^[Bb]earer\s+", "", value)

    return KubeContextToken()


def _kube_context_problem(name: str, exc: Exception) -> str:
    from kubernetes import config as k8s_config

    where = "your kubeconfig ($KUBECONFIG or ~/.kube/config)"
    if "No configuration found" in str(exc):
        return f"--kube-context {name}: found no kubeconfig ($KUBECONFIG or ~/.kube/config)"
    try:
        contexts = [c["name"] for c in k8s_config.list_kube_config_contexts()[0]]
    except Exception:  # the same file, already unreadable: the first error says why
        contexts = []
    if contexts and name not in contexts:
        return f"--kube-context {name} is not a context of {where}; it has: {', '.join(contexts)}"
    return f"--kube-context {name}: {exc}"


def _check_health(api: Endpoint, timeout_s: float, cookies: bool = False) -> dict[str, Any]:
    """The API's healthz answer, failing fast where kfp.Client would not: it retries a failing
    health check 5 times with 5 s sleeps, and waits for the operating system's TCP timeout on
    a silent host."""
    import urllib3

    host, url = api.url, f"{api.url}/apis/v2beta1/healthz"
    login = "pass a token with --token or $KFP_TOKEN, or the session cookie with --cookies"
    if cookies:
        login = "the session cookie given with --cookies was refused (expired?): copy it again"
    try:
        response = api.get("/apis/v2beta1/healthz", timeout_s)
    except urllib3.exceptions.HTTPError as exc:
        reason = failure_reason(exc)
        via = f" through the proxy {api.proxy}" if api.proxy else ""
        if "CERTIFICATE_VERIFY_FAILED" in reason:
            hint = (
                "pass the CA bundle that signed its certificate with --ca-cert"
                if not api.ca_cert
                else "the --ca-cert bundle did not sign its certificate"
            )
            raise RemoteError(
                f"The TLS certificate of {host} is not trusted ({reason}): {hint}"
            ) from exc
        raise RemoteError(
            f"Cannot reach the KFP API at {host}{via} ({reason}). Check --host and that the "
            f"API is up; for a local port-forward run "
            f"`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80` and use "
            f"http://localhost:8080"
        ) from exc
    if response.status in (301, 302, 303, 307, 308):
        location = str(response.headers.get("Location") or "").split("?")[0]
        raise RemoteError(f"{url} redirects to {location!r}, a login page: {login}")
    if response.status in (401, 403):
        raise RemoteError(
            f"The KFP API at {host} refused the credentials (HTTP {response.status}: "
            f"{message(response.data)}): {login}"
        )
    if response.status == 407:
        raise RemoteError(f"The proxy {api.proxy} asks for credentials (HTTP 407)")
    if response.status == 404:
        raise RemoteError(
            f"{host} has no KFP v2beta1 API ({url} is HTTP 404): point --host at the "
            f"Kubeflow Pipelines endpoint (KFP 2.x)"
        )
    if response.status != 200:
        raise RemoteError(
            f"The KFP API at {host} is unhealthy (HTTP {response.status} from {url}: "
            f"{message(response.data)})"
        )
    try:
        health = json.loads(response.data)
        if isinstance(health, dict):
            return health
    except ValueError:
        pass
    raise RemoteError(
        f"{url} answered with something other than JSON (a login or proxy page?): point "
        f"--host at the Kubeflow Pipelines API, or {login}"
    )


def _bound_waits(client: kfp.Client, timeout_s: float, read_timeout_s: float) -> None:
    """Give kfp.Client's later requests timeouts and connection retries.

    kfp_server_api passes `timeout=None` (wait forever) on every request unless the caller
    sets `_request_timeout`, which kfp.Client never does, and kfp.Client's constructor takes
    no timeout or retries. Does nothing if `_kfp_pool_manager` finds no pool.
    """
    import urllib3

    pool = _kfp_pool_manager(client)
    if pool is None:
        log.debug("kfp.Client's connection pool moved; its requests keep no timeout")
        return
    limits = urllib3.Timeout(connect=timeout_s, read=read_timeout_s)
    send = pool.request

    def request(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = limits
        return send(method, url, *args, **kwargs)

    pool.request = request  # type: ignore[method-assign]
    # Retry a connection that failed, never a request the server may have acted on (a POST).
    pool.connection_pool_kw["retries"] = urllib3.Retry(
        total=2, connect=2, read=0, status=0, redirect=0, backoff_factor=0.2
    )
    pool.clear()  # pools made for kfp.Client's own health check predate the retries


def _kfp_pool_manager(client: kfp.Client) -> urllib3.PoolManager | None:
    """The urllib3 pool under kfp.Client's requests.

    kfp has no public way to it, nor to timeouts: this is the one place kdflow reaches under
    kfp.Client. It goes through public names only: kfp.Client's generated service structs
    (`client.healthzs`, from kfp's `_add_generated_apis`) hold methods bound to
    kfp_server_api service objects, whose `api_client.rest_client.pool_manager` is
    kfp_server_api's (shared by every service of the client).
    """
    try:
        service = client.healthzs.healthz_service_get_healthz.__self__  # type: ignore[attr-defined]
        pool = service.api_client.rest_client.pool_manager
    except AttributeError:
        return None
    return pool if hasattr(pool, "connection_pool_kw") else None


# --- shared by the API calls ----------------------------------------------------------------


@contextlib.contextmanager
def captured_stdout() -> Iterator[None]:
    """kfp.Client prints links on stdout: log them at DEBUG instead, so the CLI owns it."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            log.debug("kfp: %s", line)


def failure_reason(exc: Exception) -> str:
    # MaxRetryError wraps the error that matters (refused, name not known, timed out).
    return str(getattr(exc, "reason", None) or exc)


def message(body: bytes | str | None) -> str:
    """The message of a KFP error body ({"error", "code", "message", ...}), or the body."""
    if not body:
        return ""
    text = body.decode(errors="replace") if isinstance(body, bytes) else body
    try:
        parsed = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(parsed, dict):
        return str(parsed.get("message") or parsed.get("error") or parsed)
    return text.strip()[:500]
