#!/usr/bin/python3
"""PyTorch CPU reference timings for instructblip.cpp.

Plain-torch (no transformers) re-implementations of the InstructBLIP building blocks at the
HuggingFace shapes (transformers 4.36.2 semantics), with random weights, timed under
torch.inference_mode():

  vision      EVA ViT-g/14 (InstructBlipVisionModel), 224x224 image, batch 1      -> ms, GFLOPS
  qformer     12-layer Q-Former (32 queries + 16 text tokens) + language_projection -> ms, GFLOPS
  t5_step     Flan-T5-XL decoder step with KV cache (~50 cached positions)         -> ms/token, GB/s
  llama_step  Vicuna-7B decoder step with KV cache (~60 cached positions)          -> ms/token, GB/s
  e2e         vision -> Q-Former -> T5-XL encoder -> 20 greedy decoder tokens      -> per-stage ms
  --bulk      16 images captioned in batches of 8: batched vision -> Q-Former -> T5-XL encoder ->
              N batched greedy decoder steps (bf16)                               -> images/minute,
              per-stage ms; one JSON line

Threading: OpenBLAS (pthread build) with 2 threads does the f32 GEMMs; torch's own intra-op pool
is set to 1 thread (--torch-threads). The script re-executes itself with LD_LIBRARY_PATH and
OPENBLAS_NUM_THREADS set if they are missing, because both must be in place before torch loads.

Decode steps (t5_step, llama_step, e2e decode) do matrix x vector products. HF calls F.linear,
which torch 1.13 sends to BLAS gemm with M=1 (OpenBLAS 0.3.21 does not forward that to gemv);
torch.mv uses gemv. --decode-linear times either or both (default both) on the same weights.

Usage: /usr/bin/python3 bench/pytorch_reference.py --help   (see bench/pytorch_reference.md)
"""

import os
import sys

OPENBLAS_DIR = "/usr/lib/x86_64-linux-gnu/openblas-pthread"
OPENBLAS_THREADS = "2"


def _ensure_blas_env():
    ld = os.environ.get("LD_LIBRARY_PATH", "")
    ok = OPENBLAS_DIR in ld.split(":") and os.environ.get("OPENBLAS_NUM_THREADS") == OPENBLAS_THREADS
    if ok:
        return
    if os.environ.get("_PTREF_REEXECED") == "1":
        print("warning: could not establish the OpenBLAS environment; continuing", file=sys.stderr)
        return
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = OPENBLAS_DIR + (":" + ld if ld else "")
    env["OPENBLAS_NUM_THREADS"] = OPENBLAS_THREADS
    env["_PTREF_REEXECED"] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)


if __name__ == "__main__":
    _ensure_blas_env()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}
ALL_BENCHES = ["vision", "qformer", "t5_step", "llama_step", "e2e"]

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def W(*shape, dtype, std=0.02):
    """Random weight, uniform with standard deviation `std` (fast; no nn.Module default init)."""
    a = std * math.sqrt(3.0)
    return torch.empty(shape, dtype=dtype).uniform_(-a, a)


def ones(n, dtype):
    return torch.ones(n, dtype=dtype)


def zeros(n, dtype):
    return torch.zeros(n, dtype=dtype)


# Single-row (decode) linears: "linear" = F.linear as HF does (torch 1.13 sends M=1 to BLAS gemm);
# "mv" = torch.mv (BLAS gemv), usually faster for a weight-streaming decode step. --decode-linear.
DECODE_LINEAR = {"mode": "linear"}


def lin1(x, w):
    """x [1, 1, in] @ w^T for decode steps, per --decode-linear."""
    if DECODE_LINEAR["mode"] == "mv":
        return torch.mv(w, x.reshape(-1)).view(1, 1, -1)
    return F.linear(x, w)


def nbytes(t):
    return t.numel() * t.element_size()


def time_fn(fn, reps, warmup=1):
    """Return (median_ms, samples_ms, last_result) of `fn()`."""
    out = None
    for _ in range(warmup):
        out = fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples), samples, out


def free():
    gc.collect()


def rss_gb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return float("nan")


LOG = {"stream": None}  # None: stdout; --bulk logs to stderr so that stdout is its one JSON line


def log(msg):
    print(msg, file=LOG["stream"] or sys.stdout, flush=True)


# --------------------------------------------------------------------------------------------
# EVA ViT-g/14 (InstructBlipVisionModel)
# --------------------------------------------------------------------------------------------

VIS = dict(image=224, patch=14, hidden=1408, heads=16, mlp=6144, layers=39, eps=1e-6)


class Vision:
    def __init__(self, layers, dtype):
        D, P, M = VIS["hidden"], VIS["patch"], VIS["mlp"]
        self.D, self.H = D, VIS["heads"]
        self.hd = D // self.H
        self.scale = self.hd ** -0.5
        self.n_patches = (VIS["image"] // P) ** 2
        self.N = self.n_patches + 1
        self.patch_w = W(D, 3, P, P, dtype=dtype)
        self.patch_b = W(D, dtype=dtype)
        self.cls = W(1, 1, D, dtype=dtype)
        self.pos = W(1, self.N, D, dtype=dtype)
        self.layers = []
        for _ in range(layers):
            q_bias, v_bias = W(D, dtype=dtype), W(D, dtype=dtype)
            self.layers.append(dict(
                ln1_w=ones(D, dtype), ln1_b=zeros(D, dtype),
                qkv_w=W(3 * D, D, dtype=dtype),
                # HF: qkv_bias = cat(q_bias, zeros_like(v_bias), v_bias) -- k has no bias
                qkv_b=torch.cat([q_bias, torch.zeros_like(v_bias), v_bias]),
                proj_w=W(D, D, dtype=dtype), proj_b=W(D, dtype=dtype),
                ln2_w=ones(D, dtype), ln2_b=zeros(D, dtype),
                fc1_w=W(M, D, dtype=dtype), fc1_b=W(M, dtype=dtype),
                fc2_w=W(D, M, dtype=dtype), fc2_b=W(D, dtype=dtype),
            ))
        self.post_w, self.post_b = ones(D, dtype), zeros(D, dtype)

    def __call__(self, pixel_values):
        D, H, hd, eps = self.D, self.H, self.hd, VIS["eps"]
        B = pixel_values.shape[0]
        x = F.conv2d(pixel_values, self.patch_w, self.patch_b, stride=VIS["patch"])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(B, -1, -1), x], dim=1) + self.pos
        N = x.shape[1]
        for l in self.layers:
            h = F.layer_norm(x, (D,), l["ln1_w"], l["ln1_b"], eps)
            qkv = F.linear(h, l["qkv_w"], l["qkv_b"]).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            a = torch.matmul(q, k.transpose(-1, -2)) * self.scale
            a = torch.softmax(a, dim=-1)
            o = torch.matmul(a, v).permute(0, 2, 1, 3).reshape(B, N, D)
            x = x + F.linear(o, l["proj_w"], l["proj_b"])
            h = F.layer_norm(x, (D,), l["ln2_w"], l["ln2_b"], eps)
            h = F.gelu(F.linear(h, l["fc1_w"], l["fc1_b"]))  # exact erf GELU
            x = x + F.linear(h, l["fc2_w"], l["fc2_b"])
        return F.layer_norm(x, (D,), self.post_w, self.post_b, eps)

    def flops(self):
        D, M, N, P = self.D, VIS["mlp"], self.N, VIS["patch"]
        macs = self.n_patches * 3 * P * P * D  # patch conv
        per_layer = N * D * 3 * D + N * N * D * 2 + N * D * D + 2 * N * D * M
        return 2 * (macs + len(self.layers) * per_layer)


# --------------------------------------------------------------------------------------------
# Q-Former (InstructBlipQFormerModel) + language_projection
# --------------------------------------------------------------------------------------------

QF = dict(hidden=768, heads=12, ffn=3072, layers=12, eps=1e-12, vocab=30523, max_pos=512,
          queries=32, text=16, enc_hidden=1408, enc_len=257, cross_freq=2, lm_hidden=2048)


