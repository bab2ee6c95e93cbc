import csv
import json

import pytest
import torch

from lookalike.train.augment import augment
from lookalike.train.checkpoint import load_checkpoint, model_from_checkpoint
from lookalike.train.config import TrainConfig, muon_lr, parse_duration, resolve, with_planned_length
from lookalike.train.engine import fit
from lookalike.train.schedules import lr_factor

pytestmark = pytest.mark.usefixtures("isolated_home")
SMALL = dict(model="fast", widths=[8, 16, 16], batch_size=12, device="cpu", eval_batch_size=16)


def test_short_run_writes_every_artifact(tiny_folder_dataset, tmp_path):
    events = []
    cfg = TrainConfig(data=str(tiny_folder_dataset), epochs=3, **SMALL)
    result = fit(cfg, tmp_path / "run", on_event=lambda kind, payload: events.append(kind))
    run = tmp_path / "run"
    for name in ("config.json", "metrics.csv", "curves.png", "confusion.png", "last.pt", "best.pt", "result.json"):
        assert (run / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert set(rows[0]) >= {"epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"}
    for r in rows:
        assert 0 <= float(r["train_acc"]) <= 1 and 0 <= float(r["test_acc"]) <= 1 and float(r["test_loss"]) > 0
    assert result["epochs"] == 3 and result["steps"] == 9 and 0 <= result["test_acc"] <= 1
    assert set(result["per_class"]) == {"circle", "square", "triangle"}
    assert sum(map(sum, result["confusion"])) == 12
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["widths"] == [8, 16, 16] and saved["lr"] == muon_lr(3)  # the lr actually used is recorded
    assert events.count("epoch") == 3 and "start" in events
    model, meta = model_from_checkpoint(run / "best.pt")
    assert meta["classes"] == ["circle", "square", "triangle"] and meta["model"] == "fast"
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["scheduler"]["step"] == 9 and ckpt["meta"]["epoch"] == 3 and "optimizer" in ckpt


@pytest.mark.parametrize("whitening", ["linear", "pairs"])
def test_learns_the_generated_classes(tiny_folder_dataset, tmp_path, whitening):
    cfg = TrainConfig(data=str(tiny_folder_dataset), epochs=12, whitening=whitening, **SMALL)
    result = fit(cfg, tmp_path / "run")
    assert result["test_acc"] >= 0.9
    model, meta = model_from_checkpoint(tmp_path / "run" / "last.pt")
    assert meta["model_kwargs"]["whitening"] == whitening and model.whitening == whitening


def test_a_config_saved_before_linear_whitening_existed_resumes_with_pairs():
    saved = resolve(TrainConfig(model="fast", data="x", time_budget=180), "cpu").to_dict()
    del saved["whitening"]  # what every config.json and last.pt held before the field
    assert TrainConfig.from_saved(saved).whitening == "pairs"
    assert resolve(TrainConfig.from_saved(saved), "cpu").whitening == "pairs"  # not today's "linear" for 3 minutes
    assert TrainConfig.from_saved({**saved, "whitening": "linear"}).whitening == "linear"


def test_lab_recipe_is_the_course_template():
    cfg = resolve(TrainConfig(model="lab"), "cpu")
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.epochs) == (0.1, 0.9, 5e-4, 128, 15)
    assert cfg.schedule == "step" and cfg.milestones == [5, 10] and cfg.gamma == 0.1
    lrs = [cfg.lr * lr_factor(e * 10, 150, 10, "step", cfg.milestones, cfg.gamma) for e in range(15)]
    assert lrs[:5] == [0.1] * 5 and all(abs(v - 0.01) < 1e-12 for v in lrs[5:10])
    assert all(abs(v - 0.001) < 1e-12 for v in lrs[10:])


