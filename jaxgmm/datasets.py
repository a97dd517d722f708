"""Reading data from files: CSV, NumPy ``.npy``/``.npz`` and MNIST's IDX format.

Everything here returns NumPy arrays (pass them to ``jaxgmm.fit`` as they are) and never
downloads anything. Only NumPy and the standard library are used.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import warnings
import zipfile

import numpy as np

__all__ = ["load_data", "load_csv", "load_idx", "load_mnist", "FORMATS"]

FORMATS = ("csv", "npy", "npz", "idx")

_GZIP_MAGIC = b"\x1f\x8b"
# Characters no text table holds (all C0 controls but tab, line feed, form feed, return).
_CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f]")
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK"

# IDX element type codes (third byte of the magic number) and their big-endian dtypes.
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path) -> bytes:
    """The contents of ``path``, decompressed when it is gzip data (detected by content)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a data file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path!r} is a damaged gzip file: {error}") from None
    return raw


def load_idx(path, *, dtype=np.float32) -> np.ndarray:
    """Read an IDX file (the format of the original MNIST files), optionally gzip-compressed.

    The file starts with a big-endian header: a magic number ``0x0000TTNN`` (``TT`` the
    element type, ``NN`` the number of dimensions; MNIST images are ``0x00000803``, labels
    ``0x00000801``), then ``NN`` unsigned 32-bit sizes, then the elements. Whether the file is
    gzip-compressed is read from its first bytes, not from its name. Nothing is downloaded.

    Parameters
    ----------
    path : str or os.PathLike
        An IDX file such as ``train-images-idx3-ubyte`` or ``t10k-labels-idx1-ubyte.gz``.
    dtype : numpy dtype, default float32
        Float dtype of the returned samples when the file has two or more dimensions.

    Returns
    -------
    numpy.ndarray
        A file with one dimension (labels) gives shape ``(N,)``, ``int64`` for integer
        elements. A file with more dimensions (images, ``(N, 28, 28)`` for MNIST) gives the
        samples flattened to shape ``(N, prod(rest))`` (``(N, 784)`` for MNIST) in ``dtype``;
        unsigned bytes are scaled from ``0..255`` to ``[0, 1]``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The header is not an IDX header, or the file is shorter or longer than the header says.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from jaxgmm.datasets import load_idx
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([7, 0, 9]))
    >>> load_idx(path)
    array([7, 0, 9])
    """
    raw = _read_bytes(path)
    name = os.fspath(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{name!r} is not an IDX file (its magic number does not start 0x0000)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_TYPES:
        raise ValueError(f"{name!r}: unknown IDX element type 0x{type_code:02X}")
    if ndim == 0:
        raise ValueError(f"{name!r}: IDX header declares zero dimensions")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{name!r} is truncated: the IDX header needs {header_size} bytes")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    element = _IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * element.itemsize
    actual = len(raw) - header_size
    if actual != expected:
        raise ValueError(
            f"{name!r}: the IDX header declares shape {shape} ({expected} bytes of data) "
            f"but the file holds {actual} bytes of data"
        )
    data = np.frombuffer(raw, dtype=element, offset=header_size).reshape(shape)
    if ndim == 1:
        if np.issubdtype(element, np.integer):
            return data.astype(np.int64)
        return data.astype(np.dtype(dtype))
    flat = data.reshape(shape[0], -1)
    if type_code == 0x08:
        return flat.astype(np.dtype(dtype)) / np.dtype(dtype).type(255)
    return flat.astype(np.dtype(dtype))


def load_mnist(directory, split: str = "train", *, dtype=np.float32):
    """Read MNIST images and labels from the original IDX files in ``directory``.

    Looks for ``{prefix}-images-idx3-ubyte`` and ``{prefix}-labels-idx1-ubyte`` (also with
    ``.`` instead of the last ``-``, and with ``.gz``), where ``prefix`` is ``train`` or
    ``t10k``. The files must already be there: nothing is downloaded.

    Parameters
    ----------
    directory : str or os.PathLike
    split : {"train", "test"}
    dtype : numpy dtype, default float32

    Returns
    -------
    images : numpy.ndarray, shape (N, 784)
        Pixel intensities in ``[0, 1]``.
    labels : numpy.ndarray, shape (N,), int64
    """
    prefixes = {"train": "train", "test": "t10k"}
    if split not in prefixes:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    prefix = prefixes[split]

    def find(kind: str, ndim: int) -> str:
        for sep in ("-", "."):
            for suffix in ("", ".gz"):
                candidate = os.path.join(
                    os.fspath(directory), f"{prefix}-{kind}{sep}idx{ndim}-ubyte{suffix}"
                )
                if os.path.exists(candidate):
                    return candidate
        raise FileNotFoundError(
            f"no MNIST {split} {kind} file ({prefix}-{kind}-idx{ndim}-ubyte[.gz]) in "
            f"{os.fspath(directory)!r}"
        )

    images = load_idx(find("images", 3), dtype=dtype)
    labels = load_idx(find("labels", 1))
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def _sniff_delimiter(line: str):
    for delimiter in (",", ";", "\t"):
        if delimiter in line:
            return delimiter
    return None  # any whitespace


def _unquote(field: str) -> str:
    field = field.strip()
    return field[1:-1].strip() if _is_quoted(field) else field


def _split(line: str, delimiter):
    """The fields of ``line``, without surrounding spaces or double quotes (as spreadsheets
    and R's ``write.csv`` quote them)."""
    return [_unquote(field) for field in line.split(delimiter)]


def _is_quoted(field: str) -> bool:
    field = field.strip()
    return len(field) >= 2 and field[0] == field[-1] == '"'


def _is_header(first: str, second: str | None, delimiter) -> bool:
    """Whether the line ``first`` names the columns: some field is not a number, or is a
    number in quotes where the next line, ``second``, has none (``"2019","2020"`` over
    ``1,2``)."""
    fields = first.split(delimiter)
    if not all(_is_number(_unquote(field)) for field in fields):
        return True
    if second is None:
        return False
    below = second.split(delimiter)
    return len(below) == len(fields) and any(
        _is_quoted(a) and not _is_quoted(b) for a, b in zip(fields, below)
    )


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def load_csv(path, *, dtype=np.float64) -> np.ndarray:
    """Read a numeric table from a text file, with or without a header line.

    The delimiter (comma, semicolon, tab or whitespace) is read from the first data line; the
    first line is a header when any of its fields is not a number, or is a number in double
    quotes over an unquoted one (``"2019","2020"`` over ``1,2``). Blank lines and lines
    starting with ``#`` are skipped; fields may be enclosed in double quotes (not around a
    delimiter). The text is UTF-8, or else Latin-1.

    Parameters
    ----------
    path : str or os.PathLike
    dtype : numpy dtype, default float64

    Returns
    -------
    numpy.ndarray, shape (N, D)
        One row per line (a single column gives ``D = 1``).

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        A field is not a number, rows have different lengths, or there are no data rows.
        The message gives the line and column.

    Warns
    -----
    UserWarning
        The first column has an empty header and counts the rows: a row index (as pandas'
        ``to_csv()`` and R's ``write.csv()`` write by default), which is read as a feature.
    """
    raw = _read_bytes(path)
    name = os.fspath(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:  # e.g. a Latin-1 header from an older spreadsheet
        text = raw.decode("latin-1")
    if _CONTROL_CHARACTERS.search(text):
        raise ValueError(f"{name!r} is not a text (CSV) file")
    lines = [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise ValueError(f"{name!r} has no data rows")
    delimiter = _sniff_delimiter(lines[0][1])
    header = _split(lines[0][1], delimiter)
    if _is_header(lines[0][1], lines[1][1] if len(lines) > 1 else None, delimiter):
        lines = lines[1:]
        if not lines:
            raise ValueError(f"{name!r} has a header but no data rows")
    else:
        header = None
    if '"' in text:  # the fields without their quotes, for NumPy's reader
        separator = delimiter or " "
        body = "\n".join(separator.join(_split(line, delimiter)) for _, line in lines)
    else:
        body = "\n".join(line for _, line in lines)
    try:
        data = np.loadtxt(io.StringIO(body), delimiter=delimiter, dtype=dtype, ndmin=2)
    except ValueError:
        _raise_first_bad_field(name, lines, delimiter)
        raise
    if header is not None and header[0] == "" and _is_row_index(data[:, 0]):
        warnings.warn(
            f"the first column of {name!r} has no name and counts the rows (0, 1, 2, ... "
            "or 1, 2, 3, ...): it looks like a row index written by pandas' to_csv() or R's "
            "write.csv(), and is read as a feature. Write the file without it (index=False, "
            "row.names = FALSE) or drop that column.",
            UserWarning,
            stacklevel=3,
        )
    return data


def _is_row_index(column: np.ndarray) -> bool:
    """Whether ``column`` is 0, 1, 2, ... or 1, 2, 3, ... (at least two rows)."""
    if column.shape[0] < 2:
        return False
    steps = np.arange(column.shape[0])
    return bool(np.array_equal(column, steps) or np.array_equal(column, steps + 1))


def _raise_first_bad_field(name, lines, delimiter) -> None:
    width = None
    for number, line in lines:
        fields = _split(line, delimiter)
        if width is None:
            width = len(fields)
        elif len(fields) != width:
            raise ValueError(
                f"{name!r} line {number}: {len(fields)} fields where earlier rows have {width}"
            )
        for column, field in enumerate(fields, start=1):
            if not _is_number(field):
                raise ValueError(
                    f"{name!r} line {number}, column {column}: {field!r} is not a number"
                )


def _load_npz(path, key):
    name = os.fspath(path)
    if not _head(name).startswith(_ZIP_MAGIC):
        raise ValueError(f"{name!r} is not an .npz file (it does not start as a zip archive)")
    with open(name, "rb") as handle:
        compressed = handle.read(2) == _GZIP_MAGIC
    try:
        source = io.BytesIO(_read_bytes(name)) if compressed else name
        with np.load(source, allow_pickle=False) as archive:
            names = list(archive.files)
            if key is None:
                if len(names) == 1:
                    key = names[0]
                elif "X" in names:
                    key = "X"
                else:
                    raise ValueError(
                        f"{name!r} holds several arrays ({', '.join(names)}); name one "
                        f"(e.g. {name}:{names[0]})"
                    )
            if key not in names:
                raise ValueError(f"{name!r} has no array {key!r} (it has {', '.join(names)})")
            return archive[key]
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"{name!r} is not a readable .npz file: {error}") from None


def _head(path: str, size: int = 8) -> bytes:
    """The first ``size`` bytes of ``path`` (of its contents, when gzip-compressed)."""
    if not os.path.isfile(path):
        return b""
    with open(path, "rb") as handle:
        head = handle.read(size)
    if head[:2] == _GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as handle:
                head = handle.read(size)
        except (OSError, EOFError):
            return b""
    return head


def _guess_format(path: str) -> str:
    lower = os.path.basename(path).lower()
    stem = lower[:-3] if lower.endswith(".gz") else lower
    if stem.endswith(".npy"):
        return "npy"
    if stem.endswith(".npz"):
        return "npz"
    if stem.endswith((".csv", ".tsv", ".txt", ".dat")):
        return "csv"
    if re.search(r"idx\d", stem) or stem.endswith((".idx", "-ubyte")):
        return "idx"
    head = _head(path)
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if len(head) >= 4 and head[0] == 0 and head[1] == 0 and head[2] in _IDX_TYPES:
        return "idx"
    return "csv"


def load_data(
    path, *, format: str | None = None, key: str | None = None, dtype=np.float64
) -> np.ndarray:
    """Read samples from a CSV, ``.npy``, ``.npz`` or IDX file as an ``(N, D)`` float array.

    Parameters
    ----------
    path : str or os.PathLike
        The file. For an ``.npz`` archive holding several arrays, ``"file.npz:name"`` picks
        one (as does ``key``); otherwise the single array, or the one called ``X``, is used.
    format : {"csv", "npy", "npz", "idx"}, optional
        Guessed from the name, then from the first bytes, when omitted.
    key : str, optional
        Array name inside an ``.npz`` archive.
    dtype : numpy dtype, default float64

    Returns
    -------
    numpy.ndarray, shape (N, D)
        A 1-D array becomes one feature (``D = 1``); images (IDX, or a 3-D ``.npy``) are
        flattened to one row per image.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        The file cannot be read in ``format``, or does not hold numbers.
    """
    path = os.fspath(path)
    if key is None and ":" in os.path.basename(path) and not os.path.exists(path):
        path, key = path.rsplit(":", 1)
    if format is None:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {path!r}")
        format = _guess_format(path)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}; got {format!r}")
    if format == "csv":
        return load_csv(path, dtype=dtype)
    if format == "idx":
        data = load_idx(path, dtype=dtype)
    elif format == "npz":
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file: {path!r}")
        data = _load_npz(path, key)
    else:
        raw = _read_bytes(path)
        if not raw.startswith(_NPY_MAGIC):
            raise ValueError(f"{path!r} is not a .npy file (it has no .npy header)")
        try:
            data = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise ValueError(f"{path!r} is not a readable .npy file: {error}") from None
        if not isinstance(data, np.ndarray):
            raise ValueError(f"{path!r} is not a .npy file (it holds several arrays)")
    if data.dtype == object or not (
        np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.bool_)
    ):
        raise ValueError(f"{path!r} does not hold numbers (dtype {data.dtype})")
    if np.issubdtype(data.dtype, np.complexfloating):
        raise ValueError(f"{path!r} holds complex numbers; real data are needed")
    if data.ndim == 0:
        raise ValueError(f"{path!r} holds a single number, not samples")
    if data.ndim == 1:
        data = data[:, None]
    elif data.ndim > 2:
        data = data.reshape(data.shape[0], -1)
    return np.asarray(data, dtype=dtype)
