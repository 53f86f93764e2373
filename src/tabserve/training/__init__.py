"""Training, evaluation, calibration and export (needs the ``train`` extra; never imported by serving)."""
