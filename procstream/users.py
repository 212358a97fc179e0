"""User names for uids, for the ``{{.Username}}`` template field.

Looking a uid up (``pwd.getpwuid``) may go through NSS -- files, LDAP, sssd -- so we do
it once per uid and keep the answer, as process-exporter does. Unknown uids (common in
containers) are kept too, as their decimal string, so they don't cost a lookup per new
process.
"""

from __future__ import annotations

import pwd
from collections.abc import Callable

__all__ = ["UserNames"]


def _lookup(uid: int) -> str:
    return pwd.getpwuid(uid).pw_name


class UserNames:
    """uid -> user name, cached; ``str(uid)`` when the uid has no name, "" for -1.

    Call ``name(uid)`` (or the instance itself) from the poller thread whenever a new
    process needs its user's name; call ``clear()`` to forget everything (e.g. after
    /etc/passwd changed). One dict read per hit; concurrent misses from several threads
    are harmless (both look up, the last write wins with the same answer)."""

    __slots__ = ("_cache", "_lookup", "_max_entries")

    def __init__(
        self,
        lookup: Callable[[int], str] = _lookup,
        max_entries: int = 65536,
    ) -> None:
        # lookup raises KeyError for an unknown uid, as pwd.getpwuid does
        self._lookup = lookup
        self._cache: dict[int, str] = {}
        # a bound, so a host cycling through container uid ranges can't grow us forever
        self._max_entries = max_entries

    def name(self, uid: int) -> str:
        """The user name of ``uid``; ``str(uid)`` if it has none; "" if uid is -1 (unknown)."""
        cached = self._cache.get(uid)
        if cached is not None:
            return cached
        if uid == -1:
            return ""
        try:
            found = self._lookup(uid)
        except (KeyError, OverflowError, ValueError):
            found = str(uid)
        if len(self._cache) >= self._max_entries:
            self._cache.clear()
        self._cache[uid] = found
        return found

    __call__ = name

    def clear(self) -> None:
        """Forget every cached name; the next ``name`` call looks up again."""
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)
