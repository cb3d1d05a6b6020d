"""Synthetic datasets written in the exact on-disk formats of real ones.

Used by the tests, the demo and the benchmarks, where no real data can be downloaded. Each
object class has its own look (shape, colour, size), the same in every dataset, so a model
trained on one format transfers to another by class name, as COCO models do to Cityscapes.

* :func:`make_cityscapes` -- ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/*_gtFine_{polygons.json,instanceIds.png,labelIds.png,color.png}``,
  the PNGs rasterised by cityscapesscripts' own functions (instance ids saved as 16-bit PNGs).
* :func:`make_coco` -- a COCO instances json (all 80 COCO categories with their real ids) and
  its images.
* :func:`make_voc` -- ``VOCdevkit/VOC<year>/{Annotations/*.xml,ImageSets/Main/*.txt,
  JPEGImages/*.jpg}``.
* :func:`make_kitti` -- ``kitti/training/{image_2/*.png,label_2/*.txt}`` with all 15 label
  fields (truncation, occlusion and the 3D box consistent with the drawn 2D box) and
  ``DontCare`` regions holding unlabelled far objects.

Classes of other datasets are drawn with the look of the COCO class they correspond to
(:data:`.voc.VOC_LOOKS`, :data:`.kitti.KITTI_LOOKS`).
"""

from .cityscapes import make_cityscapes, make_cityscapes_parallel
from .coco import make_coco
from .drawing import APPEARANCE, render_objects
from .kitti import KITTI_LOOKS, make_kitti
from .voc import VOC_LOOKS, make_voc

__all__ = [
    "APPEARANCE",
    "KITTI_LOOKS",
    "VOC_LOOKS",
    "make_cityscapes",
    "make_cityscapes_parallel",
    "make_coco",
    "make_kitti",
    "make_voc",
    "render_objects",
]
