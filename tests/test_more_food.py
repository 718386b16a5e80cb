"""studies/more_food.py: the food arm's extra tiles are picked by name and appended under the food label."""

import numpy as np
import pytest

from studies.more_food import pick_food, with_extra


def tile(value: int) -> np.ndarray:
    return np.full((16, 16, 3), value, np.uint8)


def test_named_tiles_are_picked_in_the_order_asked():
    tiles = [("corpse", tile(1)), ("apple", tile(2)), ("tin", tile(3)), ("egg", tile(4))]
    picked = pick_food(tiles, ["egg", "apple"])
    assert [n for n, _ in picked] == ["egg", "apple"] and picked[0][1][0, 0, 0] == 4


@pytest.mark.parametrize("tiles, message", [([("apple", tile(1))], "not found: egg"),
                                            ([("egg", tile(1)), ("egg", tile(2)), ("apple", tile(3))], "twice")])
def test_a_missing_or_doubled_tile_is_named(tiles, message):
    with pytest.raises(ValueError, match=message):
        pick_food(tiles, ["egg", "apple"])


def test_extra_sprites_come_after_the_bundled_ones_with_the_food_label():
    images, labels = np.zeros((3, 16, 16, 3), np.uint8), np.eye(3, dtype=np.float32)
    out, out_labels = with_extra(images, labels, ["hero", "food", "spell"], [tile(9), tile(8)])
    assert out.shape == (5, 16, 16, 3) and (out[:3] == images).all() and out[3, 0, 0, 0] == 9
    assert out_labels[:3].tolist() == labels.tolist() and out_labels[3:].tolist() == [[0, 1, 0]] * 2
