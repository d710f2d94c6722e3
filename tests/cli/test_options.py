"""Comma-separated CLI options (vib_deploy/cli/options.py): one parser, the option named in every error."""

import pytest

from vib_deploy.cli.options import floats, int_list, seeds
from vib_deploy.errors import UserError


def test_values_parse_and_blanks_are_skipped():
    assert int_list("1, 4,16,", "--concurrency") == (1, 4, 16)
    assert floats("1e-5,3e-5", "--kl-factor") == [1e-5, 3e-5]
    assert seeds("0,1,2") == [0, 1, 2]


@pytest.mark.parametrize(
    "call,message",
    [
        (
            lambda: int_list("16,x", "--batch-sizes"),
            "--batch-sizes takes comma-separated integers, e.g. 16,64; got '16,x'",
        ),
        (lambda: int_list(",", "--concurrency"), "--concurrency needs at least one value"),
        (lambda: floats("1e-4,abc", "--kl-factor"), "--kl-factor takes comma-separated numbers, e.g. 1e-5,3e-5"),
        (lambda: floats("-1", "--kl-factor"), "--kl-factor needs at least one number >= 0"),
        (lambda: seeds("0,0"), "--seeds needs distinct integers; got '0,0'"),
        (lambda: seeds("1.5"), "--seeds takes comma-separated integers"),
    ],
)
def test_bad_values_are_one_user_error_naming_the_option(call, message):
    with pytest.raises(UserError) as e:
        call()
    assert message in str(e.value)
