"""Dataset loaders on tiny layouts built here, and the download machinery against a local
HTTP server serving a tiny archive (with Range support, to test resuming)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepspectral.cli import main
from deepspectral.data import datasets as ds
from deepspectral.data import download as dl


def _jpg(path: Path, width: int, height: int, seed: int = 0, exif_orientation: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, exif=exif)
    else:
        image.save(path)
    return path


def _png_mask(path: Path, mask: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).convert(mode).save(path)
    return path


# ---------------------------------------------------------------------------------------
# VOC
# ---------------------------------------------------------------------------------------

_XML = """<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""
_OBJ = """<object><name>{name}</name><difficult>{difficult}</difficult>
<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"""


def _voc(root: Path, year: int = 2007) -> Path:
    voc = root / "VOCdevkit" / f"VOC{year}"
    _jpg(voc / "JPEGImages" / "000001.jpg", 40, 30)
    _jpg(voc / "JPEGImages" / "000002.jpg", 20, 10)
    objects = _OBJ.format(name="dog", difficult=0, x1=1, y1=1, x2=40, y2=30) + _OBJ.format(
        name="cat", difficult=1, x1=5, y1=6, x2=10, y2=12
    )
    (voc / "Annotations").mkdir(parents=True)
    (voc / "Annotations" / "000001.xml").write_text(_XML.format(w=40, h=30, objects=objects))
    (voc / "Annotations" / "000002.xml").write_text(
        _XML.format(w=20, h=10, objects=_OBJ.format(name="car", difficult=0, x1=2, y1=3, x2=4, y2=5))
    )
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n000003\n")
    # segmentation
    labels = np.zeros((30, 40), np.uint8)
    labels[5:15, 5:15] = 12
    labels[4, 4:16] = 255
    palette_image = Image.fromarray(labels, mode="P")
    palette_image.putpalette([0, 0, 0, 128, 0, 0] * 128)
    (voc / "SegmentationClass").mkdir(parents=True)
    palette_image.save(voc / "SegmentationClass" / "000001.png")
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("000001\n")
    return voc


def test_voc_boxes_are_continuous_and_keep_difficult(tmp_path):
    _voc(tmp_path)
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2007"):
        dataset = ds.load_voc_boxes(root, year=2007)
        assert [s.image_id for s in dataset] == ["000001", "000002"]
    first = dataset[0]
    # xmin=1..xmax=40 (1-based inclusive) covers the whole 40-pixel-wide image: 0..40
    np.testing.assert_array_equal(first.boxes_xyxy, [[0, 0, 40, 30], [4, 5, 10, 12]])
    np.testing.assert_array_equal(first.difficult, [False, True])
    assert first.classes == ("dog", "cat")
    assert first.load_image().shape == (30, 40, 3)
    assert any("000003" in n or "no Annotations" in n for n in dataset.notes)
    assert ds.load_dataset("voc07", root=tmp_path).name == "voc07"
    with pytest.raises(ValueError, match="VOC2012"):
        ds.load_voc_boxes(tmp_path, year=2012)
    with pytest.raises(ValueError, match="year"):
        ds.load_voc_boxes(tmp_path, year=2010)


def test_voc_segmentation_reads_palette_indices(tmp_path):
    _voc(tmp_path, year=2012)
    dataset = ds.load_voc_segmentation(tmp_path)
    labels = dataset[0].load_labels()
    assert labels.dtype == np.uint8 and labels.shape == (30, 40)
    assert set(np.unique(labels)) == {0, 12, 255}
    assert ds.VOC_CLASSES[12] == "dog"


# ---------------------------------------------------------------------------------------
# COCO
# ---------------------------------------------------------------------------------------


