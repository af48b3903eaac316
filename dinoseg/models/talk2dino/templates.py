"""Prompt templates for class-name embeddings.

Talk2DINO's evaluation uses the 7-template ImageNet subset (`sub_imagenet_template`); each
class embedding is the mean of the 7 raw CLIP text embeddings (see `text.py`).
"""
SUBSET_IMAGENET_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "sub_imagenet_template": SUBSET_IMAGENET_TEMPLATES,
    "simple": ("a photo of a {}.",),
    "identity": ("{}",),
}


def get_templates(name: str) -> tuple[str, ...]:
  """The template set `name` (ValueError listing the known sets otherwise)."""
  if name not in TEMPLATE_SETS:
    raise ValueError(f"unknown template set {name!r}; known: {', '.join(TEMPLATE_SETS)}")
  return TEMPLATE_SETS[name]


def class_prompts(classnames, templates) -> list[str]:
  """Prompts class-major: [t.format(c) for c in classnames for t in templates]."""
  return [t.format(c) for c in classnames for t in templates]


__all__ = ["SUBSET_IMAGENET_TEMPLATES", "TEMPLATE_SETS", "get_templates", "class_prompts"]
