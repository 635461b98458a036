// libFuzzer harness: instructblip-server's chat-completions body parser (server/http_api.cpp).
// Input: a request body (any bytes). parse_chat_request may only throw server::ApiError (status
// 400); an accepted request must be complete (an instruction, exactly one image source, n and the
// rows within the limits) and format into a response and SSE chunks that are valid JSON. The
// bytes also go through the strict base64 decoder, whose accepted inputs must re-encode to
// themselves (one canonical encoding).
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "fuzz_common.hpp"
#include "http_api.hpp"

using namespace instructblip;
using namespace instructblip::server;

namespace {

std::string encode_base64(const std::vector<std::uint8_t>& in) {
  static const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const unsigned n = unsigned(in[i]) << 16 | unsigned(in[i + 1]) << 8 | in[i + 2];
    out += {a[n >> 18], a[(n >> 12) & 63], a[(n >> 6) & 63], a[n & 63]};
  }
  if (i + 1 == in.size()) {
    const unsigned n = unsigned(in[i]) << 16;
    out += {a[n >> 18], a[(n >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    const unsigned n = unsigned(in[i]) << 16 | unsigned(in[i + 1]) << 8;
    out += {a[n >> 18], a[(n >> 12) & 63], a[(n >> 6) & 63], '='};
  }
  return out;
}

const ParseOptions& options() {
  static const ParseOptions o = [] {
    ParseOptions p;
    p.max_image_bytes = 1 << 20;
    p.max_rows = 8;
    p.max_new_tokens = 4096;
    // file:// URLs may name the fixture images (tests/data/images).
    p.allowed_local_dir = std::filesystem::canonical(ibfuzz::data_path("images")).string();
    return p;
  }();
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  GenerationConfig defaults;
  defaults.max_length = 20;
  try {
    const ChatRequest r = parse_chat_request(body, defaults, options());
    IB_FUZZ_CHECK(!r.prompt.empty(), "accepted without an instruction");
    IB_FUZZ_CHECK(r.image_bytes.empty() != r.image_path.empty(), "accepted without exactly one image source");
    IB_FUZZ_CHECK(r.image_path.empty() || r.image_path.rfind(options().allowed_local_dir + "/", 0) == 0,
                  "file:// outside the allowed directory: " + r.image_path);
    IB_FUZZ_CHECK(r.image_bytes.size() <= options().max_image_bytes, "image over the limit");
    IB_FUZZ_CHECK(r.n >= 1 && r.n <= options().max_rows, "n out of range");
    const GenerationConfig& g = r.generation;
    const std::int64_t rows = g.do_sample ? g.num_return_sequences * g.num_beams : g.num_beams;
    IB_FUZZ_CHECK(rows >= 1 && rows <= options().max_rows, "rows out of range");
    IB_FUZZ_CHECK(r.copies == (!g.do_sample && g.num_beams == 1 && r.n > 1), "copies");
    IB_FUZZ_CHECK(!g.max_new_tokens || (*g.max_new_tokens >= 1 && *g.max_new_tokens <= options().max_new_tokens),
                  "max_tokens out of range");
    IB_FUZZ_CHECK(r.stop.size() <= 4, "too many stop strings");

    // The response formats of an answer echoing the instruction.
    EngineResult res;
    res.texts.assign(std::size_t(r.copies ? 1 : r.n), r.prompt);
    res.finish_reasons.assign(res.texts.size(), FinishReason::Stop);
    const nlohmann::json c = completion_json(r, res, "id", 0, r.model);
    IB_FUZZ_CHECK(c["choices"].size() == std::size_t(r.n), "choices");
    const std::string ev = sse_data(chunk_json("id", 0, r.model, 0, {{"content", r.prompt}}));
    IB_FUZZ_CHECK(ev.size() > 8 && ev.compare(0, 6, "data: ") == 0 && ev.find('\n') == ev.size() - 2, "SSE framing");
    IB_FUZZ_CHECK(!nlohmann::json::parse(ev.substr(6, ev.size() - 8), nullptr, false).is_discarded(), "SSE JSON");
  } catch (const ApiError& e) {
    IB_FUZZ_CHECK(e.status == 400, "parse error with status " + std::to_string(e.status));
  }
  try {
    const auto bytes = decode_base64_strict(body);
    IB_FUZZ_CHECK(encode_base64(bytes) == body, "base64 accepted a non-canonical encoding");
  } catch (const ApiError&) {
  }
  return 0;
}
