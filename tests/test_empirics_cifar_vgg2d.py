"""CIFAR-10 loading, the 2-D VGG, and the 2-D paths of the measurements, against float64 references.

CIFAR-10 is never downloaded: `write_fake_cifar10` writes a small folder in the official python
format, byte for byte the opcodes Python 2's cPickle (protocol 2) wrote for the released files, so
the loader's real path (numpy 1.x global names, Python 2 strings read with encoding="bytes") is the
one exercised here.

References: explicit loops over (sample, h, w) for the BN channel batch and the Conv2d unfold;
torch.autograd.grad on intermediates retained by a hand-written forward; the closed form of Fact C.1.
"""

from __future__ import annotations

import copy
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from empirics.capture import (
    REDUCTION_KEYS,
    BoundCapture,
    batchnorm_layers,
    channel_reductions,
)
from empirics.cifar import (
    FOLDER,
    META_FILE,
    TEST_FILE,
    TRAIN_FILES,
    load_cifar10,
    locate_cifar10,
)
from empirics.config import ConfigError, Norm
from empirics.noisy import (
    NoisyBatchNorm1d,
    NoisyBatchNorm2d,
    NoisyIdentity,
    frozen_noise,
)
from empirics.norms import SpatialFlatten, norm_factory, norm_slots
from empirics.vgg2d import VGG_CONFIGS, build_vgg2d, conv_layers
from empirics.weight_bounds import unfolded_input, weight_bound_terms

FLOAT64_RTOL = 1e-10  # float64 end to end: only summation order separates two routes (m <= 4096 terms)
# float32 standardisation vs a float64 reference: two float32 roundings (scale, shift) of values of
# size <= ~3 give ~3 * 2^-24 * 3 ~ 5e-7 absolute; 2e-6 leaves room and is far below one grey level (~0.02)
STANDARDISED_ATOL = 2e-6




# --- a fake CIFAR-10 folder in the official format -------------------------------------------------

def _py2_pickle(obj) -> bytes:
    """Pickle `obj` as Python 2 cPickle protocol 2 did for the official files (no memo; not needed).

    bytes -> a Python 2 str (SHORT_BINSTRING / BINSTRING); int; list (APPENDS in batches of 1000, as
    cPickle); dict; a 2-D uint8 numpy array via numpy.core.multiarray._reconstruct + BUILD state.
    """
    out = bytearray()

    def integer(value: int) -> None:
        if 0 <= value < 256:
            out.extend(b"K" + bytes([value]))  # BININT1
        elif 0 <= value < 65536:
            out.extend(b"M" + struct.pack("<H", value))  # BININT2
        else:
            out.extend(b"J" + struct.pack("<i", value))  # BININT

    def string(value: bytes) -> None:
        if len(value) < 256:
            out.extend(b"U" + bytes([len(value)]) + value)  # SHORT_BINSTRING
        else:
            out.extend(b"T" + struct.pack("<I", len(value)) + value)  # BINSTRING

    def emit(value) -> None:
        if isinstance(value, bytes):
            string(value)
        elif isinstance(value, bool) or value is None:
            raise TypeError(value)
        elif isinstance(value, int):
            integer(value)
        elif isinstance(value, list):
            out.extend(b"]")  # EMPTY_LIST
            for start in range(0, len(value), 1000):
                out.extend(b"(")  # MARK
                for item in value[start : start + 1000]:
                    emit(item)
                out.extend(b"e")  # APPENDS
        elif isinstance(value, dict):
            out.extend(b"}(")  # EMPTY_DICT, MARK
            for key, item in value.items():
                emit(key)
                emit(item)
            out.extend(b"u")  # SETITEMS
        elif isinstance(value, np.ndarray):
            assert value.dtype == np.uint8 and value.ndim == 2
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R")
            out.extend(b"(K\x01")  # state: (version 1, shape, dtype, is_fortran, raw data)
            integer(value.shape[0])
            integer(value.shape[1])
            out.extend(b"\x86")  # TUPLE2: the shape
            out.extend(b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
            out.extend(b"\x89")  # NEWFALSE: C order
            string(value.tobytes())
            out.extend(b"tb")  # TUPLE, BUILD
        else:
            raise TypeError(type(value))

    out.extend(b"\x80\x02")  # PROTO 2
    emit(obj)
    out.extend(b".")  # STOP
    return bytes(out)


LABEL_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_fake_cifar10(root: Path, n_per_batch: int = 8, seed: int = 0) -> Path:
    """root/cifar-10-batches-py with 5 training batches and a test batch of `n_per_batch` random images.

    Every file has the official keys and types; returns the folder. Pixel values and labels are
    uniform random from `seed`.
    """
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [(name, f"training batch {i + 1} of 5") for i, name in enumerate(TRAIN_FILES)]
    for name, label in names + [(TEST_FILE, "testing batch 1 of 1")]:
        batch = {
            b"batch_label": label.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, n_per_batch)],
            b"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"image_{name}_{i:06d}.png".encode() for i in range(n_per_batch)],
        }
        (folder / name).write_bytes(_py2_pickle(batch))
    meta = {b"num_cases_per_batch": n_per_batch, b"label_names": LABEL_NAMES, b"num_vis": 3072}
    (folder / META_FILE).write_bytes(_py2_pickle(meta))
    return folder


