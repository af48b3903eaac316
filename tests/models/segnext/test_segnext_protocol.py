"""The on-device click protocol makes the same clicks and IoUs as the host loop (clicker + predictor)."""
import jax
import jax.numpy as jnp
import numpy as np

from dinoseg.config import load_config
from dinoseg.evaluation import interactive
from dinoseg.models.segnext import convert, protocol
from dinoseg.models.segnext.model import build_segnext
from dinoseg.models.segnext.predictor import CPU_FAST_COMPILE, SegNextPredictor


def test_device_protocol_equals_host_protocol():
  config = load_config("configs/segnext/vitb_sax2.py:tiny")
  model = build_segnext(config.model)
  params = convert.segnext_to_flax(convert.random_reference_state_dict(convert.arch_from_model_config(config.model),
                                                                      seed=2, scale=0.5))
  rng = np.random.default_rng(0)
  sizes = [(70, 101), (96, 64)]
  canvas = (128, 128)
  images = np.zeros((2, *canvas, 3), np.uint8)
  gts = np.zeros((2, *canvas), np.int8)
  for j, (h, w) in enumerate(sizes):
    images[j, :h, :w] = np.kron(rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8),
                                np.ones((4, 4, 1), np.uint8))[:h, :w]
    yy, xx = np.mgrid[:h, :w]
    gts[j, :h, :w] = ((yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 3) ** 2 / (w / 4) ** 2 < 1)
  gts[1, 10:14, :40] = -1  # an ignore band
  # Centre the random model's probabilities on the threshold so that masks are non-trivial.
  params["head"]["seg_conv"]["bias"] = params["head"]["seg_conv"]["bias"] + 0.3
  max_clicks = 4
  run = jax.jit(lambda p, im, hw, gt: protocol.click_protocol(model, p, im, hw, gt, max_clicks=max_clicks),
                compiler_options=CPU_FAST_COMPILE)
  out = run(params, jnp.asarray(images), jnp.asarray(sizes, jnp.int32), jnp.asarray(gts))
  # The demo test's predictor settings (min_points 4, fast compile): one compilation serves both.
  predictor = SegNextPredictor(model, params, min_points=max_clicks, compiler_options=CPU_FAST_COMPILE)
  for j, (h, w) in enumerate(sizes):
    state = predictor.set_image(images[j, :h, :w])
    ious, clicks = interactive.evaluate_sample(gts[j, :h, :w].astype(np.int32), predictor.click_fn(state),
                                               max_clicks=max_clicks)
    host = [(c.coords[0], c.coords[1], int(c.is_positive)) for c in clicks]
    np.testing.assert_array_equal(np.asarray(out["clicks"][j]), host)
    np.testing.assert_allclose(np.asarray(out["ious"][j]), ious, atol=1e-6)
  assert len({tuple(c) for c in np.asarray(out["clicks"]).reshape(-1, 3)[:, 2:]}) == 2  # both polarities occur