def _coco(root: Path, names=("a.jpg", "b.jpg", "c.jpg")) -> Path:
    images = root / "images"
    for index, name in enumerate(names):
        _jpg(images / name, 50, 40, seed=index)
    data = {
        "images": [{"id": i + 1, "file_name": n, "width": 50, "height": 40} for i, n in enumerate(names)],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [10.4, 5.6, 20.0, 10.0], "area": 200.0, "iscrowd": 0, "category_id": 1,
             "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]]},
            {"id": 2, "image_id": 1, "bbox": [0, 0, 50, 40], "area": 2000.0, "iscrowd": 1, "category_id": 1,
             "segmentation": {"counts": [0, 2000], "size": [40, 50]}},
            {"id": 3, "image_id": 1, "bbox": [1, 1, 3, 3], "area": 9.0, "iscrowd": 0, "category_id": 1,
             "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]},
            {"id": 4, "image_id": 3, "bbox": [0, 0, 50, 40], "area": 2000.0, "iscrowd": 1, "category_id": 1,
             "segmentation": {"counts": [0, 2000], "size": [40, 50]}},
        ],
    }  # fmt: skip
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_json_non_crowd_boxes_and_largest_instance(tmp_path):
    annotations = _coco(tmp_path)
    dataset = ds.load_dataset("coco-json", images=tmp_path / "images", annotations=annotations)
    assert [s.image_id for s in dataset] == ["a"]  # b: no instances, c: crowd only
    np.testing.assert_allclose(dataset[0].boxes_xyxy, [[10.4, 5.6, 30.4, 15.6], [1, 1, 4, 4]])
    mask = dataset[0].load_mask()  # the largest non-crowd instance, not the crowd region
    assert mask.shape == (40, 50)
    ys, xs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 30, 5, 15)
    assert len(dataset.notes) == 1
    rounded = ds.load_coco_boxes(tmp_path / "images", annotations, round_boxes=True)
    np.testing.assert_array_equal(rounded[0].boxes_xyxy[0], [10, 6, 30, 16])
    with pytest.raises(ValueError, match="--annotations"):
        ds.load_dataset("coco-json", images=tmp_path / "images")


def test_coco20k_list_is_shipped_and_filters(tmp_path):
    names = ds.coco20k_filenames()
    assert len(names) == 19817 and len(set(names)) == 19817
    assert all(n.startswith("train2014/COCO_train2014_") and n.endswith(".jpg") for n in names)
    first, second = Path(names[0]).name, Path(names[1]).name
    root = tmp_path / "coco"
    _coco(root, names=(first, "COCO_train2014_not_in_list.jpg", second))
    (root / "images").rename(root / "train2014")
    (root / "annotations").mkdir()
    (root / "instances.json").rename(root / "annotations" / "instances_train2014.json")
    dataset = ds.load_dataset("coco20k", root=root)
    assert [s.image_id for s in dataset] == [Path(first).stem]  # second: crowd only
    np.testing.assert_array_equal(dataset[0].boxes_xyxy[0], [10, 6, 30, 16])  # rounded as LOST
    listed = tmp_path / "list.txt"
    listed.write_text("COCO_train2014_not_in_list.jpg\n")
    assert len(ds.load_dataset("coco20k", root=root, image_list=listed)) == 0


def test_exif_orientation_follows_the_annotation(tmp_path):
    # stored 50x40 with "rotate 90" in EXIF; the COCO json annotates the stored pixels
    images = tmp_path / "images"
    _jpg(images / "a.jpg", 50, 40, exif_orientation=6)
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 50, "height": 40}],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0, "category_id": 1}],
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    sample = ds.load_coco_boxes(images, tmp_path / "a.json")[0]
    assert sample.load_image().shape == (40, 50, 3)
    bad = ds.Sample(image_id="a", image_path=images / "a.jpg", image_size=(10, 10))
    with pytest.raises(ValueError, match="annotation"):
        bad.load_image()


# ---------------------------------------------------------------------------------------
# Masks, saliency layouts, CUB
# ---------------------------------------------------------------------------------------


def test_masks_by_relative_path_and_stem(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:20] = 200
    mask[0, 0] = 127  # below the 128 threshold
    _jpg(tmp_path / "img" / "seq1" / "00000.jpg", 30, 20)
    _jpg(tmp_path / "img" / "seq2" / "00000.jpg", 30, 20, seed=1)
    _jpg(tmp_path / "img" / "solo.jpg", 30, 20, seed=2)
    _jpg(tmp_path / "img" / "nomask.jpg", 30, 20, seed=3)
    _png_mask(tmp_path / "gt" / "seq1" / "00000.png", mask)
    _png_mask(tmp_path / "gt" / "seq2" / "00000.png", 255 - mask)
    _png_mask(tmp_path / "gt" / "other" / "solo.png", (mask > 127) * 255, mode="1")
    dataset = ds.load_dataset("masks", images=tmp_path / "img", masks=tmp_path / "gt")
    assert [s.image_id for s in dataset] == ["seq1/00000", "seq2/00000", "solo"]
    m1, m2, m3 = (s.load_mask() for s in dataset)
    assert m1.sum() == 75 and not m1[0, 0]
    assert m2.sum() == (255 - mask >= 128).sum() == 600 - 75 - 1 + 1
    assert m3.sum() == 75
    assert dataset.notes == ["1 image(s) without a mask left out"]
    with pytest.raises(ValueError, match="--masks"):
        ds.load_dataset("masks", images=tmp_path / "img")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="masks: no mask"):
        ds.load_mask_folder(tmp_path / "img", tmp_path / "empty")


