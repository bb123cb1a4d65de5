import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tsembed.configtools import from_dict
from tsembed.errors import ConfigError
from tsembed.moe import adapter_state_dict
from tsembed.training.config import TrainConfig, load_train_config
from tsembed.training.trainer import Trainer, TrainingDiverged

from .helpers import WORDS, toy_model

COLORS = WORDS[:3]
ANIMALS = WORDS[3:6]


@pytest.fixture(scope="module")
def train_files(tmp_path_factory):
    return write_train_files(tmp_path_factory.mktemp("train"))


def write_train_files(root) -> list[dict]:
    """Two small text-only MMEB train files with learnable structure."""
    files = []
    for name, labels in (("colors", COLORS), ("animals", ANIMALS)):
        path = root / f"{name}.jsonl"
        with path.open("w") as f:
            for i in range(48):
                label = labels[i % len(labels)]
                noise = " ".join(WORDS[6 + (i * 7 + k) % 12] for k in range(3))
                row = {"qry": f"which {name} {noise} {label}", "qry_image_path": "", "pos_text": label,
                       "pos_image_path": "", "neg_text": labels[(i + 1) % len(labels)], "neg_image_path": ""}
                f.write(json.dumps(row) + "\n")
        files.append({"name": name, "path": str(path)})
    return files


def make_config(train_files, tmp_path, **sections) -> TrainConfig:
    data = {
        "data": {"train_files": train_files, "batch_size": 8},
        "schedule": {"steps": 6, "stage1_steps": 3},
        "optim": {"lr": 5e-3, "warmup_steps": 2},
        "run": {"output_dir": str(tmp_path / "run"), "checkpoint_every": 3, "progress": False, "tensorboard": False},
        "model": {"backbone": {"kind": "toy"}},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return from_dict(TrainConfig, data)


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("mode", "window"), [("weight", 1), ("mine", 1), ("weight", 3)])
def test_resume_reproduces_uninterrupted_run(train_files, tmp_path, mode, window):
    sections = {"eans": {"mode": mode}, "loss": {"load_balance_window": window, "load_balance_weight": 0.5}}
    full_cfg = make_config(train_files, tmp_path / "a", **sections)
    Trainer(full_cfg, model=toy_model()).fit()
    full = losses(tmp_path / "a" / "run")

    killed = Trainer(make_config(train_files, tmp_path / "b", **sections), model=toy_model())
    original_step = killed.train_step

    def step_then_die():
        if killed.step == 4:  # killed after step 4, one step past the checkpoint at step 3
            raise KeyboardInterrupt
        return original_step()

    killed.train_step = step_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    resumed = Trainer(make_config(train_files, tmp_path / "b", **sections), model=toy_model())
    resumed.fit(resume="auto")
    assert resumed.step == 6 and resumed.switch_step == 3
    assert losses(tmp_path / "b" / "run") == pytest.approx(full, rel=1e-5)


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "adapters" / "moe_lora.safetensors")


@pytest.mark.parametrize("mode", ["weight", "mine"])
def test_resume_with_data_loader_workers_reproduces_uninterrupted_run(train_files, tmp_path, mode):
    """Batches prepared ahead by two worker processes: straight through, killed and resumed, and prepared on
    the training thread, the three runs see the same batches and random numbers."""
    sections = {"eans": {"mode": mode}, "data": {"num_workers": 2, "prefetch_factor": 2}}
    Trainer(make_config(train_files, tmp_path / "a", **sections), model=toy_model()).fit()

    killed = Trainer(make_config(train_files, tmp_path / "b", **sections), model=toy_model())
    original_step = killed.train_step

    def step_then_die():
        if killed.step == 4:  # killed after step 4, with steps 5 and 6 already prepared by the workers
            raise KeyboardInterrupt
        return original_step()

    killed.train_step = step_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    Trainer(make_config(train_files, tmp_path / "b", **sections), model=toy_model()).fit(resume="auto")
    inline = {**sections, "data": {"num_workers": 0}}
    Trainer(make_config(train_files, tmp_path / "c", **inline), model=toy_model()).fit()

    full = losses(tmp_path / "a" / "run")
    assert len(full) == 6
    assert losses(tmp_path / "b" / "run") == pytest.approx(full, rel=1e-6)
    assert losses(tmp_path / "c" / "run") == pytest.approx(full, rel=1e-6)
    expected = final_weights(tmp_path / "a" / "run")
    for other in ("b", "c"):
        got = final_weights(tmp_path / other / "run")
        assert set(got) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-7, msg=f"{other}: {key}")


