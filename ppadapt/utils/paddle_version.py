"""The Paddle versions ppadapt supports, decided in one place and checked at ``import ppadapt``.

Paddle 2.6 (still on older AI Studio images) gets far enough to fail late and obscurely:
reading a ``.tar.gz`` after ``import paddle`` dies in ``inflateReset2`` (a zlib symbol clash),
and with that avoided, ``TruncatedNormal(a=...)``, ``super()`` in ``paddle.jit`` export, the
LoRA/SSF merge and exact Ctrl-C resume still fail. Paddle 3.0 still fails the LoRA/SSF
merge and drop path under a frozen method, and 3.0 and 3.1 cannot read bfloat16 safetensors;
3.2 passes the whole suite. So an older Paddle stops at the import
with one line that says what was found, what is needed and the command that fixes it.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

MIN_PADDLE = (3, 2)  # supported: Paddle >= 3.2, the oldest the whole suite passes on (CI runs it there too)
TESTED_PADDLE = "3.3.1"


class PaddleVersionError(ImportError):
    """The installed Paddle is older than ppadapt supports; ``str()`` is the one line to show."""


def parse_version(text: str) -> tuple[int, ...]:
    """``"3.0.0rc1"`` -> ``(3, 0, 0)``: the leading numbers, what the range compares."""
    numbers = []
    for part in text.strip().split("."):
        match = re.match(r"\d+", part)
        if not match:
            break
        numbers.append(int(match.group()))
        if match.end() < len(part):  # "0rc1": a pre-release of this number, stop here
            break
    return tuple(numbers)


def paddle_version_problem(found: str, gpu_build: bool = False) -> str | None:
    """The one-line message when Paddle ``found`` is below :data:`MIN_PADDLE`, else None.

    A version that does not parse, or a source build's ``0.0.0``, is let through: it says nothing
    about the API, and refusing it would block those who build Paddle themselves.
    """
    version = parse_version(found)
    if not version or version == (0, 0, 0) or version[:2] >= MIN_PADDLE:
        return None
    need = ".".join(map(str, MIN_PADDLE))
    wheel = "paddlepaddle-gpu" if gpu_build else "paddlepaddle"
    where = " from Paddle's CUDA package index (see paddlepaddle.org.cn)" if gpu_build else ""
    return (f"ppadapt needs PaddlePaddle >= {need} (tested with {TESTED_PADDLE}), found {found}: "
            f"pip install -U \"{wheel}>={need}\"{where}, then restart Python")


def check_paddle_version(found: str | None = None, gpu_build: bool | None = None) -> None:
    """Raise :class:`PaddleVersionError` (one line) if the installed Paddle is too old."""
    if found is None or gpu_build is None:
        import paddle
        found = paddle.__version__ if found is None else found
        gpu_build = paddle.is_compiled_with_cuda() if gpu_build is None else gpu_build
    problem = paddle_version_problem(found, gpu_build)
    if problem:
        raise PaddleVersionError(problem)


def check_at_import(package_dir: str | Path) -> None:
    """:func:`check_paddle_version` when ppadapt is imported. Run from one of ppadapt's scripts
    (``python ppadapt/train.py``, whose file is in ``package_dir``) the problem is the tool's
    one ``error:`` line and exit status 2, as every other tool error; anywhere else (a
    notebook, a library) it is the :class:`PaddleVersionError`, for the caller to handle."""
    try:
        check_paddle_version()
    except PaddleVersionError as exc:
        script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
        if script is not None and script.suffix == ".py" and script.parent == Path(package_dir).resolve():
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
