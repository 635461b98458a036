// instructblip-server's socket-free API (server/http_api.hpp): every request the parser must refuse
// with a 400, how OpenAI parameters map onto GenerationConfig, strict base64, file:// confinement,
// the response / SSE chunk formats and the Prometheus text.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "http_api.hpp"

using namespace instructblip;
using namespace instructblip::server;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// "hello" as a PNG-typed data: URI (the parser checks the encoding, not the image: decoding is the
// server's next step).
const std::string kUri = "data:image/png;base64,aGVsbG8=";

json body(const json& content, json extra = json::object()) {
  json j = {{"model", "m"}, {"messages", json::array({{{"role", "user"}, {"content", content}}})}};
  for (auto& [k, v] : extra.items()) j[k] = v;
  return j;
}

json parts(const std::string& text = "What is it?", const std::string& url = kUri) {
  return json::array({{{"type", "text"}, {"text", text}}, {{"type", "image_url"}, {"image_url", {{"url", url}}}}});
}

GenerationConfig defaults() {
  GenerationConfig g;
  g.max_length = 20;
  return g;
}

ChatRequest parse(const json& j, const ParseOptions& o = {}) { return parse_chat_request(j.dump(), defaults(), o); }

// The parser refuses `text` with `status` and `code`.
void expect_refused_text(const std::string& text, const std::string& code, const ParseOptions& o = {}, int status = 400) {
  try {
    parse_chat_request(text, defaults(), o);
    ADD_FAILURE() << "accepted: " << text.substr(0, 200);
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, status) << text.substr(0, 200);
    EXPECT_EQ(e.code, code) << e.what() << " for " << text.substr(0, 200);
    EXPECT_EQ(e.type, "invalid_request_error");
    EXPECT_FALSE(std::string(e.what()).empty());
  }
}
void expect_refused(const json& j, const std::string& code, const ParseOptions& o = {}) {
  expect_refused_text(j.dump(), code, o);
}

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::path(IB_TEST_TMP_DIR) / ("server_api_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path / "allowed" / "sub");
    fs::create_directories(path / "outside");
    std::ofstream(path / "allowed" / "sub" / "img.png") << "png";
    std::ofstream(path / "outside" / "secret.png") << "secret";
    fs::create_symlink(path / "outside" / "secret.png", path / "allowed" / "escape.png");
    fs::create_symlink(path / "outside", path / "allowed" / "outdir");
  }
  ~TempDir() { fs::remove_all(path); }
  std::string allowed() const { return fs::canonical(path / "allowed").string(); }
};

}  // namespace

TEST(ServerApi, ParsesTheLastUserMessagesTextAndImage) {
  json j = body(parts("Describe the image."));
  j["messages"].insert(j["messages"].begin(), json{{"role", "system"}, {"content", "You are helpful."}});
  j["messages"].insert(j["messages"].begin() + 1, json{{"role", "user"}, {"content", "an earlier question"}});
  j["messages"].insert(j["messages"].begin() + 2, json{{"role", "assistant"}, {"content", "an answer"}});
  const ChatRequest r = parse(j);
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.prompt, "Describe the image.");
  EXPECT_EQ(std::string(r.image_bytes.begin(), r.image_bytes.end()), "hello");
  EXPECT_TRUE(r.image_path.empty());
  EXPECT_FALSE(r.stream);
  EXPECT_EQ(r.n, 1);
  // Nothing set: the checkpoint's generation config, untouched.
  EXPECT_EQ(r.generation.max_length, 20);
  EXPECT_FALSE(r.generation.max_new_tokens.has_value());
  EXPECT_FALSE(r.generation.do_sample);
  EXPECT_EQ(r.generation.num_beams, 1);
}

TEST(ServerApi, JoinsTextPartsAndAcceptsTheImageUrlAsAString) {
  json c = json::array({{{"type", "text"}, {"text", "first"}},
                        {{"type", "image_url"}, {"image_url", kUri}},
                        {{"type", "text"}, {"text", "second"}}});
  const ChatRequest r = parse(body(c));
  EXPECT_EQ(r.prompt, "first\nsecond");
  EXPECT_EQ(r.image_bytes.size(), 5u);
}

