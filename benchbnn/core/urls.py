"""URLs of the stores benchbnn writes to (MLflow tracking, Optuna storages), checked offline.

* :func:`redact` hides the password of any URL, for every message, tag and file;
* :func:`with_installed_driver` gives a URL that names no database driver the one installed
  (``postgresql://`` with psycopg2 is ``postgresql+psycopg2://`` for MLflow and Optuna alike);
* :func:`check_database_url` proves, without connecting, that SQLAlchemy knows the URL's
  database and that its driver is installed.
"""

from __future__ import annotations

import importlib.util
from urllib.parse import urlsplit, urlunsplit

from benchbnn.core.errors import BenchbnnError

#: How to install the driver of each database SQLAlchemy knows (for the missing-driver message).
DRIVER_HINTS = {
    "postgresql": "for PostgreSQL install psycopg2-binary (pip install 'benchbnn[postgres]')",
    "mysql": "for MySQL install mysqlclient, or PyMySQL and write mysql+pymysql://",
    "mariadb": "for MariaDB install mysqlclient, or PyMySQL and write mariadb+pymysql://",
    "mssql": "for SQL Server install pyodbc",
    "oracle": "for Oracle install oracledb",
}


def scheme_of(url: str) -> str:
    """The database or protocol a URL names, lower case, without its driver: ``postgresql``
    for ``postgresql+psycopg2://...``; ``""`` for a path (a Windows drive letter included)."""
    if "://" not in url:
        return ""
    scheme = url.split("://", 1)[0].lower()
    return "" if len(scheme) == 1 else scheme.split("+", 1)[0]


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (paths and URLs without one unchanged)."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not parsable as a URL: hide everything between :// and @
        head, _, rest = url.partition("://")
        return f"{head}://***@{rest.rpartition('@')[2]}" if "@" in rest else url
    if not password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def with_installed_driver(url: str) -> str:
    """``url`` with the PostgreSQL driver that is installed, for URLs that name none.

    ``postgres://`` (Heroku's spelling) becomes ``postgresql://``; SQLAlchemy 2 reads a bare
    ``postgresql://`` as psycopg 3, so with only psycopg2 installed (benchbnn's ``postgres``
    extra) it becomes ``postgresql+psycopg2://``. Anything else comes back unchanged.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if not url.startswith("postgresql://"):
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def check_database_url(url: str, what: str, flag: str, schemes: str) -> None:
    """Raise BenchbnnError unless SQLAlchemy knows ``url``'s database and its driver is
    installed; nothing is connected.

    The message names ``what`` (e.g. ``the Optuna storage postgresql://u:***@h/db``, already
    redacted), says how to install a missing driver, and for an unknown scheme lists
    ``schemes`` (the URLs that work) and ``flag``.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(url).get_dialect()
    except NoSuchModuleError:
        raise BenchbnnError(
            f"{what}: unsupported scheme {scheme_of(url) or url!r}; {schemes}; pass {flag} "
            f"with one of them"
        ) from None
    except (ArgumentError, ValueError) as exc:
        raise BenchbnnError(f"{what} is not a valid URL ({exc}); {schemes}") from None
    load = getattr(dialect, "import_dbapi", None) or getattr(dialect, "dbapi", None)
    try:
        if load is not None:
            load()
    except ImportError as exc:
        hint = DRIVER_HINTS.get(scheme_of(url), "install the database's Python driver")
        raise BenchbnnError(f"no database driver for {what} ({exc}); {hint}") from None