class QFormer:
    def __init__(self, dtype):
        D, Fh, E = QF["hidden"], QF["ffn"], QF["enc_hidden"]
        self.D, self.H = D, QF["heads"]
        self.hd = D // self.H
        self.word = W(QF["vocab"], D, dtype=dtype)
        self.posemb = W(QF["max_pos"], D, dtype=dtype)
        self.emb_ln_w, self.emb_ln_b = ones(D, dtype), zeros(D, dtype)
        self.query_tokens = W(1, QF["queries"], D, dtype=dtype)
        self.layers = []
        for i in range(QF["layers"]):
            l = dict(
                q_w=W(D, D, dtype=dtype), q_b=W(D, dtype=dtype),
                k_w=W(D, D, dtype=dtype), k_b=W(D, dtype=dtype),
                v_w=W(D, D, dtype=dtype), v_b=W(D, dtype=dtype),
                ao_w=W(D, D, dtype=dtype), ao_b=W(D, dtype=dtype),
                aln_w=ones(D, dtype), aln_b=zeros(D, dtype),
                # text FFN (intermediate / output)
                i_w=W(Fh, D, dtype=dtype), i_b=W(Fh, dtype=dtype),
                o_w=W(D, Fh, dtype=dtype), o_b=W(D, dtype=dtype),
                oln_w=ones(D, dtype), oln_b=zeros(D, dtype),
                # query FFN (intermediate_query / output_query)
                iq_w=W(Fh, D, dtype=dtype), iq_b=W(Fh, dtype=dtype),
                oq_w=W(D, Fh, dtype=dtype), oq_b=W(D, dtype=dtype),
                oqln_w=ones(D, dtype), oqln_b=zeros(D, dtype),
            )
            if i % QF["cross_freq"] == 0:
                l.update(
                    cq_w=W(D, D, dtype=dtype), cq_b=W(D, dtype=dtype),
                    ck_w=W(D, E, dtype=dtype), ck_b=W(D, dtype=dtype),
                    cv_w=W(D, E, dtype=dtype), cv_b=W(D, dtype=dtype),
                    co_w=W(D, D, dtype=dtype), co_b=W(D, dtype=dtype),
                    cln_w=ones(D, dtype), cln_b=zeros(D, dtype),
                )
            self.layers.append(l)
        self.proj_w = W(QF["lm_hidden"], D, dtype=dtype)
        self.proj_b = W(QF["lm_hidden"], dtype=dtype)

    def _heads(self, t):
        B, n, _ = t.shape
        return t.view(B, n, self.H, self.hd).transpose(1, 2)

    def _attn(self, hq, hkv, l, p):
        q = self._heads(F.linear(hq, l[p + "q_w"], l[p + "q_b"]))
        k = self._heads(F.linear(hkv, l[p + "k_w"], l[p + "k_b"]))
        v = self._heads(F.linear(hkv, l[p + "v_w"], l[p + "v_b"]))
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.hd)
        # attention masks are all ones here (extended mask is 0): not added
        o = torch.matmul(torch.softmax(s, dim=-1), v)
        B, _, n, _ = o.shape
        return o.transpose(1, 2).reshape(B, n, self.D)

    def __call__(self, input_ids, image_embeds):
        """Returns language_projection(query outputs): [B, 32, 2048]."""
        D, eps, nq = self.D, QF["eps"], QF["queries"]
        B, T = input_ids.shape
        e = F.embedding(input_ids, self.word) + self.posemb[:T].unsqueeze(0)
        x = torch.cat([self.query_tokens.expand(B, -1, -1), e], dim=1)
        x = F.layer_norm(x, (D,), self.emb_ln_w, self.emb_ln_b, eps)
        for l in self.layers:
            a = self._attn(x, x, l, "")
            a = F.layer_norm(F.linear(a, l["ao_w"], l["ao_b"]) + x, (D,), l["aln_w"], l["aln_b"], eps)
            qa = a[:, :nq]
            if "cq_w" in l:
                c = self._attn(qa, image_embeds, l, "c")
                qa = F.layer_norm(F.linear(c, l["co_w"], l["co_b"]) + qa, (D,), l["cln_w"], l["cln_b"], eps)
            hq = F.linear(F.gelu(F.linear(qa, l["iq_w"], l["iq_b"])), l["oq_w"], l["oq_b"])
            qo = F.layer_norm(hq + qa, (D,), l["oqln_w"], l["oqln_b"], eps)
            ta = a[:, nq:]
            ht = F.linear(F.gelu(F.linear(ta, l["i_w"], l["i_b"])), l["o_w"], l["o_b"])
            to = F.layer_norm(ht + ta, (D,), l["oln_w"], l["oln_b"], eps)
            x = torch.cat([qo, to], dim=1)
        return F.linear(x[:, :nq], self.proj_w, self.proj_b)

    def flops(self):
        D, Fh, E = self.D, QF["ffn"], QF["enc_hidden"]
        nq, nt, ne = QF["queries"], QF["text"], QF["enc_len"]
        n = nq + nt
        macs = 0
        for l in self.layers:
            macs += 4 * n * D * D + 2 * n * n * D  # self-attention
            if "cq_w" in l:
                macs += 2 * nq * D * D + 2 * ne * E * D + 2 * nq * ne * D  # cross-attention
            macs += 2 * n * D * Fh  # FFN (query rows + text rows)
        macs += nq * D * QF["lm_hidden"]
        return 2 * macs


# --------------------------------------------------------------------------------------------
# Flan-T5-XL
# --------------------------------------------------------------------------------------------

T5 = dict(d_model=2048, heads=32, d_kv=64, d_ff=5120, layers=24, vocab=32128, eps=1e-6,
          buckets=32, max_distance=128, enc_len=48, dec_start=0)


def t5_rms(x, w, eps=T5["eps"]):
    var = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(var + eps)
    if w.dtype in (torch.float16, torch.bfloat16):
        x = x.to(w.dtype)
    return w * x


def t5_bucket(rel, bidirectional, num_buckets=T5["buckets"], max_distance=T5["max_distance"]):
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets += (rel > 0).to(torch.long) * num_buckets
        rel = torch.abs(rel)
    else:
        rel = -torch.min(rel, torch.zeros_like(rel))
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    large = max_exact + (torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, rel, large)


def t5_bias(table, q_pos, k_len, bidirectional):
    """[1, H, len(q_pos), k_len] relative position bias from a [buckets, H] table."""
    rel = torch.arange(k_len, dtype=torch.long)[None, :] - q_pos[:, None]
    return F.embedding(t5_bucket(rel, bidirectional), table).permute(2, 0, 1).unsqueeze(0)


