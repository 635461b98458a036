"""A small PyTorch InstructBLIP (Flan-T5 language model) with transformers' tensor names and the
semantics of transformers 4.36.2's InstructBlipForConditionalGeneration (inference path, no dropout):

  * vision: EVA-ViT, pre-LN, qkv Linear whose bias is the saved `qkv.bias` (transformers builds it as
    cat(q_bias, 0, v_bias) and saves it whole), exact (erf) GELU, post_layernorm on the whole output;
  * Q-Former: BERT post-LN; the query tokens and the instruction's word embeddings are concatenated before the
    embedding LayerNorm; cross-attention every `cross_attention_frequency` layers on the query part only;
    the query part goes through intermediate_query / output_query, the text part through intermediate / output;
  * language_projection of the query outputs, prepended to the T5 encoder's input embeddings;
  * T5: RMS LayerNorm (no mean), unscaled attention, relative position buckets (bidirectional in the encoder,
    causal in the decoder; the bias of block 0 is shared by all blocks), gated-gelu (erf) feed-forward, untied
    lm_head without the d_model^-0.5 scaling, decoder_start 0, eos 1, pad 0.

Also here: safetensors reading/writing (float32, header JSON + raw little-endian data), the two tokenizers
(T5 sentencepiece through python3-sentencepiece; BERT WordPiece, lower case, written out here), the
BlipImageProcessor preprocessing, greedy and beam search with transformers 4.36.2's rules.
"""
import json
import math
import os
import struct
import unicodedata

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------------------------
def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        a, b = info["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype="<f4").reshape(info["shape"]).copy())
    return out


def save_safetensors(tensors, path):
    """float32 tensors -> safetensors file (names sorted, 8-byte aligned header padded with spaces, like
    the safetensors package writes them)."""
    names = sorted(tensors)
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in names:
        a = tensors[name].detach().to(torch.float32).contiguous().numpy().astype("<f4")
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# tokenizers
# ---------------------------------------------------------------------------------------------------------------
class T5Tok:
    """T5Tokenizer (slow, legacy) for plain ASCII text: sentencepiece pieces + </s>."""

    def __init__(self, model_dir):
        import sentencepiece as spm  # Debian: python3-sentencepiece
        self.sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "spiece.model"))

    def encode(self, text):
        return list(self.sp.encode(text)) + [1]

    def decode(self, ids):
        # skip_special_tokens: pad 0, eos 1, unk 2 and the extra ids (>= sentencepiece vocab size)
        n = self.sp.get_piece_size()
        return self.sp.decode([i for i in ids if i > 2 and i < n])


class BertTok:
    """BertTokenizer (slow): lower case, accents stripped, split on whitespace and punctuation, greedy
    longest-match WordPiece, [CLS] ... [SEP]."""

    def __init__(self, vocab_path):
        with open(vocab_path, encoding="utf-8") as f:
            self.vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}

    @staticmethod
    def _is_punct(ch):
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    def _basic(self, text):
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words = []
        for w in text.split():
            cur = ""
            for ch in w:
                if self._is_punct(ch):
                    if cur:
                        words.append(cur)
                    words.append(ch)
                    cur = ""
                else:
                    cur += ch
            if cur:
                words.append(cur)
        return words

    def encode(self, text):
        ids = [self.vocab["[CLS]"]]
        for w in self._basic(text):
            start, pieces = 0, []
            while start < len(w):
                end = len(w)
                while end > start:
                    s = w[start:end] if start == 0 else "##" + w[start:end]
                    if s in self.vocab:
                        pieces.append(self.vocab[s])
                        break
                    end -= 1
                if end == start:
                    pieces = [self.vocab["[UNK]"]]
                    break
                start = end
            ids += pieces
        return ids + [self.vocab["[SEP]"]]


