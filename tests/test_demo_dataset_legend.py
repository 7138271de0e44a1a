"""demo/demo.py shows the class names and colours of the model's dataset, whatever it is."""
import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from test_demo import predictor, run, scene

FRUIT = "toy_fruit_val"
FRUIT_COLORS = [[200, 10, 10], [240, 220, 30], [120, 0, 60]]  # RGB of apple, banana, cherry
CONFIG = """\
MODEL:
  META_ARCHITECTURE: TinyFakeSegmenter
  DEVICE: cpu
  SEM_SEG_HEAD:
    NUM_CLASSES: {num_classes}
DATASETS:
  TEST: ("{dataset}",)
INPUT:
  FORMAT: RGB
  MIN_SIZE_TEST: 0
"""
SWATCHES = ((8, 7), (20, 7), (32, 7))  # (y, x) inside the legend's first three colour swatches (row 12 px)


@pytest.fixture
def fruit():
    """A registered 3-class dataset with its own colours (nothing on disk: the demo reads only metadata)."""
    DatasetCatalog.register(FRUIT, list)
    MetadataCatalog.get(FRUIT).set(stuff_classes=["apple", "banana", "cherry"], stuff_colors=FRUIT_COLORS,
                                   ignore_label=255)
    yield FRUIT
    DatasetCatalog.remove(FRUIT)
    MetadataCatalog.remove(FRUIT)


def config_file(tmp_path, dataset, num_classes):
    path = tmp_path / f"{dataset}.yaml"
    path.write_text(CONFIG.format(dataset=dataset, num_classes=num_classes))
    return str(path)


def segment(tmp_path, config, *args) -> np.ndarray:
    """The demo's BGR result for a red | green | blue scene (the fake model's classes 0 | 1 | 2)."""
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scene(96, 120))
    assert run(config, "--input", image, "--output", tmp_path / "out", *args) == 0
    return cv2.imread(str(tmp_path / "out" / "scene_seg.png"))


def test_the_legend_and_colours_are_the_datasets_own(fruit, tmp_path):
    result = segment(tmp_path, config_file(tmp_path, fruit, 3))
    image = scene(96, 120).astype(float)
    for column, rgb in zip((20, 60, 100), FRUIT_COLORS):  # one column in each third, below the legend
        expected = 0.6 * np.array(rgb[::-1]) + 0.4 * image[90, column]
        np.testing.assert_allclose(result[90, column], expected, atol=1)
    for (y, x), rgb in zip(SWATCHES, FRUIT_COLORS):
        assert result[y, x].tolist() == rgb[::-1]
    legend = predictor.Legend.of_dataset(fruit)
    assert legend.entries(np.array([[0, 2], [1, 255]])) == [(0, "apple"), (1, "banana"), (2, "cherry")]


def test_a_dataset_without_colours_gets_a_fixed_palette_and_its_names(tmp_path):
    config = config_file(tmp_path, "ade20k_sem_seg_val", 150)  # Detectron2 sets no stuff_colors for ADE20K
    first = segment(tmp_path, config)
    again = segment(tmp_path, config)
    np.testing.assert_array_equal(first, again)
    swatches = [tuple(first[y, x]) for y, x in SWATCHES]
    assert len(set(swatches)) == 3 and (0, 0, 0) not in swatches
    cityscapes = segment(tmp_path, config, "--dataset", "dg_cityscapes_val", "--opts",
                         "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "19")
    assert [tuple(cityscapes[y, x]) for y, x in SWATCHES] == [(128, 64, 128), (232, 35, 244), (70, 70, 70)]
    legend = predictor.Legend.of_dataset("ade20k_sem_seg_val")
    assert legend.entries(np.array([[0, 1, 2]])) == [(0, "wall"), (1, "building"), (2, "sky")]
    colours = {tuple(c) for c in legend.lut[:150]}
    assert len(colours) > 100 and (0, 0, 0) not in colours


def test_a_model_of_another_class_count_than_the_dataset_is_refused(fruit, tmp_path, capsys):
    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), scene())
    assert run(config_file(tmp_path, fruit, 19), "--input", image, "--output", tmp_path / "out") == 2
    assert "MODEL.SEM_SEG_HEAD.NUM_CLASSES is 19 but dataset 'toy_fruit_val' has 3 classes" in capsys.readouterr().err
    assert run(config_file(tmp_path, fruit, 3), "--input", image, "--output", tmp_path / "out",
               "--dataset", "toy_fruit_vall") == 2
    assert "dataset 'toy_fruit_vall' is not registered; did you mean toy_fruit_val?" in capsys.readouterr().err
