// BatchEngine: continuous batching gives every request exactly what generate() gives it alone
// (the fixtures, and transformers' own ids on the trained shapes-demo), streams its text, and
// handles cancellation, bad images, a full queue and stop strings without disturbing the rest.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "instructblip/engine/batch_engine.hpp"
#include "instructblip/instructblip.hpp"
#include "reference_util.hpp"

using namespace instructblip;

namespace {

const std::string kData = IB_TEST_DATA_DIR;

struct Loaded {
  VisionLanguageModel model;
  VisionLanguageProcessor processor;
};

const Loaded& loaded(const std::string& dir) {
  static std::map<std::string, std::unique_ptr<Loaded>> cache;
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  auto& p = cache[dir];
  if (!p)
    p = std::make_unique<Loaded>(
        Loaded{VisionLanguageModel::from_pretrained(dir), VisionLanguageProcessor::from_pretrained(dir)});
  return *p;
}

struct Case {
  std::string image, prompt;
  GenerationConfig cfg;
};

generation::GenerateOutput alone(const Loaded& l, const Case& c) {
  return l.model.generate(l.processor(load_image(c.image), c.prompt), c.cfg);
}

// The fixture's two images x three prompts x settings (greedy of several lengths, beams, sampling).
std::vector<Case> fixture_cases(const Loaded& l) {
  const std::vector<std::string> images = {kData + "/images/Confusing-Pictures.jpg", kData + "/images/merlion.png"};
  const std::vector<std::string> prompts = {"What is unusual about this image?", "Where is this statue?",
                                            "What is unusual about this image? Answer in one short sentence."};
  std::vector<Case> cases;
  int k = 0;
  for (const auto& img : images)
    for (const auto& p : prompts) {
      GenerationConfig g = l.model.generation_config();
      g.max_new_tokens = 6 + 5 * (k++ % 4);  // rows leave the batch at different steps
      cases.push_back({img, p, g});
      GenerationConfig b = g;
      b.num_beams = 3;
      cases.push_back({img, p, b});
      GenerationConfig s = g;
      s.do_sample = true;
      s.top_k = 20;
      s.num_return_sequences = 2;
      s.seed = 1234 + std::uint64_t(k);
      cases.push_back({img, p, s});
    }
  return cases;
}

void expect_engine_equals_generate(const std::string& dir, std::int64_t max_rows) {
  const Loaded& l = loaded(dir);
  const std::vector<Case> cases = fixture_cases(l);
  ASSERT_EQ(cases.size(), 18u);
  EngineOptions o;
  o.max_rows = max_rows;
  o.max_image_batch = 4;
  BatchEngine engine(l.model, l.processor, o);
  std::vector<BatchEngine::Handle> handles;
  for (const Case& c : cases) {
    EngineRequest r;
    r.image_path = c.image;
    r.prompt = c.prompt;
    r.generation = c.cfg;
    handles.push_back(engine.submit(std::move(r)));
  }
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const EngineResult res = handles[i].result.get();
    ASSERT_TRUE(res.ok()) << res.error;
    const auto ref = alone(l, cases[i]);
    EXPECT_EQ(res.sequences, ref.sequences) << "case " << i;
    EXPECT_EQ(res.sequences_scores, ref.sequences_scores) << "case " << i;
    EXPECT_EQ(res.texts, l.processor.batch_decode(ref.sequences, true)) << "case " << i;
    EXPECT_EQ(res.prompt_tokens, l.model.config().num_query_tokens +
                                     l.processor(load_image(cases[i].image), cases[i].prompt).input_ids.dim(1));
  }
  const EngineStats st = engine.stats();
  EXPECT_EQ(st.completed, cases.size());
  // Batching happened: steps decoded several rows on average.
  EXPECT_GT(double(st.step_rows) / double(st.steps), 2.0) << st.step_rows << " rows in " << st.steps << " steps";
}

