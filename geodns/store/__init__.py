"""The health store shared by checkers (writers) and DNS servers (readers).

This package's names are the contract `checker/` relies on; its modules are
the schema (`schema`), the plain records handed across it (`records`) and the
`Store` API itself (`api`).
"""

from geodns.store.api import Store
from geodns.store.expected import (
    ExpectedConflict,
    ExpectedDelta,
    ExpectedEntry,
    ExpectedHead,
    ExpectedRow,
    ExpectedTotals,
    StoredIndex,
)
from geodns.store.records import (
    AddressState,
    Drain,
    DrainEvent,
    ProbeRecord,
    ProbeResult,
    StateChange,
    StoreError,
    address_text,
)
from geodns.store.schema import SCHEMA_HEAD

__all__ = [
    "SCHEMA_HEAD",
    "AddressState",
    "Drain",
    "DrainEvent",
    "ExpectedConflict",
    "ExpectedDelta",
    "ExpectedEntry",
    "ExpectedHead",
    "ExpectedRow",
    "ExpectedTotals",
    "ProbeRecord",
    "ProbeResult",
    "StateChange",
    "Store",
    "StoreError",
    "StoredIndex",
    "address_text",
]
