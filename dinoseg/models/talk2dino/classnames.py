"""Class names and evaluation settings of the eight open-vocabulary segmentation benchmarks.

The names are the class lists of the mmsegmentation 0.x datasets that Talk2DINO's evaluation
uses, verbatim (including "tvmonitor", "pottedplant" and ADE20K's "bed " with its trailing
space), in label order: label value i of a prepared ground-truth map is `classes[i]`.
With-background benchmarks list "background" first; the model then scores only the other
classes and a constant background channel (the benchmark's `bg_thresh`) is prepended.

| key         | classes | background          | bg cleaning |
|-------------|---------|---------------------|-------------|
| voc20       | 20      | none                | no          |
| voc         | 20 + bg | constant channel    | yes         |
| context59   | 59      | none                | no          |
| context     | 59 + bg | constant channel    | no          |
| coco_stuff  | 171     | none                | no          |
| coco_object | 80 + bg | constant channel    | yes         |
| cityscapes  | 19      | none                | no          |
| ade20k      | 150     | none                | no          |

Background thresholds: 0.55 for ViT-B and 0.54 for ViT-L (the reference's eval configs).
"""
import dataclasses

from dinoseg.errors import UserValueError

VOC20 = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

CONTEXT59 = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building",
    "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog",
    "door", "fence", "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike",
    "mountain", "mouse", "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood")

COCO_OBJECTS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush")

COCO_STUFF_ONLY = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain",
    "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other",
    "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin",
    "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other",
    "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel",
    "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood")

COCO_STUFF = COCO_OBJECTS + COCO_STUFF_ONLY

CITYSCAPES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")

ADE20K = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag")

BACKGROUND = "background"
# Constant background-channel value per backbone size (reference eval configs).
BG_THRESH = {"vitb": 0.55, "vitl": 0.54}


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """One evaluation benchmark.

  Attributes:
    key: the reference's task key ("voc", "voc20", ...).
    title: column title in the paper's table.
    classes: label-ordered class names (with "background" first for with-background sets).
    bg_clean: whether the background-cleaning step runs (`with_bg_clean` in the reference).
    dataset: the prepared dataset's name in `dinoseg.data_pipelines`.
  """
  key: str
  title: str
  classes: tuple[str, ...]
  bg_clean: bool
  dataset: str

  @property
  def with_background(self) -> bool:
    """True when the first class is "background" (scored by a constant channel, not by text)."""
    return self.classes[0] == BACKGROUND

  @property
  def prompt_classes(self) -> tuple[str, ...]:
    """The classes that get text embeddings (all but the background)."""
    return self.classes[1:] if self.with_background else self.classes

  @property
  def num_classes(self) -> int:
    return len(self.classes)


_ALL = (
    Benchmark("voc20", "V20", VOC20, False, "voc20"),
    Benchmark("context59", "C59", CONTEXT59, False, "pascal_context59"),
    Benchmark("coco_stuff", "Stuff", COCO_STUFF, False, "coco_stuff"),
    Benchmark("cityscapes", "City", CITYSCAPES, False, "cityscapes"),
    Benchmark("ade20k", "ADE", ADE20K, False, "ade20k"),
    Benchmark("voc", "V21", (BACKGROUND,) + VOC20, True, "voc21"),
    Benchmark("context", "C60", (BACKGROUND,) + CONTEXT59, False, "pascal_context60"),
    Benchmark("coco_object", "Obj", (BACKGROUND,) + COCO_OBJECTS, True, "coco_object"),
)

# In the column order of the paper's table (the average is the last column).
BENCHMARKS: dict[str, Benchmark] = {b.key: b for b in _ALL}
PAPER_COLUMNS: tuple[str, ...] = tuple(BENCHMARKS)


def get_benchmark(key: str) -> Benchmark:
  """The benchmark named `key` (UserValueError, a ValueError, listing the known keys otherwise)."""
  if key not in BENCHMARKS:
    raise UserValueError(f"unknown benchmark {key!r}; known: {', '.join(BENCHMARKS)}")
  return BENCHMARKS[key]


__all__ = ["Benchmark", "BENCHMARKS", "PAPER_COLUMNS", "get_benchmark", "BG_THRESH", "BACKGROUND", "VOC20",
           "CONTEXT59", "COCO_OBJECTS", "COCO_STUFF", "CITYSCAPES", "ADE20K"]
