"""The ``jaxgmm`` command line, mostly in process (``jaxgmm.cli.main``) so compiled functions
are shared; a few runs in a subprocess check the console behaviour (one-line errors, the
persistent compilation cache)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxgmm
from jaxgmm import cli

ENV = {**os.environ, "JAXGMM_CACHE_DIR": ""}


def three_blobs(n_per=30, seed=0):
    """Three Gaussian clusters in 2-D, shape (3 * n_per, 2)."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0], [5.0, 1.0], [1.0, 6.0]])
    return np.concatenate(
        [c + s * rng.normal(size=(n_per, 2)) for c, s in zip(centers, [0.5, 1.0, 1.5])]
    )


def write_idx_bytes(path, array):
    """An IDX file of unsigned bytes: magic 0x0000 08 NN, big-endian uint32 sizes, the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    sizes = b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(bytes([0, 0, 0x08, array.ndim]) + sizes + array.tobytes())
    return path


@pytest.fixture(autouse=True)
def no_compilation_cache(monkeypatch):
    """In-process calls must not switch the test process to a persistent cache."""
    monkeypatch.setenv("JAXGMM_CACHE_DIR", "")


@pytest.fixture(scope="module")
def blobs_file(tmp_path_factory):
    """(90, 2) three-cluster data as CSV with a header."""
    X = three_blobs(n_per=30)
    path = tmp_path_factory.mktemp("data") / "blobs.csv"
    np.savetxt(path, X, delimiter=",", header="x,y", comments="")
    return X, path


def run(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def write(X, path, kind):
    if kind == "csv-header":
        np.savetxt(path, X, delimiter=",", header="first,second", comments="")
    elif kind == "csv":
        np.savetxt(path, X, delimiter=",")
    elif kind == "npy":
        np.save(path, X)
    elif kind == "npz":
        np.savez(path, X=X)
    return path


@pytest.mark.parametrize("kind", ["csv-header", "csv", "npy", "npz"])
def test_fit_predict_round_trip(tmp_path, capsys, blobs_file, kind):
    X, _ = blobs_file
    suffix = {"csv-header": ".csv", "csv": ".csv", "npy": ".npy", "npz": ".npz"}[kind]
    data = write(X, tmp_path / f"data{suffix}", kind)
    model = tmp_path / "model.npz"
    status, out, err = run(capsys, "fit", data, "-k", 3, "-o", model, "--quiet")
    assert status == 0, err
    for word in ("weight", "mean", "log-likelihood", "BIC", "iterations", "converged"):
        assert word in out
    params = jaxgmm.load(model)
    assert params.means.shape == (3, 2)
    # The same fit as the library's with the default options and key(seed = 0).
    direct = jaxgmm.fit(jax.random.key(0), X, 3).params
    np.testing.assert_allclose(params.means, direct.means, rtol=1e-6, atol=1e-9)
    # The printed log-likelihood is that of the saved model on the data.
    printed = float(out.split("log-likelihood")[1].split()[0])
    np.testing.assert_allclose(printed, float(jaxgmm.log_likelihood(params, X)), rtol=1e-5)

    labels_file = tmp_path / "labels.csv"
    status, _, err = run(capsys, "predict", model, data, "-o", labels_file)
    assert status == 0, err
    labels = np.loadtxt(labels_file, skiprows=1, dtype=int)
    np.testing.assert_array_equal(labels, np.asarray(jaxgmm.predict(params, X)))

    status, out, err = run(capsys, "predict", model, data, "--proba")  # to stdout
    assert status == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "p0,p1,p2"
    proba = np.loadtxt(lines[1:], delimiter=",")
    assert proba.shape == (90, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_fit_idx_format(tmp_path, capsys, blobs_file):
    X, _ = blobs_file
    scaled = np.round(255 * (X - X.min(0)) / (X.max(0) - X.min(0))).astype(np.uint8)
    path = write_idx_bytes(tmp_path / "blobs.bin", scaled)  # (90, 2) unsigned bytes
    status, out, err = run(
        capsys, "fit", path, "--format", "idx", "-k", 3, "-o", tmp_path / "m.npz"
    )
    assert status == 0, err
    assert "N = 90 samples, D = 2 features" in out
    means = np.asarray(jaxgmm.load(tmp_path / "m.npz").means)
    assert means.min() >= 0.0 and means.max() <= 1.0  # bytes were scaled to [0, 1]


def test_fit_options_and_float32(tmp_path, capsys, blobs_file):
    _, data = blobs_file
    model = tmp_path / "m.npz"
    status, out, err = run(
        capsys,
        "fit",
        data,
        "-k",
        2,
        "--covariance-type",
        "diag",
        "--n-init",
        2,
        "--n-candidates",
        6,
        "--dtype",
        "float32",
        "--seed",
        3,
        "-o",
        model,
    )
    assert status == 0, err
    assert "restarts" in out and "float32" in out
    assert "screened starts  6, the best 2 run" in out
    params = jaxgmm.load(model)
    assert params.covariance_type == "diag" and params.means.dtype == np.float32


def one_line_error(status, err, *needles):
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_user_errors(tmp_path, capsys, blobs_file):
    X, data = blobs_file
    one_line_error(*run(capsys, "fit", tmp_path / "missing.csv", "-k", 2)[::2], "no such file")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,oops\n")
    one_line_error(*run(capsys, "fit", bad, "-k", 2)[::2], "line 3, column 2", "not a number")
    one_line_error(*run(capsys, "fit", data, "-k", 91)[::2], "-k 91", "90")
    one_line_error(
        *run(capsys, "fit", data, "-k", 2, "-o", tmp_path / "no" / "m.npz")[::2], "does not exist"
    )
    one_line_error(*run(capsys, "predict", bad, data)[::2], "not a jaxgmm model")
    model = tmp_path / "m.npz"
    jaxgmm.save(model, jaxgmm.GMM(np.ones(1), np.zeros((1, 3)), np.ones(1), "spherical"))
    one_line_error(*run(capsys, "predict", model, data)[::2], "D = 2", "D = 3")
    invalid = tmp_path / "invalid.npz"  # a hand-made file: save refuses such parameters
    np.savez(invalid, format=np.array("jaxgmm.GMM"), version=np.array(1),
             covariance_type=np.array("spherical"), weights=np.ones(1), means=np.zeros((1, 2)),
             covariances=-np.ones(1))  # fmt: skip
    one_line_error(*run(capsys, "predict", invalid, data)[::2], "covariances must be positive")
    one_line_error(*run(capsys, "segment", bad, "-k", 2)[::2], "not a readable image")
    one_line_error(*run(capsys, "segment", tmp_path / "none.png", "-k", 2)[::2], "no such file")


def test_usage_errors_are_one_line(capsys):
    for argv, needle in (
        (["fit", "data.csv"], "jaxgmm fit"),
        (["fit", "data.csv", "-k", "0"], "-k"),
        (["fit", "data.csv", "-k", "2", "--seed", str(2**64)], "--seed"),
        (["fit", "data.csv", "-k", "2", "--bogus"], "'jaxgmm fit --help'"),
        (["segment", "a.png"], "jaxgmm segment"),
        (["segment", "a.png", "--k-range", "3..2"], "--k-range"),
        (["bench", "--shape", "2000,2"], "--shape"),
        (["bench", "--shape", "10,2,50"], "K <= N"),
        (["bench", "--repeats", "0"], "--repeats"),
        (["adapt", "m.npz", "d.csv", "--relevance", "0"], "--relevance"),
        (["adapt", "m.npz", "d.csv", "--adapt", "precisions"], "--adapt"),
        (["predict", "m.npz", "d.csv", "--proba", "--log-prob"], "not allowed"),
        (["nonsense"], "jaxgmm"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        one_line_error(2, capsys.readouterr().err, "error:", "--help", needle)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"jaxgmm {jaxgmm.__version__}"


def test_outputs_are_checked_before_any_work(tmp_path, capsys, blobs_file):
    """An output that is one of the inputs, in a missing folder, or of the wrong kind is
    refused before anything is fitted (these runs would take seconds otherwise)."""
    X, data = blobs_file
    model = tmp_path / "m.npz"
    jaxgmm.save(model, jaxgmm.GMM(np.ones(1), np.zeros((1, 2)), np.ones(1), "spherical"))
    image = tmp_path / "image.png"
    from PIL import Image

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image)
    missing = tmp_path / "no" / "out"
    for argv, needles in (
        (["fit", data, "-k", 2, "-o", data], ["is also an input"]),
        (["predict", model, data, "-o", model], ["is also an input"]),
        (["predict", model, data, "-o", data], ["is also an input"]),
        (["segment", image, "-k", 2, "-o", image], ["is also an input"]),
        (["segment", image, "-k", 2, "-o", tmp_path / "noext"], [".png or .jpg"]),
        (["segment", image, "-k", 2, "--figure", tmp_path / "f.jpg"], ["a .png name"]),
        (["segment", image, "-k", 2, "--no-figure", "--figure", image.with_suffix(".f.png")],
         ["contradict"]),
        (["select", data, "--k-range", "1..2", "-o", data], ["is also an input"]),
        (["select", data, "--k-range", "1..2", "-o", f"{missing}.npz"], ["does not exist"]),
        (["select", data, "--k-range", "1..2", "--figure", tmp_path / "f.txt"], ["a .png name"]),
        (["select", data, "--k-range", "1..200"], ["--k-range such as 1..10"]),
        (["bench", "--json", f"{missing}.json"], ["does not exist"]),
        (["bench", "--figure", tmp_path / "f.png"], ["add --suite"]),
    ):  # fmt: skip
        one_line_error(*run(capsys, *argv)[::2], *needles)
    assert X.shape == (90, 2) and jaxgmm.load(model).n_components == 1  # inputs untouched


def test_adapt_saves_what_map_adapt_gives(tmp_path, capsys, blobs_file, monkeypatch):
    X, data = blobs_file
    ubm = tmp_path / "ubm.npz"
    assert run(capsys, "fit", data, "-k", 3, "-o", ubm, "--quiet")[0] == 0
    speaker = tmp_path / "speaker.csv"
    np.savetxt(speaker, X[:20] + 0.3, delimiter=",")
    monkeypatch.chdir(tmp_path)  # the default output name lands here
    status, out, err = run(
        capsys, "adapt", ubm, speaker, "--relevance", 8, "--adapt", "weights", "--adapt", "means"
    )
    assert status == 0, err
    saved = jaxgmm.load(tmp_path / "speaker.adapted.gmm.npz")
    expected = jaxgmm.map_adapt(
        jaxgmm.load(ubm), np.loadtxt(speaker, delimiter=","), relevance=8.0,
        adapt=("weights", "means"),
    )  # fmt: skip
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert "adapted the weights, means of" in out and "relevance 8" in out
    lines = [line for line in out.splitlines() if line.startswith("mean log-likelihood")]
    before, after = (float(v.split()[0]) for v in lines[0].split(": ")[1].split(", "))
    np.testing.assert_allclose(after, jaxgmm.log_likelihood(saved, X[:20] + 0.3) / 20, rtol=1e-5)
    assert after > before  # adapted to these samples
    # predict --log-prob writes the log-density of every row
    status, out, err = run(capsys, "predict", ubm, speaker, "--log-prob")
    assert status == 0, err
    values = np.loadtxt(out.splitlines()[1:])
    np.testing.assert_allclose(values, jaxgmm.log_prob(jaxgmm.load(ubm), X[:20] + 0.3), rtol=1e-8)
    one_line_error(*run(capsys, "adapt", ubm, speaker, "-o", speaker)[::2], "is also an input")


def test_default_output_names():
    assert cli._default_output("data/blobs.csv", ".gmm.npz") == "blobs.gmm.npz"
    assert cli._default_output("two.npz:b", ".gmm.npz") == "two-b.gmm.npz"
    assert cli._default_output("two.npz:b.c", ".gmm.npz") == "two-b.c.gmm.npz"
    assert cli._default_output("photo.JPG", "-segmented.png") == "photo-segmented.png"


def test_float32_rounding_and_collapse_are_reported_for_the_command_line(tmp_path, capsys):
    # Two clusters a million of their standard deviations apart, fitted in float32.
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(40, 1)) * 1e-3, rng.normal(size=(40, 1)) * 1e-3 + 1e6])
    data = tmp_path / "far.npy"
    np.save(data, X)
    status, out, err = run(
        capsys, "fit", data, "-k", 2, "--dtype", "float32", "-o", tmp_path / "m.npz"
    )
    assert status == 0, err
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and warning[0].startswith("jaxgmm fit: warning: float32 rounding")
    assert "--dtype float64" in warning[0] and "jax.config" not in err
    assert "D = 1 feature;" in out
    assert "note: some component has collapsed" in out


def test_subprocess_error_is_one_line(tmp_path):
    """The console entry point: a user mistake prints one line, no traceback, status 2."""
    done = subprocess.run(
        [sys.executable, "-m", "jaxgmm", "fit", str(tmp_path / "missing.csv"), "-k", "2"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"jaxgmm fit: error: no such file: {tmp_path / 'missing.csv'}"
    ]


def test_persistent_compilation_cache(tmp_path, blobs_file):
    """A fit in a fresh process writes its compiled programs to $JAXGMM_CACHE_DIR, where a
    second invocation finds them."""
    _, data = blobs_file
    cache = tmp_path / "cache"
    command = [
        sys.executable,
        "-m",
        "jaxgmm",
        "fit",
        str(data),
        "-k",
        "2",
        "-o",
        str(tmp_path / "m.npz"),
        "--max-iter",
        "7",
    ]
    env = {**os.environ, "JAXGMM_CACHE_DIR": str(cache)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert any(name.startswith("jit__fit_core") for name in os.listdir(cache))


@pytest.mark.parametrize(
    "command", ["fit", "predict", "adapt", "segment", "select", "demo", "bench"]
)
def test_help(capsys, command):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: jaxgmm {command}" in capsys.readouterr().out


def test_cache_folder_from_environment(tmp_path, monkeypatch):
    from jaxgmm._src import runtime

    monkeypatch.setenv("JAXGMM_CACHE_DIR", str(tmp_path / "cache"))
    assert runtime.configure(use_cache=False) is None  # --no-cache
    assert not (tmp_path / "cache").exists()

    assert runtime.cache_dir({"JAXGMM_CACHE_DIR": ""}) is None
    assert runtime.cache_dir({"JAXGMM_CACHE_DIR": "/x/y"}) == "/x/y"
    assert runtime.cache_dir({"XDG_CACHE_HOME": "/c"}) == os.path.join("/c", "jaxgmm")


def test_progress_from_inside_the_compiled_loop(capsys, blobs_file):
    X, _ = blobs_file
    result = jaxgmm.fit(jax.random.key(0), X, 3, progress=cli.print_progress, tol=0.0, max_iter=5)
    jax.effects_barrier()
    cli._end_progress()
    err = capsys.readouterr().err
    assert "EM iteration" in err and "mean log-likelihood" in err
    assert int(result.n_iter) == 5
    assert cli._fit_is_long(60000, 784, 10, "full", 1, 100)
    assert not cli._fit_is_long(300, 2, 3, "full", 1, 100)


def test_k_range_parsing():
    assert cli._k_range("2..4") == [2, 3, 4]
    with pytest.raises(Exception, match="A..B"):
        cli._k_range("2-4")
    with pytest.raises(Exception, match="1 <= A <= B"):
        cli._k_range("5..3")


@pytest.fixture(scope="module")
def blocks_image(tmp_path_factory):
    """A 24 x 32 PNG with three flat colour regions plus a little noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    image = np.zeros((24, 32, 3))
    image[:, :12] = [0.9, 0.1, 0.1]
    image[:, 12:22] = [0.1, 0.7, 0.2]
    image[:, 22:] = [0.1, 0.2, 0.9]
    image = np.clip(image + rng.normal(scale=0.03, size=image.shape), 0, 1)
    path = tmp_path_factory.mktemp("img") / "blocks.png"
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)
    return path