TEST(BatchEngine, T5FixtureEqualsGenerateAloneForGreedyBeamsAndSampling) {
  expect_engine_equals_generate(kData + "/t5-tiny/model", 8);
}

TEST(BatchEngine, LlamaFixtureEqualsGenerateAloneForGreedyBeamsAndSampling) {
  expect_engine_equals_generate(kData + "/llama-tiny/model", 8);
}

// BLIP-2 (OPT and Flan-T5 language models, the query-only Q-Former) through the same engine.
TEST(BatchEngine, Blip2FixturesEqualGenerateAloneForGreedyBeamsAndSampling) {
  expect_engine_equals_generate(kData + "/blip2-opt-tiny/model", 8);
  expect_engine_equals_generate(kData + "/blip2-t5-tiny/model", 8);
}

// More rows in flight than the row-by-row threshold of linear() (8): still exact.
TEST(BatchEngine, SixteenRowsInFlightStillEqualGenerateAlone) {
  expect_engine_equals_generate(kData + "/t5-tiny/model", 16);
}

// The trained demo: transformers 4.36.2's own greedy and beam-3 ids for 16 images x 4 questions,
// through the engine at 8 rows in flight.
TEST(BatchEngine, ShapesDemoEqualsTransformersGreedyAndBeam3) {
  const std::string dir = kData + "/shapes-demo";
  std::ifstream f(dir + "/expected.json");
  const auto j = nlohmann::json::parse(f);
  const Loaded& l = loaded(dir + "/model");
  EngineOptions o;
  o.max_rows = 8;
  BatchEngine engine(l.model, l.processor, o);
  struct Want {
    BatchEngine::Handle h;
    std::vector<std::int64_t> ids;
    std::string what;
  };
  std::vector<Want> want;
  for (const auto& it : j["items"])
    for (const auto& qa : it["qa"])
      for (int beams : {1, 3}) {
        EngineRequest r;
        r.image_path = dir + "/" + it["image"].get<std::string>();
        r.prompt = qa["question"].get<std::string>();
        GenerationConfig g = l.model.generation_config();
        g.num_beams = beams;
        g.max_new_tokens = 32;
        r.generation = g;
        want.push_back({engine.submit(std::move(r)), qa[beams == 1 ? "greedy" : "beam3"]["ids"].get<std::vector<std::int64_t>>(),
                        it["image"].get<std::string>() + " / " + qa["question"].get<std::string>() +
                            (beams == 1 ? "" : " (beam 3)")});
      }
  ASSERT_EQ(want.size(), 128u);
  for (auto& w : want) {
    const EngineResult res = w.h.result.get();
    ASSERT_TRUE(res.ok()) << res.error;
    EXPECT_EQ(res.sequences.at(0), w.ids) << w.what;
  }
}

TEST(BatchEngine, StreamsTextThatAddsUpToTheAnswer) {
  const Loaded& l = loaded(kData + "/t5-tiny/model");
  BatchEngine engine(l.model, l.processor);
  std::mutex mu;
  std::map<std::uint64_t, std::string> streamed;
  std::map<std::uint64_t, int> tokens, finals;
  std::vector<BatchEngine::Handle> hs;
  for (int i = 0; i < 4; ++i) {
    EngineRequest r;
    r.image_path = kData + (i % 2 ? "/images/merlion.png" : "/images/Confusing-Pictures.jpg");
    r.prompt = "Where is this statue?";
    GenerationConfig g = l.model.generation_config();
    g.max_new_tokens = 10 + 4 * i;
    r.generation = g;
    hs.push_back(engine.submit(std::move(r), [&](const EngineTokens& ev) {
      std::lock_guard<std::mutex> lock(mu);
      ASSERT_EQ(ev.rows.size(), ev.text.size());
      ASSERT_EQ(ev.tokens.size(), ev.final ? 0u : ev.rows.size());
      for (const auto& t : ev.text) streamed[ev.id] += t;
      tokens[ev.id] += int(ev.tokens.size());
      finals[ev.id] += ev.final;
    }));
  }
  for (auto& h : hs) {
    const EngineResult res = h.result.get();
    ASSERT_TRUE(res.ok()) << res.error;
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(streamed[h.id], res.texts.at(0));
    EXPECT_EQ(tokens[h.id], res.completion_tokens);
    EXPECT_EQ(tokens[h.id], std::int64_t(res.sequences.at(0).size()) - 1);
    EXPECT_LE(finals[h.id], 1);
    EXPECT_GT(res.first_token_ms, 0.0);
    EXPECT_GE(res.total_ms, res.first_token_ms);
  }
}

