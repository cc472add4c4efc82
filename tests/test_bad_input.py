"""Bad input raises ``ValueError`` with a message naming what was expected; nothing broadcasts."""

from __future__ import annotations

import pytest
import torch
from conftest import BATCH, D_MODEL, make, random_state

import ssm

L = 10


@pytest.fixture
def layer(kind):
    return make(kind)


def _x(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype)


# -- x ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(BATCH, D_MODEL), (BATCH, 2, L, D_MODEL), (D_MODEL,)])
def test_forward_rejects_wrong_rank(layer, shape):
    with pytest.raises(ValueError, match=rf"x must have shape \(B, L, D\) with D={D_MODEL}.*rank"):
        layer(_x(*shape))


@pytest.mark.parametrize("shape", [(BATCH, L, D_MODEL), (D_MODEL,)])
def test_step_rejects_wrong_rank(layer, shape):
    with pytest.raises(ValueError, match=rf"x must have shape \(B, D\) with D={D_MODEL}"):
        layer.step(_x(*shape), None)


def test_forward_rejects_wrong_last_dim(layer):
    pattern = rf"last dimension D={D_MODEL}, got shape \({BATCH}, {L}, 5\)"
    with pytest.raises(ValueError, match=pattern):
        layer(_x(BATCH, L, D_MODEL - 1))
    with pytest.raises(ValueError, match=rf"last dimension D={D_MODEL}"):
        layer(_x(BATCH, L, 1))  # would broadcast if unchecked


def test_step_rejects_wrong_last_dim(layer):
    with pytest.raises(ValueError, match=rf"last dimension D={D_MODEL}, got shape \({BATCH}, 7\)"):
        layer.step(_x(BATCH, D_MODEL + 1), None)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_rejects_integer_and_bool_inputs(layer, dtype):
    x = torch.ones(BATCH, L, D_MODEL).to(dtype)
    with pytest.raises(ValueError, match=rf"floating-point.*got dtype {dtype}"):
        layer(x)
    with pytest.raises(ValueError, match=rf"floating-point.*got dtype {dtype}"):
        layer.step(x[:, 0], None)


def test_rejects_non_tensor_input(layer):
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        layer([[0.0] * D_MODEL])


def test_rejects_input_dtype_different_from_parameters(layer):
    with pytest.raises(
        ValueError,
        match=r"x has dtype torch.float32 but the layer's parameters "
        r"are torch.float64",
    ):
        layer(_x(BATCH, L, D_MODEL, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"x has dtype torch.float32 but the layer's parameters"):
        layer.step(_x(BATCH, D_MODEL, dtype=torch.float32), None)
    layer32 = layer.float()
    with pytest.raises(
        ValueError,
        match=r"x has dtype torch.float64 but the layer's parameters "
        r"are torch.float32",
    ):
        layer32(_x(BATCH, L, D_MODEL))


def test_rejects_empty_sequences(layer):
    with pytest.raises(ValueError, match="non-empty"):
        layer(_x(BATCH, 0, D_MODEL))
    with pytest.raises(ValueError, match="non-empty"):
        layer(_x(0, L, D_MODEL))


# -- resets ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(BATCH, L + 1), (BATCH, 1), (BATCH,), (1, L), (BATCH, L, 1)])
def test_forward_rejects_resets_of_wrong_shape(layer, shape):
    resets = torch.zeros(shape, dtype=torch.bool)
    with pytest.raises(ValueError, match=rf"resets must have shape \({BATCH}, {L}\)"):
        layer(_x(BATCH, L, D_MODEL), None, resets)


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.uint8])
def test_forward_rejects_non_bool_resets(layer, dtype):
    resets = torch.zeros(BATCH, L, dtype=dtype)
    with pytest.raises(ValueError, match=rf"resets must have dtype torch.bool, got {dtype}"):
        layer(_x(BATCH, L, D_MODEL), None, resets)


def test_forward_rejects_non_tensor_resets(layer):
    with pytest.raises(ValueError, match=r"resets must be a bool torch.Tensor"):
        layer(_x(BATCH, L, D_MODEL), None, [[False] * L] * BATCH)


