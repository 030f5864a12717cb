"""Small real subsets of ../shared/data, extracted for a test into its tmp dir.

    from realdata import cifar_subset, imdb_subset
    d = cifar_subset(tmp_path, per_class_train=200, per_class_test=50)
    # d/train/<class>/NNNN.jpg, d/test/<class>/NNNN.jpg: --config.dataset=image_folder
    a = imdb_subset(tmp_path, n_train=100, n_test=100)
    # a = .../aclImdb with {train,test}/{neg,pos}/<id>_<rating>.txt:
    #     --config.dataset=imdb --config.imdb_source=folder (or text_folder)

Each reads only the members it needs, in one streaming pass over the tarball
(about 2 s for either), and skips the test with the reason when the tarball
is absent. The subset is always the same files: the first N by number in each
folder (CIFAR's `NNNN.jpg`, IMDB's `<id>_<rating>.txt` with id < N), whatever
order the tarball stores them in.
"""

from __future__ import annotations

import os
import pathlib
import re
import tarfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("JAXDL_SHARED_DATA",
                                          REPO.parent / "shared" / "data"))
CIFAR_TARBALL = SHARED_DATA / "cifar10_jpeg" / "cifar10_jpeg.tar.gz"
IMDB_TARBALL = SHARED_DATA / "imdb" / "aclImdb_folders.tar.gz"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                   "horse", "ship", "truck")


def require(tarball: pathlib.Path) -> pathlib.Path:
  """The tarball, or skip: tests on real data need ../shared/data."""
  if not tarball.is_file():
    pytest.skip(f"real data not found: {tarball} (../shared/data is absent; "
                "set JAXDL_SHARED_DATA to the folder that holds it)")
  return tarball


def _extract(tarball: pathlib.Path, dest: pathlib.Path, pattern: str,
             keep) -> list[str]:
  """Writes the members whose name matches `pattern` and `keep(match)` to dest."""
  rx = re.compile(pattern)
  written = []
  with tarfile.open(require(tarball), "r|gz") as tar:
    for member in tar:
      m = rx.match(member.name)
      if not (m and member.isfile() and keep(m)):
        continue
      out = dest / member.name
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_bytes(tar.extractfile(member).read())
      os.utime(out, (member.mtime, member.mtime))
      written.append(member.name)
  return written


def cifar_subset(tmp_dir, per_class_train: int, per_class_test: int) -> pathlib.Path:
  """`tmp_dir/cifar10` with train/<class>/ (per_class_train images of each of
  the 10 classes) and test/<class>/ (per_class_test), real CIFAR-10 JPEGs."""
  dest = pathlib.Path(tmp_dir) / "cifar10"
  limit = {"train": per_class_train, "test": per_class_test}
  written = _extract(CIFAR_TARBALL, dest, r"^(train|test)/([^/]+)/(\d+)\.jpg$",
                     lambda m: int(m.group(3)) < limit[m.group(1)])
  want = 10 * (per_class_train + per_class_test)
  assert len(written) == want, f"{CIFAR_TARBALL}: {len(written)} of {want} images found"
  return dest


def imdb_subset(tmp_dir, n_train: int, n_test: int) -> pathlib.Path:
  """`tmp_dir/aclImdb` with {train,test}/{neg,pos}/: n_train (n_test) real
  reviews per label, so 2 * n_train train reviews in all, half positive."""
  dest = pathlib.Path(tmp_dir)
  limit = {"train": n_train, "test": n_test}
  written = _extract(IMDB_TARBALL, dest, r"^aclImdb/(train|test)/(neg|pos)/(\d+)_\d+\.txt$",
                     lambda m: int(m.group(3)) < limit[m.group(1)])
  want = 2 * (n_train + n_test)
  assert len(written) == want, f"{IMDB_TARBALL}: {len(written)} of {want} reviews found"
  return dest / "aclImdb"