def test_fast_recipe_depends_on_device():
    assert resolve(TrainConfig(model="fast"), "cuda").widths == [64, 256, 256]
    assert resolve(TrainConfig(model="fast", widths=[8, 8, 8]), "cpu").widths == [8, 8, 8]
    assert resolve(TrainConfig(model="fast", time_budget=300), "cpu").widths == [32, 64, 128]
    assert resolve(TrainConfig(model="fast", time_budget=900), "cpu").widths == [32, 128, 256]
    # Short CPU budgets take linear whitening (faster steps); longer CPU runs and GPU runs keep airbench's pairs.
    assert resolve(TrainConfig(model="fast", time_budget=300), "cpu").whitening == "linear"
    assert resolve(TrainConfig(model="fast", time_budget=900), "cpu").whitening == "pairs"
    assert resolve(TrainConfig(model="fast"), "cpu").whitening == "pairs"
    assert resolve(TrainConfig(model="fast", time_budget=300), "cuda").whitening == "pairs"
    assert resolve(TrainConfig(model="fast", time_budget=300, whitening="pairs"), "cpu").whitening == "pairs"
    # CPU runs use Muon, GPU runs airbench94's SGD; each optimizer brings its own settings.
    cpu, gpu = resolve(TrainConfig(model="fast"), "cpu"), resolve(TrainConfig(model="fast"), "cuda")
    assert (cpu.optimizer, cpu.schedule, cpu.lookahead) == ("muon", "linear", False)
    assert (gpu.optimizer, gpu.lr, gpu.lookahead) == ("sgd-sum", 11.5, True)
    sgd_on_cpu = resolve(TrainConfig(model="fast", optimizer="sgd-sum"), "cpu")
    assert (sgd_on_cpu.lr, sgd_on_cpu.schedule, sgd_on_cpu.widths) == (11.5, "onecycle", [32, 128, 256])
    assert cpu.lr == muon_lr(cpu.epochs)  # Muon's lr follows the run's length
    assert resolve(TrainConfig(model="lab", optimizer="muon"), "cpu").lr == muon_lr(15)  # SGD's 0.1 is no Muon angle
    assert resolve(TrainConfig(model="fast", optimizer="muon", lr=0.05), "cpu").lr == 0.05


def test_muon_lr_follows_the_run_length():
    # The measured best angles: 0.06 for 2 epochs, 0.03 for ~8 (5 minutes), 0.025 for ~11 (15 minutes).
    assert muon_lr(2) == pytest.approx(0.06, rel=0.03)
    assert muon_lr(8) == pytest.approx(0.03, rel=0.03)
    assert muon_lr(11) == pytest.approx(0.025, rel=0.03)
    assert muon_lr(0.25) == muon_lr(1)  # a fraction of an epoch takes no wilder step than one epoch
    assert resolve(TrainConfig(model="fast"), "cpu", epochs=4).lr == muon_lr(4)  # the planned length
    assert resolve(TrainConfig(model="fast", lr=0.01), "cpu", epochs=4).lr == 0.01


def test_a_planned_length_sets_muons_lr_as_resolving_for_it_would():
    for request in (TrainConfig(model="fast"), TrainConfig(model="fast", lr=0.01), TrainConfig(model="lab")):
        assert with_planned_length(resolve(request, "cpu"), request, 4) == resolve(request, "cpu", epochs=4)
    assert with_planned_length(resolve(TrainConfig(model="fast"), "cpu"), TrainConfig(model="fast"), 4).lr == muon_lr(4)


def test_resolved_settings_are_all_set_and_small_crops_follow_the_image_side():
    cfg = resolve(TrainConfig(model="lab"), "cpu", input_size=64)
    unset = {k for k, v in cfg.to_dict().items() if v is None}
    assert unset == {"widths", "depth", "whitening", "time_budget", "image_size"}  # fast-only, or "none" by meaning
    assert cfg.crop_size == 48 and resolve(TrainConfig(crop_size=20), "cpu").crop_size == 20


def test_schedules():
    assert lr_factor(0, 100, 10, "onecycle") == pytest.approx(0.2)
    assert lr_factor(23, 100, 10, "onecycle") == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, "onecycle") == pytest.approx(0.07)
    assert lr_factor(50, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine") == pytest.approx(0.0)
    assert lr_factor(5, 100, 10, "linear", warmup=0.1) == pytest.approx(0.5)


@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_augmentation_is_one_seeded_gather(mode):
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(augment(x, torch.Generator(), translate=0, flip=False), x)
    a = augment(x, torch.Generator().manual_seed(1), translate=2, flip=True, pad_mode=mode)
    b = augment(x, torch.Generator().manual_seed(1), translate=2, flip=True, pad_mode=mode)
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.uint8
    # Each output is a window of its own padded input, mirrored or not (the reference: torch's own padding).
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode=mode).to(torch.uint8)
    flipped = 0
    for i in range(16):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        plain = any(torch.equal(a[i], win) for win in windows)
        mirrored = any(torch.equal(a[i], win.flip(-1)) for win in windows)
        assert plain or mirrored
        flipped += mirrored and not plain
    assert 0 < flipped < 16


