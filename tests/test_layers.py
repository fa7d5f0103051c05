"""fastbn.layers: trained state in and out of PyTorch, Keras and ONNX.

PyTorch modules are compared directly (skipped without torch); Keras and ONNX, which are not
installed, through the formulas of their documentation:

- Keras BatchNormalization: ``(x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta``
  in inference; in training ``moving = moving * momentum + batch * (1 - momentum)`` with the biased
  batch variance; channels last by default. LayerNormalization, GroupNormalization: the usual
  formulas with epsilon inside the square root. RMSNormalization: ``x * rsqrt(mean(x**2) + eps) *
  scale``.
- ONNX BatchNormalization (opset 15): inference as above with ``input_mean``/``input_var``;
  training ``running = input * momentum + current * (1 - momentum)``, ``current_var`` the
  population (biased) variance; channels first.
"""
import numpy as np
import pytest

import fastbn
from fastbn.layers import BatchNorm, GroupNorm, LayerNorm, RMSNorm

BACKENDS = fastbn.available_backends()
RTOL = 1e-5  # float32 state and input throughout


def _x(shape, seed=0, loc=0.0, scale=1.0):
    return (loc + scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _close(a, b, what, rtol=RTOL):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.max(np.abs(b)))), err_msg=what)


# ------------------------------------------------------------------------------------------
# PyTorch
# ------------------------------------------------------------------------------------------

BN_MODULES = [("BatchNorm1d", (16, 3)), ("BatchNorm1d", (6, 3, 7)), ("BatchNorm2d", (4, 3, 5, 6)),
              ("BatchNorm3d", (2, 3, 4, 3, 5))]
BN_SETTINGS = {"default": {}, "momentum-None": {"momentum": None}, "no-affine": {"affine": False},
               "momentum-0.3": {"momentum": 0.3}}


def _randomised(module, torch):
    """A module with non-trivial parameters and running statistics."""
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape) + (0.5 if name != "bias" else -0.5))
    return module


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("setting", BN_SETTINGS)
@pytest.mark.parametrize("name, shape", BN_MODULES, ids=[f"{n}-{len(s)}d" for n, s in BN_MODULES])
def test_batchnorm_from_torch_runs_like_the_module(name, shape, setting, backend):
    """Eval output, three train steps (outputs, gradients, running statistics, batch count) and
    the eval output after them equal the module's; the state goes back into a fresh module."""
    torch = pytest.importorskip("torch")
    module = _randomised(getattr(torch.nn, name)(3, **BN_SETTINGS[setting]), torch)
    layer = BatchNorm.from_torch(module, backend=backend)
    x = _x(shape)
    module.eval()
    with torch.no_grad():
        _close(layer.forward(x, train=False), module(torch.from_numpy(x)).numpy(), "eval out")
    module.train()
    for step in range(3):
        x = _x(shape, seed=step + 1, loc=step, scale=1 + step)
        xt = torch.from_numpy(x).requires_grad_()
        out_t = module(xt)
        dout = _x(shape, seed=10 + step)
        out_t.backward(torch.from_numpy(dout))
        _close(layer.forward(x), out_t.detach().numpy(), f"step {step} out")
        _close(layer.backward(dout), xt.grad.numpy(), f"step {step} dx", rtol=1e-4)
        if module.affine:
            _close(layer.dgamma, module.weight.grad.numpy(), "dgamma", rtol=1e-4)
            _close(layer.dbeta, module.bias.grad.numpy(), "dbeta", rtol=1e-4)
            module.weight.grad = module.bias.grad = None
        else:
            assert layer.dgamma is None and layer.dbeta is None
    state = layer.state_dict()
    assert list(state) == list(module.state_dict())
    for key, value in module.state_dict().items():
        _close(state[key], value.numpy(), key)
    fresh = getattr(torch.nn, name)(3, **BN_SETTINGS[setting])
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    fresh.eval()
    with torch.no_grad():
        _close(layer.forward(x, train=False), fresh(torch.from_numpy(x)).numpy(), "eval out after training")


