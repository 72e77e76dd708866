"""History stores behind one interface; ``open_store(url)`` picks one by URL.

>>> store = open_store("sqlite:///~/.hybridchat/history.db")   # doctest: +SKIP
>>> sid = store.create_session("alice")                         # doctest: +SKIP
>>> store.append(sid, Turn(user="Hi", model="gemini", reply="Hello!"))  # doctest: +SKIP
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from hybridchat.store.base import HistoryStore, SessionSummary, Turn
from hybridchat.store.resilient import ResilientStore

__all__ = ["HistoryStore", "ResilientStore", "SessionSummary", "Turn", "open_store"]


def open_store(url: str, *, resilient: bool = True) -> HistoryStore:
    """``sqlite:///PATH`` (``~`` allowed) or ``firestore://DATABASE[?project=P]``.

    The store comes wrapped in ``ResilientStore`` (retries, nothing lost while the
    database is down) unless ``resilient=False``.
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        from hybridchat.store.sqlite import SqliteStore

        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"a SQLite store URL is sqlite:///PATH, not {url!r}")
        store: HistoryStore = SqliteStore(path)
    elif parts.scheme == "firestore":
        from hybridchat.store.firestore import FirestoreStore

        project = parse_qs(parts.query).get("project", [None])[0]
        store = FirestoreStore(parts.netloc or "chat-app-db", project=project)
    else:
        raise ValueError(f"unknown store URL {url!r}: use sqlite:///PATH or firestore://DATABASE")
    return ResilientStore(store) if resilient else store