class T5Model:
    """Flan-T5-XL. encoder=False builds only what a decoder step streams (no encoder, and no
    cross-attention K/V projections: their output, the cross K/V cache, is made up directly)."""

    def __init__(self, layers, dtype, encoder):
        D, Fh = T5["d_model"], T5["d_ff"]
        I = T5["heads"] * T5["d_kv"]
        self.dtype = dtype
        self.shared = W(T5["vocab"], D, dtype=dtype, std=1.0)
        self.enc = None
        if encoder:
            self.enc = [dict(ln0=ones(D, dtype), q=W(I, D, dtype=dtype), k=W(I, D, dtype=dtype),
                             v=W(I, D, dtype=dtype), o=W(D, I, dtype=dtype), ln1=ones(D, dtype),
                             wi0=W(Fh, D, dtype=dtype), wi1=W(Fh, D, dtype=dtype),
                             wo=W(D, Fh, dtype=dtype)) for _ in range(layers)]
            self.enc_rel = W(T5["buckets"], T5["heads"], dtype=dtype, std=1.0)
            self.enc_ln = ones(D, dtype)
        self.dec = []
        for _ in range(layers):
            l = dict(ln0=ones(D, dtype), q=W(I, D, dtype=dtype), k=W(I, D, dtype=dtype),
                     v=W(I, D, dtype=dtype), o=W(D, I, dtype=dtype),
                     ln1=ones(D, dtype), cq=W(I, D, dtype=dtype), co=W(D, I, dtype=dtype),
                     ln2=ones(D, dtype), wi0=W(Fh, D, dtype=dtype), wi1=W(Fh, D, dtype=dtype),
                     wo=W(D, Fh, dtype=dtype))
            if encoder:
                l.update(ck=W(I, D, dtype=dtype), cv=W(I, D, dtype=dtype))
            self.dec.append(l)
        self.dec_rel = W(T5["buckets"], T5["heads"], dtype=dtype, std=1.0)
        self.dec_ln = ones(D, dtype)
        self.lm_head = W(T5["vocab"], D, dtype=dtype)  # untied (Flan-T5): no d_model**-0.5 scaling

    # -- pieces ----------------------------------------------------------------------------
    @staticmethod
    def _heads(t):
        B, n, _ = t.shape
        return t.view(B, n, T5["heads"], T5["d_kv"]).transpose(1, 2)

    @staticmethod
    def _merge(o):
        B, H, n, d = o.shape
        return o.transpose(1, 2).reshape(B, n, H * d)

    @staticmethod
    def _softmax(s):
        return torch.softmax(s.float(), dim=-1).type_as(s)  # as HF T5Attention

    @staticmethod
    def _ffn(x, l, lin=F.linear):
        h = F.gelu(lin(x, l["wi0"]), approximate="tanh") * lin(x, l["wi1"])  # gelu_new
        return lin(h, l["wo"])

    def step_weight_bytes(self):
        """Bytes of decoder-layer matrices streamed by one step (not cross K/V) + lm_head."""
        keys = ("q", "k", "v", "o", "cq", "co", "wi0", "wi1", "wo")
        return sum(nbytes(l[k]) for l in self.dec for k in keys) + nbytes(self.lm_head)

    # -- encoder -----------------------------------------------------------------------------
    def encode(self, inputs_embeds):
        x = inputs_embeds
        n = x.shape[1]
        bias = t5_bias(self.enc_rel, torch.arange(n), n, bidirectional=True)
        for l in self.enc:
            h = t5_rms(x, l["ln0"])
            q, k, v = (self._heads(F.linear(h, l[w])) for w in ("q", "k", "v"))
            s = torch.matmul(q, k.transpose(-1, -2)) + bias  # T5: no 1/sqrt(d) scaling
            x = x + F.linear(self._merge(torch.matmul(self._softmax(s), v)), l["o"])
            x = x + self._ffn(t5_rms(x, l["ln1"]), l)
        return t5_rms(x, self.enc_ln)

    def cross_kv(self, enc_out):
        return [(self._heads(F.linear(enc_out, l["ck"])), self._heads(F.linear(enc_out, l["cv"])))
                for l in self.dec]

    def random_cross_kv(self, n):
        shape = (1, T5["heads"], n, T5["d_kv"])
        return [(torch.randn(shape).to(self.dtype), torch.randn(shape).to(self.dtype)) for _ in self.dec]

    def new_cache(self, max_len, filled=0, batch=1):
        shape = (batch, T5["heads"], max_len, T5["d_kv"])
        cache = [(torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype)) for _ in self.dec]
        if filled:
            for k, v in cache:
                k[:, :, :filled].normal_()
                v[:, :, :filled].normal_()
        return cache

    # -- one decoder step ----------------------------------------------------------------------
    def step(self, token, pos, cache, cross):
        """token: [1, 1] long; writes position `pos` into `cache`; returns next token [1, 1]."""
        x = F.embedding(token, self.shared)
        bias = t5_bias(self.dec_rel, torch.tensor([pos]), pos + 1, bidirectional=False)
        for l, (kc, vc), (ck, cv) in zip(self.dec, cache, cross):
            h = t5_rms(x, l["ln0"])
            q, k, v = (self._heads(lin1(h, l[w])) for w in ("q", "k", "v"))
            kc[:, :, pos:pos + 1] = k
            vc[:, :, pos:pos + 1] = v
            s = torch.matmul(q, kc[:, :, :pos + 1].transpose(-1, -2)) + bias
            x = x + lin1(self._merge(torch.matmul(self._softmax(s), vc[:, :, :pos + 1])), l["o"])
            h = t5_rms(x, l["ln1"])
            q = self._heads(lin1(h, l["cq"]))
            s = torch.matmul(q, ck.transpose(-1, -2))  # cross-attention: no position bias
            x = x + lin1(self._merge(torch.matmul(self._softmax(s), cv)), l["co"])
            x = x + self._ffn(t5_rms(x, l["ln2"]), l, lin1)
        logits = lin1(t5_rms(x, self.dec_ln), self.lm_head)
        return logits.argmax(-1)

    def step_batch(self, tokens, pos, cache, cross):
        """Batched greedy step: tokens [B, 1] long (every row at position `pos`, no padding); the
        linears are F.linear on B rows (one GEMM per matrix, as HF does); returns next tokens [B, 1]."""
        x = F.embedding(tokens, self.shared)
        bias = t5_bias(self.dec_rel, torch.tensor([pos]), pos + 1, bidirectional=False)
        for l, (kc, vc), (ck, cv) in zip(self.dec, cache, cross):
            h = t5_rms(x, l["ln0"])
            q, k, v = (self._heads(F.linear(h, l[w])) for w in ("q", "k", "v"))
            kc[:, :, pos:pos + 1] = k
            vc[:, :, pos:pos + 1] = v
            s = torch.matmul(q, kc[:, :, :pos + 1].transpose(-1, -2)) + bias
            x = x + F.linear(self._merge(torch.matmul(self._softmax(s), vc[:, :, :pos + 1])), l["o"])
            h = t5_rms(x, l["ln1"])
            q = self._heads(F.linear(h, l["cq"]))
            s = torch.matmul(q, ck.transpose(-1, -2))
            x = x + F.linear(self._merge(torch.matmul(self._softmax(s), cv)), l["co"])
            x = x + self._ffn(t5_rms(x, l["ln2"]), l)
        logits = F.linear(t5_rms(x, self.dec_ln), self.lm_head)
        return logits.argmax(-1)


# --------------------------------------------------------------------------------------------
# Vicuna-7B (LLaMA)
# --------------------------------------------------------------------------------------------

LL = dict(hidden=4096, heads=32, ffn=11008, layers=32, vocab=32000, eps=1e-6, theta=10000.0)


def llama_rms(x, w, eps=LL["eps"]):
    dt = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return w * x.to(dt)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Llama:
    def __init__(self, layers, dtype, max_pos=512):
        D, Fh = LL["hidden"], LL["ffn"]
        self.dtype = dtype
        self.H, self.hd = LL["heads"], D // LL["heads"]
        self.embed = W(LL["vocab"], D, dtype=dtype)
        self.layers = [dict(ln0=ones(D, dtype), q=W(D, D, dtype=dtype), k=W(D, D, dtype=dtype),
                            v=W(D, D, dtype=dtype), o=W(D, D, dtype=dtype), ln1=ones(D, dtype),
                            gate=W(Fh, D, dtype=dtype), up=W(Fh, D, dtype=dtype),
                            down=W(D, Fh, dtype=dtype)) for _ in range(layers)]
        self.norm = ones(D, dtype)
        self.lm_head = W(LL["vocab"], D, dtype=dtype)
        inv_freq = 1.0 / (LL["theta"] ** (torch.arange(0, self.hd, 2).float() / self.hd))
        freqs = torch.outer(torch.arange(max_pos).float(), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos().to(dtype), emb.sin().to(dtype)

    @staticmethod
    def weight_bytes(layers, dtype):
        D, Fh = LL["hidden"], LL["ffn"]
        es = torch.empty((), dtype=dtype).element_size()
        return (layers * (4 * D * D + 3 * D * Fh) + LL["vocab"] * D) * es

    def head_weight_bytes(self):
        return nbytes(self.lm_head)

    def step_weight_bytes(self):
        keys = ("q", "k", "v", "o", "gate", "up", "down")
        return sum(nbytes(l[k]) for l in self.layers for k in keys) + nbytes(self.lm_head)

    def new_cache(self, max_len, filled):
        shape = (1, self.H, max_len, self.hd)
        cache = [(torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype)) for _ in self.layers]
        for k, v in cache:
            k[:, :, :filled].normal_()
            v[:, :, :filled].normal_()
        return cache

    def _heads(self, t):
        return t.view(1, 1, self.H, self.hd).transpose(1, 2)

    def head(self, x):
        return lin1(llama_rms(x, self.norm), self.lm_head).argmax(-1)

    def step(self, token, pos, cache):
        x = F.embedding(token, self.embed)
        cos, sin = self.cos[pos], self.sin[pos]
        scale = 1.0 / math.sqrt(self.hd)
        for l, (kc, vc) in zip(self.layers, cache):
            h = llama_rms(x, l["ln0"])
            q, k, v = (self._heads(lin1(h, l[w])) for w in ("q", "k", "v"))
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            kc[:, :, pos:pos + 1] = k
            vc[:, :, pos:pos + 1] = v
            s = torch.matmul(q, kc[:, :, :pos + 1].transpose(-1, -2)) * scale
            p = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
            o = torch.matmul(p, vc[:, :, :pos + 1]).transpose(1, 2).reshape(1, 1, -1)
            x = x + lin1(o, l["o"])
            h = llama_rms(x, l["ln1"])
            x = x + lin1(F.silu(lin1(h, l["gate"])) * lin1(h, l["up"]), l["down"])
        return self.head(x)


# --------------------------------------------------------------------------------------------
# benchmarks: each returns a list of result records
# --------------------------------------------------------------------------------------------


def rec(name, dtype, median_ms, samples, rate, unit, config, **extra):
    r = dict(name=name, dtype=dtype, median_ms=median_ms, samples_ms=samples, rate=rate,
             rate_unit=unit, config=config)
    r.update(extra)
    return r


