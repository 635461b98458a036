// One loaded model serves generate() / forward() from several threads at once: every concurrent
// result equals the single-threaded one exactly (sequences, beam scores, logits), and the library
// thread pool is safe and deterministic under concurrent parallel_for callers. Kept small so that
// it also runs in reasonable time under ThreadSanitizer.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <numeric>
#include <thread>

#include "instructblip/instructblip.hpp"
#include "reference_util.hpp"

using namespace instructblip;
using ibtest::Reference;

namespace {

constexpr int kThreads = 4;
constexpr int kCallsPerThread = 10;

struct Inputs {
  Tensor pixel_values, qformer_input_ids, qformer_attention_mask, input_ids, attention_mask;
};

struct Job {
  const InstructBlipForConditionalGeneration* model = nullptr;
  const Inputs* inputs = nullptr;
  GenerationConfig config;
  std::string name;
};

struct Result {
  std::vector<std::vector<std::int64_t>> sequences;
  std::vector<float> sequences_scores;
  std::vector<Tensor> scores;
  bool operator==(const Result& o) const {
    if (sequences != o.sequences || scores.size() != o.scores.size()) return false;
    if (sequences_scores.size() != o.sequences_scores.size()) return false;
    if (!sequences_scores.empty() &&  // bit-exact, not ==
        std::memcmp(sequences_scores.data(), o.sequences_scores.data(), sequences_scores.size() * sizeof(float)) != 0)
      return false;
    for (std::size_t i = 0; i < scores.size(); ++i)
      if (scores[i].shape() != o.scores[i].shape() ||
          std::memcmp(scores[i].raw(), o.scores[i].raw(), scores[i].nbytes()) != 0)
        return false;
    return true;
  }
};

Result run(const Job& j) {
  auto out = j.model->generate(j.inputs->pixel_values, j.inputs->qformer_input_ids, j.inputs->qformer_attention_mask,
                               j.inputs->input_ids, j.inputs->attention_mask, j.config);
  return Result{out.sequences, out.sequences_scores, out.scores};
}

class Concurrency : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (const std::string name : {"t5-tiny", "llama-tiny"}) {
      Reference ref(name);
      models_.emplace(name, InstructBlipForConditionalGeneration::from_pretrained(ref.model_dir()));
      for (const std::string in : {"a", "b"})
        inputs_[name + "/" + in] = Inputs{ref.get(in + ".pixel_values"), ref.get(in + ".qformer_input_ids"),
                                          ref.get(in + ".qformer_attention_mask"), ref.get(in + ".input_ids"),
                                          ref.get(in + ".attention_mask")};
    }
  }
  static void TearDownTestSuite() {
    inputs_.clear();
    models_.clear();
  }

  /// greedy, beam 3 (2 returned) and seeded sampling, for each model and input: 12 jobs.
  static std::vector<Job> jobs() {
    std::vector<Job> out;
    for (auto& [name, model] : models_) {
      GenerationConfig greedy = model.generation_config();
      greedy.max_new_tokens = 6;
      greedy.output_scores = true;
      GenerationConfig beam = greedy;
      beam.num_beams = 3;
      beam.num_return_sequences = 2;
      beam.output_scores = false;
      GenerationConfig sample = greedy;
      sample.do_sample = true;
      sample.top_k = 20;
      sample.top_p = 0.9;
      sample.temperature = 0.8;
      sample.seed = 1234;
      for (const std::string in : {"a", "b"}) {
        const Inputs* inputs = &inputs_.at(name + "/" + in);
        out.push_back({&model, inputs, greedy, name + "/" + in + "/greedy"});
        out.push_back({&model, inputs, beam, name + "/" + in + "/beam3"});
        out.push_back({&model, inputs, sample, name + "/" + in + "/sample"});
      }
    }
    return out;
  }

  static std::map<std::string, InstructBlipForConditionalGeneration> models_;
  static std::map<std::string, Inputs> inputs_;
};

std::map<std::string, InstructBlipForConditionalGeneration> Concurrency::models_;
std::map<std::string, Inputs> Concurrency::inputs_;

