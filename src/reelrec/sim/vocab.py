"""The fixed vocabulary of the synthetic world: genres and how they co-occur, regions with their
languages, time zones and device mixes, daily device rhythms, and the words titles are named from.

Everything here is data; ``catalog.py``, ``population.py`` and ``sessions.py`` turn it into
arrays. Genre indices are positions in ``GENRES`` and are stable across runs, so saved ground
truth (``<data>/sim/truth.npz``) can be read back against this module.
"""

from __future__ import annotations

import numpy as np

from reelrec.domain.users import utc_offset_h

KINDS = ("movie", "series", "documentary")
MOVIE, SERIES, DOC = 0, 1, 2
KIND_SHARES = (0.6, 0.3, 0.1)

# fiction genres, then the regional ones, then documentary genres (documentaries use only these)
FICTION = ("action", "adventure", "comedy", "drama", "thriller", "crime", "romance", "horror",
           "sci-fi", "fantasy", "mystery", "animation", "family", "war", "western", "musical")
REGIONAL = ("bollywood", "k-drama", "anime", "telenovela")
DOCUMENTARY = ("nature", "true crime", "history", "science", "sports", "biography", "music",
               "travel")
GENRES = FICTION + REGIONAL + DOCUMENTARY
G = len(GENRES)
GI = {g: i for i, g in enumerate(GENRES)}
FICTION_MASK = np.array([g not in DOCUMENTARY for g in GENRES])
DOC_MASK = ~FICTION_MASK
REGIONAL_MASK = np.array([g in REGIONAL for g in GENRES])

# how often a genre leads a title (fiction and documentaries separately)
PRIMARY_WEIGHT = {
    "drama": 14, "comedy": 13, "action": 10, "thriller": 9, "crime": 7, "romance": 7,
    "horror": 5, "sci-fi": 5, "adventure": 5, "animation": 5, "fantasy": 4, "mystery": 4,
    "family": 4, "war": 1.5, "western": 1, "musical": 1,
    "nature": 20, "true crime": 18, "history": 16, "science": 12, "sports": 10, "biography": 10,
    "music": 7, "travel": 7,
}

# genre pairs that share titles; anything else co-occurs rarely (BASE_COOCCURRENCE)
COOCCURRENCE = {
    ("action", "adventure"): 1.0, ("action", "thriller"): 1.0, ("action", "sci-fi"): 0.8,
    ("action", "crime"): 0.7, ("action", "comedy"): 0.4, ("action", "war"): 0.5,
    ("action", "western"): 0.4, ("crime", "thriller"): 1.0, ("crime", "drama"): 0.9,
    ("mystery", "thriller"): 0.9, ("mystery", "crime"): 0.7, ("mystery", "horror"): 0.6,
    ("romance", "comedy"): 1.0, ("romance", "drama"): 1.0, ("horror", "thriller"): 0.9,
    ("sci-fi", "adventure"): 0.8, ("sci-fi", "thriller"): 0.5, ("fantasy", "adventure"): 1.0,
    ("animation", "family"): 1.0, ("family", "comedy"): 0.8, ("animation", "comedy"): 0.7,
    ("animation", "fantasy"): 0.6, ("animation", "adventure"): 0.6, ("war", "drama"): 0.9,
    ("western", "drama"): 0.5, ("musical", "romance"): 0.6, ("musical", "comedy"): 0.5,
    ("musical", "family"): 0.4, ("drama", "comedy"): 0.4, ("fantasy", "family"): 0.4,
    ("bollywood", "romance"): 1.0, ("bollywood", "drama"): 1.0, ("bollywood", "musical"): 0.9,
    ("bollywood", "comedy"): 0.7, ("bollywood", "action"): 0.7, ("bollywood", "family"): 0.5,
    ("k-drama", "romance"): 1.0, ("k-drama", "drama"): 0.9, ("k-drama", "thriller"): 0.6,
    ("k-drama", "comedy"): 0.6, ("k-drama", "crime"): 0.4, ("k-drama", "fantasy"): 0.3,
    ("anime", "action"): 1.0, ("anime", "fantasy"): 0.9, ("anime", "sci-fi"): 0.8,
    ("anime", "adventure"): 0.8, ("anime", "animation"): 1.5, ("anime", "comedy"): 0.4,
    ("telenovela", "romance"): 1.0, ("telenovela", "drama"): 1.0, ("telenovela", "family"): 0.4,
    ("nature", "science"): 1.0, ("nature", "travel"): 0.8, ("true crime", "history"): 0.4,
    ("history", "biography"): 0.8, ("biography", "music"): 0.8, ("sports", "biography"): 0.8,
    ("science", "history"): 0.5, ("travel", "history"): 0.4, ("music", "history"): 0.3,
}
BASE_COOCCURRENCE = 0.004


