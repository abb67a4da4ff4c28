"""Is the method adapting (issue 12, item 9): the adaptation monitor's relative change and
absolute norms, the methods' probes, and where they land (VisualDL, run.json, the report)."""
import json

import numpy as np
import paddle
import pytest
from tiny import RandomImages, tiny_vit

from ppadapt.apps.vdl import read_scalars
from ppadapt.config import CONFIG_DIR, load_config
from ppadapt.methods import get_method
from ppadapt.methods.groups import parameter_groups, tensor_kind
from ppadapt.training.callbacks import AdaptationMonitor
from ppadapt.training.callbacks import adaptation

TRAIN_N, BATCH = 12, 4  # 3 steps per epoch


def f32(value):
    """A value as VisualDL stores it and read_scalars returns it (the shortest float32 decimal)."""
    return float(str(np.float32(value)))


def adapted(method="adaptformer", **options):
    """A tiny ViT with ``method`` applied and marked trainable, wrapped in a prepared paddle.Model."""
    paddle.seed(0)
    net = tiny_vit(qkv_bias=True)
    tuner = get_method(method)
    tuner.apply_to(net, **options)
    tuner.mark_trainable(net)
    model = paddle.Model(net, inputs=[paddle.static.InputSpec([None, 3, 32, 32], "float32", "image")],
                         labels=[paddle.static.InputSpec([None, 1], "int64", "label")])
    model.prepare(paddle.optimizer.Momentum(learning_rate=0.5, momentum=0.9,
                                            parameters=[p for p in net.parameters() if not p.stop_gradient]),
                  paddle.nn.CrossEntropyLoss())
    return model, net


def weights(net):
    return {n: p.numpy().copy() for n, p in net.named_parameters()}


def rel(names, before, after):
    change = sum(float(np.square(after[n].astype(np.float64) - before[n]).sum()) for n in names)
    start = sum(float(np.square(before[n].astype(np.float64)).sum()) for n in names)
    return np.sqrt(change) / (np.sqrt(start) + adaptation.EPS)


def norm(names, values):
    return np.sqrt(sum(float(np.square(values[n].astype(np.float64)).sum()) for n in names))


def test_groups_and_kinds():
    _, net = adapted("lora")
    groups = parameter_groups(net, "lora")
    assert sorted(groups) == ["head", "lora"]
    assert {tensor_kind(n) for n in groups["lora"]} == {"attn.qkv_lora.lora_A_q", "attn.qkv_lora.lora_B_q",
                                                        "attn.qkv_lora.lora_A_v", "attn.qkv_lora.lora_B_v"}
    _, net = adapted("bitfit")
    assert sorted(parameter_groups(net, "bitfit")) == ["bitfit", "head"]
    _, net = adapted("full")
    groups = parameter_groups(net, "full")
    assert sorted(groups) == ["backbone", "head"] and "blocks.1.attn.qkv.weight" in groups["backbone"]


