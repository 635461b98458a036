#include "http_api.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>

namespace instructblip::server {

using nlohmann::json;

ApiError::ApiError(int status_, std::string message, std::string code_, std::string param_, std::string type_)
    : std::runtime_error(std::move(message)),
      status(status_),
      type(type_.empty() ? error_type_for_status(status_) : std::move(type_)),
      code(std::move(code_)),
      param(std::move(param_)) {}

const char* error_type_for_status(int status) {
  switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 503: return "server_overloaded";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

json error_json(const std::string& message, const std::string& type, const std::string& code,
                const std::string& param) {
  json e = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", code}};
  if (!param.empty()) e["param"] = param;
  return json{{"error", std::move(e)}};
}

json error_json(const ApiError& e) { return error_json(e.what(), e.type, e.code, e.param); }

namespace {

[[noreturn]] void bad(const std::string& message, const std::string& param = "",
                      const std::string& code = "invalid_request") {
  throw ApiError(400, message, code, param);
}

// nlohmann's parser keeps its own stack, but later walks of a value recurse: refuse deep nesting
// before parsing (the API's bodies are at most 4 levels deep).
void check_nesting(std::string_view body, int max_depth) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : body) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) bad("the request body nests deeper than " + std::to_string(max_depth) + " levels");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

const json* field(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;  // null = absent, as OpenAI treats it
  return &*it;
}

std::int64_t get_int(const json& v, const char* name, std::int64_t lo, std::int64_t hi) {
  std::int64_t x = 0;
  if (v.is_number_unsigned()) {
    const auto u = v.get<std::uint64_t>();
    if (u > std::uint64_t(std::numeric_limits<std::int64_t>::max())) bad(std::string("'") + name + "' is out of range", name);
    x = std::int64_t(u);
  } else if (v.is_number_integer()) {
    x = v.get<std::int64_t>();
  } else {
    bad(std::string("'") + name + "' must be an integer", name, "invalid_type");
  }
  if (x < lo || x > hi)
    bad(std::string("'") + name + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
            " (got " + std::to_string(x) + ")",
        name, "out_of_range");
  return x;
}

double get_number(const json& v, const char* name, double lo, double hi, bool lo_open = false) {
  if (!v.is_number()) bad(std::string("'") + name + "' must be a number", name, "invalid_type");
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo)) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "'%s' must be in %s%g, %g] (got %g)", name, lo_open ? "(" : "[", lo, hi, x);
    bad(buf, name, "out_of_range");
  }
  return x;
}

bool get_bool(const json& v, const char* name) {
  if (!v.is_boolean()) bad(std::string("'") + name + "' must be a boolean", name, "invalid_type");
  return v.get<bool>();
}

