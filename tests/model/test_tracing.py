"""Channel moves (vib_deploy/model/tracing.py): a channel shuffle is named with its module and refused unless that
module is under model.ignore; then it is traced as one opaque node, the channels through it stay, and the
rest prunes exactly (the pruning record replays through the same opaque tracing)."""

import copy

import pytest
import torch
from torch import nn

from tests.model.test_graph import ARCH_SHAPE, _arch, _prune_and_replay
from vib_deploy.errors import UserError
from vib_deploy.model.graph import plan_groups
from vib_deploy.model.tracing import channel_moves, dependency_graph
from vib_deploy.prune.groups import check_prunable


def test_a_channel_shuffle_in_a_forward_is_refused_naming_the_view_the_module_and_the_ignore_entry():
    with pytest.raises(
        UserError,
        match=r"reordered by view\(1, 2, 8, 8, 8\) of a \(1, 16, 8, 8\) tensor .*channel shuffle.* "
        r"in stage2.0 \(ShuffleUnit\).*list stage2.0 under model.ignore.*so too stage2.1, stage2.2",
    ):
        plan_groups(_arch("shufflenet"), ARCH_SHAPE)
    with pytest.raises(UserError, match=r"so too stage2.2\)$"):  # one ignored, the others still named
        plan_groups(_arch("shufflenet"), ARCH_SHAPE, ignore=["stage2.0"])


def test_ignoring_the_shuffling_units_prunes_the_rest_exactly():
    net = _arch("shufflenet")
    plan = plan_groups(net, ARCH_SHAPE, ignore=["stage2"])
    assert [g.root for g in plan.gated] == ["conv5.0"]
    assert any(f.root == "conv1.0" and "passes through stage2.0, in model.ignore" in f.reason for f in plan.fixed)
    assert check_prunable(net, plan, ARCH_SHAPE) <= 1e-12
    pruned = _prune_and_replay(net, ignore=["stage2"])
    assert pruned.conv5[0].out_channels < 24 and pruned.stage2[1].branch2[0].in_channels == 8


def test_a_shuffle_module_under_ignore_keeps_its_channels_and_prunes_the_branches_inside():
    with pytest.raises(UserError, match=r"channel_shuffle \(channel shuffle\) in stage2.0.shuffle \(ChannelShuffle\)"):
        plan_groups(_arch("shufflenet_modules"), ARCH_SHAPE)
    ignore = [f"stage2.{i}.shuffle" for i in range(3)]
    plan = plan_groups(_arch("shufflenet_modules"), ARCH_SHAPE, ignore)
    roots = [g.root for g in plan.gated]
    assert {"stage2.1.branch2.3", "stage2.2.branch2.3", "conv5.0"} <= set(roots)  # each unit's inner width
    pruned = _prune_and_replay(_arch("shufflenet_modules"), ignore)
    assert pruned.stage2[1].branch2[3].out_channels < 8 and pruned.stage2[1].branch2[5].out_channels == 8


def test_channel_moves_find_the_innermost_module_and_leave_flattening_alone():
    net = _arch("shufflenet_modules")
    with torch.no_grad():
        _, moves = channel_moves(net, lambda: net(torch.zeros((1,) + ARCH_SHAPE)))
    assert list(moves) == [f"stage2.{i}.shuffle" for i in range(3)]
    net = _arch("densenet")  # cat, mean and the flattening view of the head are no channel moves
    with torch.no_grad():
        out, moves = channel_moves(net, lambda: net(torch.zeros((1,) + ARCH_SHAPE)).flatten(1).view(1, 2, 5))
    assert moves == {} and out.shape == (1, 2, 5)


def test_the_opaque_module_is_restored_after_tracing():
    net = _arch("shufflenet")
    reference = copy.deepcopy(net)
    dependency_graph(net, ARCH_SHAPE)
    assert all("forward" not in vars(m) for m in net.modules())
    x = torch.randn((2,) + ARCH_SHAPE)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), reference.eval()(x))


class SpaceToDepth(nn.Module):
    """conv -> PixelUnshuffle(2) (4 channels become 16) -> conv-BN -> conv -> Linear head."""

    def __init__(self):
        super().__init__()
        self.c0, self.s2d = nn.Conv2d(1, 4, 3, padding=1), nn.PixelUnshuffle(2)
        self.c1, self.bn, self.c2, self.head = (
            nn.Conv2d(16, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.Conv2d(8, 6, 1),
            nn.Linear(6, 3),
        )

    def forward(self, x):
        x = self.bn(self.c1(self.s2d(torch.relu(self.c0(x)))))
        return self.head(torch.relu(self.c2(torch.relu(x))).mean((2, 3)))


def test_pixel_unshuffle_is_a_channel_move_too():
    with pytest.raises(
        UserError, match=r"pixel_unshuffle \(trades channels for pixels\) in s2d \(PixelUnshuffle\).*list s2d under"
    ):
        plan_groups(SpaceToDepth(), ARCH_SHAPE)
    plan = plan_groups(SpaceToDepth(), ARCH_SHAPE, ignore=["s2d"])
    assert [g.root for g in plan.gated] == ["c1", "c2"]
    assert [(f.root, f.reason) for f in plan.fixed][0] == (
        "c0",
        "passes through s2d, in model.ignore (it reorders channels)",
    )
    _prune_and_replay(SpaceToDepth(), ignore=["s2d"])
