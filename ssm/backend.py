"""Backend selection, made in one place.

Three implementations of the selective scan exist:

* ``torch``   the pure-PyTorch reference (:func:`ssm.selective_scan.selective_scan_ref`); it is the
  source of truth and supports everything: CPU/GPU, float32/float64, double backward, ``vmap``.
* ``cpu-fused`` C++ kernels (``ssm/csrc/ssm_cpu.cpp``) built at first use with
  ``torch.utils.cpp_extension``; they keep the state in registers and recompute it in backward.
  Outside ``torch.func`` a first-order kernel with the whole epilogue runs; a double backward,
  and every ``torch.func`` transform, go through :mod:`ssm.selective_recurrence`, the recurrence
  alone with vmap, forward-mode and double-backward rules (JVP kernels of its forward and backward).
* ``cuda``    mamba-ssm's ``selective_scan_fn`` (optional ``cuda`` extra). First-order only.

:func:`ssm.selective_scan.selective_scan` picks one for a call. Anything that needs what a fused
path lacks (a CUDA tensor inside a ``torch.func`` transform, or ``backend="torch"``) falls back to
the reference and says so once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger("ssm")

BACKENDS = ("auto", "torch", "cuda")

_said: set[str] = set()


def log_once(key: str, msg: str, level: int = logging.INFO) -> None:
    """Log ``msg`` the first time ``key`` is seen in this process."""
    if key not in _said:
        _said.add(key)
        log.log(level, msg)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def functorch_active() -> bool:
    """True inside ``torch.func`` transforms (grad, vmap, ...), where fused kernels cannot run."""
    try:
        return torch._C._functorch.peek_interpreter_stack() is not None
    except AttributeError:  # pragma: no cover - very old torch
        return False


# -- mamba-ssm (CUDA) ---------------------------------------------------------------------------
_mamba_ssm: Any = None
_mamba_ssm_checked = False


def mamba_ssm_scan_fn() -> Any:
    """mamba-ssm's ``selective_scan_fn`` or None where it (or CUDA) is not available."""
    global _mamba_ssm, _mamba_ssm_checked
    if not _mamba_ssm_checked:
        _mamba_ssm_checked = True
        if torch.cuda.is_available():
            try:
                from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

                _mamba_ssm = selective_scan_fn
            except Exception as e:  # ImportError, or a kernel that fails to load
                log_once("mamba-ssm-missing", f"mamba-ssm not usable ({e}); using the torch scan")
    return _mamba_ssm


# -- the fused CPU kernel -------------------------------------------------------------------------
_cpu_lock = threading.Lock()
_cpu_ext: Any = None
_cpu_ext_state = "unloaded"  # unloaded | loaded | failed
CSRC = Path(__file__).parent / "csrc" / "ssm_cpu.cpp"


def cpu_kernels_enabled() -> bool:
    return os.environ.get("SSM_DISABLE_CPU_KERNELS", "0") not in ("1", "true", "yes")


def cpu_ext() -> Any:
    """The compiled CPU extension, built on first use; None if it can't be built here.

    The build is cached by torch (``TORCH_EXTENSIONS_DIR``) under a name that hashes the source,
    the torch version and the machine, so a changed kernel or another CPU never reuses a stale
    binary. Set ``SSM_DISABLE_CPU_KERNELS=1`` to force the pure-torch path.
    """
    global _cpu_ext, _cpu_ext_state
    if _cpu_ext_state == "loaded" or _cpu_ext_state == "failed" or not cpu_kernels_enabled():
        return _cpu_ext
    with _cpu_lock:
        if _cpu_ext_state != "unloaded":
            return _cpu_ext
        try:
            from torch.utils import cpp_extension

            src = CSRC.read_bytes()
            flags = ["-O3", "-march=native", "-ffast-math", "-fopenmp"]
            key = hashlib.sha1(
                src
                + torch.__version__.encode()
                + platform.machine().encode()
                + _cpu_model().encode()
                + " ".join(flags).encode()
            ).hexdigest()[:12]
            _cpu_ext = cpp_extension.load(
                name=f"ssm_cpu_{key}",
                sources=[str(CSRC)],
                extra_cflags=flags,
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
            _cpu_ext_state = "loaded"
            log_once("cpu-kernels", "ssm: fused CPU kernels loaded")
        except Exception as e:  # no compiler, no ninja, ...
            _cpu_ext, _cpu_ext_state = None, "failed"
            log_once(
                "cpu-kernels-failed",
                f"ssm: fused CPU kernels unavailable ({type(e).__name__}: {e}); "
                "using the pure-torch reference path",
                logging.WARNING,
            )
    return _cpu_ext


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


def fused_allowed(backend: str = "auto", what: str = "scan") -> bool:
    """Whether a fused (first-order) kernel may run now.

    Inside a ``torch.func`` transform it may not, and the fallback is logged once.
    """
    if backend == "torch":
        return False
    if functorch_active():
        log_once(
            f"functorch-{what}",
            f"ssm: torch.func transform active; {what} uses the pure-torch reference "
            "(fused kernels support neither vmap nor double backward)",
        )
        return False
    return True


def use_cpu_fused(*tensors: Tensor, backend: str = "auto", what: str = "scan") -> bool:
    if backend == "cuda":
        return False
    if not all(t.device.type == "cpu" for t in tensors):
        return False
    if not all(t.dtype in (torch.float32, torch.float64) for t in tensors):
        return False
    return fused_allowed(backend=backend, what=what) and cpu_ext() is not None


def nested_forward_mode() -> bool:
    """True inside two or more nested ``torch.func.jvp`` levels (forward over forward, e.g. the
    forward-mode HVP of an objective that itself takes a gradient). There torch (2.13) silently
    drops the outer tangent through an ``autograd.Function``'s ``jvp`` rule (it comes out zero;
    pytorch/pytorch#197867), so ssm's custom Functions step aside for plain torch ops."""
    try:
        from torch._C._functorch import TransformType
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    except ImportError:  # pragma: no cover - other torch versions
        return False
    jvps = [i for i in retrieve_all_functorch_interpreters() if i.key() == TransformType.Jvp]
    return len(jvps) >= 2


def use_cpu_core(*tensors: Tensor, backend: str = "auto") -> bool:
    """Whether the twice-differentiable fused scan (:mod:`ssm.selective_recurrence`) may run:
    CPU float tensors, the extension built, and no backend pinned. Unlike the first-order kernels
    it is allowed inside ``torch.func`` transforms (it has vmap, jvp and double-backward rules)."""
    if backend != "auto" or nested_forward_mode():
        return False
    if not all(t.device.type == "cpu" for t in tensors):
        return False
    if not all(t.dtype in (torch.float32, torch.float64) for t in tensors):
        return False
    return cpu_ext() is not None


def use_cuda_fused(*tensors: Tensor, backend: str = "auto", what: str = "scan") -> bool:
    if not all(t.is_cuda for t in tensors):
        if backend == "cuda":
            raise ValueError("backend='cuda' needs CUDA tensors; move the module with .cuda()")
        return False
    if not fused_allowed(backend=backend, what=what):
        return False
    fn = mamba_ssm_scan_fn()
    if fn is None and backend == "cuda":
        raise ValueError(
            "backend='cuda' needs mamba-ssm: pip install 'ssm-lifelong-metarl[cuda]' "
            "(builds CUDA kernels; needs nvcc)"
        )
    return fn is not None