# ---------------------------------------------------------------------------------------------------------------
# image processor: BlipImageProcessor (resize BICUBIC with Pillow, 1/255, CLIP mean/std)
# ---------------------------------------------------------------------------------------------------------------
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def preprocess(img, size):
    from PIL import Image
    x = np.asarray(img.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
    x = x * np.float32(1 / 255)
    x = (x - CLIP_MEAN) / CLIP_STD
    return x.transpose(2, 0, 1).copy()


# ---------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------
def gelu(x):
    return F.gelu(x)  # erf form, transformers' "gelu"


class VisionAttention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d, bias=True)
        self.projection = nn.Linear(d, d)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        s = torch.matmul(q, k.transpose(-1, -2)) * (d // self.heads) ** -0.5
        p = s.softmax(-1)
        c = torch.matmul(p, v).permute(0, 2, 1, 3).reshape(b, n, d)
        return self.projection(c)


class VisionMLP(nn.Module):
    def __init__(self, d, ff):
        super().__init__()
        self.fc1 = nn.Linear(d, ff)
        self.fc2 = nn.Linear(ff, d)

    def forward(self, x):
        return self.fc2(gelu(self.fc1(x)))


class VisionLayer(nn.Module):
    def __init__(self, d, ff, heads, eps):
        super().__init__()
        self.self_attn = VisionAttention(d, heads)
        self.layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.mlp = VisionMLP(d, ff)
        self.layer_norm2 = nn.LayerNorm(d, eps=eps)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEmbeddings(nn.Module):
    def __init__(self, d, image, patch):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, d))
        self.patch_embedding = nn.Conv2d(3, d, patch, patch)
        self.position_embedding = nn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, d))

    def forward(self, px):
        p = self.patch_embedding(px).flatten(2).transpose(1, 2)
        c = self.class_embedding.expand(p.shape[0], 1, -1)
        e = torch.cat([c, p], 1)
        return e + self.position_embedding[:, : e.shape[1]]


class VisionEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        eps = cfg.get("layer_norm_eps", 1e-6)
        self.layers = nn.ModuleList([VisionLayer(cfg["hidden_size"], cfg["intermediate_size"],
                                                 cfg["num_attention_heads"], eps)
                                     for _ in range(cfg["num_hidden_layers"])])


class VisionModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = VisionEmbeddings(cfg["hidden_size"], cfg["image_size"], cfg.get("patch_size", 14))
        self.encoder = VisionEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg.get("layer_norm_eps", 1e-6))

    def forward(self, px):
        x = self.embeddings(px)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


class QAttnInner(nn.Module):
    def __init__(self, d, kv_d, heads):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(kv_d, d)
        self.value = nn.Linear(kv_d, d)

    def forward(self, x, kv, mask):
        b, n, d = x.shape
        h, hd = self.heads, d // self.heads
        q = self.query(x).view(b, n, h, hd).transpose(1, 2)
        k = self.key(kv).view(b, kv.shape[1], h, hd).transpose(1, 2)
        v = self.value(kv).view(b, kv.shape[1], h, hd).transpose(1, 2)
        s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hd)
        if mask is not None:
            s = s + mask
        p = s.softmax(-1)
        return torch.matmul(p, v).transpose(1, 2).reshape(b, n, d)


class DenseLN(nn.Module):
    def __init__(self, din, d, eps):
        super().__init__()
        self.dense = nn.Linear(din, d)
        self.LayerNorm = nn.LayerNorm(d, eps=eps)

    def forward(self, h, inp):
        return self.LayerNorm(self.dense(h) + inp)


class QAttention(nn.Module):
    def __init__(self, d, kv_d, heads, eps):
        super().__init__()
        self.attention = QAttnInner(d, kv_d, heads)
        self.output = DenseLN(d, d, eps)

    def forward(self, x, kv, mask):
        return self.output(self.attention(x, kv, mask), x)


class Dense(nn.Module):
    def __init__(self, din, dout):
        super().__init__()
        self.dense = nn.Linear(din, dout)

    def forward(self, x):
        return gelu(self.dense(x))


class QLayer(nn.Module):
    def __init__(self, cfg, cross):
        super().__init__()
        d, ff, h, eps = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], 1e-12
        self.attention = QAttention(d, d, h, eps)
        self.has_cross = cross
        if cross:
            self.crossattention = QAttention(d, cfg["encoder_hidden_size"], h, eps)
        self.intermediate = Dense(d, ff)
        self.output = DenseLN(ff, d, eps)
        self.intermediate_query = Dense(d, ff)
        self.output_query = DenseLN(ff, d, eps)

    def forward(self, x, mask, img, nq):
        a = self.attention(x, x, mask)
        q = a[:, :nq]
        if self.has_cross:
            q = self.crossattention(q, img, None)
        q = self.output_query(self.intermediate_query(q), q)
        t = a[:, nq:]
        if t.shape[1] > 0:
            t = self.output(self.intermediate(t), t)
            return torch.cat([q, t], 1)
        return q


class QEmbeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], d)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], d)
        self.layernorm = nn.LayerNorm(d, eps=1e-12)


class QEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        freq = cfg.get("cross_attention_frequency", 2)
        self.layer = nn.ModuleList([QLayer(cfg, i % freq == 0) for i in range(cfg["num_hidden_layers"])])


class QFormer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = QEmbeddings(cfg)
        self.encoder = QEncoder(cfg)

    def forward(self, ids, mask, query, img):
        e = self.embeddings.word_embeddings(ids)
        e = e + self.embeddings.position_embeddings(torch.arange(ids.shape[1]))[None]
        x = self.embeddings.layernorm(torch.cat([query, e], 1))
        nq = query.shape[1]
        full = torch.cat([torch.ones(ids.shape[0], nq), mask.float()], 1)
        ext = ((1.0 - full) * -10000.0)[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, ext, img, nq)
        return x[:, :nq]


class T5LayerNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        var = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


def relative_position_bucket(rel, bidirectional, num_buckets, max_distance):
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rel > 0).to(torch.long) * num_buckets
        rel = rel.abs()
    else:
        rel = -torch.min(rel, torch.zeros_like(rel))
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    large = max_exact + (torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, rel, large)


class T5Attention(nn.Module):
    def __init__(self, cfg, has_bias, bidirectional):
        super().__init__()
        d, h, dkv = cfg["d_model"], cfg["num_heads"], cfg["d_kv"]
        self.h, self.dkv = h, dkv
        self.q = nn.Linear(d, h * dkv, bias=False)
        self.k = nn.Linear(d, h * dkv, bias=False)
        self.v = nn.Linear(d, h * dkv, bias=False)
        self.o = nn.Linear(h * dkv, d, bias=False)
        self.bidirectional = bidirectional
        self.nb = cfg.get("relative_attention_num_buckets", 32)
        self.md = cfg.get("relative_attention_max_distance", 128)
        if has_bias:
            self.relative_attention_bias = nn.Embedding(self.nb, h)

    def compute_bias(self, qlen, klen):
        ctx = torch.arange(qlen)[:, None]
        mem = torch.arange(klen)[None, :]
        b = relative_position_bucket(mem - ctx, self.bidirectional, self.nb, self.md)
        return self.relative_attention_bias(b).permute(2, 0, 1)[None]  # 1, h, q, k

    def forward(self, x, kv, bias):
        b = x.shape[0]
        q = self.q(x).view(b, -1, self.h, self.dkv).transpose(1, 2)
        k = self.k(kv).view(b, -1, self.h, self.dkv).transpose(1, 2)
        v = self.v(kv).view(b, -1, self.h, self.dkv).transpose(1, 2)
        s = torch.matmul(q, k.transpose(-1, -2)) + bias
        p = s.float().softmax(-1).type_as(s)
        return self.o(torch.matmul(p, v).transpose(1, 2).reshape(b, -1, self.h * self.dkv))


class T5SelfLayer(nn.Module):
    def __init__(self, cfg, has_bias, bidirectional):
        super().__init__()
        self.SelfAttention = T5Attention(cfg, has_bias, bidirectional)
        self.layer_norm = T5LayerNorm(cfg["d_model"], cfg.get("layer_norm_epsilon", 1e-6))

    def forward(self, x, bias):
        h = self.layer_norm(x)
        return x + self.SelfAttention(h, h, bias)


class T5CrossLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.EncDecAttention = T5Attention(cfg, False, True)
        self.layer_norm = T5LayerNorm(cfg["d_model"], cfg.get("layer_norm_epsilon", 1e-6))

    def forward(self, x, enc, bias):
        return x + self.EncDecAttention(self.layer_norm(x), enc, bias)


