"""The TOML config file as pydantic models: validation, secret resolution, error locations.

Every problem is reported as `file:line: message` naming the pipeline or provider and the field,
never as a traceback.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.errors import ConfigError
from orchestrator.runtime import DEFAULT_UMASK
from orchestrator.schedule import parse_schedule
from orchestrator.templating import TemplateError, render

DEFAULT_PATH = "orchestrator.toml"
ENV_VAR = "ORCHESTRATOR_CONFIG"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*(ms|s|m|h|d))+\s*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


MAX_DURATION = 366 * 86400.0  # longer is a typo, and infinity breaks timers (ceil(inf))
MAX_RETENTION = 100 * 366 * 86400.0  # retention is counted in years; still finite


def parse_duration(value: str | float | int, *, most: float = MAX_DURATION) -> float:
    """'90s', '15m', '1h30m', '250ms' or a number of seconds → seconds (at most `most`: a year
    unless said otherwise)."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        seconds = float(value)
    elif not _DURATION.match(value):
        raise ValueError(f"{value[:40]!r} is not a duration like '30s', '15m', '2h' or '1h30m'")
    else:
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(value))
    if not seconds <= most:  # also NaN
        raise ValueError(f"must be at most {most / 86400:,.0f} days")
    return seconds


Duration = Annotated[float, Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LedgerConfig(_Model):
    url: str = "sqlite+aiosqlite:///./orchestrator.db"
    # Replicas on one PostgreSQL ledger: a replica that dies has its accounts taken over by the
    # others within this time (orchestrator.leasing); it renews its leases every fifth of it.
    lease: Duration = 30.0

    @field_validator("lease", mode="before")
    @classmethod
    def _lease(cls, v: Any) -> float:
        seconds = parse_duration(v)
        if not 1.0 <= seconds <= 3600.0:
            raise ValueError(f"{v!r}: a lease is between 1s and 1h")
        return seconds

    @field_validator("url")
    @classmethod
    def _async_postgres_driver(cls, v: str) -> str:
        """A PostgreSQL URL names an async driver that is installed (README "PostgreSQL
        ledger"); checked here so a bad one is a config error, not a traceback at start."""
        backend, _, driver = v.split("://", 1)[0].partition("+")
        if backend != "postgresql":
            return v
        if driver not in ("", "asyncpg", "psycopg"):
            raise ValueError(
                f"driver {driver!r} is not asynchronous; "
                "use postgresql+asyncpg://… or postgresql+psycopg://…"
            )
        from importlib.util import find_spec

        if find_spec(driver or "asyncpg") is None:
            raise ValueError(
                f"{driver or 'asyncpg'} is not installed: pip install 'orchestrator[postgres]'"
            )
        return v


class OutputConfig(_Model):
    dir: Path = Path("./results")


class PollConfig(_Model):
    initial: Duration = 2.0
    max_interval: Duration = 60.0
    min_interval: Duration = 0.05

    @field_validator("initial", "max_interval", "min_interval", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return parse_duration(v)


# The providers an account can be of (providers/ registers one adapter under each name).
PROVIDER_TYPES = ("clari", "claro", "claravine", "claribi", "clayva")
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # the ledger keeps 64 characters


def account_type(name: str, explicit: str | None = None) -> str | None:
    """Which provider an account `[providers.<name>]` is of: its explicit `type`, else the name
    itself when it is a provider's (`clari`), else the name's part before the first '-'
    (`clari-emea` → clari). None when that names no provider."""
    if explicit is not None:
        return explicit if explicit in PROVIDER_TYPES else None
    if name in PROVIDER_TYPES:
        return name
    prefix, dash, _ = name.partition("-")
    return prefix if dash and prefix in PROVIDER_TYPES else None


class ProviderConfig(_Model):
    name: str = ""
    type: str | None = None  # the provider, for an account named otherwise (README "Several…")
    base_url: str
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    api_secret: SecretStr | None = None
    api_secret_file: Path | None = None
    partner_key: SecretStr | None = None
    partner_key_file: Path | None = None
    concurrency: int | None = Field(default=None, ge=1)
    monthly_quota: int | None = Field(default=None, ge=0)
    quota_reserve: int = Field(default=0, ge=0)
    requests_per_second: float = Field(default=10.0, gt=0)
    requests_per_minute: float | None = Field(default=None, gt=0)  # Claro: 100 unless set
    generations_per_hour: int | None = Field(default=None, ge=1)  # clariBI: the tier's if unset
    generations_per_day: int | None = Field(default=None, ge=1)
    ingest_base_url: str | None = None  # Clari ingest: default base_url with /v4 → /v2
    key_header: str | None = None  # Claravine: the header names its API page does not give
    secret_header: str | None = None
    timeout: Duration = 30.0
    retries: int = Field(default=5, ge=0)  # HTTP-level retries on 429/5xx/connection errors
    retry_base: Duration = 0.5
    retry_cap: Duration = 30.0  # longest HTTP-level backoff on 5xx/connection errors
    # Untrusted answers (README "Timeouts, caps and redirects"): a whole API call, body included,
    # must finish within request_deadline; a result download within download_deadline; a JSON
    # answer may hold max_answer_bytes, an error body max_error_bytes (more is a provider error).
    request_deadline: Duration = 120.0
    download_deadline: Duration = 6 * 3600.0
    max_answer_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_error_bytes: int = Field(default=64 * 1024, ge=256)
    limits_refresh: Duration = 60.0
    poll: PollConfig = PollConfig()

    @field_validator(
        "timeout",
        "retry_base",
        "retry_cap",
        "request_deadline",
        "download_deadline",
        "limits_refresh",
        mode="before",
    )
    @classmethod
    def _dur(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("type")
    @classmethod
    def _type(cls, v: str | None) -> str | None:
        if v is not None and v not in PROVIDER_TYPES:
            raise ValueError(
                f"unknown provider type {v[:40]!r}; known: {', '.join(PROVIDER_TYPES)}"
            )
        return v

    @property
    def provider_type(self) -> str | None:
        """The provider this account is of (None: its name tells none and no `type` is set)."""
        return account_type(self.name, self.type)

    @field_validator("base_url", "ingest_base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        if not https_or_loopback(v):
            raise ValueError(
                "plain http:// is allowed only for a loopback address (127.0.0.1, ::1, "
                "localhost): use https:// (the API key would cross the network in clear)"
            )
        return v.rstrip("/")

    @model_validator(mode="after")
    def _key_source(self) -> ProviderConfig:
        for key in SECRET_KEYS:
            if getattr(self, key) is not None and getattr(self, f"{key}_file") is not None:
                raise ValueError(f"set {key} or {key}_file, not both")
        if self.api_key is None and self.api_key_file is None:
            raise ValueError("api_key (or api_key_file) is required")
        return self

    def secret(self) -> str:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        assert self.api_key_file is not None
        return read_secret_file(self.api_key_file)

    def secrets(self) -> list[str]:
        out = [self.secret()]
        out += [s.get_secret_value() for s in (self.api_secret, self.partner_key) if s is not None]
        return [s for s in out if s]


SECRET_KEYS = ("api_key", "api_secret", "partner_key")  # each may come from a `<key>_file`


def read_secret_file(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


class PipelineConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    kind: str
    schedule: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    missed_runs: Literal["skip", "catch_up", "all"] = "skip"
    max_catch_up: int = Field(default=10, ge=1)  # missed_runs = "all": the newest N missed fires
    max_attempts: int = Field(default=3, ge=1)
    deadline: Duration | None = None  # cancel the remote job (PATCH) if not done by then
    # A [providers.<name>] of the kind's provider; default: the one named like the provider.
    account: str | None = Field(default=None, pattern=ACCOUNT_NAME.pattern)
    enabled: bool = True

    @field_validator("deadline", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        if v is not None:
            parse_schedule(v)
        return v

    @property
    def provider(self) -> str:
        return self.account or self.kind.split(".", 1)[0]


class DaemonConfig(_Model):
    drain_timeout: Duration = 30.0
    max_fetches: int = Field(default=4, ge=1)
    max_submits: int = Field(default=4, ge=1)
    claim_interval: Duration = 0.5  # how often the ledger is checked for work other processes added
    retry_base: Duration = 30.0  # first wait before re-running a failed job; doubles each attempt
    retry_cap: Duration = 1800.0
    timezone: str = "UTC"
    # The process umask, octal: files the daemon creates (ledger, results) 0600, directories
    # 0700 unless set otherwise ("027": group may read).
    umask: int = Field(default=DEFAULT_UMASK, ge=0, le=0o777)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"  # `run -v`: DEBUG

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("drain_timeout", "claim_interval", "retry_base", "retry_cap", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("umask", mode="before")
    @classmethod
    def _octal(cls, v: Any) -> int:
        # A string: TOML's 077 is a syntax error and 77 would be decimal.
        if not isinstance(v, str) or not re.fullmatch(r"0?[0-7]{3}", v.strip()):
            raise ValueError(f'{v!r} is not an octal umask in quotes, like "077" or "027"')
        return int(v, 8)


class WebConfig(_Model):
    """The status server of `orchestrator run` (not of --once / --exit-when-idle batch runs)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)  # 0: any free port (tests)
    # Host names the server answers to besides its bind address ("*": any). Any other Host
    # header is refused, so a web page cannot read the API through DNS rebinding.
    allowed_hosts: list[str] = Field(default_factory=list)
    # A file holding a token that / , /api/* and /metrics then require (Bearer, or as the
    # password of Basic auth in a browser); /healthz and /readyz stay open.
    token_file: Path | None = None

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for host in v:
            if not host or any(c in host for c in "/: \t"):
                raise ValueError(f"{host!r} is not a host name (no scheme, port or path)")
        return [h.lower().rstrip(".") for h in v]

    def token(self) -> str | None:
        if self.token_file is None:
            return None
        return self.token_file.read_text(encoding="utf-8").strip()


class RetentionConfig(_Model):
    """`[retention]`: how long results and ledger rows are kept (None: forever). `orchestrator
    prune` and the daemon's daily run apply it (retention.py)."""

    results: Duration | None = None  # result files (and their ledger rows) older than this
    jobs: Duration | None = None  # finished jobs, their transitions and parts, older than this

    @field_validator("results", "jobs", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v, most=MAX_RETENTION)


NotifyEvent = Literal["failed", "recovered", "late", "quota_low", "credits_low"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = (
    "failed",
    "recovered",
    "late",
    "quota_low",
    "credits_low",
)


class NotifyConfig(_Model):
    """One webhook to tell (`[[notify]]`). The URL is a credential (Slack's carries its token):
    SecretStr keeps it out of reprs; it is shown redacted everywhere."""

    url: SecretStr
    on: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS), min_length=1)
    pipelines: list[str] | None = None  # only these pipelines' events (None: all)

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr) -> SecretStr:
        if not re.match(r"^https?://[^/\s]+", v.get_secret_value()):
            raise ValueError("is not an http(s) URL")
        return v


class Config(_Model):
    ledger: LedgerConfig = LedgerConfig()
    web: WebConfig = WebConfig()
    output: OutputConfig = OutputConfig()
    daemon: DaemonConfig = DaemonConfig()
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    pipelines: list[PipelineConfig] = Field(default_factory=list)
    notify: list[NotifyConfig] = Field(default_factory=list)
    retention: RetentionConfig = RetentionConfig()
    source: Path | None = Field(default=None, exclude=True)
    _locator: _Locator | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Path:
        """Where relative paths of the file point from: the config file's directory."""
        return (self.source or Path(DEFAULT_PATH)).resolve().parent

    def pipeline(self, name: str) -> PipelineConfig:
        for p in self.pipelines:
            if p.name == name:
                return p
        raise KeyError(name)

    def secrets(self) -> list[str]:
        return [s for p in self.providers.values() for s in p.secrets()]

    def account_type(self, account: str) -> str | None:
        """The provider type of the configured account `account` (None: no such account)."""
        prov = self.providers.get(account)
        return None if prov is None else prov.provider_type

    def where(self, *loc: str | int) -> str:
        """`file:line` of a key, e.g. where("web", "port"), for messages about its value."""
        line = self._locator.line(loc) if self._locator is not None else 1
        return f"{self.source}:{line}"


# --- loading -----------------------------------------------------------------------------------


def resolve_path(explicit: str | os.PathLike[str] | None) -> Path:
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(ENV_VAR) or DEFAULT_PATH)


def _expand_env(value: Any, missing: list[str]) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                missing.append(name)
                return ""
            return os.environ[name]

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand_env(v, missing) for k, v in value.items()}
    return value


def _secret_file(path: Path, base: Path) -> Path:
    """A relative `*_file` secret is looked up in systemd's $CREDENTIALS_DIRECTORY when set
    (LoadCredential=), else beside the config file."""
    path = path.expanduser()
    if path.is_absolute():
        return path
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    return Path(creds) / path if creds else base / path


_SQLITE_URL = re.compile(r"^(sqlite(?:\+\w+)?:///)([^?]*)(\?.*)?$")


def _sqlite_url(url: str, base: Path) -> str:
    """`sqlite+aiosqlite:///state/ledger.db` (three slashes: relative) → the file beside the
    config; four slashes, `:memory:` and other databases are left as they are."""
    m = _SQLITE_URL.match(url)
    if not m or not m.group(2) or m.group(2) == ":memory:" or m.group(2).startswith("/"):
        return url
    return f"{m.group(1)}{base / Path(m.group(2)).expanduser()}{m.group(3) or ''}"


def _resolve_paths(cfg: Config, kinds: dict[str, Any]) -> None:
    """Every relative path in the file points from the file's own directory, not from wherever
    the command happens to run (a systemd unit, a container, an admin shell)."""
    from orchestrator.providers.sources import FileImportParams

    base = cfg.base_dir
    cfg.ledger.url = _sqlite_url(cfg.ledger.url, base)
    cfg.output.dir = base / cfg.output.dir.expanduser()
    if cfg.web.token_file is not None:
        cfg.web.token_file = base / cfg.web.token_file.expanduser()
    for prov in cfg.providers.values():
        for key in SECRET_KEYS:
            if (path := getattr(prov, f"{key}_file")) is not None:
                setattr(prov, f"{key}_file", _secret_file(path, base))
    for p in cfg.pipelines:
        model = getattr(kinds.get(p.kind), "params_model", None)
        source = p.params.get("source")
        if isinstance(model, type) and issubclass(model, FileImportParams):
            if isinstance(source, str) and source.strip():
                p.params["source"] = str(base / os.path.expanduser(source))


class _Locator:
    """Maps a validation error location to a line of the TOML text (best effort, never wrong
    about the file)."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def _section_lines(self, header: re.Pattern[str], index: int = 0) -> tuple[int, int] | None:
        starts = [i for i, line in enumerate(self.lines) if header.match(line.strip())]
        if index >= len(starts):
            return None
        start = starts[index]
        end = next(
            (
                j
                for j in range(start + 1, len(self.lines))
                if self.lines[j].lstrip().startswith("[")
            ),
            len(self.lines),
        )
        return start, end

    def _key_line(self, span: tuple[int, int], keys: list[str]) -> int:
        for key in reversed(keys):
            pat = re.compile(rf"(^|[\s{{,]){re.escape(key)}\s*=")
            for i in range(span[0], span[1]):
                if pat.search(self.lines[i]):
                    return i + 1
        return span[0] + 1

    def line(self, loc: tuple[Any, ...]) -> int:
        if not loc:
            return 1
        top = loc[0]
        span: tuple[int, int] | None = None
        keys = [str(k) for k in loc[1:] if isinstance(k, str)]
        if top == "pipelines" and len(loc) > 1 and isinstance(loc[1], int):
            span = self._section_lines(re.compile(r"^\[\[\s*pipelines\s*\]\]"), loc[1])
            keys = [str(k) for k in loc[2:] if isinstance(k, str)]
        elif top == "providers" and len(loc) > 1:
            span = self._section_lines(
                re.compile(rf"^\[\s*providers\.{re.escape(str(loc[1]))}\s*\]")
            )
            keys = [str(k) for k in loc[2:] if isinstance(k, str)]
        elif isinstance(top, str) and len(loc) > 1 and isinstance(loc[1], int):  # [[notify]]
            span = self._section_lines(re.compile(rf"^\[\[\s*{re.escape(top)}\s*\]\]"), loc[1])
            keys = [str(k) for k in loc[2:] if isinstance(k, str)]
        elif isinstance(top, str):
            span = self._section_lines(re.compile(rf"^\[\s*{re.escape(top)}\s*\]"))
        if span is None:
            return 1
        return self._key_line(span, keys)


def _describe(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    if loc and loc[0] == "pipelines" and len(loc) > 1 and isinstance(loc[1], int):
        pipes = raw.get("pipelines") or []
        entry = pipes[loc[1]] if isinstance(pipes, list) and loc[1] < len(pipes) else None
        name = entry.get("name", f"#{loc[1] + 1}") if isinstance(entry, dict) else f"#{loc[1] + 1}"
        rest = ".".join(str(x) for x in loc[2:])
        return f"pipeline {name!r}" + (f": {rest}" if rest else "")
    if loc and loc[0] == "providers" and len(loc) > 1:
        rest = ".".join(str(x) for x in loc[2:])
        return f"provider {loc[1]!r}" + (f": {rest}" if rest else "")
    if loc and loc[0] == "notify" and len(loc) > 1 and isinstance(loc[1], int):
        rest = ".".join(str(x) for x in loc[2:])
        return f"[[notify]] #{loc[1] + 1}" + (f": {rest}" if rest else "")
    return ".".join(str(x) for x in loc) or "config"


MAX_DEPTH = 32  # tables and arrays within each other; a real config needs about 5


def _read_text(src: Path) -> str:
    try:
        raw = src.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{src}: cannot read config file: {exc.strerror}"]) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{src}:{line}: not UTF-8 (byte {raw[exc.start]:#04x})"]) from None


def _parse_toml(src: Path, text: str) -> dict[str, Any]:
    """The TOML document, or a ConfigError: a syntax error, or nesting deeper than MAX_DEPTH
    (tomllib recurses once per level, so a deep enough file would exhaust the stack)."""
    deep = _too_deep_line(text)
    if deep is not None:
        raise ConfigError([f"{src}:{deep}: nested more than {MAX_DEPTH} levels deep"])
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError([f"{src}:{m.group(1) if m else 1}: TOML syntax error: {exc}"]) from None
    except RecursionError:  # nesting the scan below did not see (it ignores quoting rules)
        raise ConfigError([f"{src}:1: nested too deeply"]) from None
    if _depth(doc) > MAX_DEPTH:  # dotted keys (a.b.c… = 1) nest without any bracket
        dots = next(
            (i for i, ln in enumerate(text.splitlines(), 1) if ln.count(".") > MAX_DEPTH), 1
        )
        raise ConfigError([f"{src}:{dots}: nested more than {MAX_DEPTH} levels deep"])
    return doc


def _depth(value: Any) -> int:
    """How deep tables and arrays nest in a parsed document (iterative: no recursion)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:
            stack.extend((child, level + 1) for child in children)
    return deepest


def _too_deep_line(text: str) -> int | None:
    """The line where brackets and braces outside strings and comments first nest deeper than
    MAX_DEPTH (or a key has more than MAX_DEPTH dots), or None. A cheap scan: good enough to
    refuse a bomb before the parser sees it; the parser still judges everything else."""
    depth = dots = 0
    line = 1
    quote = ""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            dots = 0
            if quote in ('"', "'"):
                quote = ""  # single-line strings end at the line (the parser reports it)
        elif quote:
            if c == "\\" and quote in ('"', '"""'):
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            i += len(quote) - 1
        elif c == ".":  # a dotted key a.b.c… nests a table per dot (and parses in n² time)
            dots += 1
            if dots > MAX_DEPTH:
                return line
        elif c in "[{":
            depth += 1
            dots = 0
            if depth > MAX_DEPTH:
                return line
        elif c in "]}":
            depth = max(0, depth - 1)
            dots = 0
        elif c in "=,":
            dots = 0
        i += 1
    return None


def load_config(path: str | os.PathLike[str] | None = None, *, secrets: bool = True) -> Config:
    """Read, expand and validate the config file; raise ConfigError with every problem found.

    `secrets=False` is for commands that never talk to a provider (jobs, quota --offline,
    db upgrade, healthcheck): an unset ${VAR} in a secret key or an unreadable `*_file` is then
    not their problem (an admin shell has neither the daemon's environment nor systemd's
    $CREDENTIALS_DIRECTORY)."""
    from orchestrator.providers import KINDS  # registry import: providers import config types

    src = resolve_path(path)
    text = _read_text(src)
    raw = _parse_toml(src, text)
    locator = _Locator(text)
    problems: list[str] = []

    def report(loc: tuple[Any, ...], msg: str) -> None:
        problems.append(f"{src}:{locator.line(loc)}: {_describe(loc, raw)}: {msg}")

    providers = raw.get("providers")
    for name, prov in providers.items() if isinstance(providers, dict) else ():
        if isinstance(prov, dict):
            for key, value in list(prov.items()):
                missing: list[str] = []
                prov[key] = _expand_env(value, missing)
                if key in SECRET_KEYS and not secrets:
                    continue
                for var in missing:
                    report(("providers", name, key), f"environment variable ${{{var}}} is not set")
            prov["name"] = name
    for i, target in enumerate(raw.get("notify") or []):
        if isinstance(target, dict) and isinstance(target.get("url"), str):
            missing = []
            target["url"] = _expand_env(target["url"], missing)
            for var in missing if secrets else []:
                report(("notify", i, "url"), f"environment variable ${{{var}}} is not set")
            if missing and not secrets:  # read-only commands send nothing: any valid URL does
                target["url"] = "https://unset.invalid/"
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            report(loc, err["msg"].removeprefix("Value error, ") + _did_you_mean(err))
        _check_pipelines_alone(raw, KINDS, report)  # the other sections' problems too, at once
        raise ConfigError(problems) from None
    cfg.source = src
    cfg._locator = locator
    _resolve_paths(cfg, KINDS)
    _check_semantics(cfg, raw, KINDS, report)
    if secrets:
        _load_secrets(cfg, report)
        _check_token(cfg, report)
    if problems:
        raise ConfigError(problems)
    return cfg


def _load_secrets(cfg: Config, report: Any) -> None:
    """Open every secret file, as the daemon will (as its user, with its permissions)."""
    for name, prov in cfg.providers.items():
        for key in SECRET_KEYS:
            path = getattr(prov, f"{key}_file")
            if path is None:
                continue
            try:
                value = read_secret_file(path)
            except (OSError, UnicodeDecodeError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                report(("providers", name, f"{key}_file"), f"cannot read {path}: {why}")
                continue
            if not value:
                report(("providers", name, f"{key}_file"), f"{path} is empty")
                continue
            setattr(prov, key, SecretStr(value))


def _check_semantics(cfg: Config, raw: dict[str, Any], kinds: dict[str, Any], report: Any) -> None:
    seen: set[str] = set()
    for i, p in enumerate(cfg.pipelines):
        if p.name in seen:
            report(("pipelines", i, "name"), f"duplicate pipeline name {p.name!r}")
        seen.add(p.name)
        if p.kind not in kinds:
            report(
                ("pipelines", i, "kind"),
                f"unknown kind {p.kind!r}; known: {', '.join(sorted(kinds))}",
            )
            continue
        _check_account(cfg, p, kinds[p.kind].provider, i, report)
        validate_params(p, kinds[p.kind].params_model, i, report)
    for i, target in enumerate(cfg.notify):
        for name in target.pipelines or []:
            if name not in seen:
                report(("notify", i, "pipelines"), f"no pipeline {name!r}")
    for name, prov in cfg.providers.items():
        _check_provider(name, prov, report)


def _check_account(cfg: Config, p: PipelineConfig, wanted: str, index: int, report: Any) -> None:
    """The pipeline's account (`account`, else the kind's provider name) is configured and of
    the kind's provider."""
    key = "account" if p.account is not None else "kind"
    account = p.provider
    if account not in cfg.providers:
        hint = f' with type = "{wanted}"' if p.account is not None else ""
        report(
            ("pipelines", index, key),
            f"needs a [providers.{account}] section{hint} (base_url, api_key)",
        )
        return
    have = cfg.account_type(account)
    if have is not None and have != wanted:  # None: reported at the provider section
        report(
            ("pipelines", index, key),
            f"account {account!r} is a {have} account; kind {p.kind!r} needs a {wanted} account",
        )


def _check_provider(name: str, prov: ProviderConfig, report: Any) -> None:
    if not ACCOUNT_NAME.match(name):
        report(
            ("providers", name),
            "an account name is 1 to 64 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit",
        )
    kind = prov.provider_type
    if kind is None and prov.type is None:  # an unknown `type` is reported by its validator
        report(
            ("providers", name, "type"),
            f'cannot tell which provider this account is of: set type = "<provider>" (one '
            f"of {', '.join(PROVIDER_TYPES)}) or name it <provider>-<suffix>, like clari-emea",
        )
    secret_set = prov.api_secret is not None or prov.api_secret_file is not None
    if kind == "claravine" and not secret_set:
        report(
            ("providers", name, "api_secret"),
            "Claravine needs an API key and an API secret: set api_secret (or api_secret_file)",
        )


def _check_token(cfg: Config, report: Any) -> None:
    if cfg.web.token_file is None:
        return
    try:
        if not cfg.web.token():
            report(("web", "token_file"), f"{cfg.web.token_file} is empty")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or "not UTF-8"
        report(("web", "token_file"), f"{cfg.web.token_file}: cannot read: {why}")


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or localhost: an address that never leaves the machine."""
    if not host:
        return False
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def https_or_loopback(url: str) -> bool:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # a malformed [IPv6] part
        return False
    scheme = parts.scheme.lower()
    return scheme == "https" or (scheme == "http" and is_loopback(host))


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config model a validation error location points into (Config, DaemonConfig, ...)."""
    model: type[BaseModel] = Config
    for part in loc:
        if not isinstance(part, str):
            continue  # a list index
        field = model.model_fields.get(part)
        if field is None:
            if model is Config:
                return None
            continue  # a dict key: [providers.<name>]
        inner = _inner_model(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(err: Any) -> str:
    """For an unknown key, the nearest known key of its section: '; did you mean 'schedule'?'"""
    if err.get("type") != "extra_forbidden" or not err["loc"]:
        return ""
    model = _model_at(tuple(err["loc"])[:-1])
    if model is None:
        return ""
    known = [f for f in model.model_fields if f not in ("name", "source")]
    close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_pipelines_alone(raw: dict[str, Any], kinds: dict[str, Any], report: Any) -> None:
    """When the file as a whole does not validate, still check each pipeline that does on its
    own (unknown kind, bad params), so one run shows every section's problems."""
    pipes = raw.get("pipelines")
    for i, entry in enumerate(pipes if isinstance(pipes, list) else []):
        try:
            p = PipelineConfig.model_validate(entry)
        except ValidationError:
            continue  # already reported
        if p.kind not in kinds:
            report(
                ("pipelines", i, "kind"),
                f"unknown kind {p.kind!r}; known: {', '.join(sorted(kinds))}",
            )
        else:
            validate_params(p, kinds[p.kind].params_model, i, report)


def validate_params(p: PipelineConfig, model: type[BaseModel], index: int, report: Any) -> None:
    try:
        rendered = render(p.params, datetime.now(UTC))
    except TemplateError as exc:
        report(("pipelines", index, "params"), str(exc))
        return
    try:
        model.model_validate(rendered)
    except ValidationError as exc:
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            report(("pipelines", index, "params", *err["loc"]), msg)
