"""Synthetic trigger-induced-recommendation (TIR) logs with planted intent preferences.

:func:`generate` writes raw tables in the generic schema (``pipeline/SCHEMA.md``): ``items``,
``item_embeddings``, ``users``, sharded ``impressions/`` and ``behaviours/``, plus the
evaluation-only ``ground_truth_intent.parquet`` and ``generator_config.json``.
:func:`iter_chunks` yields the same tables in memory, chunk by chunk, together with each
request's planted trigger (not written to disk). Everything is
vectorised with numpy; users are processed in chunks of ``chunk_users`` so memory is bounded by
the chunk size (the item tables, O(items x emb_dim), are held in memory).

Generative model
----------------
Items (one global random stream):
  * Category sizes follow a power law (weight of the r-th category ~ r^-0.8; every category gets
    at least one item). Categories are grouped into super-categories ("related" categories).
  * Each brand has a home category; an item takes a brand of its category with probability 0.9,
    otherwise any brand. ``price_bucket`` (0..9) = category base price + rounded N(0, 1.5).
  * Popularity is Zipf-like: the item of popularity rank r has weight 1/r.
  * Multimodal embedding = category centroid + 0.5 * brand direction + s * item noise
    (s ~ U(0.3, 0.9)), L2-normalised. Centroids of categories in one super-category share a
    component (cosine ~0.3). Typical cosines (5-95 %): same brand 0.65-0.9, same category
    0.45-0.75, related category 0-0.35, unrelated ~0 +- 0.2 (emb_dim 64), so trigger-candidate
    pairs populate the intent levels 2..5 of the equal-width binning of [-1, 1] into n = 6.

Users (random stream per block of :data:`BLOCK_USERS` users, seeded from (seed, block)):
  * Profile: ``gender`` 0..1, ``age_level`` 0..6, ``city_level`` 0..4, ``activity_level`` 0..3.
    Activity scales the behaviour and request rates (multipliers with mean 1).
  * Long-term interest: 2-4 categories (drawn by category size) with Dirichlet weights. Each day,
    with probability ``drift``, one of them is replaced by a new category.
  * Planted intent preference ``pref`` over the n = 6 similarity levels: a Dirichlet draw around
    a "specific" profile (most mass on the top two levels, i.e. clicks close to the trigger) for
    a ``specific_frac`` share of users, or around a "broad" profile spread over the levels.

Behaviours: Poisson(``behaviours_per_user_day`` x activity) events per user and day at uniform
times; the item comes from the day's interests (category by weight, item by popularity within
the category) or, with probability ``noise_frac``, from the global popularity distribution.
``btag`` is click / cart / fav / buy with probabilities 0.8 / 0.08 / 0.07 / 0.05.

TIR requests: Poisson(``requests_per_user_day`` x ``days`` x activity) requests per user at
times T spread over the log span, at least 40 minutes apart. At each request the user has just
clicked a trigger item (drawn like a behaviour), written to ``behaviours`` as a ``click`` at
T - U(5 s, 30 min). Background clicks inside [trigger time, T] are removed, and the clicks of
the previous request end at most 2 minutes after it, so the trigger is the user's most recent
click before T (within the 4-hour trigger window). A page of ``page_size`` candidates follows,
all with ``ts`` = T: same brand (15 %), same category (30 %), same super-category (20 %) or a
popular item (35 %); repeats and the trigger itself are re-drawn uniformly. Click labels are
``Bernoulli(sigmoid(z + bias))`` with::

    z = 1.2 * log(n * pref[level(cos(trigger, candidate))])
        + 0.8 * [candidate category in the day's interests]
        + 0.35 * standardised log popularity + scene effect

Every click is also written to ``behaviours`` as a ``click`` at T + U(1 s, 120 s), strictly
after the impression, so the pipeline sees no leakage.

Calibration: ``bias`` is solved by bisection so that the mean click probability over a pilot
sample equals ``target_ctr``. The pilot simulates ~30k impressions with a separate random
stream (seed, 2, pilot block), so the bias does not depend on ``users`` or ``chunk_users``.

Determinism: the item tables use the stream (seed, 0); users of block b use (seed, 1, b). A
chunk simulates the blocks it overlaps and keeps its own users, so the tables' content is the
same for any ``chunk_users`` and byte-identical for the same config.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import time
from typing import Callable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from tirec.features.jsonio import write_json

log = logging.getLogger(__name__)

DAY = 86_400
INTENT_LEVELS = 6
BLOCK_USERS = 100
FORMATS = ("parquet", "csv", "jsonl")
BTAGS = ("click", "cart", "fav", "buy")

_BTAG_P = np.array([0.80, 0.08, 0.07, 0.05])
_GENDER_P = np.array([0.5, 0.5])
_AGE_P = np.array([0.05, 0.15, 0.25, 0.25, 0.15, 0.10, 0.05])
_CITY_P = np.array([0.15, 0.25, 0.30, 0.20, 0.10])
_ACTIVITY_P = np.array([0.30, 0.35, 0.25, 0.10])
_ACTIVITY_RAW = np.array([0.5, 0.85, 1.3, 2.0])
_ACTIVITY_MULT = _ACTIVITY_RAW / float(_ACTIVITY_P @ _ACTIVITY_RAW)  # mean multiplier = 1
_SCENE_P = np.array([0.6, 0.3, 0.1])
_SCENE_EFFECT = np.array([0.0, 0.15, -0.25])
_CAND_P = np.array([0.15, 0.30, 0.20, 0.35])  # same brand, same category, related, popular
_SPECIFIC_BASE = np.array([0.005, 0.005, 0.02, 0.07, 0.30, 0.60])
_BROAD_BASE = np.array([0.04, 0.08, 0.20, 0.26, 0.24, 0.18])
_PREF_CONCENTRATION = 30.0
_PREF_FLOOR = 1e-3
_MAX_INTERESTS = 4
_REQUEST_GAP_S = 40 * 60
_TRIGGER_DELAY_S = (5, 30 * 60)        # trigger click at T - U[5 s, 30 min]
_CLICK_DELAY_S = (1, 120)              # clicked impression -> behaviour at T + U[1 s, 120 s]
_SPAN_HEAD_S, _SPAN_TAIL_S = 3600, 300  # requests avoid the first hour / last 5 minutes
_W_INTENT, _W_INTEREST, _W_POP = 1.2, 0.8, 0.35
_DEDUPE_PASSES = 4
_PILOT_IMPRESSIONS, _PILOT_MAX_BLOCKS = 30_000, 20


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Settings of the synthetic TIR log generator.

    Attributes:
      users: number of users (ids 1..users).
      seed: random seed; the same seed gives byte-identical tables.
      items: number of items (ids 1..items); 0 = auto, ``max(500, users * 4)``.
      categories: number of item categories.
      brands: number of brands.
      emb_dim: width of the multimodal item embeddings.
      days: log span in days; with the default 8 (even) days the pipeline's automatic split
        makes the last day eval and the day before valid.
      start_ts: Unix time (UTC midnight) at which the log starts.
      requests_per_user_day: mean TIR requests per user per day (Poisson).
      page_size: candidates per TIR request.
      behaviours_per_user_day: mean background behaviours per user per day (Poisson).
      noise_frac: fraction of behaviours (and triggers) that are random popular items.
      specific_frac: fraction of specific-intent users.
      drift: per-day probability that one of a user's interest categories changes.
      target_ctr: the overall click-through rate the click bias is calibrated to.
      format: file format of the tables: ``parquet``, ``csv`` or ``jsonl``.
      chunk_users: users generated and written per shard.
      day_files: write the impressions and behaviours of each day to their own shards,
        ``part-<chunk>-day<DDDD>`` with day 1 the first, so that a run can read the log up to a
        day (``tirec run --span K``); off: one shard per chunk of users.
    """

    users: int = 300
    seed: int = 7
    items: int = 0
    categories: int = 40
    brands: int = 200
    emb_dim: int = 64
    days: int = 8
    start_ts: int = 1_699_920_000  # 2023-11-14 00:00:00 UTC
    requests_per_user_day: float = 1.2
    page_size: int = 20
    behaviours_per_user_day: float = 12.0
    noise_frac: float = 0.15
    specific_frac: float = 0.5
    drift: float = 0.1
    target_ctr: float = 0.04
    format: str = "parquet"
    chunk_users: int = 2000
    day_files: bool = False

    @property
    def n_items(self) -> int:
        """The resolved number of items (``items``, or the auto value when it is 0)."""
        return self.items if self.items > 0 else max(500, self.users * 4)

    def __post_init__(self) -> None:
        """Checks every field as the config is built.

        Raises:
          ValueError: naming the first bad field and its value.
        """
        def bad(name: str, rule: str) -> None:
            raise ValueError(f"GeneratorConfig.{name}={getattr(self, name)!r}: {rule}")

        ints = ("users", "seed", "items", "categories", "brands", "emb_dim", "days", "start_ts",
                "page_size", "chunk_users")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                bad(name, "must be an integer")
        floats = ("requests_per_user_day", "behaviours_per_user_day", "noise_frac",
                  "specific_frac", "drift", "target_ctr")
        for name in floats:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                bad(name, "must be a number")
            if not math.isfinite(float(value)):
                bad(name, "must be finite")
        if self.users < 1:
            bad("users", "must be >= 1")
        if self.seed < 0:
            bad("seed", "must be >= 0")
        if self.categories < 1:
            bad("categories", "must be >= 1")
        if self.brands < 1:
            bad("brands", "must be >= 1")
        if self.page_size < 1:
            bad("page_size", "must be >= 1")
        if self.items < 0:
            bad("items", "must be >= 0 (0 = auto)")
        if self.n_items < max(self.categories, self.page_size + 1):
            bad("items", f"must be >= categories ({self.categories}) and > page_size "
                         f"({self.page_size}); resolved to {self.n_items}")
        if self.emb_dim < 2:
            bad("emb_dim", "must be >= 2")
        if not 1 <= self.days <= 3650:
            bad("days", "must be in [1, 3650]")
        if self.start_ts < 0 or self.start_ts % DAY:
            bad("start_ts", "must be a non-negative Unix time at a UTC midnight (multiple of 86400)")
        if self.requests_per_user_day < 0:
            bad("requests_per_user_day", "must be >= 0")
        if self.behaviours_per_user_day < 0:
            bad("behaviours_per_user_day", "must be >= 0")
        for name in ("noise_frac", "specific_frac", "drift"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, "must be in [0, 1]")
        if not 0.0 < self.target_ctr < 1.0:
            bad("target_ctr", "must be in (0, 1)")
        if self.format not in FORMATS:
            bad("format", f"must be one of {FORMATS}")
        if self.chunk_users < 1:
            bad("chunk_users", "must be >= 1")
        if not isinstance(self.day_files, bool):
            bad("day_files", "must be true or false")