TEST(ServerApi, MapsOpenAiParametersOntoGenerationConfig) {
  ChatRequest r = parse(body(parts(), {{"temperature", 0}, {"max_tokens", 7}, {"seed", 42}, {"stop", "."}}));
  EXPECT_FALSE(r.generation.do_sample);
  EXPECT_EQ(r.generation.max_new_tokens, 7);
  EXPECT_EQ(r.generation.seed, 42u);
  EXPECT_EQ(r.stop, std::vector<std::string>{"."});

  r = parse(body(parts(), {{"temperature", 0.7}, {"top_p", 0.9}, {"top_k", 5}, {"n", 3}, {"max_tokens", 9},
                           {"max_completion_tokens", 11}, {"stream", true},
                           {"stream_options", {{"include_usage", true}}}}));
  EXPECT_TRUE(r.generation.do_sample);
  EXPECT_DOUBLE_EQ(r.generation.temperature, 0.7);
  EXPECT_DOUBLE_EQ(r.generation.top_p, 0.9);
  EXPECT_EQ(r.generation.top_k, 5);
  EXPECT_EQ(r.generation.num_return_sequences, 3);
  EXPECT_FALSE(r.copies);
  EXPECT_EQ(r.generation.max_new_tokens, 11);  // max_completion_tokens wins over max_tokens
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);

  r = parse(body(parts(), {{"num_beams", 4}, {"n", 2}, {"length_penalty", -0.5}, {"repetition_penalty", 1.3},
                           {"min_new_tokens", 3}}));
  EXPECT_FALSE(r.generation.do_sample);
  EXPECT_EQ(r.generation.num_beams, 4);
  EXPECT_EQ(r.generation.num_return_sequences, 2);
  EXPECT_DOUBLE_EQ(r.generation.length_penalty, -0.5);
  EXPECT_DOUBLE_EQ(r.generation.repetition_penalty, 1.3);
  EXPECT_EQ(r.generation.min_new_tokens, 3);
  EXPECT_FALSE(r.copies);

  // Greedy search has one answer: n copies of it.
  r = parse(body(parts(), {{"n", 2}}));
  EXPECT_EQ(r.generation.num_return_sequences, 1);
  EXPECT_TRUE(r.copies);
  EXPECT_EQ(r.n, 2);

  // null means absent, as in OpenAI's API.
  r = parse(body(parts(), {{"temperature", nullptr}, {"max_tokens", nullptr}}));
  EXPECT_FALSE(r.generation.do_sample);
  EXPECT_FALSE(r.generation.max_new_tokens.has_value());
}

TEST(ServerApi, RefusesMalformedBodies) {
  expect_refused_text("", "invalid_json");
  expect_refused_text("{", "invalid_json");
  expect_refused_text("{\"messages\": [", "invalid_json");
  expect_refused_text("[1, 2]", "invalid_json");
  expect_refused_text("\"text\"", "invalid_json");
  expect_refused_text("{\"messages\": []} trailing", "invalid_json");
  expect_refused_text(std::string(100, '[') + std::string(100, ']'), "invalid_request");  // nesting
  expect_refused(json::object(), "missing_messages");
  expect_refused(json{{"messages", "hi"}}, "invalid_type");
  expect_refused(json{{"messages", json::array()}}, "invalid_type");
  expect_refused(json{{"messages", json::array({1})}}, "invalid_type");
  expect_refused(json{{"messages", json::array({{{"content", "x"}}})}}, "invalid_type");
  expect_refused(json{{"messages", json::array({{{"role", "wizard"}, {"content", "x"}}})}}, "invalid_request");
  expect_refused(json{{"messages", json::array({{{"role", "system"}, {"content", "x"}}})}}, "missing_user_message");
  expect_refused(json{{"messages", json::array({{{"role", "user"}}})}}, "missing_text");
  json j = body(parts());
  j["model"] = 5;
  expect_refused(j, "invalid_type");
}

