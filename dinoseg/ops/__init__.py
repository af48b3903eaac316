"""Array ops shared by every system: boxes, torch-exact resampling, position embeddings,
point sampling, masks/RLE and losses. Nothing here knows about models."""
from dinoseg.ops.boxes import (box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh, clip_boxes,
                               denormalize_boxes, elementwise_generalized_box_iou, generalized_box_iou,
                               masks_to_boxes, normalize_boxes)
from dinoseg.ops.losses import (box_l1_loss, dice_loss, giou_loss, instance_normalizer,
                                sigmoid_bce_with_logits, sigmoid_ce_loss, sigmoid_focal_loss,
                                softmax_cross_entropy)
from dinoseg.ops.masks import (annotation_to_mask, paste_masks, polygons_to_mask, resize_masks, rle_area,
                               rle_decode, rle_encode, rle_to_xywh)
from dinoseg.ops.point_sampling import (importance_point_counts, largest_k_indices, logit_uncertainty,
                                        uncertain_point_coords_with_randomness)
from dinoseg.ops.position import inverse_sigmoid, sine_embedding_for_boxes, sine_position_embedding
from dinoseg.ops.resample import bilinear_gather, grid_sample, interpolate, point_sample, resize_valid_region
