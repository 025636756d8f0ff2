"""Run Django's own database tests on djpool and on Django's stock MySQL backend.

``make test-django`` runs this script. It

1. downloads the source distribution of the installed Django version (the
   wheel has no tests) into ``build/django-sdist/`` and extracts it once into
   ``build/django-<version>/``;
2. finds a MySQL/MariaDB server: ``TEST_DATABASE_URL`` (default
   ``mysql://root@127.0.0.1:3306/test``), or else a throwaway MariaDB started
   with :class:`tests.support.MariaDB`;
3. writes a settings module for Django's ``tests/runtests.py`` into
   ``build/django-suite/`` whose two aliases, ``default`` and ``other``, use
   test databases only this script uses (``test_djpool_suite_*``);
4. runs the same test modules three times, everything else equal: with
   ``django.db.backends.mysql`` (``stock``), with ``djpool.backends.mysql``
   (pool on, ``djpool``), and with djpool holding connections on the thread
   that runs the tests between requests, as server.py's Django thread does
   (``djpool-hold``, see docs/djpool.md);
5. compares the outcomes test by test, prints a side-by-side table, writes it
   to ``build/django-suite-results.md``, and exits non-zero when a djpool
   run's results differ from the stock backend's.

Run ``scripts/django_suite.py --help`` for the options (a subset of modules,
one engine only, the number of processes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from django.test.runner import DiscoverRunner

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
WORK = BUILD / "django-suite"
RESULTS_MD = BUILD / "django-suite-results.md"
SETTINGS_MODULE = "djpool_suite_settings"
DEFAULT_DATABASE_URL = "mysql://root@127.0.0.1:3306/test"

#: The modules the issue asks for; always run.
REQUIRED_MODULES = ("backends", "transactions", "transaction_hooks", "basic")

#: Further database-heavy modules, chosen so that both runs together fit in
#: about eight minutes on a two-core machine (about three minutes each here).
#: Left out: datetimes, db_functions and timezones (they need the server's time
#: zone tables, which a stock server lacks, so they fail on both engines) and
#: serializers (a timing test in it fails on a loaded machine).
EXTRA_MODULES = (
    "select_for_update",
    "get_or_create",
    "update",
    "delete",
    "delete_regress",
    "bulk_create",
    "queries",
    "aggregation",
    "aggregation_regress",
    "annotations",
    "expressions",
    "expressions_case",
    "expressions_window",
    "model_fields",
    "migrations",
    "schema",
    "introspection",
    "inspectdb",
    "indexes",
    "constraints",
    "fixtures",
    "fixtures_regress",
    "multiple_database",
    "servers",
    "test_utils",
    "custom_pk",
    "dates",
    "defer",
    "defer_regress",
    "extra_regress",
    "filtered_relation",
    "force_insert_update",
    "foreign_object",
    "generic_relations",
    "generic_relations_regress",
    "get_earliest_or_latest",
    "known_related_objects",
    "lookup",
    "m2m_regress",
    "m2m_through",
    "many_to_many",
    "many_to_one",
    "model_inheritance",
    "model_inheritance_regress",
    "model_regress",
    "null_fk",
    "one_to_one",
    "ordering",
    "pagination",
    "prefetch_related",
    "proxy_models",
    "raw_query",
    "select_related",
    "select_related_regress",
    "signals",
    "update_only_fields",
    "composite_pk",
    "migrate_signals",
    "migration_test_data_persistence",
    "cache",
    "sessions_tests",
    "contenttypes_tests",
    "handlers",
    "queryset_pickle",
    "model_forms",
    "custom_lookups",
    "db_utils",
    "async",
    "dbshell",
    "test_client",
)

#: The two runs: label -> ENGINE.
ENGINES = {
    "stock": "django.db.backends.mysql",
    "djpool": "djpool.backends.mysql",
    # djpool as server.py runs it: connections held by the one thread between requests
    # (djpool.pool.hold_on_this_thread(), called by the settings module on the main thread).
    "djpool-hold": "djpool.backends.mysql",
}
HOLDING = frozenset({"djpool-hold"})

#: runtests.py processes. Measured here (2 cores, the whole module list, stock
#: backend): 186 s with 1 process, 398 s with 2 (cloning the test databases
#: with mysqldump and the server's disk dominate, not Python), and with 2 the
#: shared MariaDB intermittently lost its own temporary files. Hence serial;
#: ``--parallel 2`` still works for exercising the pool across fork().
DEFAULT_PARALLEL = 1

#: ``OPTIONS["pool"]`` for the djpool run. Django's suite runs threads that
#: each need a connection of their own (LiveServerTestCase's server thread,
#: the select_for_update and thread-sharing tests), hence the overflow.
POOL_OPTIONS: dict[str, Any] = {"size": 2, "max_overflow": 8, "timeout": 30.0}

#: Test database names; Django's runner creates and drops only these (and
#: their ``_<n>`` clones with --parallel).
TEST_NAME_PREFIX = "test_djpool_suite_"

#: Environment variables through which this script talks to the settings module.
ENV_ENGINE = "DJPOOL_SUITE_ENGINE"
ENV_HOLD = "DJPOOL_SUITE_HOLD"
ENV_OUTCOMES = "DJPOOL_SUITE_OUTCOMES"

#: The columns of the comparison, as (label, attribute of SuiteResult).
COLUMNS = (
    ("ran", "ran"),
    ("skipped", "skipped"),
    ("failures", "failures"),
    ("errors", "errors"),
    ("expected failures", "expected_failures"),
    ("unexpected successes", "unexpected_successes"),
)


# -- inside runtests.py: record every outcome ------------------------------------


class RecordingRunner(DiscoverRunner):
    """Django's test runner that also writes each test's outcome to a JSON file.

    The generated settings name it as ``TEST_RUNNER``; the file is the one
    named by the ``DJPOOL_SUITE_OUTCOMES`` environment variable. With
    ``--parallel`` the workers' results are replayed into the parent's result
    object, so the file covers every process.
    """

    def suite_result(self, suite: Any, result: unittest.TestResult, **kwargs: Any) -> int:
        """Write the outcomes, then let Django count the failures as usual."""
        path = os.environ.get(ENV_OUTCOMES)
        if path:
            Path(path).write_text(json.dumps(outcomes_of(result), indent=1, sort_keys=True))
        return super().suite_result(suite, result, **kwargs)  # type: ignore[no-any-return]


def outcomes_of(result: unittest.TestResult) -> dict[str, Any]:
    """The test ids in each outcome category of ``result``, with the tracebacks of problems."""
    tracebacks = {test.id(): text for test, text in result.failures + result.errors}
    return {
        "ran": result.testsRun,
        "failures": sorted(test.id() for test, _ in result.failures),
        "errors": sorted(test.id() for test, _ in result.errors),
        "skipped": {test.id(): reason for test, reason in result.skipped},
        "expected_failures": sorted(test.id() for test, _ in result.expectedFailures),
        "unexpected_successes": sorted(test.id() for test in result.unexpectedSuccesses),
        "tracebacks": tracebacks,
    }


# -- Django's test suite -----------------------------------------------------------


def redact_hosts(text: str) -> str:
    """Replace URLs and host names in tool output (this project names no registry)."""
    text = re.sub(r"[a-z][a-z0-9+.-]*://\S+", "<url>", text, flags=re.I)
    text = re.sub(r"host='[^']*'", "host=<host>", text)
    return re.sub(r"\b(?:[a-z0-9-]+\.)+(?:org|com|net|io|dev)\b", "<host>", text, flags=re.I)


def django_tests_dir(version: str) -> Path:
    """``tests/`` of Django ``version``'s sdist, downloaded and extracted on first use."""
    target = BUILD / f"django-{version}"
    tests = target / "tests"
    if (tests / "runtests.py").is_file():
        return tests
    sdist_dir = BUILD / "django-sdist"
    archives = sorted(sdist_dir.glob(f"[Dd]jango-{version}.tar.gz"))
    if not archives:
        print(f"django_suite: downloading the Django {version} sdist into {sdist_dir.relative_to(ROOT)}/")
        download = subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--no-binary", ":all:", f"django=={version}", "-d", str(sdist_dir),
            ],
            capture_output=True,
            text=True,
        )
        archives = sorted(sdist_dir.glob(f"[Dd]jango-{version}.tar.gz"))
        if download.returncode != 0 or not archives:
            raise SystemExit(
                f"django_suite: could not download the Django {version} sdist "
                f"(pip exited with {download.returncode}):\n"
                + redact_hosts(download.stdout + download.stderr)
            )
    scratch = Path(tempfile.mkdtemp(prefix="django-extract-", dir=BUILD))
    try:
        with tarfile.open(archives[0]) as tar:
            tar.extractall(scratch, filter="data")
        found = [p.parent.parent for p in scratch.glob("*/tests/runtests.py")]
        if len(found) != 1:
            raise SystemExit(f"django_suite: {archives[0].name} has no single */tests/runtests.py")
        shutil.rmtree(target, ignore_errors=True)
        found[0].rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return tests


