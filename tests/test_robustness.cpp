// Robustness: resource limits (settings, prompt lengths, rows) are clear InvalidArguments checked
// before any large allocation; checkpoints that do not match their config (extra tensors, integer
// weights, wrong shapes, inconsistent configs, tokenizers larger than the vocabulary) fail at load
// with an error naming the problem; long prompts (query-chunked attention) compute what short ones do.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include "instructblip/instructblip.hpp"
#include "instructblip/models/llama.hpp"
#include "instructblip/models/t5.hpp"
#include "reference_util.hpp"

using namespace instructblip;
using ibtest::Reference;
namespace fs = std::filesystem;

namespace {

// ---- helpers -----------------------------------------------------------------------------------

/// Runs fn, expects an exception of type E whose what() contains every one of `needles`.
template <typename E>
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no exception thrown (expected one mentioning '" << needles.front() << "')";
  } catch (const E& e) {
    const std::string what = e.what();
    if (std::getenv("IB_SHOW_ERRORS")) std::cout << "  what(): " << what << "\n";
    for (const auto& n : needles) EXPECT_NE(what.find(n), std::string::npos) << "'" << n << "' not in: " << what;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

/// A private copy of a fixture checkpoint directory (removed on destruction).
struct FixtureCopy {
  FixtureCopy(const std::string& fixture, const std::string& tag) {
    dir = ibtest::tmp_dir() + "/robustness-" + tag + "-" + std::to_string(::getpid());
    fs::remove_all(dir);
    fs::copy(Reference(fixture).model_dir(), dir, fs::copy_options::recursive);
  }
  ~FixtureCopy() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  nlohmann::json read_json(const std::string& name) const {
    std::ifstream in(dir + "/" + name);
    return nlohmann::json::parse(in);
  }
  void write_json(const std::string& name, const nlohmann::json& j) const {
    std::ofstream(dir + "/" + name) << j.dump(2);
  }
  /// Rewrites `file` (a safetensors file of the copy) after `edit` changed its tensor list.
  void rewrite(const std::string& file,
               const std::function<void(std::vector<std::pair<std::string, Tensor>>&)>& edit) const {
    std::vector<std::pair<std::string, Tensor>> tensors;
    {
      auto st = io::SafeTensors::open(dir + "/" + file);
      for (const auto& n : st.names()) tensors.emplace_back(n, st.get(n).clone());
    }
    edit(tensors);
    io::save_safetensors(dir + "/" + file + ".tmp", tensors);
    fs::rename(dir + "/" + file + ".tmp", dir + "/" + file);
  }
  std::string dir;
};

Tensor find_tensor(const std::vector<std::pair<std::string, Tensor>>& ts, const std::string& name) {
  for (const auto& kv : ts)
    if (kv.first == name) return kv.second;
  throw std::runtime_error("fixture lacks " + name);
}

void replace_tensor(std::vector<std::pair<std::string, Tensor>>& ts, const std::string& name, Tensor t) {
  for (auto& kv : ts)
    if (kv.first == name) kv.second = std::move(t);
}

Tensor as_i64(const Tensor& t) {
  Tensor out = Tensor::empty(t.shape(), DType::I64);
  for (std::int64_t i = 0; i < t.numel(); ++i) out.data<std::int64_t>()[i] = std::int64_t(t.f(i) * 1000);
  return out;
}

const InstructBlipForConditionalGeneration& t5_model() {
  static auto m = InstructBlipForConditionalGeneration::from_pretrained(Reference("t5-tiny").model_dir());
  return m;
}

GenerationConfig short_greedy(const InstructBlipForConditionalGeneration& m) {
  GenerationConfig g = m.generation_config();
  g.max_new_tokens = 3;
  return g;
}

std::string words(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += (i ? " " : "") + std::string(i % 2 ? "picture" : "describe");
  return s;
}

// ---- resource limits ---------------------------------------------------------------------------

TEST(Limits, DefaultsAreDocumentedValues) {
  const GenerationLimits l;
  EXPECT_EQ(l.max_prompt_tokens, 8192);
  EXPECT_EQ(l.max_length, 65536);
  EXPECT_EQ(l.max_num_beams, 64);
  EXPECT_EQ(l.max_num_return_sequences, 64);
  EXPECT_EQ(l.max_rows, 1024);
  EXPECT_EQ(l.max_total_positions, std::int64_t(1) << 20);
  EXPECT_EQ(l.max_output_scores_bytes, std::int64_t(4) << 30);
  EXPECT_NO_THROW(l.validate());
  GenerationLimits bad;
  bad.max_rows = 0;
  expect_error<InvalidArgument>([&] { bad.validate(); }, {"max_rows"});
}

TEST(Limits, GenerationSettingsBeyondTheLimitsAreInvalidArgument) {
  GenerationConfig c;
  c.bos_token_id = 1;
  c.eos_token_id = {1};
  c.pad_token_id = 0;
  c.decoder_start_token_id = 0;
  auto resolve = [](const GenerationConfig& g) { return generation::resolve_generation_config(g, true); };
  EXPECT_NO_THROW(resolve(c));

  GenerationConfig g = c;
  g.max_new_tokens = std::int64_t(1) << 40;
  expect_error<InvalidArgument>([&] { resolve(g); }, {"max_new_tokens", "1099511627776", "65535"});
  g.max_new_tokens = std::numeric_limits<std::int64_t>::max();  // no overflow of 1 + max_new_tokens
  expect_error<InvalidArgument>([&] { resolve(g); }, {"max_new_tokens"});
  g.max_new_tokens = 65535;
  EXPECT_EQ(resolve(g).max_length, 65536);

  g = c;
  g.max_length = 65537;
  expect_error<InvalidArgument>([&] { resolve(g); }, {"max_length", "65537", "65536"});

  g = c;
  g.num_beams = 65;
  expect_error<InvalidArgument>([&] { resolve(g); }, {"num_beams", "65", "max_num_beams"});
  g.num_beams = 64;
  EXPECT_NO_THROW(resolve(g));

  g = c;
  g.do_sample = true;
  g.num_return_sequences = 65;
  expect_error<InvalidArgument>([&] { resolve(g); }, {"num_return_sequences", "65", "max_num_return_sequences"});

  // custom limits
  GenerationLimits lim;
  lim.max_num_beams = 4;
  g = c;
  g.num_beams = 5;
  expect_error<InvalidArgument>([&] { generation::resolve_generation_config(g, true, lim); }, {"max_num_beams", "4"});
}

TEST(Limits, SizesBeyondTheLimitsAreInvalidArgument) {
  GenerationConfig c;
  c.bos_token_id = 1;
  c.eos_token_id = {1};
  c.pad_token_id = 0;
  c.num_beams = 64;
  c.max_length = 16384;
  c = generation::resolve_generation_config(c, false);
  // 64 rows x (10 + 16384) positions > 2^20
  expect_error<InvalidArgument>([&] { generation::check_generation_size(c, 1, 10, 1000); },
                                {"max_total_positions", "64 x (10 + 16384)", "1048576"});
  EXPECT_NO_THROW(generation::check_generation_size(c, 1, 0, 1000));
  c.max_length = 100;
  EXPECT_NO_THROW(generation::check_generation_size(c, 1, 10, 1000));
  expect_error<InvalidArgument>([&] { generation::check_generation_size(c, 17, 10, 1000); },
                                {"rows", "1088", "max_rows", "1024"});
  expect_error<InvalidArgument>([&] { generation::check_generation_size(c, 1, 8193, 1000); },
                                {"prompt", "8193", "max_prompt_tokens", "8192"});
  c.output_scores = true;
  expect_error<InvalidArgument>([&] { generation::check_generation_size(c, 1, 10, 1 << 20); },
                                {"output_scores", "max_output_scores_bytes"});
}

TEST(Limits, ModelRejectsHugeSettingsBeforeRunningAnything) {
  Reference ref("t5-tiny");
  const auto& m = t5_model();
  const Tensor px = ref.get("a.pixel_values"), qi = ref.get("a.qformer_input_ids"),
               qm = ref.get("a.qformer_attention_mask"), ii = ref.get("a.input_ids"), im = ref.get("a.attention_mask");
  const auto t0 = std::chrono::steady_clock::now();
  GenerationConfig g = short_greedy(m);
  g.max_new_tokens = 1000000000;
  expect_error<InvalidArgument>([&] { m.generate(px, qi, qm, ii, im, g); }, {"max_new_tokens", "max_length"});
  g = short_greedy(m);
  g.num_beams = 1000;
  expect_error<InvalidArgument>([&] { m.generate(px, qi, qm, ii, im, g); }, {"num_beams", "1000", "64"});
  g = short_greedy(m);
  g.num_beams = 64;
  g.num_return_sequences = 2;
  g.max_new_tokens = 65535;
  expect_error<InvalidArgument>([&] { m.generate(px, qi, qm, ii, im, g); }, {"max_total_positions"});
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(ms, 5000.0);  // rejected up front, not after a long run
}

TEST(Limits, ModelLimitsComeFromLoadOptions) {
  Reference ref("t5-tiny");
  LoadOptions opt;
  opt.limits.max_prompt_tokens = 12;  // 8 query tokens + at most 4 text tokens
  opt.limits.max_rows = 2;
  auto m = InstructBlipForConditionalGeneration::from_pretrained(ref.model_dir(), opt);
  EXPECT_EQ(m.limits().max_prompt_tokens, 12);
  const Tensor px = ref.get("a.pixel_values"), qi = ref.get("a.qformer_input_ids");
  const GenerationConfig g = short_greedy(m);
  const Tensor four = Tensor::from_vector({1, 4}, std::vector<std::int64_t>{5, 6, 7, 1});
  EXPECT_NO_THROW(m.generate(px, qi, Tensor(), four, Tensor(), g));
  const Tensor five = Tensor::from_vector({1, 5}, std::vector<std::int64_t>{5, 6, 7, 8, 1});
  expect_error<InvalidArgument>([&] { m.generate(px, qi, Tensor(), five, Tensor(), g); },
                                {"num_query_tokens 8 + 5 input_ids", "13", "max_prompt_tokens", "12"});
  expect_error<InvalidArgument>([&] { m.forward(px, qi, Tensor(), five, Tensor(), five); },
                                {"13", "max_prompt_tokens"});
  // decoder length of a teacher-forced forward
  const Tensor dec = Tensor::from_vector({1, 13}, std::vector<std::int64_t>(13, 3));
  expect_error<InvalidArgument>([&] { m.forward(px, qi, Tensor(), four, Tensor(), dec); },
                                {"decoder_input_ids", "13", "max_prompt_tokens"});
  GenerationConfig beams = g;
  beams.num_beams = 3;
  expect_error<InvalidArgument>([&] { m.generate(px, qi, Tensor(), four, Tensor(), beams); },
                                {"rows", "max_rows", "2"});
  LoadOptions bad;
  bad.limits.max_length = 0;
  expect_error<InvalidArgument>([&] { InstructBlipForConditionalGeneration::from_pretrained(ref.model_dir(), bad); },
                                {"max_length"});
}

TEST(Limits, QFormerPromptLongerThanItsPositionEmbeddingsIsClearAtModelLevel) {
  Reference ref("t5-tiny");
  const auto& m = t5_model();
  ASSERT_EQ(m.config().qformer_config.max_position_embeddings, 512);
  auto proc = InstructBlipProcessor::from_pretrained(ref.model_dir());
  const Image img = load_image(ibtest::data_dir() + "/images/merlion.png");
  const std::string prompt = words(600);
  auto in = proc(img, prompt);
  ASSERT_GT(in.qformer_input_ids.dim(1), 512);
  expect_error<InvalidArgument>(
      [&] {
        m.generate(in.pixel_values, in.qformer_input_ids, in.qformer_attention_mask, in.input_ids, in.attention_mask,
                   short_greedy(m));
      },
      {"qformer_input_ids", std::to_string(in.qformer_input_ids.dim(1)), "max_position_embeddings = 512",
       "truncation"});
  expect_error<InvalidArgument>(
      [&] {
        m.forward(in.pixel_values, in.qformer_input_ids, in.qformer_attention_mask, in.input_ids, in.attention_mask,
                  Tensor::from_vector({1, 1}, std::vector<std::int64_t>{0}));
      },
      {"qformer_input_ids", "max_position_embeddings = 512"});
  // the documented way out: truncation to the tokenizers' model_max_length (512 for both here)
  ProcessorOptions opt;
  opt.truncation = true;
  auto cut = proc(img, prompt, opt);
  EXPECT_EQ(cut.qformer_input_ids.dim(1), 512);
  EXPECT_LE(cut.input_ids.dim(1), 512);
  auto out = m.generate(cut.pixel_values, cut.qformer_input_ids, cut.qformer_attention_mask, cut.input_ids,
                        cut.attention_mask, short_greedy(m));
  EXPECT_EQ(out.sequences.size(), 1u);
}

TEST(Limits, OutOfVocabularyIdsAreNamedAtModelLevel) {
  Reference ref("t5-tiny");
  const auto& m = t5_model();
  const Tensor px = ref.get("a.pixel_values");
  const Tensor bad_q = Tensor::from_vector({1, 2}, std::vector<std::int64_t>{101, 5000});
  expect_error<InvalidArgument>([&] { m.generate(px, bad_q, Tensor(), Tensor(), Tensor(), short_greedy(m)); },
                                {"qformer_input_ids", "5000", "qformer_config.vocab_size"});
  const Tensor bad_t = Tensor::from_vector({1, 2}, std::vector<std::int64_t>{-1, 1});
  expect_error<InvalidArgument>(
      [&] { m.generate(px, ref.get("a.qformer_input_ids"), Tensor(), bad_t, Tensor(), short_greedy(m)); },
      {"input_ids", "-1"});
}

// ---- long prompts: query-chunked attention computes what token-by-token decoding computes ---------

TEST(LongPrompts, LlamaChunkedPrefillMatchesIncrementalDecoding) {
  auto ck = io::Checkpoint::open(Reference("llama-tiny").model_dir());
  auto cfg = InstructBlipConfig::from_json_file(Reference("llama-tiny").model_dir() + "/config.json");
  models::LlamaModel lm(cfg.llama(), ck);
  const std::int64_t L = 300;  // > the 256-query chunk
  std::vector<std::int64_t> ids(L);
  for (std::int64_t i = 0; i < L; ++i) ids[std::size_t(i)] = (i * 37 + 11) % 1000;
  const Tensor all = lm.embed(Tensor::from_vector({1, L}, ids));
  const auto fwd = lm.forward(all, Tensor());
  // incremental: prefill the first 200, then feed the rest one token at a time
  const std::int64_t P = 200;
  const Tensor head = lm.embed(Tensor::from_vector({1, P}, std::vector<std::int64_t>(ids.begin(), ids.begin() + P)));
  auto st = lm.start(head, Tensor::from_vector({1, P}, std::vector<std::int64_t>(P, 1)), 8);
  Tensor logits = lm.step(*st, {});
  double err = 0;
  for (std::int64_t t = P;; ++t) {
    const float* f = fwd.logits.data<float>() + (t - 1) * lm.vocab_size();
    for (std::int64_t v = 0; v < lm.vocab_size(); ++v) err = std::max(err, double(std::fabs(f[v] - logits.f(v))));
    if (t == L) break;
    logits = lm.step(*st, {ids[std::size_t(t)]});
  }
  EXPECT_LE(err, 1e-4);
}

TEST(LongPrompts, T5ChunkedDecoderMatchesIncrementalDecoding) {
  auto ck = io::Checkpoint::open(Reference("t5-tiny").model_dir());
  auto cfg = InstructBlipConfig::from_json_file(Reference("t5-tiny").model_dir() + "/config.json");
  models::T5Model lm(cfg.t5(), ck);
  const std::int64_t L = 20, T = 300;  // decoder length > the 256-query chunk
  const Tensor enc_ids = Tensor::from_vector({1, L}, std::vector<std::int64_t>(std::size_t(L), 7));
  const Tensor embeds = lm.embed(enc_ids);
  const Tensor mask = Tensor::from_vector({1, L}, std::vector<std::int64_t>(std::size_t(L), 1));
  std::vector<std::int64_t> dec(T);
  for (std::int64_t i = 0; i < T; ++i) dec[std::size_t(i)] = (i * 53 + 3) % 1100;
  const auto fwd = lm.forward(embeds, mask, Tensor::from_vector({1, T}, dec));
  auto st = lm.start(embeds, mask, 4);
  double err = 0;
  for (std::int64_t t = 0; t < T; ++t) {
    const Tensor logits = lm.step(*st, {dec[std::size_t(t)]});
    const float* f = fwd.logits.data<float>() + t * lm.vocab_size();
    for (std::int64_t v = 0; v < lm.vocab_size(); ++v) err = std::max(err, double(std::fabs(f[v] - logits.f(v))));
  }
  EXPECT_LE(err, 1e-4);
}

TEST(LongPrompts, T5EncoderOfALongPromptKeepsShortRowsUnchanged) {
  // A padded batch: row 0 is 300 positions, row 1 the same first 40 positions then padding. The
  // padded row's encoder output must equal that of the 40-position prompt alone.
  auto ck = io::Checkpoint::open(Reference("t5-tiny").model_dir());
  auto cfg = InstructBlipConfig::from_json_file(Reference("t5-tiny").model_dir() + "/config.json");
  models::T5Model lm(cfg.t5(), ck);
  const std::int64_t L = 300, S = 40;
  std::vector<std::int64_t> ids(2 * L), mask(2 * L, 0);
  for (std::int64_t i = 0; i < L; ++i) {
    ids[std::size_t(i)] = ids[std::size_t(L + i)] = (i * 29 + 5) % 1100;
    mask[std::size_t(i)] = 1;
    mask[std::size_t(L + i)] = i < S ? 1 : 0;
  }
  const auto batch = lm.encode(lm.embed(Tensor::from_vector({2, L}, ids)), Tensor::from_vector({2, L}, mask));
  const auto alone = lm.encode(lm.embed(Tensor::from_vector({1, S}, std::vector<std::int64_t>(ids.begin(), ids.begin() + S))),
                               Tensor::from_vector({1, S}, std::vector<std::int64_t>(std::size_t(S), 1)));
  const std::int64_t D = lm.hidden_size();
  double err = 0;
  for (std::int64_t i = 0; i < S * D; ++i)
    err = std::max(err, double(std::fabs(batch.last_hidden_state.f(L * D + i) - alone.last_hidden_state.f(i))));
  EXPECT_LE(err, 1e-4);
}

// ---- load-time validation ------------------------------------------------------------------------

TEST(LoadValidation, ExtraTensorIsAnErrorNamingIt) {
  FixtureCopy c("t5-tiny", "extra");
  c.rewrite("model.safetensors", [](auto& ts) {
    ts.emplace_back("language_model.encoder.block.9.layer.0.SelfAttention.q.weight", Tensor::zeros({48, 48}));
    ts.emplace_back("vision_model.extra_head.weight", Tensor::zeros({2}));
  });
  expect_error<TensorError>([&] { InstructBlipForConditionalGeneration::from_pretrained(c.dir); },
                            {"2 tensors", "not used", "language_model.encoder.block.9.layer.0.SelfAttention.q.weight",
                             "vision_model.extra_head.weight"});
}

TEST(LoadValidation, KnownAliasesAndDroppedBuffersAreAccepted) {
  FixtureCopy c("t5-tiny", "alias");
  c.rewrite("model.safetensors", [](auto& ts) {
    const Tensor shared = find_tensor(ts, "language_model.shared.weight");
    ts.emplace_back("language_model.encoder.embed_tokens.weight", shared.clone());
    Tensor changed = shared.clone();
    changed.data<float>()[5] += 0.5f;
    ts.emplace_back("language_model.decoder.embed_tokens.weight", changed);
    std::vector<std::int64_t> pos(512);
    for (int i = 0; i < 512; ++i) pos[std::size_t(i)] = i;
    ts.emplace_back("qformer.embeddings.position_ids", Tensor::from_vector({1, 512}, pos));
  });
  // the decoder alias holds one changed value: it no longer equals shared.weight
  expect_error<TensorError>([&] { InstructBlipForConditionalGeneration::from_pretrained(c.dir); },
                            {"language_model.decoder.embed_tokens.weight", "differs", "language_model.shared.weight"});
  c.rewrite("model.safetensors", [](auto& ts) {
    replace_tensor(ts, "language_model.decoder.embed_tokens.weight", find_tensor(ts, "language_model.shared.weight"));
  });
  auto m = InstructBlipForConditionalGeneration::from_pretrained(c.dir);
  // and the model computes exactly what the fixture computes
  Reference ref("t5-tiny");
  const auto a = m.generate(ref.get("a.pixel_values"), ref.get("a.qformer_input_ids"), Tensor(), ref.get("a.input_ids"),
                            Tensor(), short_greedy(m));
  const auto b = t5_model().generate(ref.get("a.pixel_values"), ref.get("a.qformer_input_ids"), Tensor(),
                                     ref.get("a.input_ids"), Tensor(), short_greedy(t5_model()));
  EXPECT_EQ(a.sequences, b.sequences);
}

TEST(LoadValidation, UntiedLmHeadIsNotAnAlias) {
  // t5-tiny has tie_word_embeddings = false: lm_head.weight is bound, and an unknown alias-like
  // name (e.g. a typo) is still an error.
  FixtureCopy c("t5-tiny", "typo");
  c.rewrite("model.safetensors", [](auto& ts) {
    ts.emplace_back("language_model.encoder.embed_token.weight", find_tensor(ts, "language_model.shared.weight"));
  });
  expect_error<TensorError>([&] { InstructBlipForConditionalGeneration::from_pretrained(c.dir); },
                            {"1 tensor", "language_model.encoder.embed_token.weight"});
}

TEST(LoadValidation, IntegerWeightIsAnErrorNamingIt) {
  for (const std::string name : {"vision_model.post_layernorm.bias", "qformer.encoder.layer.0.attention.output.dense.weight",
                                 "language_projection.weight", "language_model.decoder.final_layer_norm.weight"}) {
    FixtureCopy c("t5-tiny", "i64");
    c.rewrite("model.safetensors", [&](auto& ts) { replace_tensor(ts, name, as_i64(find_tensor(ts, name))); });
    expect_error<TensorError>([&] { InstructBlipForConditionalGeneration::from_pretrained(c.dir); }, {name, "I64"});
  }
}

TEST(LoadValidation, IntegerWeightInALlamaShardIsAnErrorNamingIt) {
  FixtureCopy c("llama-tiny", "llama-i64");
  const auto index = c.read_json("model.safetensors.index.json");
  const std::string name = "language_model.model.layers.1.mlp.down_proj.weight";
  const std::string shard = index["weight_map"][name].get<std::string>();
  c.rewrite(shard, [&](auto& ts) {
    Tensor t = find_tensor(ts, name);
    Tensor u8 = Tensor::zeros(t.shape(), DType::U8);
    replace_tensor(ts, name, u8);
  });
  expect_error<TensorError>([&] { InstructBlipForConditionalGeneration::from_pretrained(c.dir); }, {name, "U8"});
}

TEST(LoadValidation, ExtraTensorInALlamaIndexIsAnError) {
  FixtureCopy c("llama-tiny", "llama-extra");
  auto index = c.read_json("model.safetensors.index.json");
  const std::string shard = index["weight_map"]["language_model.model.norm.weight"].get<std::string>();
  c.rewrite(shard, [](auto& ts) {
    ts.emplace_back("language_model.model.layers.2.input_layernorm.weight", Tensor::zeros({48}));
    ts.emplace_back("language_model.model.layers.0.self_attn.rotary_emb.inv_freq", Tensor::zeros({6}));
  });
  index["weight_map"]["language_model.model.layers.2.input_layernorm.weight"] = shard;
  index["weight_map"]["language_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = shard;
  c.write_json("model.safetensors.index.json", index);
  // the rotary buffer is a known, dropped buffer; the third layer's norm is not part of a 2-layer model
  expect_error<TensorError>([&] { InstructBlipForConditionalGeneration::from_pretrained(c.dir); },
                            {"1 tensor", "language_model.model.layers.2.input_layernorm.weight"});
}

TEST(LoadValidation, QFormerVocabSizeThatDoesNotMatchTheWeightsIsAShapeError) {
  FixtureCopy c("t5-tiny", "qvocab");
  auto cfg = c.read_json("config.json");
  cfg["qformer_config"]["vocab_size"] = 500;
  c.write_json("config.json", cfg);
  expect_error<TensorError>([&] { InstructBlipForConditionalGeneration::from_pretrained(c.dir); },
                            {"qformer.embeddings.word_embeddings.weight", "[1001, 32]", "[500, 32]"});
}

TEST(LoadValidation, SelfInconsistentConfigIsAConfigError) {
  FixtureCopy c("llama-tiny", "heads");
  auto cfg = c.read_json("config.json");
  cfg["text_config"]["num_attention_heads"] = 5;  // does not divide hidden_size 48
  cfg["text_config"]["num_key_value_heads"] = 5;
  c.write_json("config.json", cfg);
  expect_error<ConfigError>([&] { InstructBlipForConditionalGeneration::from_pretrained(c.dir); },
                            {"num_attention_heads", "5"});
}

TEST(LoadValidation, TokenizerLargerThanTheTextVocabularyIsAConfigError) {
  FixtureCopy c("llama-tiny", "tokvocab");
  EXPECT_NO_THROW(InstructBlipProcessor::from_pretrained(c.dir));
  auto cfg = c.read_json("config.json");
  cfg["text_config"]["vocab_size"] = 1000;  // the tokenizer has 1000 pieces + [PAD] = 1001 ids
  c.write_json("config.json", cfg);
  expect_error<ConfigError>([&] { InstructBlipProcessor::from_pretrained(c.dir); },
                            {"text_config.vocab_size", "1000", "LlamaTokenizer", "1001", "config.json"});
}

TEST(LoadValidation, QFormerTokenizerLargerThanItsVocabularyIsAConfigError) {
  FixtureCopy c("t5-tiny", "qtokvocab");
  auto cfg = c.read_json("config.json");
  cfg["qformer_config"]["vocab_size"] = 1000;  // bert vocab 1000 + [DEC] = 1001 ids
  c.write_json("config.json", cfg);
  expect_error<ConfigError>([&] { InstructBlipProcessor::from_pretrained(c.dir); },
                            {"qformer_config.vocab_size", "1000", "Q-Former tokenizer", "BertTokenizer", "1001"});
  // the same check with a config in hand
  auto proc = InstructBlipProcessor::from_pretrained(Reference("t5-tiny").model_dir());
  auto ok = InstructBlipConfig::from_json_file(Reference("t5-tiny").model_dir() + "/config.json");
  EXPECT_NO_THROW(proc.check_vocabulary(ok));
  ok.t5().vocab_size = 1099;
  expect_error<ConfigError>([&] { proc.check_vocabulary(ok, "mine"); }, {"mine", "T5Tokenizer", "1099"});
}

TEST(LoadValidation, PartsExposeTheNamesTheyBind) {
  auto cfg = InstructBlipConfig::from_json_file(Reference("t5-tiny").model_dir() + "/config.json");
  const auto specs = models::T5Model::tensor_specs(cfg.t5());
  auto ck = io::Checkpoint::open(Reference("t5-tiny").model_dir());
  models::T5Model t5(cfg.t5(), ck);
  ASSERT_EQ(specs.size(), t5.bound_tensor_names().size());
  for (std::size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(specs[i].first, t5.bound_tensor_names()[i]);
    EXPECT_EQ(ck.get(specs[i].first).shape(), specs[i].second);
  }
  auto lcfg = InstructBlipConfig::from_json_file(Reference("llama-tiny").model_dir() + "/config.json");
  auto lck = io::Checkpoint::open(Reference("llama-tiny").model_dir());
  models::LlamaModel llama(lcfg.llama(), lck);
  std::vector<std::string> lm_names;
  for (const auto& n : lck.names())
    if (n.rfind("language_model.", 0) == 0) lm_names.push_back(n);
  std::vector<std::string> bound = llama.bound_tensor_names();
  std::sort(bound.begin(), bound.end());
  EXPECT_EQ(bound, lm_names);  // the untied 2-layer fixture: every language_model.* tensor, once
}

}  // namespace