@pytest.mark.parametrize(
    "name, image_dir, mask_dir",
    [
        ("ecssd", "ECSSD/images", "ECSSD/ground_truth_mask"),
        ("duts-te", "DUTS-TE/DUTS-TE-Image", "DUTS-TE/DUTS-TE-Mask"),
        ("dut-omron", "DUT-OMRON-image/DUT-OMRON-image", "pixelwiseGT-new-PNG"),
    ],
)
def test_saliency_layouts(tmp_path, name, image_dir, mask_dir):
    _jpg(tmp_path / image_dir / "0001.jpg", 16, 12)
    _png_mask(tmp_path / mask_dir / "0001.png", np.full((12, 16), 255))
    dataset = ds.load_dataset(name, root=tmp_path)
    assert len(dataset) == 1 and dataset.task == "segmentation" and dataset[0].load_mask().all()
    with pytest.raises(ValueError, match="download"):
        ds.load_dataset(name, root=tmp_path / "empty")


def test_cub_test_split_and_center_crop(tmp_path):
    cub = tmp_path / "CUB_200_2011"
    entries = {1: "001.A/a_1.jpg", 2: "001.A/a_2.jpg", 3: "002.B/b_1.jpg"}
    for index, rel in entries.items():
        _jpg(cub / "images" / rel, 60, 40, seed=index)
        mask = np.zeros((40, 60), np.uint8)
        mask[:, :30] = 255
        _png_mask(tmp_path / "segmentations" / rel.replace(".jpg", ".png"), mask)
    (cub / "images.txt").write_text("".join(f"{i} {r}\n" for i, r in entries.items()))
    (cub / "train_test_split.txt").write_text("1 1\n2 0\n3 0\n")
    dataset = ds.load_dataset("cub", root=tmp_path)
    assert [s.image_id for s in dataset] == ["001.A/a_2", "002.B/b_1"]
    sample = dataset[0]
    assert sample.crop_xyxy == (10, 0, 50, 40)
    assert sample.load_image().shape == (40, 40, 3)
    mask = sample.load_mask()
    assert mask.shape == (40, 40) and mask[:, :20].all() and not mask[:, 20:].any()
    assert len(ds.load_cub(tmp_path, split="all", crop="none")) == 3
    with pytest.raises(ValueError, match="split"):
        ds.load_cub(tmp_path, split="val")


def test_subset_limit_and_seed(tmp_path):
    for i in range(10):
        _jpg(tmp_path / "i" / f"{i}.jpg", 8, 8, seed=i)
        _png_mask(tmp_path / "m" / f"{i}.png", np.zeros((8, 8)))
    dataset = ds.load_mask_folder(tmp_path / "i", tmp_path / "m")
    assert [s.image_id for s in dataset.subset(limit=3)] == ["0", "1", "2"]
    a = [s.image_id for s in dataset.subset(limit=4, seed=1)]
    assert a == [s.image_id for s in dataset.subset(limit=4, seed=1)] and len(set(a)) == 4
    assert dataset.subset(limit=None) is dataset
    with pytest.raises(ValueError, match="dataset"):
        ds.load_dataset("imagenet", root=tmp_path)


