"""Homepage composition: ranked candidates -> a page of shelves with reasons (DESIGN.md step 3).

Pure functions over arrays, independent of how the candidates were found and ranked:
``CatalogFeatures`` (once per model version), ``UserProfile`` and ``Candidates`` (per user) in;
``compose_page`` out, stored with ``reelrec.compose.page.encode_page`` and turned into the API's
Page document by ``reelrec.compose.page.Assembler``. Rules and their order of precedence are in
docs/composition.md.
"""

from reelrec.compose.bandit import ThompsonBandit
from reelrec.compose.coldstart import ColdStartPriors, blend_candidates, blend_weight
from reelrec.compose.config import ComposeConfig
from reelrec.compose.features import SOURCES, CatalogFeatures, Candidates, UserProfile, affinities
from reelrec.compose.shelves import (ComposedPage, SharedShelf, build_shared_shelves, compose_fallback, compose_page,
                                     shared_keys)
from reelrec.compose.toppicks import SLOT_KINDS, select_top_picks

__all__ = [
    "SLOT_KINDS", "SOURCES", "CatalogFeatures", "Candidates", "ColdStartPriors", "ComposeConfig",
    "ComposedPage", "SharedShelf", "ThompsonBandit", "UserProfile", "affinities", "blend_candidates",
    "blend_weight", "build_shared_shelves", "compose_fallback", "compose_page", "select_top_picks", "shared_keys",
]
