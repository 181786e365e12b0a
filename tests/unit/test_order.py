"""Upload order (order.py): ranks from the priority patterns, sort keys for oldest and newest, and the
heap of ready jobs that hands over the smallest key first."""

from __future__ import annotations

import pytest

from s3_uploader.keys import Filters
from s3_uploader.order import Order, ReadyHeap, order_of


def test_a_files_rank_is_the_index_of_the_first_pattern_it_matches_and_after_all_of_them_when_none_does():
    o = Order("oldest", ("*.jpg", "cam1/*"))
    assert o.rank("cam0/snap.jpg") == 0
    assert o.rank("cam1/snap.jpg") == 0  # matches both: the earlier pattern wins
    assert o.rank("cam1/clip.mp4") == 1
    assert o.rank("cam2/clip.mp4") == 2 == o.lowest
    assert Order().rank("anything") == 0 == Order().lowest  # no patterns: one rank for all


@pytest.mark.parametrize("pattern", ["*.jpg", "cam1/*", "cam?/a.*", "[ab]*.txt", "sub/deep/x.bin", "*"])
@pytest.mark.parametrize("rel", ["a.jpg", "cam1/b.jpg", "cam1/sub/c.mp4", "cam12/a.mp4", "b.txt", "x/b.txt",
                                 "sub/deep/x.bin", "SUB/deep/x.bin", "cam2/a.x"])
def test_priority_patterns_match_exactly_as_include_does(pattern, rel):
    # '*' crosses '/', the whole relative path is matched: a user writes both the same way
    assert (Order("oldest", (pattern,)).rank(rel) == 0) == Filters(include=(pattern,), skip_hidden=False).file_allowed(rel)


def test_oldest_sorts_by_rank_then_mtime_then_path_and_newest_is_oldest_reversed_within_each_rank():
    files = [("c.mp4", 30), ("b.mp4", 10), ("z.jpg", 50), ("a.mp4", 30), ("y.jpg", 20)]
    oldest = Order("oldest", ("*.jpg",))
    newest = Order("newest", ("*.jpg",))
    assert [r for r, m in sorted(files, key=lambda f: oldest.key(*f))] == ["y.jpg", "z.jpg", "b.mp4", "a.mp4", "c.mp4"]
    # ties (a.mp4 and c.mp4, both 30) go by path: ascending with oldest, descending with newest
    assert [r for r, m in sorted(files, key=lambda f: newest.key(*f))] == ["z.jpg", "y.jpg", "c.mp4", "a.mp4", "b.mp4"]


def test_an_unknown_order_is_refused():
    with pytest.raises(ValueError, match="oldest, newest"):
        Order("random")


def test_the_order_of_the_same_settings_is_built_once_and_new_settings_give_a_new_one():
    assert order_of("oldest", ("*.jpg",)) is order_of("oldest", ("*.jpg",))
    assert order_of("newest", ("*.jpg",)) is not order_of("oldest", ("*.jpg",))


def _heap(order: Order) -> "ReadyHeap[tuple]":
    return ReadyHeap(lambda item: order.key(*item))


def test_the_ready_heap_hands_over_the_smallest_key_first_and_equal_keys_in_arrival_order():
    h = _heap(Order("oldest"))
    for item in [("b", 20), ("a", 30), ("c", 10), ("b", 20)]:
        h.append(item)
    assert len(h) == 4 and h and h[0] == ("c", 10)
    assert list(h) == [("c", 10), ("b", 20), ("b", 20), ("a", 30)]  # a sorted copy: nothing taken
    assert [h.popleft() for _ in range(4)] == [("c", 10), ("b", 20), ("b", 20), ("a", 30)]
    assert not h and len(h) == 0
    with pytest.raises(IndexError):
        h[0]


def test_a_file_ready_later_with_a_better_place_overtakes_the_ones_waiting():
    h = _heap(Order("oldest", ("*.jpg",)))
    for item in [("clip1.mp4", 10), ("clip2.mp4", 20)]:
        h.append(item)
    assert h.popleft() == ("clip1.mp4", 10)
    h.append(("snap.jpg", 99))  # newer than every clip, but a snapshot
    assert h.popleft() == ("snap.jpg", 99)
    assert h.popleft() == ("clip2.mp4", 20)


def test_rekey_sorts_the_items_held_by_the_new_order():
    h = _heap(Order("oldest"))
    for item in [("a", 1), ("b", 2), ("c", 3)]:
        h.append(item)
    newest = Order("newest")
    h.rekey(lambda item: newest.key(*item))
    assert list(h) == [("c", 3), ("b", 2), ("a", 1)]
    h.append(("d", 0))
    assert [h.popleft() for _ in range(4)] == [("c", 3), ("b", 2), ("a", 1), ("d", 0)]