TEST(ServerApi, RefusesMissingOrMalformedContent) {
  expect_refused(body("just text"), "missing_image");
  expect_refused(body(42), "invalid_type");
  expect_refused(body(json::array({{{"type", "image_url"}, {"image_url", {{"url", kUri}}}}})), "missing_text");
  expect_refused(body(parts("")), "missing_text");
  expect_refused(body(json::array({{{"type", "text"}, {"text", "x"}}})), "missing_image");
  expect_refused(body(json::array({{{"type", "text"}, {"text", 3}}, {{"type", "image_url"}, {"image_url", kUri}}})),
                 "invalid_type");
  expect_refused(body(json::array({{{"type", "audio"}}})), "invalid_request");
  expect_refused(body(json::array({"x"})), "invalid_type");
  expect_refused(body(json::array({{{"text", "x"}}})), "invalid_type");
  expect_refused(body(json::array({{{"type", "image_url"}}})), "invalid_request");
  expect_refused(body(json::array({{{"type", "image_url"}, {"image_url", {{"url", 1}}}}})), "invalid_type");
  json two = parts();
  two.push_back({{"type", "image_url"}, {"image_url", {{"url", kUri}}}});
  expect_refused(body(two), "too_many_images");
  ParseOptions small;
  small.max_prompt_bytes = 10;
  expect_refused(body(parts(std::string(11, 'a'))), "text_too_long", small);
}

TEST(ServerApi, RefusesRemoteAndUnknownImageUrls) {
  expect_refused(body(parts("x", "http://example.com/a.png")), "remote_url_unsupported");
  expect_refused(body(parts("x", "HTTPS://example.com/a.png")), "remote_url_unsupported");
  expect_refused(body(parts("x", "ftp://example.com/a.png")), "invalid_image_url");
  expect_refused(body(parts("x", "/etc/passwd")), "invalid_image_url");
  expect_refused(body(parts("x", "")), "invalid_image_url");
}

TEST(ServerApi, RefusesBadDataUris) {
  expect_refused(body(parts("x", "data:image/png;base64")), "invalid_request");  // no comma
  expect_refused(body(parts("x", "data:text/plain;base64,aGVsbG8=")), "invalid_image");
  expect_refused(body(parts("x", "data:image/png,hello")), "invalid_image");
  expect_refused(body(parts("x", "data:image/png;base64,")), "invalid_image");
  expect_refused(body(parts("x", "data:image/png;base64,aGVsbG8")), "invalid_base64");     // no padding
  expect_refused(body(parts("x", "data:image/png;base64,aGVs bG8=")), "invalid_base64");   // space
  expect_refused(body(parts("x", "data:image/png;base64,aGVsbG9=")), "invalid_base64");    // non-zero pad bits
  expect_refused(body(parts("x", "data:image/png;base64,aGVsbG8=aGVs")), "invalid_base64");
  expect_refused(body(parts("x", "data:image/png;base64,aG=sbG8=")), "invalid_base64");
  expect_refused(body(parts("x", "data:image/png;base64,aGVsbG8*")), "invalid_base64");
  ParseOptions small;
  small.max_image_bytes = 4;
  expect_refused(body(parts("x", kUri)), "image_too_large", small);  // 5 bytes
  expect_refused(body(parts("x", "data:image/png;base64," + std::string(400, 'A'))), "image_too_large", small);
  small.max_image_bytes = 5;
  EXPECT_EQ(parse(body(parts("x", kUri)), small).image_bytes.size(), 5u);
}

