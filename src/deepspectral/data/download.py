"""Downloading the evaluation datasets: official archives, checksums, resume, extraction.

``download_dataset("voc07", root)`` fetches every archive of the dataset into ``root``
(``<file>.part`` while in progress; an interrupted download resumes with an HTTP
``Range`` request), checks its MD5 where the official checksum is known, and extracts it
(tar / tar.gz / zip, refusing members that would land outside ``root``). A marker
``.<file>.done`` records a finished extraction, so running it again does nothing.
``mirror`` replaces the official host by another base URL serving the same file names.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Archive", "DOWNLOADS", "download_file", "extract_archive", "download_dataset", "DownloadError"]

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download or a checksum failed."""


@dataclass(frozen=True)
class Archive:
    """One archive of a dataset.

    Attributes
    ----------
    url : str
        Official address.
    md5 : str or None
        Official MD5 of the file (None where no official checksum is published; the
        SHA-256 of what was downloaded is then printed so a run can be pinned).
    extract : bool
        Unpack into the root after download.
    """

    url: str
    md5: str | None = None
    extract: bool = True

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").split("/")[-1].split("?")[0]


#: Official archives of each dataset (as of 2024).
DOWNLOADS: dict[str, tuple[Archive, ...]] = {
    "voc07": (
        Archive("http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar", "c52e279531787c972589f7e41ab4ae64"),
    ),
    "voc12": (
        Archive("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar", "6cd6e144f989b92b3379bac3b3de84fd"),
    ),
    "coco20k": (
        Archive("http://images.cocodataset.org/zips/train2014.zip"),
        Archive("http://images.cocodataset.org/annotations/annotations_trainval2014.zip"),
    ),
    "ecssd": (
        Archive("https://www.cse.cuhk.edu.hk/leojia/projects/hsaliency/data/ECSSD/images.zip"),
        Archive("https://www.cse.cuhk.edu.hk/leojia/projects/hsaliency/data/ECSSD/ground_truth_mask.zip"),
    ),
    "duts-te": (Archive("http://saliencydetection.net/duts/download/DUTS-TE.zip"),),
    "dut-omron": (
        Archive("http://saliencydetection.net/dut-omron/download/DUT-OMRON-image.zip"),
        Archive("http://saliencydetection.net/dut-omron/download/DUT-OMRON-gt-pixelwise.zip.zip"),
    ),
    "cub": (
        Archive("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz", "97eceeb196236b17998738112f37df78"),
        Archive("https://data.caltech.edu/records/w9d68-gec53/files/segmentations.tgz"),
    ),
}


def _md5(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def download_file(url: str, dest, *, md5: str | None = None, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, resuming a ``dest.part`` left by an interrupted run.

    Parameters
    ----------
    url : str
    dest : path
        Final file; it appears only once complete (and verified, when ``md5`` is given).
    md5 : str, optional
        Expected MD5 hex digest; a mismatch removes the file and raises.
    progress : bool
        Show a progress bar (bytes, rate, ETA).

    Returns
    -------
    pathlib.Path
        ``dest``.

    Raises
    ------
    DownloadError
        Network error or checksum mismatch.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if md5 is None or _md5(dest)[0] == md5:
            return dest
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "deepspectral"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # the part file is already complete
            response = None
        else:
            raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"{url}: {error}") from None
    if response is not None:
        with response:
            resumed = start and response.status == 206
            if not resumed:
                start = 0  # the server ignored the Range request: start over
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            bar = tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=(not progress) or None, file=sys.stderr,
            )  # fmt: skip
            try:
                with open(part, "ab" if resumed else "wb") as handle:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        handle.write(chunk)
                        bar.update(len(chunk))
            except OSError as error:
                raise DownloadError(f"{url}: interrupted ({error}); run again to resume") from None
            finally:
                bar.close()
    got_md5, got_sha = _md5(part)
    if md5 is not None and got_md5 != md5:
        part.unlink()
        raise DownloadError(f"{url}: MD5 {got_md5} does not match the official {md5}; the file was removed, run again")
    os.replace(part, dest)
    if md5 is None and progress:
        print(f"{dest.name}: no official checksum; sha256 {got_sha}", file=sys.stderr)
    return dest


def _safe_target(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if os.path.commonpath([str(root.resolve()), str(target)]) != str(root.resolve()):
        raise DownloadError(f"archive member '{name}' would be written outside '{root}'; refused")
    return target


def extract_archive(path, root) -> Path:
    """Unpack a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` file into ``root`` (members
    that would land outside ``root``, links included, are refused)."""
    path, root = Path(path), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                _safe_target(root, member)
            archive.extractall(root)
        return root
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as archive:
            members = archive.getmembers()
            for member in members:
                _safe_target(root, member.name)
                if member.issym() or member.islnk():
                    _safe_target(root, os.path.join(os.path.dirname(member.name), member.linkname))
            archive.extractall(root, members=members)
        return root
    raise DownloadError(f"{path}: not a tar or zip archive")


def download_dataset(
    name: str,
    root,
    *,
    mirror: str | None = None,
    extract: bool = True,
    progress: bool = True,
    archives: tuple[Archive, ...] | None = None,
) -> list[Path]:
    """Download (and extract) every archive of a dataset into ``root``.

    Parameters
    ----------
    name : str
        One of :data:`DOWNLOADS`.
    root : path
    mirror : str, optional
        Base URL used instead of each archive's official folder (``mirror/<file name>``).
    extract : bool
    progress : bool
    archives : tuple of Archive, optional
        Replace the official list (tests, private mirrors).

    Returns
    -------
    list of pathlib.Path
        The downloaded archives.
    """
    if archives is None:
        if name not in DOWNLOADS:
            raise ValueError(f"name: expected one of {', '.join(DOWNLOADS)}, got {name!r}")
        archives = DOWNLOADS[name]
    root = Path(root)
    done = []
    for archive in archives:
        url = archive.url if mirror is None else mirror.rstrip("/") + "/" + archive.filename
        path = download_file(url, root / archive.filename, md5=archive.md5, progress=progress)
        marker = root / f".{archive.filename}.done"
        if extract and archive.extract and not marker.exists():
            if progress:
                print(f"extracting {path.name} ...", file=sys.stderr)
            extract_archive(path, root)
            marker.write_text("extracted\n")
        done.append(path)
    return done
