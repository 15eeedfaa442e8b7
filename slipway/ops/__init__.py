"""Pre- and post-processing ops: pure numpy / OpenCV functions, batched where it makes sense.

Every op validates its input (a bad rank, dtype, NaN → :class:`slipway.errors.UserError`)
and is tested against an independent reference (OpenCV, PIL, PyTorch or a plain-Python
oracle). Images are HWC/NHWC, sizes ``(height, width)``, points ``(x, y)``, boxes xyxy.
"""

from __future__ import annotations

from slipway.ops.classify import log_softmax, logit, sigmoid, softmax, topk
from slipway.ops.decode import (
    YOLOV5_ANCHORS,
    Detections,
    decode_picodet,
    decode_ssd,
    decode_ssd_boxes,
    decode_yolo_anchor_based,
    decode_yolo_anchor_free,
    dfl_expectation,
    make_anchor_points,
    picodet_centers,
    ssd_priors,
)
from slipway.ops.detect import batched_nms, box_area, box_convert, box_iou, clip_boxes, nms, soft_nms
from slipway.ops.geometry import Transform, scale_transform, warp_affine, warp_perspective
from slipway.ops.image import (
    bgr_to_rgb,
    center_crop,
    chw_to_hwc,
    convert_dtype,
    hwc_to_chw,
    letterbox,
    letterbox_geometry,
    normalize,
    preprocess,
    resize_shorter,
    rgb_to_bgr,
    unletterbox,
)
from slipway.ops.pose import (
    blur_heatmaps,
    decode_heatmaps,
    heatmap_argmax,
    keypoints_to_image,
    refine_dark,
    refine_quarter_offset,
    top_down_transform,
)
from slipway.ops.resize import METHODS as RESIZE_METHODS
from slipway.ops.resize import resize
from slipway.ops.segment import (
    class_masks,
    labels_to_original,
    labels_to_polygons,
    logits_to_original,
    mask_to_polygons,
    segment_argmax,
    segmentation_to_original,
)

__all__ = [
    # image
    "resize",
    "RESIZE_METHODS",
    "letterbox",
    "letterbox_geometry",
    "unletterbox",
    "preprocess",
    "center_crop",
    "resize_shorter",
    "normalize",
    "hwc_to_chw",
    "chw_to_hwc",
    "bgr_to_rgb",
    "rgb_to_bgr",
    "convert_dtype",
    # geometry
    "Transform",
    "scale_transform",
    "warp_affine",
    "warp_perspective",
    # classification / generic
    "softmax",
    "log_softmax",
    "sigmoid",
    "logit",
    "topk",
    # detection
    "box_convert",
    "box_area",
    "box_iou",
    "clip_boxes",
    "nms",
    "batched_nms",
    "soft_nms",
    "Detections",
    "make_anchor_points",
    "dfl_expectation",
    "decode_yolo_anchor_free",
    "decode_yolo_anchor_based",
    "YOLOV5_ANCHORS",
    "ssd_priors",
    "decode_ssd_boxes",
    "decode_ssd",
    "picodet_centers",
    "decode_picodet",
    # pose
    "heatmap_argmax",
    "refine_quarter_offset",
    "refine_dark",
    "blur_heatmaps",
    "decode_heatmaps",
    "top_down_transform",
    "keypoints_to_image",
    # segmentation
    "segment_argmax",
    "logits_to_original",
    "labels_to_original",
    "segmentation_to_original",
    "class_masks",
    "mask_to_polygons",
    "labels_to_polygons",
]

# ---- OCR / tracking (owned by the OCR/tracking agent: add imports and __all__ entries below) ----

from slipway.ops.ocr import (  # noqa: E402
    TextBoxes,
    crop_quad,
    crop_quads,
    ctc_beam_decode,
    ctc_greedy_decode,
    db_boxes,
    load_charset,
    order_quad,
    sort_boxes,
)
from slipway.ops.track import ByteTracker, MotResult, SortTracker, TrackState, clear_mot, id_switches, mota  # noqa: E402

__all__ += [
    # OCR
    "db_boxes",
    "TextBoxes",
    "order_quad",
    "sort_boxes",
    "crop_quad",
    "crop_quads",
    "load_charset",
    "ctc_greedy_decode",
    "ctc_beam_decode",
    # tracking
    "SortTracker",
    "ByteTracker",
    "TrackState",
    "clear_mot",
    "MotResult",
    "mota",
    "id_switches",
]