def log_rec(r):
    extra = f" ({r['note']})" if r.get("note") else ""
    var = f" [{r['variant']}]" if r.get("variant") else ""
    log(f"  {r['name']}{var} {r['dtype']}: median {r['median_ms']:.1f} ms"
        f"{'/token' if r.get('unit_ms') == 'ms/token' else ''}, {r['rate']:.1f} {r['rate_unit']}, "
        f"samples {', '.join(f'{s:.1f}' for s in r['samples_ms'])}{extra}")
    if r["name"] == "e2e":
        log("    stages (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in r["stages_median_ms"].items()))


def layer_note(n, full):
    return "" if n == full else f"REDUCED {n}/{full} layers"


def bench_vision(args, dn, dt):
    t0 = time.perf_counter()
    m = Vision(args.vision_layers, dt)
    log(f"  built vision ({args.vision_layers} layers) in {time.perf_counter() - t0:.1f} s, RSS {rss_gb():.1f} GB")
    px = torch.randn(1, 3, VIS["image"], VIS["image"]).to(dt)
    med, samples, _ = time_fn(lambda: m(px), args.reps)
    fl = m.flops()
    cfg = dict(layers=args.vision_layers, full_layers=VIS["layers"], reduced=args.vision_layers != VIS["layers"],
               batch=1, tokens=m.N, flops=fl)
    r = rec("vision", dn, med, samples, fl / (med * 1e-3) * 1e-9, "GFLOPS", cfg,
            note=layer_note(args.vision_layers, VIS["layers"]))
    del m, px
    free()
    return [r]


def bench_qformer(args, dn, dt):
    m = QFormer(dt)
    ids = torch.randint(0, QF["vocab"], (1, QF["text"]))
    img = torch.randn(1, QF["enc_len"], QF["enc_hidden"]).to(dt)
    med, samples, _ = time_fn(lambda: m(ids, img), args.reps)
    fl = m.flops()
    cfg = dict(layers=QF["layers"], queries=QF["queries"], text_tokens=QF["text"], image_tokens=QF["enc_len"],
               flops=fl, includes="embeddings + 12 layers + language_projection")
    r = rec("qformer", dn, med, samples, fl / (med * 1e-3) * 1e-9, "GFLOPS", cfg, note="")
    del m, img
    free()
    return [r]


def bench_t5_step(args, dn, dt):
    t0 = time.perf_counter()
    m = T5Model(args.t5_layers, dt, encoder=False)
    log(f"  built T5 decoder ({args.t5_layers} layers) in {time.perf_counter() - t0:.1f} s, RSS {rss_gb():.1f} GB")
    past = 50
    cross = m.random_cross_kv(T5["enc_len"])
    cache = m.new_cache(past + args.steps + 1, filled=past)
    tok0 = torch.tensor([[7]])
    b = m.step_weight_bytes()

    def run():
        tok = tok0
        for i in range(args.steps):
            tok = m.step(tok, past + i, cache, cross)
        return tok

    out = []
    for mode in args.decode_linear:
        DECODE_LINEAR["mode"] = mode
        med, samples, _ = time_fn(run, args.reps)
        med, samples = med / args.steps, [s / args.steps for s in samples]
        cfg = dict(layers=args.t5_layers, full_layers=T5["layers"], reduced=args.t5_layers != T5["layers"],
                   cached_positions=past, encoder_len=T5["enc_len"], steps_per_sample=args.steps,
                   weight_bytes_per_step=b, decode_linear=mode)
        out.append(rec("t5_step", dn, med, samples, b / (med * 1e-3) * 1e-9, "GB/s", cfg, variant=mode,
                       note=layer_note(args.t5_layers, T5["layers"]), unit_ms="ms/token"))
        log_rec(out[-1])
    del m, cross, cache
    free()
    return out


def bench_llama_step(args, dn, dt):
    n = args.llama_layers
    need = Llama.weight_bytes(n, dt) + LL["vocab"] * LL["hidden"] * torch.empty((), dtype=dt).element_size()
    if need > args.max_llama_gb * 1e9:
        log(f"  SKIP llama_step {dn} with {n} layers: ~{need / 1e9:.1f} GB of weights > --max-llama-gb "
            f"{args.max_llama_gb:g}; use --llama-layers N (extrapolated to 32)")
        return []
    t0 = time.perf_counter()
    m = Llama(n, dt)
    log(f"  built llama ({n} layers) in {time.perf_counter() - t0:.1f} s, RSS {rss_gb():.1f} GB")
    past = 60
    cache = m.new_cache(past + args.steps + 1, past)
    tok0 = torch.tensor([[7]])
    b = m.step_weight_bytes()
    x = torch.randn(1, 1, LL["hidden"]).to(dt)

    def run():
        tok = tok0
        for i in range(args.steps):
            tok = m.step(tok, past + i, cache)
        return tok

    out = []
    for mode in args.decode_linear:
        DECODE_LINEAR["mode"] = mode
        med, samples, _ = time_fn(run, args.reps)
        med, samples = med / args.steps, [s / args.steps for s in samples]
        cfg = dict(layers=n, full_layers=LL["layers"], reduced=n != LL["layers"], cached_positions=past,
                   steps_per_sample=args.steps, weight_bytes_per_step=b, decode_linear=mode)
        extra = dict(variant=mode, note=layer_note(n, LL["layers"]), unit_ms="ms/token")
        if n != LL["layers"]:
            # linear extrapolation: head (final norm + lm_head + argmax) once, layers scaled to 32
            head_ms, _, _ = time_fn(lambda: [m.head(x) for _ in range(8)], max(args.reps, 3))
            head_ms /= 8
            est = head_ms + (med - head_ms) * LL["layers"] / n
            b32 = Llama.weight_bytes(LL["layers"], dt)
            extra.update(head_ms=head_ms, est_ms_32_layers=est, est_weight_bytes_32_layers=b32,
                         est_rate_32_layers=b32 / (est * 1e-3) * 1e-9)
            extra["note"] += (f"; EXTRAPOLATED to 32 layers: {est:.1f} ms/token "
                              f"(head {head_ms:.1f} ms + layers x 32/{n})")
        out.append(rec("llama_step", dn, med, samples, b / (med * 1e-3) * 1e-9, "GB/s", cfg, **extra))
        log_rec(out[-1])
    del m, cache
    free()
    return out


def bench_e2e(args, dn, dt):
    t0 = time.perf_counter()
    vis = Vision(args.vision_layers, dt)
    qf = QFormer(dt)
    t5 = T5Model(args.t5_layers, dt, encoder=True)
    log(f"  built vision+qformer+T5 in {time.perf_counter() - t0:.1f} s, RSS {rss_gb():.1f} GB")
    px = torch.randn(1, 3, VIS["image"], VIS["image"]).to(dt)
    qf_ids = torch.randint(0, QF["vocab"], (1, QF["text"]))
    t5_ids = torch.randint(0, T5["vocab"], (1, T5["enc_len"] - QF["queries"]))
    new_tokens = 20

    def run():
        t = [time.perf_counter()]
        img = vis(px)
        t.append(time.perf_counter())
        q = qf(qf_ids, img)  # includes language_projection -> [1, 32, 2048]
        t.append(time.perf_counter())
        emb = torch.cat([q, F.embedding(t5_ids, t5.shared)], dim=1)
        enc = t5.encode(emb)
        cross = t5.cross_kv(enc)
        cache = t5.new_cache(new_tokens + 1)
        t.append(time.perf_counter())
        tok = torch.tensor([[T5["dec_start"]]])
        out = []
        for i in range(new_tokens):  # exactly 20 greedy steps, no EOS stop
            tok = t5.step(tok, i, cache, cross)
            out.append(int(tok))
        t.append(time.perf_counter())
        d = [(b - a) * 1e3 for a, b in zip(t, t[1:])]
        return dict(vision_ms=d[0], qformer_ms=d[1], encoder_ms=d[2], decode_ms=d[3],
                    ms_per_token=d[3] / new_tokens, total_ms=(t[-1] - t[0]) * 1e3)

    note = "; ".join(s for s in (layer_note(args.vision_layers, VIS["layers"]).replace("layers", "vision layers"),
                                 layer_note(args.t5_layers, T5["layers"]).replace("layers", "T5 layers")) if s)
    out = []
    for mode in args.decode_linear:
        DECODE_LINEAR["mode"] = mode
        run()  # warm-up
        runs = [run() for _ in range(args.reps)]
        stages = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        samples = [r["total_ms"] for r in runs]
        cfg = dict(vision_layers=args.vision_layers, t5_layers=args.t5_layers,
                   reduced=args.vision_layers != VIS["layers"] or args.t5_layers != T5["layers"],
                   encoder_len=T5["enc_len"], new_tokens=new_tokens, decode_linear=mode,
                   stages="vision | qformer(+projection) | T5 encoder + cross K/V (prefill) | 20 decoder steps")
        out.append(rec("e2e", dn, statistics.median(samples), samples, 1e3 * new_tokens / stages["decode_ms"],
                       "decode tok/s", cfg, variant=mode, stages_median_ms=stages, stage_samples=runs, note=note))
        log_rec(out[-1])
    del vis, qf, t5, px
    free()
    return out


def run_bulk(args):
    """--bulk: caption args.bulk_images images in batches of args.bulk_batch, batched greedy decoding of
    exactly args.new_tokens tokens (no EOS stop), once per torch thread count in --bulk-threads.
    Returns one record (the best thread count's numbers at the top level, every setting in "runs")."""
    dt = DTYPES[args.bulk_dtype]
    t0 = time.perf_counter()
    vis = Vision(args.vision_layers, dt)
    qf = QFormer(dt)
    t5 = T5Model(args.t5_layers, dt, encoder=True)
    build_s = time.perf_counter() - t0
    log(f"  built vision+qformer+T5 ({args.bulk_dtype}) in {build_s:.1f} s, RSS {rss_gb():.1f} GB")
    n_img, bs, n_new = args.bulk_images, args.bulk_batch, args.new_tokens
    pixels = torch.randn(n_img, 3, VIS["image"], VIS["image"]).to(dt)
    # one prompt for every image (a captioning job): Q-Former text tokens and T5 prompt tokens alike
    qf_ids = torch.randint(0, QF["vocab"], (1, QF["text"]))
    t5_ids = torch.randint(0, T5["vocab"], (1, T5["enc_len"] - QF["queries"]))
    batches = [(i, min(i + bs, n_img)) for i in range(0, n_img, bs)]

    def caption_batch(px):
        B = px.shape[0]
        t = [time.perf_counter()]
        img = vis(px)
        t.append(time.perf_counter())
        q = qf(qf_ids.expand(B, -1), img)  # includes language_projection -> [B, 32, 2048]
        t.append(time.perf_counter())
        emb = torch.cat([q, F.embedding(t5_ids.expand(B, -1), t5.shared)], dim=1)
        cross = t5.cross_kv(t5.encode(emb))
        cache = t5.new_cache(n_new + 1, batch=B)
        t.append(time.perf_counter())
        tok = torch.full((B, 1), T5["dec_start"], dtype=torch.long)
        out = []
        for i in range(n_new):  # exactly n_new greedy steps for every row, no EOS stop
            tok = t5.step_batch(tok, i, cache, cross)
            out.append(tok)
        t.append(time.perf_counter())
        seqs = torch.cat(out, dim=1)
        assert seqs.shape == (B, n_new), seqs.shape
        d = [(b - a) * 1e3 for a, b in zip(t, t[1:])]
        return dict(vision_ms=d[0], qformer_ms=d[1], prefill_ms=d[2], decode_ms=d[3]), seqs

    runs = []
    for threads in args.bulk_threads:
        torch.set_num_threads(threads)
        for w in range(args.bulk_warmup):  # untimed: oneDNN builds its kernels for these shapes
            a, b = batches[w % len(batches)]
            caption_batch(pixels[a:b])
        per_batch, tokens = [], 0
        t_start = time.perf_counter()
        for a, b in batches:
            st, seqs = caption_batch(pixels[a:b])
            per_batch.append(dict(images=b - a, **st))
            tokens += seqs.numel()
        total_s = time.perf_counter() - t_start
        stages = {k: sum(p[k] for p in per_batch) for k in ("vision_ms", "qformer_ms", "prefill_ms", "decode_ms")}
        steps = n_new * len(batches)
        r = dict(torch_threads=threads, images_per_minute=n_img / total_s * 60.0, total_s=total_s,
                 stages_ms=stages, decode_ms_per_step=stages["decode_ms"] / steps,
                 tokens_generated=tokens, per_batch=per_batch)
        log(f"  torch threads {threads}: {r['images_per_minute']:.2f} images/min, total {total_s:.1f} s, "
            + ", ".join(f"{k} {v:.0f}" for k, v in stages.items())
            + f", decode {r['decode_ms_per_step']:.1f} ms/step (batch {bs})")
        runs.append(r)
    best = max(runs, key=lambda r: r["images_per_minute"])
    reduced = args.vision_layers != VIS["layers"] or args.t5_layers != T5["layers"]
    rec = dict(name="bulk", dtype=args.bulk_dtype, images=n_img, batch=bs, batches=len(batches),
               new_tokens=n_new, images_per_minute=best["images_per_minute"], total_s=best["total_s"],
               stages_ms=best["stages_ms"], decode_ms_per_step=best["decode_ms_per_step"],
               threads=dict(torch_threads=best["torch_threads"], tried=args.bulk_threads,
                            openblas_threads=os.environ.get("OPENBLAS_NUM_THREADS", ""),
                            note="bf16 GEMMs run on oneDNN with torch's pool; f32 ones on OpenBLAS"),
               config=dict(vision_layers=args.vision_layers, t5_layers=args.t5_layers, reduced=reduced,
                           qformer_text_tokens=QF["text"], encoder_len=T5["enc_len"], warmup_batches=args.bulk_warmup,
                           build_s=build_s, stages="vision | qformer(+projection) | T5 encoder + cross K/V (prefill) "
                                                   "| new_tokens batched decoder steps; summed over batches"),
               runs=runs)
    if reduced:
        rec["note"] = "REDUCED: " + "; ".join(s for s in (
            layer_note(args.vision_layers, VIS["layers"]).replace("layers", "vision layers"),
            layer_note(args.t5_layers, T5["layers"]).replace("layers", "T5 layers")) if s)
    del vis, qf, t5, pixels
    free()
    return rec


BENCH_FNS = dict(vision=bench_vision, qformer=bench_qformer, t5_step=bench_t5_step,
                 llama_step=bench_llama_step, e2e=bench_e2e)

# --------------------------------------------------------------------------------------------
# environment report
# --------------------------------------------------------------------------------------------


def blas_lib_paths():
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                p = line.split()[-1]
                if "blas" in p or "lapack" in p:
                    libs.add(p)
    except OSError:
        pass
    return sorted(libs)


def probe_gemm(dt, n=1024, iters=4):
    a = torch.randn(n, n).to(dt)
    b = torch.randn(n, n).to(dt)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(iters):
        torch.mm(a, b)
    return 2 * n ** 3 * iters / (time.perf_counter() - t0) * 1e-9


def env_report(dtypes):
    cfg = torch.__config__.show()
    blas = re.findall(r"\b(?:BLAS|LAPACK)_INFO=[^,\s]+", cfg) or [
        ln.strip() for ln in cfg.splitlines() if "BLAS" in ln]
    info = dict(
        torch=torch.__version__, python=platform.python_version(), cpu_count=os.cpu_count(),
        LD_LIBRARY_PATH=os.environ.get("LD_LIBRARY_PATH", ""),
        OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", ""),
        torch_threads=torch.get_num_threads(), blas_config=blas, blas_libs_loaded=blas_lib_paths(),
        mkldnn_available=torch.backends.mkldnn.is_available(), loadavg=os.getloadavg(),
    )
    log(f"torch {info['torch']} | python {info['python']} | cpus {info['cpu_count']} | "
        f"torch threads {info['torch_threads']} | OPENBLAS_NUM_THREADS={info['OPENBLAS_NUM_THREADS']}")
    log(f"LD_LIBRARY_PATH={info['LD_LIBRARY_PATH']}")
    log("BLAS (torch.__config__.show()): " + ", ".join(blas) + "  (generic = the libblas.so.3 the loader finds)")
    log("BLAS libraries loaded: " + ", ".join(info["blas_libs_loaded"]))
    log(f"torch.backends.mkldnn.is_available(): {info['mkldnn_available']}")
    info["sgemm_gflops_1024"] = probe_gemm(torch.float32)
    log(f"sgemm probe (1024^3, f32): {info['sgemm_gflops_1024']:.1f} GFLOPS")
    if "bf16" in dtypes:
        info["bf16_gemm_gflops_1024"] = probe_gemm(torch.bfloat16)
        log(f"bf16 gemm probe (1024^3): {info['bf16_gemm_gflops_1024']:.1f} GFLOPS")
    log(f"load average at start: {info['loadavg'][0]:.2f} {info['loadavg'][1]:.2f} {info['loadavg'][2]:.2f}")
    return info


def print_table(results):
    rows = [("benchmark", "dtype", "median ms", "rate", "note")]
    for r in results:
        ms = f"{r['median_ms']:.1f}" + ("/tok" if r.get("unit_ms") == "ms/token" else "")
        name = r["name"] + (f" [{r['variant']}]" if r.get("variant") else "")
        rows.append((name, r["dtype"], ms, f"{r['rate']:.1f} {r['rate_unit']}", r.get("note", "")))
        if r["name"] == "blip2_e2e":
            s = r["stages_median_ms"]
            for k, label in (("vision_ms", "vision"), ("qformer_ms", "qformer+proj"), ("prefill_ms", "prefill"),
                             ("decode_ms", f"decode {s['decode_steps']:.0f} steps"), ("ms_per_token", "ms/token")):
                rows.append(("  blip2." + label, r["dtype"], f"{s[k]:.1f}", "", ""))
        if r["name"] == "e2e":
            s = r["stages_median_ms"]
            for k, label in (("vision_ms", "vision"), ("qformer_ms", "qformer+proj"),
                             ("encoder_ms", "encoder/prefill"), ("decode_ms", "decode 20 tok"),
                             ("ms_per_token", "ms/token")):
                rows.append(("  e2e." + label, r["dtype"], f"{s[k]:.1f}", "", ""))
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    print()
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w[j]) if j < 4 else c for j, c in enumerate(row)).rstrip())
        if i == 0:
            print("  ".join("-" * x for x in w))
    print(flush=True)


