"""MovieLens and Alimama formats: item tables, dead letters, block functions, impression hook, and
an end-to-end Beam run of each on a tiny fixture written into a temporary folder."""
import glob
import json
import pickle
import zlib

import numpy as np
import pytest

from tirec.pipeline import formats  # before the format modules (formats may import them)
from tirec.pipeline.alimama import (PROFILE_FIELDS, PSEUDO_BASE, AlimamaFormat, BehaviourBlock,
                                    ImpressionBlock, ProfileBlock, apply_block, parse_brand,
                                    price_bucket, pseudo_item_id)
from tirec.pipeline.config import MovieLensConfig, PipelineConfig
from tirec.pipeline.items import ItemTable
from tirec.pipeline.movielens import MovieLensFormat, RatingBlock, RatingImpressions, release_year

DAY = 86400
T0 = 1_600_041_600  # 2020-09-14 00:00:00 UTC
WINDOW = 4 * 3600

# ---- MovieLens fixture --------------------------------------------------------------------------

MOVIES = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,Jumanji (1995),Adventure|Children|Fantasy
3,Heat (1995),Action|Crime|Thriller
4,"American President, The (1995)",Comedy|Drama|Romance
5,Babylon 5,Sci-Fi
6,Hyena Road,(no genres listed)
7,Alien (1979),Horror|Sci-Fi
8,Se7en (a.k.a. Seven) (1995),Mystery|Thriller
9,Cosmos (1980),Documentary
10,Big Lebowski (1998),Comedy|Crime
11,Matrix (1999),Action|Sci-Fi|Thriller
12,Casablanca (1942),Drama|Romance|War
x13,Broken (2001),Drama
14,Many (2000),Action|Adventure|Animation|Children|Comedy|Crime|Documentary|Drama|Fantasy|Horror
"""
# sorted genre vocabulary, 1-based
GENRES = ["(no genres listed)", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Horror", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War"]
TAGS = """userId,movieId,tag,timestamp
1,1,pixar,1600000000
2,1,toys,1600000001
3,11,cyberpunk,1600000002
4,99,orphan,1600000003
5,3,,1600000004
"""
RATING_VALUES = [5.0, 2.0, 4.5, 4.0, 3.0, 1.5, 5.0, 3.5]
MOVIE_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14]


def _ratings_csv() -> str:
    rows = ["userId,movieId,rating,timestamp"]
    for user in range(1, 13):
        movies = [MOVIE_IDS[(user + 3 * k) % len(MOVIE_IDS)] for k in range(8)]
        for k, movie in enumerate(dict.fromkeys(movies)):
            day = 0 if k < 5 else 1
            ts = T0 + day * DAY + 8 * 3600 + user * 60 + k * 1800
            rows.append(f"{user},{movie},{RATING_VALUES[(user + k) % 8]},{ts}")
    rows.append(f"3,99,4.0,{T0 + 9 * 3600}")          # unknown movie: job dead letter
    rows.append(f"4,2,abc,{T0 + 9 * 3600}")           # bad rating: job dead letter
    return "\n".join(rows) + "\n"


@pytest.fixture()
def ml_dir(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "movies.csv").write_text(MOVIES)
    (d / "tags.csv").write_text(TAGS)
    (d / "ratings.csv").write_text(_ratings_csv())
    return d


def test_release_year():
    assert release_year("Heat (1995)") == 1995
    assert release_year("Se7en (a.k.a. Seven) (1995)") == 1995
    assert release_year("Babylon 5") == 0
    assert release_year("Show (2007-)") == 2007
    assert release_year("Show (1994-1998) ") == 1994


def test_movielens_prepare_items_and_dead_letters(ml_dir):
    prep = MovieLensFormat().prepare(PipelineConfig(input=str(ml_dir), format="movielens",
                                                    chunk_rows=4, emb_dim=8))
    items = prep.items
    assert items.ids.tolist() == MOVIE_IDS
    f = {k: dict(zip(items.ids.tolist(), v.tolist())) for k, v in items.fields.items()}
    assert prep.item_fields == ("cate_id", "brand_id", "price_bucket")
    g = {name: i + 1 for i, name in enumerate(GENRES)}
    assert prep.notes["movielens"]["genre_vocabulary"] == GENRES
    cate = f["cate_id"]
    assert (cate[1], cate[3], cate[5], cate[6], cate[12]) == (
        g["Adventure"], g["Action"], g["Sci-Fi"], g["(no genres listed)"], g["Drama"])
    assert (f["brand_id"][1], f["brand_id"][4], f["brand_id"][5], f["brand_id"][8],
            f["brand_id"][12]) == (1995, 1995, 0, 1995, 1942)
    assert (f["price_bucket"][1], f["price_bucket"][6], f["price_bucket"][9],
            f["price_bucket"][14]) == (5, 0, 1, 9)
    # popularity = valid ratings of catalogue movies (the unknown movie 99 and "abc" not counted)
    ratings = _ratings_csv().splitlines()[1:-2]
    expected_pop = {m: sum(1 for r in ratings if int(r.split(",")[1]) == m) for m in MOVIE_IDS}
    assert dict(zip(items.ids.tolist(), items.popularity.tolist())) == expected_pop
    norms = np.linalg.norm(items.vectors, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)  # every movie has text
    assert items.vectors.dtype == np.float32
    info = prep.embedding_info
    assert info["provider"] == "tfidf-svd" and "title" in info["text_recipe"]
    assert info["tags_used"] == 3  # pixar, toys, cyberpunk; 'orphan' names an unknown movie
    dead = sorted((d["table"], d["reason"], d["field"], d["value"]) for d in prep.dead)
    assert dead == [("movies", "bad_id", "movieId", "x13"), ("tags", "missing_field", "tag", ""),
                    ("tags", "unknown_item", "movieId", "99")]
    orphan = next(d for d in prep.dead if d["reason"] == "unknown_item")
    assert orphan["row"] == 3 and orphan["file"].endswith("tags.csv")
    assert prep.rows_in == {"movies": 14, "tags": 5}
    assert prep.user_fields == () and prep.context_fields == ()
    assert prep.trigger_from == "behaviours"
    assert set(prep.files) >= {"behaviours"} and prep.files["behaviours"][0].endswith("ratings.csv")
    assert not prep.files.get("impressions")
    # everything handed to Beam pickles
    pickle.loads(pickle.dumps((prep.user_hook, prep.block_fns, prep.schemas)))


def test_movielens_popularity_counts_a_repeated_rating_row_once(ml_dir):
    # the job dead-letters a rating row equal in every field to another (duplicate_row), so the
    # negative sampler's popularity counts it once; the same user re-rating later counts twice
    base = _ratings_csv().splitlines()[1:-2]
    extra = [f"7,3,4.0,{T0 + 5}", f"7,3,4.0,{T0 + 5}", f"7,3,4.0,{T0 + 5}",  # one rating, thrice
             f"7,4,2.0,{T0 + 5}", f"7,4,3.0,{T0 + 5}", f"7,4,2.0,{T0 + 6}"]    # three ratings
    (ml_dir / "ratings.csv").write_text(_ratings_csv() + "\n".join(extra) + "\n")
    for chunk_rows in (2, 1000):  # repeats in other chunks are found too
        prep = MovieLensFormat().prepare(PipelineConfig(input=str(ml_dir), format="movielens",
                                                        chunk_rows=chunk_rows, emb_dim=8))
        pop = dict(zip(prep.items.ids.tolist(), prep.items.popularity.tolist()))
        before = {m: sum(1 for r in base if int(r.split(",")[1]) == m) for m in (3, 4)}
        assert (pop[3], pop[4]) == (before[3] + 1, before[4] + 3)
        assert prep.notes["movielens"]["ratings_counted_for_popularity"] == len(base) + 4


def test_rating_block_adds_btag_and_keeps_rating():
    block = RatingBlock(4.0)
    cols = {"user_id": np.array([1, 1, 2]), "item_id": np.array([1, 2, 3]),
            "ts": np.array([10, 20, 30]), "rating": np.array([4.0, 3.5, 5.0])}
    out = block(cols)
    assert out["btag"].tolist() == ["click", "rate", "click"]
    np.testing.assert_array_equal(out["rating"], [4.0, 3.5, 5.0])
    assert "btag" not in cols  # input not mutated


def _items(n=20, pop=None):
    ids = np.arange(1, n + 1, dtype=np.int64)
    return ItemTable(ids=ids, fields={"cate_id": np.ones(n, np.int64)},
                     vectors=np.zeros((n, 2), np.float32),
                     popularity=np.ones(n) if pop is None else np.asarray(pop, float))


def _behs(item, ts, rating):
    n = len(item)
    return {"item_id": np.array(item, np.int64), "ts": np.array(ts, np.int64),
            "rating": np.array(rating, float), "btag_id": np.zeros(n, np.int64),
            "is_click": np.zeros(n, bool), "_file": np.zeros(n, np.int64),
            "_row": np.arange(n, dtype=np.int64)}


def test_rating_hook_three_ratings_one_negative_each():
    hook = RatingImpressions(click_threshold=4.0, negatives_per_rating=1.0, seed=7)
    items = _items()
    behs = _behs([3, 5, 9], [100, 200, 300], [5.0, 2.0, 4.5])
    imps, stats = hook(42, behs, items)
    assert stats == {"generated": {"rated": 3, "negatives": 3}}
    assert len(imps["item_id"]) == 6
    assert sorted(imps["label"].tolist()) == [0, 0, 0, 0, 1, 1]
    rated = dict(zip(imps["item_id"][:3].tolist(), imps["label"][:3].tolist()))
    assert rated == {3: 1, 5: 0, 9: 1}
    negs = imps["item_id"][3:]
    assert not set(negs.tolist()) & {3, 5, 9}
    assert sorted(imps["ts"][3:].tolist()) == [100, 200, 300]  # one negative at each rating time
    assert (imps["label"][3:] == 0).all()
    assert list(imps["request_id"]) == [""] * 6
    # deterministic per (seed, user), independent of the order the ratings arrive in
    perm = [2, 0, 1]
    again, _ = hook(42, {k: v[perm] for k, v in behs.items()}, items)
    for k in ("item_id", "ts", "label"):
        np.testing.assert_array_equal(np.sort(again[k]), np.sort(imps[k]))
    np.testing.assert_array_equal(again["item_id"], imps["item_id"])
    assert pickle.loads(pickle.dumps(hook))(42, behs, items)[0]["item_id"].tolist() == \
        imps["item_id"].tolist()


def test_rating_hook_popularity_fraction_and_edge_cases():
    # only items 1 and 2 have popularity; the user rated item 1, so every negative is item 2
    pop = np.zeros(20)
    pop[[0, 1]] = [5, 3]
    hook = RatingImpressions(4.0, 2.0, 0)
    imps, stats = hook(1, _behs([1, 7], [10, 20], [4.0, 1.0]), _items(pop=pop))
    assert stats["generated"] == {"rated": 2, "negatives": 4}
    assert imps["item_id"][2:].tolist() == [2, 2, 2, 2]
    # fractional ratio: floor + Bernoulli(fraction) per rating
    hook = RatingImpressions(4.0, 1.5, 3)
    counts = [hook(u, _behs(list(range(1, 11)), list(range(10)), [3.0] * 10), _items(50))[1]
              ["generated"]["negatives"] for u in range(200)]
    assert all(10 <= c <= 20 for c in counts)
    assert 14 < np.mean(counts) < 16
    # unknown movies generate nothing (the job dead-letters those ratings)
    imps, stats = RatingImpressions(4.0, 1.0, 0)(1, _behs([999, 3], [10, 20], [5.0, 5.0]), _items())
    assert stats["generated"] == {"rated": 1, "negatives": 1} and 999 not in imps["item_id"]
    # no ratings at all
    imps, stats = RatingImpressions(4.0, 1.0, 0)(1, None, _items())
    assert stats["generated"] == {"rated": 0, "negatives": 0} and len(imps["ts"]) == 0
    # nothing left to sample
    imps, stats = RatingImpressions(4.0, 1.0, 0)(1, _behs([1, 2], [1, 2], [5.0, 1.0]),
                                                 _items(2))
    assert stats["generated"] == {"rated": 2, "negatives": 0}
    with pytest.raises(ValueError, match="negatives_per_rating"):
        RatingImpressions(4.0, -1.0, 0)


def test_movielens_precomputed_vectors(ml_dir, caplog):
    ids = np.array([1, 3, 11, 500], np.int64)  # 500 is not a movie
    vecs = np.array([[3, 4], [1, 0], [0, 2], [1, 1]], np.float32)
    np.save(ml_dir / "item_embeddings.ids.npy", ids)
    np.save(ml_dir / "item_embeddings.npy", vecs)
    with caplog.at_level("WARNING", logger="tirec.pipeline.formats"):
        prep = MovieLensFormat().prepare(PipelineConfig(input=str(ml_dir), format="movielens",
                                                        embedding_provider="precomputed", emb_dim=8))
    assert "pipeline.emb_dim=8 not read: the item vectors come from embedding_provider=precomputed" in caplog.text
    row = dict(zip(prep.items.ids.tolist(), range(len(prep.items.ids))))
    np.testing.assert_allclose(prep.items.vectors[row[1]], [0.6, 0.8], atol=1e-6)
    np.testing.assert_allclose(prep.items.vectors[row[3]], [1, 0], atol=1e-6)
    info = prep.embedding_info
    assert info["provider"] == "precomputed" and info["items_with_vector"] == 3
    assert info["vectors_without_item"] == 1 and info["fallback_items"] == len(MOVIE_IDS) - 3
    (ml_dir / "item_embeddings.npy").unlink()
    (ml_dir / "item_embeddings.ids.npy").unlink()
    with pytest.raises(FileNotFoundError, match="embedding_path"):
        MovieLensFormat().prepare(PipelineConfig(input=str(ml_dir), format="movielens",
                                                 embedding_provider="precomputed"))


def test_movielens_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="ratings"):
        MovieLensFormat().prepare(PipelineConfig(input=str(tmp_path), format="movielens"))
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(FileNotFoundError, match="movies"):
        MovieLensFormat().prepare(PipelineConfig(input=str(tmp_path), format="movielens"))


# ---- Alimama fixture ----------------------------------------------------------------------------

AD_FEATURE = """adgroup_id,cate_id,campaign_id,customer,brand,price
1,10,100,1000,500,0.0
2,10,100,1000,NULL,1.0
3,11,101,1001,501,3.0
4,11,102,1002,502,1000000.0
5,12,103,1003,503,abc
6,12,104,1004,504,1e9
7,13,105,1005,,7.0
8,13,106,1006,xyz,7
"""
# ad: (cate_id, brand_id, price_bucket, campaign_id, customer)
ADS = {1: (10, 500, 0, 100, 1000), 2: (10, 0, 1, 100, 1000), 3: (11, 501, 2, 101, 1001),
       4: (11, 502, 19, 102, 1002), 6: (12, 504, 20, 104, 1004), 7: (13, 0, 3, 105, 1005)}
PROFILE_HEADER = ("userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,"
                  "shopping_level,occupation,new_user_class_level ")
PIDS = ("430548_1007", "430539_1007")
BEH_PAIRS = [(10, "500"), (10, "NULL"), (11, "501"), (11, "502"), (13, ""), (99, "7")]


def _alimama_files():
    raw = ["user,time_stamp,adgroup_id,pid,nonclk,clk"]
    beh = ["user,time_stamp,btag,cate,brand"]
    prof = [PROFILE_HEADER]
    ads = [1, 2, 3, 4, 6, 7]
    for user in range(1, 13):
        for day in (0, 1):
            base = T0 + day * DAY + 10 * 3600 + user * 120
            for k in range(4):  # behaviours before the impressions
                cate, brand = BEH_PAIRS[(user + k + day) % len(BEH_PAIRS)]
                beh.append(f"{user},{base - 3600 + k * 600},{('pv', 'cart', 'fav', 'buy')[k]},"
                           f"{cate},{brand}")
            # a click, then impressions 10 min .. 5 h later (the last ones out of the window)
            raw.append(f"{user},{base},{ads[user % 6]},{PIDS[0]},0,1")
            for k, gap in enumerate((600, 1800, 3 * 3600, 5 * 3600)):
                clk = int((user + k) % 3 == 0)
                ad = ads[(user + k + 1) % 6]
                raw.append(f"{user},{base + gap},{ad},{PIDS[k % 2]},{1 - clk},{clk}")
        if user <= 10:
            pvalue = "" if user == 2 else str(user % 3 + 1)
            prof.append(f"{user},{user},{user % 13},{user % 2 + 1},{user % 7},{pvalue},"
                        f"{user % 3 + 1},{user % 2},{user % 4 + 1}")
    raw.append(f"1,{T0 + 11 * 3600},3,{PIDS[0]},1,1")   # clk + nonclk = 2: bad_label
    raw.append(f"2,{T0 + 11 * 3600},5,{PIDS[1]},1,0")   # ad 5 was dead-lettered: unknown_item
    beh.append(f"3,{T0 + 9 * 3600},pv,10,abc")          # brand not an id: bad_id
    raw.append(raw[1])                                   # written twice: duplicate_row
    beh.append(beh[1])                                   # two views of one (cate, brand): kept
    return "\n".join(raw) + "\n", "\n".join(beh) + "\n", "\n".join(prof) + "\n"


@pytest.fixture()
def ali_dir(tmp_path):
    d = tmp_path / "ali"
    d.mkdir()
    raw, beh, prof = _alimama_files()
    (d / "raw_sample.csv").write_text(raw)
    (d / "behavior_log.csv").write_text(beh)
    (d / "user_profile.csv").write_text(prof)
    (d / "ad_feature.csv").write_text(AD_FEATURE)
    return d


def test_alimama_repeated_ad_is_dead_lettered_at_its_file_and_row(ali_dir):
    # ad_feature in two shards; the second repeats ad 3 after a bad row: the letter names the
    # shard and the repeat's data row there (not its index among the kept rows)
    (ali_dir / "ad_feature.csv").unlink()
    shards = ali_dir / "ad_feature"
    shards.mkdir()
    head, *rows = AD_FEATURE.splitlines()
    (shards / "part-0.csv").write_text("\n".join([head] + rows) + "\n")
    (shards / "part-1.csv").write_text(f"{head}\n9,13,107,1007,xyz,1.0\n3,99,1,1,1,1.0\n")
    prep = AlimamaFormat().prepare(PipelineConfig(input=str(ali_dir), format="alimama",
                                                  chunk_rows=3, emb_dim=4))
    repeat = [d for d in prep.dead if d["reason"] == "duplicate_id"]
    assert [(d["table"], d["value"], d["row"]) for d in repeat] == [("ad_feature", "3", 1)]
    assert repeat[0]["file"].endswith("part-1.csv")
    row = prep.items.ids.tolist().index(3)
    assert int(prep.items.fields["cate_id"][row]) == 11  # the first row kept


def test_alimama_helpers():
    brands, bad = parse_brand(np.array(["12", "NULL", "", "null", "x", "-3", "1000000", "7.0"],
                                       dtype=object))
    assert brands.tolist() == [12, 0, 0, 0, 0, 0, 0, 7]
    assert bad.tolist() == [False, False, False, False, True, True, True, False]
    assert price_bucket(np.array([0.0, 1.0, 3.0, 1e6, 1e9])).tolist() == [0, 1, 2, 19, 20]
    assert pseudo_item_id(np.array([10]), np.array([500])).tolist() == [10 ** 12 + 10 ** 7 + 500]


def test_alimama_prepare_items_users_and_dead_letters(ali_dir):
    prep = AlimamaFormat().prepare(PipelineConfig(input=str(ali_dir), format="alimama",
                                                  chunk_rows=7, emb_dim=4))
    items = prep.items
    pseudo = sorted(int(pseudo_item_id(c, 0 if b in ("", "NULL") else int(b)))
                    for c, b in BEH_PAIRS)
    assert items.ids.tolist() == sorted(ADS) + pseudo
    assert prep.item_fields == ("cate_id", "brand_id", "price_bucket", "campaign_id", "customer")
    rows = {i: tuple(int(items.fields[f][r]) for f in prep.item_fields)
            for r, i in enumerate(items.ids.tolist())}
    for ad, expected in ADS.items():
        assert rows[ad] == expected, ad
    assert rows[PSEUDO_BASE + 99 * 10 ** 6 + 7] == (99, 7, 0, 0, 0)
    assert rows[PSEUDO_BASE + 10 * 10 ** 6] == (10, 0, 0, 0, 0)
    norms = np.linalg.norm(items.vectors, axis=1)
    assert np.all(np.isclose(norms, 1.0, atol=1e-5) | (norms == 0))
    # an ad shares the vector of its (cate_id, brand) pseudo item
    row = dict(zip(items.ids.tolist(), range(len(items.ids))))
    for ad, (cate, brand, *_) in ADS.items():
        key = int(pseudo_item_id(cate, brand))
        if key in row and norms[row[key]] > 0:
            np.testing.assert_allclose(items.vectors[row[ad]], items.vectors[row[key]], atol=1e-6)
    assert np.linalg.norm(items.vectors[row[1]]) > 0.99  # (10, 500) is in behavior_log
    info = prep.embedding_info
    assert info["provider"] == "cooccurrence-svd" and "pseudo items" in info["stand_in"]
    dead = sorted((d["table"], d["reason"], d["field"], d["value"]) for d in prep.dead)
    assert dead == [("ad_feature", "bad_float", "price", "abc"),
                    ("ad_feature", "bad_id", "brand", "xyz")]
    assert prep.user_fields == PROFILE_FIELDS
    assert prep.context_fields == ("pid",)
    assert prep.trigger_from == "impressions"
    notes = prep.notes["alimama"]
    n_beh = len(_alimama_files()[1].splitlines()) - 1
    assert notes["rows_read"] == {"ad_feature.csv": 8, "behavior_log.csv": n_beh}
    assert prep.rows_in == {"ad_feature": 8}
    pickle.loads(pickle.dumps((prep.block_fns, prep.schemas)))


def test_alimama_block_functions():
    imp = ImpressionBlock()
    cols = {"user_id": np.array([1, 1, 2]), "item_id": np.array([3, 4, PSEUDO_BASE + 1]),
            "ts": np.array([5, 6, 7]), "label": np.array([1, 1, 0]), "nonclk": np.array([0, 1, 1]),
            "pid": np.array(["430548_1007", "430539_1007", "430548_1007"], dtype=object)}
    assert imp.reject(cols) == [(1, "bad_label", "clk+nonclk", "clk=1,nonclk=1"),
                                (2, "bad_id", "adgroup_id", str(PSEUDO_BASE + 1))]
    out, keep, bad = apply_block(imp, cols)
    assert keep.tolist() == [True, False, False] and len(bad) == 2
    assert set(out) == {"user_id", "item_id", "ts", "label", "ctx_pid"}
    assert out["ctx_pid"].tolist() == [zlib.crc32(b"430548_1007") % 2 ** 31]
    beh = BehaviourBlock()
    cols = {"user_id": np.array([1, 1, 1]), "ts": np.array([1, 2, 3]),
            "btag": np.array(["pv", "buy", "pv"], dtype=object), "cate": np.array([10, 11, 12]),
            "brand": np.array(["500", "NULL", "abc"], dtype=object)}
    assert beh.reject(cols) == [(2, "bad_id", "brand", "abc")]
    out, keep, _ = apply_block(beh, cols)
    assert out["item_id"].tolist() == [PSEUDO_BASE + 10 * 10 ** 6 + 500, PSEUDO_BASE + 11 * 10 ** 6]
    assert set(out) == {"user_id", "ts", "btag", "item_id"}
    prof = ProfileBlock()({"user_id": np.array([1]), "user_new_user_class_level ": np.array([3])})
    assert set(prof) == {"user_id", "user_new_user_class_level"}


def test_alimama_profile_header_checked(ali_dir):
    (ali_dir / "user_profile.csv").write_text("userid,cms_segid\n1,2\n")
    with pytest.raises(ValueError, match="cms_group_id"):
        AlimamaFormat().prepare(PipelineConfig(input=str(ali_dir), format="alimama"))


def test_alimama_rejects_text_providers(ali_dir):
    with pytest.raises(ValueError, match="tfidf-svd"):
        AlimamaFormat().prepare(PipelineConfig(input=str(ali_dir), format="alimama",
                                               embedding_provider="tfidf-svd"))


# ---- end to end ---------------------------------------------------------------------------------

def _run(input_dir, out_dir, fmt, **kw):
    from tirec.pipeline import job

    formats.FORMATS.setdefault("movielens", MovieLensFormat)
    formats.FORMATS.setdefault("alimama", AlimamaFormat)
    return job.run(PipelineConfig(input=str(input_dir), format=fmt, out=str(out_dir), **kw))


def _records(out_dir):
    import tensorflow as tf

    from tirec.features.example import decode_example
    from tirec.features.spec import FeatureSpec

    spec = FeatureSpec.load(f"{out_dir}/spec.json")
    files = sorted(f for split in ("train", "valid", "eval")
                   for f in glob.glob(f"{out_dir}/{split}/*.tfrecord.gz"))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [decode_example(r.numpy(), spec) for r in dataset]


def _check_tir(records):
    assert records
    for r in records:
        imp = int(r["impression_ts"])
        assert r["has_trigger"] == 1
        assert int(r["trigger_ts"]) < imp and imp - int(r["trigger_ts"]) <= WINDOW
        valid = r["hist_ts"] > 0
        assert int(valid.sum()) == int(r["hist_len"])
        assert np.all(r["hist_ts"][valid] < imp)
        assert np.all(np.diff(r["hist_ts"][valid]) <= 0)  # most recent first


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ml_in")
    (d / "movies.csv").write_text(MOVIES)
    (d / "tags.csv").write_text(TAGS)
    (d / "ratings.csv").write_text(_ratings_csv())
    out = tmp_path_factory.mktemp("ml_out")
    stats = _run(d, out, "movielens", emb_dim=8,
                 movielens=MovieLensConfig(negatives_per_rating=1.0))
    return stats, out


def test_movielens_end_to_end(ml_run):
    stats, out = ml_run
    acc = stats["accounting"]
    assert acc["balanced"] and acc["behaviours_balanced"], acc
    n_ratings = len(_ratings_csv().splitlines()) - 1
    assert stats["rows_in"]["behaviours"] == n_ratings
    gen = stats["impressions_generated"]
    assert gen["rated"] == n_ratings - 2 and gen["negatives"] == gen["rated"]
    assert stats["deadletter"] == {"behaviours/bad_float": 1, "behaviours/unknown_item": 1,
                                   "movies/bad_id": 1, "tags/missing_field": 1, "tags/unknown_item": 1}
    written = sum(stats["written"].values())
    assert stats["written"]["train"] > 0 and stats["written"]["eval"] > 0
    assert acc["written"] == written
    records = _records(out)
    assert len(records) == written
    _check_tir(records)
    # a trigger is a click (rating >= 4) of a catalogue movie; btags are click=1 / rate=5
    ratings = {(int(u), int(m), int(t)): float(r) for u, m, r, t in
               (line.split(",") for line in _ratings_csv().splitlines()[1:-2])}
    for r in records:
        key = (int(r["user_id"]), int(r["trigger_item_id"]), int(r["trigger_ts"]))
        assert ratings[key] >= 4.0
        assert set(r["hist_btag"][r["hist_ts"] > 0].tolist()) <= {1, 5}
    labels = np.array([r["label"] for r in records])
    assert 0 < labels.mean() < 1
    with open(f"{out}/stats.json") as fh:
        assert json.load(fh)["embedding"]["provider"] == "tfidf-svd"


@pytest.fixture(scope="module")
def ali_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("ali_in")
    raw, beh, prof = _alimama_files()
    (d / "raw_sample.csv").write_text(raw)
    (d / "behavior_log.csv").write_text(beh)
    (d / "user_profile.csv").write_text(prof)
    (d / "ad_feature.csv").write_text(AD_FEATURE)
    out = tmp_path_factory.mktemp("ali_out")
    return _run(d, out, "alimama", emb_dim=4), out


def test_alimama_end_to_end(ali_run):
    stats, out = ali_run
    acc = stats["accounting"]
    assert acc["balanced"] and acc["behaviours_balanced"], acc
    raw, beh, _ = _alimama_files()
    assert stats["rows_in"]["impressions"] == len(raw.splitlines()) - 1
    assert stats["rows_in"]["behaviours"] == len(beh.splitlines()) - 1
    assert stats["rows_in"]["users"] == 10
    assert stats["deadletter"]["impressions/unknown_item"] == 1  # ad 5 (price "abc")
    assert stats["deadletter"]["ad_feature/bad_float"] == 1
    assert stats["dropped"]["impressions_dropped_no_trigger"] > 0
    assert stats["written"]["train"] > 0 and stats["written"]["eval"] > 0
    assert stats["users_with_profile"] == 10
    records = _records(out)
    assert len(records) == sum(stats["written"].values())
    _check_tir(records)
    pid_codes = {zlib.crc32(p.encode()) % 2 ** 31 for p in PIDS}
    profile = {int(line.split(",")[0]): line.split(",")
               for line in _alimama_files()[2].splitlines()[1:]}
    for r in records:
        assert int(r["ctx_pid"]) in pid_codes
        assert int(r["target_item_id"]) in ADS and int(r["trigger_item_id"]) in ADS
        cate, brand, pb, camp, cust = ADS[int(r["target_item_id"])]
        assert (r["target_cate_id"], r["target_brand_id"], r["target_price_bucket"],
                r["target_campaign_id"], r["target_customer"]) == (cate, brand, pb, camp, cust)
        hist = r["hist_item_ids"][r["hist_ts"] > 0]
        assert np.all(hist >= PSEUDO_BASE)
        user = int(r["user_id"])
        if user in profile:
            values = [int(v) if v.strip() else 0 for v in profile[user][1:]]
            assert [int(r[f"user_{f}"]) for f in PROFILE_FIELDS] == values
        else:
            assert all(int(r[f"user_{f}"]) == 0 for f in PROFILE_FIELDS)


def test_alimama_cross_column_dead_letters_end_to_end(ali_run):
    stats, _ = ali_run
    assert stats["deadletter"].get("impressions/bad_label") == 1
    assert stats["deadletter"].get("behaviours/bad_id") == 1
    assert stats["deadletter"].get("impressions/duplicate_row") == 1
    assert "behaviours/duplicate_row" not in stats["deadletter"]  # behavior_log has no item id
    assert stats["input_columns"]["repeated_rows"]["behaviours"] >= 1


def test_movielens_rating_written_twice_generates_no_impressions(tmp_path):
    d = tmp_path / "ml"
    d.mkdir()
    (d / "movies.csv").write_text(MOVIES)
    lines = _ratings_csv().splitlines()
    (d / "ratings.csv").write_text("\n".join(lines + [lines[1]]) + "\n")
    stats = _run(d, tmp_path / "out", "movielens", emb_dim=8, movielens=MovieLensConfig(negatives_per_rating=1.0))
    assert stats["deadletter"]["behaviours/duplicate_row"] == 1
    gen = stats["impressions_generated"]
    assert gen["rated"] == len(lines) - 1 - 2 and stats["accounting"]["balanced"]  # 2 bad ratings


def test_generic_auto_provider_names_the_settings_it_does_not_read(tmp_path, caplog):
    from tirec.pipeline import synthetic

    synthetic.generate(synthetic.GeneratorConfig(users=6, days=3, seed=1), str(tmp_path))  # writes item_embeddings
    with caplog.at_level("WARNING", logger="tirec.pipeline.formats"):
        formats.GenericFormat().prepare(PipelineConfig(input=str(tmp_path), format="generic", seed=3))
    assert "pipeline.seed=3 not read: the item vectors come from embedding_provider=precomputed " \
           "(pipeline.embedding_provider=auto)" in caplog.text
    assert formats.warn_unread_embedding_settings(PipelineConfig(seed=3), "cooccurrence-svd") == []
    assert formats.warn_unread_embedding_settings(PipelineConfig(embedding_path="v.npy", emb_dim=8),
                                                  "minilm") == ["emb_dim", "embedding_path"]


def test_movielens_settings_given_to_another_format_are_warned_about(caplog):
    from tirec.pipeline.config import MovieLensConfig

    cfg = PipelineConfig(format="generic", movielens=MovieLensConfig(click_threshold=3.5))
    with caplog.at_level("WARNING", logger="tirec.pipeline.formats"):
        assert formats.warn_unread_format_settings(cfg) == ["movielens.click_threshold"]
    assert "pipeline.movielens.click_threshold not read: only format=movielens reads it" in caplog.text
    assert formats.warn_unread_format_settings(PipelineConfig(format="movielens", movielens=cfg.movielens)) == []


def test_the_files_of_a_table_must_carry_the_same_extra_fields(tmp_path):
    from tirec.pipeline.formats import IMPRESSIONS, header_fields

    a, b, c = (tmp_path / f"impressions-{i}.csv" for i in range(3))
    a.write_text("user_id,item_id,ts,label,ctx_scene\n1,2,3,0,4\n")
    b.write_text("user_id,item_id,ts,label,ctx_scene\n1,2,5,1,4\n")
    c.write_text("user_id,item_id,ts,label\n1,2,6,0\n")
    assert header_fields([str(a), str(b)], IMPRESSIONS) == ["ctx_scene"]
    with pytest.raises(ValueError, match=r"impressions: .*impressions-2.csv has the extra fields \[\] and "
                                         r".*impressions-0.csv \['ctx_scene'\]; every file of a table needs"):
        header_fields([str(a), str(b), str(c)], IMPRESSIONS)
