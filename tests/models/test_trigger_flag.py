"""The models that read the trigger's ``present`` flag (has_trigger: 0 when an impression has
no trigger) refuse, when they are built, a FeatureSpec without it, naming themselves; none
fails later inside a trace."""
import dataclasses

import pytest

from tirec.config import load_config
from tirec.models.data import load_data_spec, load_item_vectors
from tirec.models.train import build_model

SMALL = ["model.emb_dim=4", "model.tower=[16,8]", "model.din_hidden=[8,4]", "model.hist_buckets=1"]


@pytest.mark.parametrize("name, label", [("dian", "DIAN"), ("dihn", "DIHN"), ("dei2n", "DEI2N"),
                                         ("daian", "DAIAN")])
def test_a_spec_without_the_trigger_flag_fails_at_build_naming_the_model(tiny_data, name, label):
    spec = load_data_spec(tiny_data)
    lacking = dataclasses.replace(spec, features=tuple(f for f in spec.features if f.name != "has_trigger"))
    ids, table, _ = load_item_vectors(tiny_data)
    cfg = load_config(None, SMALL)
    build_model(name, spec, cfg.model, ids, table)  # the full spec builds
    with pytest.raises(ValueError, match=rf"FeatureSpec: {label} needs a trigger input of field 'present' "
                                         r"\(has_trigger: 0 when the impression has no trigger\)"):
        build_model(name, lacking, cfg.model, ids, table)
