"""Upload order: which waiting file goes first (``[upload] order`` and ``priority``).

A file's place is its sort key ``(rank, time, path)``:

- ``rank``: the index of the first ``priority`` pattern its relative path matches (an earlier pattern
  goes first), or the number of patterns when it matches none (after all of them). Patterns are the
  include/exclude filters' wildcards, matched the same way (against the whole '/'-separated relative
  path, ``*`` also crossing ``/``; ignoring case on Windows);
- ``time``: the file's mtime, oldest first (``order = oldest``, the default: a recorder that deletes
  its oldest clips when its disk fills loses those first) or newest first;
- ``path``: equal mtimes go by path, ascending with ``oldest`` and descending with ``newest``:
  within a rank, ``newest`` is exactly ``oldest`` reversed (so the database's index serves both
  directions without a sort, however many files share an mtime).

The same key orders the backlog in the state database (``files.rank`` is stored with each row, see
:meth:`Store.backlog_page <s3_uploader.store.reads.Reads.backlog_page>`) and the ready jobs the
scheduler hands over (:class:`ReadyHeap`), so a file found later with a better place overtakes the
ones still waiting. Pure: no I/O.
"""
from __future__ import annotations

import fnmatch
import functools
import heapq
import itertools
import os
import re
from typing import Callable, Generic, Iterable, Iterator, List, Sequence, Tuple, TypeVar

ORDERS = ("oldest", "newest")

SortKey = Tuple[int, int, str]


class _Descending(str):
    """A path that sorts in reverse (``newest``'s ties): ``a < b`` is ``str(a) > str(b)``."""

    __slots__ = ()

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)

    def __gt__(self, other: str) -> bool:
        return str.__lt__(self, other)

    def __le__(self, other: str) -> bool:
        return str.__ge__(self, other)

    def __ge__(self, other: str) -> bool:
        return str.__le__(self, other)


class Order:
    """The upload order of one configuration: ``order`` (oldest/newest) and ``priority`` patterns."""

    def __init__(self, order: str = "oldest", priority: Sequence[str] = ()):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, not {order!r}")
        self.order = order
        self.newest = order == "newest"
        self.priority = tuple(priority)
        flags = re.IGNORECASE if os.name == "nt" else 0
        # one regex per pattern (not one alternation): the rank is which pattern matched first
        self._patterns = [re.compile(fnmatch.translate(p), flags | re.DOTALL) for p in self.priority]

    def __repr__(self) -> str:
        return f"Order({self.order!r}, {self.priority!r})"

    @property
    def lowest(self) -> int:
        """The rank of a file no pattern matches (0 without patterns)."""
        return len(self._patterns)

    def rank(self, rel: str) -> int:
        """The index of the first priority pattern ``rel`` matches; :attr:`lowest` when none does."""
        for i, rx in enumerate(self._patterns):
            if rx.match(rel):
                return i
        return len(self._patterns)

    def key(self, rel: str, mtime_ns: int) -> SortKey:
        """The sort key of the file at ``rel`` with modification time ``mtime_ns``: smaller goes first."""
        if self.newest:
            return (self.rank(rel), -mtime_ns, _Descending(rel))
        return (self.rank(rel), mtime_ns, rel)


@functools.lru_cache(maxsize=8)
def order_of(order: str, priority: Tuple[str, ...]) -> Order:
    """The :class:`Order` of these settings, built once (the stages ask for it per page and per batch,
    with the values of the config in force; a reload's new values give a new one)."""
    return Order(order, priority)


T = TypeVar("T")


class ReadyHeap(Generic[T]):
    """Ready jobs, the one with the smallest sort key first: what the scheduler hands over next.

    ``key(item)`` is the item's sort key, taken when it is added (:meth:`rekey` takes them again
    after the order changed); items with equal keys keep the order they came in. Offers the part of
    a deque that :meth:`Dispatch.feed <s3_uploader.dispatch.Dispatch.feed>` uses: ``ready[0]`` (the
    next item), :meth:`popleft` and truthiness. Holds whatever it is given: the scheduler bounds it
    (with the tracker, at ``max_pending_uploads``)."""

    def __init__(self, key: Callable[[T], SortKey], items: Iterable[T] = ()):
        self._key = key
        self._heap: List[Tuple[SortKey, int, T]] = []
        self._seq = itertools.count()
        self.added = 0  # items appended so far, ever: tells a reader whether anything is new since it looked
        self.extend(items)

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def __iter__(self) -> Iterator[T]:
        """The items in the order they will be handed over (a sorted copy)."""
        return iter([item for _, _, item in sorted(self._heap)])

    def __getitem__(self, index: int) -> T:
        """``ready[0]``: the next item. Raises IndexError when empty (or for any other index)."""
        if index != 0 or not self._heap:
            raise IndexError(index)
        return self._heap[0][2]

    def append(self, item: T) -> None:
        heapq.heappush(self._heap, (self._key(item), next(self._seq), item))
        self.added += 1

    def extend(self, items: Iterable[T]) -> None:
        for item in items:
            self.append(item)

    def put_back(self, items: Iterable[T]) -> None:
        """Return items taken with :meth:`popleft` (in the order taken) without counting them as new."""
        for item in items:
            heapq.heappush(self._heap, (self._key(item), next(self._seq), item))

    def popleft(self) -> T:
        return heapq.heappop(self._heap)[2]

    def rekey(self, key: Callable[[T], SortKey]) -> None:
        """Order by ``key`` from now on, the items held included (a reload changed the order)."""
        self._key = key
        self._heap = [(key(item), seq, item) for _, seq, item in self._heap]
        heapq.heapify(self._heap)
