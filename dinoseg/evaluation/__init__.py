"""Evaluators: COCO box/mask AP (pycocotools), panoptic quality, semantic mIoU."""
from dinoseg.evaluation.coco import COCOEvaluator, instances_to_coco_json  # noqa: F401
from dinoseg.evaluation.panoptic import PanopticEvaluator, pq_compute_files, pq_stats_single  # noqa: F401
from dinoseg.evaluation.semantic import SemanticEvaluator, confusion_matrix, semantic_metrics  # noqa: F401
