"""A setting that a switch of the same model leaves unread, or a shared ``model.*`` setting the
model never reads, is named in a warning when the model is built (DAIAN's switches are in
test_daian_formulas.py); a setting the model reads is not."""
import logging

import pytest

from tirec.models.config import ModelConfig, warn_unread_settings

SMALL = ["model.emb_dim=4", "model.tower=[8]", "model.gapnet.att_units=8", "model.gapnet.att_heads=2"]

# (model, settings with the switch off, the warning, the same settings read)
CASES = [
    ("dien", ["model.dien.aux_weight=0", "model.dien.negatives=table"],
     "model.dien.aux_weight=0: model.dien.negatives='table' not read", ["model.dien.negatives=table"]),
    ("dien", ["model.dien.aux_score=dot", "model.dien.aux_hidden=[8]"],
     "model.dien.aux_score='dot': model.dien.aux_hidden=(8,) not read", ["model.dien.aux_hidden=[8]"]),
    ("gapnet", ["model.gapnet.use_pafs=false", "model.gapnet.pafs_mult=3"],
     "model.gapnet.use_pafs=false: model.gapnet.pafs_mult=3.0 not read", ["model.gapnet.pafs_mult=3"]),
    ("gapnet", ["model.gapnet.use_qaog=false", "model.gapnet.gate_bias=0.5"],
     "model.gapnet.use_qaog=false: model.gapnet.gate_bias=0.5 not read", ["model.gapnet.gate_bias=0.5"]),
    ("gapnet", ["model.gapnet.cgdf=concat", "model.gapnet.cgdf_hidden=[4]"],
     "model.gapnet.cgdf='concat': model.gapnet.cgdf_hidden=(4,) not read", ["model.gapnet.cgdf_hidden=[4]"]),
    ("tin", ["model.tin.time_buckets=8"],
     "model.tin.encoding='position': model.tin.time_buckets=8 not read",
     ["model.tin.encoding=time", "model.tin.time_buckets=8"]),
    # shared settings a model never reads, or reads only under a switch
    ("dien", ["model.din_hidden=[4]"], "model.din_hidden=(4,) not read by DIEN", ["model.tower=[4]"]),
    ("tin", ["model.hist_buckets=1"], "model.hist_buckets=1 not read by TIN", ["model.tower=[4]"]),
    ("qin", ["model.hist_buckets=1"], "model.hist_buckets=1 not read by QIN", ["model.qin.head=tower"]),
    ("dei2n", ["model.din_hidden=[4]"], "model.din_hidden=(4,) not read by DEI2N", ["model.hist_buckets=1"]),
    ("qin", ["model.qin.head=linear", "model.dropout=0.1"],
     "model.dropout=0.1 not read by QIN with model.qin.head=linear",
     ["model.qin.head=tower", "model.dropout=0.1"]),
]


@pytest.mark.parametrize("name,settings,message,read", CASES)
def test_a_switch_names_the_settings_it_leaves_unread(tiny_data, make_model, caplog, name, settings, message,
                                                      read):
    with caplog.at_level("WARNING", logger="tirec.models"):
        make_model(tiny_data, *settings, name=name)
    assert message in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tirec.models"):
        make_model(tiny_data, *read, name=name)
    assert "not read" not in caplog.text


def test_the_rules_compare_with_the_section_defaults(caplog):
    tin = ModelConfig().section("tin")
    rules = (("encoding", "position", ("time_ref", "time_buckets")),)
    log = logging.getLogger("tirec.test")
    assert warn_unread_settings(log, "tin", tin, rules) == []  # nothing changed from the defaults
    time = type(tin)(encoding="time", time_buckets=8)
    assert warn_unread_settings(log, "tin", time, rules) == []  # the switch reads them