# --------------------------------------------------------------------------------------------
# BLIP-2 OPT (Blip2ForConditionalGeneration) loaded from a checkpoint directory (--blip2 DIR)
# --------------------------------------------------------------------------------------------
# transformers 4.36.2 semantics (models/blip_2/modeling_blip_2.py, models/opt/modeling_opt.py):
# ViT-g (pre-LN, fused qkv with its stored bias, exact GELU, post-LN) -> BLIP-2 Q-Former (input
# LayerNorm(query_tokens), no text, BERT post-LN layers, cross-attention every
# cross_attention_frequency layers, query FFN only) -> language_projection -> OPT (learned positions
# cumsum(mask) * mask - 1 + 2, pre-LN, q scaled after its bias, ReLU FFN, final LayerNorm, head tied
# to embed_tokens) -> greedy decoding from inputs_embeds with a KV cache. In bf16 every weight and
# activation is bfloat16, as from_pretrained(torch_dtype=torch.bfloat16) runs it (softmax in bf16:
# OPT upcasts only fp16).

SAFETENSORS_DTYPES = {"F32": ("<f4", None), "BF16": ("<i2", torch.bfloat16), "F16": ("<f2", None),
                      "I64": ("<i8", None), "I32": ("<i4", None)}


def read_safetensors(path):
    """name -> torch tensor over a copy-on-write memory map of the file (8-byte header length, JSON
    header, raw little-endian data)."""
    import numpy as np
    import warnings
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    raw = np.memmap(path, dtype=np.uint8, mode="c")
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        np_dt, view = SAFETENSORS_DTYPES[info["dtype"]]
        a, b = info["data_offsets"]
        arr = raw[base + a:base + b].view(np_dt).reshape(info["shape"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = torch.from_numpy(arr)
        out[name] = t.view(view) if view is not None else t
    return out


def load_checkpoint_tensors(ckpt):
    index = os.path.join(ckpt, "model.safetensors.index.json")
    if not os.path.exists(index):
        return read_safetensors(os.path.join(ckpt, "model.safetensors"))
    with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for fn in files:
        out.update(read_safetensors(os.path.join(ckpt, fn)))
    return out


class Blip2OPT:
    def __init__(self, ckpt, dtype):
        with open(os.path.join(ckpt, "config.json")) as f:
            cfg = json.load(f)
        if cfg.get("model_type") != "blip-2":
            raise SystemExit(f"{ckpt}: not a BLIP-2 checkpoint (model_type {cfg.get('model_type')!r})")
        vc, qc, tc = cfg.get("vision_config", {}), cfg.get("qformer_config", {}), cfg.get("text_config", {})
        if tc.get("model_type", "opt") != "opt":
            raise SystemExit(f"{ckpt}: --blip2 runs BLIP-2 OPT only, text_config.model_type is {tc['model_type']!r}")
        self.dt = dtype
        self.v = dict(hidden=vc.get("hidden_size", 1408), heads=vc.get("num_attention_heads", 16),
                      layers=vc.get("num_hidden_layers", 39), eps=vc.get("layer_norm_eps", 1e-6),
                      patch=vc.get("patch_size", 14))
        self.q = dict(hidden=qc.get("hidden_size", 768), heads=qc.get("num_attention_heads", 12),
                      layers=qc.get("num_hidden_layers", 12), eps=qc.get("layer_norm_eps", 1e-12),
                      freq=qc.get("cross_attention_frequency", 2))
        self.t = dict(hidden=tc.get("hidden_size", 768), heads=tc.get("num_attention_heads", 12),
                      layers=tc.get("num_hidden_layers", 12), vocab=tc.get("vocab_size", 50272))
        eos = tc.get("eos_token_id", 2)
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.bos, self.pad = tc.get("bos_token_id", 2), tc.get("pad_token_id", 1)
        if tc.get("word_embed_proj_dim") not in (None, self.t["hidden"]):
            raise SystemExit("OPT with word_embed_proj_dim != hidden_size: BLIP-2 cannot run it (4.36.2)")
        raw = load_checkpoint_tensors(ckpt)
        # Floating tensors in the run dtype (no copy when the checkpoint already stores it).
        self.w = {k: (x.to(dtype) if x.is_floating_point() else x) for k, x in raw.items()}
        del raw

    def weight_bytes(self):
        return sum(nbytes(x) for x in self.w.values())

    def _lin(self, x, p):
        return F.linear(x, self.w[p + ".weight"], self.w.get(p + ".bias"))

    def _ln(self, x, p, eps):
        return F.layer_norm(x, (x.shape[-1],), self.w[p + ".weight"], self.w[p + ".bias"], eps)

    def vision(self, pixel_values):
        w, D, H, eps = self.w, self.v["hidden"], self.v["heads"], self.v["eps"]
        hd = D // H
        x = F.conv2d(pixel_values.to(self.dt), w["vision_model.embeddings.patch_embedding.weight"],
                     w["vision_model.embeddings.patch_embedding.bias"], stride=self.v["patch"])
        x = x.flatten(2).transpose(1, 2)
        B = x.shape[0]
        cls = w["vision_model.embeddings.class_embedding"].expand(B, 1, -1)
        x = torch.cat([cls, x], dim=1) + w["vision_model.embeddings.position_embedding"][:, :x.shape[1] + 1]
        N = x.shape[1]
        for i in range(self.v["layers"]):
            p = f"vision_model.encoder.layers.{i}."
            h = self._ln(x, p + "layer_norm1", eps)
            qkv = self._lin(h, p + "self_attn.qkv").reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4)
            a = torch.matmul(qkv[0], qkv[1].transpose(-1, -2)) * hd ** -0.5
            o = torch.matmul(torch.softmax(a, dim=-1), qkv[2]).permute(0, 2, 1, 3).reshape(B, N, D)
            x = x + self._lin(o, p + "self_attn.projection")
            h = self._ln(x, p + "layer_norm2", eps)
            x = x + self._lin(F.gelu(self._lin(h, p + "mlp.fc1")), p + "mlp.fc2")
        return self._ln(x, "vision_model.post_layernorm", eps)

    def _qf_attn(self, x, kv, p):
        B, Lq, D = x.shape
        H = self.q["heads"]
        hd = D // H
        q = self._lin(x, p + "attention.query").view(B, Lq, H, hd).transpose(1, 2)
        k = self._lin(kv, p + "attention.key").view(B, kv.shape[1], H, hd).transpose(1, 2)
        v = self._lin(kv, p + "attention.value").view(B, kv.shape[1], H, hd).transpose(1, 2)
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)  # + an all-zero mask
        o = torch.matmul(torch.softmax(s, dim=-1), v).transpose(1, 2).reshape(B, Lq, D)
        return self._ln(self._lin(o, p + "output.dense") + x, p + "output.LayerNorm", self.q["eps"])

    def qformer(self, image_embeds):
        """-> language_model_inputs [B, num_query_tokens, text hidden] (Q-Former + language_projection)."""
        B = image_embeds.shape[0]
        x = self._ln(self.w["query_tokens"].expand(B, -1, -1), "qformer.layernorm", self.q["eps"])
        for i in range(self.q["layers"]):
            p = f"qformer.encoder.layer.{i}."
            x = self._qf_attn(x, x, p + "attention.")
            if i % self.q["freq"] == 0:
                x = self._qf_attn(x, image_embeds, p + "crossattention.")
            h = F.gelu(self._lin(x, p + "intermediate_query.dense"))
            x = self._ln(self._lin(h, p + "output_query.dense") + x, p + "output_query.LayerNorm", self.q["eps"])
        return self._lin(x, "language_projection")

    def embed(self, ids):
        return F.embedding(ids, self.w["language_model.model.decoder.embed_tokens.weight"])

    def new_cache(self, max_len):
        D, H = self.t["hidden"], self.t["heads"]
        shape = (1, H, max_len, D // H)
        return dict(k=[torch.zeros(shape, dtype=self.dt) for _ in range(self.t["layers"])],
                    v=[torch.zeros(shape, dtype=self.dt) for _ in range(self.t["layers"])], len=0)

    def lm(self, x, positions, cache, single=False):
        """Batch-1 OPT forward of x [1, L, D] at `positions` (position ids, before the offset 2),
        appending to `cache`; the new positions see every cached one and themselves causally.
        single: one new token, whose products follow --decode-linear. -> logits of the last position
        [1, vocab]."""
        w, D, H = self.w, self.t["hidden"], self.t["heads"]
        hd = D // H
        L, start = x.shape[1], cache["len"]
        d = "language_model.model.decoder."
        x = x + F.embedding(positions + 2, w[d + "embed_positions.weight"])
        mask = None
        if L > 1:
            mask = torch.full((L, start + L), torch.finfo(self.dt).min, dtype=self.dt).triu(start + 1)

        def lw(t, p):
            if single:
                return lin1(t, w[p + ".weight"]) + w[p + ".bias"]
            return F.linear(t, w[p + ".weight"], w[p + ".bias"])

        for i in range(self.t["layers"]):
            p = f"{d}layers.{i}."
            h = self._ln(x, p + "self_attn_layer_norm", 1e-5)
            q = (lw(h, p + "self_attn.q_proj") * hd ** -0.5).view(1, L, H, hd).transpose(1, 2)
            cache["k"][i][:, :, start:start + L] = lw(h, p + "self_attn.k_proj").view(1, L, H, hd).transpose(1, 2)
            cache["v"][i][:, :, start:start + L] = lw(h, p + "self_attn.v_proj").view(1, L, H, hd).transpose(1, 2)
            k, v = cache["k"][i][:, :, :start + L], cache["v"][i][:, :, :start + L]
            s = torch.matmul(q, k.transpose(-1, -2))
            if mask is not None:
                s = torch.max(s + mask, torch.tensor(torch.finfo(self.dt).min, dtype=self.dt))
            o = torch.matmul(torch.softmax(s, dim=-1), v).transpose(1, 2).reshape(1, L, D)
            x = x + lw(o, p + "self_attn.out_proj")
            h = self._ln(x, p + "final_layer_norm", 1e-5)
            x = x + lw(torch.relu(lw(h, p + "fc1")), p + "fc2")
        cache["len"] = start + L
        h = self._ln(x[:, -1:], d + "final_layer_norm", 1e-5)
        head = w[d + "embed_tokens.weight"]
        return (lin1(h, head) if single else F.linear(h, head))[:, 0]

    def generate(self, pixel_values, input_ids, new_tokens, stop_at_eos, times=None):
        """Greedy decoding as Blip2ForConditionalGeneration.generate (batch 1, all-ones mask): returns
        (sequences [dummy bos + new tokens], first-step logits in float32). With stop_at_eos=False
        exactly new_tokens tokens are made (--min-new-tokens = --max-new-tokens). `times` gets the
        stage times (ms)."""
        t = [time.perf_counter()]
        img = self.vision(pixel_values)
        t.append(time.perf_counter())
        q = self.qformer(img)
        t.append(time.perf_counter())
        x = torch.cat([q, self.embed(input_ids)], dim=1)
        L = x.shape[1]
        cache = self.new_cache(L + new_tokens)
        logits = self.lm(x, torch.arange(L).unsqueeze(0), cache)
        first = logits.float()
        tok = int(torch.argmax(logits, dim=-1))
        t.append(time.perf_counter())
        seq = [self.bos, tok]
        for i in range(1, new_tokens):
            if stop_at_eos and tok in self.eos:
                break
            logits = self.lm(self.embed(torch.tensor([[tok]])), torch.tensor([[L + i - 1]]), cache, single=True)
            tok = int(torch.argmax(logits, dim=-1))
            seq.append(tok)
        t.append(time.perf_counter())
        if stop_at_eos:  # finished rows are padded to the full length (generation/utils.py:2619)
            seq += [self.pad] * (new_tokens + 1 - len(seq))
        if times is not None:
            d = [(b - a) * 1e3 for a, b in zip(t, t[1:])]
            steps = max(len(seq) - 2, 1)
            times.update(vision_ms=d[0], qformer_ms=d[1], prefill_ms=d[2], decode_ms=d[3], decode_steps=steps,
                         ms_per_token=d[3] / steps, total_ms=(t[-1] - t[0]) * 1e3)
        return seq, first


BLIP2_DEFAULT_PROMPT_IDS = [2, 45641, 35, 653, 16, 11, 42, 2274, 116, 31652, 35]  # "</s>Question: what is in this image? Answer:" (OPT BPE)


def run_blip2(args):
    """--blip2 DIR: time greedy BLIP-2-OPT generation (exactly --new-tokens tokens) per --dtype."""
    inputs = {}
    if args.blip2_input:
        inputs = read_safetensors(args.blip2_input)
    px = inputs.get("pixel_values")
    if px is None:
        torch.manual_seed(0)
        px = torch.randn(1, 3, 224, 224)
    ids = inputs.get("input_ids")
    if ids is None:
        ids = torch.tensor([BLIP2_DEFAULT_PROMPT_IDS])
    px, ids = px.float().clone(), ids.long().clone()
    if px.shape[0] != 1 or ids.shape[0] != 1:
        raise SystemExit("--blip2 runs batch 1: the input file must hold one image and one prompt")
    out = []
    for dn in args.blip2_dtypes:
        t0 = time.perf_counter()
        m = Blip2OPT(args.blip2, DTYPES[dn])
        log(f"[blip2 {dn}] loaded {args.blip2} ({m.weight_bytes() / 1e9:.2f} GB as {dn}) in "
            f"{time.perf_counter() - t0:.1f} s, RSS {rss_gb():.1f} GB; prompt {ids.shape[1]} tokens, "
            f"{args.new_tokens} new tokens, torch threads {torch.get_num_threads()}")
        for mode in args.decode_linear:
            DECODE_LINEAR["mode"] = mode
            runs, seq, first = [], None, None
            for r in range(args.reps + 1):  # the first run is a warm-up
                times = {}
                seq, first = m.generate(px, ids, args.new_tokens, stop_at_eos=False, times=times)
                if r:
                    runs.append(times)
            stages = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            record = rec("blip2_e2e", dn, stages["total_ms"], [r["total_ms"] for r in runs],
                         1e3 / stages["ms_per_token"], "decode tok/s",
                         dict(checkpoint=args.blip2, prompt_tokens=int(ids.shape[1]), new_tokens=args.new_tokens,
                              decode_linear=mode, vision_layers=m.v["layers"], qformer_layers=m.q["layers"],
                              opt_layers=m.t["layers"], opt_hidden=m.t["hidden"],
                              stages="vision | qformer(+projection) | OPT prompt forward -> 1st token | "
                                     "remaining tokens, one step each"),
                         variant=mode, stages_median_ms=stages, stage_samples=runs, sequences=[seq])
            if "first_step_logits" in inputs:  # instructblip-generate --dump: our C++ on the same input
                ref = inputs["first_step_logits"].float().reshape(-1)
                record["vs_dump"] = dict(first_step_logits_max_abs_diff=float((first.reshape(-1) - ref).abs().max()),
                                         sequences_equal=inputs["sequences"].reshape(-1).tolist() == seq)
            log(f"  {dn} [{mode}]: vision {stages['vision_ms']:.0f} ms | qformer {stages['qformer_ms']:.0f} ms | "
                f"prefill {stages['prefill_ms']:.0f} ms | {stages['ms_per_token']:.1f} ms/token | total "
                f"{stages['total_ms'] / 1e3:.2f} s" + (f" | vs dump {record['vs_dump']}" if "vs_dump" in record else ""))
            out.append(record)
        del m
        free()
    return out


def blip2_self_check(args):
    """Our PyTorch BLIP-2-OPT against transformers 4.36.2's outputs stored for the tiny fixture
    (tests/data/blip2-opt-tiny: the same numbers the C++ tests check the library against), in f32:
    first-step logits within 1e-4 and the greedy ids of input a."""
    fixture = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data",
                           "blip2-opt-tiny")
    ref = read_safetensors(os.path.join(fixture, "reference.safetensors"))
    with open(os.path.join(fixture, "reference.json")) as f:
        greedy = json.load(f)["generation"]["greedy"]["a"]["sequences"][0]
    m = Blip2OPT(os.path.join(fixture, "model"), torch.float32)
    ok = True
    for mode in ("linear", "mv"):
        DECODE_LINEAR["mode"] = mode
        seq, first = m.generate(ref["a.pixel_values"].clone(), ref["a.input_ids"].clone(), len(greedy) - 1,
                                stop_at_eos=True)
        d_scores = float((first - ref["a.gen.greedy.scores"][:, 0]).abs().max())
        d_logits = float((first - ref["a.logits"][:, -1]).abs().max())
        good = d_scores <= 1e-4 and d_logits <= 1e-4 and seq == greedy
        ok &= good
        log(f"self-check [{mode}]: first-step logits max |diff| {d_scores:.2e} (greedy scores[0]), {d_logits:.2e} "
            f"(forward logits[:, -1]); greedy ids {'equal' if seq == greedy else 'DIFFER'} "
            f"({len(greedy) - 1} tokens){'' if seq == greedy else f': ours {seq} vs {greedy}'}: "
            f"{'ok' if good else 'FAILED'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(ALL_BENCHES),
                    help="comma list of: " + ",".join(ALL_BENCHES) + " (default: all)")
    ap.add_argument("--dtype", default=None,
                    help="comma list of f32,bf16 (default: f32,bf16; llama_step defaults to bf16 only)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported); 1 warm-up")
    ap.add_argument("--steps", type=int, default=4,
                    help="decode steps per timed sample for t5_step / llama_step (ms/token = sample / steps)")
    ap.add_argument("--vision-layers", type=int, default=VIS["layers"])
    ap.add_argument("--t5-layers", type=int, default=T5["layers"], help="T5 encoder and decoder layers")
    ap.add_argument("--llama-layers", type=int, default=LL["layers"],
                    help="LLaMA layers; < 32 is extrapolated linearly to 32")
    ap.add_argument("--max-llama-gb", type=float, default=16.0,
                    help="skip llama_step if its weights would exceed this many GB (default 16)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch intra-op threads (default 1; OpenBLAS has its own 2 threads)")
    ap.add_argument("--decode-linear", default="linear,mv",
                    help="comma list of linear,mv: how t5_step/llama_step/e2e do single-token matmuls; "
                         "'linear' = F.linear as HF does (BLAS gemm with M=1), 'mv' = torch.mv (BLAS gemv). "
                         "Each listed mode is timed on the same weights (default: both)")
    ap.add_argument("--json", default=None, help="write results (list of records) to this file")
    bulk = ap.add_argument_group("bulk captioning throughput (--bulk)")
    bulk.add_argument("--bulk", action="store_true",
                      help="caption --bulk-images images in batches of --bulk-batch with batched greedy decoding; "
                           "prints one JSON line (images/minute, per-stage ms, thread settings) and exits")
    bulk.add_argument("--new-tokens", type=int, default=20, help="tokens generated per image, exactly (no EOS stop)")
    bulk.add_argument("--bulk-images", type=int, default=16)
    bulk.add_argument("--bulk-batch", type=int, default=8)
    bulk.add_argument("--bulk-dtype", default="bf16", choices=sorted(DTYPES))
    bulk.add_argument("--bulk-threads", default="2,1",
                      help="comma list of torch.set_num_threads values to try; the best is reported (default 2,1)")
    bulk.add_argument("--bulk-warmup", type=int, default=1, help="untimed batches before each timed pass (default 1)")
    b2 = ap.add_argument_group("BLIP-2 OPT from a checkpoint (--blip2, --self-check)")
    b2.add_argument("--blip2", default=None, metavar="DIR",
                    help="time greedy generation of the BLIP-2-OPT checkpoint in DIR (e.g. one written by "
                         "instructblip-random-checkpoint --model blip2-opt-2.7b): exactly --new-tokens tokens, batch 1, "
                         "per --dtype (default bf16), stage times; then exits")
    b2.add_argument("--blip2-input", default=None, metavar="FILE",
                    help="safetensors with pixel_values [1,3,224,224] and input_ids [1,L] (e.g. instructblip-generate "
                         "--dump; its first_step_logits / sequences are then compared too); default: random pixels "
                         "and a fixed prompt")
    b2.add_argument("--self-check", action="store_true",
                    help="check the BLIP-2-OPT code against transformers' outputs for tests/data/blip2-opt-tiny (f32: "
                         "first-step logits within 1e-4, greedy ids of input a); exit status 1 on a mismatch")
    args = ap.parse_args()

    if args.self_check or args.blip2:
        args.decode_linear = [m.strip() for m in args.decode_linear.split(",") if m.strip()]
        if not args.decode_linear or any(m not in ("linear", "mv") for m in args.decode_linear):
            ap.error("--decode-linear takes a comma list of linear,mv")
        torch.set_num_threads(args.torch_threads)
        with torch.inference_mode():
            if args.self_check and not blip2_self_check(args):
                sys.exit(1)
            if not args.blip2:
                return
            args.blip2_dtypes = [d.strip() for d in (args.dtype or "bf16").split(",") if d.strip()]
            if any(d not in DTYPES for d in args.blip2_dtypes) or args.reps < 1 or args.new_tokens < 1:
                ap.error("--dtype takes f32,bf16; --reps and --new-tokens must be >= 1")
            info = env_report(args.blip2_dtypes)
            results = run_blip2(args)
        print_table(results)
        if args.json:
            for r in results:
                r["environment"] = info
                r["args"] = vars(args)
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
            log(f"wrote {args.json}")
        return

    if args.bulk:
        try:
            args.bulk_threads = [int(t) for t in args.bulk_threads.split(",") if t.strip()]
        except ValueError:
            ap.error("--bulk-threads takes a comma list of integers")
        if (not args.bulk_threads or min(args.bulk_threads) < 1 or args.new_tokens < 1 or args.bulk_images < 1
                or args.bulk_batch < 1 or args.bulk_warmup < 0):
            ap.error("--bulk-threads, --new-tokens, --bulk-images and --bulk-batch must be >= 1")
        LOG["stream"] = sys.stderr
        torch.manual_seed(0)
        log(f"[bulk {args.bulk_dtype}] {args.bulk_images} images, batch {args.bulk_batch}, "
            f"{args.new_tokens} new tokens, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '')}")
        with torch.inference_mode():
            rec = run_bulk(args)
        rec["environment"] = dict(torch=torch.__version__, cpu_count=os.cpu_count(), loadavg=os.getloadavg())
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rec, f, indent=1)
        print(json.dumps(rec, separators=(",", ":")), flush=True)
        return

    benches = [b.strip() for b in args.only.split(",") if b.strip()]
    for b in benches:
        if b not in BENCH_FNS:
            ap.error(f"unknown benchmark {b!r}")
    dtypes = [d.strip() for d in (args.dtype or "f32,bf16").split(",") if d.strip()]
    for d in dtypes:
        if d not in DTYPES:
            ap.error(f"unknown dtype {d!r}")
    if args.reps < 1 or args.steps < 1:
        ap.error("--reps and --steps must be >= 1")

    args.decode_linear = [m.strip() for m in args.decode_linear.split(",") if m.strip()]
    if not args.decode_linear or any(m not in ("linear", "mv") for m in args.decode_linear):
        ap.error("--decode-linear takes a comma list of linear,mv")
    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    info = env_report(dtypes)

    results = []
    with torch.inference_mode():
        for b in benches:
            bdtypes = dtypes
            if b == "llama_step" and args.dtype is None:
                bdtypes = ["bf16"]  # f32 7B does not fit comfortably: opt in with --dtype f32 + --llama-layers
            for dn in bdtypes:
                log(f"[{b} {dn}]")
                t0 = time.perf_counter()
                out = BENCH_FNS[b](args, dn, DTYPES[dn])
                if b in ("vision", "qformer"):
                    for r in out:
                        log_rec(r)
                log(f"  [{time.perf_counter() - t0:.0f} s incl. build]")
                results.extend(out)
                free()

    print_table(results)
    if args.json:
        for r in results:  # a list of records; each carries the run environment and arguments
            r["environment"] = info
            r["args"] = vars(args)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