class T5Gated(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, ff = cfg["d_model"], cfg["d_ff"]
        self.wi_0 = nn.Linear(d, ff, bias=False)
        self.wi_1 = nn.Linear(d, ff, bias=False)
        self.wo = nn.Linear(ff, d, bias=False)

    def forward(self, x):
        return self.wo(gelu(self.wi_0(x)) * self.wi_1(x))


class T5FF(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.get("feed_forward_proj") == "gated-gelu" and cfg.get("dense_act_fn") == "gelu"
        self.DenseReluDense = T5Gated(cfg)
        self.layer_norm = T5LayerNorm(cfg["d_model"], cfg.get("layer_norm_epsilon", 1e-6))

    def forward(self, x):
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    def __init__(self, cfg, first, decoder):
        super().__init__()
        layers = [T5SelfLayer(cfg, first, not decoder)]
        if decoder:
            layers.append(T5CrossLayer(cfg))
        layers.append(T5FF(cfg))
        self.layer = nn.ModuleList(layers)
        self.decoder = decoder


class T5Stack(nn.Module):
    def __init__(self, cfg, n, decoder):
        super().__init__()
        self.block = nn.ModuleList([T5Block(cfg, i == 0, decoder) for i in range(n)])
        self.final_layer_norm = T5LayerNorm(cfg["d_model"], cfg.get("layer_norm_epsilon", 1e-6))
        self.decoder = decoder


class T5(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert not cfg.get("tie_word_embeddings", True)
        self.shared = nn.Embedding(cfg["vocab_size"], cfg["d_model"])
        self.encoder = T5Stack(cfg, cfg["num_layers"], False)
        self.decoder = T5Stack(cfg, cfg.get("num_decoder_layers", cfg["num_layers"]), True)
        self.lm_head = nn.Linear(cfg["d_model"], cfg["vocab_size"], bias=False)

    def encode(self, emb, mask):
        neg = torch.finfo(torch.float32).min
        ext = (1.0 - mask.float())[:, None, None, :] * neg
        n = emb.shape[1]
        bias = self.encoder.block[0].layer[0].SelfAttention.compute_bias(n, n) + ext
        x = emb
        for blk in self.encoder.block:
            x = blk.layer[0](x, bias)
            x = blk.layer[1](x)
        return self.encoder.final_layer_norm(x)

    def decode(self, dec_ids, enc, enc_mask):
        neg = torch.finfo(torch.float32).min
        n = dec_ids.shape[1]
        causal = torch.tril(torch.ones(n, n))
        bias = self.decoder.block[0].layer[0].SelfAttention.compute_bias(n, n) + ((1.0 - causal) * neg)[None, None]
        cross = (1.0 - enc_mask.float())[:, None, None, :] * neg
        x = self.shared(dec_ids)
        for blk in self.decoder.block:
            x = blk.layer[0](x, bias)
            x = blk.layer[1](x, enc, cross)
            x = blk.layer[2](x)
        return self.lm_head(self.decoder.final_layer_norm(x))


class InstructBlipT5(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.vision_model = VisionModel(config["vision_config"])
        self.qformer = QFormer(config["qformer_config"])
        nq = config["num_query_tokens"]
        self.query_tokens = nn.Parameter(torch.zeros(1, nq, config["qformer_config"]["hidden_size"]))
        self.language_projection = nn.Linear(config["qformer_config"]["hidden_size"], config["text_config"]["d_model"])
        self.language_model = T5(config["text_config"])

    # -- pieces ----------------------------------------------------------------------------------------------
    def image_features(self, px):
        return self.vision_model(px)

    def encoder_states(self, img, qids, qmask, ids, mask):
        """img: vision output (B, N, D) already expanded to the batch of questions."""
        q = self.qformer(qids, qmask, self.query_tokens.expand(img.shape[0], -1, -1), img)
        lm_in = self.language_projection(q)
        emb = torch.cat([lm_in, self.language_model.shared(ids)], 1)
        full_mask = torch.cat([torch.ones(ids.shape[0], lm_in.shape[1]), mask.float()], 1)
        return self.language_model.encode(emb, full_mask), full_mask, q

    def loss(self, img, qids, qmask, ids, mask, labels):
        enc, emask, q = self.encoder_states(img, qids, qmask, ids, mask)
        dec_in = torch.cat([torch.zeros(labels.shape[0], 1, dtype=torch.long), labels[:, :-1]], 1)
        dec_in = dec_in.masked_fill(dec_in == -100, 0)
        logits = self.language_model.decode(dec_in, enc, emask)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100), q

    # -- generation (one example) ----------------------------------------------------------------------------
    @torch.no_grad()
    def greedy(self, px, qids, ids, max_new_tokens=32, eos=1):
        img = self.image_features(px[None])
        qids_t, ids_t = torch.tensor([qids]), torch.tensor([ids])
        enc, emask, _ = self.encoder_states(img, qids_t, torch.ones_like(qids_t), ids_t, torch.ones_like(ids_t))
        seq = [0]
        for _ in range(max_new_tokens):
            logits = self.language_model.decode(torch.tensor([seq]), enc, emask)[0, -1]
            t = int(logits.argmax())
            seq.append(t)
            if t == eos:
                break
        return seq

    @torch.no_grad()
    def beam_search(self, px, qids, ids, num_beams=3, max_new_tokens=32, eos=1, length_penalty=1.0):
        """transformers 4.36.2 beam search (BeamSearchScorer, early_stopping=False, batch 1)."""
        img = self.image_features(px[None])
        qids_t, ids_t = torch.tensor([qids]), torch.tensor([ids])
        enc, emask, _ = self.encoder_states(img, qids_t, torch.ones_like(qids_t), ids_t, torch.ones_like(ids_t))
        enc = enc.expand(num_beams, -1, -1)
        emask = emask.expand(num_beams, -1)
        prompt_len, max_length = 1, max_new_tokens + 1
        seqs = torch.zeros(num_beams, 1, dtype=torch.long)
        beam_scores = torch.zeros(num_beams)
        beam_scores[1:] = -1e9
        hyps, worst, done = [], 1e9, False

        def add(tokens, sum_logprobs, gen_len):
            nonlocal worst
            score = sum_logprobs / (gen_len ** length_penalty)
            if len(hyps) < num_beams or score > worst:
                hyps.append((score, tokens))
                if len(hyps) > num_beams:
                    order = sorted([(s, i) for i, (s, _) in enumerate(hyps)])
                    del hyps[order[0][1]]
                    worst = order[1][0]
                else:
                    worst = min(score, worst)

        while True:
            logits = self.language_model.decode(seqs, enc, emask)[:, -1].float()
            scores = F.log_softmax(logits, -1) + beam_scores[:, None]
            vocab = scores.shape[-1]
            top, idx = torch.topk(scores.view(-1), 2 * num_beams, largest=True, sorted=True)
            beam_idx, tok = idx // vocab, idx % vocab
            cur_len = seqs.shape[1] + 1
            nb_s, nb_t, nb_i = [], [], []
            for rank in range(2 * num_beams):
                s, t, bi = float(top[rank]), int(tok[rank]), int(beam_idx[rank])
                if t == eos:
                    if rank >= num_beams:
                        continue
                    add(seqs[bi].tolist(), s, cur_len - prompt_len)
                else:
                    nb_s.append(s)
                    nb_t.append(t)
                    nb_i.append(bi)
                if len(nb_s) == num_beams:
                    break
            if not done and len(hyps) >= num_beams:
                done = worst >= float(top.max()) / ((cur_len - prompt_len) ** length_penalty)
            seqs = torch.cat([seqs[torch.tensor(nb_i)], torch.tensor(nb_t)[:, None]], 1)
            beam_scores = torch.tensor(nb_s)
            if done or seqs.shape[1] >= max_length:
                break
        if not done:
            for b in range(num_beams):
                add(seqs[b].tolist(), float(beam_scores[b]), seqs.shape[1] - prompt_len)
        best_score, best = max(hyps, key=lambda h: h[0])
        if len(best) < max_length:
            best = best + [eos]
        return best, best_score


def load_model(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    m = InstructBlipT5(cfg)
    sd = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    own = m.state_dict()
    missing = set(own) - set(sd)
    extra = set(sd) - set(own)
    assert not missing and not extra, (sorted(missing)[:5], sorted(extra)[:5])
    m.load_state_dict(sd)
    m.eval()
    return m


def state_for_save(m):
    """The tensors transformers' save_pretrained writes (no duplicates of the shared embedding)."""
    return {k: v for k, v in m.state_dict().items()}