def test_step_rejects_bad_reset(layer):
    x = _x(BATCH, D_MODEL)
    with pytest.raises(ValueError, match=rf"reset must have shape \({BATCH}\)"):
        layer.step(x, None, torch.zeros(BATCH, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=rf"reset must have shape \({BATCH}\)"):
        layer.step(x, None, torch.zeros(1, dtype=torch.bool))
    with pytest.raises(ValueError, match="reset must have dtype torch.bool"):
        layer.step(x, None, torch.zeros(BATCH))


# -- state -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("other_batch", [1, BATCH + 2])
def test_rejects_state_from_another_batch_size(layer, other_batch):
    state = layer.initial_state(other_batch)
    with pytest.raises(
        ValueError,
        match=rf"state\[0\] must have shape \({BATCH}, .*for a batch "
        rf"of {BATCH}, got \({other_batch}, ",
    ):
        layer(_x(BATCH, L, D_MODEL), state)
    with pytest.raises(ValueError, match=rf"for a batch of {BATCH}.*another batch size"):
        layer.step(_x(BATCH, D_MODEL), state)


def test_rejects_state_with_wrong_number_of_tensors(layer):
    state = layer.initial_state(BATCH)
    n = len(state)
    with pytest.raises(ValueError, match=rf"state must be a tuple of {n} tensors.*length {n + 1}"):
        layer(_x(BATCH, L, D_MODEL), (*state, state[0]))
    with pytest.raises(ValueError, match=rf"state must be a tuple of {n} tensors"):
        layer.step(_x(BATCH, D_MODEL), state[0])  # a bare tensor, not a tuple


def test_rejects_real_state_where_complex_expected_and_vice_versa(layer):
    state = layer.initial_state(BATCH)
    flipped = tuple(
        s.real.contiguous() if s.is_complex() else s.to(torch.complex128) for s in state
    )
    with pytest.raises(ValueError, match=r"state\[0\] must be (complex|real floating), got"):
        layer(_x(BATCH, L, D_MODEL), flipped)


@pytest.mark.parametrize(
    "x_dtype,state_dtype", [(torch.float64, torch.float32), (torch.float32, torch.float64)]
)
def test_rejects_state_dtype_different_from_input(kind, x_dtype, state_dtype):
    """A float32 state must not be mixed silently into a float64 layer (or vice versa)."""
    layer = make(kind, dtype=x_dtype)
    state = random_state(layer, BATCH, dtype=state_dtype)
    got = "torch.complex(64|128)" if state[0].is_complex() else str(state_dtype)
    pattern = rf"state\[0\] has dtype {got}, which does not match x \({x_dtype}\)"
    with pytest.raises(ValueError, match=pattern):
        layer(_x(BATCH, L, D_MODEL, dtype=x_dtype), state)
    with pytest.raises(ValueError, match=pattern), torch.no_grad():  # the fused steps too
        layer.step(_x(BATCH, D_MODEL, dtype=x_dtype), state)
    with pytest.raises(ValueError, match=pattern):
        layer.step(_x(BATCH, D_MODEL, dtype=x_dtype), state)


def test_valid_input_after_errors_still_works(layer):
    """Sanity: the same layer accepts well-formed input (so the errors above are not blanket)."""
    x = _x(BATCH, L, D_MODEL)
    y, s = layer(x, layer.initial_state(BATCH), torch.zeros(BATCH, L, dtype=torch.bool))
    assert y.shape == x.shape
    y1, _ = layer.step(x[:, 0], s, torch.zeros(BATCH, dtype=torch.bool))
    assert y1.shape == (BATCH, D_MODEL)


# -- make_layer ------------------------------------------------------------------------------------
def test_make_layer_rejects_unknown_kind():
    with pytest.raises(ValueError, match=r"unknown sequence layer kind 'transformer'.*'gru'"):
        ssm.make_layer("transformer", 8)


@pytest.mark.parametrize("kind_", sorted(ssm.KINDS))
def test_make_layer_rejects_unknown_keyword(kind_):
    with pytest.raises(ValueError, match=rf"unknown keyword\(s\) \['bogus'\] for '{kind_}'"):
        ssm.make_layer(kind_, 8, bogus=1)


def test_make_layer_rejects_keyword_of_another_kind():
    with pytest.raises(ValueError, match=r"unknown keyword\(s\) \['d_state'\] for 'gru'"):
        ssm.make_layer("gru", 8, d_state=4)
    with pytest.raises(ValueError, match=r"unknown keyword\(s\) \['d_conv'\] for 's4d'"):
        ssm.make_layer("s4d", 8, d_conv=4)


@pytest.mark.parametrize("d_model", [0, -3, 2.5, True, "8"])
def test_make_layer_rejects_bad_d_model(d_model):
    with pytest.raises(ValueError, match="d_model must be a positive int"):
        ssm.make_layer("s5", d_model)


@pytest.mark.parametrize("kind_", ["s4d", "s5"])
@pytest.mark.parametrize("d_state", [3, 1, 0])
def test_lti_layers_require_even_d_state(kind_, d_state):
    with pytest.raises(ValueError, match=r"d_state must be an even int >= 2"):
        ssm.make_layer(kind_, 8, d_state=d_state)


def test_mamba_rejects_unknown_backend():
    expected = r"backend must be one of \('auto', 'torch', 'cuda', 'chunked'\)"
    with pytest.raises(ValueError, match=expected):
        ssm.make_layer("mamba", 8, backend="triton")


def test_make_layer_accepts_documented_small_configs():
    assert isinstance(ssm.make_layer("s4d", 6, d_state=4), ssm.S4D)
    assert isinstance(ssm.make_layer("s5", 6, d_state=4), ssm.S5)
    m = ssm.make_layer("mamba", 6, d_state=4, d_conv=3, expand=2, backend="torch")
    assert isinstance(m, ssm.Mamba) and m.d_inner == 12
    assert isinstance(ssm.make_layer("gru", 6), ssm.GRU)
    assert isinstance(ssm.make_layer("lstm", 6), ssm.LSTM)


# -- selective_scan --------------------------------------------------------------------------------
def _scan_inputs(batch=2, dim=4, n=3, length=5):
    return dict(
        u=torch.randn(batch, dim, length),
        delta=torch.rand(batch, dim, length),
        A=-torch.rand(dim, n),
        B=torch.randn(batch, n, length),
        C=torch.randn(batch, n, length),
    )


SCAN_CASES = {
    "u_rank": (dict(u=torch.randn(4, 5)), r"u must be \(B, D, L\), got shape \(4, 5\)"),
    "delta_shape": (dict(delta=torch.rand(2, 4, 6)), r"delta must be \(2, 4, 5\) like u"),
    "A_shape": (dict(A=-torch.rand(3, 3)), r"A must be \(D=4, N\), got \(3, 3\)"),
    "B_length": (dict(B=torch.randn(2, 3, 6)), r"B must be \(D, N\)=\(4, 3\), \(B, N, L\)"),
    "C_fixed_shape": (dict(C=torch.randn(4, 2)), r"C must be \(D, N\)=\(4, 3\)"),
    "B_groups": (dict(B=torch.randn(2, 3, 3, 5)), r"B must be .*G dividing D, got \(2, 3, 3, 5\)"),
    "u_int": (dict(u=torch.ones(2, 4, 5, dtype=torch.int64)), r"u must be floating point"),
    "D_shape": (dict(D=torch.ones(5)), r"D must be \(4,\), got \(5,\)"),
    "delta_bias_shape": (dict(delta_bias=torch.ones(4, 1)), r"delta_bias must be \(4,\)"),
    "z_shape": (dict(z=torch.randn(2, 4, 4)), r"z must be \(2, 4, 5\)"),
    "initial_state": (
        dict(initial_state=torch.zeros(3, 4, 3)),
        r"initial_state must be \(2, 4, 3\), got \(3, 4, 3\)",
    ),
    "resets_dtype": (
        dict(resets=torch.zeros(2, 5)),
        r"resets must be a bool tensor of shape \(2, 5\)",
    ),
    "resets_shape": (
        dict(resets=torch.zeros(2, 4, dtype=torch.bool)),
        r"resets must be a bool tensor of shape \(2, 5\)",
    ),
    "backend": (dict(backend="jax"), r"backend must be one of"),
}


@pytest.mark.parametrize("case", list(SCAN_CASES))
def test_selective_scan_rejects_bad_input(case):
    override, pattern = SCAN_CASES[case]
    inp = _scan_inputs()
    kwargs = {}
    for k, v in override.items():
        if k in inp:
            inp[k] = v
        else:
            kwargs[k] = v
    with pytest.raises(ValueError, match=pattern):
        ssm.selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"], **kwargs)


def test_selective_scan_accepts_the_unmodified_inputs():
    inp = _scan_inputs()
    y = ssm.selective_scan(inp["u"], inp["delta"], inp["A"], inp["B"], inp["C"])
    assert y.shape == (2, 4, 5)