TEST(BatchEngine, BadImagesBecomeErrorResultsAndTheOthersGoOn) {
  const Loaded& l = loaded(kData + "/t5-tiny/model");
  EngineOptions o;
  o.max_image_bytes = std::uint64_t(3) << 20;  // merlion.png: 1.6 MB
  BatchEngine engine(l.model, l.processor, o);
  GenerationConfig g = l.model.generation_config();
  g.max_new_tokens = 5;
  auto submit = [&](EngineRequest r) {
    r.prompt = "Where is this statue?";
    r.generation = g;
    return engine.submit(std::move(r));
  };
  EngineRequest corrupt;
  corrupt.image_bytes = {0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 'J', 'F', 'I', 'F'};  // a truncated JPEG
  EngineRequest missing;
  missing.image_path = kData + "/images/no-such-file.png";
  EngineRequest big;
  big.image_bytes.assign(std::size_t(4) << 20, 0x42);
  EngineRequest good;
  good.image_path = kData + "/images/merlion.png";
  auto h1 = submit(std::move(corrupt)), h2 = submit(std::move(missing)), h3 = submit(std::move(big)),
       h4 = submit(std::move(good));
  for (auto* h : {&h1, &h2, &h3}) {
    const EngineResult r = h->result.get();
    EXPECT_FALSE(r.ok());
    EXPECT_EQ(r.error_type, "invalid_request");
    EXPECT_EQ(r.error.find('\n'), std::string::npos);
    EXPECT_TRUE(r.sequences.empty());
  }
  EXPECT_NE(h2.result.get().error.find("no-such-file.png"), std::string::npos) << h2.result.get().error;
  EXPECT_NE(h3.result.get().error.find("bytes"), std::string::npos) << h3.result.get().error;
  const EngineResult ok = h4.result.get();
  ASSERT_TRUE(ok.ok()) << ok.error;
  EXPECT_EQ(ok.sequences, alone(l, {kData + "/images/merlion.png", "Where is this statue?", g}).sequences);
  EXPECT_EQ(engine.stats().failed, 3u);
  EXPECT_EQ(engine.stats().completed, 1u);
}

TEST(BatchEngine, RefusesBadSettingsAtSubmit) {
  const Loaded& l = loaded(kData + "/t5-tiny/model");
  EngineOptions o;
  o.max_rows = 4;
  BatchEngine engine(l.model, l.processor, o);
  EngineRequest r;
  r.image_path = kData + "/images/merlion.png";
  GenerationConfig g = l.model.generation_config();
  g.num_beams = 5;  // more rows than the engine decodes together
  r.generation = g;
  EXPECT_THROW(engine.submit(r), InvalidArgument);
  g.num_beams = 1;
  g.diversity_penalty = 0.5;
  r.generation = g;
  EXPECT_THROW(engine.submit(r), InvalidArgument);
  r.generation.reset();
  r.image_bytes = {1, 2, 3};  // two image sources
  EXPECT_THROW(engine.submit(r), InvalidArgument);
  EXPECT_THROW(BatchEngine(l.model, l.processor, EngineOptions{0}), InvalidArgument);
}

