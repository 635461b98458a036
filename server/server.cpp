// instructblip-server: an OpenAI-compatible HTTP server (POST /v1/chat/completions) on the
// BatchEngine, so concurrent requests share one continuous batch. See README "Serve it over HTTP".
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <ctime>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <instructblip/engine/batch_engine.hpp>
#include <instructblip/instructblip.hpp>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "http_api.hpp"
// After the library headers: httplib.h brings <resolv.h>, whose `_res` macro breaks Eigen.
#include <httplib.h>

namespace {

using namespace instructblip;
using namespace instructblip::server;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

const char* kProg = "instructblip-server";

struct Options {
  std::string model_dir;
  std::string model_name;  // what /v1/models lists; default: the model directory's name
  std::string host = "127.0.0.1";
  int port = 8080;
  std::int64_t parallel = 8;
  std::string weights;
  int threads = 0;
  std::string api_key;
  std::int64_t max_queue = 64;
  double timeout = 0;  // seconds; 0: none
  std::string allowed_local_dir;
  std::uint64_t max_body = 20u << 20;
  std::uint64_t max_image_bytes = 16u << 20;
  std::uint64_t max_image_pixels = 4096u * 4096u;
  std::int64_t max_tokens = 4096;
  int http_threads = 0;  // 0: 2 x (parallel + max_queue), at least 16, at most 256
};

std::string usage() {
  return std::string("usage: ") + kProg +
         " --model DIR [options]\n"
         "An OpenAI-compatible HTTP server (POST /v1/chat/completions, GET /health, /v1/models, /metrics).\n"
         "  --model DIR              InstructBLIP checkpoint directory (HuggingFace layout)\n"
         "  --alias NAME             model name listed by /v1/models (default: the directory's name)\n"
         "  --host ADDR              address to bind (default 127.0.0.1)\n"
         "  --port N                 port (default 8080; 0: any free port, printed on stderr)\n"
         "  --parallel N             rows decoded together in the continuous batch (default 8)\n"
         "  --weights F              f32 | bf16 | q8_0 | q4_0 (as instructblip-generate)\n"
         "  --threads N              compute threads (default: all cores)\n"
         "  --api-key KEY            require 'Authorization: Bearer KEY' (all but /health)\n"
         "  --max-queue N            requests in flight before 503 + Retry-After (default 64)\n"
         "  --timeout S              end a generation after S seconds (finish_reason \"length\"; default: none)\n"
         "  --allowed-local-dir DIR  accept file:// image URLs under DIR (default: refused)\n"
         "  --max-body BYTES         largest request body (default 20971520; larger: 413)\n"
         "  --max-image-bytes BYTES  largest encoded image (default 16777216)\n"
         "  --max-image-pixels N     largest width x height (default 16777216)\n"
         "  --max-tokens N           largest max_tokens a request may ask (default 4096)\n"
         "  --http-threads N         connection threads\n"
         "  --help\n";
}

[[noreturn]] void usage_error(const std::string& m) {
  std::fprintf(stderr, "%s: %s\n%s", kProg, m.c_str(), usage().c_str());
  std::exit(2);
}

long long parse_int(const std::string& flag, const std::string& v, long long lo, long long hi) {
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end || errno || x < lo || x > hi)
    usage_error(flag + " expects an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got '" + v + "'");
  return x;
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(usage().c_str(), stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) usage_error("unknown option or missing value: " + a);
    const std::string v = argv[++i];
    if (a == "--model") o.model_dir = v;
    else if (a == "--alias") o.model_name = v;
    else if (a == "--host") o.host = v;
    else if (a == "--port") o.port = int(parse_int(a, v, 0, 65535));
    else if (a == "--parallel") o.parallel = parse_int(a, v, 1, 1024);
    else if (a == "--weights") o.weights = v;
    else if (a == "--threads") o.threads = int(parse_int(a, v, 1, 4096));
    else if (a == "--api-key") o.api_key = v;
    else if (a == "--max-queue") o.max_queue = parse_int(a, v, 1, 1 << 20);
    else if (a == "--timeout") o.timeout = double(parse_int(a, v, 0, 1 << 24));
    else if (a == "--allowed-local-dir") o.allowed_local_dir = v;
    else if (a == "--max-body") o.max_body = std::uint64_t(parse_int(a, v, 1, 1LL << 34));
    else if (a == "--max-image-bytes") o.max_image_bytes = std::uint64_t(parse_int(a, v, 1, 1LL << 34));
    else if (a == "--max-image-pixels") o.max_image_pixels = std::uint64_t(parse_int(a, v, 1, 1LL << 34));
    else if (a == "--max-tokens") o.max_tokens = parse_int(a, v, 1, 65535);
    else if (a == "--http-threads") o.http_threads = int(parse_int(a, v, 1, 4096));
    else usage_error("unknown option: " + a);
  }
  if (o.model_dir.empty()) usage_error("--model DIR is required");
  if (o.model_name.empty()) {
    std::string d = o.model_dir;
    while (d.size() > 1 && d.back() == '/') d.pop_back();
    const auto s = d.rfind('/');
    o.model_name = s == std::string::npos ? d : d.substr(s + 1);
  }
  if (!o.allowed_local_dir.empty()) {
    char buf[PATH_MAX];
    if (!::realpath(o.allowed_local_dir.c_str(), buf)) usage_error("--allowed-local-dir: no such directory: " + o.allowed_local_dir);
    o.allowed_local_dir = buf;
  }
  if (o.http_threads == 0)
    o.http_threads = int(std::clamp<std::int64_t>(2 * (o.parallel + o.max_queue), 16, 256));
  return o;
}

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// One log line per request: what the handler learnt, on the connection's thread (httplib runs the
// pre-routing handler, the handler, a chunked content provider and the logger on one thread).
struct RequestLog {
  Clock::time_point start;
  std::int64_t prompt_tokens = -1, completion_tokens = -1;
  std::string note;
};
thread_local RequestLog t_log;

