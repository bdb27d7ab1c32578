"""predict.py on bad inputs, each written in its real on-disk layout: one line naming the input, exit code 2, no
traceback, no file outside the input opened; bad files among good ones are reported per file, the rest predicted."""
from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from tiny_models import error_line, record_opens, run_main, write_model_pt, write_models

from capsule_classifier.deploy import ModelInputError
from capsule_classifier.predict import main
from datasets.core import MAX_BYTES_ENV, SliceRecord
from datasets.fixtures import synthetic_slice, write_cvind, write_slice
from experiment.cli import DEBUG_ENV


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path the process opens through ``open`` while the test runs."""
    return record_opens(monkeypatch)


def slice_image(seed: int = 1) -> np.ndarray:
    return synthetic_slice(np.random.default_rng(seed), 64, 2)[0].astype(np.float32)


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width`` x ``height`` grey pixels (its data is a few rows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def good_png(path: Path, side: int = 64) -> Path:
    image = synthetic_slice(np.random.default_rng(side), side, 1)[0]
    Image.fromarray(np.clip(image / image.max() * 255, 0, 255).astype(np.uint8)).save(path)
    return path


def truncated_png(path: Path) -> Path:
    good_png(path, 128)
    path.write_bytes(path.read_bytes()[:300])
    return path


def object_npy(path: Path) -> Path:
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return path


def gif(path: Path) -> Path:
    Image.new("L", (8, 8)).save(path, format="GIF")
    return path


def text_file(path: Path) -> Path:
    path.write_text("hello")
    return path


def onnx_with(models: dict[str, Path], path: Path, **metadata: str) -> Path:
    model = onnx.load(models["onnx"])
    for prop in model.metadata_props:
        prop.value = metadata.get(prop.key, prop.value)
    onnx.save(model, path)
    return path


def npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def limited(monkeypatch: pytest.MonkeyPatch, path: Path) -> Path:
    """``path``, with the allocation limit lowered to 2 MB (over the tiny model) for the test."""
    monkeypatch.setenv(MAX_BYTES_ENV, "2000000")
    return path


def junk_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "README").write_text("not a slice")
    (folder / "cvind.mat").write_bytes(b"")
    return folder


def bomb(monkeypatch: pytest.MonkeyPatch, path: Path) -> Path:
    """A 40 x 40 PNG under a Pillow pixel limit of 1000: over the limit, under twice it (a warning by default)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    return good_png(path, 40)


Case = Callable[[Path, dict[str, Path], pytest.MonkeyPatch], tuple[Path, Path]]
"""(tmp folder, models, monkeypatch) -> (model, the bad input to be named: a slice, a folder or the model)."""

