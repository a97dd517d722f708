"""The file loaders of jaxgmm.datasets: IDX (MNIST's format, written here byte by byte),
CSV with and without a header, .npy and .npz."""

import gzip
import struct
import warnings

import numpy as np
import pytest

from jaxgmm import datasets


def write_idx(path, array, type_code=0x08, compress=False):
    """An IDX file per the format's definition: magic 0x0000TTNN, big-endian uint32 sizes,
    big-endian elements."""
    array = np.asarray(array)
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        struct.pack(">I", size) for size in array.shape
    )
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    payload = header + array.astype(dtype[type_code]).tobytes()
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(payload)
    return path


@pytest.fixture(scope="module")
def mnist_like():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_and_labels(tmp_path, mnist_like, compress):
    images, labels = mnist_like
    suffix = ".gz" if compress else ""
    image_file = write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress=compress)
    label_file = write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, compress=compress)
    with open(image_file, "rb") as handle:
        head = handle.read(4)
    if not compress:
        assert head == b"\x00\x00\x08\x03"  # the magic number 0x00000803 of MNIST images

    X = datasets.load_idx(image_file)
    assert X.shape == (5, 784) and X.dtype == np.float32
    assert X.min() >= 0.0 and X.max() <= 1.0
    np.testing.assert_allclose(X * 255, images.reshape(5, 784), atol=1e-4)
    y = datasets.load_idx(label_file)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, labels)

    X2, y2 = datasets.load_mnist(tmp_path, "train", dtype=np.float64)
    assert X2.dtype == np.float64
    np.testing.assert_allclose(X2, X, atol=1e-6)
    np.testing.assert_array_equal(y2, y)


def test_idx_other_element_types(tmp_path):
    values = np.arange(12, dtype=np.float64).reshape(3, 2, 2) - 5.5
    got = datasets.load_idx(write_idx(tmp_path / "a.idx", values, type_code=0x0E), dtype=np.float64)
    np.testing.assert_array_equal(got, values.reshape(3, 4))
    ints = np.array([-3, 70000, 5])
    np.testing.assert_array_equal(
        datasets.load_idx(write_idx(tmp_path / "b.idx", ints, type_code=0x0C)), ints
    )


def test_idx_errors(tmp_path, mnist_like):
    images, _ = mnist_like
    good = write_idx(tmp_path / "x-idx3-ubyte", images).read_bytes()
    (tmp_path / "short").write_bytes(good[:-10])
    with pytest.raises(ValueError, match="holds 3910 bytes"):
        datasets.load_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.load_idx(tmp_path / "magic")
    (tmp_path / "type").write_bytes(b"\x00\x00\x07" + good[3:])
    with pytest.raises(ValueError, match="element type 0x07"):
        datasets.load_idx(tmp_path / "type")
    with pytest.raises(FileNotFoundError):
        datasets.load_idx(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="t10k-images"):
        datasets.load_mnist(tmp_path, "test")


@pytest.mark.parametrize(
    "text",
    [
        "1,2\n3,4\n5,6\n",
        "a,b\n1,2\n3,4\n5,6\n",
        "# comment\nx;y\n1;2\n\n3;4\n5;6\n",
        "1 2\n3 4\n5\t6\n",
        '"x","y"\n"1",2\n3,"4"\n"5","6"\n',
        '"1","2"\n"3","4"\n"5","6"\n',
        '"a","b"\n1, "2"\n3,4\n5,6\n',
    ],
    ids=["comma", "header", "semicolon-comment", "whitespace", "quoted", "all-quoted", "spaced"],
)
def test_csv(tmp_path, text):
    path = tmp_path / "data.csv"
    path.write_text(text)
    np.testing.assert_array_equal(datasets.load_data(path), [[1, 2], [3, 4], [5, 6]])