// httplib 0.11 gives a handler no way to see whether its client is still connected. The
// connection's socket is the one whose two ends are the request's addresses; a peek that reads
// end-of-file on it means the client has gone (used to cancel a non-streamed generation).
int find_client_socket(const httplib::Request& req) {
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return -1;
  int found = -1;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (*end || end == e->d_name) continue;
    sockaddr_storage local{}, peer{};
    socklen_t ll = sizeof local, pl = sizeof peer;
    if (::getsockname(int(fd), reinterpret_cast<sockaddr*>(&local), &ll) != 0) continue;
    if (::getpeername(int(fd), reinterpret_cast<sockaddr*>(&peer), &pl) != 0) continue;
    auto port_addr = [](const sockaddr_storage& s, int* port) -> std::string {
      char buf[INET6_ADDRSTRLEN] = {0};
      if (s.ss_family == AF_INET) {
        const auto* a = reinterpret_cast<const sockaddr_in*>(&s);
        *port = ntohs(a->sin_port);
        ::inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
      } else if (s.ss_family == AF_INET6) {
        const auto* a = reinterpret_cast<const sockaddr_in6*>(&s);
        *port = ntohs(a->sin6_port);
        ::inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
      } else {
        *port = -1;
      }
      return buf;
    };
    int lport = -1, pport = -1;
    port_addr(local, &lport);
    const std::string paddr = port_addr(peer, &pport);
    if (lport == req.local_port && pport == req.remote_port && paddr == req.remote_addr) {
      found = int(fd);
      break;
    }
  }
  ::closedir(d);
  return found;
}

bool client_gone(int fd) {
  if (fd < 0) return false;
  char c;
  const ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0) return true;
  return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

class Server {
 public:
  explicit Server(Options o) : o_(std::move(o)) {
    parse_.max_image_bytes = o_.max_image_bytes;
    parse_.allowed_local_dir = o_.allowed_local_dir;
    parse_.max_rows = o_.parallel;
    parse_.max_new_tokens = o_.max_tokens;
    image_options_.max_pixels = o_.max_image_pixels;
  }