bool starts_with(std::string_view s, std::string_view p) { return s.size() >= p.size() && s.substr(0, p.size()) == p; }

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = char(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

// data:image/<subtype>;base64,<payload>
std::vector<std::uint8_t> decode_data_uri(std::string_view url, std::uint64_t max_bytes) {
  const auto comma = url.find(',');
  if (comma == std::string_view::npos) bad("the image data: URI has no ',' before its data", "messages");
  const std::string meta = lower(url.substr(5, comma - 5));
  if (!starts_with(meta, "image/"))
    bad("the image data: URI must have an image/* media type (data:image/png;base64,...)", "messages", "invalid_image");
  if (meta.size() < 7 || meta.compare(meta.size() - 7, 7, ";base64") != 0)
    bad("the image data: URI must be base64-encoded (data:image/...;base64,...)", "messages", "invalid_image");
  const std::string_view payload = url.substr(comma + 1);
  // Checked before decoding: 4 characters per 3 bytes.
  if (payload.size() / 4 * 3 > max_bytes + 2)
    bad("the image is larger than the server's limit of " + std::to_string(max_bytes) + " bytes", "messages",
        "image_too_large");
  std::vector<std::uint8_t> bytes;
  try {
    bytes = decode_base64_strict(payload);
  } catch (const ApiError& e) {
    bad(std::string("the image data: URI: ") + e.what(), "messages", "invalid_base64");
  }
  if (bytes.empty()) bad("the image data: URI holds no data", "messages", "invalid_image");
  if (bytes.size() > max_bytes)
    bad("the image is larger than the server's limit of " + std::to_string(max_bytes) + " bytes", "messages",
        "image_too_large");
  return bytes;
}

struct Image_ {
  std::vector<std::uint8_t> bytes;
  std::string path;
};

Image_ image_from_url(std::string_view url, const ParseOptions& o) {
  const std::string scheme = lower(url.substr(0, std::min<std::size_t>(url.size(), 8)));
  if (starts_with(scheme, "data:")) return {decode_data_uri(url, o.max_image_bytes), {}};
  if (starts_with(scheme, "file://")) return {{}, resolve_file_url(url, o.allowed_local_dir)};
  if (starts_with(scheme, "http://") || starts_with(scheme, "https://"))
    bad("remote image URLs are not supported: this server never fetches; send the image as a data: URI "
        "(data:image/jpeg;base64,...)",
        "messages", "remote_url_unsupported");
  bad("unsupported image URL scheme: use a data:image/...;base64, URI", "messages", "invalid_image_url");
}

void parse_content(const json& content, ChatRequest& out, const ParseOptions& o) {
  std::vector<std::string> texts;
  bool have_image = false;
  auto add_text = [&](const json& t) {
    if (!t.is_string()) bad("a text content part's 'text' must be a string", "messages", "invalid_type");
    texts.push_back(t.get<std::string>());
  };
  if (content.is_string()) {
    add_text(content);
  } else if (content.is_array()) {
    for (const json& part : content) {
      if (!part.is_object()) bad("each content part must be an object", "messages", "invalid_type");
      const json* type = field(part, "type");
      if (!type || !type->is_string()) bad("each content part needs a string 'type'", "messages", "invalid_type");
      const std::string t = type->get<std::string>();
      if (t == "text") {
        const json* text = field(part, "text");
        if (!text) bad("a text content part needs 'text'", "messages");
        add_text(*text);
      } else if (t == "image_url") {
        const json* iu = field(part, "image_url");
        if (!iu) bad("an image_url content part needs 'image_url'", "messages");
        const json* url = iu->is_object() ? field(*iu, "url") : iu;  // {"url": ...} or the URL itself
        if (!url || !url->is_string()) bad("'image_url.url' must be a string", "messages", "invalid_type");
        if (have_image) bad("only one image per request is supported", "messages", "too_many_images");
        Image_ img = image_from_url(url->get<std::string>(), o);
        out.image_bytes = std::move(img.bytes);
        out.image_path = std::move(img.path);
        have_image = true;
      } else {
        bad("unsupported content part type '" + t + "' (text and image_url are)", "messages");
      }
    }
  } else {
    bad("a message's 'content' must be a string or an array of content parts", "messages", "invalid_type");
  }
  std::string prompt;
  for (const auto& t : texts) {
    if (t.empty()) continue;
    if (!prompt.empty()) prompt += "\n";
    prompt += t;
  }
  if (prompt.empty() && !o.prompt_optional)
    bad("the last user message has no text (the instruction)", "messages", "missing_text");
  if (prompt.size() > o.max_prompt_bytes)
    bad("the instruction is longer than " + std::to_string(o.max_prompt_bytes) + " bytes", "messages", "text_too_long");
  if (!have_image) bad("the last user message has no image (an image_url content part)", "messages", "missing_image");
  out.prompt = std::move(prompt);
}

}  // namespace

