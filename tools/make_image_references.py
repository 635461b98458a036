#!/usr/bin/env python3
"""Writes small GIF / PNM / BMP / TGA / PNG / WebP (and a few JPEG) files to tests/data/images/pillow/ and
records what Pillow decodes from each: Image.open(path).convert("RGB"), the conversion that
instructblip::load_image mirrors (BlipImageProcessor's convert_rgb on a freshly opened file).

Files are written with Pillow where Pillow can write that variant; the rest (interlaced and
16-bit colour PNG, 1/2/4-bit grey PNG, 4-bit, 16-bit, top-down and RLE BMP, plain and 16-bit
PNM, GIF frames with offsets / local palettes, a WebP animation whose first frame is smaller than the
canvas) are written here by the format's specification.
The expected pixels always come from Pillow decoding the written file.

    /usr/bin/python3 tools/make_image_references.py     # Debian 12: python3-pil (Pillow 9.4), python3-numpy

manifest.json lists every file with Pillow's format and mode on open, the size, and the expected
RGB bytes (rows top to bottom, R, G, B interleaved) as a hex string.
"""
import io
import json
import os
import struct
import warnings
import zlib

import numpy as np
import PIL
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.normpath(os.path.join(HERE, "..", "tests", "data", "images", "pillow"))


def rng(seed):
    return np.random.default_rng(seed)


def rgb_array(w, h, seed):
    """A gradient with noise: every channel value differs across the image."""
    r = rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(x * 255) // max(1, w - 1), (y * 255) // max(1, h - 1), (x * 7 + y * 13) % 256], axis=-1)
    a = (a + r.integers(0, 40, size=a.shape)) % 256
    return a.astype(np.uint8)


def indices(w, h, n, seed):
    return rng(seed).integers(0, n, size=(h, w)).astype(np.uint8)


def palette(n, seed):
    return [int(v) for v in rng(seed).integers(0, 256, size=3 * n)]


# ---- PNG by the specification --------------------------------------------------------------

def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_pack_row(samples, depth):
    """samples: 1-D sequence of ints (all channels of one row) -> bytes at `depth` bits."""
    if depth == 16:
        return b"".join(struct.pack(">H", int(s)) for s in samples)
    if depth == 8:
        return bytes(int(s) for s in samples)
    out, acc, nbits = bytearray(), 0, 0
    for s in samples:
        acc = (acc << depth) | int(s)
        nbits += depth
        if nbits == 8:
            out.append(acc)
            acc, nbits = 0, 0
    if nbits:
        out.append(acc << (8 - nbits))
    return bytes(out)


def png_filter(kind, row, prev, bpp):
    out = bytearray([kind])
    for i, v in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i] if prev is not None else 0
        c = prev[i - bpp] if (prev is not None and i >= bpp) else 0
        if kind == 0:
            pred = 0
        elif kind == 1:
            pred = a
        elif kind == 2:
            pred = b
        elif kind == 3:
            pred = (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
        out.append((v - pred) & 0xFF)
    return bytes(out)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def write_png(samples, depth, color, interlace=False, plte=None, trns=None):
    """samples: HxWxC array of sample values (C = 1, 2, 3 or 4). Filters cycle through all five types."""
    h, w, c = samples.shape
    bpp = max(1, c * depth // 8)
    raw = bytearray()
    n = 0
    passes = ADAM7 if interlace else [(0, 0, 1, 1)]
    for x0, y0, dx, dy in passes:
        prev = None
        if x0 >= w or y0 >= h:
            continue
        for y in range(y0, h, dy):
            row = png_pack_row(samples[y, x0::dx].reshape(-1), depth)
            raw += png_filter(n % 5, row, prev, bpp)
            n += 1
            prev = row
    png = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, int(interlace)))
    if plte is not None:
        png += png_chunk(b"PLTE", bytes(plte))
    if trns is not None:
        png += png_chunk(b"tRNS", trns)
    return png + png_chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + png_chunk(b"IEND", b"")


# ---- GIF by the specification --------------------------------------------------------------

def gif_lzw(idx, bits):
    """Literal codes only, with a clear code before the table would grow the code size."""
    clear = 1 << bits
    width = bits + 1
    codes = [clear]
    since = 0
    for v in idx:
        if since == (1 << width) - clear - 2 - 1:
            codes.append(clear)
            since = 0
        codes.append(int(v))
        since += 1
    codes.append(clear + 1)
    out, acc, nb = bytearray(), 0, 0
    for c in codes:
        acc |= c << nb
        nb += width
        while nb >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nb -= 8
    if nb:
        out.append(acc)
    blocks = bytearray([bits])
    for i in range(0, len(out), 255):
        part = out[i:i + 255]
        blocks += bytes([len(part)]) + part
    return bytes(blocks + b"\x00")


def table_bits(n):
    k = 0
    while (2 << k) < n:
        k += 1
    return k