def test_stage_switch_by_steps_and_router_lr(train_files, tmp_path):
    cfg = make_config(train_files, tmp_path, schedule={"steps": 5, "stage1_steps": 2, "stage1_router_lr_scale": 0.5,
                                                       "stage2_router_lr_scale": 0.0})
    trainer = Trainer(cfg, model=toy_model())
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    trainer.train_step()
    assert groups["router"]["lr"] == pytest.approx(0.5 * groups["adapters"]["lr"]) and groups["adapters"]["lr"] > 0
    trainer.fit()
    stages = [r["stage"] for r in trainer.history]
    assert stages == [1, 1, 2, 2, 2] and trainer.switch_step == 2
    assert groups["router"]["lr"] == 0.0


def test_backbone_lr_scale_tunes_the_backbone_modules_apart(train_files, tmp_path):
    cfg = make_config(train_files, tmp_path, optim={"lr": 5e-3, "warmup_steps": 2, "backbone_lr_scale": 0.1})
    trainer = Trainer(cfg, model=toy_model())
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    proj = {id(p) for p in trainer.model.backbone.proj.parameters()}
    assert proj and {id(p) for p in groups["backbone"]["params"]} == proj
    assert not proj & {id(p) for g in ("adapters", "router") for p in groups[g]["params"]}
    before = {id(p): p.detach().clone() for p in groups["backbone"]["params"]}
    trainer.train_step()
    assert groups["backbone"]["lr"] == pytest.approx(0.1 * groups["adapters"]["lr"]) and groups["adapters"]["lr"] > 0
    assert any(not torch.equal(before[id(p)], p) for p in groups["backbone"]["params"])
    with pytest.raises(ConfigError, match="optim.backbone_lr_scale"):
        make_config(train_files, tmp_path, optim={"backbone_lr_scale": -1})


def test_stage_switch_by_stability(train_files, tmp_path):
    cfg = make_config(train_files, tmp_path, schedule={
        "steps": 8, "stage1_steps": 8, "switch": "stability", "stability_threshold": 10.0,
        "stability_interval": 2, "min_stage1_steps": 4})
    trainer = Trainer(cfg, model=toy_model())
    trainer.fit()
    assert trainer.switch_step == 4  # the first drift check at or after min_stage1_steps is below 10


def test_training_lowers_the_loss(train_files, tmp_path):
    cfg = make_config(train_files, tmp_path, schedule={"steps": 36, "stage1_steps": 18},
                      run={"checkpoint_every": 100}, loss={"tau": 0.05})
    trainer = Trainer(cfg, model=toy_model())
    trainer.fit()
    first = sum(r["contrastive"] for r in trainer.history[:6]) / 6
    last = sum(r["contrastive"] for r in trainer.history[-6:]) / 6
    assert last < first - 0.2, (first, last)
    assert (tmp_path / "run" / "model" / "tsembed_config.json").is_file()


