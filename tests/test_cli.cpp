// instructblip-generate as a user runs it: --json output equal to transformers' generate on the
// fixture checkpoints, --dump tensors equal to the reference stages, the streamed plain output,
// and one readable line with the documented exit status for every kind of bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_args.hpp"
#include "instructblip/io/safetensors.hpp"
#include "reference_util.hpp"

using namespace instructblip;
using ibtest::Reference;

namespace {

struct Result {
  int status = -1;  // exit status; -1 if killed by a signal
  std::string out, err;
};

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += (c == '\'') ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

Result run_program(const std::string& program, const std::vector<std::string>& args) {
  // per process: CTest runs the cases of this file in parallel
  const std::string err_file = ibtest::tmp_dir() + "/cli_stderr_" + std::to_string(::getpid()) + ".txt";
  std::string cmd = quote(program);
  for (const auto& a : args) cmd += " " + quote(a);
  cmd += " 2>" + quote(err_file) + " </dev/null";
  Result r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream e(err_file);
  r.err.assign(std::istreambuf_iterator<char>(e), {});
  return r;
}

Result run_cli(const std::vector<std::string>& args) { return run_program(IB_CLI_PATH, args); }

std::vector<std::string> input_args(const Reference& ref, const std::string& input) {
  std::vector<std::string> a = {"--model", ref.model_dir()};
  const auto& in = ref.json["inputs"][input];
  std::vector<std::string> texts;  // none: BLIP-2 input c (no prompt)
  if (in["text"].is_string()) texts.push_back(in["text"].get<std::string>());
  else if (in["text"].is_array()) texts = in["text"].get<std::vector<std::string>>();
  std::size_t i = 0;
  for (const auto& f : in["images"]) {
    const std::string path = f.get<std::string>();
    a.insert(a.end(), {"--image", ibtest::data_dir() + "/images/" + path.substr(path.rfind('/') + 1)});
    if (i < texts.size()) a.insert(a.end(), {"--prompt", texts[i]});
    ++i;
  }
  return a;
}

std::vector<std::string> kwargs_args(const nlohmann::json& kw) {
  std::vector<std::string> a;
  for (auto it = kw.begin(); it != kw.end(); ++it) {
    std::string flag = "--" + it.key();
    std::replace(flag.begin(), flag.end(), '_', '-');
    if (it.key() == "do_sample") {
      if (it.value().get<bool>()) a.push_back("--do-sample");
      continue;
    }
    a.push_back(flag);
    a.push_back(it.value().is_number_integer() ? std::to_string(it.value().get<long long>()) : it.value().dump());
  }
  return a;
}

bool one_line(const std::string& s) { return !s.empty() && s.find('\n') == s.size() - 1; }

}  // namespace

class CliReference : public ::testing::TestWithParam<std::string> {};

bool is_blip2(const std::string& name) { return name.rfind("blip2-", 0) == 0; }

// BLIP-2 fixtures also have input c: an image without a prompt (greedy, max_new_tokens 20).
std::vector<std::string> inputs_of(const std::string& name) {
  if (is_blip2(name)) return {"a", "b", "c"};
  return {"a", "b"};
}

TEST_P(CliReference, JsonSequencesAndTextsEqualTransformers) {
  Reference ref(GetParam());
  int runs = 0;
  for (const std::string& input : inputs_of(GetParam()))
    for (auto it = ref.json["generation"].begin(); it != ref.json["generation"].end(); ++it) {
      if (!it.value().contains(input)) continue;
      auto args = input_args(ref, input);
      args.push_back("--json");
      args.push_back("--quiet");
      if (input == "c") args.insert(args.end(), {"--max-new-tokens", "20"});
      else
        for (const auto& a : kwargs_args(it.value()["kwargs"])) args.push_back(a);
      ++runs;
      Result r = run_cli(args);
      ASSERT_EQ(r.status, 0) << r.err;
      EXPECT_TRUE(r.err.empty()) << r.err;  // --quiet
      auto j = nlohmann::json::parse(r.out);
      EXPECT_EQ(j["sequences"], it.value()[input]["sequences"]) << GetParam() << " " << input << " " << it.key();
      EXPECT_EQ(j["texts"], it.value()[input]["text"]) << it.key();
      for (const char* k : {"load", "vision", "qformer", "prefill", "decode"}) EXPECT_TRUE(j["timings_ms"].contains(k));
    }
  EXPECT_EQ(runs, is_blip2(GetParam()) ? 9 : 8);
}

