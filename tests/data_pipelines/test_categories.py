"""Dataset category metadata (data_pipelines/categories.py) and the released Mask DINO configs that use it."""
import pytest

from dinoseg.config import load_config
from dinoseg.data_pipelines import categories as cats
from dinoseg.models.maskdino import convert


def test_tables():
  assert len(cats.COCO_THING_IDS) == len(cats.COCO_THING_NAMES) == 80
  assert len(cats.COCO_STUFF_IDS) == len(cats.COCO_STUFF_NAMES) == 53
  # A prepared dataset's labels follow its sorted category ids: things (1..90) then stuff (92..200).
  assert list(cats.COCO_PANOPTIC_IDS) == sorted(set(cats.COCO_PANOPTIC_IDS))
  assert max(cats.COCO_THING_IDS) < min(cats.COCO_STUFF_IDS)
  assert len(set(cats.COCO_PANOPTIC_NAMES)) == 133
  assert len(cats.ADE20K_NAMES) == 150 and len(cats.CITYSCAPES_NAMES) == 19
  panoptic = cats.coco_panoptic_categories()
  assert sum(c["isthing"] for c in panoptic) == 80 and panoptic[80] == {"id": 92, "name": "banner", "isthing": 0}
  for name in cats.COCO_PANOPTIC_NAMES + cats.ADE20K_NAMES + cats.CITYSCAPES_NAMES:
    assert name and name == name.strip() and "  " not in name


@pytest.mark.parametrize("name", convert.RELEASED_CONFIGS)
def test_released_configs_name_every_class(name):
  config = load_config(f"configs/maskdino/{name}.py")
  assert len(config.dataset.class_names) == config.model.num_classes
  assert len(config.dataset.category_ids) in (0, config.model.num_classes)
  if config.test.panoptic_on:
    things = {i for i, c in enumerate(config.dataset.category_ids) if c in cats.COCO_THING_IDS}
    assert things == set(config.test.thing_classes)
