"""Before serving, a process freezes its start-up objects out of the collector's scans and
collects the young generation less often (messaging.chassis.server.settle_garbage_collector)."""

import gc
import weakref

import pytest

from messaging.chassis.server import YOUNG_COLLECTION_THRESHOLD, settle_garbage_collector

pytestmark = pytest.mark.unit


class Node:
    self: "Node"


@pytest.fixture
def restored_collector():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_start_up_objects_are_frozen_and_young_collections_are_rarer(restored_collector):
    _, middle, old = gc.get_threshold()
    settle_garbage_collector()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, middle, old)


def test_a_cycle_made_after_start_up_is_still_collected(restored_collector):
    settle_garbage_collector()
    node = Node()
    node.self = node
    gone = weakref.ref(node)
    del node
    gc.collect()
    assert gone() is None