def test_zero_before_training_then_moving_method_tensors_and_a_frozen_backbone_at_exactly_zero():
    model, net = adapted()
    groups = parameter_groups(net, "adaptformer")
    frozen = [n for n, p in net.named_parameters() if p.stop_gradient]
    monitor = AdaptationMonitor(net, {**groups, "backbone": frozen})
    before = weights(net)
    start = monitor.measure()
    assert start.groups["adaptformer"] == {"rel_change": 0.0, "abs_norm": 0.0}  # up-projection and biases: zeros
    assert start.groups["head"] == {"rel_change": 0.0, "abs_norm": 0.0}  # the head's bias starts at zero
    assert start.groups["backbone"]["rel_change"] == 0.0

    model.fit(RandomImages(TRAIN_N), batch_size=BATCH, epochs=1, verbose=0, callbacks=[monitor])
    after = weights(net)
    moved = monitor.latest
    assert moved is not None and moved.groups == monitor.measure().groups
    # relative change over the tensors that did not start at zero, by hand
    zero = {n for n in before if not np.any(before[n])}
    nonzero = [n for n in groups["adaptformer"] if n not in zero]
    assert nonzero and all(".down_proj.weight" in n for n in nonzero)
    assert moved.groups["adaptformer"]["rel_change"] == pytest.approx(rel(nonzero, before, after), rel=1e-9)
    assert moved.groups["adaptformer"]["rel_change"] > 0
    assert moved.groups["head"]["rel_change"] == pytest.approx(rel(["head.weight"], before, after), rel=1e-9)
    assert moved.groups["head"]["rel_change"] > 0
    # absolute norm of the zero-initialised ones: up-projection (weight and bias), down bias, head bias
    zeros = [n for n in groups["adaptformer"] if n in zero]
    assert {tensor_kind(n) for n in zeros} == {"adaptmlp.up_proj.weight", "adaptmlp.up_proj.bias",
                                               "adaptmlp.down_proj.bias"}
    assert moved.groups["adaptformer"]["abs_norm"] == pytest.approx(norm(zeros, after), rel=1e-9)
    assert moved.groups["adaptformer"]["abs_norm"] > 0
    up = [n for n in zeros if n.endswith("up_proj.weight")]
    assert moved.kinds[("adaptformer", "adaptmlp.up_proj.weight")] == {"abs_norm": pytest.approx(norm(up, after))}
    # the frozen backbone did not move at all
    assert moved.groups["backbone"] == {"rel_change": 0.0, "abs_norm": 0.0}
    assert all(v == 0.0 for (g, _), values in moved.kinds.items() if g == "backbone" for v in values.values())


def test_tags_and_history_fields():
    model, net = adapted()
    monitor = AdaptationMonitor(net, parameter_groups(net, "adaptformer"),
                                probe_images=RandomImages(3, seed=2).images)
    model.fit(RandomImages(TRAIN_N), batch_size=BATCH, epochs=1, verbose=0, callbacks=[monitor])
    tags = monitor.latest.tags()
    assert {"adapt/adaptformer/rel_change", "adapt/adaptformer/abs_norm", "adapt/adaptformer/branch_to_mlp",
            "adapt/head/rel_change", "adapt/head/abs_norm", "adapt/adaptformer/adaptmlp.up_proj.weight/abs_norm",
            "adapt/adaptformer/adaptmlp.down_proj.weight/rel_change", "adapt/head/head.weight/rel_change"} <= set(tags)
    assert len(tags) == 2 + 4 + 1 + 2 + 2  # groups x2, adaptformer's 4 kinds, its probe, head's 2 and 2
    fields = monitor.latest.history_fields()
    assert fields == {"adapt_rel_change": {"adaptformer": tags["adapt/adaptformer/rel_change"],
                                           "head": tags["adapt/head/rel_change"]},
                      "adapt_abs_norm": {"adaptformer": tags["adapt/adaptformer/abs_norm"],
                                         "head": tags["adapt/head/abs_norm"]},
                      "adapt_probe": {"adaptformer": {"branch_to_mlp": tags["adapt/adaptformer/branch_to_mlp"]}}}
    json.dumps(fields, allow_nan=False)  # plain JSON numbers


def test_large_tensors_are_followed_on_a_strided_sample(monkeypatch):
    monkeypatch.setattr(adaptation, "SAMPLE", 100)
    _, net = adapted("full")
    name = "blocks.0.mlp.fc1.weight"  # 32 x 128 = 4096 entries: stride 41, 100 kept
    monitor = AdaptationMonitor(net, {"backbone": [name]})
    state = monitor.state_dict()["tensors"][name]
    assert state["stride"] == 41 and state["start"].size == 100
    param = dict(net.named_parameters())[name]
    before = param.numpy().copy()
    rng = np.random.default_rng(0)
    param.set_value((before + 0.01 * rng.standard_normal(before.shape)).astype("float32"))
    exact = rel([name], {name: before}, {name: param.numpy()})
    assert monitor.measure().groups["backbone"]["rel_change"] == pytest.approx(exact, rel=0.2)