TEST(BatchEngine, CancelEndsARunningRequestAndFreesItsRows) {
  const Loaded& l = loaded(kData + "/t5-tiny/model");
  EngineOptions o;
  o.max_rows = 1;  // the second request can only run once the first has left
  BatchEngine engine(l.model, l.processor, o);
  GenerationConfig g = l.model.generation_config();
  g.max_new_tokens = 400;
  g.min_new_tokens = 400;
  std::atomic<int> seen{0};
  EngineRequest a;
  a.image_path = kData + "/images/merlion.png";
  a.generation = g;
  auto ha = engine.submit(std::move(a), [&](const EngineTokens&) { ++seen; });
  EngineRequest b;
  b.image_path = kData + "/images/merlion.png";
  GenerationConfig gb = g;
  gb.max_new_tokens = 4;
  gb.min_new_tokens = 0;
  b.generation = gb;
  auto hb = engine.submit(std::move(b));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (seen.load() < 3 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_GE(seen.load(), 3);
  EXPECT_TRUE(engine.cancel(ha.id));
  const EngineResult ra = ha.result.get();
  EXPECT_EQ(ra.error_type, "cancelled");
  ASSERT_EQ(ra.finish_reasons.size(), 1u);
  EXPECT_EQ(ra.finish_reasons[0], FinishReason::Cancelled);
  EXPECT_LT(ra.sequences.at(0).size(), 401u);
  const EngineResult rb = hb.result.get();
  ASSERT_TRUE(rb.ok()) << rb.error;
  EXPECT_EQ(rb.sequences.size(), 1u);
  EXPECT_FALSE(engine.cancel(ha.id));  // already finished
  EXPECT_EQ(engine.stats().cancelled, 1u);
  EXPECT_EQ(engine.stats().active_rows, 0);
}

TEST(BatchEngine, FullQueueRefusesThenAccepts) {
  const Loaded& l = loaded(kData + "/t5-tiny/model");
  EngineOptions o;
  o.max_queue = 2;
  BatchEngine engine(l.model, l.processor, o);
  GenerationConfig g = l.model.generation_config();
  g.max_new_tokens = 50;
  g.min_new_tokens = 50;
  EngineRequest r;
  r.image_path = kData + "/images/merlion.png";
  r.generation = g;
  auto h1 = engine.submit(r);
  auto h2 = engine.submit(r);
  EXPECT_THROW(engine.submit(r), EngineBusy);
  h1.result.get();
  h2.result.get();
  EXPECT_NO_THROW(engine.submit(r).result.get());
}

TEST(BatchEngine, StopStringsCutTheTextAndEndTheRequest) {
  const Loaded& l = loaded(kData + "/t5-tiny/model");
  BatchEngine engine(l.model, l.processor);
  GenerationConfig g = l.model.generation_config();
  g.max_new_tokens = 30;
  g.min_new_tokens = 30;
  EngineRequest r;
  r.image_path = kData + "/images/merlion.png";
  r.prompt = "Where is this statue?";
  r.generation = g;
  const EngineResult full = engine.submit(r).result.get();
  ASSERT_TRUE(full.ok());
  const std::string text = full.texts.at(0);
  ASSERT_GT(text.size(), 12u) << text;
  // a stop string in the middle of the answer
  const std::string stop = text.substr(text.size() / 2, 3);
  r.stop = {stop};
  std::string streamed;
  const EngineResult cut = engine.submit(r, [&](const EngineTokens& ev) {
                                  for (const auto& t : ev.text) streamed += t;
                                }).result.get();
  ASSERT_TRUE(cut.ok()) << cut.error;
  EXPECT_EQ(cut.texts.at(0), text.substr(0, text.find(stop)));
  EXPECT_EQ(streamed, cut.texts.at(0));
  EXPECT_EQ(cut.finish_reasons.at(0), FinishReason::Stop);
  EXPECT_LT(cut.sequences.at(0).size(), full.sequences.at(0).size());
  EXPECT_EQ(full.finish_reasons.at(0), FinishReason::Length);
}

TEST(BatchEngine, ShutdownFinishesPendingWorkOrCancelsIt) {
  const Loaded& l = loaded(kData + "/t5-tiny/model");
  GenerationConfig g = l.model.generation_config();
  g.max_new_tokens = 8;
  EngineRequest r;
  r.image_path = kData + "/images/merlion.png";
  r.generation = g;
  std::vector<BatchEngine::Handle> hs;
  {
    BatchEngine engine(l.model, l.processor);
    for (int i = 0; i < 5; ++i) hs.push_back(engine.submit(r));
    engine.shutdown(true);
    EXPECT_THROW(engine.submit(r), IoError);
  }
  for (auto& h : hs) EXPECT_TRUE(h.result.get().ok());
  hs.clear();
  {
    BatchEngine engine(l.model, l.processor);
    g.max_new_tokens = g.min_new_tokens = 300;
    r.generation = g;
    for (int i = 0; i < 12; ++i) hs.push_back(engine.submit(r));
  }  // the destructor cancels what is left
  int cancelled = 0;
  for (auto& h : hs) cancelled += h.result.get().error_type == "cancelled";
  EXPECT_GT(cancelled, 0);
}

}  // namespace

