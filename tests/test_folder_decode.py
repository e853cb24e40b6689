"""trainlab.data.folder.decode: every Pillow mode a PNG, JPEG, BMP or GIF gives decodes to the
right grey or RGB values, and a file's decode costs its raster plus what the output needs
(a 16-bit 9400x9400 PNG: not ~1.8 GB of widened copies)."""

from __future__ import annotations

import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_env

pytest.importorskip("PIL")
from PIL import Image

from trainlab.data.folder import decode


def png16(path: Path, width: int, height: int, value: int) -> Path:
    """A 16-bit grey PNG of one value, written a row at a time (never the whole raster)."""
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    row = b"\0" + value.to_bytes(2, "big") * width
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([16, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def decoded(path: Path, channels: int, size=None) -> np.ndarray:
    with Image.open(path) as img:
        w, h = size or img.size
    return decode.decode_one(Image, str(path), channels, w, h)


def test_16_bit_grey_is_scaled_by_257(tmp_path):
    a = np.array([[0, 1, 256, 257, 514, 32896, 65534, 65535]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as img:
        assert img.mode.startswith("I")
    assert decoded(tmp_path / "g16.png", 1)[0].tolist() == [[0, 0, 0, 1, 2, 128, 254, 255]]
    assert decoded(tmp_path / "g16.png", 3)[:, 0].T.tolist() == [[v] * 3 for v in [0, 0, 0, 1, 2, 128, 254, 255]]


@pytest.mark.parametrize("mode,ext", [("P", ".png"), ("P", ".gif"), ("LA", ".png"), ("1", ".png"),
                                      ("RGBA", ".png"), ("L", ".bmp"), ("CMYK", ".jpg")])
def test_each_mode_decodes_to_pillows_own_grey_and_rgb_values(tmp_path, mode, ext):
    g = np.random.default_rng(0)
    rgb = Image.fromarray(g.integers(0, 256, (9, 11, 3), dtype=np.uint8), "RGB")
    img = rgb.quantize(16) if mode == "P" else rgb.convert(mode)
    img.save(tmp_path / f"x{ext}")
    with Image.open(tmp_path / f"x{ext}") as stored:
        assert stored.mode == mode
        stored.load()
        want_rgb = np.asarray(stored.convert("RGB")).transpose(2, 0, 1)
        want_l = np.asarray(stored.convert("RGB").convert("L") if mode == "CMYK" else stored.convert("L"))
    assert np.array_equal(decoded(tmp_path / f"x{ext}", 3), want_rgb)
    assert np.array_equal(decoded(tmp_path / f"x{ext}", 1)[0], want_l)


def test_float_and_32_bit_images_are_clipped_not_wrapped():
    f = Image.fromarray(np.array([[-5.0, 0.4, 254.6, 300.0, np.nan, np.inf]], np.float32), "F")
    assert np.asarray(decode.convert(f, 1)).tolist() == [[0, 0, 254, 255, 0, 255]]
    i = Image.fromarray(np.array([[-7, 256, 257, 65535, 10**6]], np.int32), "I")
    assert np.asarray(decode.convert(i, 1)).tolist() == [[0, 0, 1, 255, 255]]


@pytest.mark.parametrize("mode", ["I;16", "F", "P", "LA", "RGB", "1"])
def test_a_large_image_converted_in_strips_equals_the_whole_image_converted(monkeypatch, mode):
    g = np.random.default_rng(1)
    if mode == "I;16":
        img = Image.fromarray(g.integers(0, 65536, (300, 200), dtype=np.uint16))
    elif mode == "F":
        img = Image.fromarray(g.uniform(-10, 300, (300, 200)).astype(np.float32), "F")
    else:
        rgb = Image.fromarray(g.integers(0, 256, (300, 200, 3), dtype=np.uint8), "RGB")
        img = rgb.quantize(32) if mode == "P" else rgb.convert(mode)
    monkeypatch.setattr(decode, "STRIP_PIXELS", 1000)  # strips of 5 rows (k = 1) or 3k rows
    for channels in (1, 3):
        assert np.array_equal(np.asarray(decode.prepare(img, channels, 200, 300)),
                              np.asarray(decode.convert(img, channels)))
        whole = decode.convert(img, channels).reduce(3)
        assert np.array_equal(np.asarray(decode.prepare(img, channels, 60, 90)), np.asarray(whole))


PEAK = """
import resource, sys
from PIL import Image
from trainlab.data.folder import decode
path, width = sys.argv[1], int(sys.argv[2])
decode._pillow()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
a = decode.decode_one(Image, path, 1, width, width)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) // 1024, int(a.min()), int(a.max()), a.shape)
"""


@pytest.mark.parametrize("target", [28, 4096])
def test_a_16_bit_9400_square_png_costs_its_raster_not_int64_copies(tmp_path, target):
    """172 KB on disk, 9400x9400 (under the bomb limit): the 16-bit raster is 169 MiB; widened
    to int64 and copied as before, ~1.8 GB a decode worker."""
    path = png16(tmp_path / "big.png", 9400, 9400, 0x8080)
    assert path.stat().st_size < 1 << 20
    r = subprocess.run([sys.executable, "-c", PEAK, str(path), str(target)], env=cli_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    grew_mib, low, high, shape = r.stdout.split(maxsplit=3)
    assert (int(low), int(high)) == (128, 128) and shape.strip() == f"(1, {target}, {target})"
    raster_mib = 9400 * 9400 * 2 >> 20
    assert int(grew_mib) < 2 * raster_mib, f"decoding grew the process by {grew_mib} MiB"
