// The parts LLaMA and OPT share (see decoder_only.hpp).
#include "decoder_only.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "instructblip/core/thread_pool.hpp"
#include "instructblip/layers/loss.hpp"
#include "instructblip/ops/ops.hpp"

namespace instructblip::models {

namespace {

/// torch.finfo(torch.float32).min: what HF's 4-d causal / padding mask holds at masked entries.
constexpr float kMaskMin = std::numeric_limits<float>::lowest();

inline void bf16_to_f32_run(const std::uint16_t* src, float* dst, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint32_t u = std::uint32_t(src[i]) << 16;
    std::memcpy(dst + i, &u, 4);
  }
}

void check_mask(const Tensor& mask, std::int64_t B, std::int64_t L, const std::string& what) {
  if (mask.dtype() != DType::I64 || mask.ndim() != 2 || mask.dim(0) != B || mask.dim(1) != L)
    throw InvalidArgument(what + ": attention_mask must be int64 [" + std::to_string(B) + ", " + std::to_string(L) +
                          "], got " + dtype_name(mask.dtype()) + " " + shape_str(mask.shape()));
  const std::int64_t* m = mask.data<std::int64_t>();
  for (std::int64_t i = 0; i < B * L; ++i)
    if (m[i] != 0 && m[i] != 1)
      throw InvalidArgument(what + ": attention_mask holds " + std::to_string(m[i]) + "; only 0 and 1 are accepted");
}

void check_embeds(const Tensor& e, std::int64_t H, const std::string& what) {
  if (!e.defined() || e.dtype() != DType::F32 || e.ndim() != 3 || e.dim(2) != H || e.dim(0) < 1 || e.dim(1) < 1)
    throw InvalidArgument(what + ": inputs_embeds must be float32 [B, L, " + std::to_string(H) +
                          "] with B, L >= 1, got " +
                          (e.defined() ? std::string(dtype_name(e.dtype())) + " " + shape_str(e.shape())
                                       : std::string("an undefined tensor")));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// DecoderOnlyState

DecoderOnlyState::DecoderOnlyState(std::unique_ptr<Data> data) : d_(std::move(data)) {}
DecoderOnlyState::~DecoderOnlyState() = default;
std::int64_t DecoderOnlyState::batch() const { return d_->B; }
bool DecoderOnlyState::prefilled() const { return d_->prefilled; }
std::int64_t DecoderOnlyState::cached_positions() const { return d_->prefilled ? d_->cache.length() : 0; }
Tensor DecoderOnlyState::attention_mask() const {
  const std::int64_t B = d_->B;
  const std::int64_t L = d_->prefilled ? d_->cache.length() : d_->L;
  Tensor t = Tensor::empty({B, L}, DType::I64);
  std::int64_t* p = t.data<std::int64_t>();
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t j = 0; j < L; ++j)
      p[b * L + j] = d_->prefilled ? d_->mask[std::size_t(b)][std::size_t(j)] : d_->prompt_mask[std::size_t(b * L + j)];
  return t;
}

// ---------------------------------------------------------------------------------------------
// DecoderOnlyModel

DecoderOnlyModel::DecoderOnlyModel(std::unique_ptr<detail::DecoderOnlyCore> core) : core_(std::move(core)) {}
DecoderOnlyModel::~DecoderOnlyModel() = default;
std::int64_t DecoderOnlyModel::vocab_size() const { return core_->V; }
std::int64_t DecoderOnlyModel::hidden_size() const { return core_->H; }
Tensor DecoderOnlyModel::embed(const Tensor& input_ids) const { return core_->embed_ids(input_ids); }
LMOutput DecoderOnlyModel::forward(const Tensor& inputs_embeds, const Tensor& attention_mask,
                                   const Tensor& /*decoder_input_ids*/, const Tensor& labels,
                                   bool output_hidden_states) const {
  return core_->forward(inputs_embeds, attention_mask, labels, output_hidden_states);
}
std::unique_ptr<LMState> DecoderOnlyModel::start(const Tensor& inputs_embeds, const Tensor& attention_mask,
                                                 std::int64_t max_new_tokens) const {
  return core_->start(inputs_embeds, attention_mask, max_new_tokens);
}
Tensor DecoderOnlyModel::step(LMState& state, const std::vector<std::int64_t>& tokens) const {
  return std::move(core_->step_batch({&state}, {tokens}).front());
}
std::vector<Tensor> DecoderOnlyModel::step_batch(const std::vector<LMState*>& states,
                                                 const std::vector<std::vector<std::int64_t>>& tokens) const {
  return core_->step_batch(states, tokens);
}
void DecoderOnlyModel::select_rows(LMState& state, const std::vector<std::int64_t>& index) const {
  core_->select_rows(state, index);
}
std::vector<std::pair<std::string, Tensor>> DecoderOnlyModel::named_weights(const std::string& prefix) const {
  std::vector<std::pair<std::string, Tensor>> out;
  const_cast<detail::DecoderOnlyCore&>(*core_).visit(WeightVisitor::saver(out), prefix);  // only reads the slots
  return out;
}
const std::vector<std::string>& DecoderOnlyModel::bound_tensor_names() const { return core_->bound; }
std::vector<std::pair<std::string, std::string>> DecoderOnlyModel::tied_aliases(const std::string& prefix) const {
  std::vector<std::pair<std::string, std::string>> out;
  const_cast<detail::DecoderOnlyCore&>(*core_).visit(WeightVisitor::alias_lister(out), prefix);  // touches no slot
  return out;
}
std::size_t DecoderOnlyModel::decode_weight_bytes() const { return core_->decode_weight_bytes(); }
std::size_t DecoderOnlyModel::lm_head_weight_bytes() const { return core_->lm_head.w.bytes(); }

namespace detail {

void dense(const Linear& d, const float* x, std::int64_t M, float* y) {
  d(ConstMatrixMap<float>(x, M, d.in_features()), MatrixMap<float>(y, M, d.out_features()));
}

// ---------------------------------------------------------------------------------------------
// Compute

void DecoderOnlyCore::embed_rows(const std::int64_t* ids, std::int64_t n, float* out) const {
  for (std::int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= V)
      throw InvalidArgument("token id " + std::to_string(ids[i]) + " is outside the vocabulary of " + std::to_string(V));
  if (embed.dtype() == DType::F32) {
    ops::embedding<float>(ids, std::size_t(n), ConstMatrixMap<float>(embed.data<float>(), V, H),
                          MatrixMap<float>(out, n, H));
    return;
  }
  const auto* tab = static_cast<const std::uint16_t*>(embed.raw());
  for (std::int64_t i = 0; i < n; ++i) bf16_to_f32_run(tab + ids[i] * H, out + i * H, H);
}

void DecoderOnlyCore::run_layers(float* h, const std::vector<Segment>& segments, std::int64_t T,
                                 const std::int64_t* positions, std::vector<Tensor>* hidden) const {
  std::int64_t R = 0;
  for (const Segment& sg : segments) {
    R += sg.B * T;
    sg.cache->reserve(sg.cache->length() + T);
  }
  const std::int64_t B = R / T;  // rows over all segments
  add_position_embeddings(h, R, positions);
  std::vector<float> xn(std::size_t(R * H)), q(std::size_t(R * nh * hd)), k(std::size_t(R * kvdim)),
      v(std::size_t(R * kvdim)), att(std::size_t(R * nh * hd));
  Scratch scratch;

  // Attention runs per (row, chunk of queries): each task builds HF's additive mask for its chunk
  // ([n, Lk]: finfo.min for future or padded keys), so memory stays O(chunk x Lk) for long prompts.
  constexpr std::int64_t kQueryChunk = 256;
  const std::int64_t chunk = std::min(T, kQueryChunk);
  const std::int64_t nchunks = (T + chunk - 1) / chunk;
  // (segment, row within it) of every row
  std::vector<std::pair<std::size_t, std::int64_t>> row_of;
  for (std::size_t s = 0; s < segments.size(); ++s)
    for (std::int64_t b = 0; b < segments[s].B; ++b) row_of.emplace_back(s, b);

  ops::AttentionOptions<float> ao;
  ao.num_heads = int(nh);
  ao.num_kv_heads = int(nkv);
  ao.head_dim = int(hd);
  ao.scale = attention_scale;

  for (std::size_t l = 0; l < num_layers(); ++l) {
    if (hidden) {
      Tensor t = Tensor::empty({B, T, H});
      std::memcpy(t.data<float>(), h, std::size_t(R * H) * sizeof(float));
      hidden->push_back(std::move(t));
    }
    attention_inputs(l, h, R, positions, xn.data(), q.data(), k.data(), v.data());
    const std::int64_t li = std::int64_t(l);
    for (std::int64_t r = 0; r < B; ++r) {
      const auto [sg, b] = row_of[std::size_t(r)];
      segments[sg].cache->write(li, b, k.data() + r * T * kvdim, v.data() + r * T * kvdim, T);
    }
    parallel_for(0, B * nchunks, 1, [&](std::int64_t t0, std::int64_t t1) {
      std::vector<float> mask;
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t r = t / nchunks, i0 = (t % nchunks) * chunk, n = std::min(chunk, T - i0);
        const auto [sg, b] = row_of[std::size_t(r)];
        const layers::KVCache& cache = *segments[sg].cache;
        const std::int64_t past = cache.length(), Lk = past + T;
        mask.resize(std::size_t(n * Lk));
        const std::uint8_t* valid = (*segments[sg].key_valid)[std::size_t(b)].data();
        for (std::int64_t i = 0; i < n; ++i) {
          float* m = mask.data() + i * Lk;
          const std::int64_t last = past + i0 + i;  // the query's own position: keys after it are future
          for (std::int64_t j = 0; j < Lk; ++j) m[j] = (j > last || !valid[j]) ? kMaskMin : 0.0f;
        }
        ops::AttentionOptions<float> o = ao;
        o.mask = mask.data();
        const std::int64_t q0 = r * T + i0;  // first query row
        ops::attention<float>(ConstMatrixMap<float>(q.data() + q0 * nh * hd, n, nh * hd),
                              ops::In<float>(cache.keys(li, b).topRows(Lk)),
                              ops::In<float>(cache.values(li, b).topRows(Lk)), o,
                              MatrixMap<float>(att.data() + q0 * nh * hd, n, nh * hd));
      }
    });
    finish_layer(l, att.data(), R, h, scratch);
  }
  for (const Segment& sg : segments) sg.cache->advance(T);
}

Tensor DecoderOnlyCore::embed_ids(const Tensor& input_ids) const {
  if (!input_ids.defined() || input_ids.dtype() != DType::I64)
    throw InvalidArgument("embed: input_ids must be a defined int64 tensor");
  Shape s = input_ids.shape();
  s.push_back(H);
  Tensor out = Tensor::empty(s);
  embed_rows(input_ids.data<std::int64_t>(), input_ids.numel(), out.data<float>());
  return out;
}

LMOutput DecoderOnlyCore::forward(const Tensor& inputs_embeds, const Tensor& attention_mask, const Tensor& labels,
                                  bool output_hidden_states) const {
  const std::string what = name + "::forward";
  check_embeds(inputs_embeds, H, what);
  const std::int64_t B = inputs_embeds.dim(0), L = inputs_embeds.dim(1);
  std::vector<std::vector<std::uint8_t>> valid(std::size_t(B), std::vector<std::uint8_t>(std::size_t(L), 1));
  if (attention_mask.defined()) {
    check_mask(attention_mask, B, L, what);
    const std::int64_t* am = attention_mask.data<std::int64_t>();
    for (std::int64_t i = 0; i < B * L; ++i) valid[std::size_t(i / L)][std::size_t(i % L)] = std::uint8_t(am[i]);
  }
  std::int64_t Lout = L;
  if (labels.defined()) {
    if (labels.dtype() != DType::I64 || labels.ndim() != 2 || labels.dim(0) != B || labels.dim(1) < 1 ||
        labels.dim(1) > L)
      throw InvalidArgument(what + ": labels must be int64 [" + std::to_string(B) + ", L'] with 1 <= L' <= " +
                            std::to_string(L) + ", got " + dtype_name(labels.dtype()) + " " +
                            shape_str(labels.shape()));
    const std::int64_t* lp = labels.data<std::int64_t>();
    for (std::int64_t i = 0; i < labels.numel(); ++i)
      if (lp[i] != -100 && (lp[i] < 0 || lp[i] >= V))
        throw InvalidArgument(what + ": label " + std::to_string(lp[i]) + " is outside [0, " + std::to_string(V) +
                              ") and is not -100");
    Lout = labels.dim(1);
  }

  std::vector<float> h(inputs_embeds.data<float>(), inputs_embeds.data<float>() + B * L * H);
  std::vector<std::int64_t> pos(std::size_t(B * L));
  for (std::int64_t b = 0; b < B; ++b) {
    std::int64_t c = 0;
    for (std::int64_t t = 0; t < L; ++t) {
      const std::uint8_t mv = valid[std::size_t(b)][std::size_t(t)];
      c += mv;
      pos[std::size_t(b * L + t)] = !forward_positions_from_mask() ? t : mv ? c - 1 : pad_position();
    }
  }
  LMOutput out;
  {
    layers::KVCache cache(std::int64_t(num_layers()), B, kvdim, L);
    run_layers(h.data(), {Segment{B, &valid, &cache}}, L, pos.data(),
               output_hidden_states ? &out.hidden_states : nullptr);
  }

  Tensor normed = Tensor::empty({B, L, H});
  final_norm(h.data(), B * L, normed.data<float>());
  if (output_hidden_states) out.hidden_states.push_back(normed);

  // lm_head over the last Lout positions of each row.
  std::vector<float> sel;
  const float* lm_in = normed.data<float>();
  if (Lout != L) {
    sel.resize(std::size_t(B * Lout * H));
    for (std::int64_t b = 0; b < B; ++b)
      std::memcpy(sel.data() + b * Lout * H, normed.data<float>() + (b * L + L - Lout) * H,
                  std::size_t(Lout * H) * sizeof(float));
    lm_in = sel.data();
  }
  out.logits = Tensor::empty({B, Lout, V});
  dense(lm_head, lm_in, B * Lout, out.logits.data<float>());

  // InstructBLIP / BLIP-2: logits[:, -L':] shifted by one against labels[:, 1:], CE(ignore_index=-100, mean).
  if (labels.defined()) out.loss = layers::cross_entropy(out.logits, labels, /*shift_labels=*/true);
  return out;
}

std::unique_ptr<LMState> DecoderOnlyCore::start(const Tensor& inputs_embeds, const Tensor& attention_mask,
                                                std::int64_t max_new_tokens) const {
  const std::string what = name + "::start";
  check_embeds(inputs_embeds, H, what);
  const std::int64_t B = inputs_embeds.dim(0), L = inputs_embeds.dim(1);
  auto d = std::make_unique<DecoderOnlyState::Data>();
  d->model = this;
  d->B = B;
  d->L = L;
  // A capacity hint only (the caches grow past it), so a huge value does not allocate up front.
  constexpr std::int64_t kMaxInitialCapacity = 1024;
  d->max_new = std::clamp<std::int64_t>(max_new_tokens, 0, kMaxInitialCapacity);
  d->prompt.assign(inputs_embeds.data<float>(), inputs_embeds.data<float>() + B * L * H);
  d->prompt_mask.assign(std::size_t(B * L), 1);
  if (attention_mask.defined()) {
    check_mask(attention_mask, B, L, what);
    const std::int64_t* am = attention_mask.data<std::int64_t>();
    for (std::int64_t i = 0; i < B * L; ++i) d->prompt_mask[std::size_t(i)] = std::uint8_t(am[i]);
  }
  return std::make_unique<DecoderOnlyState>(std::move(d));
}

std::vector<Tensor> DecoderOnlyCore::step_batch(const std::vector<LMState*>& states,
                                                const std::vector<std::vector<std::int64_t>>& tokens) const {
  const std::string what = name + "::step";
  const std::size_t nl = num_layers();
  if (tokens.size() != states.size())
    throw InvalidArgument(what + ": " + std::to_string(tokens.size()) + " token lists for " +
                          std::to_string(states.size()) + " states");
  std::vector<DecoderOnlyState::Data*> data;
  for (std::size_t i = 0; i < states.size(); ++i) {
    auto* ls = states[i] ? dynamic_cast<DecoderOnlyState*>(states[i]) : nullptr;
    if (!ls || ls->data().model != this)
      throw InvalidArgument(what + ": the state was not created by this model's start()");
    DecoderOnlyState::Data* d = &ls->data();
    if (std::find(data.begin(), data.end(), d) != data.end()) throw InvalidArgument(what + ": a state is given twice");
    if (d->prefilled && std::int64_t(tokens[i].size()) != d->B)
      throw InvalidArgument(what + ": " + std::to_string(tokens[i].size()) + " tokens for a state of " +
                            std::to_string(d->B) + " rows");
    data.push_back(d);
  }
  // logits [rows, V] of final-normed `last` rows
  auto head = [&](const float* last, std::int64_t rows) {
    std::vector<float> normed(std::size_t(rows * H));
    final_norm(last, rows, normed.data());
    Tensor logits = Tensor::empty({rows, V});
    dense(lm_head, normed.data(), rows, logits.data<float>());
    return logits;
  };
  std::vector<Tensor> out(states.size());
  std::vector<std::size_t> decoding;
  for (std::size_t i = 0; i < data.size(); ++i) {
    DecoderOnlyState::Data& d = *data[i];
    if (d.prefilled) {
      decoding.push_back(i);
      continue;
    }
    // Prefill (alone: its products have the prompt's many rows): generate()'s positions
    // cumsum(mask) - 1, pads -> pad_position().
    const std::int64_t B = d.B, L = d.L;
    d.cache = layers::KVCache(std::int64_t(nl), B, kvdim, L + std::max<std::int64_t>(1, d.max_new));
    d.mask.assign(std::size_t(B), std::vector<std::uint8_t>(std::size_t(L), 0));
    d.attended.assign(std::size_t(B), 0);
    std::vector<std::int64_t> pos(std::size_t(B * L));
    for (std::int64_t b = 0; b < B; ++b) {
      std::int64_t c = 0;
      for (std::int64_t t = 0; t < L; ++t) {
        const std::uint8_t mv = d.prompt_mask[std::size_t(b * L + t)];
        d.mask[std::size_t(b)][std::size_t(t)] = mv;
        c += mv;
        pos[std::size_t(b * L + t)] = mv ? c - 1 : pad_position();
      }
      d.attended[std::size_t(b)] = c;
    }
    run_layers(d.prompt.data(), {Segment{B, &d.mask, &d.cache}}, L, pos.data(), nullptr);
    std::vector<float> last(std::size_t(B * H));
    for (std::int64_t b = 0; b < B; ++b)
      std::memcpy(last.data() + b * H, d.prompt.data() + (b * L + L - 1) * H, std::size_t(H) * sizeof(float));
    d.prefilled = true;
    std::vector<float>().swap(d.prompt);
    std::vector<std::uint8_t>().swap(d.prompt_mask);
    out[i] = head(last.data(), B);
  }
  if (decoding.empty()) return out;
  // One token per row of every decoding state, all rows through the layers together; each row
  // computed as it would be alone.
  ops::RowIndependentProducts row_independent;
  std::vector<Segment> segments;
  std::vector<std::int64_t> ids, pos;
  for (std::size_t i : decoding) {
    DecoderOnlyState::Data& d = *data[i];
    segments.push_back({d.B, &d.mask, &d.cache});
    ids.insert(ids.end(), tokens[i].begin(), tokens[i].end());
  }
  const std::int64_t R = std::int64_t(ids.size());
  std::vector<float> last(std::size_t(R * H));
  embed_rows(ids.data(), R, last.data());
  for (std::size_t i : decoding) {
    DecoderOnlyState::Data& d = *data[i];
    for (std::int64_t b = 0; b < d.B; ++b) {
      d.mask[std::size_t(b)].push_back(1);
      pos.push_back(d.attended[std::size_t(b)]++);  // cumsum(mask)[-1] - 1
    }
  }
  run_layers(last.data(), segments, 1, pos.data(), nullptr);  // the caches grow as needed
  Tensor all = head(last.data(), R);
  std::int64_t r = 0;
  for (std::size_t i : decoding) {
    const std::int64_t B = data[i]->B;
    Tensor t = Tensor::empty({B, V});
    std::memcpy(t.data<float>(), all.data<float>() + r * V, std::size_t(B * V) * sizeof(float));
    out[i] = std::move(t);
    r += B;
  }
  return out;
}

void DecoderOnlyCore::select_rows(LMState& state, const std::vector<std::int64_t>& index) const {
  const std::string what = name + "::select_rows";
  auto* ls = dynamic_cast<DecoderOnlyState*>(&state);
  if (!ls || ls->data().model != this) throw InvalidArgument(what + ": the state was not created by this model's start()");
  DecoderOnlyState::Data& d = ls->data();
  const std::int64_t B = d.B, NB = std::int64_t(index.size());
  if (NB == 0) throw InvalidArgument(what + ": empty index");
  for (std::int64_t i : index)
    if (i < 0 || i >= B)
      throw InvalidArgument(what + ": row " + std::to_string(i) + " is outside [0, " + std::to_string(B) + ")");
  bool identity = NB == B;
  for (std::int64_t r = 0; identity && r < NB; ++r) identity = index[std::size_t(r)] == r;
  if (identity) return;
  // buf holds B rows of `row` elements of which the first `used` are meaningful.
  auto gather = [&](auto& buf, std::int64_t row, std::int64_t used) {
    using Vec = std::decay_t<decltype(buf)>;
    Vec nb(std::size_t(NB * row));
    for (std::int64_t r = 0; r < NB; ++r) std::copy_n(buf.begin() + index[std::size_t(r)] * row, used, nb.begin() + r * row);
    buf.swap(nb);
  };
  if (!d.prefilled) {
    gather(d.prompt, d.L * H, d.L * H);
    gather(d.prompt_mask, d.L, d.L);
  } else {
    d.cache.select_rows(index);
    gather(d.mask, 1, 1);
    gather(d.attended, 1, 1);
  }
  d.B = NB;
}

}  // namespace detail
}  // namespace instructblip::models
