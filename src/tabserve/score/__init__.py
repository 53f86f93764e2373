"""Batch scoring of files and tables (``tabserve score``): the service's own prediction path over record batches.

Never imported by the serving process; needs the ``score`` extra (pyarrow, tqdm) or ``spark`` for the Spark job.
"""