def _raw(folder: Path, name: str) -> dict:
    """The batch through the standard (unrestricted) unpickler: an independent route to the values."""
    with open(folder / name, "rb") as file:
        return pickle.load(file, encoding="bytes")


def test_fake_files_are_valid_python2_pickles_with_the_official_keys(tmp_path):
    folder = write_fake_cifar10(tmp_path, n_per_batch=3)
    batch = _raw(folder, TRAIN_FILES[0])
    assert set(batch) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (3, 3072)
    assert _raw(folder, META_FILE)[b"label_names"] == LABEL_NAMES
    # Python 2 strings, not Python 3 bytes objects: only _reconstruct, ndarray, dtype are named
    assert b"_codecs" not in (folder / TRAIN_FILES[0]).read_bytes()


def test_load_gives_nchw_float32_tensors_and_int64_labels(tmp_path):
    write_fake_cifar10(tmp_path, n_per_batch=6)
    data = load_cifar10(tmp_path)
    assert data.x_train.shape == (30, 3, 32, 32) and data.x_train.dtype == torch.float32
    assert data.x_test.shape == (6, 3, 32, 32) and data.x_test.dtype == torch.float32
    assert data.y_train.shape == (30,) and data.y_train.dtype == torch.int64
    assert data.y_test.dtype == torch.int64
    folder = tmp_path / FOLDER
    expected = np.concatenate([_raw(folder, name)[b"labels"] for name in TRAIN_FILES])
    np.testing.assert_array_equal(data.y_train.numpy(), expected)
    np.testing.assert_array_equal(data.y_test.numpy(), _raw(folder, TEST_FILE)[b"labels"])


