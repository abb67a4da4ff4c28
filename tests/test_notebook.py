"""The AI Studio notebook runs end to end, headless, on a tiny CIFAR-10 archive.

The notebook's ``parameters`` cell is followed by an injected cell with test values
(papermill's mechanism, without needing papermill), then every cell runs in a
fresh kernel of this interpreter. A second injected cell makes section 8 (transfer
from a PaddleClas checkpoint) see no cached weights and an offline network, so it
takes its offline path everywhere: it builds a small PaddleClas ViT and never
downloads the real 330 MB checkpoint, even on a machine that could.
"""
import json
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from cifar_archive import write_cifar_archive  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "adaptformer_cifar.ipynb"

TINY_OVERRIDES = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.patch_size=8",
                  "adapter.bottleneck=8", "pretrain.batch_size=16", "transfer.batch_size=16",
                  "pretrain.warmup_steps=2", "transfer.warmup_steps=2",
                  "pretrain.log_freq=1", "transfer.log_freq=1"]


# Empty weight caches, and a download that fails as it does with no network (DNS).
OFFLINE = """\
import urllib.error
from pathlib import Path
import ppadapt.runs.pretrained as _pretrained
_pretrained.WEIGHTS_HOME = Path({home!r}) / "paddleclas"
_pretrained.PADDLE_WEIGHTS_HOME = Path({home!r}) / "paddle"
def _offline_fetch(url, dest):
    raise urllib.error.URLError(OSError(-2, "Name or service not known"))
_pretrained._fetch = _offline_fetch
"""


def read_notebook():
    return nbformat.read(str(NOTEBOOK), as_version=4)


def parameters_index(nb) -> int:
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    return tagged[0]


def test_notebook_is_committed_clean():
    nb = read_notebook()
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    params = nb.cells[parameters_index(nb)].source
    for name in ("CONFIG", "DATA_FILE", "OUTPUT", "OVERRIDES", "EPOCHS_PRETRAIN", "EPOCHS_TRANSFER", "EPOCHS_TASKS",
                 "PADDLECLAS_BACKBONE", "PADDLECLAS_WEIGHTS", "OFFLINE_BACKBONE"):
        assert f"{name} = " in params


def kernel_options(tmp_path: Path) -> dict:
    """NotebookClient options that run the notebook with this interpreter (the venv's).

    ipykernel's ``python3`` spec runs ``python``, which jupyter_client replaces by
    ``sys.executable``. A user's own ``python3`` spec (in ~/.local/share/jupyter, searched
    first) may name another Python without ppadapt's dependencies: then an explicit
    spec for this interpreter is written under ``tmp_path`` and used instead.
    """
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    this = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2], sys.executable}
    try:
        if KernelSpecManager().get_kernel_spec("python3").argv[0] in this:
            return {"kernel_name": "python3"}
    except NoSuchKernel:
        pass
    name = "ppadapt-test-python"
    spec_dir = tmp_path / "kernels" / name
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ppadapt test kernel", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
    return {"kernel_name": name, "km": KernelManager(kernel_name=name, kernel_spec_manager=specs)}


