"""Create kdflow's MLflow user, or give it the Secret's password again; run by create-user-job.yaml.

Environment:
  MLFLOW_TRACKING_URI                                  the MLflow server (basic-auth app)
  MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD   its admin (Secret mlflow-auth)
  KDFLOW_MLFLOW_USERNAME, KDFLOW_MLFLOW_PASSWORD       the user to create (Secret kdflow-mlflow)
  MLFLOW_WAIT_S                                        how long to wait for /health (default 600)

Idempotent: an existing user gets the Secret's password, so rotating it is editing the Secret
and running the Job again. The user is never an admin: it may create experiments and registered
models, and MLflow makes it their manager. Passwords are never printed. Standard library only.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

# The basic-auth app's REST API (mlflow/server/auth/routes.py); admins only.
CREATE = "/api/2.0/mlflow/users/create"
UPDATE_PASSWORD = "/api/2.0/mlflow/users/update-password"


def fail(message: str) -> int:
    print(f"create-user: error: {message}", file=sys.stderr)
    return 1


def wait_healthy(uri: str, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=10) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(3)


def request(
    uri: str, method: str, path: str, body: dict, login: tuple[str, str]
) -> tuple[int, str]:
    """(HTTP status, MLflow's error code or the answer's text)."""
    token = base64.b64encode(":".join(login).encode()).decode()
    sent = urllib.request.Request(
        uri + path, data=json.dumps(body).encode(), method=method,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(sent, timeout=30) as answer:
            return int(answer.status), ""
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        try:
            return int(err.code), str(json.loads(text).get("error_code", text))
        except (ValueError, AttributeError):
            return int(err.code), " ".join(text.split())[:200]


def main() -> int:
    env = os.environ
    uri = env.get("MLFLOW_TRACKING_URI", "").rstrip("/")
    admin = (env.get("MLFLOW_TRACKING_USERNAME", ""), env.get("MLFLOW_TRACKING_PASSWORD", ""))
    user, password = env.get("KDFLOW_MLFLOW_USERNAME", ""), env.get("KDFLOW_MLFLOW_PASSWORD", "")
    missing = [
        name
        for name, value in (
            ("MLFLOW_TRACKING_URI", uri),
            ("MLFLOW_TRACKING_USERNAME", admin[0]),
            ("MLFLOW_TRACKING_PASSWORD", admin[1]),
            ("KDFLOW_MLFLOW_USERNAME", user),
            ("KDFLOW_MLFLOW_PASSWORD", password),
        )
        if not value
    ]
    if missing:
        return fail(f"{', '.join(missing)} not set or empty (Secrets mlflow-auth, kdflow-mlflow)")
    if user == admin[0]:
        return fail(f"the pipeline's user {user!r} is the admin: give it a name of its own")
    if len(password) < 12:
        return fail(f"the password of {user!r} is shorter than MLflow's minimum of 12 characters")
    if not wait_healthy(uri, float(env.get("MLFLOW_WAIT_S", "600"))):
        return fail(f"{uri}/health did not answer; is the mlflow Deployment up?")

    body = {"username": user, "password": password}
    status, detail = request(uri, "POST", CREATE, body, admin)
    done = f"created MLflow user {user!r} on {uri}"
    if detail == "RESOURCE_ALREADY_EXISTS":
        status, detail = request(uri, "PATCH", UPDATE_PASSWORD, body, admin)
        done = f"MLflow user {user!r} exists on {uri}; set its password again"
    if status == 401:
        return fail(f"{uri} refused the admin {admin[0]!r}: MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD must be the ones the server was first started "
                    "with (Secret mlflow-auth)")
    if status == 403:
        return fail(f"{admin[0]!r} is not an admin on {uri}")
    if status != 200:
        return fail(f"{uri} answered HTTP {status}: {detail}")
    print(f"create-user: {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