TEST(ServerApi, RefusesOutOfRangeAndMistypedParameters) {
  const std::vector<std::pair<json, std::string>> cases = {
      {{{"temperature", "0"}}, "invalid_type"},
      {{{"temperature", -0.1}}, "out_of_range"},
      {{{"temperature", 2.5}}, "out_of_range"},
      {{{"top_p", 0}}, "out_of_range"},
      {{{"top_p", 1.5}}, "out_of_range"},
      {{{"top_k", -1}}, "out_of_range"},
      {{{"top_k", 1.5}}, "invalid_type"},
      {{{"max_tokens", 0}}, "out_of_range"},
      {{{"max_tokens", "10"}}, "invalid_type"},
      {{{"max_tokens", 1e12}}, "invalid_type"},
      {{{"max_completion_tokens", 100000}}, "out_of_range"},
      {{{"max_tokens", 18446744073709551615ull}}, "invalid_request"},
      {{{"min_new_tokens", -1}}, "out_of_range"},
      {{{"n", 0}}, "out_of_range"},
      {{{"n", 9}}, "out_of_range"},  // > max_rows (8)
      {{{"n", true}}, "invalid_type"},
      {{{"num_beams", 0}}, "out_of_range"},
      {{{"num_beams", 9}}, "out_of_range"},
      {{{"num_beams", 2}, {"n", 3}}, "out_of_range"},
      {{{"temperature", 1}, {"num_beams", 4}, {"n", 4}}, "out_of_range"},  // 16 rows
      {{{"seed", -1}}, "out_of_range"},
      {{{"repetition_penalty", 0}}, "out_of_range"},
      {{{"length_penalty", "x"}}, "invalid_type"},
      {{{"stream", "yes"}}, "invalid_type"},
      {{{"stream_options", 1}}, "invalid_type"},
      {{{"stream_options", {{"include_usage", 1}}}}, "invalid_type"},
      {{{"stop", 5}}, "invalid_type"},
      {{{"stop", ""}}, "invalid_request"},
      {{{"stop", json::array({"a", "b", "c", "d", "e"})}}, "out_of_range"},
      {{{"stop", json::array({"a", 1})}}, "invalid_type"},
      {{{"stop", std::string(300, 'a')}}, "out_of_range"},
      {{{"stop", "."}, {"num_beams", 2}}, "invalid_request"},
      {{{"logprobs", true}}, "unsupported_parameter"},
      {{{"tools", json::array({{{"type", "function"}}})}}, "unsupported_parameter"},
      {{{"presence_penalty", 0.5}}, "unsupported_parameter"},
      {{{"frequency_penalty", 3}}, "out_of_range"},
      {{{"response_format", {{"type", "json_object"}}}}, "unsupported_parameter"},
  };
  for (const auto& [extra, code] : cases) {
    SCOPED_TRACE(extra.dump());
    expect_refused(body(parts(), extra), code);
  }
  // Accepted neutral values of the unsupported features.
  EXPECT_NO_THROW(parse(body(parts(), {{"logprobs", false}, {"presence_penalty", 0}, {"frequency_penalty", 0},
                                       {"response_format", {{"type", "text"}}}, {"user", "u"}})));
}

TEST(ServerApi, StrictBase64) {
  // RFC 4648 section 10 test vectors.
  const std::vector<std::pair<std::string, std::string>> v = {
      {"", ""}, {"Zg==", "f"}, {"Zm8=", "fo"}, {"Zm9v", "foo"}, {"Zm9vYg==", "foob"}, {"Zm9vYmE=", "fooba"},
      {"Zm9vYmFy", "foobar"}};
  for (const auto& [enc, dec] : v) {
    const auto b = decode_base64_strict(enc);
    EXPECT_EQ(std::string(b.begin(), b.end()), dec) << enc;
  }
  const auto all = decode_base64_strict("+/+/");
  EXPECT_EQ(all, (std::vector<std::uint8_t>{0xfb, 0xff, 0xbf}));
  for (const char* bad : {"Zg=", "Zg", "Z===", "Zh==", "Zm9=", "Zm 9v", "Zm9v\n", "Zg==Zg==", "=Zg=", "Zm-_", "Zm9v===="})
    EXPECT_THROW(decode_base64_strict(bad), ApiError) << bad;
}

