"""headwise.modules.Linear: nn.Linear's results, with the blocked product for a few rows on the CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from headwise.modules import Linear


class _Calls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5,), (1, 5), (3, 5), (2, 1, 5), (2, 4, 5), (3, 3, 5)])
def test_equals_f_linear_in_float64(shape, bias):
    torch.manual_seed(0)
    layer = Linear(5, 6, bias=bias, dtype=torch.float64)
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=1e-12)


def test_few_rows_take_the_blocked_product_and_others_f_linear():
    layer = Linear(8, 6, dtype=torch.float64)
    for rows, blocked in ((1, True), (8, True), (9, False)):
        with _Calls() as calls:
            layer(torch.randn(rows, 8, dtype=torch.float64))
        assert ("baddbmm" in calls.names) == blocked and ("linear" in calls.names) != blocked, (rows, calls.names)
    odd = Linear(8, 5, dtype=torch.float64)  # an odd number of rows of the weight: no two blocks
    with _Calls() as calls:
        odd(torch.randn(1, 8, dtype=torch.float64))
    assert "linear" in calls.names
    half = Linear(8, 6, dtype=torch.bfloat16)  # measured slower in bfloat16
    with _Calls() as calls:
        half(torch.randn(1, 8, dtype=torch.bfloat16))
    assert "linear" in calls.names


def test_gradients_equal_f_linear():
    torch.manual_seed(0)
    layer = Linear(7, 4, dtype=torch.float64)
    x = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    grads = torch.autograd.grad(layer(x).square().sum(), (x, layer.weight, layer.bias))
    expected = torch.autograd.grad(F.linear(x, layer.weight, layer.bias).square().sum(), (x, layer.weight, layer.bias))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_float32_against_the_float64_oracle():
    from tests.helpers import assert_close_to_oracle

    torch.manual_seed(0)
    layer = Linear(64, 32)
    x = torch.randn(3, 64)
    oracle = F.linear(x.double(), layer.weight.double(), layer.bias.double())
    assert_close_to_oracle(layer(x), oracle, F.linear(x, layer.weight, layer.bias))


def test_a_wrong_input_width_gets_torch_error_and_state_dict_is_nn_linear():
    layer = Linear(4, 6)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        layer(torch.randn(1, 8))
    plain = torch.nn.Linear(4, 6)
    plain.load_state_dict(layer.state_dict())
    assert layer.state_dict().keys() == plain.state_dict().keys()
