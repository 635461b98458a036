// instructblip-server under load (label "server"): the real binary on a free loopback port with the
// trained demo model; 16 client threads x 4 requests mixing normal, streamed, cancelled-mid-stream
// and hostile requests. Every good answer equals the same request's answer when it ran alone,
// every hostile request gets its 4xx, no row is leaked, /health still answers, and the server's
// RSS after the round stays within a margin of its RSS after a warm-up round.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "http_api.hpp"
// After the library headers: httplib.h brings <resolv.h>, whose `_res` macro breaks Eigen.
#include <httplib.h>

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

const std::string kData = IB_TEST_DATA_DIR;
const std::string kImages = kData + "/shapes-demo/images";

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAsan = true;
#else
constexpr bool kAsan = false;
#endif
#else
constexpr bool kAsan = false;
#endif

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string base64(const std::string& in) {
  static const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const unsigned n = (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8 | (unsigned char)in[i + 2];
    out += {a[n >> 18], a[(n >> 12) & 63], a[(n >> 6) & 63], a[n & 63]};
  }
  if (i + 1 == in.size()) {
    const unsigned n = (unsigned char)in[i] << 16;
    out += {a[n >> 18], a[(n >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    const unsigned n = (unsigned char)in[i] << 16 | (unsigned char)in[i + 1] << 8;
    out += {a[n >> 18], a[(n >> 12) & 63], a[(n >> 6) & 63], '='};
  }
  return out;
}

std::uint32_t crc32(const std::string& s) {
  std::uint32_t c = 0xffffffffu;
  for (unsigned char b : s) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
  }
  return c ^ 0xffffffffu;
}

// A PNG signature and IHDR of a 20000 x 20000 RGB image, and no pixel data.
std::string huge_png_header() {
  auto be32 = [](std::uint32_t v) {
    return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
  };
  const std::string ihdr = "IHDR" + be32(20000) + be32(20000) + std::string{8, 2, 0, 0, 0};
  return std::string("\x89PNG\r\n\x1a\n", 8) + be32(13) + ihdr + be32(crc32(ihdr));
}

json chat_body(const std::string& url, const std::string& prompt, bool stream, int max_tokens) {
  json j = {{"model", "shapes"},
            {"messages", json::array({{{"role", "user"},
                                       {"content", json::array({{{"type", "text"}, {"text", prompt}},
                                                                {{"type", "image_url"}, {"image_url", {{"url", url}}}}})}}})},
            {"temperature", 0}};
  if (max_tokens > 0) j["max_tokens"] = max_tokens;
  if (stream) j["stream"] = true;
  return j;
}

// ---- a minimal HTTP/1.1 client on a raw socket (for hostile requests and cut-off streams) ----

int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(std::uint16_t(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{20, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool send_all(int fd, const std::string& s) {
  std::size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += std::size_t(n);
  }
  return true;
}

struct RawResponse {
  int status = 0;
  std::string headers, body;  // body de-chunked
};

// Reads one response (Content-Length or chunked). `on_body` sees the body as it grows; returning
// false stops reading (the caller then closes the connection mid-response).
RawResponse read_response(int fd, const std::function<bool(const std::string&)>& on_body = {}) {
  RawResponse r;
  std::string buf;
  char tmp[4096];
  auto fill = [&]() {
    const ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) return false;
    buf.append(tmp, std::size_t(n));
    return true;
  };
  std::size_t he;
  while ((he = buf.find("\r\n\r\n")) == std::string::npos)
    if (!fill()) return r;
  r.headers = buf.substr(0, he);
  buf.erase(0, he + 4);
  std::sscanf(r.headers.c_str(), "HTTP/1.1 %d", &r.status);
  std::string lower = r.headers;
  for (char& c : lower) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (lower.find("transfer-encoding: chunked") != std::string::npos) {
    for (;;) {
      std::size_t le;
      while ((le = buf.find("\r\n")) == std::string::npos)
        if (!fill()) return r;
      const std::size_t size = std::strtoul(buf.substr(0, le).c_str(), nullptr, 16);
      while (buf.size() < le + 2 + size + 2)
        if (!fill()) return r;
      r.body.append(buf, le + 2, size);
      buf.erase(0, le + 2 + size + 2);
      if (size == 0) return r;
      if (on_body && !on_body(r.body)) return r;
    }
  }
  const auto cl = lower.find("content-length: ");
  const std::size_t len = cl == std::string::npos ? 0 : std::strtoul(lower.c_str() + cl + 16, nullptr, 10);
  while (buf.size() < len)
    if (!fill()) break;
  r.body = buf.substr(0, len);
  return r;
}

RawResponse raw_request(int port, const std::string& request) {
  const int fd = connect_to(port);
  if (fd < 0) return {};
  RawResponse r;
  if (send_all(fd, request)) r = read_response(fd);
  ::close(fd);
  return r;
}

std::string post(const std::string& body, const std::string& ctype = "application/json") {
  return "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + ctype +
         "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

// The content of a streamed answer: the concatenated deltas of choice 0; `done` when [DONE] came.
std::string sse_text(const std::string& body, bool* done, std::string* finish) {
  std::string text;
  *done = false;
  std::size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    const std::size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) break;
    const std::string payload = body.substr(pos + 6, end - pos - 6);
    pos = end + 2;
    if (payload == "[DONE]") {
      *done = true;
      continue;
    }
    const json j = json::parse(payload);
    for (const auto& c : j["choices"]) {
      if (c["index"] != 0) continue;
      if (c["delta"].contains("content")) text += c["delta"]["content"].get<std::string>();
      if (!c["finish_reason"].is_null()) *finish = c["finish_reason"];
    }
  }
  return text;
}

// ---- the server process ---------------------------------------------------------------------

class ServerProcess {
 public:
  explicit ServerProcess(std::vector<std::string> args) {
    // A log of its own per server (the port is read from it), empty before the server starts.
    static int count = 0;
    log_ = std::string(IB_TEST_TMP_DIR) + "/server_load_" + std::to_string(::getpid()) + "_" + std::to_string(++count) +
           ".log";
    std::ofstream(log_, std::ios::trunc).flush();
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log_.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
      ::dup2(fd, 2);
      ::dup2(fd, 1);
      if (kAsan) {
        // The quarantine of freed memory would otherwise count as growth in the RSS check.
        const char* old = std::getenv("ASAN_OPTIONS");
        const std::string v = std::string(old ? old : "") + (old && *old ? ":" : "") + "quarantine_size_mb=8";
        ::setenv("ASAN_OPTIONS", v.c_str(), 1);
      }
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(IB_SERVER_PATH));
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(IB_SERVER_PATH, argv.data());
      std::_Exit(127);
    }
  }
  ~ServerProcess() { stop(); }

  // The port the server printed ("listening on http://127.0.0.1:PORT"), waiting up to `seconds`.
  int port(double seconds) {
    const auto until = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < until) {
      const std::string log = read_file(log_);
      const auto p = log.find("listening on http://127.0.0.1:");
      if (p != std::string::npos && log.find(" (loading", p) != std::string::npos)
        return std::atoi(log.c_str() + p + std::strlen("listening on http://127.0.0.1:"));
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

  long rss_kib() const {
    std::ifstream f("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(f, line))
      if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
    return -1;
  }

  // SIGTERM, then the exit status (SIGKILL after 20 s).
  int stop() {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    int status = 0;
    for (int i = 0; i < 2000; ++i) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return status;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return -1;
  }
  std::string log() const { return read_file(log_); }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

// /health answers 200 within two minutes (503 while the model loads).
bool healthy(httplib::Client& cli) {
  const auto until = Clock::now() + std::chrono::seconds(120);
  while (Clock::now() < until) {
    auto r = cli.Get("/health");
    if (r && r->status == 200) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

struct Good {
  std::string url, prompt;
  int max_tokens;
};

}  // namespace

TEST(ServerLoad, SixteenClientsMixingGoodStreamedCancelledAndHostileRequests) {
  const auto t_start = Clock::now();
  ServerProcess server({"--model", kData + "/shapes-demo/model", "--port", "0", "--parallel", "8", "--max-queue",
                        "256", "--threads", "2", "--allowed-local-dir", kImages, "--max-body", "4194304"});
  const int port = server.port(60);
  ASSERT_GT(port, 0) << server.log();
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(120, 0);
  {
    const auto until = Clock::now() + std::chrono::seconds(120);
    int status = 0;
    while (Clock::now() < until) {
      auto r = cli.Get("/health");
      status = r ? r->status : 0;
      if (status == 200) break;
      ASSERT_TRUE(status == 503 || status == 0) << status;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ASSERT_EQ(status, 200) << server.log();
  }

  // The good requests: 16 images (data: URIs, a few as file:// URLs) x 2 prompts, two lengths.
  std::vector<std::string> files;
  for (const char* f : {"black-circle-on-green.png", "black-triangle-on-blue.png", "blue-circle-on-white.png",
                        "blue-triangle-on-orange.jpg", "green-square-on-yellow.png", "green-star-on-purple.png",
                        "orange-circle-on-green.png", "orange-triangle-on-red.jpg", "purple-square-on-white.png",
                        "purple-star-on-black.png", "red-circle-on-green.png", "red-triangle-on-orange.jpg",
                        "white-square-on-yellow.jpg", "white-star-on-black.png", "yellow-square-on-red.jpg",
                        "yellow-star-on-purple.png"})
    files.push_back(f);
  std::vector<Good> goods;
  for (std::size_t i = 0; i < files.size(); ++i) {
    const std::string path = kImages + "/" + files[i];
    const std::string mime = files[i].substr(files[i].size() - 3) == "jpg" ? "image/jpeg" : "image/png";
    const std::string url = i % 4 == 3 ? "file://" + path : "data:" + mime + ";base64," + base64(read_file(path));
    goods.push_back({url, "Describe the image.", i % 2 ? 6 : 0});
    goods.push_back({url, "What shape is in the image?", 0});
  }
  // Each alone first: the reference answers.
  std::vector<std::string> alone(goods.size());
  for (std::size_t g = 0; g < goods.size(); ++g) {
    auto r = cli.Post("/v1/chat/completions", chat_body(goods[g].url, goods[g].prompt, false, goods[g].max_tokens).dump(),
                      "application/json");
    ASSERT_TRUE(r) << "request " << g;
    ASSERT_EQ(r->status, 200) << r->body;
    alone[g] = json::parse(r->body)["choices"][0]["message"]["content"];
    ASSERT_FALSE(alone[g].empty());
  }

  // The hostile requests and the status each must get.
  std::mt19937 rng(7);
  std::string random_bytes(3000, '\0');
  for (char& c : random_bytes) c = char(rng());
  const std::string ok_image = goods[0].url;
  struct Hostile {
    std::string name, request;
    int status;
  };
  const std::vector<Hostile> hostile = {
      {"truncated JSON", post(chat_body(ok_image, "x", false, 0).dump().substr(0, 120)), 400},
      {"2 GiB Content-Length",
       "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
       "Content-Length: 2147483648\r\n\r\n{\"messages\": [",
       413},
      {"wrong content type", post(chat_body(ok_image, "x", false, 0).dump(), "text/plain"), 415},
      {"form content type", post("a=b", "application/x-www-form-urlencoded"), 415},
      {"random bytes as image", post(chat_body("data:image/png;base64," + base64(random_bytes), "x", false, 0).dump()), 400},
      {"20000x20000 PNG header",
       post(chat_body("data:image/png;base64," + base64(huge_png_header()), "x", false, 0).dump()), 400},
      {"file:// traversal", post(chat_body("file://" + kImages + "/../model/config.json", "x", false, 0).dump()), 400},
      {"remote URL", post(chat_body("https://example.com/a.png", "x", false, 0).dump()), 400},
  };

  enum Kind { Normal, Streamed, Cancelled, HostileKind };
  auto kind_of = [](int k) { return k % 8 < 2 ? Normal : k % 8 == 2 ? Streamed : k % 8 == 3 ? Cancelled : HostileKind; };
  std::mutex mu;
  std::vector<std::string> failures;
  std::atomic<int> good_checked{0}, hostile_checked{0}, cancelled_sent{0};
  auto fail = [&](const std::string& m) {
    std::lock_guard<std::mutex> lock(mu);
    failures.push_back(m);
  };

  auto round = [&](int round_id) {
    std::vector<std::thread> threads;
    for (int t = 0; t < 16; ++t)
      threads.emplace_back([&, t] {
        httplib::Client c("127.0.0.1", port);
        c.set_read_timeout(120, 0);
        for (int j = 0; j < 4; ++j) {
          const int k = t * 4 + j;
          const std::size_t g = std::size_t(k * 7 + round_id) % goods.size();
          const std::string where = "round " + std::to_string(round_id) + " request " + std::to_string(k) + ": ";
          switch (kind_of(k + round_id)) {
            case Normal: {
              auto r = c.Post("/v1/chat/completions",
                              chat_body(goods[g].url, goods[g].prompt, false, goods[g].max_tokens).dump(), "application/json");
              if (!r) {
                fail(where + "no response");
              } else if (r->status != 200) {
                fail(where + "status " + std::to_string(r->status) + " " + r->body);
              } else {
                const json j = json::parse(r->body);
                if (j["choices"][0]["message"]["content"] != alone[g])
                  fail(where + "answer " + j["choices"][0]["message"]["content"].dump() + " != alone " + alone[g]);
                if (j["model"] != "shapes") fail(where + "model not echoed");
                ++good_checked;
              }
              break;
            }
            case Streamed: {
              const RawResponse r =
                  raw_request(port, post(chat_body(goods[g].url, goods[g].prompt, true, goods[g].max_tokens).dump()));
              bool done = false;
              std::string finish;
              const std::string text = r.status == 200 ? sse_text(r.body, &done, &finish) : "";
              if (r.status != 200) fail(where + "streamed status " + std::to_string(r.status));
              else if (!done) fail(where + "stream without [DONE]");
              else if (text != alone[g]) fail(where + "streamed " + text + " != alone " + alone[g]);
              else if (finish != "stop" && finish != "length") fail(where + "finish_reason " + finish);
              else ++good_checked;
              break;
            }
            case Cancelled: {
              // Ask for a long answer, read the first content delta, hang up.
              const int fd = connect_to(port);
              if (fd < 0 || !send_all(fd, post(chat_body(goods[g].url, goods[g].prompt, true, 200).dump()))) {
                fail(where + "cannot send");
              } else {
                // Stop at the first non-empty content delta.
                const RawResponse r = read_response(fd, [](const std::string& body) {
                  const std::string key = "\"delta\":{\"content\":\"";
                  for (std::size_t p = body.find(key); p != std::string::npos; p = body.find(key, p + 1))
                    if (p + key.size() < body.size() && body[p + key.size()] != '"') return false;
                  return true;
                });
                if (r.status != 200) fail(where + "cancelled stream status " + std::to_string(r.status));
                ++cancelled_sent;
              }
              if (fd >= 0) ::close(fd);
              break;
            }
            case HostileKind: {
              const Hostile& h = hostile[std::size_t(k + round_id) % hostile.size()];
              const RawResponse r = raw_request(port, h.request);
              if (r.status != h.status) {
                fail(where + h.name + ": status " + std::to_string(r.status) + " (want " + std::to_string(h.status) + ") " +
                     r.body.substr(0, 300));
              } else {
                const json e = json::parse(r.body, nullptr, false);
                if (e.is_discarded() || !e.contains("error") || !e["error"].contains("message") ||
                    !e["error"].contains("type") || !e["error"].contains("code"))
                  fail(where + h.name + ": not an OpenAI error object: " + r.body.substr(0, 300));
                else
                  ++hostile_checked;
              }
              break;
            }
          }
        }
      });
    for (auto& th : threads) th.join();
  };

  auto idle = [&](std::string* last) {
    const auto until = Clock::now() + std::chrono::seconds(30);
    while (Clock::now() < until) {
      auto r = cli.Get("/metrics");
      if (r && r->status == 200) {
        *last = r->body;
        if (r->body.find("\ninstructblip_active_rows 0\n") != std::string::npos &&
            r->body.find("\ninstructblip_queue_depth 0\n") != std::string::npos &&
            r->body.find("\ninstructblip_requests_running 0\n") != std::string::npos)
          return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  };

  round(0);  // warm-up: allocator pools, thread stacks, caches
  std::string metrics;
  ASSERT_TRUE(idle(&metrics)) << "rows still in use after the warm-up round:\n" << metrics;
  const long rss_before = server.rss_kib();
  round(1);
  ASSERT_TRUE(idle(&metrics)) << "rows still in use after the round (a leaked row?):\n" << metrics;
  const long rss_after = server.rss_kib();

  for (const auto& f : failures) ADD_FAILURE() << f;
  EXPECT_TRUE(failures.empty()) << server.log().substr(0, 20000);
  EXPECT_EQ(good_checked.load(), 2 * 16 * 4 * 3 / 8);  // 3 good kinds of 8, 2 rounds
  EXPECT_EQ(hostile_checked.load(), 2 * 16 * 4 * 4 / 8);
  EXPECT_EQ(cancelled_sent.load(), 2 * 16 * 4 / 8);
  // The hang-ups were seen and their generations cut short (not run to 200 tokens).
  EXPECT_NE(metrics.find("instructblip_requests_total{status=\"200\"}"), std::string::npos);

  auto h = cli.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  ASSERT_GT(rss_before, 0);
  const long margin_kib = (kAsan ? 64 : 25) * 1024;
  EXPECT_LE(rss_after, rss_before + margin_kib) << "RSS " << rss_before << " KiB -> " << rss_after << " KiB";
  const double seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
  std::printf("server load: 2 rounds of 64 requests in %.1f s; RSS %ld -> %ld KiB\n", seconds, rss_before, rss_after);
  EXPECT_LT(seconds, kAsan ? 600.0 : 60.0);
  EXPECT_EQ(server.stop(), 0) << "the server must exit cleanly on SIGTERM";
}

// Settings that change how the server answers: the API key, the queue limit, the timeout.
TEST(ServerLoad, ApiKeyQueueLimitAndTimeout) {
  ServerProcess server({"--model", kData + "/shapes-demo/model", "--port", "0", "--parallel", "1", "--max-queue", "1",
                        "--threads", "1", "--api-key", "sekret", "--timeout", "1", "--max-tokens", "60000"});
  const int port = server.port(60);
  ASSERT_GT(port, 0) << server.log();
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(120, 0);
  ASSERT_TRUE(healthy(cli)) << server.log();  // /health needs no key
  const std::string url = "data:image/png;base64," + base64(read_file(kImages + "/red-circle-on-green.png"));
  const std::string body = chat_body(url, "Describe the image.", false, 0).dump();

  auto r = cli.Post("/v1/chat/completions", body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  EXPECT_EQ(json::parse(r->body)["error"]["type"], "authentication_error");
  r = cli.Get("/v1/models", {{"Authorization", "Bearer wrong"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 401);
  r = cli.Get("/v1/models", {{"Authorization", "Bearer sekret"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["data"][0]["id"], "model");
  r = cli.Get("/no/such/path", {{"Authorization", "Bearer sekret"}});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_TRUE(json::parse(r->body).contains("error"));

  // A long generation fills the queue of one: the next request gets 503 + Retry-After; the
  // long one ends at the 1 s timeout with finish_reason "length".
  const httplib::Headers auth = {{"Authorization", "Bearer sekret"}};
  const std::string long_body = chat_body(url, "Describe the image.", false, 60000).dump();
  int long_status = 0;
  std::string long_response;
  std::thread slow([&] {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120, 0);
    json j = json::parse(long_body);
    j["min_new_tokens"] = 60000;  // no EOS before the timeout
    auto lr = c.Post("/v1/chat/completions", auth, j.dump(), "application/json");
    if (lr) {
      long_status = lr->status;
      long_response = lr->body;
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  r = cli.Post("/v1/chat/completions", auth, body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503) << r->body;
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  slow.join();
  ASSERT_EQ(long_status, 200) << long_response;
  const json lj = json::parse(long_response);
  EXPECT_EQ(lj["choices"][0]["finish_reason"], "length");
  EXPECT_LT(lj["usage"]["completion_tokens"].get<int>(), 60000);
  // Afterwards the queue is free again.
  r = cli.Post("/v1/chat/completions", auth, body, "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  EXPECT_EQ(server.stop(), 0);
}

// A client that hangs up, streamed or not, cancels its generation: its row is free again at once.
TEST(ServerLoad, HangingUpCancelsTheGeneration) {
  ServerProcess server({"--model", kData + "/shapes-demo/model", "--port", "0", "--parallel", "1", "--threads", "1",
                        "--max-tokens", "60000"});
  const int port = server.port(60);
  ASSERT_GT(port, 0) << server.log();
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(120, 0);
  ASSERT_TRUE(healthy(cli)) << server.log();
  auto active_rows = [&] {
    auto r = cli.Get("/metrics");
    if (!r) return -1;
    const auto p = r->body.find("\ninstructblip_active_rows ");
    return p == std::string::npos ? -1 : std::atoi(r->body.c_str() + p + 26);
  };
  const std::string url = "data:image/png;base64," + base64(read_file(kImages + "/red-circle-on-green.png"));
  for (bool stream : {false, true}) {
    SCOPED_TRACE(stream ? "streamed" : "not streamed");
    json j = chat_body(url, "Describe the image.", stream, 60000);
    j["min_new_tokens"] = 60000;  // runs for seconds unless cancelled
    const int fd = connect_to(port);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_all(fd, post(j.dump())));
    int rows = 0;
    for (int i = 0; i < 200 && rows != 1; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      rows = active_rows();
    }
    ASSERT_EQ(rows, 1) << "the generation never started";
    ::close(fd);
    const auto hung_up = Clock::now();
    while (active_rows() != 0 && Clock::now() - hung_up < std::chrono::seconds(kAsan ? 60 : 10))
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_EQ(active_rows(), 0);
  }
  const std::string log = server.log();
  EXPECT_NE(log.find("POST /v1/chat/completions 499"), std::string::npos) << log;  // not streamed: 499 logged
  std::size_t hangups = 0;
  for (std::size_t p = log.find("client_disconnected"); p != std::string::npos; p = log.find("client_disconnected", p + 1))
    ++hangups;
  EXPECT_EQ(hangups, 2u) << log;
  EXPECT_EQ(server.stop(), 0);
}

// While the model loads the server already answers: /health 503 {"status":"loading"}, requests 503 with
// Retry-After. Then the statuses of the HTTP layer: 405 with Allow, 413 for a declared or a chunked body
// over --max-body, 404; and /metrics counts them. (The load is held back by a FIFO in place of
// preprocessor_config.json, read when the processor loads.)
TEST(ServerLoad, AnswersWhileLoadingAndHttpStatuses) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(IB_TEST_TMP_DIR) / ("server_loading_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path src = kData + "/shapes-demo/model";
  for (const auto& e : fs::directory_iterator(src))
    if (e.path().filename() != "preprocessor_config.json") fs::create_symlink(e.path(), dir / e.path().filename());
  const std::string fifo = (dir / "preprocessor_config.json").string();
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);

  ServerProcess server({"--model", dir.string(), "--port", "0", "--threads", "1", "--max-body", "4096"});
  const int port = server.port(60);
  ASSERT_GT(port, 0) << server.log();
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(60, 0);
  auto h = cli.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 503);
  EXPECT_EQ(json::parse(h->body), json({{"status", "loading"}}));
  auto r = cli.Post("/v1/chat/completions", chat_body("data:image/png;base64,aGVsbG8=", "x", false, 0).dump(),
                    "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_EQ(r->get_header_value("Retry-After"), "1");
  EXPECT_TRUE(json::parse(r->body).contains("error"));

  {  // let the load go on
    std::ofstream(fifo) << read_file((src / "preprocessor_config.json").string());
  }
  ASSERT_TRUE(healthy(cli)) << server.log();

  r = cli.Get("/v1/chat/completions");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->get_header_value("Allow"), "POST");
  r = cli.Post("/health", "{}", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->get_header_value("Allow"), "GET");
  r = cli.Get("/v2/unknown");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(json::parse(r->body)["error"]["type"], "not_found_error");

  const std::string big(5000, 'x');
  RawResponse raw = raw_request(port, post(big));
  EXPECT_EQ(raw.status, 413) << raw.body;
  EXPECT_TRUE(json::parse(raw.body, nullptr, false).contains("error")) << raw.body;
  // Chunked: no Content-Length to refuse it by; the server stops reading at the limit.
  std::string chunked =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
      "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
  for (int i = 0; i < 5; ++i) chunked += "3e8\r\n" + std::string(1000, ' ') + "\r\n";
  chunked += "0\r\n\r\n";
  raw = raw_request(port, chunked);
  EXPECT_EQ(raw.status, 413) << raw.body;

  // No Content-Length: 411 at once (not a wait for the client to close).
  raw = raw_request(port, "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\r\n");
  EXPECT_EQ(raw.status, 411) << raw.body;

  auto m = cli.Get("/metrics");
  ASSERT_TRUE(m);
  auto count = [&](int status) {
    const std::string key = "\ninstructblip_requests_total{status=\"" + std::to_string(status) + "\"} ";
    const auto p = m->body.find(key);
    return p == std::string::npos ? 0 : std::atoi(m->body.c_str() + p + key.size());
  };
  EXPECT_GE(count(503), 2) << m->body;  // and the /health polls that came while loading
  EXPECT_EQ(count(405), 2) << m->body;
  EXPECT_EQ(count(413), 2) << m->body;
  EXPECT_EQ(count(404), 1) << m->body;
  EXPECT_EQ(count(411), 1) << m->body;
  EXPECT_EQ(server.stop(), 0);
  fs::remove_all(dir);
}

// A BLIP-2 checkpoint served as it is: an image without text is captioned (the reference's greedy
// caption of input c), and with text the prompt prefixes the answer as transformers feeds it.
TEST(ServerLoad, Blip2CaptionsAnImageSentWithoutText) {
  const std::string model = kData + "/blip2-opt-tiny/model";
  ServerProcess server({"--model", model, "--port", "0", "--parallel", "2", "--threads", "1"});
  const int port = server.port(60);
  ASSERT_GT(port, 0) << server.log();
  httplib::Client cli("127.0.0.1", port);
  cli.set_read_timeout(120, 0);
  ASSERT_TRUE(healthy(cli)) << server.log();
  const std::string url = "data:image/jpeg;base64," + base64(read_file(kData + "/images/Confusing-Pictures.jpg"));
  json j = {{"model", "blip2"},
            {"messages", json::array({{{"role", "user"},
                                       {"content", json::array({{{"type", "image_url"}, {"image_url", {{"url", url}}}}})}}})},
            {"temperature", 0},
            {"max_tokens", 20}};
  auto r = cli.Post("/v1/chat/completions", j.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json reply = json::parse(r->body);
  const json ref = json::parse(read_file(kData + "/blip2-opt-tiny/reference.json"));
  EXPECT_EQ(reply["choices"][0]["message"]["content"], ref["generation"]["greedy"]["c"]["text"][0]);
  EXPECT_EQ(reply["usage"]["completion_tokens"], 20);
  EXPECT_EQ(reply["usage"]["prompt_tokens"], 8 + 1);  // 8 query tokens + the bos an empty prompt encodes to
  EXPECT_EQ(server.stop(), 0);
}
