#!/usr/bin/env python3
"""Builds the Superset import bundle (a ZIP for `superset import-dashboards`) from the files in
superset/bundle/, pointed at the PostgreSQL ccc-etl writes to.

    python3 superset/build_bundle.py --config pipeline.toml --out ccc-etl-superset.zip

The database URL is read from the environment variable named by --database-url-env
(DATABASE_URL by default, as ccc-etl reads it) or else from the configuration's
[postgres].url; it is never taken as an argument, so it stays out of process listings. The
schema is the configuration's [postgres].schema (or --schema). Python 3.11 or later, standard
library only. A URL with a password puts that password in the ZIP, which is then written
readable by its owner only: import it and delete it.
"""

import argparse
import os
import re
import sys
import tomllib
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

BUNDLE = Path(__file__).resolve().parent / "bundle"
ROOT_DIR = "ccc_etl_superset"
SCHEMA = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def fail(message: str) -> "NoReturn":  # noqa: F821
    print(f"build_bundle: {message}", file=sys.stderr)
    sys.exit(2)


def read_config(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        fail(f"{path}: no such configuration file")
    except tomllib.TOMLDecodeError as e:
        fail(f"{path}: not valid TOML: {e}")


def sqlalchemy_uri(url: str) -> str:
    """postgres://... as SQLAlchemy with psycopg2 names it."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql", "postgresql+psycopg2"):
        fail(f"the database URL must be postgres:// or postgresql://, not {parts.scheme}://")
    if not parts.hostname:
        fail("the database URL names no host")
    return "postgresql+psycopg2://" + url.split("://", 1)[1]


def yaml_string(value: str) -> str:
    """A double-quoted YAML scalar (a JSON string is one)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def replace_top_level(text: str, key: str, value: str, name: str) -> str:
    pattern = re.compile(rf"^{key}: .*$", re.MULTILINE)
    if len(pattern.findall(text)) != 1:
        fail(f"{name}: expected one top-level `{key}:` line")
    return pattern.sub(lambda _: f"{key}: {value}", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, help="ccc-etl's configuration (for [postgres] schema and url)")
    ap.add_argument("--schema", help="the schema ccc-etl writes to (default: the configuration's, else ccc)")
    ap.add_argument("--database-url-env", default="DATABASE_URL", metavar="NAME",
                    help="environment variable holding the PostgreSQL URL (default DATABASE_URL)")
    ap.add_argument("--out", type=Path, default=Path("ccc-etl-superset.zip"), help="the ZIP to write")
    args = ap.parse_args()

    postgres = read_config(args.config).get("postgres", {})
    schema = args.schema or postgres.get("schema", "ccc")
    if not SCHEMA.match(schema):
        fail(f"schema {schema!r} is not a plain identifier (letters, digits, _)")
    url = os.environ.get(args.database_url_env) or postgres.get("url")
    if not url:
        fail(f"no database URL: set {args.database_url_env} (or [postgres].url in the configuration)")
    uri = sqlalchemy_uri(url)

    files = sorted(p for p in BUNDLE.rglob("*.yaml"))
    if not files:
        fail(f"{BUNDLE}: no bundle files")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as z:
        for path in files:
            rel = path.relative_to(BUNDLE).as_posix()
            text = path.read_text(encoding="utf-8")
            if rel.startswith("databases/"):
                text = replace_top_level(text, "sqlalchemy_uri", yaml_string(uri), rel)
            elif rel.startswith("datasets/"):
                text = replace_top_level(text, "schema", schema, rel)
            z.writestr(f"{ROOT_DIR}/{rel}", text)
    os.replace(tmp, args.out)
    host = urlsplit(url).hostname
    print(f"{args.out}: {len(files)} files, database {host}, schema {schema}")


if __name__ == "__main__":
    main()
