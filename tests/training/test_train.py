"""The training loop: gates frozen while fine-tuning, NaN stops with a clear error, exact resume."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, InterruptAfter
from vib_deploy.errors import UserError
from vib_deploy.runs.directory import RunDir
from vib_deploy.training.loop import TrainSpec, train
from vib_deploy.zoo import gated_model, strip_gates


def _data(n=300):
    rng = np.random.default_rng(0)
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    return SimpleNamespace(x_train=x[:250], y_train=y[:250], x_val=x[250:], y_val=y[250:])


def _spec(**kw):
    base = dict(
        stage="train-vib",
        key="k",
        epochs=3,
        lr=1e-3,
        batch_size=50,
        seed=0,
        device=torch.device("cpu"),
        gate_lr=1e-2,
        kl_factor=1e-3,
    )
    return TrainSpec(**{**base, **kw})


def test_finetune_epochs_freeze_gates(tmp_path):
    torch.manual_seed(0)
    model = gated_model("lenet300")
    spec = _spec(epochs=3, finetune_epochs=2)
    result = train(model, spec, _data(), RunDir(tmp_path))
    assert len(result.history) == 3
    assert result.history[1]["units_alive"] == result.history[2]["units_alive"]
    epoch1 = torch.load(tmp_path / "train-vib.ckpt", weights_only=True)["history"][0]
    assert epoch1["units_alive"] == result.history[0]["units_alive"]
    # with frozen gates the KL is logged but constant
    assert result.history[1]["kl"] == pytest.approx(result.history[2]["kl"])
    assert result.history[0]["kl"] != pytest.approx(result.history[1]["kl"])


def test_nan_loss_stops_with_epoch_and_batch(tmp_path):
    torch.manual_seed(0)
    model = gated_model("lenet300")
    data = _data()
    data.x_train[60] = np.nan  # second batch of the first epoch (batch 50) after shuffling: somewhere in epoch 1
    with pytest.raises(UserError, match=r"loss is nan at epoch 1, batch \d+"):
        train(model, _spec(epochs=2), data, RunDir(tmp_path))
    assert not (tmp_path / "train-vib.ckpt").exists()  # no epoch completed: nothing half-written either


def test_resume_after_interruption_is_bitwise(tmp_path):
    torch.manual_seed(0)
    full = gated_model("lenet300")
    train(full, _spec(epochs=3), _data(), RunDir(tmp_path / "full"))
    run = RunDir(tmp_path / "part")
    torch.manual_seed(0)
    with pytest.raises(UserError, match="interrupted at epoch 3, batch 2; 2 complete epoch"):
        train(gated_model("lenet300"), _spec(epochs=3), _data(), run, InterruptAfter(5 + 5 + 2))
    torch.manual_seed(123)  # a different global seed: the checkpoint's RNG state must win
    resumed = gated_model("lenet300")
    result = train(resumed, _spec(epochs=3), _data(), run)
    assert result.resumed_from == 2
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_of_other_key_is_not_resumed(tmp_path):
    run = RunDir(tmp_path)
    torch.manual_seed(0)
    train(gated_model("lenet300"), _spec(epochs=1, key="old"), _data(), run)
    result = train(gated_model("lenet300"), _spec(epochs=1, key="new"), _data(), run)
    assert result.resumed_from == 0


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_schedule_and_gate_weight_decay_are_what_the_spec_says(tmp_path, schedule):
    torch.manual_seed(0)
    model = gated_model("lenet300")
    train(
        model, _spec(epochs=2, weight_decay=5e-5, gate_weight_decay=5e-5, schedule=schedule), _data(), RunDir(tmp_path)
    )
    groups = torch.load(tmp_path / "train-vib.ckpt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [5e-5, 5e-5]  # weights and gates, as the official code
    # step: lr x 0.5 every 30 epochs, so unchanged after 2; cosine over 2 epochs: 0 after 2
    assert [g["lr"] for g in groups] == ([1e-3, 1e-2] if schedule == "step" else [0.0, 0.0])


def _scripted_validation(monkeypatch, accuracies):
    """Validation returns `accuracies` in turn and keeps a copy of the weights it saw each time."""
    import copy

    import vib_deploy.training.loop as train_module

    seen = []

    def accuracy(model, x, y, device=None):
        seen.append(copy.deepcopy(model.state_dict()))
        return accuracies[len(seen) - 1]

    monkeypatch.setattr(train_module, "accuracy", accuracy)
    return seen


def test_patience_stops_and_keeps_the_best_validation_epoch(tmp_path, monkeypatch):
    seen = _scripted_validation(monkeypatch, [0.5, 0.7, 0.6, 0.7, 0.65, 0.9, 0.9])
    spec = _spec(stage="train-dense", epochs=7, gate_lr=None, kl_factor=None, select_best=True, patience=3)
    model = strip_gates(gated_model("lenet300"))
    result = train(model, spec, _data(), RunDir(tmp_path))
    # epoch 2 is best; 3, 4 (a tie is not better) and 5 are not: stopped after 5 of the 7-epoch cap
    assert len(result.history) == 5 and result.stopped_early and result.best_epoch == 2
    assert all(torch.equal(v, seen[1][k]) for k, v in model.state_dict().items())  # epoch 2's weights
    resumed = train(strip_gates(gated_model("lenet300")), spec, _data(), RunDir(tmp_path))  # the checkpoint had stopped
    assert len(resumed.history) == 5 and resumed.stopped_early and len(seen) == 5


def test_patience_never_reached_runs_to_the_cap(tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [0.1, 0.2, 0.3, 0.2])
    spec = _spec(stage="train-dense", epochs=4, gate_lr=None, kl_factor=None, select_best=True, patience=2)
    result = train(strip_gates(gated_model("lenet300")), spec, _data(), None)
    assert len(result.history) == 4 and not result.stopped_early and result.best_epoch == 3


def test_paper_protocol_records_test_figures_and_changes_nothing_trained(tmp_path):
    """train.vib.paper_protocol's per-epoch test error, widths and FLOPs are recorded only: the weights, gates and
    validation history of a run with it equal a run without it; the reported point is the best test epoch."""
    from vib_deploy.model.layers import count_flops
    from vib_deploy.records import TrainVibRecord
    from vib_deploy.stages.sources import SequentialSource
    from vib_deploy.stages.training import paper_protocol_epoch

    data = _data()
    data.x_test, data.y_test = data.x_val, data.y_val
    runs = {}
    for on in (False, True):
        torch.manual_seed(0)
        model = gated_model("lenet300")
        extra = paper_protocol_epoch(SequentialSource("lenet300"), data) if on else None
        result = train(model, _spec(epochs=2, epoch_extra=extra), data, None)
        runs[on] = (model, result.history)
    (off_model, off_hist), (on_model, on_hist) = runs[False], runs[True]
    assert all(torch.equal(v, on_model.state_dict()[k]) for k, v in off_model.state_dict().items())
    assert [{k: v for k, v in h.items() if k != "paper_protocol"} for h in on_hist] == off_hist
    assert all("paper_protocol" not in h for h in off_hist)  # off unless asked
    assert on_hist[-1] == {**off_hist[-1], **paper_protocol_epoch(SequentialSource("lenet300"), data)(on_model)}
    # with units gated off: the FLOPs of the net pruned from it, and the deterministic net's test error
    from vib_deploy.model.vib import gates

    with torch.no_grad():
        gates(on_model)[1].mu[:200] = 0.0  # 200 of h1's 300 units off
    figures = paper_protocol_epoch(SequentialSource("lenet300"), data)(on_model)["paper_protocol"]
    pruned = SequentialSource("lenet300").prune(on_model)[0].model.float()
    dense_flops = count_flops(strip_gates(gated_model("lenet300")), (1, 28, 28))
    assert figures["flops"] == count_flops(pruned, (1, 28, 28)) < dense_flops
    predicted = pruned(torch.as_tensor(data.x_test)).argmax(1).numpy()
    assert figures["test_error"] == pytest.approx(1 - float((predicted == data.y_test).mean()))

    # the paper's figure: lowest test error (the first of equal ones) among the epochs at or under the last epoch's
    # FLOPs, with that epoch's widths; an earlier, wider net does not count however good its error
    def point(history):
        return TrainVibRecord(history, 1.0, 0.1, 0.1, [], [4, 4]).paper_protocol

    history = [
        {"epoch": 1, "units_alive": [9, 9], "paper_protocol": {"test_error": 0.1, "flops": 90}},
        {"epoch": 2, "units_alive": [5, 4], "paper_protocol": {"test_error": 0.15, "flops": 40}},
        {"epoch": 3, "units_alive": [4, 4], "paper_protocol": {"test_error": 0.2, "flops": 30}},
        {"epoch": 4, "units_alive": [3, 5], "paper_protocol": {"test_error": 0.2, "flops": 28}},
        {"epoch": 5, "units_alive": [4, 4], "paper_protocol": {"test_error": 0.25, "flops": 30}},
    ]
    assert point(history) == {"epoch": 3, "architecture": [4, 4], "test_error": 0.2, "flops": 30}
    gone = {"epoch": 6, "units_alive": [0, 4], "paper_protocol": {"test_error": 0.9, "flops": None}}
    assert point([*history, gone]) is None  # the run ends with no net to deploy
    assert point(off_hist) is None
    # a record written before the point was derived: its stored key is ignored, the history decides
    stored = TrainVibRecord(history, 1.0, 0.1, 0.1, [], [4, 4]).to_json() | {"paper_protocol": {"epoch": 1}}
    assert TrainVibRecord.from_json(stored).paper_protocol == point(history)


def test_ema_is_the_net_validated_and_kept_and_resumes_exactly(tmp_path):
    """train.vib.ema: every epoch validates the average; the model ends holding it; a resumed run ends equal."""
    from vib_deploy.training.ema import WeightEMA

    torch.manual_seed(0)
    model = gated_model("lenet300")
    plain = gated_model("lenet300")
    plain.load_state_dict(model.state_dict())
    spec = _spec(epochs=2, ema=0.9)
    result = train(model, spec, _data(), RunDir(tmp_path / "a"))
    torch.manual_seed(0)
    train(plain, _spec(epochs=2), _data(), None)
    assert not all(torch.equal(v, plain.state_dict()[k]) for k, v in model.state_dict().items())  # not the weights
    from vib_deploy.training.evaluate import accuracy

    assert result.history[-1]["val_acc"] == accuracy(model, _data().x_val, _data().y_val)  # the kept net validated
    # by hand: the average of the weights after every step
    net = torch.nn.Linear(2, 1)
    ema = WeightEMA(net, 0.5)
    before = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(2.0)
    ema.update(net)
    assert torch.allclose(ema.state["weight"], before + 1.0)
    with ema.applied(net):
        assert torch.allclose(net.weight, before + 1.0)
    assert torch.allclose(net.weight, before + 2.0)
    # resume: interrupted in epoch 2, then resumed in a new call, ends where the uninterrupted run ended
    run = RunDir(tmp_path / "b")
    torch.manual_seed(0)
    with pytest.raises(UserError, match="interrupted at epoch 2"):
        train(gated_model("lenet300"), spec, _data(), run, InterruptAfter(5 + 2))
    resumed = gated_model("lenet300")
    train(resumed, spec, _data(), run)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in model.state_dict().items())


def test_vib_training_leaves_no_subnormal_floats_and_prunes_exactly(tmp_path):
    """Past ~1,400 Adam steps the weights of pruned pixels and closed gates' mu shrink into the subnormal range (x86's
    slow path); flush-to-zero (training/numerics.py) keeps them out of parameters, gradients and optimizer state."""
    from vib_deploy.prune.result import check_exact
    from vib_deploy.prune.sequential import prune_sequential
    from vib_deploy.training.numerics import flushes_everywhere, subnormal_count

    rng = np.random.default_rng(0)
    x = np.zeros((160, 1, 28, 28), np.float32)
    x[:, :, 10:18, 10:18] = rng.random((160, 1, 8, 8), dtype=np.float32)  # MNIST-like: a border that is always 0
    y = x[:, 0, 12, 10:20].argmax(1).astype(np.int64)  # learnable: a few pixels keep their gates open
    data = SimpleNamespace(x_train=x[:120], y_train=y[:120], x_val=x[120:], y_val=y[120:])
    torch.manual_seed(0)
    model = gated_model("lenet300")
    spec = _spec(epochs=13, batch_size=1, kl_factor=1e-4, weight_decay=5e-5, gate_weight_decay=5e-5)  # 1,560 steps
    result = train(model, spec, data, RunDir(tmp_path))
    assert result.flush_denormal is True and len(result.epoch_seconds) == 13
    assert not flushes_everywhere()  # restored after training
    ckpt = torch.load(tmp_path / "train-vib.ckpt", weights_only=True)
    state = [t for s in ckpt["optimizer"]["state"].values() for t in s.values()]
    tensors = [*model.parameters(), *(p.grad for p in model.parameters()), *state]
    assert sum(subnormal_count(t) for t in tensors) == 0
    assert 0 < sum(result.history[-1]["units_alive"]) < 784 + 300 + 100  # gates closed (where subnormals come from)
    # exactness is unaffected: the float64 check (1e-9 x logit scale) passes on the weights trained with the flags on
    info = check_exact(prune_sequential(model, (1, 28, 28)), model, torch.from_numpy(x), tolerance=1e-5)
    assert info["max_abs_diff_float64"] <= 1e-12 and info["argmax_agreement"] == 1.0


@pytest.mark.parametrize("gate_weight_decay,groups", [(None, [5e-5, 5e-5]), (0.0, [5e-5, 0.0]), (1e-3, [5e-5, 1e-3])])
def test_gate_weight_decay_is_the_gates_group_and_keyed_only_when_set(gate_weight_decay, groups):
    from vib_deploy.config import load_config
    from vib_deploy.model.vib import gates
    from vib_deploy.runs.directory import stage_key
    from vib_deploy.stages import get_stage
    from vib_deploy.training.loop import _optimizer

    config = load_config(ROOT / "tests/fixtures/keys-f9b6225/mnist-lenet300.yaml")  # as runs were made before: 5e-5
    vib = config.train.vib.model_copy(update={"gate_weight_decay": gate_weight_decay})
    model = gated_model("lenet300")
    opt = _optimizer(model, _spec(weight_decay=vib.weight_decay, gate_weight_decay=vib.gate_decay()))
    assert [g["weight_decay"] for g in opt.param_groups] == groups
    gate_ids = {id(p) for g in gates(model) for p in g.parameters()}
    assert {id(p) for p in opt.param_groups[1]["params"]} == gate_ids  # mu and log sigma^2 of every gate
    section = get_stage("train-vib").section(
        config.model_copy(update={"train": config.train.model_copy(update={"vib": vib})})
    )
    key = stage_key(section, {}, "v")
    if gate_weight_decay is None:  # the key every run of this pipeline was made with before the setting existed
        assert "gate_weight_decay" not in section["vib"]
        assert key == "8f57bd9510313c6b7a146c36d1a641da892374e89b1a1e8f5cf240fe5cbfb29f"
    else:
        assert section["vib"]["gate_weight_decay"] == gate_weight_decay


def test_flush_to_zero_reaches_every_intra_op_thread_and_is_undone():
    from vib_deploy.training.numerics import _openmp_parallel, flush_denormal, flushes_everywhere

    if _openmp_parallel() is None:
        pytest.skip("no OpenMP runtime found in /proc/self/maps (the epoch-end flush is what covers this platform)")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.ones(1 << 20).mul_(2)  # torch's OpenMP threads exist before the flags are set
        torch.set_flush_denormal(True)  # the calling thread's flags alone leave the other thread's share subnormal
        alone = flushes_everywhere()
        torch.set_flush_denormal(False)
        with flush_denormal() as everywhere:
            assert everywhere and flushes_everywhere()
        assert not alone and not flushes_everywhere()
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