  int run() {
    const int http_threads = o_.http_threads;
    http_.new_task_queue = [http_threads] { return new httplib::ThreadPool(std::size_t(http_threads)); };
    http_.set_payload_max_length(std::size_t(o_.max_body));
    http_.set_keep_alive_max_count(100);
    http_.set_read_timeout(30, 0);
    http_.set_write_timeout(30, 0);
    routes();
    int port = o_.port;
    if (port == 0) {
      port = http_.bind_to_any_port(o_.host);
      if (port < 0) return fail("cannot bind " + o_.host);
    } else if (!http_.bind_to_port(o_.host, port)) {
      return fail("cannot bind " + o_.host + ":" + std::to_string(port));
    }
    std::fprintf(stderr, "%s: listening on http://%s:%d (loading %s)\n", kProg, o_.host.c_str(), port,
                 o_.model_dir.c_str());
    std::thread listener([this] { http_.listen_after_bind(); });

    int rc = 0;
    try {
      load();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s: error: cannot load %s: %s\n", kProg, o_.model_dir.c_str(), e.what());
      rc = 1;
    }
    if (rc == 0) {
      std::fprintf(stderr, "%s: ready: model %s (%s weights), %lld rows in flight, %lld in the queue\n", kProg,
                   o_.model_name.c_str(), ops::weight_format_name(model_->weight_format()),
                   static_cast<long long>(o_.parallel), static_cast<long long>(o_.max_queue));
      // Wait for SIGINT / SIGTERM (blocked in every thread by main()).
      sigset_t set;
      sigemptyset(&set);
      sigaddset(&set, SIGINT);
      sigaddset(&set, SIGTERM);
      int sig = 0;
      sigwait(&set, &sig);
      std::fprintf(stderr, "%s: %s, shutting down\n", kProg, sig == SIGINT ? "SIGINT" : "SIGTERM");
    }
    stopping_ = true;
    if (engine_) engine_->shutdown(/*finish_pending=*/false);
    http_.stop();
    listener.join();
    engine_.reset();
    return rc;
  }