# -- the database ---------------------------------------------------------------------


@dataclass
class Database:
    """Where the test databases are created."""

    host: str
    port: int
    user: str
    password: str
    name: str
    #: A throwaway server this script started (None for TEST_DATABASE_URL's).
    throwaway: Any = None

    def describe(self) -> str:
        """``user@host:port`` plus where it came from."""
        where = "throwaway MariaDB" if self.throwaway is not None else "TEST_DATABASE_URL"
        return f"{self.user}@{self.host}:{self.port} ({where})"


def find_database(url: str) -> Database:
    """The server at ``url`` if it answers, else a throwaway MariaDB started here."""
    from tests.support import MariaDB, server_from_url

    server = server_from_url(url)
    name = unquote(urlparse(url).path.lstrip("/")) or "test"
    if server.reachable():
        return Database(server.host, server.port, server.user, server.password, name)
    print(f"django_suite: nothing answers at {server.host}:{server.port}; starting a throwaway MariaDB")
    mariadb = MariaDB()
    try:
        mariadb.start()
    except BaseException:
        mariadb.destroy()
        raise
    s = mariadb.server
    return Database(s.host, s.port, s.user, s.password, "test", throwaway=mariadb)


def write_settings(db: Database) -> None:
    """Write the settings module runtests.py loads (the engine comes from the environment)."""
    WORK.mkdir(parents=True, exist_ok=True)
    connection = {
        "HOST": db.host,
        "PORT": str(db.port),
        "USER": db.user,
        "PASSWORD": db.password,
        "NAME": db.name,
    }
    text = f'''"""Settings for Django's tests/runtests.py, written by scripts/django_suite.py.

Regenerated on every run; the engine comes from ${ENV_ENGINE}.
"""

import os

ENGINE = os.environ[{ENV_ENGINE!r}]
POOL_OPTIONS = {POOL_OPTIONS!r}


def _alias(name):
    return {{
        "ENGINE": ENGINE,
        **{connection!r},
        "OPTIONS": {{"pool": dict(POOL_OPTIONS)}} if ENGINE == "djpool.backends.mysql" else {{}},
        # utf8mb4 whatever the server's default (a throwaway MariaDB's is latin1).
        "TEST": {{"NAME": {TEST_NAME_PREFIX!r} + name, "CHARSET": "utf8mb4"}},
    }}


DATABASES = {{"default": _alias("default"), "other": _alias("other")}}

SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False
TEST_RUNNER = "django_suite.RecordingRunner"

if os.environ.get({ENV_HOLD!r}) == "1":
    from djpool.pool import hold_on_this_thread

    hold_on_this_thread()  # runtests.py imports the settings on the thread that runs the tests
'''
    (WORK / f"{SETTINGS_MODULE}.py").write_text(text)


