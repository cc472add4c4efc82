"""The sequence-layer contract, for every kind in ``ssm.KINDS``.

* step mode and sequence mode agree (outputs and final states), with and without resets;
* a reset cuts all dependence on the past;
* gradients agree between the two modes, and pass ``gradcheck``;
* second-order derivatives (HVPs) agree between ``torch.func`` and autograd;
* ``vmap`` over stacked parameter sets equals a loop;
* float32 and float64 both work and keep their dtype.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    BATCH,
    D_MODEL,
    make,
    max_err,
    random_resets,
    random_state,
    run_steps,
)
from torch.func import functional_call, grad, jvp, stack_module_state, vmap

import ssm

L = 37  # not a multiple of S4D's chunk (16): the last chunk is padded
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _inputs(dtype, length=L, batch=BATCH, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, D_MODEL, generator=g, dtype=dtype)


def _real_parts(state):
    """Real views of a state, so losses and comparisons treat complex states uniformly."""
    return [torch.view_as_real(s) if s.is_complex() else s for s in state]


def _loss(y, state, seed=4):
    """A generic scalar loss of the outputs and the final state (random weights)."""
    g = torch.Generator().manual_seed(seed)
    total = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    for s in _real_parts(state):
        total = total + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    return total


# -- 1. step mode == sequence mode ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("with_resets", [True, False], ids=["resets", "no_resets"])
def test_step_matches_sequence_with_initial_state(kind, dtype, with_resets):
    layer = make(kind, dtype=dtype)
    x = _inputs(dtype)
    state = random_state(layer, BATCH, dtype=dtype)
    resets = random_resets(BATCH, L) if with_resets else None
    with torch.no_grad():  # Mamba: the fused inference step against the fused scan
        y_seq, s_seq = layer(x, state, resets)
        y_step, s_step = run_steps(layer, x, state, resets)
    assert y_seq.shape == (BATCH, L, D_MODEL)
    assert max_err(y_seq, y_step) < TOL[dtype]
    assert len(s_seq) == len(s_step) == len(state)
    for a, b in zip(s_seq, s_step, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert max_err(s_seq, s_step) < TOL[dtype]


@pytest.mark.parametrize("length", [1, 2, 16, 40])
def test_step_matches_sequence_with_grad_enabled_and_various_lengths(kind, length):
    """Outside no_grad Mamba's step takes the torch path; lengths around S4D's chunk size."""
    layer = make(kind)
    x = _inputs(torch.float64, length=length)
    state = random_state(layer, BATCH)
    resets = random_resets(BATCH, length, p=0.3)
    y_seq, s_seq = layer(x, state, resets)
    y_step, s_step = run_steps(layer, x, state, resets)
    assert max_err(y_seq, y_step) < 1e-10
    assert max_err(s_seq, s_step) < 1e-10


def test_zero_state_default_equals_explicit_initial_state(kind):
    layer = make(kind)
    x = _inputs(torch.float64)
    with torch.no_grad():
        y0, s0 = layer(x)
        y1, s1 = layer(x, layer.initial_state(BATCH))
        y2, s2 = run_steps(layer, x, None)
    for s in layer.initial_state(BATCH):
        assert torch.count_nonzero(s) == 0
    assert max_err(y0, y1) < 1e-12 and max_err(s0, s1) < 1e-12
    assert max_err(y0, y2) < 1e-10 and max_err(s0, s2) < 1e-10


def test_all_false_resets_equal_no_resets(kind):
    """Different code paths (S4D: FFT vs chunked scan; GRU/LSTM: fused vs loop) must agree."""
    layer = make(kind)
    x = _inputs(torch.float64)
    state = random_state(layer, BATCH)
    with torch.no_grad():
        y0, s0 = layer(x, state)
        y1, s1 = layer(x, state, torch.zeros(BATCH, L, dtype=torch.bool))
    assert max_err(y0, y1) < 1e-10
    assert max_err(s0, s1) < 1e-10


def test_reset_at_start_equals_zero_initial_state(kind):
    layer = make(kind)
    x = _inputs(torch.float64)
    resets = torch.zeros(BATCH, L, dtype=torch.bool)
    resets[:, 0] = True
    with torch.no_grad():
        y0, s0 = layer(x, random_state(layer, BATCH), resets)
        y1, s1 = layer(x)
    assert max_err(y0, y1) < 1e-10
    assert max_err(s0, s1) < 1e-10


@pytest.mark.parametrize("split", [1, 13, 20])
def test_chunked_sequence_with_carried_state_equals_whole_sequence(kind, split):
    """The final state of one call is exactly the state the next call needs."""
    layer = make(kind)
    x = _inputs(torch.float64)
    state = random_state(layer, BATCH)
    resets = random_resets(BATCH, L, p=0.2)
    with torch.no_grad():
        y, s = layer(x, state, resets)
        y_a, s_a = layer(x[:, :split], state, resets[:, :split])
        y_b, s_b = layer(x[:, split:], s_a, resets[:, split:])
    assert max_err(y, torch.cat([y_a, y_b], dim=1)) < 1e-10
    assert max_err(s, s_b) < 1e-10


# -- 2. a reset cuts the past --------------------------------------------------------------------
@pytest.mark.parametrize("r", [1, 7, 20])
@pytest.mark.parametrize("mode", ["sequence", "step"])
def test_outputs_after_reset_do_not_depend_on_the_past(kind, r, mode):
    layer = make(kind)
    x = _inputs(torch.float64)
    state = random_state(layer, BATCH)
    resets = random_resets(BATCH, L, p=0.1)
    row = 1
    resets[row] = False
    resets[row, r] = True
    resets[row, r + 9] = True  # a later reset as well

    x2 = x.clone()
    x2[row, :r] += torch.randn(r, D_MODEL, dtype=torch.float64)
    state2 = tuple(s.clone() for s in state)
    for s in state2:
        s[row] = s[row] + 1.0 + (1j if s.is_complex() else 0)

    fn = layer if mode == "sequence" else (lambda *a: run_steps(layer, *a))
    with torch.no_grad():
        y1, s1 = fn(x, state, resets)
        y2, s2 = fn(x2, state2, resets)
    # after the reset: identical, to rounding
    assert max_err(y1[row, r:], y2[row, r:]) < 1e-12
    assert max_err([s[row] for s in s1], [s[row] for s in s2]) < 1e-12
    # other rows: untouched
    others = [b for b in range(BATCH) if b != row]
    assert max_err(y1[others], y2[others]) < 1e-12
    # before the reset: the perturbation is visible (so the test can fail)
    assert (y1[row, :r] - y2[row, :r]).abs().max() > 1e-4


# -- 3. gradients: sequence mode == step mode -----------------------------------------------------
@pytest.mark.parametrize("with_resets", [True, False], ids=["resets", "no_resets"])
def test_sequence_gradients_match_step_gradients(kind, with_resets):
    layer = make(kind)
    x0 = _inputs(torch.float64, length=23)
    state0 = random_state(layer, BATCH)
    resets = random_resets(BATCH, 23) if with_resets else None
    params = [p for p in layer.parameters() if p.requires_grad]
    assert params

    def grads(mode):
        x = x0.clone().requires_grad_(True)
        state = tuple(s.clone().requires_grad_(True) for s in state0)
        if mode == "sequence":
            y, s = layer(x, state, resets)
        else:
            y, s = run_steps(layer, x, state, resets)
        return torch.autograd.grad(_loss(y, s), [x, *state, *params])

    g_seq, g_step = grads("sequence"), grads("step")
    for a, b in zip(g_seq, g_step, strict=True):
        assert torch.isfinite(torch.view_as_real(a) if a.is_complex() else a).all()
        scale = max(1.0, b.abs().max().item())
        assert (a - b).abs().max().item() < 1e-10 * scale
    # the gradient w.r.t. the initial state is not trivially zero
    assert max(g.abs().max().item() for g in g_seq[1 : 1 + len(state0)]) > 1e-6


# -- 4. gradcheck ----------------------------------------------------------------------------------
@pytest.mark.parametrize("with_resets", [True, False], ids=["resets", "no_resets"])
def test_gradcheck_wrt_input_and_initial_state(kind, with_resets):
    torch.manual_seed(0)
    kw = {} if kind in ("gru", "lstm") else {"d_state": 2}
    if kind == "mamba":
        kw.update(d_conv=2, expand=1)
    layer = ssm.make_layer(kind, 3, **kw).double()
    b, length = 2, 5
    x = torch.randn(b, length, 3, dtype=torch.float64, requires_grad=True)
    state = tuple((0.5 * torch.randn_like(s)).requires_grad_(True) for s in layer.initial_state(b))
    resets = None
    if with_resets:
        resets = torch.zeros(b, length, dtype=torch.bool)
        resets[0, 2] = resets[1, 0] = resets[1, 4] = True

    def f(x, *state):
        y, s = layer(x, state, resets)
        return (y, *_real_parts(s))

    assert torch.autograd.gradcheck(f, (x, *state), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_wrt_input_alone(kind):
    torch.manual_seed(1)
    kw = {} if kind in ("gru", "lstm") else {"d_state": 2}
    layer = ssm.make_layer(kind, 3, **kw).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    resets = torch.tensor([[False, False, True, False, False], [True] + [False] * 4])
    assert torch.autograd.gradcheck(lambda x: layer(x, None, resets)[0], (x,))


# -- 5. Hessian-vector products --------------------------------------------------------------------
def test_hessian_vector_product_torch_func_matches_autograd(kind):
    layer = make(kind)
    x = _inputs(torch.float64, length=12)
    state = random_state(layer, BATCH)
    resets = random_resets(BATCH, 12, p=0.2)
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = {n: p.detach().clone() for n, p in layer.named_parameters() if n in names}
    g = torch.Generator().manual_seed(5)
    vec = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}

    def loss(p):
        y, s = functional_call(layer, p, (x, state, resets))
        return (torch.tanh(y) ** 2).sum() + sum((t**2).sum() for t in _real_parts(s))

    # forward-over-reverse with torch.func
    _, hvp_func = jvp(grad(loss), (params,), (vec,))
    # double backward with autograd (Mamba: the fused scan's create_graph path)
    leaves = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    y, s = functional_call(layer, leaves, (x, state, resets))  # no transform: fused paths
    out = (torch.tanh(y) ** 2).sum() + sum((t**2).sum() for t in _real_parts(s))
    gr = torch.autograd.grad(out, list(leaves.values()), create_graph=True)
    dot = sum((a * vec[n]).sum() for a, n in zip(gr, leaves, strict=True))
    hvp_ag = torch.autograd.grad(dot, list(leaves.values()))

    total = 0.0
    for n, b in zip(leaves, hvp_ag, strict=True):
        a = hvp_func[n]
        assert torch.isfinite(a).all() and torch.isfinite(b).all(), n
        assert (a - b).abs().max().item() < 1e-9 * max(1.0, b.abs().max().item()), n
        total += b.abs().sum().item()
    assert total > 1e-6  # the HVP is not trivially zero


# -- 6. vmap over stacked parameter sets -----------------------------------------------------------
def test_vmap_over_stacked_parameters_equals_loop(kind):
    models = [make(kind, seed=10 + i) for i in range(4)]
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0])
    x = _inputs(torch.float64, length=19)
    state = random_state(models[0], BATCH)
    resets = random_resets(BATCH, 19, p=0.2)

    def f(p, b):
        return functional_call(base, (p, b), (x, state, resets))

    y_v, s_v = vmap(f)(params, buffers)
    with torch.no_grad():
        outs = [m(x, state, resets) for m in models]
    y_loop = torch.stack([o[0] for o in outs])
    assert y_v.shape == (4, BATCH, 19, D_MODEL)
    assert max_err(y_v, y_loop) < 1e-10
    for i, s in enumerate(s_v):
        assert max_err(s, torch.stack([o[1][i] for o in outs])) < 1e-10
    # the four parameter sets really differ
    assert (y_loop[0] - y_loop[1]).abs().max() > 1e-3


def test_vmap_over_batch_of_inputs_equals_batched_call(kind):
    """vmap over an extra leading axis of x (per-example) equals the ordinary batched call."""
    layer = make(kind)
    x = _inputs(torch.float64, length=9, batch=4).reshape(4, 1, 9, D_MODEL)
    resets = random_resets(4, 9, p=0.3).reshape(4, 1, 9)
    with torch.no_grad():
        y_v, _ = vmap(lambda xi, ri: layer(xi, None, ri))(x, resets)
        y_b, _ = layer(x[:, 0], None, resets[:, 0])
    assert max_err(y_v[:, 0], y_b) < 1e-10


# -- 8. Mamba backends -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_mamba_torch_backend_matches_fused_backend(dtype, kernel_calls):
    fused = make("mamba", dtype=dtype, backend="auto")
    ref = make("mamba", dtype=dtype, backend="torch")
    ref.load_state_dict(fused.state_dict())
    x0 = _inputs(dtype, length=29)
    state0 = random_state(fused, BATCH, dtype=dtype)
    resets = random_resets(BATCH, 29)

    def run(layer):
        x = x0.clone().requires_grad_(True)
        state = tuple(s.clone().requires_grad_(True) for s in state0)
        y, s = layer(x, state, resets)
        params = list(layer.parameters())
        g = torch.autograd.grad(_loss(y, s), [x, *state, *params], allow_unused=True)
        return y.detach(), [t.detach() for t in s], g

    y_r, s_r, g_r = run(ref)
    assert kernel_calls == []
    y_f, s_f, g_f = run(fused)
    assert kernel_calls == ["selective_scan_fwd", "selective_scan_bwd"]
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert max_err(y_f, y_r) < tol
    assert max_err(s_f, s_r) < tol
    for a, b in zip(g_f, g_r, strict=True):
        if b is None:
            assert a is None
            continue
        assert (a - b).abs().max().item() < tol * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_mamba_fused_inference_step_matches_torch_step(dtype, kernel_calls):
    fused = make("mamba", dtype=dtype, backend="auto")
    ref = make("mamba", dtype=dtype, backend="torch")
    ref.load_state_dict(fused.state_dict())
    x = _inputs(dtype, length=15)
    state = random_state(fused, BATCH, dtype=dtype)
    resets = random_resets(BATCH, 15, p=0.3)
    with torch.no_grad():
        y_r, s_r = run_steps(ref, x, state, resets)
        assert "mamba_step" not in kernel_calls  # backend="torch" never calls the kernel
        y_f, s_f = run_steps(fused, x, state, resets)
        assert kernel_calls.count("mamba_step") == 15  # the fused kernel really ran
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert max_err(y_f, y_r) < tol
    assert max_err(s_f, s_r) < tol


def test_mamba_without_conv_bias_step_matches_sequence():
    layer = make("mamba", conv_bias=False)
    x = _inputs(torch.float64, length=14)
    state = random_state(layer, BATCH)
    resets = random_resets(BATCH, 14)
    with torch.no_grad():
        y_seq, s_seq = layer(x, state, resets)
        y_step, s_step = run_steps(layer, x, state, resets)
    assert max_err(y_seq, y_step) < 1e-10
    assert max_err(s_seq, s_step) < 1e-10


# -- fused inference steps (no_grad) == differentiable steps ------------------------------------
FUSED_STEP_KINDS = ("s4d", "s5", "mamba")  # kinds with a fused C++ inference step


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_inference_step_matches_differentiable_step(kind, dtype, kernel_calls):
    """Under no_grad a layer may take a fused kernel; it must agree with the autograd step."""
    layer = make(kind, dtype=dtype)
    x = _inputs(dtype, length=12)
    state = random_state(layer, BATCH, dtype=dtype)
    resets = random_resets(BATCH, 12, p=0.3)
    y_g, s_g = run_steps(layer, x, state, resets)  # grad enabled: the torch path
    assert kernel_calls == []
    with torch.no_grad():
        y_n, s_n = run_steps(layer, x, state, resets)
    if kind in FUSED_STEP_KINDS:
        assert len(kernel_calls) == 12, "the fused inference step was not used"
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert y_n.dtype == dtype
    assert max_err(y_n, y_g.detach()) < tol
    assert max_err(s_n, [t.detach() for t in s_g]) < tol


def _check_inference_step_matches_fresh_copy(layer, dtype=torch.float64):
    x = _inputs(dtype, length=1)[:, 0]
    state = random_state(layer, BATCH, dtype=dtype)
    with torch.no_grad():
        y_n, _ = layer.step(x, state)
    y_g, _ = copy.deepcopy(layer).step(x, state)  # grad enabled: recomputed from the parameters
    assert max_err(y_n, y_g.detach()) < (1e-12 if dtype == torch.float64 else 1e-5)


def _warm(layer, dtype=torch.float64):
    """One no_grad step, so that any inference-time caches are filled."""
    with torch.no_grad():
        layer.step(_inputs(dtype, length=1)[:, 0], None)


def test_inference_step_sees_optimizer_updates(kind):
    layer = make(kind)
    _warm(layer)
    y, _ = layer(_inputs(torch.float64, length=5))
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    y.square().sum().backward()
    opt.step()
    _check_inference_step_matches_fresh_copy(layer)


def test_inference_step_sees_load_state_dict(kind):
    layer = make(kind)
    _warm(layer)
    layer.load_state_dict(make(kind, seed=5).state_dict())
    _check_inference_step_matches_fresh_copy(layer)


def test_inference_step_sees_replaced_parameters(kind):
    layer = make(kind)
    _warm(layer)
    other = make(kind, seed=6)
    for (name, _), (_, p) in zip(layer.named_parameters(), other.named_parameters(), strict=True):
        mod = layer
        *path, leaf = name.split(".")
        for part in path:
            mod = getattr(mod, part)
        setattr(mod, leaf, torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
    _check_inference_step_matches_fresh_copy(layer)


@pytest.mark.parametrize("kind_", FUSED_STEP_KINDS)
def test_inference_step_sees_in_place_updates_through_data(kind_, kernel_calls):
    layer = make(kind_)
    _warm(layer)
    target = make(kind_, seed=7)
    for p, q in zip(layer.parameters(), target.parameters(), strict=True):
        p.data.mul_(0.5).add_(0.5 * q.data)  # polyak averaging, the classic way
    _check_inference_step_matches_fresh_copy(layer)


@pytest.mark.parametrize("kind_", FUSED_STEP_KINDS)
def test_inference_step_sees_vector_to_parameters(kind_, kernel_calls):
    layer = make(kind_)
    _warm(layer)
    vec = torch.nn.utils.parameters_to_vector(make(kind_, seed=8).parameters())
    torch.nn.utils.vector_to_parameters(vec, layer.parameters())
    _check_inference_step_matches_fresh_copy(layer)


@pytest.mark.parametrize("kind_", FUSED_STEP_KINDS)
def test_inference_step_after_dtype_conversion(kind_, kernel_calls):
    layer = make(kind_)
    _warm(layer)
    layer.float()
    _check_inference_step_matches_fresh_copy(layer, torch.float32)


# -- 10. dtypes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_output_and_state_dtypes_follow_the_input(kind, dtype):
    layer = make(kind, dtype=dtype)
    x = _inputs(dtype, length=6)
    resets = random_resets(BATCH, 6)
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    y, s = layer(x, None, resets)
    y1, s1 = layer.step(x[:, 0], s, resets[:, 0])
    for out, st in ((y, s), (y1, s1)):
        assert out.dtype == dtype
        assert torch.isfinite(out).all()
        for t in st:
            assert t.dtype == (cdtype if t.is_complex() else dtype)
    for t in layer.initial_state(BATCH):
        assert t.dtype in (dtype, cdtype)
    assert y1.shape == (BATCH, D_MODEL)


def test_float32_and_float64_layers_agree(kind):
    l64 = make(kind, dtype=torch.float64)
    l32 = make(kind, dtype=torch.float32)
    x = _inputs(torch.float64)
    resets = random_resets(BATCH, L)
    with torch.no_grad():
        y64, _ = l64(x, None, resets)
        y32, _ = l32(x.float(), None, resets)
    assert y32.dtype == torch.float32
    assert (y64 - y32.double()).abs().max() < 1e-4


def test_initial_state_shapes_and_batch_size_validation(kind):
    layer = make(kind)
    st = layer.initial_state(5)
    assert isinstance(st, tuple) and len(st) >= 1
    for t in st:
        assert t.shape[0] == 5
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        layer.initial_state(0)