TEST_P(CliReference, DumpTensorsEqualReferenceStages) {
  Reference ref(GetParam());
  for (const std::string input : {"a", "b"}) {
    const std::string dump = ibtest::tmp_dir() + "/dump_" + GetParam() + "_" + input + ".safetensors";
    auto args = input_args(ref, input);
    args.insert(args.end(), {"--json", "--quiet", "--max-new-tokens", "20", "--dump", dump});
    Result r = run_cli(args);
    ASSERT_EQ(r.status, 0) << r.err;
    auto d = io::SafeTensors::open(dump);
    for (const char* k : {"pixel_values", "vision.last_hidden_state", "vision.pooler_output", "qformer.last_hidden_state",
                          "language_model_inputs"})
      EXPECT_LE(ibtest::max_abs_diff(d.get(k), ref.get(input + "." + k)), 1e-4) << k;
    for (const char* k : {"input_ids", "attention_mask"}) EXPECT_TRUE(ibtest::same_ids(d.get(k), ref.get(input + "." + k))) << k;
    for (const char* k : {"qformer_input_ids", "qformer_attention_mask"}) {
      if (is_blip2(GetParam())) EXPECT_FALSE(d.contains(k)) << k;  // the BLIP-2 Q-Former takes no instruction
      else EXPECT_TRUE(ibtest::same_ids(d.get(k), ref.get(input + "." + k))) << k;
    }
    // first_step_logits = the greedy run's first scores (no logits processor is active there)
    Tensor scores = ref.get(input + ".gen.greedy.scores");  // [B, steps, V]
    Tensor first = d.get("first_step_logits");             // [B, V]
    const std::int64_t B = scores.dim(0), steps = scores.dim(1), V = scores.dim(2);
    ASSERT_EQ(first.shape(), (Shape{B, V}));
    double err = 0;
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t v = 0; v < V; ++v) err = std::max(err, double(std::fabs(first.f(b * V + v) - scores.f(b * steps * V + v))));
    EXPECT_LE(err, 1e-4);
  }
}

TEST_P(CliReference, WeightsFlagChoosesTheFormat) {
  Reference ref(GetParam());
  for (const char* f : {"bf16", "q8_0"}) {
    auto args = input_args(ref, "a");
    args.insert(args.end(), {"--json", "--quiet", "--max-new-tokens", "5", "--weights", f});
    Result r = run_cli(args);
    ASSERT_EQ(r.status, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["weights"], f);
    EXPECT_GT(j["peak_rss_mb"].get<double>(), 0.0);
    EXPECT_EQ(j["sequences"].size(), 1u);
  }
}