 private:
  int fail(const std::string& m) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, m.c_str());
    return 1;
  }

  void load() {
    if (o_.threads > 0) set_num_threads(o_.threads);
    processor_ = std::make_unique<VisionLanguageProcessor>(VisionLanguageProcessor::from_pretrained(o_.model_dir));
    LoadOptions lo;
    if (!o_.weights.empty()) {
      ops::WeightFormat f;
      ops::parse_weight_format(o_.weights, &f);
      lo.weights = f;
    }
    model_ = std::make_unique<VisionLanguageModel>(
        VisionLanguageModel::from_pretrained(o_.model_dir, lo));
    defaults_ = model_->generation_config();
    EngineOptions eo;
    eo.max_rows = o_.parallel;
    eo.max_queue = o_.max_queue;
    eo.image_options = image_options_;
    eo.max_image_bytes = o_.max_image_bytes;
    engine_ = std::make_unique<BatchEngine>(*model_, *processor_, eo);
    parse_.prompt_optional = model_->is_blip2();  // BLIP-2 captions an image sent without text
    loaded_ = true;
  }

  bool authorized(const httplib::Request& req) const {
    if (o_.api_key.empty() || req.path == "/health") return true;
    const std::string want = "Bearer " + o_.api_key;
    const std::string got = req.get_header_value("Authorization");
    unsigned diff = unsigned(want.size() ^ got.size());
    for (std::size_t i = 0; i < want.size(); ++i) diff |= unsigned(want[i] ^ (i < got.size() ? got[i] : 0));
    return diff == 0;
  }
  static ApiError unauthorized() {
    return ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')", "invalid_api_key");
  }

  static void send_json(httplib::Response& res, int status, const json& body) {
    res.status = status;
    res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
  }
  static void send_error(httplib::Response& res, const ApiError& e) {
    send_json(res, e.status, error_json(e));
    if (e.status == 503) res.set_header("Retry-After", "1");
  }

  void routes() {
    http_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      t_log = RequestLog{};
      t_log.start = Clock::now();
      // Refusals that do not read the body close the connection (its unread body would otherwise
      // be taken for the next request).
      if (req.has_header("Content-Length")) {
        const std::string cl = req.get_header_value("Content-Length");
        char* end = nullptr;
        errno = 0;
        const unsigned long long n = std::strtoull(cl.c_str(), &end, 10);
        if (errno || *end || cl.empty() || n > o_.max_body) {
          send_error(res, ApiError(errno || *end || cl.empty() ? 400 : 413,
                                   errno || *end || cl.empty()
                                       ? "bad Content-Length"
                                       : "the request body is larger than the server's limit of " +
                                             std::to_string(o_.max_body) + " bytes",
                                   "request_too_large"));
          res.set_header("Connection", "close");
          return httplib::Server::HandlerResponse::Handled;
        }
      }
      // httplib would read a POST body without Content-Length or Transfer-Encoding until the client
      // closes; HTTP/1.1 says such a request has no body.
      if ((req.method == "POST" || req.method == "PUT" || req.method == "PATCH") && !req.has_header("Content-Length") &&
          !req.has_header("Transfer-Encoding")) {
        send_error(res, ApiError(411, "a request body needs a Content-Length (or chunked Transfer-Encoding)",
                                 "length_required"));
        return httplib::Server::HandlerResponse::Handled;
      }
      // Without a body the key is checked here; with one, once the body is read (a refusal that
      // leaves a body unread confuses clients that send it all before reading the answer).
      const bool has_body = req.has_header("Transfer-Encoding") ||
                            (req.has_header("Content-Length") && req.get_header_value("Content-Length") != "0");
      if (!has_body && !authorized(req)) {
        send_error(res, unauthorized());
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    // Statuses httplib sets itself (404, 400 for unparsable HTTP, 413, ...) get OpenAI's error shape.
    http_.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty() || res.content_provider_) return httplib::Server::HandlerResponse::Unhandled;
      std::string m;
      switch (res.status) {
        case 404: m = "unknown path " + req.path; break;
        case 413: m = "the request body is larger than the server's limit"; break;
        case 400: m = "bad request"; break;
        default: m = "HTTP status " + std::to_string(res.status);
      }
      send_json(res, res.status, error_json(m, error_type_for_status(res.status), std::to_string(res.status)));
      return httplib::Server::HandlerResponse::Handled;
    }));
    // Counted before the response is written (a client that reads /metrics right after its answer
    // sees it counted); logged after (with the streamed tokens and the time).
    http_.set_post_routing_handler(
        [this](const httplib::Request&, httplib::Response& res) { metrics_.count_request(res.status); });
    http_.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      const double ms = t_log.start.time_since_epoch().count() ? ms_since(t_log.start) : 0.0;
      std::string tokens;
      if (t_log.prompt_tokens >= 0)
        tokens = " prompt_tokens=" + std::to_string(t_log.prompt_tokens) +
                 " completion_tokens=" + std::to_string(t_log.completion_tokens);
      std::fprintf(stderr, "%s: %s %s %s %d%s %.1f ms%s%s\n", kProg, req.remote_addr.c_str(), req.method.c_str(),
                   req.path.c_str(), res.status, tokens.c_str(), ms, t_log.note.empty() ? "" : " ",
                   t_log.note.c_str());
    });
    http_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
      std::string m = "internal error";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        m = e.what();
      } catch (...) {
      }
      send_json(res, 500, error_json(m, "server_error", "internal_error"));
    });

    http_.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      if (loaded_) send_json(res, 200, {{"status", "ok"}});
      else {
        send_json(res, 503, {{"status", "loading"}});
        res.set_header("Retry-After", "1");
      }
    });
    auto models = [this](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200,
                {{"object", "list"},
                 {"data", json::array({{{"id", o_.model_name},
                                        {"object", "model"},
                                        {"created", created_},
                                        {"owned_by", "instructblip.cpp"}}})}});
    };
    http_.Get("/v1/models", models);
    http_.Get("/models", models);
    http_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.status = 200;
      const bool loaded = loaded_;  // engine_ is set before loaded_, and never changes while serving
      res.set_content(metrics_.render(loaded ? engine_->stats() : EngineStats{}, loaded),
                      "text/plain; version=0.0.4; charset=utf-8");
    });
    const char* chat = R"(/(v1/)?chat/completions)";
    http_.Post(chat, [this](const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader) {
      chat_completions(req, res, reader);
    });
    // Wrong methods on known paths: 405 with Allow.
    auto not_allowed = [this](const char* allow) {
      return [this, allow](const httplib::Request& req, httplib::Response& res) {
        if (!authorized(req)) return send_error(res, unauthorized());
        send_json(res, 405, error_json("method " + req.method + " is not allowed on " + req.path, "invalid_request_error",
                                       "method_not_allowed"));
        res.set_header("Allow", allow);
      };
    };
    http_.Get(chat, not_allowed("POST"));
    http_.Put(chat, not_allowed("POST"));
    http_.Delete(chat, not_allowed("POST"));
    for (const char* p : {"/health", "/v1/models", "/models", "/metrics"}) {
      http_.Post(p, not_allowed("GET"));
      http_.Put(p, not_allowed("GET"));
      http_.Delete(p, not_allowed("GET"));
    }
  }

  void chat_completions(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader) {
    // The body first (bounded also when chunked or compressed), so that every answer leaves the
    // connection clean.
    std::string body;
    bool too_large = false;
    const bool read_ok = reader([&](const char* data, std::size_t n) {
      if (body.size() + n > o_.max_body) {
        too_large = true;
        return false;
      }
      body.append(data, n);
      return true;
    });
    try {
      if (too_large)
        throw ApiError(413, "the request body is larger than the server's limit of " + std::to_string(o_.max_body) + " bytes",
                       "request_too_large");
      if (!read_ok) throw ApiError(400, "the request body could not be read", "bad_body");
      if (!authorized(req)) throw unauthorized();
      std::string ctype = req.get_header_value("Content-Type");
      ctype = ctype.substr(0, ctype.find(';'));
      while (!ctype.empty() && ctype.back() == ' ') ctype.pop_back();
      for (char& c : ctype) c = char(std::tolower(static_cast<unsigned char>(c)));
      if (ctype != "application/json")
        throw ApiError(415, "Content-Type must be application/json (got '" + req.get_header_value("Content-Type") + "')",
                       "unsupported_media_type", "", "invalid_request_error");
      if (!loaded_) throw ApiError(503, "the model is loading", "model_loading", "", "server_overloaded");
      if (stopping_) throw ApiError(503, "the server is shutting down", "shutting_down", "", "server_overloaded");
      ChatRequest cr = parse_chat_request(body, defaults_, parse_);
      body.clear();
      body.shrink_to_fit();
      // The image is decoded here, on the connection's thread, so an undecodable or oversized one
      // is a 400 also for a streamed request (whose status is sent before the first token).
      if (!cr.image_path.empty()) cr.image_bytes = read_file_limited(cr.image_path, o_.max_image_bytes);
      EngineRequest er;
      try {
        er.image = decode_image(cr.image_bytes, image_options_, "the image");
      } catch (const Error& e) {
        throw ApiError(400, std::string("the image cannot be used: ") + e.what(), "invalid_image", "messages");
      }
      cr.image_bytes.clear();
      cr.image_bytes.shrink_to_fit();
      er.prompt = cr.prompt;
      er.generation = cr.generation;
      er.stop = cr.stop;
      const std::string model = cr.model.empty() ? o_.model_name : cr.model;
      const std::string id = "chatcmpl-" + std::to_string(created_) + "-" + std::to_string(++next_id_);
      const std::int64_t created = std::int64_t(std::time(nullptr));
      if (cr.stream) stream(req, res, std::move(cr), std::move(er), id, created, model);
      else complete(req, res, cr, std::move(er), id, created, model);
    } catch (const ApiError& e) {
      t_log.note = e.code;
      send_error(res, e);
    }
  }

  BatchEngine::Handle submit(EngineRequest er, BatchEngine::TokenCallback cb) {
    try {
      return engine_->submit(std::move(er), std::move(cb));
    } catch (const EngineBusy& e) {
      throw ApiError(503, std::string("the server is busy: ") + e.what() + "; retry later", "overloaded", "",
                     "server_overloaded");
    } catch (const InvalidArgument& e) {
      throw ApiError(400, e.what(), "invalid_request");
    } catch (const IoError& e) {
      throw ApiError(503, e.what(), "shutting_down", "", "server_overloaded");
    }
  }

  Clock::time_point deadline() const {
    return o_.timeout > 0 ? Clock::now() + std::chrono::milliseconds(std::int64_t(o_.timeout * 1000))
                          : Clock::time_point::max();
  }

  void account(const ChatRequest& cr, const EngineResult& r) {
    const json u = usage_json(cr, r);
    t_log.prompt_tokens = r.prompt_tokens;
    t_log.completion_tokens = u["completion_tokens"].get<std::int64_t>();
    metrics_.add_tokens(r.prompt_tokens, t_log.completion_tokens);
    if (r.first_token_ms > 0) metrics_.observe_ttft(r.first_token_ms / 1000.0);
    const std::int64_t per_row = r.sequences.empty() ? 0 : r.completion_tokens / std::int64_t(r.sequences.size());
    if (per_row > 1 && r.total_ms > r.first_token_ms)
      metrics_.observe_token_latency((r.total_ms - r.first_token_ms) / 1000.0 / double(per_row - 1));
  }

  // An engine failure as an API error (the request's fault: 400; else 500).
  static ApiError engine_error(const EngineResult& r) {
    if (r.error_type == "invalid_request") return ApiError(400, r.error, "invalid_request");
    return ApiError(500, r.error, r.error_type.empty() ? "internal_error" : r.error_type);
  }

  void complete(const httplib::Request& req, httplib::Response& res, const ChatRequest& cr, EngineRequest er,
                const std::string& id, std::int64_t created, const std::string& model) {
    BatchEngine::Handle h = submit(std::move(er), {});
    const int fd = find_client_socket(req);
    const auto until = deadline();
    bool timed_out = false, gone = false;
    while (h.result.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready) {
      if (!timed_out && Clock::now() >= until) {
        timed_out = true;
        engine_->cancel(h.id);
      }
      if (!gone && (client_gone(fd) || stopping_)) {
        gone = true;
        engine_->cancel(h.id);
      }
    }
    const EngineResult r = h.result.get();
    if (gone) {
      t_log.note = "client_disconnected";
      send_json(res, 499, error_json("the client closed the connection", "invalid_request_error", "client_closed"));
      return;
    }
    if (!r.ok() && !(timed_out && r.error_type == "cancelled")) throw engine_error(r);
    if (timed_out) t_log.note = "timeout";
    account(cr, r);
    send_json(res, 200, completion_json(cr, r, id, created, model));
  }

  // Streaming: the engine's callback (model thread) queues SSE events; the chunked content
  // provider (connection thread) writes them, and cancels the generation when the client is gone.
  struct StreamState {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::string> events;
    bool finished = false;
  };

  void stream(const httplib::Request&, httplib::Response& res, ChatRequest cr, EngineRequest er, const std::string& id,
              std::int64_t created, const std::string& model) {
    auto st = std::make_shared<StreamState>();
    const std::int64_t n = cr.n;
    const bool copies = cr.copies;
    auto on_tokens = [st, id, created, model, n, copies](const EngineTokens& ev) {
      std::lock_guard<std::mutex> lock(st->mu);
      for (std::size_t k = 0; k < ev.rows.size(); ++k) {
        if (ev.text[k].empty()) continue;
        const json delta = {{"content", ev.text[k]}};
        if (copies)
          for (std::int64_t c = 0; c < n; ++c) st->events.push_back(sse_data(chunk_json(id, created, model, c, delta)));
        else
          st->events.push_back(sse_data(chunk_json(id, created, model, ev.rows[k], delta)));
      }
      if (ev.final) st->finished = true;
      st->cv.notify_all();
    };
    BatchEngine::Handle h = submit(std::move(er), on_tokens);
    struct Progress {
      bool started = false, timed_out = false, cancelled = false;
      Clock::time_point until;
    };
    auto p = std::make_shared<Progress>();
    p->until = deadline();
    auto crp = std::make_shared<ChatRequest>(std::move(cr));
    res.status = 200;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, st, h, p, crp, id, created, model](std::size_t, httplib::DataSink& sink) {
          auto write = [&](const std::string& s) { return sink.write(s.data(), s.size()); };
          auto give_up = [&] {
            if (!p->cancelled) engine_->cancel(h.id);
            p->cancelled = true;
            t_log.note = "client_disconnected";
            return false;
          };
          if (!p->started) {
            p->started = true;
            for (std::int64_t c = 0; c < crp->n; ++c)
              if (!write(sse_data(chunk_json(id, created, model, c, {{"role", "assistant"}, {"content", ""}}))))
                return give_up();
          }
          std::deque<std::string> batch;
          {
            std::unique_lock<std::mutex> lock(st->mu);
            st->cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return !st->events.empty() || st->finished; });
            batch.swap(st->events);
          }
          for (const std::string& e : batch)
            if (!write(e)) return give_up();
          if (h.result.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
            {
              std::lock_guard<std::mutex> lock(st->mu);
              batch.clear();
              batch.swap(st->events);
            }
            for (const std::string& e : batch)
              if (!write(e)) return give_up();
            const EngineResult r = h.result.get();
            if (!r.ok() && !(p->timed_out && r.error_type == "cancelled")) {
              const ApiError e = engine_error(r);
              t_log.note = e.code;
              write(sse_data(error_json(e)));
            } else {
              if (p->timed_out) t_log.note = "timeout";
              account(*crp, r);
              for (std::int64_t c = 0; c < crp->n; ++c)
                if (!write(sse_data(chunk_json(id, created, model, c, json::object(),
                                               finish_reason_of(r, crp->copies ? 0 : std::size_t(c))))))
                  return give_up();
              if (crp->include_usage) {
                json u = chunk_json(id, created, model, 0, json::object());
                u["choices"] = json::array();
                u["usage"] = usage_json(*crp, r);
                u["timings"] = timings_json(r);
                if (!write(sse_data(u))) return give_up();
              }
            }
            if (!write(sse_done())) return give_up();
            sink.done();
            return true;
          }
          if (!p->timed_out && Clock::now() >= p->until) {
            p->timed_out = true;
            engine_->cancel(h.id);
          }
          if (!sink.is_writable() || stopping_) return give_up();
          return true;
        },
        [this, h, p](bool success) {
          // Ended early (client gone, server stopping): free the request's rows.
          if (!success && !p->cancelled) engine_->cancel(h.id);
        });
  }

  Options o_;
  ParseOptions parse_;
  ImageLoadOptions image_options_;
  httplib::Server http_;
  std::atomic<bool> loaded_{false}, stopping_{false};
  std::unique_ptr<VisionLanguageProcessor> processor_;
  std::unique_ptr<VisionLanguageModel> model_;
  std::unique_ptr<BatchEngine> engine_;
  GenerationConfig defaults_;
  Metrics metrics_;
  std::atomic<std::uint64_t> next_id_{0};
  const std::int64_t created_ = std::int64_t(std::time(nullptr));
};

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse_args(argc, argv);
  // SIGINT / SIGTERM are taken by sigwait() in the main thread; blocked before any thread starts.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  try {
    Server server(o);
    return server.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
    return 1;
  }
}
