import pytest

from points.handlers import points_for

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("amount", "points"), [(1, 0), (99, 0), (100, 1), (1200, 12), (1299, 12), (10_000_000, 100_000)]
)
def test_an_order_paid_grants_one_point_per_hundred_minor_units(amount, points):
    assert points_for(amount) == points
