"""MovieLens ratings as trigger-induced recommendation (TIR) data (``--format movielens``).

Input layout (``ml-latest-small`` and ``ml-25m`` alike; each table may also be sharded or be
Parquet/JSONL, see ``pipeline/SCHEMA.md`` for file discovery):

* ``ratings.csv``: ``userId,movieId,rating,timestamp``;
* ``movies.csv``: ``movieId,title,genres`` (genres ``|``-separated);
* ``tags.csv`` (optional): ``userId,movieId,tag,timestamp``.

MovieLens has no impression log, so the TIR conversion is:

* **Behaviours** = every rating: ``user_id`` <- ``userId``, ``item_id`` <- ``movieId``,
  ``ts`` <- ``timestamp``, plus ``rating`` (float). :class:`RatingBlock` adds the behaviour
  type ``btag``: ``"click"`` when ``rating >= movielens.click_threshold``, else ``"rate"``. The
  job turns ``btag`` into ``hist_btag`` ids and click flags (the default
  ``click_btags=("click",)`` makes the high ratings trigger candidates).
* **Impressions** are derived per user by :class:`RatingImpressions` (the job's ``user_hook``):
  every rating of a catalogue movie is an impression (label 1 when
  ``rating >= click_threshold``, time = rating time), plus popularity-sampled negatives: for each
  rating, ``floor(r)`` plus one more with probability ``r - floor(r)`` movies, where
  ``r = movielens.negatives_per_rating``, drawn (with replacement) with probability proportional
  to each movie's rating count among the movies the user never rated, at the rating's time, with
  label 0. The random generator is ``numpy.random.default_rng([movielens.seed, user_id])`` over
  the user's ratings in a canonical order, so the negatives do not depend on the runner or on
  how the ratings were bundled. ``request_id`` is empty, so a request is (user, trigger).
* **Trigger** (``trigger_from="behaviours"``): the most recent click (rating >= threshold)
  strictly before the impression and at most ``trigger_window`` earlier.
* **Items** from ``movies.csv``: ``cate_id`` = the id of the movie's first listed genre in the
  sorted vocabulary of all genres (1-based, ``(no genres listed)`` included); ``brand_id`` = the
  release year parsed from the title, e.g. ``"Heat (1995)"`` -> 1995 (0 when absent);
  ``price_bucket`` = the number of listed genres capped at 9 (``(no genres listed)`` counts 0).
  MovieLens has no price: ``price_bucket`` is this genre-count stand-in. ``popularity`` = the
  number of ratings of the movie (a rating row repeated in every field counts once).
* **Embeddings**: ``auto`` -> ``tfidf-svd`` over the text "title + genres (split on ``|``) +
  every tag of the movie" (:func:`tirec.pipeline.embeddings.movielens_text`); ``minilm`` encodes
  the same text; ``cooccurrence-svd`` uses the users' time-ordered rating sequences;
  ``precomputed`` reads ``item_embeddings.*`` in the input folder or ``embedding_path``.

Bad movie and tag rows (a tag of a movie missing from ``movies.csv``: ``unknown_item``) are
dead-lettered by the launcher; ratings are validated by the Beam job,
which also dead-letters ratings of movies missing from ``movies.csv`` (reason ``unknown_item``).
Such ratings generate no impressions.
"""
from __future__ import annotations

import logging
import math
import re

import numpy as np

from tirec.pipeline import embeddings as emb
from tirec.pipeline.config import PipelineConfig
from tirec.pipeline.formats import (ITEM_FIELDS, Prepared, SourceFormat, behaviour_sequences,
                                    build_item_table, dedupe, load_vectors, read_table,
                                    warn_unread_embedding_settings)
from tirec.pipeline.io import Column, TableSchema, dead_letter, discover, provenance, read_chunks
from tirec.pipeline.reasons import DeadReason
from tirec.pipeline.items import ItemTable

log = logging.getLogger(__name__)

NO_GENRES = "(no genres listed)"
CLICK, RATE = "click", "rate"
MAX_GENRE_COUNT = 9
TEXT_RECIPE = ("title + genres split on '|' (without '(no genres listed)') + all tags of the "
               "movie, space-joined")
_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{0,4})?\)")

RATINGS = TableSchema("behaviours", (
    Column("user_id", "id", source="userId"), Column("item_id", "id", source="movieId"),
    Column("ts", "ts", source="timestamp"), Column("rating", "float"),
))
MOVIES = TableSchema("movies", (
    Column("item_id", "id", source="movieId"), Column("title", "str"),
    Column("genres", "str", required=False, default=NO_GENRES),
))
TAGS = TableSchema("tags", (Column("item_id", "id", source="movieId"), Column("tag", "str")))