def test_state_dict_restores_the_start():
    model, net = adapted()
    groups = parameter_groups(net, "adaptformer")
    first = AdaptationMonitor(net, groups)
    model.fit(RandomImages(TRAIN_N), batch_size=BATCH, epochs=1, verbose=0, callbacks=[first])
    state = first.state_dict()
    assert state["tensors"]["blocks.0.adaptmlp.up_proj.weight"]["start"] is None  # zeros are not stored
    resumed = AdaptationMonitor(net, groups, resumed=True, state=state, start_epoch=1)
    assert resumed.measure().groups == first.latest.groups  # from the run's start, not from here
    notes = []
    fresh = AdaptationMonitor(net, groups, resumed=True, state=None, start_epoch=1, log=notes.append)
    assert fresh.measure().groups["adaptformer"]["rel_change"] == 0.0
    assert len(notes) == 1 and "from the resume point" in notes[0]


# --- the AdaptFormer probe --------------------------------------------------------------------

def test_branch_to_mlp_equals_a_hand_computation():
    paddle.seed(1)
    net = tiny_vit(depth=2)
    tuner = get_method("adaptformer")
    tuner.apply_to(net, dropout=0.5)
    rng = np.random.default_rng(3)
    for block in net.blocks:  # a branch that does something
        up = block.adaptmlp.up_proj
        up.weight.set_value(rng.standard_normal(up.weight.shape).astype("float32"))
        up.bias.set_value(rng.standard_normal(up.bias.shape).astype("float32"))
    images = paddle.to_tensor(RandomImages(3, seed=4).images)

    inputs = []
    hooks = [b.register_forward_pre_hook(lambda layer, x: inputs.append(x[0])) for b in net.blocks]
    net.eval()
    with paddle.no_grad():
        net(images)
        for h in hooks:
            h.remove()
        ratios = []
        for block, x in zip(net.blocks, inputs):
            stream = x + block.attn(block.norm1(x))
            mlp = block.mlp.fc2(block.mlp.act(block.mlp.fc1(block.norm2(stream)))).numpy()
            branch = block.adaptmlp(stream).numpy()  # scale * up(relu(down(stream)))
            ratios.append(np.mean([np.linalg.norm(branch[i]) / np.linalg.norm(mlp[i]) for i in range(3)]))
    expected = float(np.mean(ratios))
    assert expected > 0.1

    net.train()  # the monitor probes in eval mode (dropout off) and puts the mode back
    monitor = AdaptationMonitor(net, parameter_groups(net, "full"), probes=["adaptformer"],
                                probe_images=images.numpy())
    paddle.seed(7)
    got = monitor.probe()
    after = paddle.rand([4]).numpy()
    paddle.seed(7)
    assert np.array_equal(after, paddle.rand([4]).numpy())  # the probe drew no random number
    assert net.training and all(b.adaptmlp.training for b in net.blocks)
    assert got == {"adaptformer": {"branch_to_mlp": pytest.approx(expected, rel=1e-5)}}
    assert got == monitor.probe()  # the same batch every time
    # other methods declare no probe
    assert get_method("lora").probe(net, images) == {}


def test_branch_to_mlp_is_zero_for_the_official_init():
    net = tiny_vit()
    get_method("adaptformer").apply_to(net)
    net.eval()
    with paddle.no_grad():
        out = get_method("adaptformer").probe(net, paddle.to_tensor(RandomImages(2).images))
    assert out == {"branch_to_mlp": 0.0}


# --- a real stage: VisualDL and run.json ------------------------------------------------------

@pytest.fixture(scope="module")
def frozen_run(tmp_path_factory):
    from ppadapt.training.engine import run_stage

    cfg = load_config(CONFIG_DIR / "digits.yaml",
                      ["model.embed_dim=16", "model.depth=1", "model.num_heads=2",
                       "model.carry.adaptformer.bottleneck=4", "transfer.freeze=true", "transfer.pretrained=none",
                       "epochs=2", "batch_size=128", "warmup_steps=2"], stage="transfer")
    cfg.output = str(tmp_path_factory.mktemp("adapt"))
    return run_stage(cfg, "transfer", log=lambda line: None, verbose=0).run_dir