def test_registry_covers_exactly_the_dataset_names(tmp_path):
    assert tuple(ds.DATASET_REGISTRY) == ds.DATASETS and len(set(ds.DATASETS)) == len(ds.DATASETS)
    assert ds.DATASETS == ds.LOCALIZATION_DATASETS + ds.SEGMENTATION_DATASETS
    tasks = {name: entry.task for name, entry in ds.DATASET_REGISTRY.items()}
    assert ds.LOCALIZATION_DATASETS == tuple(n for n, t in tasks.items() if t == "localization")
    assert ds.SEGMENTATION_DATASETS == tuple(n for n, t in tasks.items() if t == "segmentation")
    assert set(ds.LOCALIZATION_DATASETS) == {"voc07", "voc12", "coco20k", "coco-json"}
    assert set(ds.SEGMENTATION_DATASETS) == {"ecssd", "duts-te", "dut-omron", "cub", "masks"}
    with pytest.raises(ValueError) as error:
        ds.load_dataset("nope", root=tmp_path)
    message = str(error.value)
    assert message.startswith("dataset:") and "'nope'" in message
    assert all(name in message for name in ds.DATASETS)
    for name, entry in ds.DATASET_REGISTRY.items():  # the first argument a dataset needs is named
        with pytest.raises(ValueError, match=f"--{entry.required[0]}: required with --dataset {name}"):
            ds.load_dataset(name)
    with pytest.raises(ValueError, match="task"):
        ds.DatasetEntry("detection", ds.load_cub, ("root",))


def test_public_names_stay_importable_from_the_package():
    # the names of the single-module datasets.py the commands and users import
    names = (
        "Sample Dataset DATASETS LOCALIZATION_DATASETS SEGMENTATION_DATASETS MASK_THRESHOLD CUB_CROP VOC_CLASSES "
        "load_dataset load_voc_boxes load_voc_segmentation load_coco_boxes load_coco20k coco20k_filenames "
        "load_mask_folder load_saliency load_cub find_voc_year read_mask read_label_map polygons_to_mask"
    ).split()
    assert set(names) <= set(ds.__all__) and all(hasattr(ds, n) for n in ds.__all__)


# ---------------------------------------------------------------------------------------
# Downloads
# ---------------------------------------------------------------------------------------


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support (the standard handler has none)."""

    served_ranges: list = []

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        header = self.headers.get("Range")
        if header:
            start = int(header.split("=")[1].split("-")[0])
            self.served_ranges.append(start)
            if start >= len(data):
                self.send_error(416)
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in (("DS/images/x.txt", b"hello" * 1000), ("DS/masks/x.txt", b"world")):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    (served / "tiny.tar.gz").write_bytes(buffer.getvalue())

    def handler(*args, **kwargs):
        return _RangeHandler(*args, directory=str(served), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _RangeHandler.served_ranges = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served / "tiny.tar.gz"
    httpd.shutdown()
    httpd.server_close()


def test_download_checksum_resume_and_extract(server, tmp_path):
    base, archive_path = server
    data = archive_path.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    root = tmp_path / "root"
    root.mkdir()
    (root / "tiny.tar.gz.part").write_bytes(data[:100])  # an interrupted earlier run
    archives = (dl.Archive(f"{base}/tiny.tar.gz", md5),)
    paths = dl.download_dataset("tiny", root, archives=archives, progress=False)
    assert _RangeHandler.served_ranges == [100]  # resumed, not restarted
    assert paths[0].read_bytes() == data and not (root / "tiny.tar.gz.part").exists()
    assert (root / "DS" / "images" / "x.txt").read_bytes() == b"hello" * 1000
    dl.download_dataset("tiny", root, archives=archives, progress=False)  # nothing to do
    assert _RangeHandler.served_ranges == [100]
    with pytest.raises(dl.DownloadError, match="MD5"):
        dl.download_file(f"{base}/tiny.tar.gz", tmp_path / "other.tar.gz", md5="0" * 32, progress=False)
    assert not (tmp_path / "other.tar.gz").exists() and not (tmp_path / "other.tar.gz.part").exists()
    with pytest.raises(dl.DownloadError, match="404"):
        dl.download_file(f"{base}/missing.zip", tmp_path / "missing.zip", progress=False)


def test_extraction_refuses_path_traversal(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as archive:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 1
        archive.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(dl.DownloadError, match="outside"):
        dl.extract_archive(evil, tmp_path / "root")
    assert not (tmp_path / "outside.txt").exists()


def test_data_download_command_with_mirror(server, tmp_path, monkeypatch):
    base, archive_path = server
    monkeypatch.setitem(dl.DOWNLOADS, "ecssd", (dl.Archive("https://example.invalid/x/tiny.tar.gz"),))
    root = tmp_path / "data"
    assert main(["data", "download", "ecssd", "--root", str(root), "--mirror", base, "-q"]) == 0
    assert (root / "DS" / "masks" / "x.txt").read_bytes() == b"world"
    assert main(["data", "download", "ecssd", "--root", str(tmp_path / "d2"), "--mirror", base + "/nothing", "-q"]) == 1