# ---- item world ------------------------------------------------------------------------------

class _GroupSampler:
    """Draws items within groups (category, brand, ...) with probability proportional to weight."""

    def __init__(self, group: np.ndarray, weight: np.ndarray, n_groups: int):
        self.order = np.argsort(group, kind="stable")
        self.cum = np.cumsum(weight[self.order])
        self.count = np.bincount(group, minlength=n_groups)
        self.end = np.cumsum(self.count)
        self.start = self.end - self.count
        self.base = np.where(self.start > 0, self.cum[np.maximum(self.start - 1, 0)], 0.0)
        top = self.cum[np.maximum(self.end - 1, 0)]
        self.total = np.where(self.count > 0, top - self.base, 0.0)

    def sample(self, groups: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Item indices for ``groups`` using uniforms ``u`` (same shape); -1 for empty groups."""
        target = self.base[groups] + u * self.total[groups]
        idx = np.searchsorted(self.cum, target, side="right")
        idx = np.clip(idx, self.start[groups], np.maximum(self.end[groups] - 1, self.start[groups]))
        out = self.order[np.minimum(idx, self.order.shape[0] - 1)]
        return np.where(self.count[groups] > 0, out, -1)


@dataclasses.dataclass
class _World:
    """Item side of the simulation (0-based indices; ids are index + 1)."""

    cate: np.ndarray
    brand: np.ndarray
    price: np.ndarray
    pop: np.ndarray
    logpop_z: np.ndarray
    emb: np.ndarray
    super_of_cat: np.ndarray
    cat_weight: np.ndarray
    by_cat: _GroupSampler
    by_brand: _GroupSampler
    by_super: _GroupSampler
    by_pop: _GroupSampler

    @property
    def n_items(self) -> int:
        return int(self.cate.shape[0])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def build_world(cfg: GeneratorConfig) -> _World:
    """Builds the item catalogue, popularity and multimodal embeddings for ``cfg``."""
    rng = np.random.default_rng([cfg.seed, 0])
    n, c, b, dim = cfg.n_items, cfg.categories, cfg.brands, cfg.emb_dim
    cat_weight = np.arange(1, c + 1, dtype=np.float64) ** -0.8
    cat_weight /= cat_weight.sum()
    cate = np.concatenate([np.arange(c), rng.choice(c, size=n - c, p=cat_weight)])
    cate = cate[rng.permutation(n)]

    home = np.concatenate([rng.permutation(c)[:min(b, c)],
                           rng.choice(c, size=max(b - c, 0), p=cat_weight)])
    home_count = np.bincount(home, minlength=c)
    home_order = np.argsort(home, kind="stable")
    home_start = np.cumsum(home_count) - home_count
    pick = home_start[cate] + np.floor(rng.random(n) * home_count[cate]).astype(np.int64)
    own = home_order[np.minimum(pick, b - 1)]
    other = rng.integers(0, b, size=n)
    brand = np.where((rng.random(n) < 0.9) & (home_count[cate] > 0), own, other)

    base_price = rng.integers(0, 10, size=c)
    price = np.clip(base_price[cate] + np.rint(rng.normal(0.0, 1.5, size=n)), 0, 9).astype(np.int64)

    pop = 1.0 / (rng.permutation(n) + 1.0)
    pop /= pop.sum()
    logpop = np.log(pop)
    logpop_z = (logpop - logpop.mean()) / max(float(logpop.std()), 1e-12)

    n_super = max(2, math.ceil(c / 6))
    super_of_cat = rng.integers(0, n_super, size=c)
    super_vec = _unit(rng.standard_normal((n_super, dim)))
    centroid = _unit(0.55 * super_vec[super_of_cat]
                     + math.sqrt(1 - 0.55 ** 2) * _unit(rng.standard_normal((c, dim))))
    brand_vec = _unit(rng.standard_normal((b, dim)))
    noise_scale = rng.uniform(0.3, 0.9, size=(n, 1))
    emb = _unit(centroid[cate] + 0.5 * brand_vec[brand]
                + noise_scale * _unit(rng.standard_normal((n, dim)))).astype(np.float32)

    return _World(
        cate=cate.astype(np.int64), brand=brand.astype(np.int64), price=price, pop=pop,
        logpop_z=logpop_z, emb=emb, super_of_cat=super_of_cat, cat_weight=cat_weight,
        by_cat=_GroupSampler(cate, pop, c), by_brand=_GroupSampler(brand, pop, b),
        by_super=_GroupSampler(super_of_cat[cate], pop, n_super),
        by_pop=_GroupSampler(np.zeros(n, dtype=np.int64), pop, 1))


def similarity_level(sim: np.ndarray, n: int = INTENT_LEVELS) -> np.ndarray:
    """Equal-width level of cosine similarities over [-1, 1] (level n-1 includes 1.0)."""
    return np.clip(np.floor((np.asarray(sim, dtype=np.float64) + 1.0) * n / 2.0), 0, n - 1
                   ).astype(np.int64)


# ---- user blocks -----------------------------------------------------------------------------

def _sample_interest_items(rng: np.random.Generator, world: _World, cfg: GeneratorConfig,
                           interests: np.ndarray, cum_w: np.ndarray, k: np.ndarray,
                           user: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Items drawn from each user's interests of that day, or popular noise items."""
    m = user.shape[0]
    u_noise, u_slot, u_item, u_pop = rng.random(m), rng.random(m), rng.random(m), rng.random(m)
    slot = np.minimum((u_slot[:, None] > cum_w[user]).sum(1), k[user] - 1)
    cat = interests[user, day, slot]
    item = world.by_cat.sample(cat, u_item)
    noise = world.by_pop.sample(np.zeros(m, dtype=np.int64), u_pop)
    return np.where(u_noise < cfg.noise_frac, noise, item)


def _simulate_block(world: _World, cfg: GeneratorConfig, rng: np.random.Generator,
                    uids: np.ndarray) -> dict:
    """Simulates the users ``uids``; labels are left as logits ``z`` and uniforms ``u_click``.

    The number of random draws does not depend on the click bias, so the pilot and the real
    run share this code.
    """
    n_u, days, n_lv, p = uids.shape[0], cfg.days, INTENT_LEVELS, cfg.page_size
    out: dict = {"uids": uids}

    # profile, user type, planted intent preference
    out["gender"] = rng.choice(2, size=n_u, p=_GENDER_P)
    out["age_level"] = rng.choice(len(_AGE_P), size=n_u, p=_AGE_P)
    out["city_level"] = rng.choice(len(_CITY_P), size=n_u, p=_CITY_P)
    activity = rng.choice(len(_ACTIVITY_P), size=n_u, p=_ACTIVITY_P)
    out["activity_level"] = activity
    mult = _ACTIVITY_MULT[activity]
    specific = rng.random(n_u) < cfg.specific_frac
    alpha = np.where(specific[:, None], _SPECIFIC_BASE, _BROAD_BASE) * _PREF_CONCENTRATION
    pref = rng.gamma(alpha)
    pref = pref / pref.sum(1, keepdims=True)
    pref = (pref + _PREF_FLOOR) / (1.0 + n_lv * _PREF_FLOOR)
    out["specific"], out["pref"] = specific, pref

    # long-term interests with daily drift
    kmax = _MAX_INTERESTS
    k = rng.integers(2, kmax + 1, size=n_u)
    active = np.arange(kmax)[None, :] < k[:, None]
    weight = rng.gamma(1.0, size=(n_u, kmax)) * active
    weight /= weight.sum(1, keepdims=True)
    cum_w = np.cumsum(weight, 1)
    interests = np.empty((n_u, days, kmax), dtype=np.int64)
    interests[:, 0] = rng.choice(cfg.categories, size=(n_u, kmax), p=world.cat_weight)
    for d in range(1, days):
        cur = interests[:, d - 1].copy()
        shift = rng.random(n_u) < cfg.drift
        slot = np.minimum(np.floor(rng.random(n_u) * k).astype(np.int64), k - 1)
        new = rng.choice(cfg.categories, size=n_u, p=world.cat_weight)
        cur[shift, slot[shift]] = new[shift]
        interests[:, d] = cur

    # background behaviours
    nb = rng.poisson(cfg.behaviours_per_user_day * mult[:, None], size=(n_u, days))
    ud = np.repeat(np.arange(n_u * days), nb.ravel())
    b_user, b_day = ud // days, ud % days
    b_item = _sample_interest_items(rng, world, cfg, interests, cum_w, k, b_user, b_day)
    b_ts = cfg.start_ts + b_day * DAY + rng.integers(0, DAY, size=ud.shape[0])
    b_tag = rng.choice(len(BTAGS), size=ud.shape[0], p=_BTAG_P)

    # requests: sorted times at least _REQUEST_GAP_S apart
    span = days * DAY - _SPAN_HEAD_S - _SPAN_TAIL_S
    cap = 1 + span // _REQUEST_GAP_S
    nr = np.minimum(rng.poisson(cfg.requests_per_user_day * days * mult), cap)
    r_user = np.repeat(np.arange(n_u), nr)
    n_req = r_user.shape[0]
    room = (span - (nr - 1).clip(min=0) * _REQUEST_GAP_S).astype(np.float64)
    v = rng.random(n_req) * room[r_user]
    v = v[np.lexsort((v, r_user))]
    first = np.cumsum(nr) - nr
    rank = np.arange(n_req) - first[r_user]
    req_ts = (cfg.start_ts + _SPAN_HEAD_S + np.floor(v).astype(np.int64)
              + rank * _REQUEST_GAP_S)
    r_day = np.minimum((req_ts - cfg.start_ts) // DAY, days - 1)
    trig = _sample_interest_items(rng, world, cfg, interests, cum_w, k, r_user, r_day)
    trig_ts = req_ts - rng.integers(_TRIGGER_DELAY_S[0], _TRIGGER_DELAY_S[1] + 1, size=n_req)
    scene = rng.choice(len(_SCENE_P), size=n_req, p=_SCENE_P)

    # candidate pages
    ctype = rng.choice(len(_CAND_P), size=(n_req, p), p=_CAND_P)
    u = rng.random((n_req, p))
    t_cat = np.repeat(world.cate[trig][:, None], p, 1)
    t_brand = np.repeat(world.brand[trig][:, None], p, 1)
    options = np.stack([world.by_brand.sample(t_brand, u), world.by_cat.sample(t_cat, u),
                        world.by_super.sample(world.super_of_cat[t_cat], u),
                        world.by_pop.sample(np.zeros_like(t_cat), u)])
    cand = np.take_along_axis(options, ctype[None], 0)[0] if n_req else np.zeros((0, p), np.int64)
    for _ in range(_DEDUPE_PASSES):
        redraw = rng.integers(0, world.n_items, size=(n_req, p))
        cand = np.where(_repeats(cand) | (cand == trig[:, None]), redraw, cand)

    # click logits
    sim = np.einsum("rd,rpd->rp", world.emb[trig].astype(np.float64),
                    world.emb[cand].astype(np.float64))
    level = similarity_level(sim, n_lv)
    r_pref = pref[r_user]
    intent = np.log(n_lv * np.take_along_axis(r_pref, level, 1))
    day_interest = np.where(active[r_user], interests[r_user, r_day], -1)
    in_interest = (world.cate[cand][:, :, None] == day_interest[:, None, :]).any(2)
    out["z"] = (_W_INTENT * intent + _W_INTEREST * in_interest + _W_POP * world.logpop_z[cand]
                + _SCENE_EFFECT[scene][:, None])
    out["u_click"] = rng.random((n_req, p))
    out["click_delay"] = rng.integers(_CLICK_DELAY_S[0], _CLICK_DELAY_S[1] + 1, size=(n_req, p))
    out.update(b_user=b_user, b_item=b_item, b_ts=b_ts, b_tag=b_tag, r_user=r_user, rank=rank,
               req_ts=req_ts, trig=trig, trig_ts=trig_ts, scene=scene, cand=cand, level=level)
    return out


def _repeats(cand: np.ndarray) -> np.ndarray:
    """True at every position whose item already appears earlier in the same row."""
    if cand.size == 0:
        return np.zeros(cand.shape, dtype=bool)
    order = np.argsort(cand, axis=1, kind="stable")
    srt = np.take_along_axis(cand, order, 1)
    dup_sorted = np.zeros(cand.shape, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.zeros(cand.shape, dtype=bool)
    np.put_along_axis(dup, order, dup_sorted, 1)
    return dup


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def calibrate_bias(world: _World, cfg: GeneratorConfig) -> float:
    """The click bias that makes the pilot sample's mean click probability ``target_ctr``."""
    logits, total, block = [], 0, 0
    while total < _PILOT_IMPRESSIONS and block < _PILOT_MAX_BLOCKS:
        rng = np.random.default_rng([cfg.seed, 2, block])
        sim = _simulate_block(world, cfg, rng, np.arange(1, BLOCK_USERS + 1))
        logits.append(sim["z"].ravel())
        total += sim["z"].size
        block += 1
    z = np.concatenate(logits)
    target = math.log(cfg.target_ctr / (1.0 - cfg.target_ctr))
    if z.size == 0:
        return target
    lo, hi = target - float(z.max()) - 1.0, target - float(z.min()) + 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _sigmoid(z + mid).mean() < cfg.target_ctr:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# ---- chunks ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Chunk:
    """The tables of one user chunk, as column dicts of numpy arrays.

    ``requests`` (not written to disk) lists each request's trigger: ``request_id``,
    ``user_id``, ``ts``, ``trigger_item_id``, ``trigger_ts``, ``clicks``.
    """

    index: int
    user_lo: int
    user_hi: int
    impressions: dict
    behaviours: dict
    users: dict
    ground_truth: dict
    requests: dict


def _finalize(sim: dict, bias: float, keep_lo: int, keep_hi: int) -> dict:
    """Applies the click bias and keeps users with ids in [keep_lo, keep_hi]."""
    uids = sim["uids"]
    keep_user = (uids >= keep_lo) & (uids <= keep_hi)
    p = sim["cand"].shape[1]
    label = sim["u_click"] < _sigmoid(sim["z"] + bias)
    r_user, req_ts, trig_ts = sim["r_user"], sim["req_ts"], sim["trig_ts"]

    # background clicks inside a request's [trigger time, T] window are removed
    b_user, b_ts, b_tag = sim["b_user"], sim["b_ts"], sim["b_tag"]
    shift = 1 << 40
    req_key = r_user * shift + req_ts
    j = np.searchsorted(req_key, b_user * shift + b_ts, side="left")
    jj = np.minimum(j, max(req_key.shape[0] - 1, 0))
    if req_key.shape[0]:
        inside = (j < req_key.shape[0]) & (r_user[jj] == b_user) & (b_ts >= trig_ts[jj])
    else:
        inside = np.zeros(b_user.shape[0], dtype=bool)
    b_keep = ~(inside & (b_tag == 0)) & keep_user[b_user]

    r_keep = keep_user[r_user]
    rr, cc = np.nonzero(label & r_keep[:, None])
    user = np.concatenate([b_user[b_keep], r_user[r_keep], r_user[rr]])
    item = np.concatenate([sim["b_item"][b_keep], sim["trig"][r_keep], sim["cand"][rr, cc]])
    ts = np.concatenate([b_ts[b_keep], trig_ts[r_keep], req_ts[rr] + sim["click_delay"][rr, cc]])
    tag = np.concatenate([b_tag[b_keep], np.zeros(int(r_keep.sum()) + rr.shape[0], np.int64)])
    order = np.lexsort((ts, user))
    behaviours = {"user_id": uids[user[order]].astype(np.int64),
                  "item_id": item[order].astype(np.int64) + 1,
                  "ts": ts[order].astype(np.int64),
                  "btag": np.asarray(BTAGS, dtype=object)[tag[order]]}

    ku = r_user[r_keep]
    rid = np.array([f"r{u}_{k}" for u, k in zip(uids[ku].tolist(), sim["rank"][r_keep].tolist())],
                   dtype=object)
    impressions = {"user_id": np.repeat(uids[ku], p).astype(np.int64),
                   "item_id": sim["cand"][r_keep].ravel().astype(np.int64) + 1,
                   "ts": np.repeat(req_ts[r_keep], p).astype(np.int64),
                   "label": label[r_keep].ravel().astype(np.int64),
                   "request_id": np.repeat(rid, p),
                   "ctx_scene": np.repeat(sim["scene"][r_keep], p).astype(np.int64)}
    requests = {"request_id": rid, "user_id": uids[ku].astype(np.int64),
                "ts": req_ts[r_keep].astype(np.int64),
                "trigger_item_id": sim["trig"][r_keep].astype(np.int64) + 1,
                "trigger_ts": trig_ts[r_keep].astype(np.int64),
                "clicks": label[r_keep].sum(1).astype(np.int64)}
    users = {"user_id": uids[keep_user].astype(np.int64)}
    for f in ("gender", "age_level", "city_level", "activity_level"):
        users[f] = sim[f][keep_user].astype(np.int64)
    truth = {"user_id": uids[keep_user].astype(np.int64),
             "user_type": np.where(sim["specific"][keep_user], "specific", "broad").astype(object)}
    for lv in range(INTENT_LEVELS):
        truth[f"pref_{lv}"] = sim["pref"][keep_user, lv].astype(np.float64)
    return {"impressions": impressions, "behaviours": behaviours, "users": users,
            "ground_truth": truth, "requests": requests}


def _concat(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def iter_chunks(cfg: GeneratorConfig, world: Optional[_World] = None,
                bias: Optional[float] = None) -> Iterator[Chunk]:
    """Yields the tables chunk by chunk (``chunk_users`` users each, in user-id order).

    Args:
      cfg: the generator config.
      world: a prebuilt :func:`build_world` result (built from ``cfg`` when None).
      bias: the click bias (calibrated with :func:`calibrate_bias` when None).
    """
    world = world if world is not None else build_world(cfg)
    bias = calibrate_bias(world, cfg) if bias is None else bias
    for index, lo in enumerate(range(0, cfg.users, cfg.chunk_users)):
        hi = min(lo + cfg.chunk_users, cfg.users)           # 0-based user range [lo, hi)
        parts = []
        for block in range(lo // BLOCK_USERS, (hi - 1) // BLOCK_USERS + 1):
            first = block * BLOCK_USERS
            uids = np.arange(first + 1, min(first + BLOCK_USERS, cfg.users) + 1, dtype=np.int64)
            rng = np.random.default_rng([cfg.seed, 1, block])
            parts.append(_finalize(_simulate_block(world, cfg, rng, uids), bias, lo + 1, hi))
        tables = {name: _concat([p[name] for p in parts]) for name in parts[0]}
        yield Chunk(index=index, user_lo=lo + 1, user_hi=hi, **tables)


# ---- writing ---------------------------------------------------------------------------------

_INT_COLUMNS = {"user_id", "item_id", "ts", "label", "ctx_scene", "cate_id", "brand_id",
                "price_bucket", "gender", "age_level", "city_level", "activity_level"}


def _arrow(cols: dict) -> pa.Table:
    arrays = {}
    for name, values in cols.items():
        values = np.asarray(values)
        if values.dtype == object:
            arrays[name] = pa.array(values.tolist(), type=pa.string())
        elif values.ndim == 2:
            mat = np.ascontiguousarray(values, dtype=np.float32)
            offsets = pa.array(np.arange(mat.shape[0] + 1, dtype=np.int32) * mat.shape[1])
            arrays[name] = pa.ListArray.from_arrays(offsets, pa.array(mat.ravel(), pa.float32()))
        elif name in _INT_COLUMNS:
            arrays[name] = pa.array(values.astype(np.int64), type=pa.int64())
        else:
            arrays[name] = pa.array(values)
    return pa.table(arrays)


class _TableWriter:
    """Appends column dicts to one parquet, csv (header row, unquoted names) or jsonl file."""

    def __init__(self, path: str, fmt: str):
        self.path, self.fmt, self.rows = path, fmt, 0
        self._parquet = None
        self._fh = open(path, "wb") if fmt in ("csv", "jsonl") else None
        self._header = False

    def write(self, cols: dict) -> None:
        n = len(next(iter(cols.values())))
        self.rows += n
        if self.fmt == "jsonl":
            self._fh.write(_jsonl_text(cols).encode("utf-8"))
            return
        table = _arrow(cols)
        if self.fmt == "parquet":
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema)
            self._parquet.write_table(table)
            return
        if not self._header:
            self._fh.write((",".join(table.column_names) + "\n").encode("utf-8"))
            self._header = True
        if n:
            pcsv.write_csv(table, self._fh, write_options=pcsv.WriteOptions(
                include_header=False, quoting_style="none"))

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._fh is not None:
            self._fh.close()


def _jsonl_text(cols: dict) -> str:
    names = list(cols)
    n = len(cols[names[0]]) if names else 0
    if n == 0:
        return ""
    rendered = []
    for name in names:
        values = np.asarray(cols[name])
        if values.ndim == 2:
            text = values.astype(np.float32).astype(str)
            rendered.append(["[" + ", ".join(row) + "]" for row in text.tolist()])
        elif name in _INT_COLUMNS:
            rendered.append(values.astype(np.int64).astype(str).tolist())
        else:
            rendered.append([json.dumps(v) for v in values.tolist()])
    keys = [json.dumps(k) + ": " for k in names]
    lines = ("{" + ", ".join(k + v for k, v in zip(keys, row)) + "}" for row in zip(*rendered))
    return "\n".join(lines) + "\n"


def _write_table(path: str, fmt: str, cols: dict) -> int:
    writer = _TableWriter(path, fmt)
    try:
        writer.write(cols)
    finally:
        writer.close()
    return writer.rows


def day_of(ts: np.ndarray, cfg: GeneratorConfig) -> np.ndarray:
    """The 1-based day of the log of each Unix time ``ts`` (day 1 starts at ``cfg.start_ts``)."""
    return (np.asarray(ts, np.int64) - cfg.start_ts) // DAY + 1


def _shards(stem: str, fmt: str, cols: dict, cfg: GeneratorConfig) -> list[tuple[str, dict]]:
    """``(path, columns)`` of the shards of one chunk's table: one, or one per day that has rows
    (``cfg.day_files``)."""
    if not cfg.day_files:
        return [(f"{stem}.{fmt}", cols)]
    days = day_of(cols["ts"], cfg)
    return [(f"{stem}-day{d:04d}.{fmt}", {k: v[days == d] for k, v in cols.items()}) for d in np.unique(days)]


def _clear_outputs(out_dir: str) -> None:
    """Removes files of an earlier run (any format) that would mix with this one."""
    stale = [os.path.join(out_dir, f"{t}.{e}") for t in ("items", "item_embeddings", "users")
             for e in FORMATS]
    stale += [os.path.join(out_dir, "ground_truth_intent.parquet"),
              os.path.join(out_dir, "generator_config.json")]
    for sub in ("impressions", "behaviours"):
        for e in FORMATS:
            stale += glob.glob(os.path.join(out_dir, sub, f"part-*.{e}"))
    for path in stale:
        if os.path.isfile(path):
            log.info("removing %s from an earlier run", path)
            os.remove(path)


def generate(cfg: GeneratorConfig, out_dir: str,
             progress: Optional[Callable[[int], None]] = None) -> dict:
    """Writes the synthetic TIR tables under ``out_dir``.

    Args:
      cfg: the generator config (valid: it validates itself when built).
      out_dir: output directory (created; outputs of an earlier run are replaced).
      progress: called with the number of users finished after each chunk.

    Returns:
      A summary: ``rows`` per table, ``ctr``, ``users``, ``items``, ``requests``,
      ``requests_with_click``, ``click_bias``, ``files`` (paths relative to ``out_dir``) and
      ``seconds``.
    """
    t0 = time.time()
    fmt = cfg.format
    os.makedirs(out_dir, exist_ok=True)
    _clear_outputs(out_dir)
    for sub in ("impressions", "behaviours"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    world = build_world(cfg)
    bias = calibrate_bias(world, cfg)
    log.info("generating %d users, %d items (click bias %.3f) into %s", cfg.users,
             world.n_items, bias, out_dir)

    files: list[str] = []
    rows: dict[str, int] = {}

    def rel(path: str) -> str:
        return os.path.relpath(path, out_dir)

    ids = np.arange(1, world.n_items + 1, dtype=np.int64)
    item_path = os.path.join(out_dir, f"items.{fmt}")
    rows["items"] = _write_table(item_path, fmt, {
        "item_id": ids, "cate_id": world.cate + 1, "brand_id": world.brand + 1,
        "price_bucket": world.price})
    emb_path = os.path.join(out_dir, f"item_embeddings.{fmt}")
    if fmt == "csv":
        text = world.emb.astype(str)
        emb_cols = {"item_id": ids,
                    "embedding": np.array([" ".join(r) for r in text.tolist()], dtype=object)}
    else:
        emb_cols = {"item_id": ids, "embedding": world.emb}
    rows["item_embeddings"] = _write_table(emb_path, fmt, emb_cols)
    files += [rel(item_path), rel(emb_path)]

    users_w = _TableWriter(os.path.join(out_dir, f"users.{fmt}"), fmt)
    truth_w = _TableWriter(os.path.join(out_dir, "ground_truth_intent.parquet"), "parquet")
    rows.update(impressions=0, behaviours=0)
    clicks = requests = requests_clicked = 0
    try:
        for chunk in iter_chunks(cfg, world, bias):
            for name in ("impressions", "behaviours"):
                for path, cols in _shards(os.path.join(out_dir, name, f"part-{chunk.index:05d}"), fmt,
                                          getattr(chunk, name), cfg):
                    rows[name] += _write_table(path, fmt, cols)
                    files.append(rel(path))
            users_w.write(chunk.users)
            truth_w.write(chunk.ground_truth)
            clicks += int(chunk.impressions["label"].sum())
            requests += int(chunk.requests["clicks"].shape[0])
            requests_clicked += int((chunk.requests["clicks"] > 0).sum())
            if progress is not None:
                progress(chunk.user_hi - chunk.user_lo + 1)
    finally:
        users_w.close()
        truth_w.close()
    rows["users"], rows["ground_truth_intent"] = users_w.rows, truth_w.rows
    files += [rel(users_w.path), rel(truth_w.path)]

    cfg_path = os.path.join(out_dir, "generator_config.json")
    write_json(cfg_path, dataclasses.asdict(cfg), sort_keys=True)
    files.append(rel(cfg_path))

    summary = {
        "rows": rows,
        "ctr": clicks / rows["impressions"] if rows["impressions"] else 0.0,
        "users": cfg.users,
        "items": world.n_items,
        "requests": requests,
        "requests_with_click": requests_clicked,
        "click_bias": bias,
        "files": files,
        "seconds": round(time.time() - t0, 3),
    }
    log.info("wrote %d impressions (CTR %.4f), %d behaviours in %.1f s", rows["impressions"],
             summary["ctr"], rows["behaviours"], summary["seconds"])
    return summary