def test_augmentation_cuts_small_crops():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    a = augment(x, torch.Generator().manual_seed(2), translate=1, flip=True, size=5)
    assert a.shape == (16, 3, 5, 5)
    padded = torch.nn.functional.pad(x.float(), (1, 1, 1, 1), mode="reflect").to(torch.uint8)
    for i in range(16):  # a 5 x 5 window anywhere in the image padded by `translate`, mirrored or not
        windows = [padded[i, :, dy:dy + 5, dx:dx + 5] for dy in range(6) for dx in range(6)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(-1)) for w in windows)


def test_time_budget_plans_and_stores_the_step_count(tiny_folder_dataset, tmp_path):
    events = {}
    cfg = TrainConfig(data=str(tiny_folder_dataset), time_budget=20, crop_size=24, crop_fraction=0.5, **SMALL)
    result = fit(cfg, tmp_path / "run", on_event=lambda k, p: events.setdefault(k, p))
    plan = events["plan"]
    assert plan["total_steps"] >= 1 and plan["images_per_second"] > 0
    assert plan["small_step_seconds"] > 0 and plan["small_step_ratio"] > 0  # both crop sizes were timed
    # After each epoch the step count is fitted again to the measured pace; the checkpoint keeps the latest.
    replans = result["plan"].get("replans", [])
    final_total = replans[-1]["total_steps"] if replans else plan["total_steps"]
    assert result["steps"] == final_total
    scheduler = load_checkpoint(tmp_path / "run" / "last.pt")["scheduler"]
    assert scheduler["total_steps"] == final_total and 0 < scheduler["crop_steps"] < final_total
    assert all(r["after_epoch"] >= 1 for r in replans)


def test_parse_duration():
    assert parse_duration("5m") == 300 and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    assert parse_duration("45") == 45


def test_alternating_flips_mirror_each_image_once_per_two_epochs():
    from lookalike.train.augment import alternating_flips

    idx = torch.arange(1000)
    even, odd = alternating_flips(idx, 0, seed=5, n_total=1000), alternating_flips(idx, 1, seed=5, n_total=1000)
    assert torch.equal(even, ~odd) and 400 < int(even.sum()) < 600
    assert torch.equal(alternating_flips(idx[10:20], 2, 5, 1000), even[10:20])


def test_steps_that_fit_counts_training_and_one_evaluation_per_epoch():
    from lookalike.train.budget import steps_that_fit

    # 65 steps of 1 s and 7 evaluations of 5 s take 100 s; 66 steps would take 101 s.
    assert steps_that_fit(100, 1.0, 5.0, 10) == 65
    assert steps_that_fit(100, 1.0, 5.0, 10, done=20) == 85  # counted on from the steps already taken
    assert steps_that_fit(3, 1.0, 5.0, 10, done=20) == 20  # no time left: nothing more
    # A tail of under a quarter epoch joins the epoch before and shares its evaluation.
    assert steps_that_fit(16, 1.0, 5.0, 10) == 11  # 11 steps, 1 evaluation
    assert steps_that_fit(21, 1.0, 5.0, 10) == 11  # 12 steps would make a second epoch and pay 2 evaluations
    assert steps_that_fit(22, 1.0, 5.0, 10) == 12


def test_a_short_tail_joins_the_last_epoch():
    from lookalike.train.budget import epoch_steps, epochs_between

    assert [epoch_steps(s, 31, 10) for s in (0, 10, 20)] == [10, 10, 11]
    assert epoch_steps(20, 23, 10) == 3 and epoch_steps(20, 32, 10) == 10  # a quarter epoch or more is its own
    assert [epochs_between(0, t, 10) for t in (5, 10, 11, 12, 21, 30)] == [1, 1, 1, 2, 2, 3]
    assert epochs_between(20, 31, 10) == 1


def test_steps_that_fit_costs_small_crop_steps_at_their_own_pace():
    from lookalike.train.budget import steps_that_fit

    # The first half of the steps take 0.5 s: 40 x 0.5 + 40 x 1 + 8 evaluations x 5 = 100 s.
    assert steps_that_fit(100, 1.0, 5.0, 10, small_step_s=0.5, small_fraction=0.5) == 80
    # The same with all steps at full size fits 65: small crops buy 15 more steps.
    assert steps_that_fit(100, 1.0, 5.0, 10, small_step_s=1.0, small_fraction=0.5) == 65


