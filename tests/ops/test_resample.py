"""interpolate / grid_sample / point_sample / resize_valid_region against PyTorch CPU."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.ops import grid_sample, interpolate, point_sample, resize_valid_region
from dinoseg.ops.resample import crop_resize_matrix, resize_matrix

SIZES = [((7, 9), (13, 4)), ((16, 16), (5, 37)), ((10, 3), (10, 3)), ((5, 6), (10, 12)), ((33, 17), (8, 8))]
CASES = [("nearest", False, False), ("nearest-exact", False, False)] + [
    (m, ac, aa) for m in ("bilinear", "bicubic") for ac in (False, True) for aa in (False, True)]


def _torch_interp(torch, x, mode, ac, aa, **kw):
  t = torch.tensor(x, requires_grad=True)
  out = torch.nn.functional.interpolate(t.permute(0, 3, 1, 2), mode=mode,
                                        align_corners=ac if mode in ("bilinear", "bicubic") else None,
                                        antialias=aa, **kw).permute(0, 2, 3, 1)
  return t, out


@pytest.mark.parametrize("mode,align_corners,antialias", CASES)
def test_interpolate_matches_torch_forward_and_grad(torch, rng, mode, align_corners, antialias):
  for (h, w), out_hw in SIZES:
    x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
    t, expected = _torch_interp(torch, x, mode, align_corners, antialias, size=out_hw)
    cot = rng.standard_normal(expected.shape).astype(np.float32)
    (expected * torch.tensor(cot)).sum().backward()
    f = lambda v: interpolate(v, out_hw, mode=mode, align_corners=align_corners, antialias=antialias)
    actual, vjp = jax.vjp(f, jnp.asarray(x))
    assert_close(actual, expected.detach().numpy(), name=f"{mode} {h}x{w}->{out_hw}")
    assert_close(vjp(jnp.asarray(cot))[0], t.grad.numpy(), name="grad")


@pytest.mark.parametrize("mode,align_corners,antialias", CASES)
def test_interpolate_scale_factor_matches_torch(torch, rng, mode, align_corners, antialias):
  for sf in [(1.7, 0.6), (2.0, 2.0), (0.5, 3.3)]:
    x = rng.standard_normal((1, 9, 11, 2)).astype(np.float32)
    _, expected = _torch_interp(torch, x, mode, align_corners, antialias, scale_factor=sf)
    actual = interpolate(jnp.asarray(x), scale_factor=sf, mode=mode, align_corners=align_corners,
                         antialias=antialias)
    assert_close(actual, expected.detach().numpy(), name=f"scale_factor {sf}")


def test_interpolate_other_axes_and_integer_nearest(torch, rng):
  masks = rng.standard_normal((2, 5, 12, 10)).astype(np.float32)  # (B, Q, H, W)
  expected = torch.nn.functional.interpolate(torch.tensor(masks), size=(24, 7), mode="bilinear",
                                             align_corners=False).numpy()
  assert_close(interpolate(jnp.asarray(masks), (24, 7), axes=(-2, -1)), expected)
  labels = rng.integers(0, 150, (1, 9, 13, 1)).astype(np.int32)
  got = interpolate(jnp.asarray(labels), (20, 5), mode="nearest")
  ref = torch.nn.functional.interpolate(torch.tensor(labels).permute(0, 3, 1, 2).float(), size=(20, 5),
                                        mode="nearest").permute(0, 2, 3, 1).numpy().astype(np.int32)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(got), ref)


def test_interpolate_is_jittable_and_static(rng):
  x = jnp.asarray(rng.standard_normal((1, 8, 8, 2)).astype(np.float32))
  f = jax.jit(lambda v: interpolate(v, (16, 4), mode="bicubic", antialias=True))
  assert f(x).shape == (1, 16, 4, 2)


@pytest.mark.parametrize("padding_mode,align_corners", list(itertools.product(("zeros", "border"), (False, True))))
def test_grid_sample_matches_torch_forward_and_grads(torch, rng, padding_mode, align_corners):
  x = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)  # non-square
  grid = rng.uniform(-1.4, 1.4, (2, 4, 6, 2)).astype(np.float32)  # includes points outside
  tx = torch.tensor(x, requires_grad=True)
  tg = torch.tensor(grid, requires_grad=True)
  expected = torch.nn.functional.grid_sample(tx.permute(0, 3, 1, 2), tg, mode="bilinear",
                                             padding_mode=padding_mode,
                                             align_corners=align_corners).permute(0, 2, 3, 1)
  cot = rng.standard_normal(expected.shape).astype(np.float32)
  (expected * torch.tensor(cot)).sum().backward()
  f = lambda a, g: grid_sample(a, g, padding_mode=padding_mode, align_corners=align_corners)
  actual, vjp = jax.vjp(f, jnp.asarray(x), jnp.asarray(grid))
  gx, gg = vjp(jnp.asarray(cot))
  assert_close(actual, expected.detach().numpy(), name="output")
  assert_close(gx, tx.grad.numpy(), name="grad input")
  assert_close(gg, tg.grad.numpy(), name="grad grid")


def test_point_sample_matches_detectron2_formulation(torch, rng):
  x = rng.standard_normal((3, 6, 9, 4)).astype(np.float32)
  coords = rng.uniform(-0.1, 1.1, (3, 50, 2)).astype(np.float32)
  # detectron2 point_sample: grid_sample(input, 2 * coords - 1) on NCHW, output (N, C, P).
  ref = torch.nn.functional.grid_sample(torch.tensor(x).permute(0, 3, 1, 2),
                                        2.0 * torch.tensor(coords)[:, :, None] - 1.0,
                                        align_corners=False)[..., 0]
  assert_close(point_sample(jnp.asarray(x), jnp.asarray(coords)), ref.permute(0, 2, 1).numpy())


def test_resize_valid_region_matches_crop_then_interpolate_under_jit(torch, rng):
  x = rng.standard_normal((3, 12, 10)).astype(np.float32)
  f = jax.jit(lambda a, hw: resize_valid_region(a, hw, (9, 15)))
  for hw in [(12, 10), (7, 5), (1, 1), (9, 15)]:
    h, w = min(hw[0], 12), min(hw[1], 10)
    ref = torch.nn.functional.interpolate(torch.tensor(x)[None, :, :h, :w], size=(9, 15), mode="bilinear",
                                          align_corners=False)[0].numpy()
    assert_close(f(jnp.asarray(x), jnp.asarray([h, w])), ref, name=str(hw))


@pytest.mark.parametrize("mode,align_corners", [("bilinear", False), ("bilinear", True), ("bicubic", False),
                                                 ("nearest", False)])
def test_resize_matrix_equals_interpolate(torch, rng, mode, align_corners):
  x = rng.standard_normal((2, 9, 13)).astype(np.float32)
  for out_hw in [(20, 7), (9, 13), (4, 26)]:
    want = torch.nn.functional.interpolate(torch.tensor(x)[None], size=out_hw, mode=mode,
                                           **({} if mode == "nearest" else {"align_corners": align_corners}))[0]
    rows, cols = (resize_matrix(n, o, mode, align_corners) for n, o in zip((9, 13), out_hw))
    assert rows.shape == (out_hw[0], 9) and cols.shape == (out_hw[1], 13)
    assert_close(np.einsum("Hh,chw,Ww->cHW", rows, x, cols), want.numpy(), name=f"{mode} {out_hw}")


def test_crop_resize_matrix_equals_resize_valid_region(rng):
  x = rng.standard_normal((3, 12, 10)).astype(np.float32)

  @jax.jit
  def by_matrix(a, hw, out):  # output written on a (16, 16) canvas; rows/cols past `out` are padding
    rows = crop_resize_matrix(12, hw[0], out[0], 16)
    cols = crop_resize_matrix(10, hw[1], out[1], 16)
    return jnp.einsum("Hh,chw,Ww->cHW", rows, a, cols, precision="highest")
  for hw, out in [((12, 10), (12, 10)), ((7, 5), (9, 15)), ((1, 1), (4, 3)), ((12, 10), (16, 16))]:
    got = by_matrix(jnp.asarray(x), jnp.asarray(hw), jnp.asarray(out))
    want = resize_valid_region(jnp.asarray(x), jnp.asarray(hw), out)
    assert_close(got[:, :out[0], :out[1]], want, name=f"{hw} -> {out}")


@pytest.mark.parametrize("call,arg", [
    (lambda x: interpolate(x, (4, 4), mode="area"), "mode"),
    (lambda x: interpolate(x, (4, 4), mode="nearest", align_corners=True), "align_corners"),
    (lambda x: interpolate(x), "size"),
    (lambda x: interpolate(x, (4, 4), scale_factor=2.0), "size"),
    (lambda x: interpolate(x, (4, 0)), "size"),
    (lambda x: interpolate(x, (4, 4), axes=(1, 1)), "axes"),
    (lambda x: interpolate(x.astype(jnp.int32), (4, 4)), "x"),
    (lambda x: grid_sample(x[0], jnp.zeros((1, 2, 2, 2))), "x"),
    (lambda x: grid_sample(x, jnp.zeros((1, 2, 2, 3))), "grid"),
    (lambda x: grid_sample(x, jnp.zeros((2, 2, 2, 2))), "grid"),
    (lambda x: grid_sample(x, jnp.zeros((1, 2, 2, 2)), padding_mode="reflection"), "padding_mode"),
    (lambda x: grid_sample(x, jnp.zeros((1, 2, 2, 2)), mode="bicubic"), "mode"),
    (lambda x: point_sample(x, jnp.zeros((1, 5, 3))), "point_coords"),
])
def test_bad_arguments_raise_value_error_naming_them(call, arg):
  x = jnp.zeros((1, 8, 8, 2))
  with pytest.raises(ValueError, match=arg):
    call(x)
