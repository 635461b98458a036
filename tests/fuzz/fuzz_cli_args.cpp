// libFuzzer harness: instructblip-generate's command-line parser (examples/cli_args.cpp).
// Input: the arguments after argv[0], separated by NUL bytes. parse_args may only throw
// cli::UsageError; an accepted command line must be consistent (model, images, and none, one or one
// prompt per image: a BLIP-2 checkpoint captions without a prompt).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cli_args.hpp"
#include "fuzz_common.hpp"
#include "instructblip/core/error.hpp"

using namespace instructblip;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> args{"instructblip-generate"};
  std::string cur;
  for (std::size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      args.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(char(data[i]));
    }
  }
  if (size > 0) args.push_back(cur);
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  argv.push_back(nullptr);
  try {
    const cli::Options o = cli::parse_args(int(args.size()), argv.data());
    if (!o.help && !o.version) {
      IB_FUZZ_CHECK(!o.model_dir.empty() && !o.images.empty(), "incomplete command line accepted");
      IB_FUZZ_CHECK(o.prompts.size() <= 1 || o.prompts.size() == o.images.size(), "prompt / image counts");
    }
    (void)cli::usage(args[0]);
  } catch (const cli::UsageError&) {
  } catch (const Error&) {
  }
  return 0;
}
