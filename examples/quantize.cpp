// instructblip-quantize: writes a checkpoint whose weight matrices are stored in a reduced format
// (bf16, q8_0 or q4_0), so that later loads map them directly instead of converting.
//
//   instructblip-quantize --model DIR --weights q8_0 --out DIR [--max-shard-gb N]
//
// The output directory is a complete checkpoint: the weights (VisionLanguageModel::
// save_pretrained), config.json, generation_config.json and the processor / tokenizer files
// (VisionLanguageProcessor::save_pretrained).
#include <instructblip/instructblip.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

namespace fs = std::filesystem;
using namespace instructblip;

namespace {

constexpr const char* kProg = "instructblip-quantize";

struct Args {
  std::string model, out, weights;
  double max_shard_gb = 5.0;
};

[[noreturn]] void usage_error(const std::string& msg) {
  std::fprintf(stderr, "%s: %s\n", kProg, msg.c_str());
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(k + " needs a value");
      return argv[++i];
    };
    if (k == "--model" || k == "-m") a.model = value();
    else if (k == "--out" || k == "-o") a.out = value();
    else if (k == "--weights") a.weights = value();
    else if (k == "--max-shard-gb") {
      const std::string v = value();
      char* end = nullptr;
      a.max_shard_gb = std::strtod(v.c_str(), &end);
      if (end == v.c_str() || *end || !(a.max_shard_gb > 0.001) || a.max_shard_gb > 1e6)
        usage_error("--max-shard-gb must be a positive number, got '" + v + "'");
    } else if (k == "--help" || k == "-h") {
      std::printf("usage: %s --model DIR --weights f32|bf16|q8_0|q4_0 --out DIR [--max-shard-gb N (default 5)]\n",
                  kProg);
      std::exit(0);
    } else {
      usage_error("unknown option '" + k + "' (see --help)");
    }
  }
  if (a.model.empty() || a.out.empty() || a.weights.empty()) usage_error("--model, --weights and --out are required");
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  ops::WeightFormat format;
  if (!ops::parse_weight_format(a.weights, &format))
    usage_error("--weights must be f32, bf16, q8_0 or q4_0, got '" + a.weights + "'");
  try {
    std::error_code ec;
    if (fs::exists(a.out, ec) && fs::equivalent(a.model, a.out, ec))
      throw InvalidArgument("--out must differ from --model");
    const auto t0 = std::chrono::steady_clock::now();
    LoadOptions lo;
    lo.weights = format;
    auto model = VisionLanguageModel::from_pretrained(a.model, lo);
    model.save_pretrained(a.out, std::size_t(a.max_shard_gb * 1e9));
    VisionLanguageProcessor::from_pretrained(a.model).save_pretrained(a.out);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "%s: wrote %s (%s weights) in %.1f s\n", kProg, a.out.c_str(),
                 ops::weight_format_name(format), s);
  } catch (const fs::filesystem_error& e) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
    return 1;
  } catch (const InvalidArgument& e) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
    return 1;
  }
  return 0;
}