def cooccurrence_matrix() -> np.ndarray:
    """Symmetric G x G weights for drawing a title's secondary genres from its primary one."""
    c = np.full((G, G), BASE_COOCCURRENCE)
    for (a, b), w in COOCCURRENCE.items():
        c[GI[a], GI[b]] = c[GI[b], GI[a]] = w
    np.fill_diagonal(c, 0.0)
    # regional genres are assigned by origin, never as a co-genre of an unrelated title
    c[:, REGIONAL_MASK] = 0.0
    return c


# regions: user share, language(s), UTC offset (hours), device mix (tv, mobile, tablet, web)
REGIONS = ("US", "GB", "IN", "KR", "JP", "BR", "DE", "FR", "MX")
R = len(REGIONS)
RI = {r: i for i, r in enumerate(REGIONS)}
REGION_USER_SHARE = np.array([0.28, 0.08, 0.15, 0.07, 0.08, 0.10, 0.08, 0.07, 0.09])
REGION_LANGUAGES = {"US": (("en", 0.85), ("es", 0.15)), "GB": (("en", 1.0),),
                    "IN": (("hi", 0.6), ("en", 0.4)), "KR": (("ko", 1.0),), "JP": (("ja", 1.0),),
                    "BR": (("pt", 1.0),), "DE": (("de", 1.0),), "FR": (("fr", 1.0),),
                    "MX": (("es", 1.0),)}
REGION_ORIGIN_LANGUAGE = {"US": "en", "GB": "en", "IN": "hi", "KR": "ko", "JP": "ja",
                          "BR": "pt", "DE": "de", "FR": "fr", "MX": "es"}
REGION_UTC_OFFSET_H = utc_offset_h(REGIONS)  # the domain's table: the ranker reads local hours the same way
DEVICE_MIX = np.array([  # tv, mobile, tablet, web
    [0.42, 0.33, 0.10, 0.15],  # US
    [0.40, 0.35, 0.10, 0.15],  # GB
    [0.15, 0.70, 0.05, 0.10],  # IN
    [0.30, 0.50, 0.08, 0.12],  # KR
    [0.30, 0.45, 0.10, 0.15],  # JP
    [0.30, 0.50, 0.07, 0.13],  # BR
    [0.42, 0.30, 0.10, 0.18],  # DE
    [0.40, 0.32, 0.10, 0.18],  # FR
    [0.28, 0.52, 0.07, 0.13],  # MX
])
# where titles come from (movies and series; documentaries lean to US/GB)
ORIGIN_SHARE_FICTION = np.array([0.46, 0.10, 0.10, 0.08, 0.08, 0.04, 0.04, 0.05, 0.05])
ORIGIN_SHARE_DOC = np.array([0.50, 0.25, 0.05, 0.03, 0.04, 0.03, 0.04, 0.04, 0.02])
# a regional genre is much more liked at home
REGIONAL_TASTE_BOOST = {("IN", "bollywood"): 12.0, ("KR", "k-drama"): 12.0, ("JP", "anime"): 10.0,
                        ("MX", "telenovela"): 6.0, ("BR", "telenovela"): 6.0,
                        ("US", "bollywood"): 0.3, ("GB", "bollywood"): 0.5}


def _hours(peaks: dict[tuple[int, int], float], floor: float) -> np.ndarray:
    w = np.full(24, floor)
    for (a, b), v in peaks.items():
        w[a:b] += v
    return w / w.sum()


# local-hour profile of session starts by device (tv, mobile, tablet, web)
HOUR_PROFILE = np.stack([
    _hours({(18, 24): 6.0, (20, 23): 4.0, (12, 14): 1.0, (0, 1): 2.0}, 0.3),  # tv: evenings
    _hours({(6, 10): 5.0, (12, 14): 3.0, (17, 19): 2.0, (21, 24): 4.0}, 0.4),  # mobile: mornings
    _hours({(17, 22): 4.0, (9, 12): 1.0}, 0.4),  # tablet
    _hours({(9, 18): 2.5, (19, 23): 2.0}, 0.4),  # web: daytime
])
# weekday 0 = Monday; weekends watch more
WEEKDAY_FACTOR = np.array([0.92, 0.9, 0.92, 0.95, 1.08, 1.25, 1.2])

MATURITY_MOVIE = ("G", "PG", "PG-13", "R")
MATURITY_SERIES = ("TV-Y", "TV-G", "TV-PG", "TV-14", "TV-MA")