std::vector<std::uint8_t> decode_base64_strict(std::string_view s) {
  static const auto table = [] {
    std::array<int, 256> t{};
    t.fill(-1);
    const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(a[i])] = i;
    return t;
  }();
  if (s.size() % 4 != 0) throw ApiError(400, "base64 length is not a multiple of 4", "invalid_base64");
  std::vector<std::uint8_t> out;
  out.reserve(s.size() / 4 * 3);
  for (std::size_t i = 0; i < s.size(); i += 4) {
    const bool last = i + 4 == s.size();
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s[i + k];
      if (c == '=' && last && k >= 2) {
        v[k] = 0;
        ++pad;
        continue;
      }
      if (pad) throw ApiError(400, "base64 has data after '='", "invalid_base64");
      v[k] = table[static_cast<unsigned char>(c)];
      if (v[k] < 0) throw ApiError(400, "base64 has a character outside its alphabet at " + std::to_string(i + k), "invalid_base64");
    }
    const std::uint32_t n = (std::uint32_t(v[0]) << 18) | (std::uint32_t(v[1]) << 12) | (std::uint32_t(v[2]) << 6) | std::uint32_t(v[3]);
    // Canonical encoding only: the bits the padding drops must be zero.
    if ((pad == 1 && (n & 0xff)) || (pad == 2 && (n & 0xffff)))
      throw ApiError(400, "base64 has non-zero bits before its padding", "invalid_base64");
    out.push_back(std::uint8_t(n >> 16));
    if (pad < 2) out.push_back(std::uint8_t(n >> 8));
    if (pad < 1) out.push_back(std::uint8_t(n));
  }
  return out;
}

std::string resolve_file_url(std::string_view url, const std::string& allowed_dir) {
  if (allowed_dir.empty())
    bad("file:// image URLs are disabled (start the server with --allowed-local-dir DIR to allow some)", "messages",
        "file_url_disabled");
  std::string_view rest = url.substr(7);  // after file://
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos) bad("a file:// URL needs an absolute path", "messages", "invalid_image_url");
  const std::string host = lower(rest.substr(0, slash));
  if (!host.empty() && host != "localhost") bad("a file:// URL must name a local file (file:///path)", "messages", "invalid_image_url");
  rest = rest.substr(slash);
  std::string path;
  for (std::size_t i = 0; i < rest.size(); ++i) {
    const char c = rest[i];
    if (c == '%') {
      auto hex = [&](char h) -> int {
        if (h >= '0' && h <= '9') return h - '0';
        if (h >= 'a' && h <= 'f') return h - 'a' + 10;
        if (h >= 'A' && h <= 'F') return h - 'A' + 10;
        return -1;
      };
      const int hi = i + 2 < rest.size() ? hex(rest[i + 1]) : -1, lo = i + 2 < rest.size() ? hex(rest[i + 2]) : -1;
      if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) bad("a file:// URL has a bad %-escape", "messages", "invalid_image_url");
      path += char(hi * 16 + lo);
      i += 2;
    } else if (c == '?' || c == '#' || c == '\0') {
      bad("a file:// URL must not have a query or fragment", "messages", "invalid_image_url");
    } else {
      path += c;
    }
  }
  if (path.size() > PATH_MAX) bad("a file:// URL's path is too long", "messages", "invalid_image_url");
  char resolved[PATH_MAX];
  const std::string refused = "file:// URLs must name an existing file inside the server's --allowed-local-dir";
  if (!::realpath(path.c_str(), resolved)) bad(refused, "messages", "file_url_refused");
  const std::string canon(resolved);
  const std::string prefix = allowed_dir.back() == '/' ? allowed_dir : allowed_dir + "/";
  if (!starts_with(canon, prefix)) bad(refused, "messages", "file_url_refused");
  struct stat st {};
  if (::stat(canon.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) bad(refused, "messages", "file_url_refused");
  return canon;
}

std::vector<std::uint8_t> read_file_limited(const std::string& path, std::uint64_t max_bytes) {
  std::ifstream f(path, std::ios::binary);
  if (!f) bad("cannot read the image file", "messages", "file_url_refused");
  std::vector<std::uint8_t> bytes;
  char buf[65536];
  while (f) {
    f.read(buf, sizeof buf);
    const auto got = std::size_t(f.gcount());
    if (bytes.size() + got > max_bytes)
      bad("the image is larger than the server's limit of " + std::to_string(max_bytes) + " bytes", "messages",
          "image_too_large");
    bytes.insert(bytes.end(), buf, buf + got);
  }
  if (bytes.empty()) bad("the image file is empty", "messages", "invalid_image");
  return bytes;
}

