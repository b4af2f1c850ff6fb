"""Feature pipeline: synthetic logs, readers, embedding providers and the Beam labeling job."""