def test_pixels_are_standardised_per_channel_with_training_statistics(tmp_path):
    folder = write_fake_cifar10(tmp_path, n_per_batch=10, seed=3)
    data = load_cifar10(folder)
    train = np.concatenate([_raw(folder, name)[b"data"] for name in TRAIN_FILES]).astype(np.float64) / 255
    test = _raw(folder, TEST_FILE)[b"data"].astype(np.float64) / 255
    # channel c of image i is row entries c*1024 .. c*1024+1023, row-major 32 x 32: explicit indices
    mean = np.array([train[:, c * 1024 : (c + 1) * 1024].mean() for c in range(3)])
    std = np.array([train[:, c * 1024 : (c + 1) * 1024].std() for c in range(3)])  # population, ddof 0
    for split, raw in (("train", train), ("test", test)):
        images = getattr(data, f"x_{split}").numpy()
        for i, c, h, w in [(0, 0, 0, 0), (1, 2, 31, 31), (2, 1, 5, 17), (len(raw) - 1, 2, 30, 1)]:
            expected = (raw[i, c * 1024 + h * 32 + w] - mean[c]) / std[c]
            assert images[i, c, h, w] == pytest.approx(expected, abs=STANDARDISED_ATOL), (split, i, c, h, w)
        reference = (raw.reshape(-1, 3, 32, 32) - mean[None, :, None, None]) / std[None, :, None, None]
        np.testing.assert_allclose(images, reference, rtol=0, atol=STANDARDISED_ATOL)
    per_channel = data.x_train.double().transpose(0, 1).reshape(3, -1)
    np.testing.assert_allclose(per_channel.mean(dim=1).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(per_channel.std(dim=1, unbiased=False).numpy(), 1.0, atol=1e-6)


def test_root_may_be_the_folder_itself_and_loads_are_cached_by_resolved_path(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    assert locate_cifar10(tmp_path) == folder and locate_cifar10(folder) == folder
    assert load_cifar10(tmp_path) is load_cifar10(folder)
    assert load_cifar10(str(tmp_path / FOLDER / ".." / FOLDER)) is load_cifar10(folder)


def test_python3_re_pickled_batches_load_too(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    for protocol in (4, 5):
        name = TRAIN_FILES[protocol - 4]
        (folder / name).write_bytes(pickle.dumps(_raw(folder, name), protocol=protocol))
    load_cifar10(folder)


def _assert_one_line_error(match_file: str, *fixes: str, root: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_cifar10(root)
    message = str(caught.value)
    assert "\n" not in message, message
    assert match_file in message, message
    assert any(fix in message for fix in fixes), message


def test_a_missing_root_names_it_and_how_to_get_the_data(tmp_path):
    _assert_one_line_error(str(tmp_path / "nowhere"), "download", root=tmp_path / "nowhere")


def test_a_root_that_is_a_file_says_extract_it(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b")
    _assert_one_line_error(str(archive), "extract", root=archive)


def test_a_root_without_the_batches_folder_names_the_folder(tmp_path):
    (tmp_path / "something_else").mkdir()
    _assert_one_line_error(FOLDER, "extract", "data.root", root=tmp_path)


@pytest.mark.parametrize("name", [TRAIN_FILES[2], TEST_FILE, META_FILE])
def test_a_missing_batch_file_is_named(tmp_path, name):
    folder = write_fake_cifar10(tmp_path)
    (folder / name).unlink()
    _assert_one_line_error(str(folder / name), "re-extract", root=tmp_path)


def _truncated(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def _wrong_keys(raw: bytes) -> bytes:
    return _py2_pickle({b"pixels": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})


def _wrong_shape(raw: bytes) -> bytes:
    return _py2_pickle({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]})


def _label_count(raw: bytes) -> bytes:
    return _py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})


def _label_range(raw: bytes) -> bytes:
    return _py2_pickle({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})


def _not_a_dict(raw: bytes) -> bytes:
    return _py2_pickle([1, 2, 3])


def _not_a_pickle(raw: bytes) -> bytes:
    return b"this is not a pickle at all"


@pytest.mark.parametrize("damage", [_truncated, _wrong_keys, _wrong_shape, _label_count, _label_range, _not_a_dict,
                                    _not_a_pickle])
def test_a_damaged_batch_file_is_named_with_the_fix(tmp_path, damage):
    folder = write_fake_cifar10(tmp_path)
    path = folder / TRAIN_FILES[1]
    path.write_bytes(damage(path.read_bytes()))
    _assert_one_line_error(str(path), "re-extract", root=tmp_path)


def test_a_cifar100_style_meta_file_is_rejected(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    (folder / META_FILE).write_bytes(_py2_pickle({b"label_names": [b"x"] * 100}))
    _assert_one_line_error(str(folder / META_FILE), "re-extract", root=tmp_path)


class _Hostile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_naming_any_other_global_is_refused_without_running_it(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    marker = tmp_path / "executed"
    path = folder / TRAIN_FILES[0]
    path.write_bytes(pickle.dumps({b"data": _Hostile(marker), b"labels": []}, protocol=4))
    _assert_one_line_error(str(path), "re-extract", root=tmp_path)
    with pytest.raises(ConfigError, match="system"):
        load_cifar10(tmp_path)
    assert not marker.exists()


# --- norm_factory(spatial_dims=2) -----------------------------------------------------------------

def test_norm_factory_gives_2d_modules_for_spatial_dims_2_and_keeps_1d_by_default():
    generator = torch.Generator().manual_seed(0)
    bn = norm_factory(Norm.BATCHNORM, 1e-3, spatial_dims=2)(5)
    assert type(bn) is nn.BatchNorm2d and bn.eps == 1e-3 and bn.num_features == 5 and bn.norm_slot
    assert type(norm_factory(Norm.BATCHNORM, 1e-3)(5)) is nn.BatchNorm1d
    noisy = norm_factory(Norm.NOISY_BATCHNORM, 1e-3, generator, spatial_dims=2)(5)
    assert type(noisy) is NoisyBatchNorm2d and type(noisy.bn) is nn.BatchNorm2d and noisy.bn.eps == 1e-3
    assert isinstance(noisy, NoisyBatchNorm1d)  # code that recognises noisy BN treats both alike
    assert type(norm_factory(Norm.NOISY_BATCHNORM, 1e-3, generator)(5).bn) is nn.BatchNorm1d
    assert type(norm_factory(Norm.NOISY_NONE, 1e-3, generator, spatial_dims=2)(5)) is NoisyIdentity
    assert norm_factory(Norm.NONE, 1e-3, spatial_dims=2) is None
    with pytest.raises(ConfigError, match="spatial_dims=3"):
        norm_factory(Norm.BATCHNORM, 1e-3, spatial_dims=3)


def test_spatial_flatten_of_a_channel_batch_normaliser_equals_its_2d_form():
    """BatchNorm1d over (N, C, H * W) is BatchNorm2d over (N, C, H, W): forward and input gradient."""
    x = torch.randn(3, 4, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    weights = torch.randn(3, 4, 5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    flat, plain = SpatialFlatten(nn.BatchNorm1d(4).double()), nn.BatchNorm2d(4).double()
    out_flat, out_plain = flat(x), plain(x)
    torch.testing.assert_close(out_flat, out_plain, rtol=FLOAT64_RTOL, atol=1e-14)
    (grad_flat,) = torch.autograd.grad((out_flat * weights).sum(), x)
    (grad_plain,) = torch.autograd.grad((out_plain * weights).sum(), x)
    torch.testing.assert_close(grad_flat, grad_plain, rtol=FLOAT64_RTOL, atol=1e-13)


# --- VGG-2d ---------------------------------------------------------------------------------------

def _vgg(config="vgg11", norm=Norm.BATCHNORM, seed=0, **kwargs) -> nn.Sequential:
    make = norm_factory(norm, 1e-5, torch.Generator().manual_seed(seed + 100), spatial_dims=2)
    return build_vgg2d(config, make, torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.parametrize("name, convs", [("vgg11", 8), ("vgg16", 13)])
def test_vgg_forward_maps_cifar_images_to_ten_logits(name, convs):
    model = _vgg(name)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert len(conv_layers(model)) == convs == sum(isinstance(item, int) for item in VGG_CONFIGS[name])
    assert len(batchnorm_layers(model)) == convs
    assert model[-1].in_features == 512  # five pools: 32 -> 1, so 512 x 1 x 1 features
    assert all(not module.inplace for module in model.modules() if isinstance(module, nn.ReLU))


def test_vgg_without_norm_tags_its_convs_as_the_norm_slots():
    model = _vgg("vgg11", Norm.NONE)
    assert norm_slots(model) == conv_layers(model)
    assert batchnorm_layers(model) == []


def test_vgg_init_is_glorot_uniform_zero_bias_unit_bn_and_only_from_the_generator():
    global_state = torch.random.get_rng_state()
    model = _vgg("vgg11")
    assert torch.equal(torch.random.get_rng_state(), global_state), "global RNG advanced"
    for layer in [*conv_layers(model), model[-1]]:
        weight = layer.weight.detach()
        receptive = weight[0, 0].numel() if weight.dim() == 4 else 1
        fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        assert weight.abs().max() <= bound
        if weight.numel() >= 10_000:  # U(-a, a) has variance a^2 / 3; 10k draws: within 5% (~4 sigma)
            assert weight.var().item() == pytest.approx(bound**2 / 3, rel=0.05)
        assert torch.equal(layer.bias.detach(), torch.zeros_like(layer.bias))
    for bn in batchnorm_layers(model):
        assert torch.equal(bn.weight.detach(), torch.ones(bn.num_features))
        assert torch.equal(bn.bias.detach(), torch.zeros(bn.num_features))
        assert torch.equal(bn.running_mean, torch.zeros(bn.num_features))
        assert torch.equal(bn.running_var, torch.ones(bn.num_features))
    again = _vgg("vgg11")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert model.training


def test_small_and_scaled_configurations():
    small = _vgg((8, "M", 16, "M"))
    assert [layer.out_channels for layer in conv_layers(small)] == [8, 16]
    assert small[-1].in_features == 16 * 8 * 8  # two pools: 32 -> 8
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    half = _vgg("vgg11", Norm.NONE, width_multiplier=0.125, num_classes=7)
    assert [layer.out_channels for layer in conv_layers(half)] == [8, 16, 32, 32, 64, 64, 64, 64]
    assert half(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("config, match", [("vgg19", "unknown"), ((8, "P"), "neither"), ((0, "M"), "neither"),
                                           (("M",), "no conv"), ((4,) + ("M",) * 6, "at most 5")])
def test_bad_configurations_are_config_errors_with_the_rule(config, match):
    with pytest.raises(ConfigError, match=match):
        _vgg(config)


# --- BoundCapture on 2-D BatchNorm ----------------------------------------------------------------

def _double_vgg(norm=Norm.BATCHNORM) -> nn.Sequential:
    """The small VGG in float64 with non-trivial affine parameters, so gamma enters every formula."""
    model = _vgg((4, "M", 6, "M"), norm).double()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in batchnorm_layers(model):
            layer.weight.copy_(torch.rand(layer.num_features, generator=generator, dtype=torch.float64) * 1.5 + 0.5)
            layer.bias.copy_(torch.rand(layer.num_features, generator=generator, dtype=torch.float64) - 0.5)
    return model


def _image_batch(n=3, dtype=torch.float64):
    generator = torch.Generator().manual_seed(7)
    return torch.randn(n, 3, 32, 32, generator=generator, dtype=dtype), torch.randint(0, 10, (n,), generator=generator)


def _manual_bn_gradients(model: nn.Sequential, x, labels):
    """Forward module by module, keeping each BN input and output, then torch.autograd.grad on them."""
    inputs, outputs, h = [], [], x
    for module in model:
        if isinstance(module, nn.BatchNorm2d):
            inputs.append(h)
            h = module(h)
            outputs.append(h)
        else:
            h = module(h)
    grads = torch.autograd.grad(F.cross_entropy(h, labels), inputs + outputs)
    return inputs, grads[: len(inputs)], grads[len(inputs) :]  # y, dL/dy, dL/dz per BN layer


def test_capture_on_2d_batchnorm_matches_autograd_and_fact_c1_with_m_equal_n_h_w():
    model = _double_vgg()
    x, labels = _image_batch()
    capture = BoundCapture(model)
    with capture.active():
        F.cross_entropy(model(x), labels).backward()
    rows = capture.collect(step=3)
    ys, dys, gs = _manual_bn_gradients(model, x, labels)
    for index, layer in enumerate(batchnorm_layers(model)):
        mine = rows["layer"] == index
        n, channels, height, width = ys[index].shape
        m = n * height * width  # a channel's batch: every (sample, h, w)
        np.testing.assert_array_equal(rows["m"][mine], m)
        np.testing.assert_allclose(rows["lhs"][mine], (dys[index] ** 2).sum(dim=(0, 2, 3)).numpy(), rtol=FLOAT64_RTOL)
        y = ys[index].detach().transpose(0, 1).reshape(channels, -1)  # (C, m)
        g = gs[index].transpose(0, 1).reshape(channels, -1)
        mean = y.mean(dim=1, keepdim=True)
        sigma = torch.sqrt(((y - mean) ** 2).mean(dim=1, keepdim=True) + layer.eps)
        yhat = (y - mean) / sigma
        gamma = layer.weight.detach()[:, None]
        closed = gamma / (m * sigma) * (m * g - g.sum(dim=1, keepdim=True) - yhat * (g * yhat).sum(dim=1, keepdim=True))
        np.testing.assert_allclose(rows["lhs"][mine], (closed**2).sum(dim=1).numpy(), rtol=FLOAT64_RTOL)
    assert [int(rows["m"][rows["layer"] == i][0]) for i in range(2)] == [3 * 32 * 32, 3 * 16 * 16]


def test_channel_reductions_of_4d_tensors_match_a_loop_over_sample_h_w():
    rng = np.random.default_rng(0)
    y, g, dy = (rng.normal(size=(2, 3, 2, 3)) * 2 + 1 for _ in range(3))
    gamma, eps = rng.uniform(0.5, 2, size=3), 1e-5
    out = channel_reductions(y, g, dy, gamma, eps)
    for c in range(3):
        values = [(y[i, c, h, w], g[i, c, h, w], dy[i, c, h, w]) for i in range(2) for h in range(2) for w in range(3)]
        m = len(values)
        mean = sum(v[0] for v in values) / m
        var = sum((v[0] - mean) ** 2 for v in values) / m
        sigma = (var + eps) ** 0.5
        expected = {"m": m, "eps": eps, "gamma": gamma[c], "mean": mean, "var": var, "sigma": sigma,
                    "g_sum": sum(v[1] for v in values), "g_sq": sum(v[1] ** 2 for v in values),
                    "g_yhat": sum(v[1] * (v[0] - mean) / sigma for v in values), "lhs": sum(v[2] ** 2 for v in values)}
        assert set(expected) == set(REDUCTION_KEYS)
        for key, value in expected.items():
            assert out[key][c] == pytest.approx(value, rel=FLOAT64_RTOL, abs=1e-14), (key, c)


def test_capture_finds_the_batchnorm2d_inside_noisy_bn():
    model = _double_vgg(Norm.NOISY_BATCHNORM)
    capture = BoundCapture(model)
    assert capture.layers == [module.bn for module in model.modules() if isinstance(module, NoisyBatchNorm2d)]
    x, labels = _image_batch()
    with capture.active():
        F.cross_entropy(model(x), labels).backward()
    assert len(capture.collect(0)["lhs"]) == 4 + 6


# --- noisy BN on (N, C, H, W) ---------------------------------------------------------------------

def test_noise_on_4d_input_matches_the_elementwise_reference_of_algorithm_1():
    a = torch.randn(3, 2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    noisy = NoisyIdentity(2, generator=7).to(torch.float64)(a)
    generator = torch.Generator().manual_seed(7)  # documented order: mu, sigma per unit; m, s per element
    u_mu, u_sigma = (torch.rand((1, 2, 1, 1), generator=generator, dtype=a.dtype) for _ in range(2))
    u_m = torch.rand(a.shape, generator=generator, dtype=a.dtype)
    z_s = torch.randn(a.shape, generator=generator, dtype=a.dtype)
    expected = torch.empty_like(a)
    for i, j, h, w in np.ndindex(*a.shape):
        mu_j, sigma_j = -0.5 + 1.0 * u_mu[0, j, 0, 0], 1 + 0.25 * u_sigma[0, j, 0, 0]  # U(-.5, .5), U(1, 1.25)
        m_ij = (mu_j - 0.1) + 0.2 * u_m[i, j, h, w]  # U(mu_j - r_mu, mu_j + r_mu)
        s_ij = sigma_j + 0.1 * z_s[i, j, h, w]  # N(sigma_j, r_sigma)
        expected[i, j, h, w] = s_ij * a[i, j, h, w] + m_ij
    torch.testing.assert_close(noisy, expected, rtol=1e-14, atol=1e-14)


def test_per_position_false_shares_the_draw_over_h_and_w():
    noise = NoisyIdentity(2, generator=3, per_position=False)
    noise(torch.randn(4, 2, 3, 5))
    assert torch.all(noise.last_scale == noise.last_scale[:, :, :1, :1])
    assert torch.all(noise.last_shift == noise.last_shift[:, :, :1, :1])
    assert not torch.all(noise.last_shift == noise.last_shift[:1])  # but differs between samples


def test_noisy_batchnorm2d_is_bn2d_then_noise_and_frozen_noise_replays_it():
    layer = NoisyBatchNorm2d(3, 1e-5, generator=4)
    clone = copy.deepcopy(layer)
    y = torch.randn(4, 3, 5, 6)
    out = layer(y)
    torch.testing.assert_close(out, clone.noise(clone.bn(y)), rtol=0, atol=0)
    state = layer.noise.generator.get_state()
    with frozen_noise(layer):
        assert torch.equal(layer(y), out)
    assert torch.equal(layer.noise.generator.get_state(), state)


# --- thm4.4 for Conv2d: dL/dW_j = X^T dL/dy_j ------------------------------------------------------

def _loop_unfold_2d(x: np.ndarray, conv: nn.Conv2d) -> np.ndarray:
    """Row (n, oh, ow): the values output position (oh, ow) of sample n sees, ordered (c, kh, kw)."""
    n, channels, height, width = x.shape
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = conv.kernel_size, conv.padding, conv.stride, conv.dilation
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for i in range(n):
        for oh in range(out_h):
            for ow in range(out_w):
                row = []
                for c in range(channels):
                    for a in range(kh):
                        for b in range(kw):
                            r, s = oh * sh + a * dh - ph, ow * sw + b * dw - pw
                            row.append(x[i, c, r, s] if 0 <= r < height and 0 <= s < width else 0.0)
                rows.append(row)
    return np.array(rows)


def _conv2d_net() -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):  # PyTorch's default init draws from the global RNG
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(2, 3, (2, 3), padding=(1, 0), stride=(2, 1), dilation=(1, 2)),
                             nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2),
                             nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 1, 4)).double()


def test_conv2d_unfold_matches_a_loop_and_the_conv_it_describes():
    conv = _conv2d_net()[0]
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    rows = unfolded_input(conv, x)  # (N * H_out * W_out, C_in * kh * kw)
    np.testing.assert_array_equal(rows.numpy(), _loop_unfold_2d(x.numpy(), conv))
    expected = conv(x).detach() - conv.bias.detach()[None, :, None, None]  # (N, C_out, H_out, W_out)
    product = rows @ conv.weight.detach().reshape(3, -1).T  # (N * H_out * W_out, C_out)
    torch.testing.assert_close(product, expected.permute(0, 2, 3, 1).reshape(-1, 3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer_index", [0, 3], ids=["conv-strided-dilated", "conv-after-bn"])
def test_conv2d_weight_gradient_is_x_transpose_dy_and_the_bound_holds(layer_index):
    model = _conv2d_net()
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0, 3, 1])
    clone, kept = copy.deepcopy(model), {}
    clone[layer_index].register_forward_hook(lambda module, args, out: kept.update(x=args[0].detach(), y=out))
    grad_w, grad_y = torch.autograd.grad(F.cross_entropy(clone(x), labels), [clone[layer_index].weight, kept["y"]])
    matrix = _loop_unfold_2d(kept["x"].numpy(), clone[layer_index])  # X, by loops
    dy = grad_y.numpy().transpose(1, 0, 2, 3).reshape(grad_y.shape[1], -1)  # (C_out, N * H * W), sample-major
    grad_w = grad_w.numpy().reshape(grad_w.shape[0], -1)
    explicit = np.array([[sum(matrix[r, f] * dy[j, r] for r in range(matrix.shape[0]))
                          for f in range(matrix.shape[1])] for j in range(dy.shape[0])])
    np.testing.assert_allclose(explicit, grad_w, rtol=FLOAT64_RTOL, atol=1e-14)  # dL/dW_j = X^T dL/dy_j
    result = weight_bound_terms(model, model[layer_index], x, labels, F.cross_entropy)
    np.testing.assert_allclose(result["grad_w_sq"], (grad_w**2).sum(1), rtol=FLOAT64_RTOL)
    np.testing.assert_allclose(result["dy_sq"], (dy**2).sum(1), rtol=FLOAT64_RTOL)
    assert result["rows"] == matrix.shape[0]
    assert result["x_spec_sq"] == pytest.approx(np.linalg.norm(matrix, 2) ** 2, rel=FLOAT64_RTOL)
    assert np.all(result["identity_err"] <= 1e-12 * np.sqrt(result["grad_w_sq"]).max())
    assert np.all(result["grad_w_sq"] <= result["x_spec_sq"] * result["dy_sq"] * (1 + 1e-12))