def test_batchnorm_without_running_statistics_uses_batch_statistics_in_eval():
    torch = pytest.importorskip("torch")
    module = torch.nn.BatchNorm2d(3, track_running_stats=False).eval()
    layer = BatchNorm.from_torch(module)
    x = _x((4, 3, 5, 5), loc=3.0)
    assert layer.state_dict().keys() == module.state_dict().keys()
    with torch.no_grad():
        _close(layer.forward(x, train=False), module(torch.from_numpy(x)).numpy(), "out")


def test_from_torch_rejects_a_dtype_numpy_lacks_naming_the_tensor():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"module.weight must be an array or a tensor of real "
                                        r"numbers that NumPy holds, got Tensor of dtype "
                                        r"torch.bfloat16"):
        BatchNorm.from_torch(torch.nn.BatchNorm2d(3).to(torch.bfloat16))


LN_SETTINGS = {"affine": {}, "no-bias": {"bias": False}, "no-affine": {"elementwise_affine": False}}


@pytest.mark.parametrize("setting", LN_SETTINGS)
@pytest.mark.parametrize("normalized_shape, shape", [((7,), (4, 7)), ((3, 5), (2, 4, 3, 5)),
                                                     ((2, 3, 4), (3, 2, 3, 4))])
def test_layernorm_from_torch_runs_like_the_module(normalized_shape, shape, setting):
    torch = pytest.importorskip("torch")
    module = _randomised(torch.nn.LayerNorm(normalized_shape, **LN_SETTINGS[setting]), torch)
    layer = LayerNorm.from_torch(module)
    x = _x(shape, loc=2.0)
    xt = torch.from_numpy(x).requires_grad_()
    out_t = module(xt)
    dout = _x(shape, seed=5)
    out_t.backward(torch.from_numpy(dout))
    _close(layer.forward(x), out_t.detach().numpy(), "out")
    _close(layer.backward(dout), xt.grad.numpy(), "dx", rtol=1e-4)
    assert list(layer.state_dict()) == list(module.state_dict())
    if module.weight is not None:
        _close(layer.dgamma, module.weight.grad.numpy(), "dgamma", rtol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eps", [None, 1e-3])
@pytest.mark.parametrize("affine", [True, False])
def test_rmsnorm_from_torch_runs_like_the_module(affine, eps, dtype):
    """eps=None is the machine epsilon of the computation dtype, as in PyTorch."""
    torch = pytest.importorskip("torch")
    module = _randomised(torch.nn.RMSNorm((3, 4), eps=eps, elementwise_affine=affine,
                                          dtype=torch.float32 if dtype == np.float32 else torch.float64), torch)
    layer = RMSNorm.from_torch(module)
    x = (1e-3 * _x((5, 3, 4))).astype(dtype)  # small: eps matters
    with torch.no_grad():
        _close(layer.forward(x), module(torch.from_numpy(x)).numpy(), "out")
    assert list(layer.state_dict()) == list(module.state_dict())


@pytest.mark.parametrize("shape", [(4, 6), (3, 6, 5), (2, 6, 3, 4), (2, 6, 2, 3, 2)])
def test_groupnorm_from_torch_runs_like_the_module(shape):
    torch = pytest.importorskip("torch")
    module = _randomised(torch.nn.GroupNorm(3, 6), torch)
    layer = GroupNorm.from_torch(module)
    x = _x(shape, loc=1.0)
    with torch.no_grad():
        _close(layer.forward(x), module(torch.from_numpy(x)).numpy(), "out")
    assert list(layer.state_dict()) == list(module.state_dict())


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("name, shape", [("InstanceNorm1d", (3, 4, 9)), ("InstanceNorm2d", (2, 4, 3, 5))])
def test_groupnorm_from_torch_instance_norm_runs_like_the_module(name, shape, affine):
    torch = pytest.importorskip("torch")
    module = _randomised(getattr(torch.nn, name)(4, affine=affine), torch)
    layer = GroupNorm.from_torch(module)
    x = _x(shape, loc=1.0)
    with torch.no_grad():
        _close(layer.forward(x), module(torch.from_numpy(x)).numpy(), "out")
    with pytest.raises(ValueError, match="module must not track running statistics"):
        GroupNorm.from_torch(getattr(torch.nn, name)(4, track_running_stats=True))


# ------------------------------------------------------------------------------------------
# Keras and ONNX, through their formulas
# ------------------------------------------------------------------------------------------

def _bn_inference(x, mean, var, gamma, beta, eps, axis):
    shape = [1] * x.ndim
    shape[axis] = -1
    r = [np.reshape(a, shape) for a in (mean, var, gamma, beta)]
    return (x - r[0]) / np.sqrt(r[1] + eps) * r[2] + r[3]


def _state(C, seed):
    rng = np.random.default_rng(seed)
    return [(rng.random(C) + 0.5).astype(np.float32), rng.standard_normal(C).astype(np.float32),
            rng.standard_normal(C).astype(np.float32), (rng.random(C) + 0.5).astype(np.float32)]


@pytest.mark.parametrize("unbiased", [False, True], ids=["keras3", "tf-fused"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis, shape", [(-1, (4, 5, 6, 3)), (1, (4, 3, 5, 6)), (-1, (10, 3))])
def test_batchnorm_from_keras_follows_keras_formulas(axis, shape, backend, unbiased):
    """Keras 3 keeps the biased batch variance; TensorFlow's fused kernel (tf.keras, TF 1) the
    unbiased one, var * M / (M - 1)."""
    gamma, beta, mean, var = _state(3, 1)
    momentum, eps = 0.99, 1e-3
    layer = BatchNorm.from_keras([gamma, beta, mean, var], axis=axis, backend=backend,
                                 unbiased=unbiased)
    x = _x(shape, loc=1.0)
    _close(layer.forward(x, train=False), _bn_inference(x, mean, var, gamma, beta, eps, axis), "inference")
    axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    batch_mean, batch_var = x.astype(np.float64).mean(axis=axes), x.astype(np.float64).var(axis=axes)
    out = layer.forward(x, train=True)
    _close(out, _bn_inference(x, batch_mean, batch_var, gamma, beta, eps, axis), "training")
    _close(layer.running_mean, mean * momentum + batch_mean * (1 - momentum), "moving_mean")
    M = x.size // x.shape[axis]
    kept = batch_var * M / (M - 1) if unbiased else batch_var
    _close(layer.running_var, var * momentum + kept * (1 - momentum), "moving_variance")


def test_batchnorm_from_keras_without_scale_or_center():
    _, beta, mean, var = _state(3, 2)
    layer = BatchNorm.from_keras([beta, mean, var], scale=False)
    x = _x((6, 3))
    assert layer.gamma is None and list(layer.state_dict())[0] == "bias"
    _close(layer.forward(x, train=False), _bn_inference(x, mean, var, np.ones(3), beta, 1e-3, -1), "out")


@pytest.mark.parametrize("backend", BACKENDS)
def test_batchnorm_from_onnx_follows_the_onnx_formulas(backend):
    scale, B, mean, var = _state(4, 3)
    momentum, eps = 0.8, 1e-4
    layer = BatchNorm.from_onnx(scale, B, mean, var, epsilon=eps, momentum=momentum, backend=backend)
    x = _x((3, 4, 5, 2), loc=-1.0)
    _close(layer.forward(x, train=False), _bn_inference(x, mean, var, scale, B, eps, 1), "inference")
    layer.forward(x, train=True)
    current_mean, current_var = x.astype(np.float64).mean(axis=(0, 2, 3)), x.astype(np.float64).var(axis=(0, 2, 3))
    _close(layer.running_mean, mean * momentum + current_mean * (1 - momentum), "running_mean")
    _close(layer.running_var, var * momentum + current_var * (1 - momentum), "running_var")


def _layernorm(x, k, gamma, beta, eps):
    axes = tuple(range(x.ndim - k, x.ndim))
    x = x.astype(np.float64)
    return (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + eps) * gamma + beta


@pytest.mark.parametrize("axis", [-1, [-2, -1]])
def test_layernorm_from_keras_follows_the_formula(axis):
    k = 1 if axis == -1 else 2
    shape = (3, 4, 5)
    rng = np.random.default_rng(4)
    gamma, beta = (rng.standard_normal(shape[-k:]).astype(np.float32) for _ in range(2))
    layer = LayerNorm.from_keras([gamma, beta], axis=axis)
    x = _x(shape)
    _close(layer.forward(x), _layernorm(x, k, gamma, beta, 1e-3), "out")


@pytest.mark.parametrize("with_bias", [True, False])
def test_layernorm_from_onnx_follows_the_formula(with_bias):
    rng = np.random.default_rng(5)
    scale, B = (rng.standard_normal((4, 5)).astype(np.float32) for _ in range(2))
    layer = LayerNorm.from_onnx(scale, B if with_bias else None, axis=-2, epsilon=1e-5)
    x = _x((2, 3, 4, 5))
    _close(layer.forward(x), _layernorm(x, 2, scale, B if with_bias else 0.0, 1e-5), "out")


def _rms(x, k, scale, eps):
    axes = tuple(range(x.ndim - k, x.ndim))
    x = x.astype(np.float64)
    return x / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + eps) * scale


def test_rmsnorm_from_keras_and_onnx_follow_the_formula():
    scale = np.random.default_rng(6).standard_normal(5).astype(np.float32)
    x = _x((4, 5), scale=0.01)
    _close(RMSNorm.from_keras([scale]).forward(x), _rms(x, 1, scale, 1e-6), "keras")
    _close(RMSNorm.from_keras([scale], axis=[-1]).forward(x), _rms(x, 1, scale, 1e-6), "keras [-1]")
    scale2 = np.random.default_rng(7).standard_normal((3, 5)).astype(np.float32)
    x2 = _x((2, 3, 5))
    _close(RMSNorm.from_onnx(scale2, axis=-2, epsilon=1e-4).forward(x2), _rms(x2, 2, scale2, 1e-4), "onnx")


def _groupnorm(x, G, gamma, beta, eps):
    N, C = x.shape[:2]
    groups = x.astype(np.float64).reshape(N, G, -1)
    normed = (groups - groups.mean(axis=2, keepdims=True)) / np.sqrt(groups.var(axis=2, keepdims=True) + eps)
    shape = (1, C) + (1,) * (x.ndim - 2)
    return normed.reshape(x.shape) * gamma.reshape(shape) + beta.reshape(shape)


def test_groupnorm_from_keras_and_onnx_follow_the_formula():
    gamma, beta = _state(6, 8)[:2]
    x = _x((2, 6, 4, 3), loc=2.0)
    _close(GroupNorm.from_keras([gamma, beta], groups=3, axis=1).forward(x),
           _groupnorm(x, 3, gamma, beta, 1e-3), "keras")
    _close(GroupNorm.from_onnx(gamma, beta, num_groups=2, epsilon=1e-5).forward(x),
           _groupnorm(x, 2, gamma, beta, 1e-5), "onnx")


# ------------------------------------------------------------------------------------------
# State in and out, and bad arguments
# ------------------------------------------------------------------------------------------

def test_state_dict_round_trip_and_failed_load_changes_nothing():
    layer = BatchNorm(3, momentum=None, unbiased=True)
    for step in range(2):
        layer.forward(_x((8, 3, 4), seed=step, loc=step))
    state = layer.state_dict()
    assert state["num_batches_tracked"].dtype == np.int64 and state["num_batches_tracked"] == 2
    other = BatchNorm(3)
    other.load_state_dict(state)
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    before = other.state_dict()
    bad = dict(state, running_var=np.ones(4))
    with pytest.raises(ValueError, match=r"state_dict\['running_var'\] must have shape \(3,\), got shape \(4,\)"):
        other.load_state_dict(bad)
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def _dummy_module(**attributes):
    return type("NotAModule", (), attributes)()


BAD = [
    ("train", lambda: BatchNorm(3).forward(_x((4, 3)), train="yes"), TypeError,
     r"train must be True or False, got 'yes'"),
    ("momentum", lambda: BatchNorm(3, momentum=1.5), ValueError, r"momentum must be a real number in \[0.0, 1.0\], got 1.5"),
    ("eps", lambda: LayerNorm(4, eps=-1.0), ValueError, r"eps must be a real number finite and >= 0.0, got -1.0"),
    ("eps-none", lambda: GroupNorm(2, 4, eps=None), TypeError, r"eps must be a real number, got None"),
    ("unbiased", lambda: BatchNorm(3, unbiased=1), TypeError, r"unbiased must be True or False, got 1"),
    ("affine", lambda: BatchNorm(3, affine="no"), TypeError, r"affine must be True or False"),
    ("track_running_stats", lambda: BatchNorm(3, track_running_stats=None), TypeError,
     r"track_running_stats must be True or False"),
    ("layout", lambda: BatchNorm(3, layout="NWHC"), ValueError, r"layout must be one of .*got 'NWHC'"),
    ("num_features", lambda: BatchNorm(0), ValueError, r"num_features must be an integer >= 1, got 0"),
    ("normalized_shape", lambda: LayerNorm(()), ValueError, r"normalized_shape must be an integer >= 1"),
    ("elementwise_affine", lambda: RMSNorm(3, elementwise_affine=None), TypeError, r"elementwise_affine must be"),
    ("num_groups", lambda: GroupNorm(3, 4), ValueError, r"num_groups must divide num_channels=4, got 3"),
    ("dtype", lambda: BatchNorm(3, dtype=np.int32), TypeError,
     r"dtype must be float16, float32 or float64, got int32"),
    ("dtype-longdouble", lambda: LayerNorm(3, dtype=np.longdouble), TypeError,
     r"dtype must be float16, float32 or float64, got float128"),
    ("layout-list", lambda: BatchNorm(3, layout=["NHWC"]), ValueError,
     r"layout must be one of \['NCHW', 'NHWC', 'channels_first', 'channels_last'\], got \['NHWC'\]"),
    ("x-list-rms", lambda: RMSNorm(2).forward([[3.0, 4.0]]), TypeError,
     r"x must be a numpy.ndarray, got list"),
    ("x-features", lambda: BatchNorm(3).forward(_x((4, 5))), ValueError,
     r"x must have num_features=3 channels on axis 1, got shape \(4, 5\)"),
    ("x-features-no-affine", lambda: BatchNorm(3, affine=False).forward(_x((4, 5))), ValueError,
     r"x must have num_features=3 channels on axis 1, got shape \(4, 5\)"),
    ("x-channels-last", lambda: BatchNorm(3, layout="channels_last").forward(_x((2, 2, 2, 5))),
     ValueError, r"x must have num_features=3 channels on the last axis, got shape \(2, 2, 2, 5\)"),
    ("x-group-channels", lambda: GroupNorm(2, 4).forward(_x((2, 6, 3))), ValueError,
     r"x must have num_channels=4 channels on axis 1, got shape \(2, 6, 3\)"),
    ("x-trailing", lambda: LayerNorm((3, 4)).forward(_x((2, 4, 3))), ValueError,
     r"x must have the trailing shape normalized_shape=\(3, 4\), got shape \(2, 4, 3\)"),
    ("backward-first", lambda: GroupNorm(2, 4).backward(_x((2, 4))), RuntimeError, r"backward needs a forward"),
    ("load-missing", lambda: BatchNorm(3).load_state_dict({"weight": np.ones(3)}), ValueError,
     r"state_dict must have the keys .*missing \['bias', 'running_mean'"),
    ("load-unexpected", lambda: GroupNorm(2, 4).load_state_dict(
        {"weight": np.ones(4), "bias": np.ones(4), "running_mean": np.ones(4)}), ValueError,
     r"unexpected \['running_mean'\]"),
    ("load-count", lambda: BatchNorm(3).load_state_dict(
        dict(BatchNorm(3).state_dict(), num_batches_tracked=np.array(-1))), ValueError,
     r"state_dict\['num_batches_tracked'\] must be an integer >= 0"),
    ("from_torch", lambda: BatchNorm.from_torch(_dummy_module(num_features=3)), TypeError,
     r"module must be a torch.nn.BatchNorm1d, BatchNorm2d or BatchNorm3d \(missing attributes \['eps'"),
    ("keras-weights", lambda: BatchNorm.from_keras(_state(3, 0)[:3]), ValueError,
     r"weights must be the 4 arrays \['gamma', 'beta', 'moving_mean', 'moving_variance'\]"),
    ("keras-axis", lambda: BatchNorm.from_keras(_state(3, 0), axis=2), ValueError,
     r"axis must be -1 \(channels last\) or 1 \(channels first\), got 2"),
    ("keras-ln-axis", lambda: LayerNorm.from_keras(_state(3, 0)[:2], axis=[-3, -1]), ValueError,
     r"axis must be trailing axes"),
    ("keras-rms-scaling", lambda: LayerNorm.from_keras(_state(3, 0)[:2], rms_scaling=True), ValueError,
     r"rms_scaling=True is not supported"),
    ("keras-gn-axis", lambda: GroupNorm.from_keras(_state(4, 0)[:2], groups=2), ValueError,
     r"axis must be 1: fastbn's groupnorm takes x channels first, got -1"),
    ("keras-epsilon", lambda: BatchNorm.from_keras(_state(3, 0), epsilon=-1e-3), ValueError,
     r"epsilon must be a real number finite and >= 0.0, got -0.001"),
    ("keras-momentum", lambda: BatchNorm.from_keras(_state(3, 0), momentum=1.5), ValueError,
     r"momentum must be a real number in \[0.0, 1.0\], got 1.5"),
    ("keras-groups", lambda: GroupNorm.from_keras(_state(4, 0)[:2], groups=3, axis=1), ValueError,
     r"groups must divide the channel count C=4, got 3"),
    ("onnx-epsilon", lambda: GroupNorm.from_onnx(np.ones(4), np.zeros(4), num_groups=2, epsilon="a"),
     TypeError, r"epsilon must be a real number, got 'a'"),
    ("onnx-num-groups", lambda: GroupNorm.from_onnx(np.ones(4), np.zeros(4), num_groups=0), ValueError,
     r"num_groups must be an integer >= 1, got 0"),
    ("onnx-axis", lambda: LayerNorm.from_onnx(np.ones(3), axis=1), ValueError,
     r"axis must be a negative integer"),
    ("onnx-scale", lambda: BatchNorm.from_onnx(np.ones(2), None, np.zeros(3), np.ones(3)), ValueError,
     r"gamma must have 3 values, got shape \(2,\)"),
    ("onnx-ln-bias", lambda: LayerNorm.from_onnx(np.ones(4), np.zeros(3)), ValueError,
     r"B must have 4 values, as gamma has, got shape \(3,\)"),
    ("keras-ln-beta", lambda: LayerNorm.from_keras([np.ones(4), np.zeros(3)]), ValueError,
     r"beta must have 4 values, as gamma has, got shape \(3,\)"),
    ("keras-gn-beta", lambda: GroupNorm.from_keras([np.ones(4), np.zeros(2)], groups=2, axis=1),
     ValueError, r"beta must have 4 values, as gamma has, got shape \(2,\)"),
]


@pytest.mark.parametrize("build, error, match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_argument_raises_naming_it(build, error, match):
    with pytest.raises(error, match=match):
        build()
