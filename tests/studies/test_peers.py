"""Peers at matched FLOPs: the width search hits ±2 % on the real LeNet shapes, Torch-Pruning keeps exactly
the planned widths and the units its criterion ranks first, and slimming's fold is exact."""

import pytest
import torch
from torch import nn

from vib_deploy.errors import UserError
from vib_deploy.model.layers import ChannelScale, count_flops
from vib_deploy.model.vib import gates
from vib_deploy.studies.peers import (
    FLOPS_TOLERANCE,
    METHODS,
    dense_widths,
    fit,
    gated_for_slimming,
    match_widths,
    prune_by_scale,
    prune_to_widths,
    with_widths,
)

SHAPE = (1, 28, 28)


def lenet300() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )


def lenet5() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(800, 500),
        nn.ReLU(),
        nn.Linear(500, 10),
    )


# targets: VIB results of this repository (22.3 K, 248.9 K) and the paper's 19.1 K, plus odd values
@pytest.mark.parametrize(
    "make,target",
    [
        (lenet300, 22_336),
        (lenet300, 19_100),
        (lenet300, 15_000),
        (lenet300, 84_300),
        (lenet5, 248_876),
        (lenet5, 600_000),
        (lenet5, 2_000_000),
    ],
)
def test_width_search_matches_flops_within_two_percent(make, target):
    dense = make()
    widths = match_widths(dense, target, SHAPE)
    assert all(1 <= w <= n for w, n in zip(widths, dense_widths(dense)))
    flops = count_flops(with_widths(dense, widths), SHAPE)
    assert abs(flops / target - 1) <= FLOPS_TOLERANCE
    # and the network Torch-Pruning really makes has those FLOPs
    pruned = prune_to_widths(dense, widths, METHODS["l1"].importance(), SHAPE)
    assert dense_widths(pruned) == widths and count_flops(pruned, SHAPE) == flops


def test_width_search_refuses_an_unreachable_target():
    with pytest.raises(UserError, match="below what one unit per layer costs"):
        match_widths(lenet300(), 500, SHAPE)


@pytest.mark.parametrize("method", ["l1", "random", "magnitude"])
def test_torch_pruning_keeps_the_planned_widths_and_a_working_net(method):
    torch.manual_seed(0)
    dense = lenet5()
    pruned = prune_to_widths(dense, [5, 11, 40], METHODS[method].importance(), SHAPE)
    assert dense_widths(pruned) == [5, 11, 40]
    assert pruned(torch.randn(3, *SHAPE)).shape == (3, 10)


def test_l1_keeps_the_rows_with_the_largest_l1_norm():
    torch.manual_seed(0)
    dense = lenet300()
    norms = dense[1].weight.detach().abs().sum(1)
    pruned = prune_to_widths(dense, [30, 100], METHODS["l1"].importance(), SHAPE)
    kept = sorted(float(v) for v in pruned[1].weight.detach().abs().sum(1))
    top = sorted(float(v) for v in torch.topk(norms, 30).values)
    assert kept == pytest.approx(top)


def test_slimming_prunes_the_smallest_scales_and_folds_them_exactly():
    torch.manual_seed(0)
    dense = lenet5()
    gated = gated_for_slimming(dense)
    assert [g.units for g in gates(gated)] == [20, 50, 500]
    with torch.no_grad():
        for g in gates(gated):
            g.mu.copy_(torch.randn(g.units))  # negative scales too: a max-pool follows the conv gates
    pruned, info = prune_by_scale(gated, [6, 12, 50], SHAPE)
    assert dense_widths(pruned) == [6, 12, 50]
    reference = gated_for_slimming(dense)
    with torch.no_grad():
        for g, src in zip(gates(reference), gates(gated)):
            keep = torch.zeros(g.units, dtype=torch.bool)
            keep[torch.topk(src.mu.abs(), {20: 6, 50: 12, 500: 50}[g.units]).indices] = True
            g.mu.copy_(torch.where(keep, src.mu, torch.zeros_like(src.mu)))
    x = torch.randn(16, *SHAPE)
    reference.train()  # the slimming gates have no noise: z = mu in training mode as well
    assert torch.allclose(pruned(x), reference(x), atol=1e-4)
    # a conv gate with a kept negative scale cannot fold through the max-pool after it: it stays a ChannelScale
    negative = [bool((g.mu[g.mu != 0] < 0).any()) for g in gates(reference)][:2]  # the two conv gates
    assert info["scales_left"] == sum(negative) == sum(isinstance(m, ChannelScale) for m in pruned)


