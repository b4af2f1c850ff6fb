"""SavedModel export and TF Serving compatible serving."""