def test_nan_loss_names_step_and_batch(train_files, tmp_path, monkeypatch):
    cfg = make_config(train_files, tmp_path)
    trainer = Trainer(cfg, model=toy_model())
    monkeypatch.setattr(trainer.objective.log_tau, "data", torch.tensor(math.nan))
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 0 \(stage 1, batch of dataset '(colors|animals)'"):
        trainer.fit()


def test_config_errors_name_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  suite: s\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['data.batchsize'\]"):
        load_train_config(cfg)
    with pytest.raises(ConfigError, match="eans.mode must be one of"):
        load_train_config(None, ["data.suite=s", "eans.mode=hard"])
    with pytest.raises(ConfigError, match=r"schedule.steps: expected an integer, got 'ten'"):
        load_train_config(None, ["data.suite=s", "schedule.steps=ten"])
    with pytest.raises(ConfigError, match="top_k=9 is larger"):
        load_train_config(None, ["data.suite=s", "model.moe={top_k: 9}"])


def test_task_hints_reach_the_routers_and_train(train_files, tmp_path):
    tasked = [{**f, "task": f"{f['name']}-task"} for f in train_files]
    cfg = make_config(tasked, tmp_path, schedule={"stage1_router_lr_scale": 1.0, "stage2_router_lr_scale": 1.0})
    trainer = Trainer(cfg, model=toy_model(level="sequence", task_hints=("colors-task", "animals-task")))
    assert {trainer.data.query_input(i).task for i in range(len(trainer.data))} == {"colors-task", "animals-task"}
    assert all(t.task in ("colors-task", "animals-task") for t in trainer.data.targets)
    trainer.fit()
    hints = [p for n, p in trainer.model.named_parameters() if n.endswith("router.hint")]
    assert hints and all(float(h.detach().abs().sum()) > 0 for h in hints)  # zero at init, learned since
    with pytest.raises(ConfigError, match="unknown keys"):
        make_config([{**train_files[0], "tasks": "x"}], tmp_path)


def test_bf16_autocast_trains_fp32_adapters(train_files, tmp_path):
    """run.precision=bf16 (CPU autocast here): forward passes in bf16, every adapter tensor stays fp32 and
    trains, and the loss stays within bf16's reach of the fp32 run's."""
    schedule = {"steps": 3, "stage1_steps": 1}
    fp32 = Trainer(make_config(train_files, tmp_path / "fp32", schedule=schedule), model=toy_model())
    fp32.fit()
    trainer = Trainer(make_config(train_files, tmp_path / "bf16", schedule=schedule, run={"precision": "bf16"}),
                      model=toy_model())
    before = {k: v.detach().clone() for k, v in adapter_state_dict(trainer.model.backbone).items()}
    trainer.fit()
    after = adapter_state_dict(trainer.model.backbone)
    assert {v.dtype for v in after.values()} == {torch.float32}
    assert all(not torch.equal(before[k], after[k].detach()) for k in before)
    bf16_losses, fp32_losses = losses(tmp_path / "bf16" / "run"), losses(tmp_path / "fp32" / "run")
    assert bf16_losses[0] != fp32_losses[0] and bf16_losses[0] == pytest.approx(fp32_losses[0], rel=0.05)


def test_fp16_is_refused_on_a_cpu_and_unknown_precisions_name_the_key(train_files, tmp_path):
    with pytest.raises(ConfigError, match=r"run.precision='fp16' needs a CUDA device, but this run is on 'cpu'"):
        Trainer(make_config(train_files, tmp_path, run={"precision": "fp16"}), model=toy_model())
    with pytest.raises(ConfigError, match=r"run.precision must be one of \['bf16', 'fp16', 'fp32'\], got 'half'"):
        load_train_config(None, ["data.suite=s", "run.precision=half"])


def test_fp16_steps_unscale_clip_and_checkpoint_the_gradient_scaler(train_files, tmp_path, monkeypatch):
    """The fp16 path on a CPU (refused for real runs, see above; CPU autocast has fp16 kernels to test with)."""
    import tsembed.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "check_precision", lambda precision, device: None)
    cfg = make_config(train_files, tmp_path, run={"precision": "fp16"}, schedule={"steps": 4, "stage1_steps": 2})
    trainer = Trainer(cfg, model=toy_model())
    assert trainer.scaler is not None
    trainer.fit()
    assert all(math.isfinite(r["loss"]) for r in trainer.history)
    # the scaler starts at 2^16: steps whose scaled gradients overflow are skipped and the scale backs off
    assert trainer.scaler.get_scale() < 2.0**16
    assert [r["loss_scale"] for r in trainer.history][-1] == trainer.scaler.get_scale()
    finite = [r["grad_norm"] for r in trainer.history if math.isfinite(r["grad_norm"])]
    assert finite and max(finite) < 1e3  # clipped and logged after unscaling
    state = trainer.state_dict()["grad_scaler"]
    assert state["scale"] == trainer.scaler.get_scale()
    resumed = Trainer(cfg, model=toy_model())
    resumed.load_state_dict(trainer.state_dict(), tmp_path / "run" / "model")
    assert resumed.scaler.get_scale() == trainer.scaler.get_scale()


def test_the_model_records_which_datasets_the_collapse_watch_flagged(train_files, tmp_path):
    from tsembed.training.collapse import CollapseWatch

    cfg = make_config(train_files, tmp_path, schedule={"steps": 4, "stage1_steps": 2}, run={"checkpoint_every": 100})
    trainer = Trainer(cfg, model=toy_model())
    trainer.collapse_watch = CollapseWatch(threshold=-1.0, patience=1)  # every batch counts as collapsed
    extra = json.loads((trainer.fit() / "tsembed_config.json").read_text())["extra"]
    assert extra["collapsed_datasets"] == sorted({r["dataset"] for r in trainer.history})
    assert trainer.state_dict()["collapse_watch"]["warned"] == extra["collapsed_datasets"]


