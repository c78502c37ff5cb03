"""Label stage: boxes and masks for what an image shows.

- `boxes`: boxes carried from source images to renders, inpainting masks, objects pasted onto
  canvases;
- `segment`: a foreground mask and a tight box for the object a rendered image shows
  (threshold, CLIPSeg, SAM), run once per worker beside the generator.
"""

from augment.labels.boxes import (
    Canvas,
    box_mask,
    compose_canvases,
    fitted_size,
    ink_box,
    scale_box,
    transfer_boxes,
)

__all__ = [
    "Canvas",
    "box_mask",
    "compose_canvases",
    "fitted_size",
    "ink_box",
    "scale_box",
    "transfer_boxes",
]