def test_csv_errors(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(ValueError, match=r"line 3, column 2: 'oops' is not a number"):
        datasets.load_data(path)
    path.write_text("1,2\n3\n")
    with pytest.raises(ValueError, match="line 2: 1 fields"):
        datasets.load_data(path)
    path.write_text("a,b\n")
    with pytest.raises(ValueError, match="no data rows"):
        datasets.load_data(path)
    for binary in (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", b"a,b\n1,2\n\x0e\x0f\xff,3\n"):
        path.write_bytes(binary)
        with pytest.raises(ValueError, match="not a text"):
            datasets.load_data(path)


def test_quoted_numbers_over_unquoted_ones_are_a_header(tmp_path):
    path = tmp_path / "years.csv"
    path.write_text('"2019","2020"\n1,2\n3,4\n')
    np.testing.assert_array_equal(datasets.load_data(path), [[1, 2], [3, 4]])


def test_csv_with_a_latin_1_header(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("café,b\n1,2\n3,4\n".encode("latin-1"))
    np.testing.assert_array_equal(datasets.load_data(path), [[1, 2], [3, 4]])


def test_a_row_index_column_is_flagged(tmp_path):
    path = tmp_path / "pandas.csv"
    path.write_text(",x,y\n0,1.5,2\n1,3,4\n2,5,6\n")  # pandas' DataFrame.to_csv()
    with pytest.warns(UserWarning, match="row index"):
        data = datasets.load_data(path)
    np.testing.assert_array_equal(data[:, 0], [0, 1, 2])  # still read, as documented
    path.write_text('"","x"\n"1",1.5\n"2",3\n')  # R's write.csv()
    with pytest.warns(UserWarning, match="row index"):
        datasets.load_data(path)
    for text in ("id,x\n0,1.5\n1,3\n", ",x\n0,1.5\n2,3\n"):  # named, or not counting
        path.write_text(text)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            datasets.load_data(path)


def test_a_format_that_does_not_match_the_file_says_so(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match="not a .npy file"):
        datasets.load_data(path, format="npy")
    with pytest.raises(ValueError, match="not an .npz file"):
        datasets.load_data(path, format="npz")


def test_gzip_compressed_npy_and_npz(tmp_path):
    X = np.arange(6.0).reshape(3, 2)
    np.save(tmp_path / "x.npy", X)
    np.savez(tmp_path / "x.npz", X=X)
    for name in ("x.npy", "x.npz"):
        packed = tmp_path / f"{name}.gz"
        packed.write_bytes(gzip.compress((tmp_path / name).read_bytes()))
        np.testing.assert_array_equal(datasets.load_data(packed), X)


def test_npy_npz_and_format_detection(tmp_path):
    X = np.arange(6.0).reshape(3, 2)
    np.save(tmp_path / "x.npy", X)
    np.testing.assert_array_equal(datasets.load_data(tmp_path / "x.npy"), X)
    np.savez(tmp_path / "one.npz", data=X)
    np.testing.assert_array_equal(datasets.load_data(tmp_path / "one.npz"), X)
    np.savez(tmp_path / "two.npz", a=X, b=X[:, :1])
    np.testing.assert_array_equal(datasets.load_data(f"{tmp_path / 'two.npz'}:b"), X[:, :1])
    with pytest.raises(ValueError, match="several arrays"):
        datasets.load_data(tmp_path / "two.npz")
    # No telling extension: the format comes from the first bytes.
    (tmp_path / "noext").write_bytes((tmp_path / "x.npy").read_bytes())
    np.testing.assert_array_equal(datasets.load_data(tmp_path / "noext"), X)
    # A 1-D array is one feature; a stack of images is flattened.
    np.save(tmp_path / "v.npy", np.arange(4))
    assert datasets.load_data(tmp_path / "v.npy").shape == (4, 1)
    np.save(tmp_path / "s.npy", np.zeros((2, 3, 3)))
    assert datasets.load_data(tmp_path / "s.npy").shape == (2, 9)
    with pytest.raises(ValueError, match="format must be one of"):
        datasets.load_data(tmp_path / "x.npy", format="parquet")
