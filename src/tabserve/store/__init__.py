"""The prediction log: every served prediction, off the request path, into SQLite or PostgreSQL.

``PredictionLog`` (queue + writer thread + spill/replay) in front of a ``PredictionStore``
(``SqliteStore`` / ``PostgresStore``, chosen by ``open_store``); ``export_log`` writes the log joined
with feedback in each model's training layout; ``prune`` applies retention.
"""

from tabserve.store.base import FeedbackResult, PredictionStore, open_store
from tabserve.store.log import PredictionLog
from tabserve.store.observer import CountingObserver, LogObserver
from tabserve.store.record import PredictionRecord

__all__ = [
    "CountingObserver",
    "FeedbackResult",
    "LogObserver",
    "PredictionLog",
    "PredictionRecord",
    "PredictionStore",
    "open_store",
]
