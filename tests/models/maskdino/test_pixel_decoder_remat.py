"""The pixel decoder's recomputed FFNs (MaskDINOEncoder.remat_ffn): same parameters, outputs and gradients."""
import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.models.maskdino.pixel_decoder import MaskDINOEncoder


def _encoder(remat: bool) -> MaskDINOEncoder:
  return MaskDINOEncoder(conv_dim=32, mask_dim=32, dim_feedforward=64, num_encoder_layers=2, nheads=4,
                         total_num_feature_levels=4, msda_impl="xla", remat_ffn=remat)


def test_recomputed_ffns_give_the_same_outputs_and_gradients():
  keys = jax.random.split(jax.random.key(0), 4)
  features = {name: jax.random.normal(k, (1, 64 // s, 64 // s, c))
              for k, (name, s, c) in zip(keys, [("res2", 4, 16), ("res3", 8, 24), ("res4", 16, 32),
                                                ("res5", 32, 48)])}
  plain, remat = _encoder(False), _encoder(True)
  variables = plain.init(jax.random.key(1), features)
  assert (jax.tree.structure(remat.init(jax.random.key(1), features)) == jax.tree.structure(variables))

  def loss(model, params, feats):
    mask_features, multi_scale = model.apply({"params": params}, feats)[:2]
    return jnp.sum(mask_features ** 2) + sum(jnp.sum(jnp.sin(m)) for m in multi_scale)

  value_p, grads_p = jax.jit(jax.value_and_grad(lambda p, f: loss(plain, p, f), argnums=(0, 1)))(
      variables["params"], features)
  value_r, grads_r = jax.jit(jax.value_and_grad(lambda p, f: loss(remat, p, f), argnums=(0, 1)))(
      variables["params"], features)
  np.testing.assert_allclose(value_r, value_p, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_r), jax.tree.leaves(grads_p)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(grads_p[0]["encoder_layers_0"]["linear1"]["kernel"]).sum()) > 0

  # The recomputed layers keep no (S, dim_feedforward) activation for the backward pass.
  def saved_widths(model):
    _, vjp_fn = jax.vjp(lambda p: loss(model, p, features), variables["params"])
    return [leaf.shape for leaf in jax.tree.leaves(vjp_fn) if hasattr(leaf, "shape") and leaf.shape[-1:] == (64,)
            and leaf.ndim == 3 and leaf.shape[1] > 64]
  assert saved_widths(plain) and not saved_widths(remat)
