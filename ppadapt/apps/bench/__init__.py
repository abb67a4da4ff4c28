"""``bench.py``: speed, memory and FLOPs of the tuning methods, measured in one process.

``python ppadapt/bench.py`` builds each method's model exactly as ``transfer.py``
does (:func:`ppadapt.methods.build.build_model`, :func:`~ppadapt.methods.build.apply_transfer_method`,
:func:`~ppadapt.training.optim.make_optimizer`, fixed seed) and times the path training
takes: ``paddle.Model.prepare(optimizer, CrossEntropyLoss, Accuracy)`` then
``train_batch`` (forward, backward, optimizer step, metrics) per step and
``predict_batch`` for inference. So any speed work on the model or the methods
shows up here unchanged.

How it measures, and why:

* **Order.** By default (``order="interleaved"``) every model is built and warmed
  up first, then one untimed round of every method restores the allocator's
  steady state (each set-up trimmed the heap to measure memory), then the timed
  steps go in rounds, one step of each method per round, the starting method
  rotating from round to round. Slow drifts of the
  machine (another job, thermal state) then spread evenly over the methods
  instead of favouring whichever ran last. All models are alive together, which
  is cheap for the CPU preset but not for ViT-B: ``order="sequential"`` builds,
  warms, times and frees one method after the other.
* **Statistics.** Median over the timed steps, with min/max and the quartiles;
  images/s is the batch size over the median step time.
* **Memory.** Per method, from just before the model is built until the end of
  its warm-up (which holds the first optimizer step and inference): the peak
  resident set (Linux ``VmHWM``, reset by writing ``5`` to
  ``/proc/self/clear_refs`` after ``malloc_trim`` hands freed heap back to the
  OS), reported absolute and as the increase over the resident set at the
  reset; and the peak of Paddle's own tensor allocator over that window.
  Without ``/proc`` it falls back on ``getrusage`` (process-wide, never reset)
  and says so. In interleaved order the earlier methods' models stay alive,
  so compare the increases, not the absolute peaks.
* **FLOPs.** :func:`ppadapt.apps.bench.flops.train_step_flops`: matmul FLOPs of forward +
  backward counted from one real forward on the benchmark batch, an
  approximation that ignores element-wise work. Achieved GFLOP/s is those FLOPs
  over the median step time; the share is that over the machine's fp32
  ``paddle.matmul`` rate measured here (:class:`~.probes.GemmProbe`, square 1024 by
  default, sampled before, between the timed rounds and after, pooled median).

The models keep their random initial weights: no checkpoint is loaded, since
speed does not depend on the values.

``python ppadapt/bench.py --multitask`` measures serving many tasks on one backbone instead
(memory against separate models, switch time, mixed-batch throughput): :mod:`.multitask`.

The modules: :mod:`.runner` (building and timing the methods: :func:`benchmark`),
:mod:`.probes` (GEMM rate, memory, optimizer state, the machine), :mod:`.stats`,
:mod:`.flops`, :mod:`.tables` (the text report) and :mod:`.cli` (the command line).
"""
from .cli import build_parser, main, parse_methods, run, split_method_options
from .flops import train_step_flops
from .probes import GemmProbe, MemoryProbe, gemm_gflops, machine_info, optimizer_state_bytes
from .runner import add_gemm_share, benchmark, method_config, random_batch, real_batches
from .stats import rate, summarize
from .tables import format_report

__all__ = ["GemmProbe", "MemoryProbe", "add_gemm_share", "benchmark", "build_parser", "format_report",
           "gemm_gflops", "machine_info", "main", "method_config", "optimizer_state_bytes", "parse_methods",
           "random_batch", "rate", "real_batches", "run", "split_method_options", "summarize", "train_step_flops"]
