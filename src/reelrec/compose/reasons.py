"""Reasons a person can read, kept as a small code plus one integer argument.

A page stores ``(code, arg)`` per item (and per shelf); the words are produced only when the page
is assembled, from the catalog arrays. ``arg`` is a genre index, a title index (the anchor of
"Because you watched X"), a rank, a kind, or -1 when the reason takes none. The region comes from
the page.
"""

from __future__ import annotations

from reelrec.compose.features import CatalogFeatures, display_genre

AFFINITY = 0  # arg: genre       "Because you like Thrillers"
BECAUSE = 1  # arg: title        "Because you watched Narcos"
TRENDING = 2  # region            "Trending in India"
NEW_RELEASE = 3  #               "New release"
POPULAR = 4  # region             "Popular in India"
EXPLORE = 5  # arg: genre         "New for you: exploring K-drama"
NOVEL = 6  # arg: genre           "Something new in Crime"
ONBOARDING = 7  # arg: genre      "Because you picked Comedy"
CONTINUE = 8  #                   "Continue watching"
TOP10 = 9  # arg: rank, region    "#3 in India today"
TOP10_GLOBAL = 10  # arg: rank    "#3 worldwide today"
KIND = 11  # arg: kind            "Documentaries for you"
PRIOR = 12  # region              "Popular in India right now" (device / time-of-day prior)
N_CODES = 13

# Codes whose argument is a genre index / a title index.
GENRE_ARG = frozenset({AFFINITY, EXPLORE, NOVEL, ONBOARDING})
TITLE_ARG = frozenset({BECAUSE})

REGION_NAMES = {
    "AR": "Argentina", "AU": "Australia", "BR": "Brazil", "CA": "Canada", "DE": "Germany",
    "ES": "Spain", "FR": "France", "GB": "the United Kingdom", "ID": "Indonesia", "IN": "India",
    "IT": "Italy", "JP": "Japan", "KR": "South Korea", "MX": "Mexico", "NG": "Nigeria",
    "NL": "the Netherlands", "PL": "Poland", "SE": "Sweden", "TR": "Turkey", "UK": "the United Kingdom",
    "US": "the United States", "ZA": "South Africa",
}
KIND_PLURAL = ("Movies", "Series", "Documentaries")
_PLURAL = {"thriller": "Thrillers", "comedy": "Comedies", "drama": "Dramas", "western": "Westerns",
           "musical": "Musicals", "documentary": "Documentaries", "k-drama": "K-dramas",
           "mystery": "Mysteries", "war": "War films", "biography": "Biographies", "short": "Shorts"}


def region_name(region: str | None) -> str | None:
    return None if region is None else REGION_NAMES.get(region.upper(), region.upper())


def genre_row_title(name: str) -> str:
    """'thriller' -> 'Thrillers for you', 'crime' -> 'Crime for you'."""
    return f"{_PLURAL.get(name.lower(), display_genre(name))} for you"


def render(code: int, arg: int, features: CatalogFeatures, region: str | None) -> str:
    """The words of one reason."""
    where = region_name(region)
    g = display_genre(features.genre_names[arg]) if code in GENRE_ARG and 0 <= arg < features.n_genres else None
    if code == AFFINITY:
        return f"Because you like {g}" if g else "Picked for you"
    if code == BECAUSE:
        return f"Because you watched {features.names[arg]}" if 0 <= arg < len(features) else "Picked for you"
    if code == TRENDING:
        return f"Trending in {where}" if where else "Trending now"
    if code == NEW_RELEASE:
        return "New release"
    if code == POPULAR:
        return f"Popular in {where}" if where else "Popular on reelrec"
    if code == EXPLORE:
        return f"New for you: exploring {g}" if g else "New for you"
    if code == NOVEL:
        return f"Something new in {g}" if g else "Something new for you"
    if code == ONBOARDING:
        return f"Because you picked {g}" if g else "Picked for you"
    if code == CONTINUE:
        return "Continue watching"
    if code == TOP10:
        return f"#{arg} in {where} today" if where else f"#{arg} today"
    if code == TOP10_GLOBAL:
        return f"#{arg} worldwide today"
    if code == KIND:
        return f"{KIND_PLURAL[arg]} for you" if 0 <= arg < 3 else "Picked for you"
    if code == PRIOR:
        return f"Popular in {where} right now" if where else "Popular right now"
    return "Picked for you"
