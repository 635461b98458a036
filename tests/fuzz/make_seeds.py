#!/usr/bin/env python3
"""Regenerates the committed seed corpora in tests/fuzz/corpus/<harness>/ (standard library only).

Seeds are small on purpose (the whole corpus stays well under 2 MB): fixture configs copied from
tests/data, tiny generated safetensors files and images of every supported container and mode,
prompts (some not valid UTF-8) and command lines. The small JPEGs in corpus/image/ that are not
fixtures (gen_*.jpg) were written by the JPEG encoder of the tests (tests/support/jpeg_encode) and are kept as they are.

    python3 tests/fuzz/make_seeds.py
"""
import json
import os
import shutil
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.normpath(os.path.join(HERE, "..", "data"))
CORPUS = os.path.join(HERE, "corpus")


def out_dir(harness):
    d = os.path.join(CORPUS, harness)
    os.makedirs(d, exist_ok=True)
    for name in os.listdir(d):
        if not name.startswith("gen_"):  # written by the tests' JPEG encoder, kept
            os.remove(os.path.join(d, name))
    return d


def put(d, name, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def fixture(rel):
    with open(os.path.join(DATA, rel), "rb") as f:
        return f.read()


def compact(rel):
    return json.dumps(json.loads(fixture(rel)), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# safetensors

DTYPES = {"F32": ("<f", 4), "F16": ("<e", 2), "BF16": (None, 2), "I64": ("<q", 8), "U8": ("<B", 1)}


def tensor_bytes(dtype, n, seed):
    fmt, size = DTYPES[dtype]
    vals = [((i * 7 + seed) % 11 - 5) * 0.75 for i in range(n)]
    if dtype == "BF16":
        return b"".join(struct.pack("<f", v)[2:] for v in vals)
    if dtype in ("I64", "U8"):
        return b"".join(struct.pack(fmt, int(v) % 256 if dtype == "U8" else int(v)) for v in vals)
    return b"".join(struct.pack(fmt, v) for v in vals)


def safetensors(tensors, metadata=None, align=True, extra_header=b""):
    """tensors: list of (name, dtype, shape)."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    blob = b""
    for i, (name, dtype, shape) in enumerate(tensors):
        n = 1
        for s in shape:
            n *= s
        data = tensor_bytes(dtype, n, i)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps(header, separators=(",", ":")).encode() + extra_header
    if align:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def make_safetensors():
    d = out_dir("safetensors")
    put(d, "empty_header.safetensors", struct.pack("<Q", 2) + b"{}")
    put(d, "one_f32.safetensors", safetensors([("w", "F32", [2, 3])]))
    put(d, "all_dtypes.safetensors", safetensors(
        [("a.f32", "F32", [3]), ("b.f16", "F16", [2, 2]), ("c.bf16", "BF16", [4]), ("d.i64", "I64", [2]),
         ("e.u8", "U8", [5])], metadata={"format": "pt"}))
    put(d, "misaligned.safetensors", safetensors([("x", "F32", [3]), ("y", "BF16", [3]), ("z", "I64", [1])],
                                                 align=False))
    put(d, "scalar_and_empty.safetensors", safetensors([("s", "F32", []), ("e", "F16", [0, 4]), ("t", "U8", [1])]))
    put(d, "rank4.safetensors", safetensors([("conv.weight", "BF16", [2, 3, 2, 2]), ("conv.bias", "F32", [2])]))
    put(d, "metadata_only.safetensors", safetensors([], metadata={"format": "pt", "note": "\u00e9\u4e2d"}))
    good = safetensors([("w", "F32", [4])])
    put(d, "truncated.safetensors", good[:-3])
    # A fixture shard (bf16, 96 KB) in its real layout.
    put(d, "llama_tiny_shard3.safetensors", fixture("llama-tiny/model/model-00003-of-00003.safetensors"))


# ---------------------------------------------------------------------------------------------
# model.safetensors.index.json (shards written by the harness: see fuzz_checkpoint_index.cpp)

S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


def make_checkpoint_index():
    d = out_dir("checkpoint_index")
    wm = {"vision_model.embeddings.class_embedding": S1, "qformer.layernorm.weight": S1,
          "qformer.layernorm.bias": S1, "language_projection.weight": S2, "language_projection.bias": S2,
          "position_ids": S2, "mask": S2}
    put(d, "full.json", json.dumps({"metadata": {"total_size": 220}, "weight_map": wm}, indent=2))
    put(d, "one_shard.json", json.dumps({"weight_map": {"qformer.layernorm.weight": S1}}))
    put(d, "missing_tensor.json", json.dumps({"weight_map": {"nope": S1}}))
    put(d, "missing_shard.json", json.dumps({"weight_map": {"mask": "model-00003-of-00003.safetensors"}}))
    put(d, "path_escape.json", json.dumps({"weight_map": {"mask": "../" + S2}}))
    put(d, "empty_map.json", json.dumps({"weight_map": {}}))
    put(d, "not_object.json", "[1, 2, 3]")
    put(d, "llama_tiny_index.json", compact("llama-tiny/model/model.safetensors.index.json"))


# ---------------------------------------------------------------------------------------------
# config.json / generation_config.json

def make_config():
    d = out_dir("config")
    for m in ("t5-tiny", "llama-tiny"):
        put(d, m + "_config.json", compact(m + "/model/config.json"))
        put(d, m + "_generation_config.json", compact(m + "/model/generation_config.json"))
    llama = json.loads(fixture("llama-tiny/model/config.json"))
    llama["text_config"]["rope_scaling"] = {"type": "dynamic", "factor": 2.0}
    llama["text_config"]["num_key_value_heads"] = 2
    llama["text_config"]["eos_token_id"] = [2, 3]
    llama["text_config"]["architectures"] = ["LLaMAForCausalLM"]
    llama["text_config"]["max_length"] = 30
    llama["text_config"]["num_beams"] = 2
    put(d, "llama_variant.json", json.dumps(llama, separators=(",", ":")))
    t5 = json.loads(fixture("t5-tiny/model/config.json"))
    t5["text_config"].update({"num_decoder_layers": None, "feed_forward_proj": "relu", "hidden_size": 48,
                              "eos_token_id": None, "early_stopping": "never", "temperature": None})
    t5["vision_config"].update({"image_size": 28, "patch_size": 14, "qkv_bias": False})
    t5["qformer_config"]["cross_attention_frequency"] = 3
    put(d, "t5_variant.json", json.dumps(t5, separators=(",", ":")))
    put(d, "generation_full.json", json.dumps({
        "max_new_tokens": 12, "min_new_tokens": 1, "early_stopping": True, "max_time": 2.5, "do_sample": True,
        "num_beams": 3, "num_beam_groups": 1, "penalty_alpha": None, "temperature": 0.7, "top_k": 0, "top_p": 0.9,
        "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "repetition_penalty": 1.3,
        "length_penalty": -1.0, "no_repeat_ngram_size": 2, "forced_eos_token_id": [1, 2],
        "num_return_sequences": 2, "eos_token_id": [1, 5], "seed": 18446744073709551615}))
    put(d, "minimal_t5.json", '{"text_config":{"model_type":"t5"}}')
    put(d, "minimal_llama.json", '{"text_config":{"model_type":"llama"},"num_query_tokens":1}')


# ---------------------------------------------------------------------------------------------
# preprocessor_config.json

def make_image_processor_config():
    d = out_dir("image_processor_config")
    put(d, "t5_tiny.json", compact("t5-tiny/model/preprocessor_config.json"))
    put(d, "llama_tiny.json", compact("llama-tiny/model/preprocessor_config.json"))
    put(d, "int_size.json", json.dumps({"size": 32, "resample": 0, "image_mean": 0.5, "image_std": [1, 2, 3]}))
    put(d, "nulls.json", json.dumps({"size": None, "resample": None, "image_mean": None, "image_std": None,
                                     "do_rescale": None, "rescale_factor": None, "do_normalize": False}))
    put(d, "no_resize.json", json.dumps({"do_resize": False, "do_rescale": False, "size": {"height": 7, "width": 13},
                                         "resample": 4, "image_processor_type": "BlipImageProcessor"}))
    put(d, "empty.json", "{}")


# ---------------------------------------------------------------------------------------------
# tokenizer configs: class byte, then tokenizer_config.json \0 special_tokens_map.json \0 added_tokens.json

def tok_seed(cls, *parts):
    return bytes([cls]) + b"\0".join(parts)


def make_tokenizer_config():
    d = out_dir("tokenizer_config")
    files = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
    for i, (name, rel, cls) in enumerate((("t5", "t5-tiny/model", 1), ("llama", "llama-tiny/model", 2),
                                          ("qformer", "t5-tiny/model/qformer_tokenizer", 3))):
        parts = [compact(rel + "/" + f) for f in files]
        put(d, name + "_auto", tok_seed(0, *parts))
        put(d, name + "_explicit", tok_seed(cls, *parts))
        # without tokenizer_config.json: the legacy special_tokens_map.json + added_tokens.json route
        put(d, name + "_legacy", tok_seed(cls, b"", parts[1], parts[2]))
    put(d, "bert_settings", tok_seed(3, json.dumps({
        "do_lower_case": False, "strip_accents": True, "tokenize_chinese_chars": False, "never_split": ["[X]"],
        "model_max_length": 1e30, "padding_side": "left", "additional_special_tokens": ["[X]", {"content": "<y>"}]
    }).encode()))
    put(d, "llama_flags", tok_seed(2, json.dumps({
        "add_bos_token": False, "add_eos_token": True, "legacy": False, "pad_token": None,
        "added_tokens_decoder": {"1001": {"content": "<img>", "special": True, "lstrip": True, "rstrip": True,
                                          "single_word": True, "normalized": False}}}).encode()))
    put(d, "t5_extra_ids", tok_seed(1, json.dumps({"extra_ids": 3, "clean_up_tokenization_spaces": None,
                                                   "model_max_length": 7}).encode()))
    put(d, "nothing", bytes([0]))
    opt = "blip2-opt-tiny/model/"
    put(d, "opt_auto", tok_seed(0, compact(opt + "tokenizer_config.json"), compact(opt + "special_tokens_map.json")))
    put(d, "opt_legacy", tok_seed(0, json.dumps({"tokenizer_class": "GPT2Tokenizer"}).encode(),
                                  compact(opt + "special_tokens_map.json")))
    put(d, "opt_settings", tok_seed(0, json.dumps({
        "tokenizer_class": "GPT2TokenizerFast", "add_prefix_space": True, "add_bos_token": False, "errors": "ignore",
        "padding_side": "left", "bos_token": "</s>", "pad_token": "<pad>"}).encode()))


# ---------------------------------------------------------------------------------------------
# prompts

def make_tokenizers():
    d = out_dir("tokenizers")
    prompts = {
        "plain": "What is unusual about this image?",
        "question": "Question: what is the man doing? Short answer:",
        "specials_t5": "<pad> a </s> b <unk> <extra_id_0> c <extra_id_99>d",
        "specials_llama": "<s>[INST] hi [/INST] </s> [PAD]<unk>",
        "specials_bert": "[CLS] Hello [SEP] [MASK] [PAD] [UNK] [DEC] world",
        "unicode": "Caf\u00e9 na\u00efve \u00c5ngstr\u00f6m \u4f60\u597d\u4e16\u754c \u3053\u3093\u306b\u3061\u306f "
                   "\U0001F600 e\u0301 \u2581lead \ufeffbom \u200bzwsp \u03a3\u039f\u03a3",
        "whitespace": "  \t\n multiple   spaces\r\n\u3000ideographic\u00a0nbsp  ",
        "punct": "don't. he said: \"yes\" ; (a,b) -- ... !? @#$%^&*[]{}<>~`|\\/",
        "long_word": "x" * 150 + " " + "antidisestablishmentarianism" * 5,
        "lines": "first line\nsecond <s> line\n\nfourth </s>\n[SEP]",
        "control": "a\x00b\x01c\x7fd\x1be",
        "digits": "3.14159 1,000,000 2024-01-01 0x1F",
    }
    for name, text in prompts.items():
        put(d, name + ".txt", text)
    put(d, "invalid_utf8_lone_continuation.bin", b"abc \x80 def")
    put(d, "invalid_utf8_truncated.bin", b"caf\xc3")
    put(d, "invalid_utf8_overlong.bin", b"\xc0\xaf slash")
    put(d, "invalid_utf8_surrogate.bin", b"\xed\xa0\x80 x")
    put(d, "invalid_utf8_too_big.bin", b"\xf4\x90\x80\x80")
    put(d, "latin1.bin", "na\u00efve caf\u00e9".encode("latin-1"))
    put(d, "ids.bin", bytes(range(256)))


# ---------------------------------------------------------------------------------------------
# byte-level BPE files: vocab.json \0 merges.txt

def make_bpe_files():
    d = out_dir("bpe_files")
    put(d, "opt_fixture", fixture("blip2-opt-tiny/model/vocab.json") + b"\0" +
        fixture("blip2-opt-tiny/model/merges.txt"))
    small = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4, "b": 5, "\u0120": 6, "ab": 7, "\u0120a": 8,
             "\u0120ab": 9, "\u00c3": 10, "\u00a9": 11, "\u00c3\u00a9": 12}
    vocab = json.dumps(small, ensure_ascii=False).encode("utf-8")
    put(d, "small", vocab + b"\0#version: 0.2\na b\n\u0120 a\n\u0120a b\n\u00c3 \u00a9\n".decode(
        "unicode_escape").encode("utf-8"))
    put(d, "small_crlf_no_final_newline", vocab + "\0#version: 0.2\r\na b\r\n\r\n\u0120 a\r\n\u0120a b".encode("utf-8"))
    put(d, "vocab_only", vocab)
    put(d, "repeated_ids_and_keys", b'{"a": 4, "b": 4, "a": 5, "</s>": 2, "<unk>": 3}\0#v\na b\na b\nb a\n')
    put(d, "no_unk", b'{"a": 0, "b": 1}\0#v\na b\n')
    put(d, "bad_line", vocab + b"\0#version: 0.2\na b c\n")
    put(d, "bad_id", b'{"a": -1, "b": 1.5, "c": "2"}\0#v\n')
    put(d, "not_object", b'[["a", 0]]\0#v\n')
    put(d, "empty", b"\0")


# ---------------------------------------------------------------------------------------------
# command lines (NUL-separated argv[1:])

def make_cli_args():
    d = out_dir("cli_args")
    lines = {
        "basic": ["--model", "m", "--image", "a.jpg", "--prompt", "What is this?"],
        "short": ["-m", "m", "-i", "a.png", "-i", "b.png", "-p", "one", "-p", "two", "-q"],
        "generation": ["--model", "m", "--image", "x", "--prompt", "p", "--max-new-tokens", "30", "--min-length", "1",
                       "--num-beams", "5", "--length-penalty", "-1.5", "--repetition-penalty", "1.2",
                       "--num-return-sequences", "3", "--max-length", "64", "--min-new-tokens", "0"],
        "sampling": ["--model", "m", "--image", "x", "--prompt", "p", "--do-sample", "--temperature", "0.7",
                     "--top-k", "50", "--top-p", "0.9", "--seed", "9223372036854775807", "--threads", "2",
                     "--json", "--dump", "out.safetensors"],
        "help": ["--help"],
        "version": ["--version"],
        "bad_number": ["--model", "m", "--image", "x", "--prompt", "p", "--top-p", "1e999"],
        "missing_value": ["--model"],
        "too_many_prompts": ["-m", "m", "-i", "a", "-p", "1", "-p", "2"],
        "unknown": ["--frobnicate", "-x", ""],
        "nan": ["-m", "m", "-i", "a", "-p", "q", "--temperature", "nan", "--seed", "-1"],
        "hex_and_space": ["-m", "m", "-i", "a", "-p", "q", "--num-beams", " 0x10", "--threads", "+3"],
    }
    for name, argv in lines.items():
        put(d, name, b"\0".join(a.encode() for a in argv))


# ---------------------------------------------------------------------------------------------
# images

def png_chunk(cid, body):
    return struct.pack(">I", len(body)) + cid + body + struct.pack(">I", zlib.crc32(cid + body) & 0xFFFFFFFF)


def png(width, height, color, depth, rows, palette=None, interlace=0, filters=(0,), trns=None, extra=()):
    """rows: list of raw (unfiltered) scanline bytes of the full image (or, interlaced, per pass)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace)
    raw = b""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    bpp = max(1, channels * depth // 8)
    prev = None
    for i, row in enumerate(rows):
        if row is None:  # pass boundary
            prev = None
            continue
        f = filters[i % len(filters)]
        raw += bytes([f]) + filter_row(f, row, prev, bpp)
        prev = row
    out = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
    for cid, body in extra:
        out += png_chunk(cid, body)
    if palette is not None:
        out += png_chunk(b"PLTE", palette)
    if trns is not None:
        out += png_chunk(b"tRNS", trns)
    z = zlib.compress(raw, 9)
    half = len(z) // 2
    out += png_chunk(b"IDAT", z[:half]) + png_chunk(b"IDAT", z[half:]) + png_chunk(b"IEND", b"")
    return out


def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def filter_row(f, row, prev, bpp):
    out = bytearray()
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prev[i] if prev is not None else 0
        c = prev[i - bpp] if (prev is not None and i >= bpp) else 0
        pred = [0, a, b, (a + b) >> 1, paeth(a, b, c)][f]
        out.append((x - pred) & 0xFF)
    return bytes(out)


def pack_bits(samples, depth):
    out, acc, n = bytearray(), 0, 0
    for s in samples:
        acc = (acc << depth) | (s & ((1 << depth) - 1))
        n += depth
        if n == 8:
            out.append(acc)
            acc, n = 0, 0
    if n:
        out.append(acc << (8 - n))
    return bytes(out)


def sample_rows(width, height, color, depth):
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    rows = []
    for y in range(height):
        samples = [(x * 37 + y * 101 + c * 53) for x in range(width) for c in range(channels)]
        if depth < 8:
            rows.append(pack_bits(samples, depth))
        elif depth == 8:
            rows.append(bytes(s & 0xFF for s in samples))
        else:
            rows.append(b"".join(struct.pack(">H", (s * 257) & 0xFFFF) for s in samples))
    return rows


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def interlaced_rows(width, height):  # RGB 8-bit
    rows = []
    for x0, y0, dx, dy in ADAM7:
        pw = (width - x0 + dx - 1) // dx if width > x0 else 0
        ph = (height - y0 + dy - 1) // dy if height > y0 else 0
        if pw == 0 or ph == 0:
            continue
        rows.append(None)
        for r in range(ph):
            y = y0 + r * dy
            rows.append(bytes(((x0 + i * dx) * 29 + y * 71 + c * 13) & 0xFF for i in range(pw) for c in range(3)))
    return rows


def gif(width, height, pixels, palette, interlace=False, transparency=None, local=False, frame=None):
    """pixels: width*height palette indices (< 256). LZW with 8-bit codes and a clear every 254 codes."""
    fx, fy, fw, fh = frame or (0, 0, width, height)
    ncolors = len(palette) // 3
    bits = max(1, (ncolors - 1).bit_length())
    size_field = bits - 1
    pal = palette + b"\0" * (3 * (1 << bits) - len(palette))
    out = b"GIF89a" + struct.pack("<HH", width, height)
    if not local:
        out += bytes([0x80 | size_field, 0, 0]) + pal
    else:
        out += bytes([0, 0, 0])
    if transparency is not None:
        out += b"!\xf9\x04" + bytes([1, 0, 0, transparency, 0])
    out += b"!\xfe\x05hello\x00"  # comment extension
    iflags = (0x40 if interlace else 0) | ((0x80 | size_field) if local else 0)
    out += b"," + struct.pack("<HHHH", fx, fy, fw, fh) + bytes([iflags])
    if local:
        out += pal
    order = list(range(fh))
    if interlace:
        order = list(range(0, fh, 8)) + list(range(4, fh, 8)) + list(range(2, fh, 4)) + list(range(1, fh, 2))
    seq = [pixels[y * fw + x] for y in order for x in range(fw)]
    code_size = 8
    clear, eoi = 1 << code_size, (1 << code_size) + 1
    codes, k = [clear], 0
    for p in seq:
        if k == 254:
            codes.append(clear)
            k = 0
        codes.append(p)
        k += 1
    codes.append(eoi)
    acc, n, data = 0, 0, bytearray()
    for c in codes:
        acc |= c << n
        n += code_size + 1
        while n >= 8:
            data.append(acc & 0xFF)
            acc >>= 8
            n -= 8
    if n:
        data.append(acc & 0xFF)
    out += bytes([code_size])
    for i in range(0, len(data), 255):
        blk = data[i:i + 255]
        out += bytes([len(blk)]) + blk
    return out + b"\x00;"


def bmp(width, height, bits, top_down=False, core=False, palette_n=None, bitfields=None):
    stride = ((width * bits + 31) // 32) * 4
    rows = []
    for y in range(height):
        if bits == 24:
            row = bytes(((x * 31 + y * 17 + c * 90) & 0xFF) for x in range(width) for c in range(3))
        elif bits == 32:
            row = bytes(((x * 31 + y * 17 + c * 90) & 0xFF) for x in range(width) for c in range(4))
        elif bits == 16:
            row = b"".join(struct.pack("<H", (x * 1021 + y * 331) & 0xFFFF) for x in range(width))
        else:
            row = pack_bits([(x * 3 + y) for x in range(width)], bits)
        rows.append(row + b"\0" * (stride - len(row)))
    pixel_data = b"".join(rows if top_down else rows[::-1])
    pal = b""
    if bits <= 8:
        n = palette_n if palette_n is not None else (1 << bits)
        entry = 3 if core else 4
        pal = b"".join(bytes([(i * 40) & 0xFF, (i * 90) & 0xFF, (255 - i * 20) & 0xFF] + [0] * (entry - 3))
                       for i in range(n))
    if core:
        dib = struct.pack("<IHHHH", 12, width, height, 1, bits)
    else:
        comp = 3 if bitfields else 0
        dib = struct.pack("<IiiHHIIiiII", 40, width, -height if top_down else height, 1, bits, comp,
                          len(pixel_data), 2835, 2835, palette_n or 0, 0)
        if bitfields:
            dib += struct.pack("<III", *bitfields)
    offset = 14 + len(dib) + len(pal)
    header = b"BM" + struct.pack("<IHHI", offset + len(pixel_data), 0, 0, offset)
    return header + dib + pal + pixel_data


def tga(width, height, imagetype, depth, rle=False, cmap=False, top=False):
    cmap_spec = struct.pack("<HHB", 0, 4, 24) if cmap else b"\0" * 5
    hdr = bytes([0, 1 if cmap else 0, imagetype]) + cmap_spec + struct.pack("<HHHHBB", 0, 0, width, height, depth,
                                                                           0x20 if top else 0)
    cmapdata = bytes([0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255, 255]) if cmap else b""
    bpp = depth // 8
    pixels = [bytes(((x * 50 + y * 30 + c * 70) & 0xFF) for c in range(bpp)) if not cmap else bytes([(x + y) % 4])
              for y in range(height) for x in range(width)]
    if not rle:
        body = b"".join(pixels)
    else:  # one run packet and raw packets of 1 pixel alternately
        body, i = b"", 0
        while i < len(pixels):
            if i + 1 < len(pixels):
                body += bytes([0x81]) + pixels[i]  # run of 2
                i += 2
            else:
                body += bytes([0x00]) + pixels[i]
                i += 1
    return hdr + cmapdata + body


def make_image():
    d = out_dir("image")
    for name in sorted(os.listdir(os.path.join(DATA, "image_processor", "inputs"))):
        put(d, "fixture_" + name, fixture("image_processor/inputs/" + name))
    put(d, "fixture_Confusing-Pictures.jpg", fixture("images/Confusing-Pictures.jpg"))
    # PNG: every colour type and bit depth Pillow reads, the five filters, Adam7.
    for color, depths in ((0, (1, 2, 4, 8, 16)), (2, (8, 16)), (3, (1, 2, 4, 8)), (4, (8, 16)), (6, (8, 16))):
        for depth in depths:
            w, h = 7, 5
            pal = bytes((i * 7) & 0xFF for i in range(3 * 20)) if color == 3 else None
            put(d, "png_c%d_d%d.png" % (color, depth),
                png(w, h, color, depth, sample_rows(w, h, color, depth), palette=pal, filters=(0, 1, 2, 3, 4)))
    put(d, "png_adam7.png", png(11, 9, 2, 8, interlaced_rows(11, 9), interlace=1, filters=(4, 1, 2)))
    put(d, "png_trns_text.png", png(3, 2, 3, 8, sample_rows(3, 2, 3, 8), palette=b"\xff\0\0\0\xff\0\0\0\xff",
                                    trns=b"\x00\x80", extra=((b"tEXt", b"Comment\0hi"),)))
    # GIF: global / local palette, interlaced, transparency, frame offset growing the canvas.
    put(d, "gif_global.gif", gif(6, 4, [(i * 3) % 8 for i in range(24)], bytes(range(24))))
    put(d, "gif_interlaced.gif", gif(5, 11, [i % 4 for i in range(55)], b"\0\0\0\xff\0\0\0\xff\0\0\0\xff",
                                     interlace=True, transparency=2))
    put(d, "gif_local_offset.gif", gif(4, 4, [i % 2 for i in range(9)], b"\x10\x20\x30\xf0\xe0\xd0", local=True,
                                       frame=(2, 3, 3, 3)))
    # BMP: 1/4/8-bit palettes (short palette, core header), 16-bit 555 / 565, 24 / 32-bit, top-down.
    put(d, "bmp_1.bmp", bmp(9, 3, 1))
    put(d, "bmp_4_short_palette.bmp", bmp(5, 4, 4, palette_n=6))
    put(d, "bmp_8_topdown.bmp", bmp(6, 3, 8, top_down=True, palette_n=12))
    put(d, "bmp_8_core.bmp", bmp(4, 2, 8, core=True, palette_n=256))
    put(d, "bmp_16.bmp", bmp(5, 3, 16))
    put(d, "bmp_16_565.bmp", bmp(5, 3, 16, bitfields=(0xF800, 0x7E0, 0x1F)))
    put(d, "bmp_24.bmp", bmp(5, 3, 24))
    put(d, "bmp_32_topdown.bmp", bmp(3, 4, 32, top_down=True))
    # PNM: P1-P6, comments, maxval 15 / 255 / 1000 / 65535.
    put(d, "p1.pbm", b"P1\n# bitmap\n5 3\n10101\n0 1 0 1 0\n11111\n")
    put(d, "p2.pgm", b"P2 3 2 15\n0 5 10\n15 7 # comment\n 1\n")
    put(d, "p3.ppm", b"P3\n2 2\n1000\n0 500 1000  1000 0 0\n0 1000 0  0 0 1000\n")
    put(d, "p4.pbm", b"P4\n10 2\n" + bytes([0b10101010, 0b11000000, 0b01010101, 0b00000000]))
    put(d, "p5_16bit.pgm", b"P5\n3 1\n65535\n" + struct.pack(">HHH", 0, 300, 65535))
    put(d, "p5.pgm", b"P5 4 2 255\n" + bytes(range(0, 256, 32)))
    put(d, "p6.ppm", b"P6\n2 2\n255\n" + bytes(range(12)))
    put(d, "p6_maxval_100.ppm", b"P6\n2 1\n100\n" + bytes([0, 50, 100, 101, 7, 99]))
    # TGA: true colour, RLE, grey, colour-mapped.
    put(d, "tga_24.tga", tga(4, 3, 2, 24))
    put(d, "tga_32_rle_top.tga", tga(5, 2, 10, 32, rle=True, top=True))
    put(d, "tga_grey.tga", tga(3, 3, 3, 8))
    put(d, "tga_cmap.tga", tga(4, 2, 1, 8, cmap=True))
    # WebP, written by Pillow (tools/make_image_references.py): lossy, lossless, lossy with alpha
    # (VP8X + ALPH), an animation whose first frame is smaller than the canvas.
    for name in ("webp_lossy_q50.webp", "webp_1x1_lossless.webp", "webp_lossy_alpha.webp",
                 "webp_animated_offset_first_frame.webp"):
        put(d, name, fixture("images/pillow/" + name))


# ---------------------------------------------------------------------------------------------
# libFuzzer dictionaries

JSON_TOKENS = ['"{"', '"}"', '"["', '"]"', '":"', '","', '"true"', '"false"', '"null"', '"0"', '"-1"', '"1.5"',
               '"1e308"', '"-0.0"', '"18446744073709551615"', '"9223372036854775807"', '"-9223372036854775808"',
               '"\\\\u0000"', '"\\\\ud83d\\\\ude00"']


def dict_file(name, tokens, keys=()):
    d = os.path.join(HERE, "dict")
    os.makedirs(d, exist_ok=True)
    lines = list(tokens) + ['"\\"%s\\""' % k for k in keys]
    with open(os.path.join(d, name + ".dict"), "w") as f:
        f.write("# libFuzzer dictionary for fuzz_%s (generated by make_seeds.py)\n" % name)
        f.write("\n".join(lines) + "\n")


CONFIG_KEYS = sorted({
    "model_type", "instructblip", "vision_config", "qformer_config", "text_config", "t5", "llama", "num_query_tokens",
    "architectures", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
    "patch_size", "hidden_act", "layer_norm_eps", "qkv_bias", "vocab_size", "max_position_embeddings",
    "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "cross_attention_frequency",
    "encoder_hidden_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
    "relative_attention_num_buckets", "relative_attention_max_distance", "feed_forward_proj", "gated-gelu",
    "dense_act_fn", "is_gated_act", "num_key_value_heads", "rope_theta", "rope_scaling", "type", "factor",
    "linear", "dynamic", "pretraining_tp", "tie_word_embeddings", "is_encoder_decoder", "use_cache",
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "early_stopping", "never", "num_beams",
    "num_beam_groups", "do_sample", "temperature", "top_k", "top_p", "typical_p", "repetition_penalty",
    "length_penalty", "no_repeat_ngram_size", "forced_eos_token_id", "forced_bos_token_id",
    "num_return_sequences", "seed", "max_time", "penalty_alpha"})
PREPROC_KEYS = ["size", "height", "width", "resample", "do_resize", "do_rescale", "rescale_factor", "do_normalize",
                "image_mean", "image_std", "do_convert_rgb", "image_processor_type", "BlipImageProcessor"]
TOKENIZER_KEYS = ["tokenizer_class", "T5Tokenizer", "LlamaTokenizer", "BertTokenizer", "T5TokenizerFast",
                  "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
                  "additional_special_tokens", "added_tokens_decoder", "content", "lstrip", "rstrip", "single_word",
                  "normalized", "special", "padding_side", "truncation_side", "left", "right", "model_max_length",
                  "clean_up_tokenization_spaces", "legacy", "extra_ids", "add_bos_token", "add_eos_token",
                  "do_lower_case", "do_basic_tokenize", "tokenize_chinese_chars", "strip_accents", "never_split",
                  "GPT2Tokenizer", "GPT2TokenizerFast", "add_prefix_space", "errors", "replace", "ignore", "strict",
                  "<|endoftext|>",
                  "<s>", "</s>", "<unk>", "<pad>", "<extra_id_0>", "[CLS]", "[SEP]", "[MASK]", "[PAD]", "[DEC]"]


def make_dicts():
    dict_file("config", JSON_TOKENS, CONFIG_KEYS)
    dict_file("image_processor_config", JSON_TOKENS, PREPROC_KEYS)
    dict_file("tokenizer_config", JSON_TOKENS + ['"\\x00"'], TOKENIZER_KEYS)
    dict_file("checkpoint_index", JSON_TOKENS, ["weight_map", "metadata", "total_size", S1, S2, "..", "/",
                                                "model.safetensors.index.json", "mask", "position_ids"])
    dict_file("safetensors", JSON_TOKENS + ['"\\x08\\x00\\x00\\x00\\x00\\x00\\x00\\x00"'],
              ["dtype", "shape", "data_offsets", "__metadata__", "F32", "F16", "BF16", "I64", "U8", "F64"])
    dict_file("image", ['"\\x89PNG\\x0d\\x0a\\x1a\\x0a"', '"IHDR"', '"IDAT"', '"PLTE"', '"IEND"', '"tRNS"',
                        '"GIF89a"', '"GIF87a"', '"!\\xf9\\x04"', '"BM"', '"P1"', '"P4"', '"P5"', '"P6"',
                        '"\\xff\\xd8\\xff"', '"\\xff\\xc0"', '"\\xff\\xc2"', '"\\xff\\xc4"', '"\\xff\\xda"',
                        '"\\xff\\xdb"', '"\\xff\\xd9"', '"\\xff\\xdd"', '"Adobe"', '"\\xff\\xff\\xff\\x7f"',
                        '"RIFF"', '"WEBP"', '"VP8 "', '"VP8L"', '"VP8X"', '"ALPH"', '"ANIM"', '"ANMF"',
                        '"\\x9d\\x01\\x2a"'])
    dict_file("cli_args", ['"\\x00"', '"--model"', '"--image"', '"--prompt"', '"--max-new-tokens"',
                           '"--max-length"', '"--min-length"', '"--min-new-tokens"', '"--num-beams"',
                           '"--length-penalty"', '"--repetition-penalty"', '"--num-return-sequences"',
                           '"--do-sample"', '"--temperature"', '"--top-k"', '"--top-p"', '"--seed"', '"--threads"',
                           '"--json"', '"--dump"', '"--quiet"', '"--help"', '"--version"', '"-m"', '"-i"', '"-p"',
                           '"-q"', '"-h"', '"inf"', '"nan"', '"1e308"', '"-0"', '"0x"', '"9223372036854775808"'])
    dict_file("bpe_files", JSON_TOKENS + ['"\\x00"', '"#version: 0.2\\x0a"', '"\\x0a"', '"\\x0d\\x0a"',
                                         '"\\xc4\\xa0"', '"\\xc4\\x8a"', '"\\xc3\\xa9"', '" "'],
              ["</s>", "<unk>", "<pad>", "<s>", "a", "ab"])
    dict_file("tokenizers", ['"<s>"', '"</s>"', '"<unk>"', '"<pad>"', '"<extra_id_0>"', '"<extra_id_99>"',
                             '"[CLS]"', '"[SEP]"', '"[MASK]"', '"[PAD]"', '"[UNK]"', '"[DEC]"', '"[PAD]"',
                             '"\\xe2\\x96\\x81"', '"\\xc3\\xa9"', '"\\xcc\\x81"', '"\\xe4\\xbd\\xa0"',
                             '"\\xf0\\x9f\\x98\\x80"', '"\\xe3\\x80\\x80"', '"\\xc2\\xa0"', '"\\xce\\xa3"', '"##"'])


if __name__ == "__main__":
    make_safetensors()
    make_checkpoint_index()
    make_config()
    make_image_processor_config()
    make_tokenizer_config()
    make_tokenizers()
    make_bpe_files()
    make_cli_args()
    make_image()
    make_dicts()
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(CORPUS) for f in fs)
    print("corpus: %d files, %d bytes" % (sum(len(fs) for _, _, fs in os.walk(CORPUS)), total))