TEST(ServerApi, FileUrlsStayInsideTheAllowedDirectory) {
  TempDir t;
  ParseOptions o;
  o.allowed_local_dir = t.allowed();
  const std::string a = t.allowed();
  const ChatRequest r = parse(body(parts("x", "file://" + a + "/sub/img.png")), o);
  EXPECT_EQ(r.image_path, a + "/sub/img.png");
  EXPECT_TRUE(r.image_bytes.empty());
  EXPECT_EQ(parse(body(parts("x", "file://localhost" + a + "/sub/../sub/img%2epng")), o).image_path,
            a + "/sub/img.png");
  EXPECT_EQ(read_file_limited(r.image_path, 3), (std::vector<std::uint8_t>{'p', 'n', 'g'}));
  EXPECT_THROW(read_file_limited(r.image_path, 2), ApiError);

  const std::string outside = fs::canonical(t.path / "outside" / "secret.png").string();
  for (const std::string& url : std::vector<std::string>{"file://" + a + "/../outside/secret.png", "file://" + outside,
                                 "file://" + a + "/escape.png",          // symlink out
                                 "file://" + a + "/outdir/secret.png",   // directory symlink out
                                 "file://" + a + "/sub/missing.png", "file://" + a + "/sub",  // not a file
                                 std::string("file:///etc/passwd"), "file://" + a + "/%2e%2e/outside/secret.png"}) {
    SCOPED_TRACE(url);
    expect_refused(body(parts("x", url)), "file_url_refused", o);
  }
  expect_refused(body(parts("x", "file://otherhost" + a + "/sub/img.png")), "invalid_image_url", o);
  expect_refused(body(parts("x", "file://" + a + "/sub/img.png?x")), "invalid_image_url", o);
  expect_refused(body(parts("x", "file://" + a + "/sub/img%00.png")), "invalid_image_url", o);
  expect_refused(body(parts("x", "file://" + a + "/sub/img%zz")), "invalid_image_url", o);
  // A directory whose name extends the allowed one is outside it.
  fs::create_directories(t.path / "allowed2");
  std::ofstream(t.path / "allowed2" / "x.png") << "x";
  expect_refused(body(parts("x", "file://" + a + "2/x.png")), "file_url_refused", o);
  // Without --allowed-local-dir: no file:// at all.
  expect_refused(body(parts("x", "file://" + a + "/sub/img.png")), "file_url_disabled");
}

TEST(ServerApi, ErrorObjectsHaveOpenAisShape) {
  const json e = error_json(ApiError(400, "bad thing", "invalid_x", "temperature"));
  ASSERT_TRUE(e.contains("error"));
  EXPECT_EQ(e["error"]["message"], "bad thing");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["code"], "invalid_x");
  EXPECT_EQ(e["error"]["param"], "temperature");
  EXPECT_TRUE(error_json("m", "t", "c")["error"]["param"].is_null());
  EXPECT_STREQ(error_type_for_status(401), "authentication_error");
  EXPECT_STREQ(error_type_for_status(404), "not_found_error");
  EXPECT_STREQ(error_type_for_status(500), "server_error");
  EXPECT_EQ(ApiError(503, "busy").type, "server_overloaded");
}

namespace {
EngineResult two_sequence_result() {
  EngineResult r;
  r.texts = {"a red circle", "a blue one"};
  r.sequences = {{0, 5, 6, 1}, {0, 7, 8}};
  r.finish_reasons = {FinishReason::Stop, FinishReason::Length};
  r.prompt_tokens = 19;
  r.completion_tokens = 5;
  r.timings.vision_ms = 1;
  r.timings.qformer_ms = 2;
  r.timings.prefill_ms = 3;
  r.timings.decode_ms = 4;
  r.timings.decode_steps = 3;
  return r;
}
}  // namespace