ChatRequest parse_chat_request(std::string_view body, const GenerationConfig& defaults, const ParseOptions& o) {
  check_nesting(body, 32);
  const json j = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) bad("the request body is not valid JSON", "", "invalid_json");
  if (!j.is_object()) bad("the request body must be a JSON object", "", "invalid_json");
  ChatRequest r;
  r.generation = defaults;
  GenerationConfig& g = r.generation;

  if (const json* m = field(j, "model")) {
    if (!m->is_string()) bad("'model' must be a string", "model", "invalid_type");
    r.model = m->get<std::string>();
  }
  const json* messages = field(j, "messages");
  if (!messages) bad("'messages' is required", "messages", "missing_messages");
  if (!messages->is_array() || messages->empty()) bad("'messages' must be a non-empty array", "messages", "invalid_type");
  const json* last_user = nullptr;
  for (const json& m : *messages) {
    if (!m.is_object()) bad("each message must be an object", "messages", "invalid_type");
    const json* role = field(m, "role");
    if (!role || !role->is_string()) bad("each message needs a string 'role'", "messages", "invalid_type");
    const std::string rs = role->get<std::string>();
    if (rs != "user" && rs != "system" && rs != "assistant" && rs != "developer" && rs != "tool")
      bad("unknown message role '" + rs + "'", "messages");
    if (rs == "user") last_user = &m;
  }
  if (!last_user) bad("'messages' has no user message", "messages", "missing_user_message");
  const json* content = field(*last_user, "content");
  if (!content) bad("the last user message has no 'content'", "messages", "missing_text");

  // Unsupported OpenAI features: refused rather than silently ignored.
  if (const json* v = field(j, "logprobs"); v && !(v->is_boolean() && !v->get<bool>()))
    bad("'logprobs' is not supported", "logprobs", "unsupported_parameter");
  if (const json* v = field(j, "tools"); v && !(v->is_array() && v->empty()))
    bad("'tools' is not supported", "tools", "unsupported_parameter");
  for (const char* p : {"presence_penalty", "frequency_penalty"})
    if (const json* v = field(j, p); v && get_number(*v, p, -2.0, 2.0) != 0.0)
      bad(std::string("'") + p + "' is not supported (use 'repetition_penalty')", p, "unsupported_parameter");
  if (const json* v = field(j, "response_format")) {
    const json* t = v->is_object() ? field(*v, "type") : nullptr;
    if (!t || *t != "text") bad("only response_format {\"type\": \"text\"} is supported", "response_format", "unsupported_parameter");
  }

  if (const json* v = field(j, "stream")) r.stream = get_bool(*v, "stream");
  if (const json* v = field(j, "stream_options")) {
    if (!v->is_object()) bad("'stream_options' must be an object", "stream_options", "invalid_type");
    if (const json* u = field(*v, "include_usage")) r.include_usage = get_bool(*u, "stream_options.include_usage");
  }

  // Lengths.
  const json* mt = field(j, "max_completion_tokens");
  if (!mt) mt = field(j, "max_tokens");
  if (mt) {
    g.max_new_tokens = get_int(*mt, field(j, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens", 1,
                               o.max_new_tokens);
  }
  if (const json* v = field(j, "min_new_tokens")) g.min_new_tokens = get_int(*v, "min_new_tokens", 0, o.max_new_tokens);

  // Strategy: temperature 0 = greedy; > 0 = sampling at that temperature; absent = the checkpoint's.
  if (const json* v = field(j, "temperature")) {
    const double t = get_number(*v, "temperature", 0.0, 2.0);
    g.do_sample = t > 0.0;
    if (t > 0.0) g.temperature = t;
  }
  if (const json* v = field(j, "top_p")) g.top_p = get_number(*v, "top_p", 0.0, 1.0, /*lo_open=*/true);
  if (const json* v = field(j, "top_k")) g.top_k = get_int(*v, "top_k", 0, 1 << 20);
  if (const json* v = field(j, "seed")) g.seed = std::uint64_t(get_int(*v, "seed", 0, std::numeric_limits<std::int64_t>::max()));
  if (const json* v = field(j, "num_beams")) g.num_beams = get_int(*v, "num_beams", 1, o.max_rows);
  if (const json* v = field(j, "repetition_penalty")) g.repetition_penalty = get_number(*v, "repetition_penalty", 0.0, 100.0, true);
  if (const json* v = field(j, "length_penalty")) g.length_penalty = get_number(*v, "length_penalty", -100.0, 100.0);
  if (const json* v = field(j, "n")) r.n = get_int(*v, "n", 1, o.max_rows);

  // n: sampling draws n sequences; beam search returns its n best beams; greedy search has one
  // answer, returned n times.
  r.copies = false;
  if (g.do_sample) {
    g.num_return_sequences = r.n;
  } else if (g.num_beams > 1) {
    if (r.n > g.num_beams) bad("with beam search 'n' must not exceed 'num_beams'", "n", "out_of_range");
    g.num_return_sequences = r.n;
  } else {
    g.num_return_sequences = 1;
    r.copies = r.n > 1;
  }
  const std::int64_t rows = g.do_sample ? g.num_return_sequences * g.num_beams : g.num_beams;
  if (rows > o.max_rows)
    bad("the request needs " + std::to_string(rows) + " rows; this server decodes at most " + std::to_string(o.max_rows) +
            " at once (--parallel)",
        "n", "out_of_range");

  if (const json* v = field(j, "stop")) {
    auto add = [&](const json& s) {
      if (!s.is_string()) bad("'stop' must be a string or an array of strings", "stop", "invalid_type");
      std::string t = s.get<std::string>();
      if (t.empty()) bad("'stop' strings must not be empty", "stop");
      if (t.size() > 256) bad("'stop' strings must be at most 256 bytes", "stop", "out_of_range");
      r.stop.push_back(std::move(t));
    };
    if (v->is_array()) {
      if (v->size() > 4) bad("'stop' takes at most 4 strings", "stop", "out_of_range");
      for (const json& s : *v) add(s);
    } else {
      add(*v);
    }
    if (!r.stop.empty() && g.num_beams > 1) bad("'stop' is supported with greedy search and sampling only", "stop");
  }

  parse_content(*content, r, o);
  return r;
}