TEST_P(CliReference, PlainModeStreamsTheAnswer) {
  Reference ref(GetParam());
  auto args = input_args(ref, "a");
  args.insert(args.end(), {"--max-new-tokens", "20"});
  Result r = run_cli(args);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out, ref.json["generation"]["greedy"]["a"]["text"][0].get<std::string>() + "\n");
  EXPECT_NE(r.err.find("mapped"), std::string::npos);   // load progress
  EXPECT_NE(r.err.find("ms/token"), std::string::npos); // timing summary
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CliReference,
                         ::testing::Values("t5-tiny", "llama-tiny", "blip2-opt-tiny", "blip2-t5-tiny"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(Cli, HelpAndVersion) {
  Result h = run_cli({"--help"});
  EXPECT_EQ(h.status, 0);
  EXPECT_NE(h.out.find("--num-beams"), std::string::npos);
  Result v = run_cli({"--version"});
  EXPECT_EQ(v.status, 0);
  EXPECT_NE(v.out.find("instructblip-generate"), std::string::npos);
}

TEST(Cli, BadInputsGiveOneLineAndTheirExitStatus) {
  const std::string model = ibtest::data_dir() + "/t5-tiny/model";
  const std::string image = ibtest::data_dir() + "/images/Confusing-Pictures.jpg";
  const std::string tmp = ibtest::tmp_dir();
  // a corrupt image and a corrupt checkpoint
  const std::string corrupt = tmp + "/corrupt-" + std::to_string(::getpid()) + ".jpg";
  { std::ofstream(corrupt, std::ios::binary) << "\xff\xd8\xff\xe0 not really a jpeg"; }
  const std::string broken = tmp + "/broken-model-" + std::to_string(::getpid());
  std::system(("rm -rf " + quote(broken) + " && cp -r " + quote(model) + " " + quote(broken)).c_str());
  {
    std::ifstream in(model + "/model.safetensors", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(broken + "/model.safetensors", std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() / 3);
  }
  struct Bad {
    std::vector<std::string> args;
    int status;
    std::string needle;
  };
  const std::vector<Bad> cases = {
      {{"--model", tmp + "/no-such-model", "--image", image, "--prompt", "x"}, 1, "no-such-model"},
      {{"--model", model, "--image", tmp + "/no-such.jpg", "--prompt", "x"}, 1, "no-such.jpg"},
      {{"--model", model, "--image", corrupt, "--prompt", "x"}, 1, corrupt},
      {{"--model", broken, "--image", image, "--prompt", "x"}, 1, "model.safetensors"},
      {{"--model", model, "--image", image, "--prompt", "x", "--frobnicate"}, 2, "--frobnicate"},
      {{"--model", model, "--image", image, "--prompt", "x", "--num-beams", "0"}, 2, "--num-beams"},
      {{"--model", model, "--image", image, "--prompt", "x", "--top-p", "2"}, 2, "--top-p"},
      {{"--model", model, "--image", image, "--prompt", "x", "--max-new-tokens", "ten"}, 2, "--max-new-tokens"},
      {{"--model", model, "--image", image, "--prompt", "x", "--prompt", "y"}, 2, "2 prompts for 1 images"},
      {{"--model", model, "--image", image}, 2, "--prompt"},
      {{"--image", image, "--prompt", "x"}, 2, "--model"},
      {{"--model", model, "--image", image, "--prompt", "x", "--seed"}, 2, "--seed needs a value"},
      {{"--model", model, "--image", image, "--prompt", "x", "--weights", "q3"}, 2, "--weights"},
      {{"--model", model, "--image", image, "--prompt", std::string("bad \xff\xfe utf-8")}, 2, "UTF-8"},
  };
  for (const auto& c : cases) {
    Result r = run_cli(c.args);
    EXPECT_EQ(r.status, c.status) << c.needle << ": " << r.err;
    EXPECT_TRUE(one_line(r.err)) << c.needle << ": [" << r.err << "]";
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

// instructblip-quantize writes a complete checkpoint directory that instructblip-generate maps as stored.
TEST(Cli, QuantizeWritesALoadableCheckpoint) {
  const std::string model = ibtest::data_dir() + "/shapes-demo/model";
  const std::string out = ibtest::tmp_dir() + "/quantized-" + std::to_string(::getpid());
  Result q = run_program(IB_QUANTIZE_PATH, {"--model", model, "--weights", "q8_0", "--out", out});
  ASSERT_EQ(q.status, 0) << q.err;
  Result r = run_cli({"--model", out, "--image", ibtest::data_dir() + "/shapes-demo/images/red-circle-on-green.png",
                      "--prompt", "What shape is in the image?", "--json", "--quiet"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["weights"], "q8_0");  // recorded in the checkpoint
  EXPECT_EQ(j["texts"][0], "a circle");
  // bad inputs: one line, exit status 2 for usage, 1 for a missing model
  Result bad = run_program(IB_QUANTIZE_PATH, {"--model", model, "--weights", "q3", "--out", out});
  EXPECT_EQ(bad.status, 2);
  EXPECT_TRUE(one_line(bad.err)) << bad.err;
  Result missing = run_program(IB_QUANTIZE_PATH, {"--model", out + "-missing", "--weights", "q8_0", "--out", out + "2"});
  EXPECT_EQ(missing.status, 1);
  EXPECT_TRUE(one_line(missing.err)) << missing.err;
  std::system(("rm -rf " + quote(out)).c_str());
}

TEST(CliArgs, ParsesPairsAndRejectsBadValues) {
  const char* ok[] = {"x", "--model", "m", "--image", "a.jpg", "--image", "b.jpg", "--prompt", "p",
                      "--num-beams", "3", "--top-p", "0.5", "--seed", "7", "--do-sample"};
  auto o = cli::parse_args(16, ok);
  EXPECT_EQ(o.images.size(), 2u);
  EXPECT_EQ(o.prompts.size(), 1u);
  EXPECT_EQ(*o.num_beams, 3);
  EXPECT_EQ(*o.top_p, 0.5);
  EXPECT_EQ(*o.seed, 7u);
  EXPECT_TRUE(o.do_sample);
  const char* neg[] = {"x", "--model", "m", "--image", "a", "--prompt", "p", "--temperature", "-1"};
  EXPECT_THROW(cli::parse_args(9, neg), cli::UsageError);
  const char* nan[] = {"x", "--model", "m", "--image", "a", "--prompt", "p", "--length-penalty", "nan"};
  EXPECT_THROW(cli::parse_args(9, nan), cli::UsageError);
}

TEST(CliArgs, GenerationSettingFlags) {
  const char* ok[] = {"x", "--model", "m", "--image", "a.jpg", "--prompt", "p", "--typical-p", "0.9",
                      "--epsilon-cutoff", "0.0003", "--eta-cutoff", "0.002", "--forced-bos-token-id", "5",
                      "--forced-eos-token-id", "2", "--renormalize-logits", "--remove-invalid-values",
                      "--max-time", "1.5"};
  auto o = cli::parse_args(int(sizeof ok / sizeof *ok), ok);
  EXPECT_EQ(*o.typical_p, 0.9);
  EXPECT_EQ(*o.epsilon_cutoff, 0.0003);
  EXPECT_EQ(*o.eta_cutoff, 0.002);
  EXPECT_EQ(*o.forced_bos_token_id, 5);
  EXPECT_EQ(*o.forced_eos_token_id, 2);
  EXPECT_TRUE(o.renormalize_logits);
  EXPECT_TRUE(o.remove_invalid_values);
  EXPECT_EQ(*o.max_time, 1.5);
  const auto defaults = cli::parse_args(7, ok);
  EXPECT_FALSE(defaults.typical_p || defaults.max_time || defaults.forced_bos_token_id || defaults.renormalize_logits);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"--typical-p", "0"},        {"--typical-p", "1.5"},           {"--epsilon-cutoff", "1"},
      {"--eta-cutoff", "-0.1"},    {"--forced-bos-token-id", "-1"},  {"--forced-eos-token-id", "x"},
      {"--max-time", "-1"},        {"--max-time", "nan"},            {"--eta-cutoff", ""}};
  for (const auto& b : bad) {
    const char* argv[] = {"x", "--model", "m", "--image", "a", "--prompt", "p", b.first.c_str(), b.second.c_str()};
    try {
      cli::parse_args(9, argv);
      ADD_FAILURE() << b.first << " " << b.second << " accepted";
    } catch (const cli::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(b.first), std::string::npos) << e.what();
    }
  }
}

// The flags reach generate(), and a checkpoint's generation_config.json is honoured (or refused) as
// the same setting given on the command line.
TEST(Cli, GenerationSettingsFromFlagsAndCheckpointFile) {
  const std::string model = ibtest::data_dir() + "/t5-tiny/model";
  const std::vector<std::string> base = {"--model", model, "--image",
                                         ibtest::data_dir() + "/images/Confusing-Pictures.jpg", "--prompt",
                                         "What is unusual about this image?", "--json", "--quiet"};
  auto run = [&](const std::string& dir, std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args[1] = dir;
    args.insert(args.end(), extra.begin(), extra.end());
    return run_cli(args);
  };
  // greedy answers 749 582 757 ...: forced BOS / EOS replace the first and the last token
  Result r = run(model, {"--max-new-tokens", "4", "--forced-bos-token-id", "100", "--forced-eos-token-id", "1"});
  ASSERT_EQ(r.status, 0) << r.err;
  auto seq = nlohmann::json::parse(r.out)["sequences"][0].get<std::vector<std::int64_t>>();
  ASSERT_EQ(seq.size(), 5u);
  EXPECT_EQ(seq[0], 0);
  EXPECT_EQ(seq[1], 100);
  EXPECT_EQ(seq[4], 1);
  // a bad value is a usage error: exit status 2, one line naming the flag
  r = run(model, {"--typical-p", "0"});
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find("--typical-p"), std::string::npos) << r.err;
  // --max-time 0: MaxTimeCriteria stops after the first step
  r = run(model, {"--max-new-tokens", "10", "--max-time", "0"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["sequences"][0], nlohmann::json::parse("[0, 749]"));

  // a checkpoint copy whose generation_config.json sets typical sampling
  const std::string copy = ibtest::tmp_dir() + "/gen-settings-model-" + std::to_string(::getpid());
  std::system(("rm -rf " + quote(copy) + " && cp -r " + quote(model) + " " + quote(copy)).c_str());
  auto write_gen = [&](const nlohmann::json& j) { std::ofstream(copy + "/generation_config.json") << j.dump(2); };
  write_gen({{"do_sample", true}, {"typical_p", 0.5}, {"top_k", 0}, {"seed", 3}, {"max_new_tokens", 8}});
  Result from_file = run(copy, {});
  Result from_flags = run(model, {"--do-sample", "--typical-p", "0.5", "--top-k", "0", "--seed", "3",
                                  "--max-new-tokens", "8"});
  ASSERT_EQ(from_file.status, 0) << from_file.err;
  ASSERT_EQ(from_flags.status, 0) << from_flags.err;
  EXPECT_EQ(nlohmann::json::parse(from_file.out)["sequences"], nlohmann::json::parse(from_flags.out)["sequences"]);
  EXPECT_EQ(nlohmann::json::parse(from_file.out)["sequences"][0].size(), 9u);
  // ... and the setting takes effect: the same seed without typical_p draws another answer
  Result untyped = run(model, {"--do-sample", "--top-k", "0", "--seed", "3", "--max-new-tokens", "8"});
  ASSERT_EQ(untyped.status, 0) << untyped.err;
  EXPECT_NE(nlohmann::json::parse(from_file.out)["sequences"], nlohmann::json::parse(untyped.out)["sequences"]);
  // a refused setting in the file: exit status 2, one line naming it
  write_gen({{"encoder_no_repeat_ngram_size", 3}});
  r = run(copy, {});
  EXPECT_EQ(r.status, 2);
  EXPECT_TRUE(one_line(r.err)) << r.err;
  EXPECT_NE(r.err.find("encoder_no_repeat_ngram_size"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  std::system(("rm -rf " + quote(copy)).c_str());
}

// The tools take BLIP-2 checkpoint directories as they are: instructblip-inspect names the family,
// instructblip-quantize writes a checkpoint (with the BPE tokenizer files) that instructblip-generate
// then runs, captioning without a prompt as the reference does (input c).
TEST(Cli, Blip2InspectQuantizeAndCaptionWithoutAPrompt) {
  const Reference ref("blip2-opt-tiny");
  Result inspect = run_program(IB_INSPECT_PATH, {ref.model_dir()});
  ASSERT_EQ(inspect.status, 0) << inspect.err;
  EXPECT_EQ(inspect.out.substr(0, inspect.out.find('\n')), "BLIP-2 with a opt language model");
  EXPECT_NE(inspect.out.find("155 tensors in 1 file(s)"), std::string::npos) << inspect.out;

  const std::string out = ibtest::tmp_dir() + "/blip2-q8-" + std::to_string(::getpid());
  Result q = run_program(IB_QUANTIZE_PATH, {"--model", ref.model_dir(), "--weights", "q8_0", "--out", out});
  ASSERT_EQ(q.status, 0) << q.err;
  const std::string image = ibtest::data_dir() + "/images/Confusing-Pictures.jpg";
  Result r = run_cli({"--model", out, "--image", image, "--max-new-tokens", "20", "--json", "--quiet"});
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["weights"], "q8_0");
  EXPECT_EQ(j["sequences"][0].size(), 21u);  // the placeholder bos + 20 new tokens
  // f32, from the original directory: the reference caption
  Result f = run_cli({"--model", ref.model_dir(), "--image", image, "--max-new-tokens", "20", "--json", "--quiet"});
  ASSERT_EQ(f.status, 0) << f.err;
  EXPECT_EQ(nlohmann::json::parse(f.out)["sequences"], ref.json["generation"]["greedy"]["c"]["sequences"]);
  // an InstructBLIP checkpoint still needs its instruction
  Result missing = run_cli({"--model", ibtest::data_dir() + "/t5-tiny/model", "--image", image});
  EXPECT_EQ(missing.status, 2);
  EXPECT_NE(missing.err.find("--prompt"), std::string::npos) << missing.err;
  std::system(("rm -rf " + quote(out)).c_str());
}