def test_refit_steps_uses_the_pace_of_the_last_epochs():
    from lookalike.train.budget import EpochTiming as T, refit_steps

    # Epochs of 10 steps in 10 s, 5 s of evaluation: 100 s left, minus the confusion plot (1 s) and the margin
    # (3.5 s), fits 6 more epochs after the 20 steps taken, and 1 step that joins the last of them.
    timings = [T(0, 10, 30.0, 9.0, 2.0), T(0, 10, 10.0, 5.0, 0.0), T(0, 10, 10.0, 5.0, 0.0), T(0, 10, 10.0, 5.0, 0.0)]
    assert refit_steps(timings, 100.0, 100.0, tta=0, steps_per_epoch=10, done=20) == (81, 1.0)
    # TTA level 2 turns the last evaluation into 6 passes, 25 s more: 70.5 s fit 45 steps and their 5 evaluations.
    assert refit_steps(timings, 100.0, 100.0, tta=2, steps_per_epoch=10, done=20) == (65, 1.0)
    assert refit_steps(timings, 0.0, 100.0, tta=0, steps_per_epoch=10, done=20) == (21, 1.0)  # over: one more step
    assert refit_steps(timings[:2], 100.0, 100.0, tta=0, steps_per_epoch=10, done=20)[1] == 1.0  # warm-up left out
    assert refit_steps(timings[:1], 100.0, 100.0, tta=0, steps_per_epoch=10, done=10)[1] == 3.0  # unless alone
    # Epochs that mixed small-crop steps (half the time of a full one) and full-size steps: 1 s a full step.
    mixed = [T(10, 0, 5.0, 5.0, 0.0), T(5, 5, 7.5, 5.0, 0.0), T(0, 10, 10.0, 5.0, 0.0)]
    assert refit_steps(mixed, 100.0, 100.0, tta=0, steps_per_epoch=10, done=30, small_ratio=0.5) == (91, 1.0)


def test_tta_evaluation_also_gives_the_plain_result_of_the_same_sweep(tiny_folder_dataset, tmp_path):
    from lookalike.datasets import load_data
    from lookalike.models import create_model
    from lookalike.train.evaluation import evaluate

    data = load_data(str(tiny_folder_dataset))
    torch.manual_seed(0)
    model = create_model("fast", num_classes=len(data.classes), widths=[8, 16, 16], depth=2)
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    plain = evaluate(model, data.test, mean, std, torch.device("cpu"), tta=0, batch_size=5)
    for level in (1, 2):
        ev = evaluate(model, data.test, mean, std, torch.device("cpu"), tta=level, batch_size=5)
        assert ev["plain_acc"] == plain["acc"] and ev["plain_loss"] == pytest.approx(plain["loss"], rel=1e-6)
        assert ev["loss"] != pytest.approx(plain["loss"], rel=1e-6)  # the augmented views did change the logits


def test_a_short_tail_trains_in_the_last_epoch_and_resumes_exactly(tiny_folder_dataset, tmp_path):
    # 36 images in batches of 4: 9 steps an epoch; 19 steps are 2 epochs, the second of 10 steps.
    cfg = TrainConfig(data=str(tiny_folder_dataset), epochs=19 / 9, model="fast", widths=[8, 16, 16],
                      batch_size=4, device="cpu", eval_batch_size=16, seed=2)
    straight = fit(cfg, tmp_path / "straight")
    rows = list(csv.DictReader(open(tmp_path / "straight" / "metrics.csv")))
    assert straight["steps"] == 19 and [(r["epoch"], r["step"]) for r in rows] == [("1", "9"), ("2", "19")]

    def stop_after_first_epoch(kind, payload):
        if kind == "epoch":
            raise KeyboardInterrupt  # what Ctrl-C does: the epoch's checkpoint is already written

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "stopped", on_event=stop_after_first_epoch)
    resumed = fit(TrainConfig(), tmp_path / "stopped", resume=True)
    again = list(csv.DictReader(open(tmp_path / "stopped" / "metrics.csv")))
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert resumed["test_acc"] == straight["test_acc"]


def test_muon_recipe_trains(tiny_folder_dataset, tmp_path):
    cfg = TrainConfig(data=str(tiny_folder_dataset), model="fast", widths=[8, 16, 16], batch_size=12, epochs=6,
                      optimizer="muon", lr=0.05, momentum=0.9, weight_decay=2e-6, schedule="linear",
                      lookahead=False, device="cpu", seed=1)
    result = fit(cfg, tmp_path / "run")
    assert result["test_acc"] > 0.6  # 3 classes: chance is 1/3