std::string finish_reason_of(const EngineResult& result, std::size_t i) {
  if (i >= result.finish_reasons.size()) return "stop";
  // A sequence ended by the server (--timeout) was cut short: "length", as OpenAI reports it.
  return result.finish_reasons[i] == FinishReason::Stop ? "stop" : "length";
}

json usage_json(const ChatRequest& request, const EngineResult& result) {
  const std::int64_t completion = result.completion_tokens * (request.copies ? request.n : 1);
  return json{{"prompt_tokens", result.prompt_tokens},
              {"completion_tokens", completion},
              {"total_tokens", result.prompt_tokens + completion}};
}

json timings_json(const EngineResult& r) {
  return json{{"vision_ms", r.timings.vision_ms},   {"qformer_ms", r.timings.qformer_ms},
              {"prefill_ms", r.timings.prefill_ms}, {"decode_ms", r.timings.decode_ms},
              {"decode_steps", r.timings.decode_steps}, {"queue_ms", r.queue_ms},
              {"first_token_ms", r.first_token_ms}, {"total_ms", r.total_ms}};
}

json completion_json(const ChatRequest& request, const EngineResult& result, const std::string& id,
                     std::int64_t created, const std::string& model) {
  json choices = json::array();
  for (std::int64_t i = 0; i < request.n; ++i) {
    const std::size_t s = request.copies ? 0 : std::size_t(i);
    const std::string text = s < result.texts.size() ? result.texts[s] : std::string();
    choices.push_back({{"index", i},
                       {"message", {{"role", "assistant"}, {"content", text}}},
                       {"logprobs", nullptr},
                       {"finish_reason", finish_reason_of(result, s)}});
  }
  return json{{"id", id},
              {"object", "chat.completion"},
              {"created", created},
              {"model", model},
              {"choices", std::move(choices)},
              {"usage", usage_json(request, result)},
              {"timings", timings_json(result)}};
}