# -- running and comparing ------------------------------------------------------------


@dataclass
class SuiteResult:
    """What one runtests.py run reported."""

    label: str
    engine: str
    seconds: float
    returncode: int
    log: Path
    ran: int = 0
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    expected_failures: list[str] = field(default_factory=list)
    unexpected_successes: list[str] = field(default_factory=list)
    tracebacks: dict[str, str] = field(default_factory=dict)
    #: False when runtests.py died before reporting (see the log).
    completed: bool = False

    def count(self, attribute: str) -> int:
        """The number for one column of the table."""
        value = getattr(self, attribute)
        return value if isinstance(value, int) else len(value)

    def summary(self) -> str:
        """One line: the counts and the wall time."""
        counts = ", ".join(f"{label} {self.count(attr)}" for label, attr in COLUMNS)
        state = "" if self.completed else " (did not complete; see the log)"
        return f"{self.label:6} {self.engine}: {counts}; {self.seconds:.0f} s{state}"


def run_suite(label: str, tests_dir: Path, modules: list[str], parallel: int, timeout: float) -> SuiteResult:
    """Run runtests.py with ``ENGINES[label]``; its full output goes to build/django-suite/."""
    engine = ENGINES[label]
    outcomes = WORK / f"{label}.json"
    outcomes.unlink(missing_ok=True)
    log = WORK / f"{label}.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(WORK), str(ROOT / "scripts"), str(ROOT)]),
            ENV_ENGINE: engine,
            ENV_HOLD: "1" if label in HOLDING else "0",
            ENV_OUTCOMES: str(outcomes),
        }
    )
    command = [
        sys.executable, str(tests_dir / "runtests.py"), f"--settings={SETTINGS_MODULE}",
        "--noinput", f"--parallel={parallel}", "--verbosity=2", *modules,
    ]
    print(f"django_suite: {label}: {engine}, {len(modules)} modules, --parallel={parallel} "
          f"(output: {log.relative_to(ROOT)})", flush=True)
    started = time.monotonic()
    with open(log, "wb") as out:
        # A session of its own, so that a timeout can stop the workers too.
        proc = subprocess.Popen(command, cwd=tests_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            returncode = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
            with open(log, "a") as note:
                note.write(f"\n[django_suite: killed after {timeout:.0f} s]\n")
    result = SuiteResult(label, engine, time.monotonic() - started, returncode, log)
    if outcomes.exists():
        data = json.loads(outcomes.read_text())
        for key, value in data.items():
            setattr(result, key, value)
        result.completed = True
    print(f"django_suite: {result.summary()}", flush=True)
    return result


def differences(stock: SuiteResult, pooled: SuiteResult) -> list[str]:
    """Every way djpool's results differ from the stock backend's (empty: identical)."""
    problems = []
    for result in (stock, pooled):
        if not result.completed:
            problems.append(f"{result.label}: runtests.py exited with {result.returncode} before "
                            f"reporting; see {result.log.relative_to(ROOT)}")
    if problems:
        return problems
    for label, attribute in COLUMNS:
        if stock.count(attribute) != pooled.count(attribute):
            problems.append(
                f"{label}: stock {stock.count(attribute)}, {pooled.label} {pooled.count(attribute)}"
            )
    for attribute in ("failures", "errors", "unexpected_successes"):
        new = sorted(set(getattr(pooled, attribute)) - set(getattr(stock, attribute)))
        problems += [f"{attribute.replace('_', ' ')} only with {pooled.label}: {test}" for test in new]
    for attribute in ("skipped", "expected_failures"):
        theirs, ours = set(getattr(stock, attribute)), set(getattr(pooled, attribute))
        name = attribute.replace("_", " ")
        problems += [f"{name} only with stock: {test}" for test in sorted(theirs - ours)]
        problems += [f"{name} only with {pooled.label}: {test}" for test in sorted(ours - theirs)]
    return problems


def report(
    results: list[SuiteResult], modules: list[str], parallel: int, db: Database, version: str,
    problems: list[str],
) -> str:
    """The Markdown summary: a side-by-side table and, if any, the differences."""
    header = "| | " + " | ".join(f"{r.label} (`{r.engine}`)" for r in results) + " |"
    lines = [
        f"# Django {version} test suite: djpool vs stock MySQL backend",
        "",
        f"Modules ({len(modules)}): {' '.join(modules)}",
        "",
        f"Database: {db.describe()}; `--parallel={parallel}`; pool options for djpool: `{POOL_OPTIONS}`",
        "",
        header,
        "|---" * (len(results) + 1) + "|",
    ]
    for label, attribute in COLUMNS:
        lines.append(f"| {label} | " + " | ".join(str(r.count(attribute)) for r in results) + " |")
    lines.append("| wall time | " + " | ".join(f"{r.seconds:.0f} s" for r in results) + " |")
    lines.append("| completed | " + " | ".join("yes" if r.completed else "**no**" for r in results) + " |")
    lines.append("")
    if len(results) < 2:
        lines.append("Only one engine was run: nothing compared.")
    elif problems:
        lines.append(f"**djpool differs from the stock backend** ({len(problems)}):")
        lines.append("")
        lines += [f"- {p}" for p in problems]
    else:
        lines.append("Each djpool column's results are identical to the stock backend's, test by test.")
    for result in results:
        for test in result.failures + result.errors:
            traceback = result.tracebacks.get(test, "").rstrip()
            lines += ["", f"## {result.label}: {test}", "", "```", traceback, "```"]
    return "\n".join(lines) + "\n"


def tblib_missing() -> bool:
    """True when tblib is absent: then ``--parallel`` > 1 cannot report a failing test.

    The parallel runner pickles each failure's traceback back to the parent;
    without tblib that fails, and runtests.py aborts instead of reporting.
    """
    try:
        import tblib  # noqa: F401
    except ImportError:
        return True
    return False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="test modules to run instead of the default list")
    parser.add_argument("--only", choices=sorted(ENGINES), help="run one engine only (no comparison)")
    parser.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                        help=f"runtests.py processes (default {DEFAULT_PARALLEL}; more need tblib)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Download, run the engines, compare; 0 when each djpool run matches the stock backend."""
    args = parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    version = django.get_version()
    modules = args.modules or [*REQUIRED_MODULES, *EXTRA_MODULES]
    parallel = args.parallel
    if parallel > 1 and tblib_missing():
        print("django_suite: warning: tblib is not installed; with --parallel a failing test "
              "aborts runtests.py instead of being reported", file=sys.stderr)
    tests_dir = django_tests_dir(version)
    db = find_database(os.environ.get("TEST_DATABASE_URL", DEFAULT_DATABASE_URL))
    try:
        print(f"django_suite: Django {version} tests from {tests_dir.relative_to(ROOT)}, "
              f"database {db.describe()}", flush=True)
        write_settings(db)
        labels = [args.only] if args.only else list(ENGINES)
        results = [run_suite(label, tests_dir, modules, parallel, args.timeout) for label in labels]
    finally:
        if db.throwaway is not None:
            db.throwaway.destroy()
    stock = next((r for r in results if r.label == "stock"), None)
    problems = [p for r in results if r is not stock and stock is not None for p in differences(stock, r)]
    text = report(results, modules, parallel, db, version, problems)
    RESULTS_MD.write_text(text)
    print()
    print(text.split("\n## ", 1)[0].rstrip())
    print(f"\n(written to {RESULTS_MD.relative_to(ROOT)}; full output in {WORK.relative_to(ROOT)}/)")
    if not all(r.completed for r in results):
        return 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
