"""Leaf package: the FeatureSpec schema and pure labeling functions (no Beam, no model code)."""
from tirec.features.spec import Feature, FeatureSpec, TableSpec, tir_feature_spec

__all__ = ["Feature", "FeatureSpec", "TableSpec", "tir_feature_spec"]
