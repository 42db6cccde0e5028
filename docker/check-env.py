"""Refuses placeholder and weak secrets before the stack starts.

Run by the one-shot `check-env` service of docker/compose.yaml (which every other service waits for),
on the variables compose passes it; or by hand on an env file: ``python3 docker/check-env.py docker/.env``.

A secret must be set, letters and digits only (values end up inside URLs), at least 16 characters,
and not a placeholder of docker/.env.example (``change-me...``). A user name must be set, letters and
digits only. Prints one line per variable to fix (its name and what is wrong, never its value) and
exits 1; exits 0 when every variable is fine. Standard library only.
"""

from __future__ import annotations

import os
import re
import sys

SECRETS = (
    "RAY_AUTH_TOKEN",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SECRET_KEY",
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_PASSWORD",
)
NAMES = ("MLFLOW_ADMIN_USER", "MINIO_ROOT_USER")
MIN_LENGTH = 16
PLACEHOLDERS = ("change-me", "changeme")
HINT = 'python3 -c "import secrets; print(secrets.token_hex(24))"'


def read_env_file(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines as docker compose reads them (comments and blank lines skipped, one pair of
    surrounding quotes removed)."""
    env = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            key, value = key.strip(), value.strip()
            if key.startswith("export "):
                key = key[len("export ") :].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            env[key] = value
    return env


def problem(name: str, value: str | None, secret: bool) -> str | None:
    """What is wrong with variable ``name`` (never its value), or None."""
    if value is None:
        return "is not set"
    if not value:
        return "is empty"
    if any(p in value.lower() for p in PLACEHOLDERS):
        return "is still the placeholder of docker/.env.example (change-me): put a real value"
    if not re.fullmatch(r"[A-Za-z0-9]+", value):
        return "may hold letters and digits only"
    if secret and len(value) < MIN_LENGTH:
        return f"is shorter than {MIN_LENGTH} characters"
    return None


def check(env: dict[str, str]) -> list[str]:
    """One line per offending variable."""
    lines = []
    for name in (*SECRETS, *NAMES):
        why = problem(name, env.get(name), name in SECRETS)
        if why:
            lines.append(f"check-env: {name} {why}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: check-env.py [ENV_FILE]   (without ENV_FILE: the environment)", file=sys.stderr)
        return 2
    try:
        env = read_env_file(argv[0]) if argv else dict(os.environ)
    except OSError as e:
        print(f"check-env: cannot read {argv[0]}: {e.strerror}", file=sys.stderr)
        return 1
    lines = check(env)
    if lines:
        print("\n".join(lines), file=sys.stderr)
        print(f"check-env: fix these in docker/.env (random values: {HINT})", file=sys.stderr)
        return 1
    print(f"check-env: {len(SECRETS)} secrets and {len(NAMES)} user names are fine")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