class RatingBlock:
    """Block function for rating chunks: adds ``btag`` (``click``/``rate``), keeps ``rating``.

    Args:
      click_threshold: a rating >= this is a click.
    """

    def __init__(self, click_threshold: float):
        self.click_threshold = float(click_threshold)

    def __call__(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cols = dict(columns)
        cols["btag"] = np.where(cols["rating"] >= self.click_threshold, CLICK, RATE).astype(object)
        return cols


class RatingImpressions:
    """Per-user impression builder (the job's ``user_hook``); see the module docstring.

    Args:
      click_threshold: a rating >= this is a positive impression.
      negatives_per_rating: expected number of sampled negatives per rating (>= 0).
      seed: sampler seed, mixed with the user id.
    """

    def __init__(self, click_threshold: float, negatives_per_rating: float, seed: int):
        if not negatives_per_rating >= 0:
            raise ValueError(f"movielens.negatives_per_rating must be >= 0; received "
                             f"{negatives_per_rating!r}")
        self.click_threshold = float(click_threshold)
        self.negatives_per_rating = float(negatives_per_rating)
        self.seed = int(seed)

    def __call__(self, user_id: int, behs: dict | None, items: ItemTable) -> tuple[dict, dict]:
        """Impressions of one user.

        Args:
          user_id: the user.
          behs: the user's rating columns (``item_id``, ``ts``, ``rating``, ...), or None.
          items: the item table; ``items.popularity`` holds rating counts per movie.

        Returns:
          ``(impression columns, stats)``: columns ``item_id``, ``ts``, ``label``,
          ``request_id`` (empty), ``_file``/``_row`` (the generating rating); stats
          ``{"generated": {"rated": n, "negatives": k}}`` with ``n + k`` rows.
        """
        if behs is None or len(behs["item_id"]) == 0:
            return _empty_impressions(), {"generated": {"rated": 0, "negatives": 0}}
        n_all = len(behs["item_id"])
        file_ = behs.get("_file", np.zeros(n_all, np.int64))
        row = behs.get("_row", np.zeros(n_all, np.int64))
        # Canonical order (time, movie, provenance): independent of how blocks were grouped.
        order = np.lexsort((row, file_, behs["item_id"], behs["ts"]))
        item = np.asarray(behs["item_id"], np.int64)[order]
        ts = np.asarray(behs["ts"], np.int64)[order]
        rating = np.asarray(behs["rating"], np.float64)[order]
        file_, row = np.asarray(file_, np.int64)[order], np.asarray(row, np.int64)[order]
        item_rows, known = items.index(item)
        # Ratings of unknown movies are dead-lettered by the job as behaviours; no impression.
        item, ts, rating = item[known], ts[known], rating[known]
        file_, row = file_[known], row[known]
        n = item.shape[0]

        rng = np.random.default_rng([self.seed, int(user_id)])
        base = math.floor(self.negatives_per_rating)
        frac = self.negatives_per_rating - base
        per_rating = np.full(n, base, dtype=np.int64)
        if frac > 0:
            per_rating += (rng.random(n) < frac).astype(np.int64)
        weights = np.asarray(items.popularity, dtype=np.float64).copy()
        weights[item_rows[known]] = 0.0  # never a movie the user rated
        weights[weights < 0] = 0.0
        cdf = np.cumsum(weights)
        total = float(cdf[-1]) if cdf.size else 0.0
        if total <= 0:
            per_rating[:] = 0
        k = int(per_rating.sum())
        if k:
            draws = np.searchsorted(cdf, rng.random(k) * total, side="right")
            draws = np.minimum(draws, int(np.flatnonzero(weights > 0)[-1]))
            neg_items = items.ids[draws]
        else:
            neg_items = np.zeros(0, np.int64)
        src = np.repeat(np.arange(n), per_rating)
        imps = {
            "item_id": np.concatenate([item, neg_items]).astype(np.int64),
            "ts": np.concatenate([ts, ts[src]]).astype(np.int64),
            "label": np.concatenate([(rating >= self.click_threshold).astype(np.int64),
                                     np.zeros(k, np.int64)]),
            "request_id": np.full(n + k, "", dtype=object),
            "_file": np.concatenate([file_, file_[src]]),
            "_row": np.concatenate([row, row[src]]),
        }
        return imps, {"generated": {"rated": int(n), "negatives": k}}


class MovieLensFormat(SourceFormat):
    """``--format movielens``: MovieLens ratings converted to TIR impressions (module docstring)."""

    name = "movielens"

    def prepare(self, cfg: PipelineConfig) -> Prepared:
        """Reads movies and tags, counts ratings per movie and builds the item table.

        Raises:
          FileNotFoundError: when ``ratings`` or ``movies`` files are missing, or ``precomputed``
            embeddings are requested but none exist.
          ValueError: when no movie row is valid, or the embedding provider is unsupported.
        """
        ml = cfg.movielens
        rating_files = discover(cfg.input, "ratings")
        if not rating_files:
            raise FileNotFoundError(
                f"no ratings files in {cfg.input!r}: expected ratings.csv (userId,movieId,rating,"
                f"timestamp), ratings/*.<ext> or ratings-*.<ext>")
        dead: list[dict] = []
        rows_in: dict[str, int] = {}
        movies, movie_paths = read_table(cfg.input, MOVIES, cfg.chunk_rows, dead, rows_in, required=True)
        if not movies or not len(movies.get("item_id", ())):
            raise ValueError(f"movies table in {cfg.input!r} has no valid row "
                             f"(rows in: {rows_in.get('movies', 0)}; see the dead letters)")
        ids, first = dedupe(movies["item_id"], "movies", dead, movies, movie_paths)
        titles = [str(t) for t in movies["title"][first]]
        genre_lists = [_genres(g) for g in movies["genres"][first]]
        fields, vocab = _item_fields(titles, genre_lists)
        popularity = _rating_counts(rating_files, ids, cfg.chunk_rows)
        tags, n_tags = self._tags(cfg, ids, dead, rows_in)

        files = {"behaviours": rating_files, "users": []}
        art, info = self._embeddings(cfg, ids, titles, movies["genres"][first], tags, files,
                                     dead, rows_in)
        info["tags_used"] = n_tags
        items, info = build_item_table(ids, fields, art, info, popularity=popularity)
        log.info("movielens: %d movies, %d genres, %d tags; %d ratings counted",
                 len(ids), len(vocab), n_tags, int(popularity.sum()))
        return Prepared(
            files=files, schemas={"behaviours": RATINGS},
            items=items, item_fields=ITEM_FIELDS, user_fields=(), context_fields=(),
            trigger_from="behaviours" if cfg.trigger_from == "auto" else cfg.trigger_from,
            embedding_info=info, dead=dead, rows_in=rows_in,
            user_hook=RatingImpressions(ml.click_threshold, ml.negatives_per_rating, ml.seed),
            block_fns={"behaviours": RatingBlock(ml.click_threshold)},
            unique_rows=("behaviours",),  # one rating per user and movie: an equal row is written twice
            notes={"movielens": {
                "genre_vocabulary": vocab,
                "cate_id": "1-based index of the first listed genre in genre_vocabulary",
                "brand_id": "release year parsed from the title, 0 when absent",
                "price_bucket": f"number of listed genres, capped at {MAX_GENRE_COUNT} "
                                f"(MovieLens has no price)",
                "click_threshold": ml.click_threshold,
                "negatives_per_rating": ml.negatives_per_rating,
                "negative_sampling": "popularity (rating count) among movies the user never "
                                     "rated, with replacement, at the rating's time",
                "seed": ml.seed,
                "ratings_counted_for_popularity": int(popularity.sum()),
            }})

    @staticmethod
    def _tags(cfg: PipelineConfig, ids: np.ndarray, dead: list, rows_in: dict
              ) -> tuple[list[list[str] | None], int]:
        """Each catalogue movie's tags (in file order), and how many tags were attached."""
        if not discover(cfg.input, "tags"):
            return [None] * len(ids), 0
        cols, paths = read_table(cfg.input, TAGS, cfg.chunk_rows, dead, rows_in)
        if not cols:
            return [None] * len(ids), 0
        pos = np.minimum(np.searchsorted(ids, cols["item_id"]), len(ids) - 1)
        found = ids[pos] == cols["item_id"]
        dead += _dead_tags(cols, paths, ~found)
        per_movie: dict[int, list[str]] = {}
        for p, tag in zip(pos[found].tolist(), cols["tag"][found].tolist()):  # blank tags: missing_field
            per_movie.setdefault(p, []).append(str(tag).strip())
        return [per_movie.get(i) for i in range(len(ids))], sum(map(len, per_movie.values()))

    @staticmethod
    def _embeddings(cfg: PipelineConfig, ids: np.ndarray, titles: list[str], genres: np.ndarray,
                    tags: list, files: dict, dead: list, rows_in: dict
                    ) -> tuple["emb.EmbeddingArtifact", dict]:
        provider = "tfidf-svd" if cfg.embedding_provider == "auto" else cfg.embedding_provider
        warn_unread_embedding_settings(cfg, provider)
        if provider in ("tfidf-svd", "minilm"):
            texts = emb.movielens_text(titles, [str(g) for g in genres], tags)
            if provider == "tfidf-svd":
                art = emb.tfidf_svd(ids, texts, dim=cfg.emb_dim, seed=cfg.seed)
            else:
                art = emb.minilm(ids, texts)
            return art, {"provider_requested": cfg.embedding_provider, "text_recipe": TEXT_RECIPE}
        if provider == "cooccurrence-svd":
            seqs = behaviour_sequences(files["behaviours"], RATINGS, cfg.chunk_rows)
            art = emb.cooccurrence_svd(seqs, dim=cfg.emb_dim, seed=cfg.seed)
            return art, {"provider_requested": cfg.embedding_provider,
                         "sequences": "each user's ratings ordered by time"}
        if provider == "precomputed":
            art, path = load_vectors(cfg, dead, rows_in)
            return art, {"provider_requested": cfg.embedding_provider, "source": path}
        raise ValueError(f"embedding_provider={cfg.embedding_provider!r} is not supported by the "
                         f"movielens format; use auto, tfidf-svd, minilm, cooccurrence-svd or "
                         f"precomputed")


def _genres(text) -> list[str]:
    """The listed genres of a ``|``-separated string (empty -> ``[NO_GENRES]``)."""
    parts = [g.strip() for g in str(text or "").split("|") if g.strip()]
    return parts or [NO_GENRES]


def release_year(title: str) -> int:
    """The release year in a MovieLens title (last ``(YYYY)`` or ``(YYYY-...)``), else 0."""
    found = _YEAR.findall(str(title))
    return int(found[-1]) if found else 0


def _item_fields(titles: list[str], genre_lists: list[list[str]]
                 ) -> tuple[dict[str, np.ndarray], list[str]]:
    vocab = sorted({g for gl in genre_lists for g in gl})
    index = {g: i + 1 for i, g in enumerate(vocab)}
    cate = np.array([index[gl[0]] for gl in genre_lists], dtype=np.int64)
    year = np.array([release_year(t) for t in titles], dtype=np.int64)
    n_genres = np.array([0 if gl == [NO_GENRES] else len(gl) for gl in genre_lists], dtype=np.int64)
    fields = {"cate_id": cate, "brand_id": year,
              "price_bucket": np.minimum(n_genres, MAX_GENRE_COUNT)}
    return fields, vocab


def _rating_counts(paths: list[str], ids: np.ndarray, chunk_rows: int) -> np.ndarray:
    """Number of valid ratings per catalogue movie, a row repeated in every field counted once
    (the job dead-letters the repeat as ``duplicate_row``; other dead letters are the job's)."""
    parts: list[list[np.ndarray]] = [[], [], [], []]  # user, catalogue position, ts, rating
    for path in paths:
        for chunk, _ in read_chunks(path, RATINGS, chunk_rows):
            c = chunk.columns
            pos = np.minimum(np.searchsorted(ids, c["item_id"]), len(ids) - 1)
            found = ids[pos] == c["item_id"]
            for col, values in zip(parts, (c["user_id"], pos.astype(np.int32), c["ts"], c["rating"])):
                col.append(values[found])
    if not parts[0]:
        return np.zeros(len(ids), dtype=np.float64)
    # one column at a time, its chunks freed as it is joined (ml-25m: 25M ratings)
    user, pos, ts, rating = (_join(parts, i) for i in range(4))
    order = np.lexsort((rating, ts, pos, user))
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = True
    for col in (user, ts, rating):  # one sorted copy at a time (ml-25m: 25M ratings)
        col = col[order]
        repeat[1:] &= col[1:] == col[:-1]
    pos = pos[order]
    repeat[1:] &= pos[1:] == pos[:-1]
    return np.bincount(pos[~repeat], minlength=len(ids)).astype(np.float64)


def _join(parts: list[list[np.ndarray]], i: int) -> np.ndarray:
    """Column ``i`` of ``parts`` as one array; its chunks are released."""
    joined = np.concatenate(parts[i])
    parts[i] = []
    return joined


def _empty_impressions() -> dict[str, np.ndarray]:
    return {"item_id": np.zeros(0, np.int64), "ts": np.zeros(0, np.int64),
            "label": np.zeros(0, np.int64), "request_id": np.zeros(0, dtype=object),
            "_file": np.zeros(0, np.int64), "_row": np.zeros(0, np.int64)}


def _dead_tags(cols: dict, paths: list[str], unknown: np.ndarray) -> list[dict]:
    """Dead letters of the tag rows naming movies missing from movies.csv (``cols`` from
    ``read_table``)."""
    return [dead_letter("tags", DeadReason.UNKNOWN_ITEM, field="movieId", value=cols["item_id"][i],
                        **provenance(cols, i, paths))
            for i in np.flatnonzero(unknown)]
