"""The station's store: profiles, reference images, inspections and reviews in SQLite or PostgreSQL.

A bottom-layer package (stdlib, numpy, SQLAlchemy Core and zsad's own bottom modules only): ``zsad serve`` and the
coming folder watcher keep their history here. See ``Station`` for the API.
"""

from zsad.store.schema import SCHEMA_VERSION
from zsad.store.station import (
    MAX_LIMIT,
    REVIEW_LABELS,
    SCORING_FIELDS,
    AlreadyFinished,
    Filters,
    Page,
    Station,
    check_profile_name,
    decode_cursor,
    encode_cursor,
    scoring_key,
)

__all__ = [
    "AlreadyFinished",
    "check_profile_name",
    "MAX_LIMIT",
    "REVIEW_LABELS",
    "SCHEMA_VERSION",
    "SCORING_FIELDS",
    "Filters",
    "Page",
    "Station",
    "decode_cursor",
    "encode_cursor",
    "scoring_key",
]
