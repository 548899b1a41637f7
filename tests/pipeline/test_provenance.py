"""pipeline.provenance: the tags are where the formats say, decoders still read the files, and
MP4 chunk offsets stay right in both box orders."""
import os
import struct
import zlib

import cv2
import numpy as np
import pytest

from wscswap_fast.pipeline import provenance as P


def _image():
    return np.random.default_rng().integers(0, 256, (37, 53, 3), dtype=np.uint8)


def test_png_text_chunk_layout_and_pixels():
    img = _image()
    png = cv2.imencode(".png", img)[1].tobytes()
    tagged = P.png_add_text(png)
    # parse by hand: signature, IHDR, then our chunk: length, type, data, crc32(type + data)
    ihdr_len = struct.unpack(">I", tagged[8:12])[0]
    pos = 8 + 12 + ihdr_len
    length = struct.unpack(">I", tagged[pos:pos + 4])[0]
    assert tagged[pos + 4:pos + 8] == b"tEXt"
    data = tagged[pos + 8:pos + 8 + length]
    assert data == b"Comment\0" + P.TAG.encode("latin-1")
    assert struct.unpack(">I", tagged[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(b"tEXt" + data)
    assert P.png_text_chunks(tagged) == {"Comment": P.TAG}
    assert np.array_equal(cv2.imdecode(np.frombuffer(tagged, np.uint8), cv2.IMREAD_COLOR), img)


def test_png_bad_crc_and_not_png():
    tagged = bytearray(P.png_add_text(cv2.imencode(".png", _image())[1].tobytes()))
    tagged[45] ^= 0xFF  # inside the tEXt data
    with pytest.raises(ValueError, match="bad CRC"):
        P.png_text_chunks(bytes(tagged))
    with pytest.raises(ValueError, match="not a PNG"):
        P.png_add_text(b"GIF89a....")


def test_jpeg_comment_segment():
    img = _image()
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    tagged = P.jpeg_add_comment(jpg)
    assert P.jpeg_comments(tagged) == [P.TAG]
    assert tagged[:4] == jpg[:4]  # SOI, then JFIF APP0 still first
    i = tagged.index(b"\xff\xfe")
    assert struct.unpack(">H", tagged[i + 2:i + 4])[0] == len(P.TAG) + 2
    decoded = cv2.imdecode(np.frombuffer(tagged, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded, cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR))
    with pytest.raises(ValueError, match="not a JPEG"):
        P.jpeg_add_comment(b"\x89PNG")


def _write_video(path, frames=12, size=(64, 48), fps=25.0):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    rng = np.random.default_rng(0)
    for i in range(frames):
        w.write(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    w.release()


def _decode_all(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


def _faststart(mp4: bytes) -> bytes:
    """Move moov before mdat (what 'faststart' tools do), shifting the chunk offsets."""
    top = list(P._boxes(mp4, 0, len(mp4)))
    kinds = [k for k, *_ in top]
    _, ms, mh, me = top[kinds.index(b"moov")]
    moov = bytearray(mp4[ms:me])
    P._shift_chunk_offsets(moov, mh, len(moov), len(moov))
    first_media = min(p for k, p, _, _ in top if k == b"mdat")
    return mp4[:first_media] + bytes(moov) + mp4[first_media:ms] + mp4[me:]


@pytest.mark.parametrize("faststart", [False, True])
def test_mp4_comment_box_in_moov(tmp_path, faststart):
    src = tmp_path / "v.mp4"
    _write_video(src)
    data = src.read_bytes()
    if faststart:
        data = _faststart(data)
        order = [k for k, *_ in P._boxes(data, 0, len(data))]
        assert order.index(b"moov") < order.index(b"mdat")
    plain = tmp_path / "plain.mp4"
    plain.write_bytes(data)
    tagged = P.mp4_add_comment(data)
    out = tmp_path / "tagged.mp4"
    out.write_bytes(tagged)
    # the comment sits in moov/udta (QuickTime string and iTunes ilst data)
    top = {k: (p, h, e) for k, p, h, e in P._boxes(tagged, 0, len(tagged))}
    p, h, e = top[b"moov"]
    assert b"udta" in [k for k, *_ in P._boxes(tagged, p + h, e)]
    assert P.mp4_comments(tagged) == [P.TAG, P.TAG]
    assert P.read_tag(str(out)) == [P.TAG, P.TAG]
    # the media still decodes to the same frames (offsets fixed when moov precedes mdat)
    f0, fps0 = _decode_all(plain)
    f1, fps1 = _decode_all(out)
    assert len(f0) == len(f1) == 12 and fps0 == fps1
    assert all(np.array_equal(a, b) for a, b in zip(f0, f1))


def test_mp4_errors():
    with pytest.raises(ValueError, match="no moov"):
        P.mp4_add_comment(struct.pack(">I4s", 16, b"ftyp") + b"isom" + b"\0" * 4)
    with pytest.raises(ValueError, match="corrupt MP4"):
        P.mp4_add_comment(struct.pack(">I4s", 999, b"ftyp"))


def test_write_image_atomic_and_tagged(tmp_path):
    img = _image()
    for name in ("a.png", "a.jpg", "a.jpeg"):
        P.write_image(str(tmp_path / name), img)
        assert P.read_tag(str(tmp_path / name)) == [P.TAG]
    with pytest.raises(ValueError, match="output image must end"):
        P.write_image(str(tmp_path / "a.bmp"), img)
    with pytest.raises(FileNotFoundError):
        P.write_image(str(tmp_path / "missing" / "a.png"), img)
    assert sorted(os.listdir(tmp_path)) == ["a.jpeg", "a.jpg", "a.png"]


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.png"
    real_replace = os.replace

    def failing_replace(a, b):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        P.atomic_write_bytes(str(target), b"data")
    monkeypatch.setattr(os, "replace", real_replace)
    assert os.listdir(tmp_path) == []


def test_tag_and_read_reject_other_formats(tmp_path):
    with pytest.raises(ValueError, match="cannot tag"):
        P.tag_bytes(b"", ".gif")
    (tmp_path / "a.gif").write_bytes(b"GIF")
    with pytest.raises(ValueError, match="cannot read tags"):
        P.read_tag(str(tmp_path / "a.gif"))


def test_draw_label_bottom_left():
    img = np.full((360, 640, 3), 127, np.uint8)
    out = P.draw_label(img.copy())
    ys, xs = np.nonzero((out != 127).any(axis=2))
    assert ys.min() > 300 and xs.min() == 0 and xs.max() < 500