def test_slimming_sparsity_training_shrinks_scales(mnist_root):
    from types import SimpleNamespace

    from vib_deploy.data.datasets import load_splits

    s = load_splits("mnist", None, 200, 700, 100)
    data = SimpleNamespace(x_train=s.x_train, y_train=s.y_train, x_val=s.x_val, y_val=s.y_val)
    gated = gated_for_slimming(lenet300())
    history, _ = fit(gated, data, 2, 1e-3, 50, 0, gate_lr=1e-2, l1=1e-2)
    assert len(history) == 2
    mu = torch.cat([g.mu.detach() for g in gates(gated)])
    assert float(mu.abs().mean()) < 1.0 and all(float(g.logD.max()) == -1e4 for g in gates(gated))


@pytest.mark.parametrize("target", [22_336, 15_000])
def test_pixel_peers_search_pixels_too_and_gather_them_in_the_graph(target):
    from vib_deploy.studies.peers import prune_pixels

    torch.manual_seed(0)
    dense = lenet300()
    pixels, *widths = match_widths(dense, target, SHAPE, pixels=True)
    assert pixels < 784 and abs(count_flops(with_widths(dense, widths, pixels), SHAPE) / target - 1) <= FLOPS_TOLERANCE
    hidden = prune_to_widths(dense, widths, METHODS["l1-pixels"].importance(), SHAPE)
    full, reduced, kept = prune_pixels(hidden, pixels)
    assert len(kept) == pixels and kept == sorted(kept)
    assert abs(count_flops(full, SHAPE) / target - 1) <= FLOPS_TOLERANCE
    columns = hidden[1].weight.detach().abs().sum(0)
    assert float(columns[kept].min()) >= float(columns[[i for i in range(784) if i not in set(kept)]].max())
    x = torch.randn(8, *SHAPE)
    assert torch.equal(full(x), reduced(x.flatten(1)[:, kept]))
    # exact where the dropped pixels are zero: only their columns were removed
    x0 = torch.zeros(8, 784)
    x0[:, kept] = torch.randn(8, pixels)
    assert torch.allclose(full(x0.reshape(8, *SHAPE)), hidden(x0.reshape(8, *SHAPE)), atol=1e-5)


def test_activation_pixel_criterion_weighs_column_norms_by_the_pixels_mean_value():
    from vib_deploy.studies.peer_stage import mean_abs_input
    from vib_deploy.studies.peers import prune_pixels

    torch.manual_seed(0)
    dense = lenet300()
    x = torch.zeros(50, *SHAPE)
    x[:, :, 4:24, 4:24] = torch.rand(50, 1, 20, 20) + 0.1  # only the centre 400 pixels are ever lit
    stats = mean_abs_input(x.numpy())
    assert stats.shape == (784,) and int((stats > 0).sum()) == 400
    _, _, kept = prune_pixels(dense, 100, mean_abs_input=stats)
    lit = set(torch.nonzero(stats > 0).flatten().tolist())
    assert set(kept) <= lit  # a never-lit pixel scores 0, whatever its weights
    score = dense[1].weight.detach().abs().sum(0).double() * stats
    assert float(score[kept].min()) >= float(score[[i for i in range(784) if i not in set(kept)]].max())
    _, _, by_norm = prune_pixels(dense, 100)
    assert not set(by_norm) <= lit  # the column norm alone ignores the data
    with pytest.raises(UserError, match="first Linear takes 784"):
        prune_pixels(dense, 100, mean_abs_input=stats[:10])


