"""Request features: per-model input schema checks, unit normalisation, categories, out-of-distribution flags."""