TEST(ServerApi, CompletionResponseCarriesChoicesUsageAndTimings) {
  ChatRequest cr;
  cr.n = 2;
  const EngineResult r = two_sequence_result();
  const json j = completion_json(cr, r, "chatcmpl-1", 1700000000, "echo-model");
  EXPECT_EQ(j["id"], "chatcmpl-1");
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["created"], 1700000000);
  EXPECT_EQ(j["model"], "echo-model");
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][0]["index"], 0);
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "a red circle");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["choices"][1]["message"]["content"], "a blue one");
  EXPECT_EQ(j["choices"][1]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 19);
  EXPECT_EQ(j["usage"]["completion_tokens"], 5);
  EXPECT_EQ(j["usage"]["total_tokens"], 24);
  EXPECT_EQ(j["timings"]["vision_ms"], 1.0);
  EXPECT_EQ(j["timings"]["qformer_ms"], 2.0);
  EXPECT_EQ(j["timings"]["prefill_ms"], 3.0);
  EXPECT_EQ(j["timings"]["decode_ms"], 4.0);

  // Greedy copies: one sequence, returned n times and counted n times.
  ChatRequest copies;
  copies.n = 3;
  copies.copies = true;
  EngineResult one = r;
  one.texts.resize(1);
  one.finish_reasons.resize(1);
  one.completion_tokens = 3;
  const json c = completion_json(copies, one, "x", 1, "m");
  ASSERT_EQ(c["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(c["choices"][i]["index"], i);
    EXPECT_EQ(c["choices"][i]["message"]["content"], "a red circle");
  }
  EXPECT_EQ(c["usage"]["completion_tokens"], 9);

  // A generation cut by the server's timeout reports "length".
  EngineResult cancelled = r;
  cancelled.finish_reasons = {FinishReason::Cancelled, FinishReason::Stop};
  EXPECT_EQ(finish_reason_of(cancelled, 0), "length");
  EXPECT_EQ(finish_reason_of(cancelled, 1), "stop");
}

TEST(ServerApi, SseChunksAreOneLineDataEventsInOpenAisChunkFormat) {
  const json delta = {{"content", "line one\nline \"two\"\n\n"}};
  const std::string ev = sse_data(chunk_json("id-1", 5, "m", 1, delta));
  ASSERT_GE(ev.size(), 8u);
  EXPECT_EQ(ev.substr(0, 6), "data: ");
  EXPECT_EQ(ev.substr(ev.size() - 2), "\n\n");
  // The payload is on one line: newlines in the text are JSON escapes.
  EXPECT_EQ(ev.find('\n'), ev.size() - 2);
  const json back = json::parse(ev.substr(6, ev.size() - 8));
  EXPECT_EQ(back["object"], "chat.completion.chunk");
  EXPECT_EQ(back["id"], "id-1");
  EXPECT_EQ(back["created"], 5);
  EXPECT_EQ(back["model"], "m");
  ASSERT_EQ(back["choices"].size(), 1u);
  EXPECT_EQ(back["choices"][0]["index"], 1);
  EXPECT_EQ(back["choices"][0]["delta"]["content"], "line one\nline \"two\"\n\n");
  EXPECT_TRUE(back["choices"][0]["finish_reason"].is_null());

  const json last = chunk_json("id-1", 5, "m", 0, json::object(), "stop");
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_STREQ(sse_done(), "data: [DONE]\n\n");
  // Invalid UTF-8 never breaks the stream: replaced, still valid JSON.
  const std::string bad = sse_data(chunk_json("i", 0, "m", 0, {{"content", std::string("\xff\xfe")}}));
  EXPECT_NO_THROW(json::parse(bad.substr(6, bad.size() - 8)));
}

