"""Talk2DINO projection training on cached features: state, train step, validation step.

The reference recipe (`train.py`, `src/train_util.py`, `configs/vit*_mlp_infonce.yaml`):
- only the projection is trained; image features are constants (cached);
- train batches use `disentangled_self_attn` (H, D) with max-score head selection, validation
  batches `avg_self_attn_out` (D,) with a plain cosine matrix;
- symmetric InfoNCE at temperature 0.07, divided by B^2 (`loss.infonce_loss`);
- Adam (lr 1e-4, betas 0.9 / 0.999, eps 1e-8, no weight decay), constant learning rate, no
  gradient clipping, batch 128 shuffled, 100 epochs, seed 123, the last epoch's weights kept.

Batches are dicts {"image": (B, H, D) or (B, D), "text": (B, E), "valid": (B,) bool}; the
last batch of an epoch is padded (valid=False) so every step has the same shapes.
"""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from dinoseg.models.talk2dino.loss import infonce_loss
from dinoseg.models.talk2dino.pooling import max_score_similarity
from dinoseg.models.talk2dino.projection import TextProjection, normalize


@flax.struct.dataclass
class ProjectionTrainState:
  """Projection parameters, optimizer state and step counter."""
  step: jax.Array
  params: Any
  opt_state: Any


def make_optimizer(name: str = "adam", learning_rate: float = 1e-4, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """The reference optimizers: Adam (default) or AdamW (`--optimizer AdamW`, weight decay 0.05 there).

  AdamW with weight_decay 0 is Adam (the shared trainer's configs name it "adamw")."""
  if name == "adam" or (name == "adamw" and not weight_decay):
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  if name == "adamw":
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  raise ValueError(f"optimizer must be 'adam' or 'adamw', got {name!r}")


def init_state(projection: TextProjection, optimizer: optax.GradientTransformation, rng: jax.Array,
               text_dim: int, params=None) -> ProjectionTrainState:
  """Fresh (or given) projection parameters and optimizer state."""
  if params is None:
    params = projection.init(rng, jnp.zeros((1, text_dim), jnp.float32))["params"]
  return ProjectionTrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def batch_similarity(projection: TextProjection, params, batch) -> jax.Array:
  """(B, B) cosines texts x images: max-score head selection for (B, H, D) images, plain otherwise."""
  text = normalize(projection.apply({"params": params}, batch["text"]))
  image = normalize(batch["image"].astype(jnp.float32))
  if image.ndim == 3:
    return max_score_similarity(text, image)[0]
  if image.ndim != 2:
    raise ValueError(f"batch['image'] must be (B, H, D) or (B, D), got shape {image.shape}")
  return text @ image.T


def batch_loss(projection: TextProjection, params, batch) -> jax.Array:
  return infonce_loss(batch_similarity(projection, params, batch), batch.get("valid"))


def train_step(projection: TextProjection, optimizer: optax.GradientTransformation, state: ProjectionTrainState,
               batch) -> tuple[ProjectionTrainState, dict[str, jax.Array]]:
  """One Adam step on a batch; jit with `projection` and `optimizer` bound (functools.partial)."""
  loss, grads = jax.value_and_grad(lambda p: batch_loss(projection, p, batch))(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return ProjectionTrainState(step=state.step + 1, params=params, opt_state=opt_state), {
      "loss": loss, "grad_norm": optax.tree.norm(grads)}


def eval_step(projection: TextProjection, params, batch) -> dict[str, jax.Array]:
  """Validation loss of a batch (reference `validate`: avg-pooled images)."""
  return {"loss": batch_loss(projection, params, batch)}


__all__ = ["ProjectionTrainState", "make_optimizer", "init_state", "batch_similarity", "batch_loss", "train_step",
           "eval_step"]