json chunk_json(const std::string& id, std::int64_t created, const std::string& model, std::int64_t index,
                const json& delta, const std::string& finish_reason) {
  json choice = {{"index", index}, {"delta", delta}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
  if (!finish_reason.empty()) choice["finish_reason"] = finish_reason;
  return json{{"id", id},
              {"object", "chat.completion.chunk"},
              {"created", created},
              {"model", model},
              {"choices", json::array({std::move(choice)})}};
}

std::string sse_data(const json& payload) {
  return "data: " + payload.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n";
}

// ---- metrics -----------------------------------------------------------------------------------

namespace {
std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}
}  // namespace

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  if (!std::isfinite(value)) return;
  std::lock_guard<std::mutex> lock(mu_);
  std::size_t b = 0;
  while (b < bounds_.size() && value > bounds_[b]) ++b;
  ++counts_[b];
  sum_ += value;
  ++count_;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& help) const {
  std::lock_guard<std::mutex> lock(mu_);
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
  std::uint64_t cum = 0;
  for (std::size_t b = 0; b < bounds_.size(); ++b) {
    cum += counts_[b];
    out += name + "_bucket{le=\"" + fmt(bounds_[b]) + "\"} " + std::to_string(cum) + "\n";
  }
  cum += counts_.back();
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(cum) + "\n";
  out += name + "_sum " + fmt(sum_) + "\n";
  out += name + "_count " + std::to_string(count_) + "\n";
}

Metrics::Metrics()
    : ttft_({0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      token_latency_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}) {}

void Metrics::count_request(int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[status];
}

void Metrics::add_tokens(std::int64_t prompt, std::int64_t completion) {
  std::lock_guard<std::mutex> lock(mu_);
  prompt_tokens_ += std::uint64_t(std::max<std::int64_t>(prompt, 0));
  completion_tokens_ += std::uint64_t(std::max<std::int64_t>(completion, 0));
}

std::string Metrics::render(const EngineStats& engine, bool loaded) const {
  std::string out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    out += "# HELP instructblip_requests_total HTTP requests answered, by status code.\n";
    out += "# TYPE instructblip_requests_total counter\n";
    for (const auto& [status, n] : requests_)
      out += "instructblip_requests_total{status=\"" + std::to_string(status) + "\"} " + std::to_string(n) + "\n";
    out += "# HELP instructblip_prompt_tokens_total Language-model prompt tokens (query tokens + instruction).\n";
    out += "# TYPE instructblip_prompt_tokens_total counter\n";
    out += "instructblip_prompt_tokens_total " + std::to_string(prompt_tokens_) + "\n";
    out += "# HELP instructblip_completion_tokens_total Generated tokens returned.\n";
    out += "# TYPE instructblip_completion_tokens_total counter\n";
    out += "instructblip_completion_tokens_total " + std::to_string(completion_tokens_) + "\n";
  }
  auto gauge = [&](const char* name, const char* help, double v) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n" + name + " " + fmt(v) + "\n";
  };
  gauge("instructblip_model_loaded", "1 once the model is loaded.", loaded ? 1 : 0);
  gauge("instructblip_queue_depth", "Requests waiting for rows in the batch.", double(engine.waiting));
  gauge("instructblip_requests_running", "Requests in the running batch.", double(engine.running));
  gauge("instructblip_active_rows", "Rows (sequences, beams) decoded together.", double(engine.active_rows));
  ttft_.render(out, "instructblip_time_to_first_token_seconds", "Time from request to its first generated token.");
  token_latency_.render(out, "instructblip_time_per_output_token_seconds",
                        "Mean time per generated token after the first, per request.");
  return out;
}

}  // namespace instructblip::server
