"""Backend selection, made in one place.

Three implementations of the selective scan exist:

* ``torch``   the pure-PyTorch reference (:func:`ssm.selective_scan.selective_scan_ref`); it is the
  source of truth and supports everything: CPU/GPU, float32/float64, double backward, ``vmap``.
* ``cpu-fused`` C++ kernels (``ssm/csrc/ssm_cpu.cpp``) built at first use with
  ``torch.utils.cpp_extension``; they keep the state in registers and recompute it in backward.
  Outside ``torch.func`` a first-order kernel with the whole epilogue runs; a double backward,
  and every ``torch.func`` transform, go through :mod:`ssm.selective_recurrence`, the recurrence
  alone with vmap, forward-mode and double-backward rules (JVP kernels of its forward and backward).
* ``cuda``    mamba-ssm's ``selective_scan_fn`` (optional ``cuda`` extra). First-order only, and
  it takes neither an initial state nor resets.
* ``chunked`` the chunked torch scan (:func:`ssm.selective_scan.selective_scan_chunked` on
  :mod:`ssm.chunked_scan`): about ``2√L`` Python steps instead of ``L``, any order, any transform.

:func:`ssm.selective_scan.selective_scan` picks one for a call. On CUDA, what mamba-ssm's kernel
cannot take (an initial state or resets, as every ``policy_evaluate`` call carries; a
``torch.func`` transform; mamba-ssm missing) goes to the chunked scan; on CPU, what the fused
kernels cannot take falls back to the reference and says so once. ``backend="torch"`` pins the
reference, ``backend="chunked"`` the chunked scan, on any device.

Mamba-2 (:mod:`ssm.mamba2`) has one optional fused path: mamba-ssm's Triton
``mamba_chunk_scan_combined`` for CUDA float32/16 tensors outside ``torch.func`` transforms
(:func:`mamba_ssm_chunk_scan_fn`, :func:`use_cuda_ssd`), its torch chunked SSD everywhere else.

The CUDA branches are written against mamba-ssm's documented signatures but are not exercised by
the CPU test suite (no GPU where it was developed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger("ssm")

BACKENDS = ("auto", "torch", "cuda", "chunked")

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


_mamba2_ssd: Any = None
_mamba2_ssd_checked = False


def mamba_ssm_chunk_scan_fn() -> Any:
    """mamba-ssm's Mamba-2 ``mamba_chunk_scan_combined`` (Triton), or None where it (or CUDA) is
    not available. Imported lazily: importing :mod:`ssm` never needs mamba-ssm or Triton."""
    global _mamba2_ssd, _mamba2_ssd_checked
    if not _mamba2_ssd_checked:
        _mamba2_ssd_checked = True
        if torch.cuda.is_available():
            try:
                from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

                _mamba2_ssd = mamba_chunk_scan_combined
            except Exception as e:  # ImportError, Triton missing, ...
                log_once("mamba2-ssd-missing", f"mamba-ssm SSD not usable ({e}); torch SSD")
    return _mamba2_ssd


def use_chunked_scan(*tensors: Tensor, backend: str = "auto") -> bool:
    """Whether the selective scan should take the chunked torch scan rather than the per-step
    reference: ``backend="chunked"``, or CUDA tensors with no backend pinned to the reference
    (on CUDA its ~2√L steps beat the L steps of the loop; on CPU the fused kernels are faster)."""
    if backend == "chunked":
        return True
    return backend in ("auto", "cuda") and all(t.is_cuda for t in tensors)


def use_cuda_ssd(*tensors: Tensor, backend: str = "auto") -> bool:
    """Whether Mamba-2 may call mamba-ssm's ``mamba_chunk_scan_combined``: CUDA float32/16
    tensors, no transform, backend ``auto`` or ``cuda``, the kernel importable. Untested here."""
    if backend not in ("auto", "cuda") or not all(t.is_cuda for t in tensors):
        if backend == "cuda" and not all(t.is_cuda for t in tensors):
            raise ValueError("backend='cuda' needs CUDA tensors; move the module with .cuda()")
        return False
    if not all(t.dtype in (torch.float32, torch.float16, torch.bfloat16) for t in tensors):
        return False
    if not fused_allowed(backend=backend, what="SSD"):
        return False
    fn = mamba_ssm_chunk_scan_fn()
    if fn is None and backend == "cuda":
        raise ValueError(
            "backend='cuda' needs mamba-ssm with Triton: pip install 'ssm-lifelong-metarl[cuda]'"
        )
    return fn is not None


# -- the fused CPU kernel -------------------------------------------------------------------------
CSRC = Path(__file__).parent / "csrc" / "ssm_cpu.cpp"
POLICY_STEP_SRC = Path(__file__).parent / "csrc" / "policy_step.cpp"


def cpu_kernels_enabled() -> bool:
    return os.environ.get("SSM_DISABLE_CPU_KERNELS", "0") not in ("1", "true", "yes")


class _Extension:
    """One C++ extension, built on first use (:func:`_build_in_child`, under a keyed
    :func:`_build_name`) and loaded once; ``None`` where it cannot be built here or
    ``SSM_DISABLE_CPU_KERNELS=1``."""

    def __init__(
        self,
        prefix: str,
        source: Path,
        cflags: list[str],
        ldflags: list[str],
        what: str,
        fallback: str,
        log_key: str,
    ) -> None:
        self.prefix, self.source, self.cflags, self.ldflags = prefix, source, cflags, ldflags
        self.what, self.fallback, self.log_key = what, fallback, log_key
        self.lock = threading.Lock()
        self.module: Any = None
        self.state = "unloaded"  # unloaded | loaded | failed

    def get(self) -> Any:
        if self.state != "unloaded" or not cpu_kernels_enabled():
            return self.module
        with self.lock:
            if self.state != "unloaded":
                return self.module
            try:
                from torch.utils import cpp_extension

                spec: dict[str, Any] = {
                    "name": _build_name(self.prefix, self.source, self.cflags),
                    "sources": [str(self.source)],
                    "extra_cflags": self.cflags,
                    "verbose": False,
                }
                if self.ldflags:
                    spec["extra_ldflags"] = self.ldflags
                _build_in_child(spec)
                self.module = cpp_extension.load(**spec)  # built: ninja finds nothing to do
                self.state = "loaded"
                log_once(self.log_key, f"ssm: {self.what} loaded")
            except Exception as e:  # no compiler, no ninja, ...
                self.module, self.state = None, "failed"
                log_once(
                    f"{self.log_key}-failed",
                    f"ssm: {self.what} unavailable ({type(e).__name__}: {e}); {self.fallback}",
                    logging.WARNING,
                )
        return self.module


_CPU = _Extension(
    "ssm_cpu",
    CSRC,
    ["-O3", "-march=native", "-ffast-math", "-fopenmp"],
    ["-fopenmp"],
    "fused CPU kernels",
    "using the pure-torch reference path",
    "cpu-kernels",
)
_POLICY_STEP = _Extension(
    "ssm_policy_step",
    POLICY_STEP_SRC,
    ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd"],
    [],
    "fused policy step",
    "policies step through the reference path",
    "policy-step",
)


def cpu_ext() -> Any:
    """The compiled CPU extension, built on first use; None if it can't be built here.

    The build is cached by torch (``TORCH_EXTENSIONS_DIR``) under a name that hashes the source,
    the torch version, the machine and the environment (:func:`_build_name`), so a changed kernel
    or another CPU never reuses a stale binary. Set ``SSM_DISABLE_CPU_KERNELS=1`` to force the
    pure-torch path.
    """
    return _CPU.get()


def policy_step_ext() -> Any:
    """The compiled fused policy step (``ssm/csrc/policy_step.cpp``, used by
    :mod:`ssm.fast_step`), built on first use like :func:`cpu_ext`; None where it can't be built
    or ``SSM_DISABLE_CPU_KERNELS=1``."""
    return _POLICY_STEP.get()


def _build_name(prefix: str, source: Path, flags: list[str]) -> str:
    """``prefix_<hash>``: the hash covers the source (its text and its path), the flags, torch's
    version, the machine and the environment (torch's JIT build arguments name its include
    folders, so two environments sharing one build folder would otherwise rebuild over each
    other), so a changed kernel, another CPU, checkout or environment never reuses a stale
    binary."""
    key = hashlib.sha1(
        source.read_bytes()
        + str(source.resolve()).encode()  # the build file names it: two checkouts, two folders
        + torch.__version__.encode()
        + platform.machine().encode()
        + _cpu_model().encode()
        + " ".join(flags).encode()
        + sys.prefix.encode()
        + str(Path(torch.__file__).resolve().parent).encode()
    ).hexdigest()[:12]
    return f"{prefix}_{key}"


def _build_in_child(spec: dict[str, Any]) -> None:
    """Build the extension in a child process of its own process group, so that an interrupt
    (Ctrl-C, SIGTERM) of this process stops the whole build (ninja and the compilers) instead of
    leaving an orphaned compiler, and a killed build leaves no stale lock that would make the next
    build wait forever. Raises ``RuntimeError`` with the compiler's last lines if the build fails.
    """
    from torch.utils import cpp_extension

    build_dir = Path(cpp_extension._get_build_directory(spec["name"], verbose=False))
    if (build_dir / f"{spec['name']}.so").is_file():
        return  # built before (the name hashes source, flags, torch and environment)
    code = (
        "import json, sys\nfrom torch.utils import cpp_extension\n"
        "cpp_extension.load(**json.loads(sys.argv[1]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(spec)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate()
    except BaseException:  # KeyboardInterrupt, a SIGTERM handler's exception, ...
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        (build_dir / "lock").unlink(missing_ok=True)
        raise
    if proc.returncode:
        tail = err.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"building {spec['name']} failed: {' / '.join(tail)}")


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
    if backend in ("torch", "chunked"):
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
