"""What ``bench_ssm.py`` measures and how (the sizes, kinds, labels and the method notes its
report quotes)."""

from __future__ import annotations

B_TRAIN = 16
D_MODEL = 64
STEP_BATCHES = (1, 64)
NOISY_CORES = 0.25  # a cell during which other processes used more CPU than this is flagged

LAYER_KINDS = ("s4d", "s5", "mamba", "mamba2", "gru", "lstm")
# Mamba with backend="torch" (the pure-PyTorch per-step reference loop) and backend="chunked"
# (the chunked torch scan that CUDA calls with an initial state or resets take; timed on CPU here)
EXTRA_KINDS = ("mamba_torch", "mamba_chunked")
SLOW_KINDS = ("mamba_torch", "mamba_chunked")  # repeats adapted to a per-cell time budget
MAMBA2 = {"d_state": 64, "expand": 2, "headdim": 64, "chunk_size": 64}  # 2 heads at D=64
ALL_KINDS = LAYER_KINDS + EXTRA_KINDS
LABELS = {
    "s4d": "S4D",
    "s5": "S5",
    "mamba": "Mamba (backend=auto)",
    "mamba_torch": "Mamba (torch reference)",
    "mamba_chunked": "Mamba (chunked torch scan)",
    "mamba2": "Mamba-2 (chunked SSD)",
    "gru": "ssm.GRU",
    "lstm": "ssm.LSTM",
    "gru_baseline": "torch.nn.GRU (baseline)",
}

# Quoted in the issue, measured by others on this machine kind: B=16, d_model=64, d_state=16,
# expand=2, L=1024, training pass, speed as a multiple of torch.nn.GRU's (t_GRU / t_impl).
REFERENCE_POINTS = [
    {"name": "mambapy, parallel scan", "speedup_vs_gru": 0.06},
    {"name": "mambapy, sequential mode", "speedup_vs_gru": 0.002},
    {"name": "careful unfused torch scan", "speedup_vs_gru": 0.25, "approx": True},
]
REFERENCE_NOTE = (
    "reference points (not measured here): quoted in the issue, measured by others on this "
    "machine kind at B=16, d_model=64, d_state=16, expand=2, L=1024 (training pass, t_GRU/t_impl)"
)

TRAIN_METHOD = (
    "One training pass = forward + backward of y.sum() on x of shape (B, L, D) with "
    "requires_grad=True (as if fed by an encoder); grads are set to None outside the timed "
    "region. Timed with time.perf_counter. Each repeat times the nn.GRU baseline and the kind "
    "back to back, "
    "alternating which goes first; the reported ms are medians over repeats after warmup, and "
    "speedup = median(t_GRU) / median(t_kind) over the interleaved samples of that pair."
)
STEP_METHOD = (
    "Under torch.inference_mode(), state fed back step to step, inputs cycled from 64 random "
    "(B, D) tensors. Each step is timed individually with time.perf_counter_ns; steps run in "
    "blocks that alternate between nn.GRUCell(D, D) and the kind. Reported: median microseconds "
    "per step over all timed steps after warmup; ratio = median(t_kind) / median(t_GRUCell)."
)
MEMORY_METHOD = (
    "Each measurement runs in a fresh Python subprocess (sys.executable), so no allocator cache "
    "or high-water mark leaks between kinds. The child imports torch and ssm, builds the layer "
    "and the "
    "input, runs one tiny warm-up pass (L=8: starts autograd/OpenMP threads, loads the fused "
    "kernel), then resets the kernel's peak-RSS counter (writes '5' to /proc/self/clear_refs, "
    "which sets VmHWM to the current VmRSS), runs one full training pass and reads VmHWM from "
    "/proc/self/status. peak_delta_mib = VmHWM - VmRSS-before-the-pass: the extra resident memory "
    "the pass needed (activations saved for backward, gradients, workspaces, including allocations "
    "made outside torch's allocator, e.g. by the C++ kernel). If clear_refs is unavailable, "
    "getrusage(RUSAGE_SELF).ru_maxrss is used instead (flagged in hwm_reset=false). RSS is used "
    "rather than tracemalloc (blind to torch allocations) or torch.profiler (blind to non-ATen "
    "allocations). RUSAGE_CHILDREN in the parent is not used: it reports the max over all children "
    "so far, not per child. Granularity: pages; glibc may satisfy small requests from memory "
    "already resident, so values under a few MiB are noise."
)
