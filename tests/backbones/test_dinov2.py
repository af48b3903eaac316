"""DINOv2 against the facebookresearch/dinov2 reference (fixtures from scripts/make_dinov2_clip_fixtures.py)."""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

from dinoseg.backbones.dinov2 import DINOV2_VARIANTS, DinoV2, dinov2, swiglu_hidden_dim
from dinoseg.convert.dinov2_clip import dinov2_key_table, table_to_flax, table_to_torch

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "backbones"
CASES = ("dinov2_reg_tiny", "dinov2_noreg_tiny", "dinov2_swiglu_tiny")
LOSS_OUTPUTS = ("cls_token", "register_tokens", "patch_tokens", "last_attention")


@functools.lru_cache(maxsize=None)
def _case(name):
  """(model, params, table, images, masks, fixture arrays) of one fixture."""
  z = dict(np.load(FIXTURES / f"{name}.npz"))
  cfg = json.loads(str(z["config"]))
  state = {k[len("param/"):]: v.astype(np.float32) for k, v in z.items() if k.startswith("param/")}
  table = dinov2_key_table(cfg["depth"], cfg["ffn"], cfg["num_register_tokens"])
  model = DinoV2(**cfg, intermediate_layers=(0,))
  masks = jnp.asarray(z["masks"]) if "masks" in z else None
  return model, table_to_flax(state, table), table, jnp.asarray(z["images_nhwc"].astype(np.float32)), masks, z


def _fixed_weights(shape):
  """cos(0.37 i) over the flattened array: the fixture script's scalar-loss weights."""
  return np.cos(0.37 * np.arange(int(np.prod(shape)), dtype=np.float64)).astype(np.float32).reshape(shape)


def _reference_layout(out, model):
  """Our outputs in the reference layout (patch tokens flattened to (B, N, D))."""
  b = out.cls_token.shape[0]
  return {"cls_token": out.cls_token, "register_tokens": out.register_tokens,
          "patch_tokens": out.patch_tokens.reshape(b, -1, model.embed_dim), "prenorm": out.prenorm,
          "last_q": out.last_q, "last_k": out.last_k, "last_attention": out.last_attention}


@pytest.mark.parametrize("name", CASES)
def test_forward_matches_reference(name):
  model, params, _, images, masks, z = _case(name)
  out = jax.jit(model.apply)({"params": params}, images, masks)
  got = _reference_layout(out, model)
  for key, value in got.items():
    if key == "register_tokens" and model.num_register_tokens == 0:
      assert value.shape == (images.shape[0], 0, model.embed_dim)
      continue
    assert_close(value, z[f"out/{key}"], rtol=1e-5, name=key)
  # The attention maps are probabilities over keys.
  np.testing.assert_allclose(np.asarray(out.last_attention).sum(-1), 1.0, rtol=1e-5)
  # get_intermediate_layers(n=[0], norm=True) (the reference runs it without masks).
  if masks is not None:
    out = model.apply({"params": params}, images)
  patches = out.intermediate[0][:, 1 + model.num_register_tokens:]
  assert_close(patches, z["out/intermediate_0_patches"], rtol=1e-5, name="intermediate")


@pytest.mark.parametrize("name", CASES)
def test_gradients_match_torch_autograd(name):
  model, params, table, images, masks, z = _case(name)

  def loss(p, x):
    got = _reference_layout(model.apply({"params": p}, x, masks), model)
    return sum(jnp.sum(got[k] * _fixed_weights(got[k].shape)) for k in LOSS_OUTPUTS)

  grad_params, grad_images = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, images)
  torch_grads = table_to_torch(grad_params, table)
  assert_close(grad_images, z["grad/images_nhwc"], rtol=1e-5, name="d/images")
  keys = [k[len("grad/"):] for k in z if k.startswith("grad/") and k != "grad/images_nhwc"]
  assert len(keys) >= 7
  for key in keys:
    assert_close(torch_grads[key], z[f"grad/{key}"], rtol=1e-5, name=f"d/{key}")


def _torch_pos_embed(torch, pos, grid, hw, offset, antialias):
  """The reference interpolate_pos_encoding formula, in PyTorch."""
  d = pos.shape[-1]
  t = torch.tensor(pos)
  kwargs = ({"scale_factor": ((hw[0] + offset) / grid, (hw[1] + offset) / grid)} if offset
            else {"size": hw})
  patch = torch.nn.functional.interpolate(t[:, 1:].reshape(1, grid, grid, d).permute(0, 3, 1, 2),
                                          mode="bicubic", antialias=antialias, **kwargs)
  return torch.cat([t[:, :1], patch.permute(0, 2, 3, 1).reshape(1, -1, d)], dim=1).numpy()


@pytest.mark.parametrize("offset,antialias", [(0.1, False), (0.0, True)])
def test_pos_embed_interpolation_at_full_grid_matches_torch(torch, rng, offset, antialias):
  model = DinoV2(embed_dim=8, depth=1, num_heads=2, interpolate_offset=offset, interpolate_antialias=antialias)
  pos = rng.standard_normal((1, 1 + 37 * 37, 8)).astype(np.float32)
  for hw in [(32, 32), (32, 46), (16, 60), (37, 37), (74, 20)]:
    got = model.interpolate_pos_embed(jnp.asarray(pos), hw)
    expected = pos if hw == (37, 37) else _torch_pos_embed(torch, pos, 37, hw, offset, antialias)
    assert_close(got, expected, rtol=1e-5, name=f"pos_embed {hw}")


