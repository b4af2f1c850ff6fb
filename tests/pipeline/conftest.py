"""Helpers shared by the pipeline tests."""
import pytest

from tirec.pipeline import job


def _read_users(cfg, prep, files: list[str], users: int | None = None) -> dict:
    """``{user: tagged blocks}`` read like the job's read step (``job._ReadFn`` on every input
    file); the first ``users`` users in id order when given, else all."""
    per_user: dict = {}
    for table, paths in prep.files.items():
        if not paths:
            continue
        read = job._ReadFn(job._TAGS[table], prep.schemas[table], cfg.chunk_rows,
                           tuple(cfg.click_btags), prep.block_fns.get(table))
        for path in paths:
            for tag, value in read.process((files.index(path), path)):
                if tag == "blocks":
                    per_user.setdefault(value[0], []).append(value[1])
    return {u: per_user[u] for u in sorted(per_user)[:users]}


@pytest.fixture(scope="session")
def read_users():
    """:func:`_read_users`: the pipeline's read step, user by user."""
    return _read_users