def test_image_features():
    from jaxgmm._src.segmentation import image_features

    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    colours = image_features(image)
    assert colours.shape == (6, 3) and colours.dtype == np.float32
    np.testing.assert_allclose(colours * 255, image.reshape(6, 3), rtol=1e-6)
    with_coords = image_features(image, spatial_weight=1.5, dtype=np.float64)
    assert with_coords.shape == (6, 5)
    # Row and column over max(H, W) = 3, times the weight; pixels in row-major order.
    np.testing.assert_allclose(
        with_coords[:, 3:], 1.5 / 3 * np.array([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
    )


def test_sixteen_bit_grey_images_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    from jaxgmm._src.segmentation import load_image

    levels = np.array([[0, 257, 32896], [65535, 27, 65451]], np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(levels).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = load_image(path)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], np.round(levels / 257.0))
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    # Pillow's 32-bit mode "I" with levels of at most 255 holds 8-bit grey.
    tiff = tmp_path / "grey32.tif"
    Image.fromarray(np.array([[0, 200], [255, 17]], np.int32)).save(tiff)
    assert Image.open(tiff).mode == "I"
    np.testing.assert_array_equal(load_image(tiff)[..., 1], [[0, 200], [255, 17]])


def test_segment_small_image(tmp_path, capsys, blocks_image):
    from PIL import Image

    out = tmp_path / "seg.png"
    status, stdout, err = run(
        capsys,
        "segment",
        blocks_image,
        "--k-range",
        "2..3",
        "-o",
        out,
        "--figure",
        tmp_path / "fig.png",
    )
    assert status == 0, err
    assert "<- chosen" in stdout and "K = 3" in stdout
    segmented = np.asarray(Image.open(out))
    assert segmented.shape == (24, 32, 3)
    # Three flat regions come back as exactly three colours, region by region.
    assert len(np.unique(segmented.reshape(-1, 3), axis=0)) == 3
    assert len(np.unique(segmented[:, :12].reshape(-1, 3), axis=0)) == 1
    assert Image.open(tmp_path / "fig.png").size[0] > 600

    status, _, err = run(
        capsys,
        "segment",
        blocks_image,
        "-k",
        3,
        "-o",
        tmp_path / "k3.png",
        "--no-figure",
        "--quiet",
    )
    assert status == 0, err
    assert not (tmp_path / "k3-figure.png").exists()
    one_line_error(*run(capsys, "segment", blocks_image, "-k", 769)[::2], "769", "768")


def test_demo_quick(tmp_path, capsys):
    status, out, err = run(capsys, "demo", "--quick", "-o", tmp_path / "demo")
    assert status == 0, err
    report = (tmp_path / "demo" / "README.md").read_text()
    for section in ("digits", "segmentation", "1-d", "ellipses"):
        assert section in report.lower()
    figures = sorted(p.name for p in (tmp_path / "demo").glob("*.png"))
    assert len(figures) == 8
    for name in figures:
        assert f"({name})" in report  # every figure is linked from the report
    assert "ARI" in report and "BIC" in report


def test_missing_examples_extra_is_one_line(capsys, monkeypatch):
    from jaxgmm._src import demo

    monkeypatch.setattr(demo, "missing_extras", lambda: ["matplotlib", "pillow"])
    for argv in (["demo", "--quick"], ["segment", "image.png", "-k", "2"]):
        one_line_error(
            *run(capsys, *argv)[::2], "matplotlib, pillow", 'pip install "jaxgmm[examples]"'
        )


def test_matched_accuracy_and_pca():
    from jaxgmm._src.demo import match_clusters, pca

    truth = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    clusters = np.array([2, 2, 0, 0, 1, 1, 1, 1, 1])  # classes relabelled, one sample off
    accuracy, mapping, contingency = match_clusters(truth, clusters)
    assert accuracy == 8 / 9
    np.testing.assert_array_equal(mapping, [1, 2, 0])
    assert contingency.sum() == 9

    X = np.random.default_rng(0).normal(size=(40, 5)) @ np.diag([5.0, 3.0, 1.0, 0.5, 0.1])
    scores, components, mean, explained = pca(X, 3)
    centred = X - X.mean(axis=0)
    reference = np.linalg.svd(centred, full_matrices=False)[2][:3]
    np.testing.assert_allclose(np.abs(components @ reference.T), np.eye(3), atol=1e-8)
    np.testing.assert_allclose(scores, centred @ np.asarray(components).T, atol=1e-10)
    assert np.all(np.diff(explained) <= 0) and 0.9 < float(explained.sum()) < 1.0


def test_select_prints_the_table_and_saves_the_best(tmp_path, capsys, blobs_file):
    X, path = blobs_file
    model = tmp_path / "best.npz"
    figure = tmp_path / "bic.png"
    status, out, err = run(
        capsys, "select", path, "--k-range", "1..4", "--covariance-type", "full",
        "--covariance-type", "spherical", "--n-init", "2", "-o", model, "--figure", figure,
        "--quiet",
    )  # fmt: skip
    assert status == 0, err
    marked = [line for line in out.splitlines() if line.startswith("*")]
    assert len(marked) == 1
    best = jaxgmm.load(model)
    assert f"K = {best.n_components}" in out and best.covariance_type in marked[0]
    # the marked row has the lowest BIC (fifth column) of the table
    rows = [line.lstrip("* ").split() for line in out.splitlines() if line[:1] in ("*", " ")]
    rows = [r for r in rows if len(r) >= 6 and r[0] in ("full", "spherical")]
    bics = [float(r[4]) for r in rows]
    assert len(rows) == 8 and float(marked[0].lstrip("* ").split()[4]) == min(bics)
    assert figure.stat().st_size > 5000
    status, _, err = run(capsys, "select", path, "--k-range", "1..500")
    assert status == 2 and "exceeds the number of samples" in err
    # A repeated covariance type is fitted once.
    status, out, err = run(
        capsys, "select", path, "--k-range", "1..2", "--covariance-type", "spherical",
        "--covariance-type", "spherical", "--n-init", "2", "--quiet",
    )  # fmt: skip
    assert status == 0, err
    assert sum("spherical" in line.split() for line in out.splitlines()) == 2  # K = 1, 2


def test_bench_select_and_groups_options(capsys, monkeypatch, tmp_path):
    """``bench --select`` and ``bench --groups`` run their benchmarks (here at a tiny size)
    and print and save them."""
    import functools

    from jaxgmm._src import bench_groups, benchmark

    monkeypatch.setattr(
        benchmark,
        "run_select_benchmark",
        functools.partial(
            benchmark.run_select_benchmark, n_samples=120, n_features=2, K=range(1, 3),
            covariance_types=("spherical",), with_jaxgmm_loop=False,
        ),
    )  # fmt: skip
    status, out, _ = run(capsys, "bench", "--select", "--quiet", "--json", tmp_path / "s.json")
    assert status == 0
    assert "select over K = 1..2 x 1 covariance types, N = 120" in out
    assert "persistent compilation cache: off" in out
    assert json.loads((tmp_path / "s.json").read_text())["n_samples"] == 120

    monkeypatch.setattr(
        bench_groups,
        "run_groups_benchmark",
        functools.partial(bench_groups.run_groups_benchmark, 6, 40, 2, loop_groups=2),
    )
    status, out, _ = run(capsys, "bench", "--groups", "--json", tmp_path / "g.json")
    assert status == 0
    assert "6 groups x 40 samples" in out and "jaxgmm dtype float32" in out
    assert json.loads((tmp_path / "g.json").read_text())["n_groups"] == 6