def test_peer_fine_tune_keeps_the_best_validation_epoch(mnist_root):
    from types import SimpleNamespace

    from vib_deploy.data.datasets import load_splits
    from vib_deploy.training.evaluate import accuracy

    s = load_splits("mnist", None, 200, 700, 100)
    data = SimpleNamespace(x_train=s.x_train, y_train=s.y_train, x_val=s.x_val, y_val=s.y_val)
    torch.manual_seed(0)
    model = with_widths(lenet300(), [20, 10])
    start = accuracy(model, s.x_val, s.y_val)
    history, kept = fit(model, data, 3, 3e-2, 50, 0, select_best=True)  # a large lr: validation accuracy jumps about
    accs = [start] + [h["val_acc"] for h in history]
    assert len(history) == 3 and kept == max(range(4), key=lambda i: (accs[i], -i))  # ties: the earliest
    assert accuracy(model, s.x_val, s.y_val) == pytest.approx(accs[kept])


def test_pixel_peers_need_an_mlp():
    with pytest.raises(UserError, match="Flatten -> Linear"):
        match_widths(lenet5(), 248_876, SHAPE, pixels=True)


def test_a_non_sequential_net_is_a_clear_error():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

    with pytest.raises(UserError, match="compare is not available for it yet"):
        dense_widths(Net())


# -- scratch and same-width peers, budgets ----------------------------------------------------------
def _config(*sets):
    from tests.conftest import ROOT
    from vib_deploy.config import load_config

    return load_config(ROOT / "pipelines/mnist-lenet300.yaml", ["train.dense.epochs=10", "train.vib.epochs=100", *sets])


@pytest.mark.parametrize("finetune", [0, 20])
def test_every_peer_gets_vibs_budget(finetune):
    from vib_deploy.studies.peer_stage import PeerSpec, epoch_budget

    config = _config()  # a peer's own config: the finetune stage off (it is VIB's); VIB's epochs come with the spec
    vib_after_dense = 100 + finetune
    for method in METHODS:
        b = epoch_budget(method, config, finetune)
        assert b["sparsity"] + b["finetune"] == b["total"]
        if method == "scratch":  # no dense stage to start from: the dense epochs too
            assert b == {"sparsity": 0, "finetune": 10 + vib_after_dense, "total": 10 + vib_after_dense}
        else:
            assert b["total"] == vib_after_dense, method
    slim = epoch_budget("slimming", config, finetune)
    # slimming splits it as VIB does (sparsity = VIB epochs, then the fine-tune epochs); without a finetune stage, half/half
    assert (slim["sparsity"], slim["finetune"]) == ((100, 20) if finetune else (50, 50))
    section = PeerSpec("slimming", 1, "r", 784, (1, 1, 1), vib_finetune_epochs=finetune).section(config)
    assert section["epochs"] == vib_after_dense and section.get("split", [50, 50]) == [
        slim["sparsity"],
        slim["finetune"],
    ]


