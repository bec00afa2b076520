"""Typed configuration: defaults, then ``reelrec.toml``, then ``REELREC_*`` variables, then flags.

Nested sections use a double underscore in the environment, e.g.
``REELREC_SIGNALS__COMPLETE=5`` or ``REELREC_DATA_DIR=/var/reelrec``. A wrong type or an out-of-range
value is an error at load time (``pydantic.ValidationError`` turned into ``InvalidInput``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from reelrec.compose.config import ComposeConfig
from reelrec.errors import FieldError, InvalidInput


class SignalWeights(BaseModel):
    """How one user's events on one title fold into a signed confidence weight.

    See ``reelrec.domain.signals`` for the rules; every number here is documented in
    docs/signals.md and overridable in ``[signals]`` of reelrec.toml.
    """

    complete_threshold: float = Field(0.9, gt=0, le=1, description="completion fraction that counts as finished")
    complete: float = Field(4.0, ge=0, description="a finished title: strong positive")
    partial: float = Field(1.5, ge=0, description="scaled by the completion fraction for unfinished plays")
    play_start: float = Field(0.25, ge=0, description="a play that reported no progress")
    dropoff_seconds: float = Field(1200.0, ge=0, description="a movie abandoned before this many seconds")
    dropoff_series_fraction: float = Field(0.25, ge=0, le=1, description="an episode abandoned under this fraction")
    dropoff: float = Field(-1.5, le=0, description="weight of an early drop-off")
    rewatch: float = Field(3.0, ge=0, description="each play after a completion")
    rewatch_cap: int = Field(3, ge=0, description="rewatches counted at most")
    episode_bonus: float = Field(0.5, ge=0, description="each completed series episode past the first")
    episode_bonus_cap: int = Field(4, ge=0, description="episodes counted for the bonus at most")
    thumbs_up: float = Field(3.0, ge=0)
    thumbs_down: float = Field(-5.0, le=0)
    watchlist_only: float = Field(0.5, ge=0, description="watchlist add with no playback: weak positive")
    skip_familiarity: float = Field(0.3, ge=0, description="each skip intro / recap on a series")
    skip_cap: float = Field(1.0, ge=0)
    rating_scale: float = Field(1.0, ge=0, description="imported ratings: weight = rating_scale * rating")
    rating_negative_below: float = Field(0.0, ge=0, le=5,
                                         description="ratings strictly below this are negatives (0 = never)")
    rating_negative: float = Field(-1.0, le=0)


class Settings(BaseSettings):
    """Everything that configures reelrec. ``data_dir`` holds lake, catalog and models by default."""

    model_config = SettingsConfigDict(
        env_prefix="REELREC_",
        env_nested_delimiter="__",
        toml_file="reelrec.toml",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(Path("./reelrec-data"), description="where lake, catalog and models live")
    lake_url: str | None = Field(None, description="behavioural lake; default file://<data_dir>/lake")
    future_tolerance_s: float = Field(300.0, ge=0, description="events further in the future are rejected")
    signals: SignalWeights = Field(default_factory=SignalWeights)
    compose: ComposeConfig = Field(default_factory=ComposeConfig)

    # serving
    host: str = Field("127.0.0.1", description="address the API binds; loopback unless told otherwise")
    port: int = Field(8000, gt=0, lt=65536)
    api_keys: str | None = Field(None, description="'key:scope+scope,key2:scope' with scopes read, "
                                                   "write, admin; unset: no authentication")
    cors_origins: list[str] = Field(default_factory=list, description="CORS is off unless origins are set")
    max_body_bytes: int = Field(1_000_000, gt=0, description="larger request bodies get 413")
    max_batch: int = Field(1000, gt=0, le=100_000, description="events per POST /v1/events")
    bus_url: str = Field("memory://", description="event bus: memory:// or kafka://host:port")
    publish_timeout_s: float = Field(5.0, gt=0, le=300,
                                     description="longest wait for the bus to make events durable "
                                                 "before POST /v1/events answers 503 (kafka:// "
                                                 "?timeout_s= in bus_url overrides it)")
    cache_url: str = Field("memory://", description="homepage cache: memory://[/snapshot] or redis://")
    state_url: str = Field("memory://", description="online state: memory:// or redis://")
    retrain_interval_s: float = Field(86_400.0, ge=0,
                                      description="embedded `reelrec serve` retrains, precomputes and "
                                                  "publishes this long after the published model "
                                                  "was created (0 = never; at scale run `reelrec "
                                                  "train && reelrec precompute` from a scheduler)")
    retrain_tune: bool = Field(True, description="scheduled retrains grid-search ALS and EASE")
    keep_model_versions: int = Field(7, ge=1, description="model versions a retrain job keeps "
                                                          "on disk (the published one always stays)")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = os.environ.get("REELREC_CONFIG", "reelrec.toml")
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_path))

    @property
    def lake(self) -> str:
        return self.lake_url or (self.data_dir.resolve() / "lake").as_uri()

    @property
    def cache(self) -> str:
        """The homepage cache URL; plain ``memory://`` becomes a memory cache snapshotted in the data
        directory, so pages one command precomputes are there for the next (embedded mode)."""
        if self.cache_url != "memory://":
            return self.cache_url
        return f"memory://{(self.data_dir.resolve() / 'cache' / 'pages.arrow').as_posix()}"

    @property
    def catalog_dir(self) -> Path:
        return self.data_dir / "catalog"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


def load_settings(**overrides: Any) -> Settings:
    """Load settings; ``overrides`` (from CLI flags) win over every other source.

    Raises:
        InvalidInput: a value has the wrong type or is out of range; each error names its field.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise InvalidInput([
            FieldError(".".join(str(p) for p in err["loc"]) or "settings", err["msg"])
            for err in exc.errors()
        ]) from None