def test_the_two_interpolation_modes_differ(rng):
  # Sanity for the test above: the modes are not interchangeable.
  pos = jnp.asarray(rng.standard_normal((1, 1 + 37 * 37, 8)).astype(np.float32))
  old = DinoV2(embed_dim=8, depth=1, num_heads=2).interpolate_pos_embed(pos, (32, 32))
  new = DinoV2(embed_dim=8, depth=1, num_heads=2, interpolate_offset=0.0,
               interpolate_antialias=True).interpolate_pos_embed(pos, (32, 32))
  assert float(jnp.abs(old - new).max()) > 1e-2


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vitb14_reg", "dinov2_vitg14_reg"])
def test_full_size_output_shapes(name):
  model = dinov2(name)
  images = jax.ShapeDtypeStruct((1, 448, 448, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  out = jax.eval_shape(model.apply, variables, images)
  d, heads, r = model.embed_dim, model.num_heads, model.num_register_tokens
  t = 1 + r + 32 * 32
  assert out.cls_token.shape == (1, d)
  assert out.register_tokens.shape == (1, r, d)
  assert out.patch_tokens.shape == (1, 32, 32, d)
  assert out.last_q.shape == out.last_k.shape == (1, heads, t, 64)
  assert out.last_attention.shape == (1, heads, t, t)
  assert model.attention_scale == 0.125


def test_variants_match_the_hub_settings():
  assert DINOV2_VARIANTS["dinov2_vitb14_reg"] == dict(embed_dim=768, depth=12, num_heads=12, num_register_tokens=4,
                                                      interpolate_antialias=True, interpolate_offset=0.0)
  assert DINOV2_VARIANTS["dinov2_vitl14"] == dict(embed_dim=1024, depth=24, num_heads=16)
  assert DinoV2().interpolate_offset == 0.1 and not DinoV2().interpolate_antialias
  assert swiglu_hidden_dim(1536, 4.0) == 4096
  assert swiglu_hidden_dim(16, 4.0) == 48


def test_query_chunked_attention_gives_the_same_outputs():
  model, params, _, images, _, z = _case("dinov2_reg_tiny")  # T = 13 tokens: chunks of 4 with padding
  out = jax.jit(DinoV2(**_model_fields(model), query_chunk_size=4).apply)({"params": params}, images)
  got = _reference_layout(out, model)
  for key in ("patch_tokens", "cls_token", "last_attention"):
    assert_close(got[key], z[f"out/{key}"], rtol=1e-5, name=key)


def test_bfloat16_compute_switch():
  model, params, _, images, masks, z = _case("dinov2_reg_tiny")
  out = jax.jit(DinoV2(**{**_model_fields(model), "dtype": jnp.bfloat16}).apply)({"params": params}, images)
  assert out.patch_tokens.dtype == jnp.bfloat16
  assert_close(out.patch_tokens.reshape(images.shape[0], -1, model.embed_dim).astype(jnp.float32),
               z["out/patch_tokens"], rtol=5e-2, name="bf16 patch tokens")


def _model_fields(model):
  return {f: getattr(model, f) for f in ("embed_dim", "depth", "num_heads", "ffn", "num_register_tokens",
                                         "interpolate_antialias", "interpolate_offset", "pos_embed_grid")}


@pytest.mark.parametrize("shape,match", [((1, 20, 28, 3), "multiples of the patch size"),
                                         ((1, 28, 28, 4), "images must be"),
                                         ((28, 28, 3), "images must be")])
def test_bad_images_raise(shape, match):
  model = DinoV2(embed_dim=16, depth=1, num_heads=2, pos_embed_grid=2)
  with pytest.raises(ValueError, match=match):
    model.init(jax.random.key(0), jnp.zeros(shape))


def test_bad_arguments_raise():
  images = jnp.zeros((1, 28, 28, 3))
  with pytest.raises(ValueError, match="masks must be"):
    DinoV2(embed_dim=16, depth=1, num_heads=2, pos_embed_grid=2).init(
        jax.random.key(0), images, jnp.zeros((1, 3), bool))
  with pytest.raises(ValueError, match="ffn must be"):
    DinoV2(embed_dim=16, depth=1, num_heads=2, pos_embed_grid=2, ffn="relu").init(jax.random.key(0), images)
  with pytest.raises(ValueError, match="num_heads"):
    DinoV2(embed_dim=16, depth=1, num_heads=3, pos_embed_grid=2).init(jax.random.key(0), images)
  with pytest.raises(ValueError, match="intermediate_layers"):
    DinoV2(embed_dim=16, depth=1, num_heads=2, pos_embed_grid=2, intermediate_layers=(3,)).init(
        jax.random.key(0), images)
  with pytest.raises(ValueError, match="name must be one of"):
    dinov2("dinov2_vitx14")
