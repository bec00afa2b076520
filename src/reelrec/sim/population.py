"""The synthetic population: users with a region, language and signup device, a latent taste
over genres and kinds, an activity level with a long tail, and newcomers who join during the
simulated days (cold start), most of them picking genres at onboarding.

``make_population`` returns the public user table (``USER_SCHEMA``, saved by ``save_users``)
and the hidden arrays the session model and the ground truth need.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from reelrec.domain.users import DEVICES, USER_SCHEMA
from reelrec.sim import vocab as V
from reelrec.sim.catalog import LATENT_DIM

# a user leans to one kind: about 70 % of their taste for it, 15 % for each other kind
KIND_LEAN = (0.70, 0.15, 0.15)
PRIMARY_KIND_SHARE = (0.55, 0.30, 0.15)
TASTE_CONCENTRATION = 4.0  # lower: more peaked genre tastes


@dataclass
class Population:
    table: pa.Table
    region: np.ndarray  # int8 index into REGIONS
    signup_device: np.ndarray  # int8 index into DEVICES
    signup_s: np.ndarray  # int64 epoch seconds
    joiner: np.ndarray  # bool: joined during the simulated days
    onboarded: np.ndarray  # bool: picked genres (joiners emit an onboarding event)
    picks: pa.ListArray  # onboarding genre picks (empty lists for those who did not pick)
    taste: np.ndarray  # (N, G) float32: fiction genres sum to 1, documentary genres sum to 1
    kind_share: np.ndarray  # (N, 3) float32, sums to 1
    factors: np.ndarray  # (N, LATENT_DIM) float32
    activity: np.ndarray  # float32 expected sessions per day

    @property
    def n(self) -> int:
        return len(self.region)


def _dirichlet_rows(rng: np.random.Generator, alpha: np.ndarray) -> np.ndarray:
    """One Dirichlet draw per row of ``alpha`` (rows may differ), via normalised gammas."""
    g = rng.gamma(np.maximum(alpha, 1e-3))
    return g / g.sum(axis=1, keepdims=True)


def make_population(rng: np.random.Generator, n_users: int, n_joiners: int, start: dt.date,
                    days: int) -> Population:
    """``n_users`` who signed up before ``start`` plus ``n_joiners`` who join during the days."""
    n = n_users + n_joiners
    share = V.REGION_USER_SHARE / V.REGION_USER_SHARE.sum()
    region = rng.choice(V.R, size=n, p=share).astype(np.int8)
    device = np.empty(n, dtype=np.int8)
    lang = np.empty(n, dtype=object)
    u = rng.random(n)
    for r, code in enumerate(V.REGIONS):  # nine regions: per-region vector draws
        m = region == r
        device[m] = rng.choice(len(DEVICES), size=int(m.sum()), p=V.DEVICE_MIX[r])
        cum = 0.0
        for language, share in V.REGION_LANGUAGES[code]:
            lang[m & (u >= cum) & (u < cum + share + 1e-9)] = language
            cum += share

    start_s = (start - dt.date(1970, 1, 1)).days * 86400
    joiner = np.zeros(n, dtype=bool)
    joiner[n_users:] = True
    old_signup = start_s - rng.integers(86400, 3 * 365 * 86400, n)
    new_signup = start_s + rng.integers(0, days * 86400 - 3600, n)
    signup_s = np.where(joiner, new_signup, old_signup).astype(np.int64)

    # --- latent taste: genre prior shaped by region, peaked per user ------------------------
    prior = np.array([V.PRIMARY_WEIGHT.get(g, 3.0) for g in V.GENRES], dtype=np.float64)
    prior[V.REGIONAL_MASK] = 0.6
    boost = np.ones((V.R, V.G))
    for (r, g), b in V.REGIONAL_TASTE_BOOST.items():
        boost[V.RI[r], V.GI[g]] = b
    alpha = prior[None, :] * boost[region]
    fic = alpha * V.FICTION_MASK
    doc = alpha * V.DOC_MASK
    fic = fic / fic.sum(axis=1, keepdims=True) * TASTE_CONCENTRATION * 1.5
    doc = doc / doc.sum(axis=1, keepdims=True) * TASTE_CONCENTRATION
    raw = rng.gamma(np.where(V.FICTION_MASK, fic, doc))
    taste = np.where(V.FICTION_MASK, raw / (raw * V.FICTION_MASK).sum(1, keepdims=True),
                     raw / (raw * V.DOC_MASK).sum(1, keepdims=True)).astype(np.float32)

    primary_kind = rng.choice(3, size=n, p=PRIMARY_KIND_SHARE)
    lean = np.where(np.arange(3)[None, :] == primary_kind[:, None], KIND_LEAN[0], KIND_LEAN[1])
    kind_share = _dirichlet_rows(rng, 30.0 * lean).astype(np.float32)
    factors = rng.normal(0.0, 0.45, (n, LATENT_DIM)).astype(np.float32)

    # --- activity: sessions per day, log-normal with a long tail and some lapsed users ---------
    activity = np.exp(rng.normal(-0.35, 0.95, n))
    activity *= np.where(rng.random(n) < 0.12, 0.1, 1.0)
    activity = np.minimum(activity, 10.0).astype(np.float32)

    # --- onboarding picks: 3 to 5 of the genres a user likes most, with some noise ------------
    onboarded = np.where(joiner, rng.random(n) < 0.85, rng.random(n) < 0.5)
    pick_scores = np.log(np.where(V.FICTION_MASK, taste, taste * 0.3) + 1e-9)
    pick_scores = pick_scores + rng.gumbel(size=(n, V.G)) * 0.7
    n_picks = rng.integers(3, 6, n) * onboarded
    order = np.argsort(-pick_scores, axis=1)[:, :5]
    keep = np.arange(5)[None, :] < n_picks[:, None]
    offsets = np.concatenate([[0], np.cumsum(n_picks)]).astype(np.int32)
    picked = pa.array(V.GENRES).take(pa.array(order[keep].astype(np.int32)))
    picks = pa.ListArray.from_arrays(pa.array(offsets), picked)

    width = max(6, len(str(n)))
    ids = pa.array([f"u{i:0{width}d}" for i in range(n)])
    table = pa.table({
        "user_id": ids,
        "region": pa.array(V.REGIONS).take(pa.array(region.astype(np.int32))),
        "language": pa.array(lang.astype(str)),
        "signup_device": pa.array(DEVICES).take(pa.array(device.astype(np.int32))),
        "signup_ts": pa.array(signup_s * 1000, type=pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "onboarding_genres": picks,
        "age": pa.nulls(n, pa.int32()),
        "gender": pa.nulls(n, pa.string()),
        "occupation": pa.nulls(n, pa.string()),
        "zip": pa.nulls(n, pa.string()),
    }, schema=USER_SCHEMA)
    return Population(table=table, region=region, signup_device=device, signup_s=signup_s,
                      joiner=joiner, onboarded=onboarded, picks=picks, taste=taste,
                      kind_share=kind_share, factors=factors, activity=activity)