TEST(ServerApi, MetricsAreValidPrometheusText) {
  Metrics m;
  m.count_request(200);
  m.count_request(200);
  m.count_request(400);
  m.add_tokens(19, 7);
  m.add_tokens(10, 3);
  m.observe_ttft(0.02);   // in (0.01, 0.025]
  m.observe_ttft(0.3);    // in (0.25, 0.5]
  m.observe_ttft(100.0);  // above every bound
  m.observe_token_latency(0.004);
  EngineStats st;
  st.waiting = 3;
  st.running = 2;
  st.active_rows = 5;
  const std::string t = m.render(st, true);
  auto has = [&](const std::string& line) { return t.find("\n" + line + "\n") != std::string::npos; };
  EXPECT_TRUE(has("instructblip_requests_total{status=\"200\"} 2")) << t;
  EXPECT_TRUE(has("instructblip_requests_total{status=\"400\"} 1"));
  EXPECT_TRUE(has("instructblip_prompt_tokens_total 29"));
  EXPECT_TRUE(has("instructblip_completion_tokens_total 10"));
  EXPECT_TRUE(has("instructblip_queue_depth 3"));
  EXPECT_TRUE(has("instructblip_requests_running 2"));
  EXPECT_TRUE(has("instructblip_active_rows 5"));
  EXPECT_TRUE(has("instructblip_model_loaded 1"));
  EXPECT_TRUE(has("# TYPE instructblip_time_to_first_token_seconds histogram"));
  // Buckets are cumulative.
  EXPECT_TRUE(has("instructblip_time_to_first_token_seconds_bucket{le=\"0.01\"} 0"));
  EXPECT_TRUE(has("instructblip_time_to_first_token_seconds_bucket{le=\"0.025\"} 1"));
  EXPECT_TRUE(has("instructblip_time_to_first_token_seconds_bucket{le=\"0.25\"} 1"));
  EXPECT_TRUE(has("instructblip_time_to_first_token_seconds_bucket{le=\"0.5\"} 2"));
  EXPECT_TRUE(has("instructblip_time_to_first_token_seconds_bucket{le=\"60\"} 2"));
  EXPECT_TRUE(has("instructblip_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3"));
  EXPECT_TRUE(has("instructblip_time_to_first_token_seconds_count 3"));
  EXPECT_TRUE(has("instructblip_time_to_first_token_seconds_sum 100.32"));
  EXPECT_TRUE(has("instructblip_time_per_output_token_seconds_bucket{le=\"0.005\"} 1"));
  EXPECT_TRUE(has("instructblip_time_per_output_token_seconds_bucket{le=\"0.0025\"} 0"));
  // Every line is a comment or `name{labels} value`; every sample's family has a TYPE.
  std::size_t pos = 0;
  while (pos < t.size()) {
    const std::size_t end = t.find('\n', pos);
    ASSERT_NE(end, std::string::npos) << "text must end with a newline";
    const std::string line = t.substr(pos, end - pos);
    pos = end + 1;
    if (line.rfind("# ", 0) == 0) continue;
    const std::size_t sp = line.rfind(' ');
    ASSERT_NE(sp, std::string::npos) << line;
    std::string name = line.substr(0, std::min(line.find('{'), sp));
    for (const char* suffix : {"_bucket", "_sum", "_count"})
      if (name.size() > std::strlen(suffix) && name.compare(name.size() - std::strlen(suffix), std::string::npos, suffix) == 0 &&
          t.find("# TYPE " + name.substr(0, name.size() - std::strlen(suffix)) + " histogram") != std::string::npos)
        name.resize(name.size() - std::strlen(suffix));
    EXPECT_NE(t.find("# TYPE " + name + " "), std::string::npos) << line;
    EXPECT_NO_THROW(std::stod(line.substr(sp + 1))) << line;
  }
}

TEST(ServerApi, TextIsOptionalWhenTheModelCaptions) {
  ParseOptions blip2;
  blip2.prompt_optional = true;
  const ChatRequest r = parse(body(json::array({{{"type", "image_url"}, {"image_url", {{"url", kUri}}}}})), blip2);
  EXPECT_EQ(r.prompt, "");
  EXPECT_FALSE(r.image_bytes.empty());
  expect_refused(body(json::array({{{"type", "image_url"}, {"image_url", {{"url", kUri}}}}})), "missing_text");
}
