"""``ppadapt/bench.py`` and ``ppadapt.apps.bench.flops`` on tiny models: fields and sanity, never timings
(beyond being positive), FLOPs against a count written out by hand."""
import json
import os
import subprocess
import sys
from pathlib import Path

import paddle
import pytest

from cifar_archive import write_cifar_archive
from tiny import tiny_vit

from ppadapt.apps.bench import (benchmark, build_parser, gemm_gflops, main, optimizer_state_bytes, run,
                                split_method_options, summarize)
from ppadapt.config import load_config
from ppadapt.methods.build import apply_transfer_method, build_model
from ppadapt.training.optim import make_optimizer
from ppadapt.apps.bench.flops import train_step_flops
from ppadapt.methods.trainable import count_parameters, set_trainable
from ppadapt.methods import get_method

REPO = Path(__file__).resolve().parent.parent
TINY_O = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.patch_size=8",
          "adapter.bottleneck=8"]
TINY_ARGS = [a for o in TINY_O for a in ("-o", o)]


def bench_cli(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    return subprocess.run([sys.executable, str(REPO / "ppadapt" / "bench.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


@pytest.fixture(scope="module")
def cli_report():
    proc = bench_cli(*TINY_ARGS, "--methods", "adaptformer,linear,lora", "--batch-size", 4, "--steps", 2,
                     "--warmup", 1, "--gemm-size", 128, "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_cli_json_fields_and_sanity(cli_report):
    rows = {r["method"]: r for r in cli_report["methods"]}
    assert list(rows) == ["full", "adaptformer", "linear", "lora"]  # full added for the ratio, first
    assert cli_report["gemm"]["median"] > 0 and cli_report["gemm"]["shape"] == [128, 128, 128]
    assert cli_report["setup"]["batch_size"] == 4 and cli_report["setup"]["input"] == "random input"
    for r in rows.values():
        for key in ("train_s", "infer_s"):
            s = r[key]
            assert s["n"] == 2 and len(s["samples"]) == 2
            assert 0 < s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
        assert r["train_images_per_s"]["median"] == pytest.approx(4 / r["train_s"]["median"])
        assert r["infer_images_per_s"]["median"] > 0
        assert r["memory"]["peak_rss_bytes"] > 0 and r["memory"]["rss_source"] in ("VmHWM", "ru_maxrss")
        assert r["flops"]["train"] > r["flops"]["forward"] > 0
        assert r["train_gflops_per_s"] > 0 and r["train_gemm_share"] > 0
        # Momentum keeps one velocity tensor per trainable parameter.
        assert r["optimizer_state_bytes"] == r["params"]["trainable_bytes"] == 4 * r["params"]["trainable"]
    assert rows["full"]["ratio_to_full"] == {"train": 1.0, "infer": 1.0}
    assert all(r["ratio_to_full"]["train"] > 0 for r in rows.values())
    assert rows["linear"]["optimizer_state_bytes"] < rows["full"]["optimizer_state_bytes"]
    assert rows["linear"]["params"]["without_head"] == 0
    assert 2.7 < rows["full"]["flops"]["train_over_forward"] <= 3.0
    assert rows["linear"]["flops"]["train"] < rows["adaptformer"]["flops"]["train"] < rows["full"]["flops"]["train"]


def test_cli_trainable_counts_match_count_parameters(cli_report):
    for r in cli_report["methods"]:
        cfg = load_config(REPO / "configs" / "cpu.yaml", TINY_O + [f"method.name={r['method']}"], stage="transfer")
        model = build_model(cfg, 10)
        apply_transfer_method(model, cfg)
        count = count_parameters(model)
        assert r["params"]["trainable"] == count.trainable, r["method"]
        assert r["params"]["without_head"] == count.without_head, r["method"]
        assert r["params"]["total"] == count.total, r["method"]


def test_cli_text_table():
    proc = bench_cli(*TINY_ARGS, "--methods", "linear", "--batch-size", 2, "--steps", 1, "--warmup", 1,
                     "--gemm-size", 64, "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "fp32 GEMM 64x64x64" in out and "train s/step" in out and "of GEMM" in out
    assert any(line.startswith("full ") for line in out.splitlines())
    assert any(line.startswith("linear ") for line in out.splitlines())
    assert proc.stderr == ""


# --- FLOPs ----------------------------------------------------------------------

def hand_forward_flops(B=4, img=32, patch=8, D=32, depth=2, mlp=4, classes=10, in_chans=3, extra_tokens=0):
    """Matmul FLOPs of a forward of the plain tiny ViT, one term per matmul (2*M*K*N).

    Returns (patch embedding, one block, head, whole forward)."""
    P = (img // patch) ** 2  # 16 patches
    T = P + 1 + extra_tokens  # + class token (+ prompts)
    H = mlp * D
    conv = 2 * (B * P) * (in_chans * patch * patch) * D  # patch embedding as a matmul
    block = (2 * (B * T) * D * (3 * D)  # qkv
             + 2 * B * T * T * D  # Q K^T, summed over the heads (heads * head_dim = D)
             + 2 * B * T * T * D  # A V
             + 2 * (B * T) * D * D  # attn.proj
             + 2 * (B * T) * D * H  # mlp.fc1
             + 2 * (B * T) * H * D)  # mlp.fc2
    head = 2 * B * D * classes  # on the class token only
    return conv, block, head, conv + depth * block + head


def tiny_with(method, **options):
    paddle.seed(0)
    model = tiny_vit()
    m = get_method(method)
    m.apply_to(model, **options)
    set_trainable(model, m.is_trainable)
    return model


def test_flops_match_hand_count_for_tiny_vit():
    B = 4
    conv, block, head, fwd = hand_forward_flops(B=B)
    x = paddle.randn([B, 3, 32, 32])
    full = train_step_flops(tiny_with("full"), x)
    assert full.forward == fwd
    # Every matmul: forward + input gradient + weight gradient, except the patch
    # embedding, whose input (the image) needs no gradient.
    assert full.train == 3 * fwd - conv
    assert 2.7 < full.train / full.forward <= 3.0
    # Linear probe: nothing before the head needs a gradient; the head needs its weight gradient.
    linear = train_step_flops(tiny_with("linear"), x)
    assert linear.forward == fwd and linear.input_grad == 0
    assert linear.train == fwd + head
    # BitFit: the patch embedding's bias trains, so every later matmul needs its input
    # gradient(s) (two for each attention matmul, whose operands are both activations),
    # but only the head has a weight gradient counted (bias gradients are element-wise).
    attention = 2 * (2 * B * 17 * 17 * 32)  # per block: Q K^T and A V
    bitfit = train_step_flops(tiny_with("bitfit"), x)
    assert bitfit.input_grad == (fwd - conv) + 2 * attention
    assert bitfit.train == fwd + (fwd - conv + 2 * attention) + head
    assert linear.train < bitfit.train < full.train


def test_flops_see_the_methods_sublayers():
    B, D, T, r = 2, 32, 17, 4
    conv, block, head, fwd = hand_forward_flops(B=B)
    x = paddle.randn([B, 3, 32, 32])
    # LoRA on q and v: two (x A) B updates per block, counted although LoRA is no nn.Linear.
    lora = train_step_flops(tiny_with("lora", rank=r), x)
    assert lora.forward == fwd + 2 * 2 * (2 * B * T * D * r + 2 * B * T * r * D)
    # AdaptFormer: down (D -> 8) and up (8 -> D) per block.
    adapt = train_step_flops(tiny_with("adaptformer", bottleneck=8), x)
    assert adapt.forward == fwd + 2 * (2 * B * T * D * 8 + 2 * B * T * 8 * D)
    # VPT-shallow: 5 more tokens in every block.
    vpt = train_step_flops(tiny_with("vpt-shallow", tokens=5), x)
    assert vpt.forward == hand_forward_flops(B=B, extra_tokens=5)[3]
    assert vpt.weight_grad == head  # the prompts are no matmul weight; only the head's counts
    for f in (lora, adapt, vpt):
        assert f.forward < f.train < 3 * f.forward


def test_flops_leave_model_unchanged():
    model = tiny_with("full")
    model.eval()
    x = paddle.randn([2, 3, 32, 32])
    before = model(x).numpy()
    train_step_flops(model, x)
    assert not model.training
    assert (model(x).numpy() == before).all()
    train_step_flops(model, x)  # hooks removed: counting again gives the same, not double
    assert train_step_flops(model, x).forward == hand_forward_flops(B=2)[3]


# --- API pieces -------------------------------------------------------------------

def test_api_sequential_on_real_cifar_archive(tmp_path):
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", "cifar10", train_per_class=4,
                                  test_per_class=1)
    args = build_parser().parse_args([*TINY_ARGS, "--methods", "linear", "--no-ratio", "--batch-size", "4",
                                      "--steps", "2", "--warmup", "1", "--order", "sequential",
                                      "--data-file", str(archive), "--gemm-size", "64"])
    report = run(args)
    (row,) = report["methods"]
    assert row["method"] == "linear" and row["ratio_to_full"] is None
    assert report["setup"]["classes"] == 5  # cpu.yaml transfers to classes 5..9
    assert report["setup"]["data_s_per_batch"] > 0
    assert row["params"]["head"] == 32 * 5 + 5


def test_benchmark_api_and_optimizer_state():
    cfg = load_config(REPO / "configs" / "cpu.yaml", TINY_O, stage="transfer")
    rows = benchmark(cfg, ["full", "bitfit"], batch_size=2, steps=1, warmup=1)
    assert [r["method"] for r in rows] == ["full", "bitfit"]
    assert rows[1]["ratio_to_full"]["train"] > 0
    model = build_model(cfg, 10)
    apply_transfer_method(model, cfg)
    opt = make_optimizer(model, cfg, "transfer")
    assert optimizer_state_bytes(opt) == 0  # created by the first step
    assert gemm_gflops(64, repeats=2, warmup=1)["median"] > 0
    s = summarize([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["samples"]) == (2.0, 1.0, 3.0, [3.0, 1.0, 2.0])


def test_recompute_rows_and_memory_table(capsys):
    """--recompute: each method also with recompute: true, and the peak memory it saves (issue 14)."""
    assert main([*TINY_ARGS, "--methods", "full,adaptformer,lora", "--recompute", "--batch-size", "4",
                 "--steps", "1", "--warmup", "1", "--gemm-size", "64", "--order", "sequential", "--quiet"]) == 0
    out = capsys.readouterr().out
    for label in ("full +rc", "adaptformer +rc", "lora +rc"):
        assert f"\n{label} " in out
    table = out[out.index("method       tensors MiB"):].splitlines()
    assert [line.split()[0] for line in table[2:5]] == ["full", "adaptformer", "lora"]
    assert "+rc: recompute: true" in out and "fast layers" in out.splitlines()[0]
    args = build_parser().parse_args([*TINY_ARGS, "--methods", "adaptformer", "--recompute", "--batch-size", "4",
                                      "--steps", "1", "--warmup", "1", "--gemm-size", "64", "--no-ratio"])
    rows = run(args)["methods"]
    assert [(r["label"], r["recompute"]) for r in rows] == [("adaptformer", False), ("adaptformer +rc", True)]
    assert rows[1]["memory"]["peak_tensor_bytes"] < rows[0]["memory"]["peak_tensor_bytes"]


def test_method_options_go_to_the_methods_that_have_them():
    base, opts = split_method_options(["lr=0.1", "method.rank=4"], ["full", "lora", "adapter"])
    assert base == ["lr=0.1"] and opts == {"full": {}, "lora": {"rank": 4}, "adapter": {}}
    # AdaptFormer is an ordinary method: its options are method.* options too (issue 11)
    assert split_method_options(["method.bottleneck=8"], ["full", "adaptformer"]) == \
        ([], {"full": {}, "adaptformer": {"bottleneck": 8}})


# --- user errors ------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--methods", "full,lorra"], "unknown method 'lorra'; did you mean 'lora'?"),
    (["-o", "model.depht=2"], "unknown config key 'depht'"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--warmup", "0"], "--warmup must be at least 1"),
    (["--steps", "x"], "invalid int value"),
    (["-o", "method.rank=4"], "none of the benchmarked methods"),
    (["--data-file", "/nonexistent/cifar-10-python.tar.gz"], "data file not found"),
])
def test_user_errors_in_process(capsys, args, fragment):
    try:
        code = main([*args, "--quiet"])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err


def test_user_error_cli_one_line():
    proc = bench_cli("--methods", "nope", "--steps", "1")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error: unknown method 'nope'"), proc.stderr
