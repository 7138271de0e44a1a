"""Raw label ids of each dataset -> Cityscapes train ids, as numpy lookup tables.

Each table maps the dataset's own ids to train ids; every id not listed becomes 255
(ignored). Sources: the Cityscapes label definition (GTAV and ACDC use the same ids),
the SYNTHIA RAND-CITYSCAPES README, and the Mapillary Vistas v1.2 class list with the
official Rein/DGSS name rules (curbs and pedestrian areas are sidewalk, lane markings,
parking, bike and service lanes are road, street lights and utility poles are pole,
traffic-sign fronts, backs and frames are traffic sign, riders of all kinds are rider,
on-rails vehicles are train).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .classes import IGNORE_LABEL

CITYSCAPES_ID_TO_TRAIN_ID: Mapping[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

# SYNTHIA: 1 sky, 2 building, 3 road, 4 sidewalk, 5 fence, 6 vegetation, 7 pole, 8 car,
# 9 traffic sign, 10 pedestrian, 11 bicycle, 12 motorcycle, 15 traffic light,
# 16 terrain, 17 rider, 18 truck, 19 bus, 20 train, 21 wall (0, 13, 14, 22 ignored).
SYNTHIA_ID_TO_TRAIN_ID: Mapping[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11,
    17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}

MAPILLARY_V12_NUM_IDS = 66  # 65 classes + "unlabeled" (65)
MAPILLARY_V12_TO_TRAIN_ID: Mapping[int, int] = {
    # road: bike lane, crosswalk - plain, parking, road, service lane,
    # lane marking - crosswalk, lane marking - general
    7: 0, 8: 0, 10: 0, 13: 0, 14: 0, 23: 0, 24: 0,
    2: 1, 9: 1, 11: 1, 15: 1,  # sidewalk: curb, curb cut, pedestrian area, sidewalk
    17: 2, 6: 3, 3: 4,  # building, wall, fence
    44: 5, 45: 5, 47: 5,  # pole: street light, pole, utility pole
    48: 6,  # traffic light
    46: 7, 49: 7, 50: 7,  # traffic sign: frame, back, front
    30: 8, 29: 9, 27: 10, 19: 11,  # vegetation, terrain, sky, person
    20: 12, 21: 12, 22: 12,  # rider: bicyclist, motorcyclist, other rider
    55: 13, 61: 14, 54: 15, 58: 16, 57: 17, 52: 18,  # car truck bus on-rails moto bicycle
}


def make_lut(mapping: Mapping[int, int], dtype: type = np.uint8, ignore_label: int = IGNORE_LABEL) -> np.ndarray:
    """A table covering every value of `dtype`: mapping[id] where listed, else `ignore_label`.

    Index it with an id image of that dtype (`lut[ids]`): no id can fall outside.
    """
    lut = np.full(np.iinfo(dtype).max + 1, ignore_label, dtype=np.uint8)
    lut[list(mapping)] = list(mapping.values())
    return lut
