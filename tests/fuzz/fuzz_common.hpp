#pragma once
// Shared helpers of the libFuzzer harnesses in tests/fuzz.
//
// Contract of every harness: the code under test may throw instructblip::Error (or, for the CLI
// parser, cli::UsageError) and nothing else. Any other exception escapes LLVMFuzzerTestOneInput
// and aborts the run (libFuzzer reports it as a crash "deadly signal"), as do sanitizer reports,
// leaks, timeouts and allocations above -malloc_limit_mb. Harness-level invariants that must hold
// on every accepted input are checked with IB_FUZZ_CHECK, which aborts with a message.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>

#ifndef IB_FUZZ_DATA_DIR
#error "IB_FUZZ_DATA_DIR (the tests/data directory) must be defined by the build"
#endif

#define IB_FUZZ_CHECK(cond, msg)                                                            \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::fprintf(stderr, "IB_FUZZ_CHECK failed at %s:%d: %s (%s)\n", __FILE__, __LINE__, \
                   #cond, std::string(msg).c_str());                                        \
      std::abort();                                                                         \
    }                                                                                       \
  } while (0)

namespace ibfuzz {

/// A file of tests/data.
inline std::string data_path(const std::string& rel) { return std::string(IB_FUZZ_DATA_DIR) + "/" + rel; }

/// A private scratch directory ($TMPDIR or /tmp), removed at normal exit. One per process, so
/// parallel jobs (-jobs / -workers) never share files.
class ScratchDir {
 public:
  ScratchDir() {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base && *base ? base : "/tmp") + "/ib-fuzz-XXXXXX";
    if (!::mkdtemp(templ.data())) {
      std::perror("mkdtemp");
      std::abort();
    }
    path_ = templ;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

/// Writes `bytes` to `path` (truncating); aborts on failure (a harness problem, not a finding).
inline void write_file(const std::string& path, std::string_view bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  f.close();
  if (!f) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::abort();
  }
}

inline void remove_file(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove(path, ec);
}

}  // namespace ibfuzz