def write_gif(screen, frames, gct=None, background=0):
    """frames: list of dict(x0, y0, idx (HxW), lct=None, transparency=None, interlace=False)."""
    sw, sh = screen
    out = bytearray(b"GIF89a" + struct.pack("<HH", sw, sh))
    if gct is not None:
        k = table_bits(len(gct) // 3)
        out += bytes([0x80 | k, background, 0]) + bytes(gct) + bytes(3 * (2 << k) - len(gct))
    else:
        out += bytes([0, 0, 0])
    for f in frames:
        if f.get("transparency") is not None:
            out += bytes([0x21, 0xF9, 4, 1, 10, 0, f["transparency"], 0])
        else:
            out += bytes([0x21, 0xF9, 4, 0, 10, 0, 0, 0])
        fh, fw = f["idx"].shape
        flags = 0
        lct = f.get("lct")
        if lct is not None:
            k = table_bits(len(lct) // 3)
            flags |= 0x80 | k
        rows = list(range(fh))
        if f.get("interlace"):
            flags |= 0x40
            rows = list(range(0, fh, 8)) + list(range(4, fh, 8)) + list(range(2, fh, 4)) + list(range(1, fh, 2))
        out += b"," + struct.pack("<HHHHB", f["x0"], f["y0"], fw, fh, flags)
        if lct is not None:
            out += bytes(lct) + bytes(3 * (2 << k) - len(lct))
        out += gif_lzw(f["idx"][rows].reshape(-1), 8)
    return bytes(out + b";")


# ---- BMP by the specification --------------------------------------------------------------

def bmp_file(w, h, bits, pixel_data, pal=None, compression=0, top_down=False, masks=None):
    pal_bytes = b""
    if pal is not None:
        pal_bytes = b"".join(bytes([b, g, r, 0]) for r, g, b in zip(pal[0::3], pal[1::3], pal[2::3]))
    mask_bytes = b"" if masks is None else struct.pack("<III", *masks)
    offset = 14 + 40 + len(mask_bytes) + len(pal_bytes)
    info = struct.pack("<IiiHHIIiiII", 40, w, -h if top_down else h, 1, bits, compression, len(pixel_data),
                       2835, 2835, 0 if pal is None else len(pal) // 3, 0)
    head = b"BM" + struct.pack("<IHHI", offset + len(pixel_data), 0, 0, offset)
    return head + info + mask_bytes + pal_bytes + pixel_data


def bmp_rows(rows_bytes, top_down):
    """Pads rows to 4 bytes and orders them bottom-up unless top_down."""
    padded = [r + bytes((-len(r)) % 4) for r in rows_bytes]
    return b"".join(padded if top_down else padded[::-1])


def rle8(idx):
    """Bottom-up RLE8: runs of equal bytes (encoded mode), absolute runs, end-of-line, end-of-bitmap."""
    out = bytearray()
    for row in idx[::-1]:
        row = [int(v) for v in row]
        i = 0
        while i < len(row):
            j = i
            while j < len(row) and row[j] == row[i] and j - i < 255:
                j += 1
            if j - i >= 2:
                out += bytes([j - i, row[i]])
                i = j
                continue
            # absolute run of >= 3 literal pixels (padded to a 16-bit boundary), else a run of 1
            k = i
            while k < len(row) and k - i < 255 and (k + 1 >= len(row) or row[k + 1] != row[k]):
                k += 1
            if k - i >= 3:
                out += bytes([0, k - i]) + bytes(row[i:k]) + (b"\x00" if (k - i) % 2 else b"")
                i = k
            else:
                out += bytes([1, row[i]])
                i += 1
        out += b"\x00\x00"
    return bytes(out + b"\x00\x01")


def rle4(idx):
    """Bottom-up RLE4 with encoded runs of alternating pairs only."""
    out = bytearray()
    for row in idx[::-1]:
        row = [int(v) for v in row]
        i = 0
        while i < len(row):
            n = min(2 if i + 1 < len(row) else 1, len(row) - i)
            hi, lo = row[i], row[i + 1] if n == 2 else 0
            # extend while the pattern hi, lo, hi, lo... continues
            while i + n < len(row) and n < 255 and row[i + n] == (hi if n % 2 == 0 else lo):
                n += 1
            out += bytes([n, (hi << 4) | lo])
            i += n
        out += b"\x00\x00"
    return bytes(out + b"\x00\x01")


# ---- TGA by the specification --------------------------------------------------------------

def tga_file(w, h, imagetype, depth, pixel_bytes, descriptor, cmap=b"", cmap_first=0, cmap_count=0, cmap_depth=0,
             image_id=b""):
    """descriptor: 0x20 top-left origin, 0x10 right-to-left, low bits alpha depth; cmap: raw entry bytes."""
    head = struct.pack("<BBBHHBHHHHBB", len(image_id), 1 if cmap_count else 0, imagetype, cmap_first, cmap_count,
                       cmap_depth, 0, 0, w, h, depth, descriptor)
    return head + image_id + cmap + pixel_bytes


def bmp_v5(w, h, bits, pixel_data, masks, header_size=124, compression=3):
    """A BMP with a V4 (108) / V5 (124) header carrying the four channel masks."""
    info = struct.pack("<IiiHHIIiiII", header_size, w, h, 1, bits, compression, len(pixel_data), 2835, 2835, 0, 0)
    info += struct.pack("<IIII", *masks) + bytes(header_size - 56)
    offset = 14 + len(info)
    return b"BM" + struct.pack("<IHHI", offset + len(pixel_data), 0, 0, offset) + info + pixel_data


def bmp_os2(w, h, idx, pal):
    """An OS/2 (12-byte header) 8-bit palette BMP: 3-byte BGR palette entries."""
    info = struct.pack("<IHHHH", 12, w, h, 1, 8)
    pal_bytes = b"".join(bytes([b, g, r]) for r, g, b in zip(pal[0::3], pal[1::3], pal[2::3]))
    data = bmp_rows([r.tobytes() for r in idx], False)
    offset = 14 + 12 + len(pal_bytes)
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + pal_bytes + data


def tga_rle(pixels, width):
    """pixels: list of pixels (bytes) in file order; run and raw packets of up to 128 pixels, none
    crossing a row (as the TGA specification asks)."""
    return b"".join(tga_rle_row(pixels[i:i + width]) for i in range(0, len(pixels), width))


def tga_rle_row(pixels):
    out = bytearray()
    i = 0
    while i < len(pixels):
        j = i
        while j < len(pixels) and pixels[j] == pixels[i] and j - i < 128:
            j += 1
        if j - i >= 2:
            out += bytes([0x80 | (j - i - 1)]) + pixels[i]
            i = j
            continue
        k = i
        while k < len(pixels) and k - i < 128 and (k + 1 >= len(pixels) or pixels[k + 1] != pixels[k]):
            k += 1
        k = max(k, i + 1)
        out += bytes([k - i - 1]) + b"".join(pixels[i:k])
        i = k
    return bytes(out)


# ---- PNM by the specification --------------------------------------------------------------

def pnm_plain(magic, w, h, maxval, values, comment=True):
    head = f"{magic}\n" + ("# written by make_image_references.py\n" if comment else "") + f"{w} {h}\n"
    if maxval is not None:
        head += f"{maxval}\n"
    body = []
    for i, v in enumerate(values):
        body.append(str(int(v)))
        body.append("\n" if i % 12 == 11 else " ")
    return (head + "".join(body)).encode("ascii")


def pnm_raw(magic, w, h, maxval, samples):
    head = f"{magic}\n{w} {h}\n{maxval}\n".encode("ascii")
    if maxval < 256:
        return head + bytes(int(v) for v in samples)
    return head + b"".join(struct.pack(">H", int(v)) for v in samples)


# ---- WebP by the specification ------------------------------------------------------------

def riff_chunk(fourcc, body):
    return fourcc + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) % 2 else b"")


def webp_bitstream_chunks(data):
    """The chunks of a simple (VP8 / VP8L) WebP file written by Pillow: everything after RIFF....WEBP."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP" and data[12:16] in (b"VP8 ", b"VP8L"), data[:16]
    return data[12:]


def u24(v):
    return struct.pack("<I", v)[:3]


def webp_animation(canvas, frames, background=(0, 0, 0, 0), alpha=True):
    """frames: list of (x0, y0, simple WebP file bytes of the frame, duration ms); offsets even."""
    (cw, ch), flags = canvas, 0x02 | (0x10 if alpha else 0)
    body = riff_chunk(b"VP8X", bytes([flags, 0, 0, 0]) + u24(cw - 1) + u24(ch - 1))
    b, g, r, a = background[2], background[1], background[0], background[3]
    body += riff_chunk(b"ANIM", bytes([b, g, r, a]) + struct.pack("<H", 0))
    for x0, y0, data, duration in frames:
        with Image.open(io.BytesIO(data)) as im:
            fw, fh = im.size
        head = u24(x0 // 2) + u24(y0 // 2) + u24(fw - 1) + u24(fh - 1) + u24(duration) + bytes([0])
        body += riff_chunk(b"ANMF", head + webp_bitstream_chunks(data))
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


# ---- the set -------------------------------------------------------------------------------

def pil_bytes(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def cases():
    c = {}
    rgb = rgb_array(23, 17, 1)
    rgba = np.dstack([rgb, rng(2).integers(0, 256, size=(17, 23, 1)).astype(np.uint8)])
    grey = rgb[..., 0].copy()
    im_rgb = Image.fromarray(rgb, "RGB")
    im_rgba = Image.fromarray(rgba, "RGBA")
    im_l = Image.fromarray(grey, "L")
    idx16 = indices(23, 17, 16, 3)
    idx256 = indices(31, 19, 256, 4)
    pal16 = palette(16, 5)
    pal256 = palette(256, 6)
    im_p16 = Image.fromarray(idx16, "P")
    im_p16.putpalette(pal16)
    im_p256 = Image.fromarray(idx256, "P")
    im_p256.putpalette(pal256)

    # GIF
    c["gif_palette.gif"] = pil_bytes(im_p16, "GIF", interlace=False)
    c["gif_palette_256_interlaced.gif"] = pil_bytes(im_p256, "GIF", interlace=True)
    c["gif_transparency.gif"] = pil_bytes(im_p16, "GIF", transparency=3, interlace=False)
    frames = [Image.fromarray(indices(17, 13, 16, s), "P") for s in (7, 8, 9)]
    for f in frames:
        f.putpalette(pal16)
    c["gif_multiframe.gif"] = pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50,
                                        loop=0)
    c["gif_from_rgb.gif"] = pil_bytes(im_rgb, "GIF")  # Pillow quantises to a palette
    idx = indices(9, 7, 4, 10)
    # a first frame inside a larger screen, local palette, transparent index filling the rest
    c["gif_offset_frame_local_palette.gif"] = write_gif(
        (16, 12), [{"x0": 3, "y0": 2, "idx": idx, "lct": palette(4, 11), "transparency": 2}], gct=palette(8, 12))
    # a first frame beyond the logical screen (Pillow grows the canvas), no transparency
    c["gif_frame_beyond_screen.gif"] = write_gif((8, 6), [{"x0": 4, "y0": 3, "idx": idx}], gct=palette(4, 13))
    # indices past a short global palette (Pillow's default palette entries), interlaced by hand
    c["gif_short_palette_interlaced.gif"] = write_gif(
        (13, 19), [{"x0": 0, "y0": 0, "idx": indices(13, 19, 16, 14), "interlace": True}], gct=palette(4, 15))
    c["gif_no_palette.gif"] = write_gif((11, 5), [{"x0": 0, "y0": 0, "idx": indices(11, 5, 256, 16)}])
    c["gif87a_background_index.gif"] = b"GIF87a" + write_gif((9, 7), [{"x0": 2, "y0": 1, "idx": indices(5, 4, 4, 49)}],
                                                             gct=palette(4, 50), background=3)[6:]
    c["gif_grey_palette.gif"] = pil_bytes(im_l, "GIF", interlace=False)

    # PNM
    c["pnm_p4.pbm"] = pil_bytes(im_l.convert("1"), "PPM")
    c["pnm_p5.pgm"] = pil_bytes(im_l, "PPM")
    c["pnm_p6.ppm"] = pil_bytes(im_rgb, "PPM")
    grey16 = (grey.astype(np.uint32) * 257 + rng(17).integers(0, 257, size=grey.shape)).astype(np.uint16)
    c["pnm_p5_16bit.pgm"] = pil_bytes(Image.fromarray(grey16.astype(np.int32), "I"), "PPM")  # maxval 65535
    c["pnm_p5_16bit_small_values.pgm"] = pnm_raw("P5", 23, 17, 65535, (grey.astype(np.uint32) * 3).reshape(-1))
    c["pnm_p5_maxval_1000.pgm"] = pnm_raw("P5", 23, 17, 1000, (grey.astype(np.uint32) * 1000 // 255).reshape(-1))
    c["pnm_p5_maxval_100.pgm"] = pnm_raw("P5", 23, 17, 100, (grey.astype(np.uint32) * 100 // 255).reshape(-1))
    c["pnm_p6_16bit.ppm"] = pnm_raw("P6", 23, 17, 65535, (rgb.astype(np.uint32) * 257 + 100).reshape(-1) % 65536)
    c["pnm_p6_maxval_4000.ppm"] = pnm_raw("P6", 23, 17, 4000, (rgb.astype(np.uint32) * 4000 // 255).reshape(-1))
    c["pnm_p1.pbm"] = pnm_plain("P1", 13, 7, None, indices(13, 7, 2, 18).reshape(-1))
    c["pnm_p2.pgm"] = pnm_plain("P2", 13, 7, 255, indices(13, 7, 256, 19).reshape(-1))
    c["pnm_p2_maxval_15.pgm"] = pnm_plain("P2", 13, 7, 15, indices(13, 7, 16, 20).reshape(-1))
    c["pnm_p3.ppm"] = pnm_plain("P3", 13, 7, 255, rgb_array(13, 7, 21).reshape(-1))
    c["pnm_p3_maxval_1023.ppm"] = pnm_plain("P3", 13, 7, 1023, rgb_array(13, 7, 22).reshape(-1).astype(int) * 4)

    c["pnm_p5_comments_and_whitespace.pgm"] = b"P5 #a\n\n23\t17 #b\n# c\n255\n" + grey.tobytes()
    c["pnm_p6_maxval_1.ppm"] = b"P6 23 17 1\n" + indices(23, 17, 2, 47).repeat(3).tobytes()
    c["pnm_p1_no_separators.pbm"] = b"P1\n13 7\n" + "".join(str(v) for v in indices(13, 7, 2, 48).reshape(-1)).encode()

    # BMP
    c["bmp_24bit.bmp"] = pil_bytes(im_rgb, "BMP")
    c["bmp_32bit.bmp"] = pil_bytes(im_rgba, "BMP")
    c["bmp_8bit_palette.bmp"] = pil_bytes(im_p256, "BMP")
    c["bmp_8bit_grey.bmp"] = pil_bytes(im_l, "BMP")
    c["bmp_1bit.bmp"] = pil_bytes(im_l.convert("1"), "BMP")
    rows4 = [png_pack_row(r, 4) for r in idx16]
    c["bmp_4bit.bmp"] = bmp_file(23, 17, 4, bmp_rows(rows4, False), pal=pal16)
    c["bmp_4bit_short_palette_top_down.bmp"] = bmp_file(23, 17, 4, bmp_rows(rows4, True), pal=pal16[:3 * 10],
                                                        top_down=True)
    idx2 = indices(23, 17, 2, 23)
    c["bmp_1bit_colour_palette.bmp"] = bmp_file(23, 17, 1, bmp_rows([png_pack_row(r, 1) for r in idx2], False),
                                                pal=palette(2, 24))
    c["bmp_24bit_top_down.bmp"] = bmp_file(23, 17, 24, bmp_rows([r[:, ::-1].tobytes() for r in rgb], True),
                                           top_down=True)
    c["bmp_8bit_top_down.bmp"] = bmp_file(31, 19, 8, bmp_rows([r.tobytes() for r in idx256], True), pal=pal256,
                                          top_down=True)
    px555 = ((rgb[..., 0].astype(np.uint16) >> 3) << 10) | ((rgb[..., 1].astype(np.uint16) >> 3) << 5) | \
        (rgb[..., 2].astype(np.uint16) >> 3)
    c["bmp_16bit_555.bmp"] = bmp_file(23, 17, 16, bmp_rows([r.astype("<u2").tobytes() for r in px555], False))
    px565 = ((rgb[..., 0].astype(np.uint16) >> 3) << 11) | ((rgb[..., 1].astype(np.uint16) >> 2) << 5) | \
        (rgb[..., 2].astype(np.uint16) >> 3)
    c["bmp_16bit_565_bitfields.bmp"] = bmp_file(23, 17, 16, bmp_rows([r.astype("<u2").tobytes() for r in px565], False),
                                                compression=3, masks=(0xF800, 0x07E0, 0x001F))
    runs = np.repeat(indices(8, 19, 256, 25), 4, axis=1)[:, :31]
    runs[::3] = idx256[::3]  # some rows without runs: absolute mode
    c["bmp_rle8.bmp"] = bmp_file(31, 19, 8, rle8(runs), pal=pal256, compression=1)
    c["bmp_rle4.bmp"] = bmp_file(23, 17, 4, rle4(np.repeat(indices(6, 17, 16, 26), 4, axis=1)[:, :23]), pal=pal16,
                                 compression=2)
    # V4 / V5 headers with channel masks, an OS/2 header
    rows32 = bmp_rows([np.hstack([r, rgba[y, :, 3:]]).tobytes() for y, r in enumerate(rgb[..., ::-1])], False)
    c["bmp_v5_32bit_bgra_masks.bmp"] = bmp_v5(23, 17, 32, rows32, (0xFF0000, 0xFF00, 0xFF, 0xFF000000))
    c["bmp_v5_32bit_bgrx_masks.bmp"] = bmp_v5(23, 17, 32, rows32, (0xFF0000, 0xFF00, 0xFF, 0))
    rows32r = bmp_rows([np.hstack([r, rgba[y, :, 3:]]).tobytes() for y, r in enumerate(rgb)], False)
    c["bmp_v5_32bit_rgba_masks.bmp"] = bmp_v5(23, 17, 32, rows32r, (0xFF, 0xFF00, 0xFF0000, 0xFF000000))
    c["bmp_v5_16bit_565.bmp"] = bmp_v5(23, 17, 16, bmp_rows([r.astype("<u2").tobytes() for r in px565], False),
                                       (0xF800, 0x07E0, 0x001F, 0))
    c["bmp_v4_24bit.bmp"] = bmp_v5(23, 17, 24, bmp_rows([r[:, ::-1].tobytes() for r in rgb], False), (0, 0, 0, 0),
                                   header_size=108, compression=0)
    c["bmp_os2_8bit.bmp"] = bmp_os2(31, 19, idx256, pal256)

    # RLE by hand: an end of line before the row is full, a delta, absolute runs of odd length,
    # runs longer than the rest of the row. Pillow's quirks decide the pixels (a delta consumes
    # four bytes after its escape; an RLE4 absolute run of 3 pixels yields 2).
    c["bmp_rle8_escapes.bmp"] = bmp_file(13, 6, 8, bytes([
        3, 5, 0, 0,
        0, 5, 1, 2, 3, 4, 200, 0, 8, 9, 0, 0,
        0, 2, 4, 1, 2, 0, 20, 7, 0, 0,
        13, 100, 0, 0,
        0, 3, 10, 11, 12, 0, 10, 50, 0, 0,
        13, 60, 0, 1]), pal=pal256, compression=1)
    c["bmp_rle4_escapes.bmp"] = bmp_file(11, 4, 4, bytes([
        5, 0x12, 0, 3, 0x34, 0x50, 4, 0x67, 0, 0,
        11, 0xAB, 0, 0,
        0, 4, 0x12, 0x34, 7, 0xCD, 0, 0,
        11, 0xEF, 0, 1]), pal=pal16, compression=2)
    # RLE4 on 8-bit pixels and RLE8 on 4-bit pixels: Pillow follows the compression field
    c["bmp_rle4_on_8bit.bmp"] = bmp_file(23, 17, 8, rle4(np.repeat(indices(6, 17, 16, 42), 4, axis=1)[:, :23]),
                                         pal=pal16, compression=2)
    c["bmp_rle8_on_4bit.bmp"] = bmp_file(23, 17, 4, rle8(np.repeat(indices(6, 17, 40, 43), 4, axis=1)[:, :23]),
                                         pal=pal16, compression=1)
    # a pixel-data offset pointing at the palette: Pillow reads the pixels after the palette
    at_palette = bytearray(bmp_file(23, 17, 4, bmp_rows(rows4, False), pal=pal16))
    at_palette[10:14] = struct.pack("<I", 14 + 40)
    c["bmp_4bit_offset_at_palette.bmp"] = bytes(at_palette)

    # TGA
    c["tga_24bit_bottom_left.tga"] = pil_bytes(im_rgb, "TGA")
    c["tga_24bit_top_left.tga"] = pil_bytes(im_rgb, "TGA", orientation=1)
    c["tga_32bit.tga"] = pil_bytes(im_rgba, "TGA")
    c["tga_grey.tga"] = pil_bytes(im_l, "TGA")
    c["tga_palette.tga"] = pil_bytes(im_p16, "TGA")
    blocky = Image.fromarray(np.repeat(np.repeat(rgb_array(6, 5, 27), 4, axis=1), 3, axis=0)[:13, :21], "RGB")
    c["tga_24bit_rle.tga"] = pil_bytes(blocky, "TGA", rle=True)
    c["tga_24bit_rle_top_left.tga"] = pil_bytes(blocky, "TGA", rle=True, orientation=1)
    c["tga_32bit_rle.tga"] = pil_bytes(blocky.convert("RGBA"), "TGA", rle=True)
    c["tga_grey_rle.tga"] = pil_bytes(blocky.convert("L"), "TGA", rle=True)
    c["tga_palette_rle.tga"] = pil_bytes(_with_palette(np.repeat(idx16, 3, axis=1)[:, :29], pal16), "TGA", rle=True)
    px = [bytes(p) for p in np.repeat(rgb_array(5, 7, 28), 3, axis=1)[:, :, ::-1].reshape(-1, 3)]
    c["tga_24bit_rle_raw_packets.tga"] = tga_file(15, 7, 10, 24, tga_rle(px, 15), 0x20)
    # right-to-left rows (descriptor bit 4): Pillow mirrors the image
    bgr = rgb[..., ::-1]
    c["tga_24bit_right_to_left.tga"] = tga_file(23, 17, 2, 24, bgr.tobytes(), 0x10)
    c["tga_24bit_rle_right_to_left_top.tga"] = tga_file(15, 7, 10, 24, tga_rle(px, 15), 0x30)
    c["tga_24bit_image_id.tga"] = tga_file(23, 17, 2, 24, bgr.tobytes(), 0x20, image_id=b"instructblip")
    px15 = ((rgb[..., 0].astype(np.uint16) >> 3) << 10) | ((rgb[..., 1].astype(np.uint16) >> 3) << 5) | \
        (rgb[..., 2].astype(np.uint16) >> 3)
    c["tga_16bit.tga"] = tga_file(23, 17, 2, 16, px15.astype("<u2").tobytes(), 0x20)
    c["tga_16bit_alpha_bit.tga"] = tga_file(23, 17, 2, 16, (px15 | 0x8000).astype("<u2").tobytes(), 0x21)
    c["tga_grey_alpha_16bit.tga"] = tga_file(23, 17, 3, 16, rgba[..., [0, 3]].tobytes(), 0x28)
    # colour maps: a first entry other than 0 (Pillow: zeros below it), fewer entries than the
    # indices reach (Pillow's grey ramp beyond), 16-bit entries, RLE indices
    cmap24 = b"".join(bytes([b, g, r]) for r, g, b in zip(pal16[0::3], pal16[1::3], pal16[2::3]))
    c["tga_palette_first_entry_4.tga"] = tga_file(23, 17, 1, 8, (idx16 + 2).tobytes(), 0x20, cmap=cmap24,
                                                  cmap_first=4, cmap_count=16, cmap_depth=24)
    c["tga_palette_short.tga"] = tga_file(23, 17, 1, 8, (idx16 * 3).tobytes(), 0x20, cmap=cmap24[:3 * 7],
                                          cmap_count=7, cmap_depth=24)
    cmap15 = bytes(palette(16, 44))[:32]
    c["tga_palette_16bit_entries.tga"] = tga_file(23, 17, 1, 8, idx16.tobytes(), 0, cmap=cmap15, cmap_count=16,
                                                  cmap_depth=16)
    pidx = [bytes([v]) for v in np.repeat(idx16, 3, axis=1)[:, :29].reshape(-1)]
    c["tga_palette_rle_first_entry_right_to_left.tga"] = tga_file(29, 17, 9, 8, tga_rle(pidx, 29), 0x10, cmap=cmap24,
                                                                  cmap_first=2, cmap_count=16, cmap_depth=24)

    # PNG
    c["png_8bit_rgb.png"] = pil_bytes(im_rgb, "PNG")
    c["png_8bit_rgba.png"] = pil_bytes(im_rgba, "PNG")
    c["png_grey_alpha.png"] = pil_bytes(Image.fromarray(rgba[..., [0, 3]], "LA"), "PNG")
    c["png_palette_trns.png"] = pil_bytes(im_p16, "PNG", transparency=bytes(range(0, 160, 10)))
    c["png_palette_4bit.png"] = pil_bytes(im_p16, "PNG", bits=4)
    c["png_palette_2bit_short.png"] = write_png(indices(23, 17, 4, 29)[..., None], 2, 3, plte=palette(3, 30))
    c["png_palette_1bit.png"] = pil_bytes(_with_palette(idx2, palette(2, 31)), "PNG", bits=1)
    c["png_grey_1bit.png"] = pil_bytes(im_l.convert("1"), "PNG")
    c["png_grey_2bit.png"] = write_png(indices(23, 17, 4, 32)[..., None], 2, 0)
    c["png_grey_4bit.png"] = write_png(indices(23, 17, 16, 33)[..., None], 4, 0)
    c["png_grey_trns.png"] = write_png(grey[..., None], 8, 0, trns=struct.pack(">H", int(grey[0, 0])))
    g16 = (grey.astype(np.uint32) * 257 + rng(34).integers(0, 257, size=grey.shape)) % 65536
    g16[:4] = rng(35).integers(0, 300, size=g16[:4].shape)  # values around 255: mode I clipping
    c["png_16bit_grey.png"] = pil_bytes(Image.fromarray(g16.astype(np.int32), "I"), "PNG")
    c["png_16bit_grey_byhand.png"] = write_png(g16[..., None], 16, 0)
    rgb16 = (rgb.astype(np.uint32) * 257 + rng(36).integers(0, 257, size=rgb.shape)) % 65536
    rgba16 = np.dstack([rgb16, rng(37).integers(0, 65536, size=(17, 23, 1))])
    c["png_16bit_rgb.png"] = write_png(rgb16, 16, 2)
    c["png_16bit_rgba.png"] = write_png(rgba16, 16, 6)
    c["png_16bit_grey_alpha.png"] = write_png(np.dstack([g16, rng(38).integers(0, 65536, size=g16.shape)]), 16, 4)
    big = rgb_array(37, 29, 39)
    c["png_adam7_8bit_rgb.png"] = write_png(big, 8, 2, interlace=True)
    c["png_adam7_8bit_rgba.png"] = write_png(np.dstack([big, indices(37, 29, 256, 40)]), 8, 6, interlace=True)
    c["png_adam7_16bit_rgb.png"] = write_png(rgb16, 16, 2, interlace=True)
    c["png_adam7_16bit_grey.png"] = write_png(g16[..., None], 16, 0, interlace=True)
    c["png_adam7_palette_4bit.png"] = write_png(idx16[..., None], 4, 3, interlace=True, plte=pal16)
    c["png_adam7_grey_1bit_tiny.png"] = write_png(indices(3, 2, 2, 41)[..., None], 1, 0, interlace=True)

    c["png_rgb_trns.png"] = write_png(rgb, 8, 2, trns=struct.pack(">HHH", *(int(v) for v in rgb[0, 0])))
    c["png_rgb_with_plte.png"] = write_png(rgb, 8, 2, plte=palette(4, 45))
    c["png_palette_without_plte.png"] = write_png(indices(23, 17, 256, 46)[..., None], 8, 3)

    # JPEG (Pillow's encoder; the same libjpeg-turbo decodes on both sides)
    c["jpeg_grey.jpg"] = pil_bytes(im_l, "JPEG", quality=90)
    c["jpeg_cmyk.jpg"] = pil_bytes(Image.fromarray(rgba, "CMYK"), "JPEG", quality=90)
    c["jpeg_progressive.jpg"] = pil_bytes(im_rgb, "JPEG", quality=85, progressive=True)

    # WebP (Pillow's encoder, libwebp): Pillow opens every WebP file with WebPAnimDecoder
    c["webp_lossy_q50.webp"] = pil_bytes(im_rgb, "WEBP", quality=50)
    c["webp_lossy_q90.webp"] = pil_bytes(im_rgb, "WEBP", quality=90)
    c["webp_lossless.webp"] = pil_bytes(im_rgb, "WEBP", lossless=True)
    # alpha: lossy (VP8X + ALPH), lossless keeping the colour under transparent pixels (exact) or not
    c["webp_lossy_alpha.webp"] = pil_bytes(im_rgba, "WEBP", quality=80)
    c["webp_lossless_alpha_exact.webp"] = pil_bytes(im_rgba, "WEBP", lossless=True, exact=True)
    c["webp_lossless_alpha.webp"] = pil_bytes(im_rgba, "WEBP", lossless=True)
    c["webp_grey_source.webp"] = pil_bytes(im_l, "WEBP", quality=75)
    c["webp_1x1_lossy.webp"] = pil_bytes(Image.fromarray(rgb_array(1, 1, 51), "RGB"), "WEBP", quality=90)
    c["webp_1x1_lossless.webp"] = pil_bytes(Image.fromarray(rgb_array(1, 1, 52), "RGB"), "WEBP", lossless=True)
    c["webp_17x5_lossy.webp"] = pil_bytes(Image.fromarray(rgb_array(17, 5, 53), "RGB"), "WEBP", quality=70)
    c["webp_333x211_q90.webp"] = pil_bytes(Image.fromarray(rgb_array(333, 211, 54), "RGB"), "WEBP", quality=90)
    c["webp_lossy_sharp_method6.webp"] = pil_bytes(im_rgb, "WEBP", quality=60, method=6)
    # animations: Pillow's encoder (2 frames; lossy, and lossless with alpha), and by hand a first
    # frame smaller than the canvas, at an offset, over a non-zero background colour
    frames = [Image.fromarray(rgb_array(19, 13, s), "RGB") for s in (55, 56)]
    c["webp_animated_2frames.webp"] = pil_bytes(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                                                duration=50, loop=0, quality=90)
    aframes = [Image.fromarray(np.dstack([f, indices(19, 13, 256, 57 + i)]), "RGBA") for i, f in
               enumerate([rgb_array(19, 13, 58), rgb_array(19, 13, 59)])]
    c["webp_animated_lossless_alpha.webp"] = pil_bytes(aframes[0], "WEBP", save_all=True, append_images=aframes[1:],
                                                       duration=40, loop=0, lossless=True)
    first = pil_bytes(Image.fromarray(np.dstack([rgb_array(9, 7, 60), indices(9, 7, 256, 61)]), "RGBA"), "WEBP",
                      lossless=True)
    second = pil_bytes(Image.fromarray(rgb_array(16, 12, 62), "RGB"), "WEBP", quality=80)
    c["webp_animated_offset_first_frame.webp"] = webp_animation((16, 12), [(4, 2, first, 30), (0, 0, second, 30)],
                                                               background=(200, 100, 50, 255))
    return c


def _with_palette(idx, pal):
    im = Image.fromarray(np.ascontiguousarray(idx), "P")
    im.putpalette(pal)
    return im


def main():
    # png_palette_trns.png: Pillow suggests RGBA for byte transparency; the palette file is the point
    warnings.filterwarnings("ignore", "Palette images with Transparency expressed in bytes")
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        os.remove(os.path.join(OUT, name))
    entries = []
    for name, data in sorted(cases().items()):
        path = os.path.join(OUT, name)
        with open(path, "wb") as f:
            f.write(data)
        with Image.open(path) as im:
            fmt, mode = im.format, im.mode
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        entries.append({"file": name, "format": fmt, "mode": mode, "width": int(rgb.shape[1]),
                        "height": int(rgb.shape[0]), "rgb": rgb.tobytes().hex()})
    manifest = {
        "description": "Small images and what Pillow decodes from each with Image.open(path).convert(\"RGB\"): "
                       "rgb is height x width x 3 uint8, rows top to bottom, as a hex string. format and mode "
                       "are Pillow's on open.",
        "made_by": "/usr/bin/python3 tools/make_image_references.py",
        "pillow_version": PIL.__version__,
        "numpy_version": np.__version__,
        "count": len(entries),
        "files": entries,
    }
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"{len(entries)} files, {total} bytes in {OUT} (Pillow {PIL.__version__})")


if __name__ == "__main__":
    main()