def test_a_stage_logs_the_tags_and_records_them_in_run_json(frozen_run):
    history = json.loads((frozen_run / "run.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    for entry in history:
        assert set(entry["adapt_rel_change"]) == {"adaptformer", "head"}
        assert set(entry["adapt_abs_norm"]) == {"adaptformer", "head"}
        assert set(entry["adapt_probe"]) == {"adaptformer"}
        assert entry["adapt_rel_change"]["head"] > 0 and entry["adapt_abs_norm"]["adaptformer"] > 0

    scalars = read_scalars(frozen_run / "vdl")
    for tag, field, key in (("adapt/adaptformer/rel_change", "adapt_rel_change", "adaptformer"),
                            ("adapt/adaptformer/abs_norm", "adapt_abs_norm", "adaptformer"),
                            ("adapt/head/rel_change", "adapt_rel_change", "head")):
        steps, values = scalars[tag]
        assert steps == [0, 1]  # per epoch, like eval/*
        assert values == [f32(h[field][key]) for h in history]  # VisualDL keeps float32
    steps, values = scalars["adapt/adaptformer/branch_to_mlp"]
    assert values == [f32(h["adapt_probe"]["adaptformer"]["branch_to_mlp"]) for h in history]
    assert "adapt/adaptformer/adaptmlp.up_proj.weight/abs_norm" in scalars

    state = paddle.load(str(frozen_run / "resume.pdckpt"), return_numpy=True)
    final = paddle.load(str(frozen_run / "final.pdparams"))
    trained = {n for n in final if ".adaptmlp." in n or n.startswith("head.")}
    assert set(state["adaptation"]["tensors"]) == trained  # theta0 of what trains, for a resume


def test_the_report_plot_has_the_change_panel(frozen_run, tmp_path):
    import matplotlib.pyplot as plt

    from ppadapt.apps.report import CHANGE_PANEL, change_lines
    from ppadapt.apps.vdl import plot_runs

    lines = dict((g, (xs, ys)) for g, xs, ys in change_lines(frozen_run))
    assert set(lines) == {"adaptformer", "head"} and lines["head"][0] == [0, 1]
    assert change_lines(tmp_path) == []  # no run.json: no lines
    fig = plot_runs([frozen_run], tmp_path / "curves.png", panels=[CHANGE_PANEL])
    try:
        assert [ax.get_title() for ax in fig.axes] == ["train/loss", "eval/acc_top1", "train/lr", CHANGE_PANEL.title]
        panel = fig.axes[3]
        assert [line.get_linestyle() for line in panel.lines] == ["-", "--"]
        assert list(panel.lines[1].get_ydata()) == lines["head"][1]
        assert [t.get_text() for t in panel.get_legend().get_texts()] == ["adaptformer", "head"]
        assert panel.get_yscale() == "log"
        assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        plt.close(fig)


def test_a_resumed_log_keeps_adapt_tags_of_the_checkpointed_epochs_only(tmp_path):
    from visualdl import LogWriter

    from ppadapt.training.callbacks import VisualDLLogger

    with LogWriter(str(tmp_path)) as writer:  # the killed run logged epoch 2 after its last checkpoint
        for epoch in range(3):
            writer.add_scalar(tag="adapt/head/rel_change", step=epoch, value=0.5 * (epoch + 1))
            writer.add_scalar(tag="eval/acc_top1", step=epoch, value=0.25)
    earlier, _ = VisualDLLogger(str(tmp_path), start_epoch=2, start_step=8)._earlier_scalars()
    assert [(t, s) for t, s, _ in earlier if t.startswith("adapt/")] == [("adapt/head/rel_change", 0),
                                                                          ("adapt/head/rel_change", 1)]