TEST_F(Concurrency, GenerateFromManyThreadsMatchesSingleThreadedResults) {
  const std::vector<Job> all = jobs();
  ASSERT_EQ(all.size(), 12u);
  std::vector<Result> expected;
  for (const Job& j : all) expected.push_back(run(j));
  // the three settings really differ (so that mixing them exercises separate per-call states)
  EXPECT_EQ(expected[1].sequences.size(), 2u);
  EXPECT_FALSE(expected[0].sequences_scores.size() == expected[1].sequences_scores.size());

  std::vector<std::vector<int>> mismatches(kThreads);
  std::vector<std::string> errors(kThreads);
  std::atomic<int> ready{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      ++ready;
      while (ready.load() < kThreads) std::this_thread::yield();  // start together
      try {
        for (int i = 0; i < kCallsPerThread; ++i) {
          const std::size_t k = std::size_t(t * 7 + i * 5) % all.size();  // each thread mixes jobs
          if (!(run(all[k]) == expected[k])) mismatches[std::size_t(t)].push_back(int(k));
        }
      } catch (const std::exception& e) {
        errors[std::size_t(t)] = e.what();
      }
    });
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(errors[std::size_t(t)], "") << "thread " << t;
    for (int k : mismatches[std::size_t(t)]) ADD_FAILURE() << "thread " << t << ": " << all[std::size_t(k)].name << " differs";
  }
}

TEST_F(Concurrency, ForwardAndGenerateInterleaved) {
  const auto& m = models_.at("llama-tiny");
  const Inputs& in = inputs_.at("llama-tiny/b");
  const auto expected = m.forward(in.pixel_values, in.qformer_input_ids, in.qformer_attention_mask, in.input_ids,
                                  in.attention_mask);
  Job greedy;
  for (const Job& j : jobs())
    if (j.name == "llama-tiny/b/greedy") greedy = j;
  ASSERT_EQ(greedy.model, &m);
  const Result expected_gen = run(greedy);
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 3; ++i) {
        if ((t + i) % 2) {
          if (!(run(greedy) == expected_gen)) ++bad;
        } else {
          const auto out = m.forward(in.pixel_values, in.qformer_input_ids, in.qformer_attention_mask, in.input_ids,
                                     in.attention_mask);
          if (out.logits.shape() != expected.logits.shape() ||
              std::memcmp(out.logits.raw(), expected.logits.raw(), out.logits.nbytes()) != 0)
            ++bad;
        }
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(ThreadPool, ConcurrentCallersAreCorrectAndDeterministic) {
  // Chunk boundaries are recorded: every caller must see the same split whether it got the pool
  // or ran inline, and nested calls must complete.
  const std::int64_t n = 1000, grain = 10;
  auto split = [&] {
    std::vector<std::pair<std::int64_t, std::int64_t>> chunks;
    std::mutex mu;
    std::vector<std::int64_t> hits(std::size_t(n), 0);
    parallel_for(0, n, grain, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i) ++hits[std::size_t(i)];
      std::int64_t inner = 0;  // a nested call runs inline
      parallel_for(0, 100, 1, [&](std::int64_t b2, std::int64_t e2) { inner += e2 - b2; });
      std::lock_guard<std::mutex> lk(mu);
      chunks.emplace_back(inner == 100 ? b : -1, e);
    });
    for (std::int64_t h : hits)
      if (h != 1) chunks.emplace_back(-2, -2);
    std::sort(chunks.begin(), chunks.end());
    return chunks;
  };
  const auto reference = split();
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i)
        if (split() != reference) ++bad;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  // exceptions from a chunk reach the caller, whether or not the pool was free
  std::atomic<int> caught{0};
  threads.clear();
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        try {
          parallel_for(0, 100, 1, [&](std::int64_t b, std::int64_t) {
            if (b == 0) throw InvalidArgument("chunk 0");
          });
        } catch (const InvalidArgument&) {
          ++caught;
        }
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(caught.load(), kThreads * 50);
}

TEST(ThreadPool, ResizingWhileOthersRunIsSafe) {
  const int original = num_threads();
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t)
    threads.emplace_back([&] {
      while (!stop.load()) {
        std::vector<int> v(256, 0);
        parallel_for(0, 256, 1, [&](std::int64_t b, std::int64_t e) {
          for (std::int64_t i = b; i < e; ++i) v[std::size_t(i)] = int(i);
        });
        for (int i = 0; i < 256; ++i)
          if (v[std::size_t(i)] != i) ++bad;
      }
    });
  for (int i = 0; i < 20; ++i) set_num_threads(1 + i % 3);
  stop = true;
  for (auto& th : threads) th.join();
  set_num_threads(original);
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
