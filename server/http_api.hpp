#pragma once
// The HTTP API of instructblip-server as pure functions, testable and fuzzable without sockets:
// an OpenAI chat-completions request body -> a ChatRequest (image, instruction, GenerationConfig),
// OpenAI error objects, response / Server-Sent-Event chunk formatting, and the Prometheus metrics.
#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "instructblip/config.hpp"
#include "instructblip/engine/batch_engine.hpp"

namespace instructblip::server {

/// A request the API refuses: HTTP status and OpenAI's error fields.
class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string code = "invalid_request", std::string param = "",
           std::string type = "");
  int status;
  std::string type;  // "invalid_request_error", "authentication_error", "server_error", ...
  std::string code;
  std::string param;
};

/// OpenAI's error object: {"error": {"message", "type", "param", "code"}}.
nlohmann::json error_json(const std::string& message, const std::string& type, const std::string& code,
                          const std::string& param = "");
nlohmann::json error_json(const ApiError& e);
/// The OpenAI error type a status implies (400 -> invalid_request_error, 401 -> authentication_error, ...).
const char* error_type_for_status(int status);

struct ParseOptions {
  /// Largest decoded image (bytes), data: URI or file.
  std::uint64_t max_image_bytes = 16u << 20;
  /// Canonical (realpath) directory file:// URLs must resolve into; empty: file:// refused.
  std::string allowed_local_dir;
  /// Largest `n` and `num_beams` (the engine's rows in flight).
  std::int64_t max_rows = 8;
  /// Largest max_tokens.
  std::int64_t max_new_tokens = 4096;
  /// Longest instruction (bytes).
  std::size_t max_prompt_bytes = 64u << 10;
  /// A request without text is accepted (BLIP-2: plain captioning); else a 400 missing_text.
  bool prompt_optional = false;
};

struct ChatRequest {
  std::string model;   // as sent ("" when absent)
  std::string prompt;  // the text parts of the last user message, joined by "\n"
  /// Exactly one is set: the decoded bytes of a data: URI, or the canonical path of a file:// URL.
  std::vector<std::uint8_t> image_bytes;
  std::string image_path;
  GenerationConfig generation;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  /// Choices returned. With sampling or beams: generation.num_return_sequences == n. With greedy
  /// search (n > 1, one beam) the single answer is returned n times (greedy has one answer).
  std::int64_t n = 1;
  bool copies = false;  // true: one sequence generated, repeated n times
};

/// Parses and validates a chat-completions body. `defaults` (the checkpoint's generation config)
/// gives every setting the request leaves out. ApiError(400) for anything invalid: bad JSON,
/// wrong types, no user message, no text or no image, more than one image, a remote URL, a file://
/// URL outside ParseOptions::allowed_local_dir, bad base64, an image over the size limit,
/// out-of-range parameters, unsupported OpenAI features (logprobs, tools, penalties other than 0).
ChatRequest parse_chat_request(std::string_view body, const GenerationConfig& defaults, const ParseOptions& options);

/// RFC 4648 base64 with padding, strictly: no whitespace, no missing padding, no non-zero bits
/// after the last character. ApiError(400) otherwise.
std::vector<std::uint8_t> decode_base64_strict(std::string_view text);

/// file:// URL -> canonical path inside `allowed_dir` (realpath: symlinks resolved, so a link out
/// of the directory is refused). ApiError(400) when outside, missing, not a regular file, or
/// file:// is disabled (allowed_dir empty).
std::string resolve_file_url(std::string_view url, const std::string& allowed_dir);

/// Reads a file into memory, refusing more than max_bytes (ApiError 400).
std::vector<std::uint8_t> read_file_limited(const std::string& path, std::uint64_t max_bytes);

/// The non-streamed response (chat.completion).
nlohmann::json completion_json(const ChatRequest& request, const EngineResult& result, const std::string& id,
                               std::int64_t created, const std::string& model);
/// One chat.completion.chunk. `delta` is the choice's delta object; `finish_reason` null when empty.
nlohmann::json chunk_json(const std::string& id, std::int64_t created, const std::string& model, std::int64_t index,
                          const nlohmann::json& delta, const std::string& finish_reason = "");
/// Server-Sent Event framing: "data: <json>\n\n" (the JSON on one line; invalid UTF-8 replaced).
std::string sse_data(const nlohmann::json& payload);
inline const char* sse_done() { return "data: [DONE]\n\n"; }
/// usage + timings objects of a result (n copies counted as returned).
nlohmann::json usage_json(const ChatRequest& request, const EngineResult& result);
nlohmann::json timings_json(const EngineResult& result);
/// finish_reason of choice i (a cancelled sequence, e.g. by --timeout, reports "length").
std::string finish_reason_of(const EngineResult& result, std::size_t sequence);

/// A Prometheus histogram with fixed buckets (seconds).
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double value);
  /// Appends the text exposition of this histogram as `name`.
  void render(std::string& out, const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<std::uint64_t> counts_;  // per bucket (not cumulative), + the +Inf one
  double sum_ = 0;
  std::uint64_t count_ = 0;
};

/// The server's counters; render() gives the Prometheus text format (version 0.0.4).
class Metrics {
 public:
  Metrics();
  void count_request(int status);
  void add_tokens(std::int64_t prompt, std::int64_t completion);
  void observe_ttft(double seconds) { ttft_.observe(seconds); }
  void observe_token_latency(double seconds) { token_latency_.observe(seconds); }
  /// Engine gauges are passed in (the engine is not owned here).
  std::string render(const EngineStats& engine, bool loaded) const;

 private:
  mutable std::mutex mu_;
  std::map<int, std::uint64_t> requests_;
  std::uint64_t prompt_tokens_ = 0, completion_tokens_ = 0;
  Histogram ttft_, token_latency_;
};

}  // namespace instructblip::server
