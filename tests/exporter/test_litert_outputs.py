"""The LiteRT runner's output order: the signature's `output_<position>` names by position (a model with
attribute heads has more than ten outputs: output_10 comes after output_9, not after output_1)."""

from __future__ import annotations

import pytest
from skutag.exporter.formats.litert import signature_order

from skutag.errors import InputError


def test_outputs_are_ordered_by_their_position_not_by_name():
    names = [f"output_{i}" for i in range(12)]
    shuffled = sorted(names)  # output_0, output_1, output_10, output_11, output_2, ...
    assert shuffled[2] == "output_10"
    assert signature_order(shuffled) == names


@pytest.mark.parametrize(
    ("names", "message"),
    [(["output_0", "probs"], "not named"), (["output_0", "output_2"], "do not number")],
)
def test_outputs_skutag_did_not_name_are_refused(names, message):
    with pytest.raises(InputError, match=message):
        signature_order(names)
