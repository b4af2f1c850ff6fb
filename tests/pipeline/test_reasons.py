"""Drop and dead-letter reasons: declared once, their strings fixed, all in the row balance."""
import ast
import pathlib

import pytest

from tirec.pipeline import io
from tirec.pipeline.embeddings import DeadLetter
from tirec.pipeline.job import row_accounting
from tirec.pipeline.reasons import DeadReason, Drop

# The strings stats.json and the dead-letter files carried before the enums: dashboards read them.
STATS_KEYS = ["impressions_dropped_no_trigger", "impressions_dropped_user_cap",
              "behaviours_dropped_user_cap"]
DEAD_REASONS = ["malformed_line", "bad_encoding", "missing_field", "bad_id", "bad_int", "bad_float",
                "bad_string", "bad_timestamp", "bad_label", "bad_embedding", "negative_id",
                "negative_price", "wrong_embedding_size", "nan_embedding", "zero_embedding",
                "duplicate_id", "unknown_item", "non_finite_feature", "duplicate_row", "unexpected_field"]


def test_values_are_the_published_strings():
    assert [d.value for d in Drop] == STATS_KEYS
    assert sorted(r.value for r in DeadReason) == sorted(DEAD_REASONS)


def _literal_reasons():
    """(place, reason) of each string literal the code folders pass as a dead-letter reason:
    to ``dead_letter`` / ``DeadLetter`` (or as the default of ``m.get("reason", ...)`` there), to
    the readers' ``flag`` / ``reject`` helpers, and the 4-tuples ``(row, reason, field, value)`` of
    the formats' ``reject`` hooks and Alimama's ``checks``."""
    root = pathlib.Path(__file__).resolve().parents[2]
    out = []
    for path in sorted(root.glob("pipeline/*.py")) + sorted(root.glob("tirec/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            args = []
            if isinstance(node, ast.Call) and len(node.args) > 1:
                name = getattr(node.func, "id", getattr(node.func, "attr", None))
                if name in ("dead_letter", "DeadLetter", "flag", "reject"):
                    arg = node.args[1]
                    is_get = isinstance(arg, ast.Call) and getattr(arg.func, "attr", None) == "get"
                    args = [arg.args[-1] if is_get else arg]
            elif (isinstance(node, ast.FunctionDef) and node.name == "reject"
                  or isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "checks"):
                args = [t.elts[1] for t in ast.walk(node) if isinstance(t, ast.Tuple) and len(t.elts) == 4]
            out += [(f"{path.name}:{node.lineno}", a.value) for a in args
                    if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return out


def test_every_literal_reason_in_the_code_is_a_member():
    literal = _literal_reasons()
    assert len(literal) >= 20  # the scan finds the readers' calls
    assert [(where, r) for where, r in literal if r not in set(DeadReason)] == []


@pytest.mark.parametrize("kind", ["id", "int", "ts", "label", "float", "str", "vector"])
def test_every_reader_type_error_is_a_member(kind):
    # the typed reader dead-letters a value it cannot convert as bad_<kind name>
    assert f"bad_{io._reason_kind(kind)}" in set(DeadReason)


@pytest.mark.parametrize("reason", list(DeadReason))
def test_every_member_makes_a_plain_string_record(reason):
    rec = io.dead_letter("impressions", reason, field="f", value=1)
    assert rec["reason"] == reason.value and type(rec["reason"]) is str
    assert DeadLetter("item_embeddings", reason.value).to_dict()["reason"] == reason.value


@pytest.mark.parametrize("make", [
    pytest.param(lambda: io.dead_letter("impressions", "bad_thing"), id="dead_letter"),
    pytest.param(lambda: DeadLetter("item_embeddings", "bad_thing"), id="embeddings_DeadLetter"),
])
def test_undeclared_reason_is_refused(make):
    with pytest.raises(ValueError, match="'bad_thing' is not declared in .*DeadReason"):
        make()


@pytest.mark.parametrize("drop", list(Drop))
def test_every_drop_enters_the_balance(drop):
    # 10 rows of the drop's table in: 7 written/used, 2 dead-lettered, 1 dropped
    imp = drop.table == "impressions"
    other = "behaviours" if imp else "impressions"
    dead = {f"{drop.table}/bad_id": 2, f"{other}/bad_id": 0}
    drops = {d.value: int(d == drop) for d in Drop}
    acc = row_accounting(impressions_in=10 if imp else 7, behaviours_in=7 if imp else 10, written=7,
                         behaviours_used=7, dead=dead, drops=drops)
    assert acc["balanced"] and acc["behaviours_balanced"], acc
    assert acc["dropped"] == int(imp) and acc["deadlettered"] == 2 * int(imp)
    unbalanced = row_accounting(impressions_in=10 if imp else 7, behaviours_in=7 if imp else 10,
                                written=7, behaviours_used=7, dead=dead, drops={})
    assert not (unbalanced["balanced"] and unbalanced["behaviours_balanced"])


def test_undeclared_drop_is_refused():
    with pytest.raises(ValueError):
        row_accounting(1, 0, 0, 0, {}, {"impressions_dropped_elsewhere": 1})