namespace {
// The stages the engine batches give each image exactly what it gets alone.
TEST(BatchEngine, BatchedStagesEqualTheStagesAlone) {
  const Loaded& l = loaded(kData + "/t5-tiny/model");
  const auto a = l.processor(load_image(kData + "/images/merlion.png"), "Where is this statue?");
  const auto b = l.processor(load_image(kData + "/images/Confusing-Pictures.jpg"), "Where is this statue?");
  const auto c = l.processor(load_image(kData + "/images/Confusing-Pictures.jpg"), "Where is this statue?");
  Tensor pix = Tensor::empty({3, 3, a.pixel_values.dim(2), a.pixel_values.dim(3)});
  const std::size_t n = std::size_t(a.pixel_values.numel());
  std::memcpy(pix.data<float>(), a.pixel_values.data<float>(), n * 4);
  std::memcpy(pix.data<float>() + n, b.pixel_values.data<float>(), n * 4);
  std::memcpy(pix.data<float>() + 2 * n, c.pixel_values.data<float>(), n * 4);
  const Tensor all = l.model.encode_images(pix);
  const Tensor one = l.model.encode_images(a.pixel_values);
  EXPECT_EQ(ibtest::max_abs_diff(all.slice0(0, 1).clone(), one), 0.0);
  const Tensor two = l.model.encode_images(b.pixel_values);
  EXPECT_EQ(ibtest::max_abs_diff(all.slice0(1, 2).clone(), two), 0.0);
  const auto p1 = l.model.language_model_prompt(one, a.qformer_input_ids, a.qformer_attention_mask, a.input_ids,
                                                a.attention_mask);
  const auto p3 = l.model.language_model_prompt(all, Tensor::from_vector({3, a.qformer_input_ids.dim(1)}, [&] {
    std::vector<std::int64_t> v;
    for (int i = 0; i < 3; ++i) v.insert(v.end(), a.qformer_input_ids.data<std::int64_t>(), a.qformer_input_ids.data<std::int64_t>() + a.qformer_input_ids.numel());
    return v;
  }()), Tensor(), Tensor::from_vector({3, a.input_ids.dim(1)}, [&] {
    std::vector<std::int64_t> v;
    for (int i = 0; i < 3; ++i) v.insert(v.end(), a.input_ids.data<std::int64_t>(), a.input_ids.data<std::int64_t>() + a.input_ids.numel());
    return v;
  }()), Tensor());
  EXPECT_EQ(ibtest::max_abs_diff(p3.inputs_embeds.slice0(0, 1).clone(), p1.inputs_embeds), 0.0);
}
}  // namespace
