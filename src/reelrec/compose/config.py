"""Every number the composition layer uses, with bounds (docs/composition.md explains each).

``ComposeConfig`` is a pydantic model so it survives a JSON round trip and can become the
``[compose]`` section of reelrec.toml; a wrong type or an out-of-range value is an error at
construction time.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ComposeConfig(BaseModel):
    """Rules of the homepage: the top 20, the shelves, cold start."""

    model_config = {"extra": "forbid", "frozen": True}

    # --- top picks ----------------------------------------------------------------------
    page_size: int = Field(20, ge=1, le=64, description="items in Top picks for you")
    genre_cap: int = Field(5, ge=1, le=64, description="most items of one genre in the top page_size")
    kind_floor: float = Field(0.15, ge=0.0, le=1 / 3, description="least share of every kind")
    kind_smoothing: float = Field(2.0, ge=0.0, description="pseudo-titles of a uniform kind prior")
    novel_slots: int = Field(2, ge=0, le=16, description="slots for titles never shown to the user")
    explore_share: float = Field(0.15, ge=0.0, le=0.5, description="share of explore slots")
    dominant_genres: int = Field(3, ge=0, le=16,
                                 description="the user's top genres; explore titles avoid them all")
    explore_pool: int = Field(12, ge=0, le=200,
                              description="popular titles per sampled cluster added to the explore pool")
    backfill_per_kind: int = Field(30, ge=0, le=500,
                                   description="popular titles per kind added when the ranked pool lacks a kind")
    exact_time_limit_s: float = Field(2.0, gt=0,
                                      description="time limit of the exact solver used when greedy falls short")
    # --- shelves --------------------------------------------------------------------------
    shelf_length: int = Field(10, ge=1, le=64, description="items in every other shelf")
    continue_length: int = Field(10, ge=1, le=64)
    because_rows: int = Field(2, ge=0, le=8, description="'Because you watched X' rows")
    genre_rows: int = Field(2, ge=0, le=8, description="'Thrillers for you' rows")
    kind_row: bool = Field(True, description="a row for the user's least-watched kind")
    new_release_days: int = Field(90, ge=1, description="titles added within this many days are new")
    # --- cold start -------------------------------------------------------------------------
    personal_after: int = Field(5, ge=1, description="engaged titles at which the page is fully personal")
    onboarding_min: int = Field(3, ge=0, le=16)
    onboarding_max: int = Field(5, ge=0, le=16)
    cold_pool: int = Field(300, ge=20, le=5000, description="cold-start candidates per segment")
    cold_draws: int = Field(64, ge=0, le=65536,
                            description="explore draws shared by precomputed cold-start pages of one segment "
                                        "and onboarding picks, each user hashed to one (0: a draw per user)")

    @property
    def genre_share(self) -> float:
        return self.genre_cap / self.page_size

    def explore_slots(self, n: int) -> int:
        """Explore slots on a top-picks page of ``n`` items (3 of 20 by default)."""
        return int(round(self.explore_share * n))

    def novel_slots_for(self, n: int) -> int:
        """Novel slots on a page of ``n`` items: ``novel_slots`` scaled from ``page_size``."""
        return int(round(self.novel_slots * n / self.page_size))

    def genre_cap_for(self, n: int) -> int:
        """The cap scaled to a shelf of ``n`` items (5 of 20 -> 3 of 10)."""
        return max(1, -(-self.genre_cap * n // self.page_size))