def test_peer_keys_name_the_kept_epoch_and_are_otherwise_the_old_ones():
    from vib_deploy.stages.registry import keyed_section
    from vib_deploy.studies.peer_stage import PeerSpec

    config = _config()
    t = config.train
    old = {
        "method": "l1",
        "target_flops": 22_336,
        "tolerance": FLOPS_TOLERANCE,
        "slimming_l1": None,
        "epochs": t.vib.epochs,
        "lr": t.vib.lr,
        "gate_lr": t.vib.gate_lr,
        "batch_size": t.batch_size,
        "seed": t.seed,
        "data": keyed_section("data", config.data),
        "prune": config.prune.model_dump(),
    }
    # peers made when the last fine-tune epoch was kept rerun: they now keep the best validation epoch, as VIB's finetune
    old["keep"] = "best validation epoch"
    assert PeerSpec("l1", 22_336, "runs/x", 784, (110, 83, 27)).section(config) == old
    same = PeerSpec("l1-same", 22_336, "runs/x", 784, (110, 83, 27)).section(config)
    assert (
        same["widths"] == [110, 83, 27] and same["pixels_by"] == "|W|*E|x|"
    )  # l1-same's pixels: the data-aware criterion
    assert "pixels_by" not in PeerSpec("l1-same", 1, "r", None, (4, 9, 60)).section(config)  # no input gate: no pixels
    assert "pixels_by" not in PeerSpec("random-same", 1, "r", 784, (110, 83, 27)).section(config)
    assert PeerSpec("act-pixels", 1, "r", 784, (110, 83, 27)).section(config)["pixels_by"] == "|W|*E|x|"
    assert PeerSpec("scratch", 1, "r", 784, (110, 83, 27), "ab").section(config)["vib_model_sha256"] == "ab"
    assert PeerSpec("l1", 1, "r", 784, (110, 83, 27)).vib_widths(2) == (110, [83, 27])
    assert PeerSpec("l1", 1, "r", None, (4, 9, 60)).vib_widths(3) == (None, [4, 9, 60])


def test_scratch_net_is_vibs_architecture_and_pixels_reinitialised():
    from vib_deploy.model.layers import ChannelScale, PixelSelect, describe
    from vib_deploy.studies.peers import scratch_net

    torch.manual_seed(0)
    kept = [3, 10, 50, 700]
    vib = nn.Sequential(
        nn.Flatten(),
        PixelSelect(torch.tensor(kept)),
        nn.Linear(4, 6),
        nn.ReLU(),
        ChannelScale(-torch.ones(6)),
        nn.Linear(6, 5),
        nn.ReLU(),
        nn.Linear(5, 10),
    )
    net = scratch_net(vib)
    assert describe(net) == [s for s in describe(vib) if s["type"] != "scale"]
    assert next(m for m in net if isinstance(m, PixelSelect)).indices.tolist() == kept
    assert dense_widths(net) == [6, 5]
    assert not torch.equal(net[2].weight, vib[2].weight)  # fresh weights
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_same_width_peers_keep_vibs_widths_and_pixel_count():
    from vib_deploy.studies.peers import prune_pixels

    torch.manual_seed(0)
    dense = lenet300()
    for name in ("l1-same", "random-same"):
        method = METHODS[name]
        hidden = prune_to_widths(dense, [83, 27], method.importance(), SHAPE)
        assert dense_widths(hidden) == [83, 27]
        seed = 0 if method.pixel_criterion == "random" else None
        full, reduced, kept = prune_pixels(hidden, 110, seed)
        assert len(kept) == 110 and dense_widths(full) == [83, 27]
        x = torch.randn(4, *SHAPE)
        assert torch.equal(full(x), reduced(x.flatten(1)[:, kept]))
    # random pixels: seeded, and not the L1 choice
    assert prune_pixels(hidden, 110, 0)[2] == prune_pixels(hidden, 110, 0)[2] != prune_pixels(hidden, 110)[2]


def test_records_count_the_kept_pixels_of_a_net_that_gathers_them():
    from types import SimpleNamespace

    from vib_deploy.studies.common import _architecture

    old_scratch = SimpleNamespace(
        architecture=[784, 65, 26], dense_architecture=[784, 300, 100], kept_pixels=list(range(95))
    )
    assert _architecture(old_scratch) == [95, 65, 26]  # type: ignore[arg-type]
    conv = SimpleNamespace(architecture=[4, 9, 60], dense_architecture=[20, 50, 500], kept_pixels=None)
    assert _architecture(conv) == [4, 9, 60]  # type: ignore[arg-type]