def test_notebook_runs_on_tiny_data(tmp_path):
    archive = write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", train_per_class=8, test_per_class=4)
    out = tmp_path / "out"

    nb = read_notebook()
    values = (f"CONFIG = 'configs/cpu.yaml'\nDATA_FILE = {str(archive)!r}\nOUTPUT = {str(out)!r}\n"
              f"OVERRIDES = {TINY_OVERRIDES!r}\nEPOCHS_PRETRAIN = 1\nEPOCHS_TRANSFER = 1\nEPOCHS_TASKS = 1\n"
              "PADDLECLAS_BACKBONE = 'ViT_base_patch16_224'\nPADDLECLAS_WEIGHTS = None\nOFFLINE_BACKBONE = 'small'")
    injected = nbformat.v4.new_code_cell(values)
    injected.metadata["tags"] = ["injected-parameters"]
    offline = nbformat.v4.new_code_cell(OFFLINE.format(home=str(tmp_path / "weights_home")))
    offline.metadata["tags"] = ["injected-offline"]
    nb.cells[parameters_index(nb) + 1:parameters_index(nb) + 1] = [injected, offline]

    client = nbclient.NotebookClient(nb, timeout=300, **kernel_options(tmp_path),
                                     resources={"metadata": {"path": str(REPO / "notebooks")}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, on any error

    for name in ("cpu_pretrain_cifar10", "cpu_transfer_cifar10_frozen", "cpu_transfer_cifar10_full"):
        assert (out / name / "final.pdparams").is_file(), name
        assert list((out / name / "vdl").glob("vdlrecords.*")), name
    png = out / "curves.png"
    assert png.is_file() and png.stat().st_size > 1000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The results table: three runs, and the frozen one trains a fraction of the model.
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    table = next(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    rows = [line for line in table.splitlines() if line.startswith("| ") and "%" in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| pretrain", "| transfer, frozen (AdaptFormer)", "| transfer, full fine-tuning"]
    assert "(100.0%)" in rows[0] and "(100.0%)" in rows[2] and "(100.0%)" not in rows[1]
    # The tutorial's Layer-level stop_gradient froze nothing; the notebook shows it.
    texts = "".join(o.get("text", "") for o in outputs)
    bug = re.search(r"after layer.stop_gradient = True: trainable parameters: ([\d,]+) of ([\d,]+)", texts)
    assert bug and bug.group(1) == bug.group(2)

    # Section 8: offline, the download fails in one line; a small PaddleClas ViT built at 64 px
    # (8x8 grid of 8 px patches) is transferred at 32 px (4x4 grid) with AdaptFormer.
    assert not [o for o in outputs if o["output_type"] == "error"]
    lines = texts.splitlines()
    failed = [line for line in lines if line.startswith("no PaddleClas weights: ")]
    assert len(failed) == 1 and "download of PaddleClas's ViT_base_patch16_224 weights failed " \
        "([Errno -2] Name or service not known; https://" in failed[0] and "pass --pretrained PATH" in failed[0]
    assert len([line for line in lines if line.startswith(
        "downloading PaddleClas's ViT_base_patch16_224 weights from https://")]) == 1  # one attempt
    checkpoint = out / "paddleclas_checkpoint" / "small_random_init.pdparams"
    assert ("built paddleclas.ppcls.arch.backbone.model_zoo.vision_transformer.VisionTransformer "
            f"(small, random init) and saved its state dict: {checkpoint}") in lines
    assert checkpoint.is_file()
    assert "  pos_embed                  [1, 65, 32]" in lines
    resampled = "resampled pos_embed from a 8x8 to a 4x4 patch grid (bicubic, class token kept)"
    assert lines.count(resampled) == 2  # the keys report, then the run's log
    assert "checkpoint keys the model lacks: none" in texts
    assert "  different shape: pos_embed: checkpoint [1, 65, 32], model [1, 17, 32] (resampled when loading)" in lines
    assert "  different shape: head.weight: checkpoint [32, 1000], model [32, 5] (a new head for this dataset's " \
        "classes)" in lines
    assert "left at init: ['head.weight', 'head.bias'] and 8 AdaptFormer branch tensors" in texts
    assert f"loaded pretrained weights from {checkpoint} (2 new tensors left at init)" in lines
    assert "normalisation: mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5) (PaddleClas's: a checkpoint with " \
        "no ppadapt run.json beside it is taken as a PaddleClas ViT)" in lines
    run = out / "cpu_paddleclas_small_random_init_transfer_cifar10_frozen"
    assert (run / "final.pdparams").is_file() and (run / "adapter" / "adapter_model.safetensors").is_file()
    record = json.loads((run / "run.json").read_text())
    assert record["mean"] == [0.5] * 3 and record["config"]["transfer"]["pretrained"] == str(checkpoint)
    assert record["config"]["model"]["qkv_bias"] and record["config"]["model"]["epsilon"] == 1e-6
    assert 0 < record["params"]["trainable"] < record["params"]["total"]
    tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
    assert len(tables) == 2 and "from the PaddleClas checkpoint" in tables[1]

    # Section 9: two digits tasks and section 6's CIFAR task served from one backbone, a mixed batch,
    # and each task's accuracy through it equal to its run's final top-1.
    for name in ("cpu_transfer_digits_lora", "cpu_transfer_digits_bitfit"):
        assert (out / name / "adapter" / "adapter_model.safetensors").is_file(), name
    assert f"backbone {out / 'cpu_pretrain_cifar10' / 'final.pdparams'}: ViT 32px patch 8, width 32, depth 2, " \
        "carries AdaptFormer branches" in lines
    assert [line.split()[0] for line in lines if line.startswith(("digits-lora ", "digits-bitfit ", "cifar10 "))
            and "[" in line] == ["digits-lora", "cifar10", "digits-bitfit", "cifar10"]
    scores = [line.split() for line in lines if line.startswith(("cifar10 ", "digits-lora ", "digits-bitfit "))
              and line.rstrip().endswith(("equal", "DIFFERENT"))]
    assert [(row[0], row[1], row[-1]) for row in scores] == [
        ("cifar10", "adaptformer", "equal"), ("digits-lora", "lora", "equal"), ("digits-bitfit", "bitfit", "equal")]