BAD_INPUTS: dict[str, Case] = {
    "huge PNG (10000 x 10000 declared)": lambda d, m, mp: (m["pt"], png_declaring(d / "huge.png", 10000, 10000)),
    "PNG over 8192 px a side": lambda d, m, mp: (m["pt"], png_declaring(d / "wide.png", 8200, 100)),
    "decompression bomb (Pillow's limit)": lambda d, m, mp: (m["pt"], bomb(mp, d / "bomb.png")),
    "PNG over the allocation limit": lambda d, m, mp: (m["pt"], limited(mp, png_declaring(d / "big.png", 2000, 2000))),
    "truncated PNG": lambda d, m, mp: (m["pt"], truncated_png(d / "cut.png")),
    "GIF named .png": lambda d, m, mp: (m["pt"], gif(d / "gif.png")),
    "complex .npy": lambda d, m, mp: (m["pt"], npy(d / "complex.npy", np.ones((8, 8), complex))),
    "NaN .npy": lambda d, m, mp: (m["pt"], npy(d / "nan.npy", np.full((8, 8), np.nan))),
    "object .npy": lambda d, m, mp: (m["pt"], object_npy(d / "objects.npy")),
    "3-D .npy": lambda d, m, mp: (m["pt"], npy(d / "volume.npy", np.zeros((2, 8, 8)))),
    ".npy over the allocation limit": lambda d, m, mp: (m["pt"], limited(mp, npy(d / "big.npy", np.zeros((600, 600))))),
    "folder with no slice": lambda d, m, mp: (m["pt"], junk_folder(d / "junk")),
    "model.pt image_size 100000": lambda d, m, mp: (write_model_pt(d / "huge.pt", image_size=100000),) * 2,
    "model.pt image_size 'abc'": lambda d, m, mp: (write_model_pt(d / "abc.pt", image_size="abc"),) * 2,
    "model.pt class_names not a list": lambda d, m, mp: (write_model_pt(d / "names.pt", class_names="glioma"),) * 2,
    "model.pt unknown builder argument": lambda d, m, mp: (
        write_model_pt(d / "kwargs.pt", model_kwargs={"bogus": 1}),) * 2,
    "model.pt builder argument naming a file": lambda d, m, mp: (
        write_model_pt(d / "path.pt", model_kwargs={"primary_types": str(d / "sentinel")}),) * 2,
    "model.pt builder list naming a file": lambda d, m, mp: (
        write_model_pt(d / "list.pt", model_kwargs={"attention": True, "attention_dilations": [str(d / "sentinel")]}),
    ) * 2,
    "model.pt builder list too long": lambda d, m, mp: (
        write_model_pt(d / "long.pt", model_kwargs={"attention": True, "attention_dilations": [1] * 10**6}),) * 2,
    "model.pt unknown model": lambda d, m, mp: (write_model_pt(d / "name.pt", model_name="nope"),) * 2,
    "ONNX image_size 100000": lambda d, m, mp: (onnx_with(m, d / "huge.onnx", image_size="100000"),) * 2,
    "ONNX image_size 'abc'": lambda d, m, mp: (onnx_with(m, d / "abc.onnx", image_size="abc"),) * 2,
    "ONNX class_names not JSON": lambda d, m, mp: (onnx_with(m, d / "names.onnx", class_names="[glioma"),) * 2,
    "ONNX that is not ONNX": lambda d, m, mp: (text_file(d / "text.onnx"),) * 2,
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_gets_one_line_naming_it(kind: str, models: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, opened: list[Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sentinel").write_text("must never be opened")
    good = tmp_path / "good.npy"
    np.save(good, slice_image())
    model, named = BAD_INPUTS[kind](tmp_path, models, monkeypatch)
    inputs = [good] if named == model else [named]
    opened.clear()
    start = time.perf_counter()
    code, out, err = run_main(main, [str(model), *map(str, inputs)], capsys)
    assert code == 2 and out == ""
    assert named.name in error_line(err)
    assert time.perf_counter() - start < 20
    allowed = [p.resolve() for p in (model, *inputs)]
    inside = [p for p in opened if p.is_relative_to(tmp_path.resolve())]
    assert all(any(p == a or p.is_relative_to(a) for a in allowed) for p in inside), inside


def test_weights_path_in_model_file_is_never_opened(tmp_path: Path, opened: list[Path],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    sentinel = tmp_path / "imagenet.pt"
    sentinel.write_bytes(b"not weights: loading this would fail")

    def refuse(*args: object) -> None:
        raise AssertionError("the weights file named inside model.pt was loaded")

    monkeypatch.setattr("capsule_classifier.resnet.load_imagenet_weights", refuse)
    model = write_model_pt(tmp_path / "resnet.pt", "resnet50", model_kwargs={"weights": str(sentinel)})
    np.save(tmp_path / "slice.npy", slice_image())
    opened.clear()
    code, out, _ = run_main(main, [str(model), str(tmp_path / "slice.npy")], capsys)
    assert code == 0 and "slice.npy" in out
    assert sentinel.resolve() not in opened and model.resolve() in opened
    assert "paths inside it are not followed" in caplog.text


def test_cvind_and_named_slices_among_mat_files(models: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    image, mask, border = synthetic_slice(np.random.default_rng(3), 64, 1)
    folder = tmp_path / "figshare"
    folder.mkdir()
    write_slice(folder / "1.mat", SliceRecord(1, image, 1, "P1", mask, border))
    write_slice(folder / "patient_scan.mat", SliceRecord(2, image, 1, "P1", mask, border), version="5")
    write_cvind(folder / "cvind.mat", np.array([1, 2]))
    code, out, _ = run_main(main, [str(models["pt"]), str(folder), "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert [r["path"] for r in report["predictions"]] == ["1.mat", "patient_scan.mat"]
    assert report["predictions"][0]["probabilities"] == report["predictions"][1]["probabilities"]
    assert report["skipped"] == [{"path": "cvind.mat", "reason": "the figshare folds file, not a slice"}]
    assert "skipped cvind.mat" in caplog.text


def test_mixed_folder_reports_each_bad_file_and_predicts_the_rest(models: dict[str, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    good_png(folder / "scan.png")
    good_png(folder / "sub" / "scan.png", 96)
    (folder / "notes.txt").write_text("not a slice")
    (folder / "README").write_text("not a slice")
    truncated_png(folder / "cut.png")
    np.save(folder / "nan.npy", np.full((8, 8), np.inf))
    np.save(folder / "tiny.npy", np.arange(4.0).reshape(2, 2))
    np.save(folder / "zeros.npy", np.zeros((64, 64)))
    out_csv = tmp_path / "rows.csv"
    code, out, err = run_main(main, [str(models["onnx"]), str(folder), "--out", str(out_csv)], capsys)
    assert code == 0 and "Traceback" not in err
    rows = {line.split(",")[0]: line.split(",")[1] for line in out_csv.read_text().splitlines()[1:]}
    assert rows == {"cut.png": "error", "nan.npy": "error", "scan.png": "ok", "sub/scan.png": "ok",
                    "tiny.npy": "warning", "zeros.npy": "warning", "README": "skipped", "notes.txt": "skipped"}
    assert "tiny image (2x2 px" in out and "constant image" in out and "sub/scan.png" in out
    code, _, err = run_main(main, [str(models["onnx"]), str(folder), "--strict"], capsys)
    assert code == 2 and "2 of 6 file(s) failed" in error_line(err)


def test_links_out_of_the_folder_are_not_followed(models: dict[str, Path], tmp_path: Path, opened: list[Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret.npy"
    np.save(secret, slice_image(2))
    folder = tmp_path / "slices"
    folder.mkdir()
    np.save(folder / "own.npy", slice_image())
    (folder / "linked.npy").symlink_to(secret)
    opened.clear()
    code, out, _ = run_main(main, [str(models["pt"]), str(folder), "--json"], capsys)
    assert code == 0 and secret.resolve() not in opened
    report = json.loads(out)
    assert [r["path"] for r in report["predictions"]] == ["own.npy"]
    assert report["skipped"][0]["path"] == "linked.npy" and "not followed" in report["skipped"][0]["reason"]


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEBUG_ENV, "0")  # restored after the test; --debug turns it on
    model = write_model_pt(tmp_path / "huge.pt", image_size=100000)
    with pytest.raises(ModelInputError, match="image_size 100000"):
        main([str(model), str(tmp_path), "--debug"])