def test_a_row_that_cannot_be_prepared_is_replaced_counted_and_logged(tmp_path, caplog):
    """One bad sample (a broken image, an input that cannot fit) never ends a run (issue 23 §4): its row is
    replaced by the next good row of its dataset, so the batch keeps its size on every rank."""
    from tsembed.errors import DataError

    files = write_train_files(tmp_path)
    path = tmp_path / "colors.jsonl"
    lines = path.read_text().splitlines()
    lines[5] = json.dumps({**json.loads(lines[5]), "qry": "BROKEN"})
    path.write_text("\n".join(lines) + "\n")
    model = toy_model()
    prepare = model.prepare

    def fragile(inputs):
        if any(getattr(x, "text", None) and "BROKEN" in x.text for x in inputs):
            raise DataError("input 0: cannot be prepared")
        return prepare(inputs)

    model.prepare = fragile
    trainer = Trainer(make_config(files, tmp_path, schedule={"steps": 12}), model=model)
    with caplog.at_level("WARNING"):
        trainer.fit()
    assert trainer.history[-1]["skipped_rows"] >= 1
    assert "skipped row 5 of dataset colors" in caplog.text
    assert all(math.isfinite(r["loss"]) for r in trainer.history)
    plan_rows = {r for s in range(12) for r in trainer.steps[s].rows}
    assert 5 not in plan_rows and all(len(trainer.steps[s].rows) == 8 for s in range(12))


def test_max_per_dataset_keeps_the_first_rows_and_plans_are_built_once_per_epoch(train_files, tmp_path,
                                                                                monkeypatch):
    from tsembed.training.data import BatchPlan

    trainer = Trainer(make_config(train_files, tmp_path, data={"max_per_dataset": 16}), model=toy_model())
    assert len(trainer.data) == 32 and trainer.data.by_dataset == {0: list(range(16)), 1: list(range(16, 32))}
    with pytest.raises(ConfigError, match="data.max_per_dataset must be"):
        make_config(train_files, tmp_path, data={"max_per_dataset": 0})
    plan = BatchPlan(trainer.data, 8, True, {}, seed=0)
    built = []
    original = BatchPlan.epoch
    monkeypatch.setattr(BatchPlan, "epoch", lambda self, e: built.append(e) or original(self, e))
    per_epoch = len(plan.epoch(0))
    built.clear()
    for step in range(per_epoch * 5):
        plan.batch_at(step)
    # each step asks for its own epoch's plan only (it used to rebuild every earlier epoch's, per step)
    assert built.count(0) <= per_epoch and max(built) == 4 and len(built) <= 5 * per_epoch + 5


def test_kmeans_router_start_routes_decisively_before_the_first_step(train_files, tmp_path, caplog,
                                                                         monkeypatch):
    """moe.router_start=kmeans: the routers of a freshly built model start at clusters of the training inputs
    (deterministic per seed) and route decisively from the first step; the random start is near uniform."""
    import tsembed.training.trainer as trainer_module
    from tsembed.model import ModelConfig, TSEmbedModel
    from tsembed.moe import collect_routing

    from .helpers import ToyBackbone

    def build_toy(config):
        backbone = ToyBackbone(seed=0)
        moe = config.model.moe_config(backbone.default_target_modules)
        return TSEmbedModel(backbone, ModelConfig(backbone=backbone.config(), moe=moe))

    monkeypatch.setattr(trainer_module, "build_model", build_toy)
    moe = {"num_experts": 2, "top_k": 1, "level": "sequence", "router_start": "kmeans"}
    caplog.set_level("INFO", logger="tsembed.training.trainer")
    trainer = Trainer(make_config(train_files, tmp_path, model={"moe": moe}))
    again = Trainer(make_config(train_files, tmp_path / "again", model={"moe": moe}))
    routers = {n: p for n, p in trainer.model.named_parameters() if n.endswith("router.weight")}
    assert routers and all(torch.equal(p, dict(again.model.named_parameters())[n]) for n, p in routers.items())
    assert "router start (k-means)" in caplog.text

    def last_layer_top1(model):
        inputs = [trainer.data.query_input(i) for i in range(len(trainer.data))] + list(trainer.data.targets)
        with torch.no_grad():
            model.eval()
            model(**model.prepare(inputs))
        probs = list(collect_routing(model.backbone).layer_probs.values())[-1]
        return [int(e) for e in probs.argmax(dim=-1)], float(probs.max(dim=-1).values.mean())

    experts, confidence = last_layer_top1(trainer.model)
    assert len(set(experts)) == 2  # both experts start with inputs of their own (here: queries vs labels)
    random_start = Trainer(make_config(train_files, tmp_path / "random",
                                       model={"moe": {**moe, "router_start": "random"}}))
    assert confidence > 0.65 and last_layer_top1(random_start.model)[1] < 0.55  # 2 experts: uniform is 0.5