# words titles are named from, by theme
_A = "adj"
_N = "noun"
NAME_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "action": {_A: ("Iron", "Burning", "Silent", "Broken", "Savage", "Final", "Rogue", "Steel",
                    "Crimson", "Deadly", "Hidden", "Last"),
               _N: ("Strike", "Protocol", "Frontier", "Vendetta", "Outpost", "Mission", "Code",
                    "Target", "Storm", "Line", "Run", "Empire", "Reckoning", "Siege")},
    "light": {_A: ("Happy", "Little", "Crazy", "Sweet", "Lucky", "Perfect", "Summer", "Funny",
                   "Wild", "Golden", "Big", "Secret"),
              _N: ("Wedding", "Weekend", "Neighbours", "Holiday", "Surprise", "Family", "Plan",
                   "Kiss", "Adventure", "Club", "Life", "Party", "Friends", "Bakery")},
    "dark": {_A: ("Dark", "Cursed", "Hollow", "Forgotten", "Pale", "Whispering", "Black",
                  "Haunted", "Cold", "Bitter", "Shadow", "Lost"),
             _N: ("House", "Woods", "Silence", "Night", "Asylum", "Ritual", "Echo", "Harbor",
                  "Grave", "Door", "Room", "Signal", "Lake", "Witness")},
    "wonder": {_A: ("Distant", "Infinite", "Electric", "Crystal", "Starlit", "Ancient", "Quantum",
                    "Silver", "Emerald", "Frozen", "Hidden", "Seventh"),
               _N: ("Kingdom", "Horizon", "Planet", "Dragon", "Realm", "Voyage", "Machine",
                    "Galaxy", "Crown", "Portal", "Moon", "Odyssey", "Legacy", "Tower")},
    "drama": {_A: ("Quiet", "Long", "Small", "Open", "Second", "Honest", "Fragile", "Late",
                   "Red", "Winter", "Distant", "Hard"),
              _N: ("Years", "Letters", "Season", "Promise", "River", "Road", "Inheritance",
                   "Harvest", "Hearts", "Truth", "Mother", "Street", "Goodbye", "Ground")},
    "doc": {_A: ("Wild", "Hidden", "Great", "Secret", "Living", "Untold", "Lost", "Deep",
                 "Frozen", "Blue", "Ancient", "Inside"),
            _N: ("Planet", "Oceans", "Empires", "Killers", "Forests", "Cities", "Champions",
                 "Voices", "Minds", "Rivers", "Legends", "Deserts", "Machines", "Islands")},
    "bollywood": {_A: ("Dil", "Pyaar", "Zindagi", "Ishq", "Dil Se", "Mera", "Dilwale", "Naya",
                       "Kabhi", "Sapno", "Dosti", "Rang"),
                  _N: ("Ki Baat", "Ka Safar", "Express", "Kahani", "Mela", "Diwali", "Raja",
                       "Dulhan", "Sangam", "Bandhan", "Dhadkan", "Yatra", "Mumbai", "Sitara")},
    "k-drama": {_A: ("Crash Landing", "Itaewon", "Goblin's", "Reply", "Seoul", "Moonlit",
                     "Hospital", "Secret", "Midnight", "Spring", "Autumn", "Han River"),
                _N: ("Class", "Diaries", "Love", "Playlist", "Garden", "Café", "Palace",
                     "Tale", "Confession", "Memories", "Sonata", "Hearts", "Days", "Promise")},
    "anime": {_A: ("Sakura", "Kaze", "Tokyo", "Spirit", "Shinobi", "Mecha", "Neon", "Sky",
                   "Blade", "Hoshi", "Crimson", "Moon"),
              _N: ("Chronicles", "Academy", "Hunter", "Saga", "Pilgrim", "Requiem", "Quest",
                   "Alchemist", "Samurai", "Horizon", "Dreams", "Titans", "Garden", "No Yume")},
    "telenovela": {_A: ("Amor", "Corazón", "La Reina", "Destino", "Pasión", "Rosa", "Sol",
                        "El Secreto", "Mi", "Vidas", "Fuego", "Cielo"),
                   _N: ("Salvaje", "Eterno", "del Sur", "de Mar", "Prohibido", "de Plata",
                        "en Llamas", "Querida", "Traicionada", "de Hierro", "Dorado", "Bravo",
                        "Perdido", "Real")},
}
NAME_THEME_OF_GENRE = {
    "action": "action", "thriller": "action", "crime": "action", "war": "action",
    "western": "action", "comedy": "light", "romance": "light", "family": "light",
    "animation": "light", "musical": "light", "horror": "dark", "mystery": "dark",
    "sci-fi": "wonder", "fantasy": "wonder", "adventure": "wonder", "drama": "drama",
    "bollywood": "bollywood", "k-drama": "k-drama", "anime": "anime", "telenovela": "telenovela",
}
NAME_THEMES = tuple(NAME_WORDS)
PLACES = ("Berlin", "Lagos", "Havana", "Kyoto", "Mumbai", "Marseille", "Oslo", "Nairobi", "Lima",
          "Detroit", "Glasgow", "Busan", "Manaus", "Patagonia", "Sahara", "the Arctic",
          "the Amazon", "Borneo", "Istanbul", "Valparaíso")
