"""The TOML config file as pydantic models: validation, secret resolution, error locations.

Every problem is reported as `file:line: message` naming the pipeline or provider and the field,
never as a traceback.
"""

from __future__ import annotations

import difflib
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
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator.errors import ConfigError
from orchestrator.schedule import parse_schedule
from orchestrator.templating import TemplateError, render

DEFAULT_PATH = "orchestrator.toml"
ENV_VAR = "ORCHESTRATOR_CONFIG"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*(ms|s|m|h|d))+\s*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | float | int) -> float:
    """'90s', '15m', '1h30m', '250ms' or a number of seconds → seconds."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if not _DURATION.match(value):
        raise ValueError(f"{value!r} is not a duration like '30s', '15m', '2h' or '1h30m'")
    return sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(value))


Duration = Annotated[float, Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LedgerConfig(_Model):
    url: str = "sqlite+aiosqlite:///./orchestrator.db"


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


class ProviderConfig(_Model):
    name: str = ""
    base_url: str
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    api_secret: SecretStr | None = None
    partner_key: SecretStr | None = None
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
    limits_refresh: Duration = 60.0
    poll: PollConfig = PollConfig()

    @field_validator("timeout", "retry_base", "limits_refresh", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"{v!r} is not an http(s) URL")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _key_source(self) -> ProviderConfig:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError("set api_key or api_key_file, not both")
        if self.api_key is None and self.api_key_file is None:
            raise ValueError("api_key (or api_key_file) is required")
        return self

    def secret(self) -> str:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        assert self.api_key_file is not None
        return self.api_key_file.read_text(encoding="utf-8").strip()

    def secrets(self) -> list[str]:
        out = [self.secret()]
        out += [s.get_secret_value() for s in (self.api_secret, self.partner_key) if s is not None]
        return [s for s in out if s]


class PipelineConfig(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    kind: str
    schedule: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    missed_runs: Literal["skip", "catch_up", "all"] = "skip"
    max_catch_up: int = Field(default=10, ge=1)  # missed_runs = "all": the newest N missed fires
    max_attempts: int = Field(default=3, ge=1)
    deadline: Duration | None = None  # cancel the remote job (PATCH) if not done by then
    account: str | None = None  # provider account name; defaults to the kind's provider
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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"  # `run -v`: DEBUG

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("drain_timeout", "claim_interval", "retry_base", "retry_cap", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float:
        return parse_duration(v)


class WebConfig(_Model):
    """The status server of `orchestrator run` (not of --once / --exit-when-idle batch runs)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)  # 0: any free port (tests)


class RetentionConfig(_Model):
    """`[retention]`: how long results and ledger rows are kept (None: forever). `orchestrator
    prune` and the daemon's daily run apply it (retention.py)."""

    results: Duration | None = None  # result files (and their ledger rows) older than this
    jobs: Duration | None = None  # finished jobs, their transitions and parts, older than this

    @field_validator("results", "jobs", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> float | None:
        return None if v is None else parse_duration(v)


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

    def pipeline(self, name: str) -> PipelineConfig:
        for p in self.pipelines:
            if p.name == name:
                return p
        raise KeyError(name)

    def secrets(self) -> list[str]:
        return [s for p in self.providers.values() for s in p.secrets()]


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


def _credentials_dir_file(path: Path) -> Path:
    """A relative api_key_file is looked up in systemd's $CREDENTIALS_DIRECTORY when set."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds and not path.is_absolute():
        return Path(creds) / path
    return path


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
        name = pipes[loc[1]].get("name", f"#{loc[1] + 1}") if loc[1] < len(pipes) else "?"
        rest = ".".join(str(x) for x in loc[2:])
        return f"pipeline {name!r}" + (f": {rest}" if rest else "")
    if loc and loc[0] == "providers" and len(loc) > 1:
        rest = ".".join(str(x) for x in loc[2:])
        return f"provider {loc[1]!r}" + (f": {rest}" if rest else "")
    if loc and loc[0] == "notify" and len(loc) > 1 and isinstance(loc[1], int):
        rest = ".".join(str(x) for x in loc[2:])
        return f"[[notify]] #{loc[1] + 1}" + (f": {rest}" if rest else "")
    return ".".join(str(x) for x in loc) or "config"


def load_config(
    path: str | os.PathLike[str] | None = None, *, check_files: bool = True, secrets: bool = True
) -> Config:
    """Read, expand and validate the config file; raise ConfigError with every problem found.
    `secrets=False` (read-only commands such as `pipelines`): an unset ${VAR} in a provider
    section is not a problem, it expands to an empty string that is never sent anywhere."""
    from orchestrator.providers import KINDS  # registry import: providers import config types

    src = resolve_path(path)
    try:
        text = src.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{src}: cannot read config file: {exc.strerror}"]) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise ConfigError([f"{src}:{m.group(1) if m else 1}: TOML syntax error: {exc}"]) from None
    locator = _Locator(text)
    problems: list[str] = []

    def report(loc: tuple[Any, ...], msg: str) -> None:
        problems.append(f"{src}:{locator.line(loc)}: {_describe(loc, raw)}: {msg}")

    for name, prov in (raw.get("providers") or {}).items():
        if isinstance(prov, dict):
            missing: list[str] = []
            prov.update(_expand_env(prov, missing))
            for var in missing if secrets else []:
                report(
                    ("providers", name, "api_key"), f"environment variable ${{{var}}} is not set"
                )
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
            report(loc, err["msg"] + _did_you_mean(err))
        _check_pipelines_alone(raw, KINDS, report)  # the other sections' problems too, at once
        raise ConfigError(problems) from None
    cfg.source = src
    _check_semantics(cfg, raw, KINDS, report, check_files=check_files and secrets)
    if problems:
        raise ConfigError(problems)
    return cfg


def _check_semantics(
    cfg: Config, raw: dict[str, Any], kinds: dict[str, Any], report: Any, *, check_files: bool
) -> None:
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
        if p.provider not in cfg.providers:
            report(
                ("pipelines", i, "kind"),
                f"needs a [providers.{p.provider}] section (base_url, api_key)",
            )
        validate_params(p, kinds[p.kind].params_model, i, report)
    for i, target in enumerate(cfg.notify):
        for name in target.pipelines or []:
            if name not in seen:
                report(("notify", i, "pipelines"), f"no pipeline {name!r}")
    for name, prov in cfg.providers.items():
        if name.split("-", 1)[0] == "claravine" and prov.api_secret is None:
            report(
                ("providers", name, "api_secret"),
                "Claravine needs an API key and an API secret: set api_secret",
            )
        if name.split("-", 1)[0] == "clayva" and not _https_or_loopback(prov.base_url):
            report(
                ("providers", name, "base_url"),
                "Clayva accepts HTTPS only (plain http is allowed for a loopback simulator)",
            )
        if check_files and prov.api_key_file is not None:
            prov.api_key_file = _credentials_dir_file(prov.api_key_file)
            if not prov.api_key_file.is_file():
                report(("providers", name, "api_key_file"), f"{prov.api_key_file} is not readable")


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


def _https_or_loopback(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" or parts.hostname in ("127.0.0.1", "localhost", "::1")


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
            report(("pipelines", index, "params", *err["loc"]), err["msg"])
