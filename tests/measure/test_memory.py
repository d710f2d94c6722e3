"""An input batch that cannot fit in memory is refused before it is allocated."""

import pytest

from vib_deploy.errors import UserError
from vib_deploy.measure.memory import available_bytes, refuse_oversized_input


def test_available_bytes_is_a_plausible_figure():
    assert 2**20 < available_bytes() < 2**50


def test_refusal_names_bytes_needed_and_available():
    refuse_oversized_input([1, 64], (1, 28, 28), "--batch", available=64 * 784 * 4)  # exactly fits
    with pytest.raises(UserError, match=r"--batch: the input alone needs 200,704 bytes .* than the 200,703 bytes"):
        refuse_oversized_input([1, 64], (1, 28, 28), "--batch", available=64 * 784 * 4 - 1)


def test_concurrency_multiplies_the_need():
    refuse_oversized_input([64], (784,), "x", copies=1, available=64 * 784 * 4 * 3)
    with pytest.raises(UserError, match=r"4 x 64 x 784 float32"):
        refuse_oversized_input([64], (784,), "--batch-sizes x --concurrency", copies=4, available=64 * 784 * 4 * 3)
