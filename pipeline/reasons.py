"""The reasons a pipeline row can leave the record flow: dead-letter reasons and counted drops.

Every dead-letter record names a :class:`DeadReason`; every counted drop is a :class:`Drop`.
Their values are the strings ``stats.json`` and the dead-letter files carry (dashboards read
them), so a member's value never changes. The row accounting of :mod:`tirec.pipeline.job` sums
the drops over :class:`Drop`, so a new drop joins the balance by being declared here.
"""
from __future__ import annotations

import enum


class DeadReason(enum.StrEnum):
    """Why an input row was dead-lettered (the record's ``reason``)."""

    MALFORMED_LINE = "malformed_line"          # unparseable line (bad JSON, wrong CSV field count)
    BAD_ENCODING = "bad_encoding"              # a line with bytes that are not UTF-8
    MISSING_FIELD = "missing_field"            # a required field empty or absent
    BAD_ID = "bad_id"                          # an id that is not a non-negative integer / out of range
    BAD_INT = "bad_int"
    BAD_FLOAT = "bad_float"
    BAD_STRING = "bad_string"
    BAD_TIMESTAMP = "bad_timestamp"            # not a time, <= 0 or beyond MAX_TS
    BAD_LABEL = "bad_label"                    # a label other than 0 or 1
    BAD_EMBEDDING = "bad_embedding"            # an embedding that is not a list of numbers
    NEGATIVE_ID = "negative_id"
    NEGATIVE_PRICE = "negative_price"
    WRONG_EMBEDDING_SIZE = "wrong_embedding_size"
    NAN_EMBEDDING = "nan_embedding"
    ZERO_EMBEDDING = "zero_embedding"
    DUPLICATE_ID = "duplicate_id"              # a second row for an id (the first is kept)
    DUPLICATE_ROW = "duplicate_row"            # an event equal in every field to an earlier one (kept)
    UNEXPECTED_FIELD = "unexpected_field"      # a JSONL row with a read key its file's first row lacks
    UNKNOWN_ITEM = "unknown_item"              # an event whose item is not in the item table
    NON_FINITE_FEATURE = "non_finite_feature"  # a labeled record holding a NaN or infinite float


class Drop(enum.StrEnum):
    """A counted, documented drop of events that are neither written nor dead-lettered (the
    ``stats.json`` key under ``dropped``)."""

    IMPRESSIONS_NO_TRIGGER = "impressions_dropped_no_trigger"   # no_trigger = drop
    IMPRESSIONS_USER_CAP = "impressions_dropped_user_cap"       # max_events_per_user
    BEHAVIOURS_USER_CAP = "behaviours_dropped_user_cap"         # max_events_per_user

    @property
    def table(self) -> str:
        """The input table whose rows it drops (``impressions`` or ``behaviours``)."""
        return self.value.split("_dropped_")[0]


def dead_reason(reason: str) -> str:
    """``reason`` as the plain string a dead-letter record carries.

    Raises:
      ValueError: ``reason`` is not a :class:`DeadReason` value (declare it there first).
    """
    try:
        return DeadReason(reason).value
    except ValueError:
        raise ValueError(f"dead-letter reason {reason!r} is not declared in "
                         f"tirec.pipeline.reasons.DeadReason; declared: {[r.value for r in DeadReason]}"
                         ) from None
