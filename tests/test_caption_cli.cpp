// instructblip-caption as a user runs it, on the bundled tiny T5 checkpoint: every item recorded
// once with the text instructblip-generate gives for it, CSV output, resume after a torn line, a
// SIGKILL / SIGTERM mid-run, the usage and runtime errors with their exit statuses, tar shards,
// sharding and merge. Every process started here is waited for with a bound and killed on timeout.
#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "inputs.hpp"
#include "records.hpp"
#include "reference_util.hpp"

namespace fs = std::filesystem;
using namespace instructblip;
using Clock = std::chrono::steady_clock;

namespace {

const char* const kPrompt = "What is unusual about this image?";  // tests/data/t5-tiny/reference.json, input a

std::string model_dir() { return ibtest::data_dir() + "/t5-tiny/model"; }

std::string fresh_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string d = ibtest::tmp_dir() + "/caption_" + info->name() + "_" + std::to_string(::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// A started program: stdout / stderr go to files.
struct Proc {
  pid_t pid = -1;
  std::string out_file, err_file;
};

struct Result {
  int status = -1;  // exit status; -1 when ended by a signal (then `signal` says which) or timed out
  int signal = 0;
  bool timed_out = false;
  std::string out, err;
};

Proc start(const std::string& program, const std::vector<std::string>& args, const std::string& dir) {
  static int n = 0;
  Proc p;
  p.out_file = dir + "/proc" + std::to_string(++n) + ".out";
  p.err_file = dir + "/proc" + std::to_string(n) + ".err";
  std::vector<std::string> all = {program};
  all.insert(all.end(), args.begin(), args.end());
  p.pid = ::fork();
  if (p.pid == 0) {
    const int in = ::open("/dev/null", O_RDONLY);
    const int out = ::open(p.out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int err = ::open(p.err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(in, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(program.c_str(), argv.data());
    ::_exit(127);
  }
  return p;
}

// Waits at most `timeout` for the program; kills it (by its PID) when it is still running then.
Result wait(const Proc& p, std::chrono::seconds timeout = std::chrono::seconds(300)) {
  Result r;
  const auto t0 = Clock::now();
  int st = 0;
  for (;;) {
    const pid_t w = ::waitpid(p.pid, &st, WNOHANG);
    if (w == p.pid) break;
    if (w < 0) return r;
    if (Clock::now() - t0 > timeout) {
      ::kill(p.pid, SIGKILL);
      ::waitpid(p.pid, &st, 0);
      r.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (WIFEXITED(st)) r.status = WEXITSTATUS(st);
  if (WIFSIGNALED(st)) r.signal = WTERMSIG(st);
  r.out = slurp(p.out_file);
  r.err = slurp(p.err_file);
  return r;
}

Result run(const std::string& program, const std::vector<std::string>& args, const std::string& dir) {
  return wait(start(program, args, dir));
}

Result caption(const std::vector<std::string>& args, const std::string& dir) { return run(IB_CAPTION_PATH, args, dir); }

std::vector<std::string> base_args() {
  return {"--model", model_dir(), "--prompt", kPrompt, "--max-new-tokens", "8", "--quiet"};
}

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& more) {
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

// id -> record
std::map<std::string, nlohmann::ordered_json> by_id(const std::vector<nlohmann::ordered_json>& records) {
  std::map<std::string, nlohmann::ordered_json> m;
  for (const auto& r : records) m[r["id"].get<std::string>()] = r;
  return m;
}

std::vector<nlohmann::ordered_json> jsonl_records(const std::string& text) {
  std::vector<nlohmann::ordered_json> v;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) break;
    v.push_back(nlohmann::ordered_json::parse(text.substr(pos, nl - pos)));
    pos = nl + 1;
  }
  return v;
}

// A directory of test images in several formats, and one corrupt file.
const std::vector<std::string> kImages = {"Confusing-Pictures.jpg", "merlion.png", "pillow/jpeg_progressive.jpg",
                                          "pillow/bmp_24bit.bmp", "pillow/gif_palette.gif", "pillow/pnm_p6.ppm"};

std::string image_dir(const std::string& dir) {
  const std::string d = dir + "/images";
  fs::create_directories(d + "/sub");
  for (std::size_t i = 0; i < kImages.size(); ++i) {
    const std::string name = fs::path(kImages[i]).filename().string();
    fs::copy_file(ibtest::data_dir() + "/images/" + kImages[i], (i % 2 ? d + "/sub/" : d + "/") + name);
  }
  std::ofstream(d + "/corrupt.jpg", std::ios::binary) << "\xff\xd8\xff\xe0 not really a jpeg";
  return d;
}

std::string many_images(const std::string& dir, int n) {
  const std::string d = dir + "/many";
  fs::create_directories(d);
  for (int i = 0; i < n; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "img%02d.jpg", i);
    fs::copy_file(ibtest::data_dir() + "/images/Confusing-Pictures.jpg", d + "/" + name);
  }
  return d;
}

// instructblip-generate's first text for one image and the same settings.
std::string generate_text(const std::string& image, const std::string& prompt, const std::string& dir) {
  Result g = run(IB_CLI_PATH, {"--model", model_dir(), "--image", image, "--prompt", prompt, "--max-new-tokens", "8",
                               "--json", "--quiet"}, dir);
  EXPECT_EQ(g.status, 0) << g.err;
  if (g.status != 0) return "<generate failed>";
  return nlohmann::json::parse(g.out)["texts"][0].get<std::string>();
}

// Waits (bounded) until `path` holds at least one complete line.
bool wait_for_first_record(const std::string& path, const Proc& p, std::chrono::seconds timeout) {
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < timeout) {
    if (slurp(path).find('\n') != std::string::npos) return true;
    int st = 0;
    if (::waitpid(p.pid, &st, WNOHANG) == p.pid) return false;  // ended (the caller's wait() then fails)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

}  // namespace

TEST(CaptionCli, DirectoryRunRecordsEveryItemOnceWithGeneratesText) {
  const std::string dir = fresh_dir();
  const std::string images = image_dir(dir);
  const std::string out = dir + "/out.jsonl";
  Result r = caption(with(base_args(), {"--output", out, "--batch-size", "3", images}), dir);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("captioned 7 items (1 failed)"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty());
  const auto records = jsonl_records(slurp(out));
  ASSERT_EQ(records.size(), 7u);
  const auto m = by_id(records);
  ASSERT_EQ(m.size(), 7u);  // each id once
  const auto expected = bulk::enumerate_inputs({images});
  for (const auto& item : expected.items) {
    ASSERT_TRUE(m.count(item.id)) << item.id;
    const auto& rec = m.at(item.id);
    EXPECT_EQ(rec["image"], item.path);
    EXPECT_EQ(rec["prompt"], kPrompt);
    EXPECT_TRUE(rec["ms"].is_number());
    if (fs::path(item.path).filename() == "corrupt.jpg") {
      EXPECT_FALSE(rec.contains("text"));
      ASSERT_TRUE(rec.contains("error"));
      EXPECT_EQ(rec["error"].get<std::string>().find('\n'), std::string::npos);
      continue;
    }
    EXPECT_FALSE(rec.contains("error")) << rec.dump();
    // the keys in the documented order
    std::vector<std::string> keys;
    for (auto it = rec.begin(); it != rec.end(); ++it) keys.push_back(it.key());
    EXPECT_EQ(keys, (std::vector<std::string>{"id", "image", "prompt", "text", "ms"}));
    EXPECT_EQ(rec["text"], generate_text(item.path, kPrompt, dir)) << item.id;
  }
  // stdout output, --output-sequences: the same texts
  Result s = caption(with(base_args(), {"--output-sequences", images + "/sub"}), dir);
  ASSERT_EQ(s.status, 0) << s.err;
  const auto sub = jsonl_records(s.out);
  ASSERT_EQ(sub.size(), 3u);
  for (const auto& rec : sub) {
    EXPECT_EQ(rec["text"], m.at(rec["id"].get<std::string>())["text"]);
    ASSERT_TRUE(rec.contains("sequences"));
    EXPECT_EQ(rec["sequences"].size(), 1u);
    EXPECT_LE(rec["sequences"][0].size(), 9u);  // decoder start + at most 8 new tokens
  }
}

TEST(CaptionCli, CsvOutputParsesBackAndManifestPromptsApply) {
  const std::string dir = fresh_dir();
  const std::string images = image_dir(dir);
  // a manifest with its own ids and one prompt of its own
  {
    std::ofstream m(dir + "/list.csv");
    m << "image,id,prompt\n"
      << "images/Confusing-Pictures.jpg,conf,\"" << kPrompt << "\"\n"
      << "images/sub/merlion.png,lion,\"Where is this statue?\"\n"
      << "images/corrupt.jpg,bad,\"x, \"\"y\"\"\"\n";
  }
  const std::string out = dir + "/out.csv";
  Result r = caption(with(base_args(), {"--output", out, dir + "/list.csv"}), dir);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("1 failed"), std::string::npos) << r.err;
  const bulk::RecordFile f = bulk::read_records(out, bulk::Format::Csv);
  EXPECT_FALSE(f.torn());
  const auto m = by_id(f.records);
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m.at("conf")["text"], generate_text(images + "/Confusing-Pictures.jpg", kPrompt, dir));
  EXPECT_EQ(m.at("lion")["text"], generate_text(images + "/sub/merlion.png", "Where is this statue?", dir));
  EXPECT_EQ(m.at("lion")["image"], dir + "/images/sub/merlion.png");
  EXPECT_EQ(m.at("bad")["prompt"], "x, \"y\"");
  EXPECT_FALSE(m.at("bad")["error"].get<std::string>().empty());
  EXPECT_EQ(slurp(out).substr(0, 2), "\"i");  // no BOM
}

TEST(CaptionCli, ResumeAfterATornLineCompletesWithoutDuplicates) {
  const std::string dir = fresh_dir();
  const std::string images = image_dir(dir);
  for (const std::string ext : {"jsonl", "csv"}) {
    const std::string out = dir + "/out." + ext;
    Result first = caption(with(base_args(), {"--output", out, images}), dir);
    ASSERT_EQ(first.status, 0) << first.err;
    const std::string full = slurp(out);
    // cut the file inside its third record
    const auto fmt = ext == "csv" ? bulk::Format::Csv : bulk::Format::Jsonl;
    const bulk::RecordFile before = bulk::read_records(out, fmt);
    ASSERT_EQ(before.records.size(), 7u);
    std::size_t cut = 0;
    for (int i = 0; i < (ext == "csv" ? 3 : 2); ++i) cut = full.find('\n', cut) + 1;
    cut += 10;
    fs::resize_file(out, cut);
    const auto kept = bulk::read_records(out, fmt);
    ASSERT_TRUE(kept.torn());
    ASSERT_EQ(kept.records.size(), 2u);

    Result again = caption(with(base_args(), {"--output", out, images}), dir);
    ASSERT_EQ(again.status, 0) << again.err;
    EXPECT_NE(again.err.find("dropped a torn last record"), std::string::npos) << again.err;
    const bulk::RecordFile after = bulk::read_records(out, fmt);
    EXPECT_FALSE(after.torn());
    ASSERT_EQ(after.records.size(), 7u) << slurp(out);
    const auto m = by_id(after.records);
    EXPECT_EQ(m.size(), 7u);
    for (const auto& r : before.records) {  // the same outcome again
      const auto& again_r = m.at(r["id"].get<std::string>());
      EXPECT_EQ(again_r.value("text", std::string("<none>")), r.value("text", std::string("<none>")));
      EXPECT_EQ(again_r.contains("error"), r.contains("error"));
    }

    // nothing left: no model needed (a bad --model is not even looked at), nothing appended
    const std::string bytes = slurp(out);
    Result done = caption({"--model", dir + "/no-model", "--output", out, images}, dir);
    EXPECT_EQ(done.status, 0) << done.err;
    EXPECT_EQ(slurp(out), bytes);
    // --overwrite starts afresh
    Result fresh = caption(with(base_args(), {"--output", out, "--overwrite", images + "/sub"}), dir);
    ASSERT_EQ(fresh.status, 0) << fresh.err;
    EXPECT_EQ(bulk::read_records(out, fmt).records.size(), 3u);
  }
}

TEST(CaptionCli, SigkillMidRunThenRerunRecordsEveryIdOnce) {
  const std::string dir = fresh_dir();
  const std::string images = many_images(dir, 40);
  const std::string out = dir + "/out.jsonl";
  const auto args = with({"--model", model_dir(), "--max-new-tokens", "64", "--min-new-tokens", "64", "--quiet",
                          "--batch-size", "2", "--output", out},
                         {images});
  Proc p = start(IB_CAPTION_PATH, args, dir);
  const bool started = wait_for_first_record(out, p, std::chrono::seconds(120));
  ::kill(p.pid, SIGKILL);
  Result killed = wait(p, std::chrono::seconds(30));
  ASSERT_TRUE(started) << killed.err;
  EXPECT_EQ(killed.signal, SIGKILL);
  const std::size_t partial = bulk::read_records(out, bulk::Format::Jsonl).records.size();
  EXPECT_GE(partial, 1u);
  EXPECT_LT(partial, 40u);  // killed mid-run

  Result again = caption(args, dir);
  ASSERT_EQ(again.status, 0) << again.err;
  const bulk::RecordFile f = bulk::read_records(out, bulk::Format::Jsonl);
  EXPECT_FALSE(f.torn());
  std::multiset<std::string> seen;
  for (const auto& r : f.records) {
    seen.insert(r["id"].get<std::string>());
    EXPECT_FALSE(r.contains("error")) << r.dump();
  }
  EXPECT_EQ(seen.size(), 40u);
  for (const auto& item : bulk::enumerate_inputs({images}).items) EXPECT_EQ(seen.count(item.id), 1u) << item.id;
}

TEST(CaptionCli, SigtermAndSigintStopWith143And130AndAValidFile) {
  const std::string dir = fresh_dir();
  const std::string images = many_images(dir, 40);
  for (const std::string ext : {"jsonl", "csv"}) {
    const int sig = ext == "jsonl" ? SIGTERM : SIGINT;
    const std::string out = dir + "/out." + ext;
    Proc p = start(IB_CAPTION_PATH,
                   {"--model", model_dir(), "--max-new-tokens", "64", "--min-new-tokens", "64", "--batch-size", "2",
                    "--output", out, images},
                   dir);
    const bool started = wait_for_first_record(out, p, std::chrono::seconds(120));
    ::kill(p.pid, sig);
    Result r = wait(p, std::chrono::seconds(60));
    ASSERT_TRUE(started) << r.err;
    EXPECT_FALSE(r.timed_out);
    EXPECT_EQ(r.status, sig == SIGTERM ? 143 : 130) << r.err;
    EXPECT_NE(r.err.find(sig == SIGTERM ? "interrupted (SIGTERM)" : "interrupted (SIGINT)"), std::string::npos)
        << r.err;
    const bulk::RecordFile f = bulk::read_records(out, ext == "csv" ? bulk::Format::Csv : bulk::Format::Jsonl);
    EXPECT_FALSE(f.torn());
    EXPECT_GE(f.records.size(), 1u);
    EXPECT_LT(f.records.size(), 40u);
    EXPECT_EQ(by_id(f.records).size(), f.records.size());
    for (const auto& rec : f.records) EXPECT_FALSE(rec.contains("error")) << rec.dump();  // cancelled: not recorded
  }
}

TEST(CaptionCli, UsageAndRuntimeErrorsComeBeforeTheModelWithTheirStatus) {
  const std::string dir = fresh_dir();
  const std::string images = image_dir(dir);
  {
    std::ofstream m(dir + "/list.jsonl");
    m << "{\"image\": \"images/merlion.png\"}\n\n{\"image\": \"images/corrupt.jpg\", \"id\": [1]}\n";
  }
  // the manifest error wins over a bad --model: found before any model work
  Result r = caption({"--model", dir + "/no-such-model", dir + "/list.jsonl"}, dir);
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find(dir + "/list.jsonl:3:"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty());
  struct Bad {
    std::vector<std::string> args;
    int status;
    std::string needle;
  };
  const std::vector<Bad> cases = {
      {{"--model", model_dir(), dir + "/missing-dir"}, 2, "missing-dir"},
      {{"--model", model_dir(), dir + "/list.txt"}, 2, "list.txt"},
      {{"--model", model_dir(), "--frobnicate", images}, 2, "--frobnicate"},
      {{"--model", model_dir(), "--max-new-tokens", "0", images}, 2, "--max-new-tokens"},
      {{"--model", model_dir(), "--shard", "3/3", images}, 2, "--shard"},
      {{"--model", model_dir(), "--num-beams", "4", "--batch-size", "2", images}, 2, "--batch-size"},
      {{"--model", model_dir()}, 2, "INPUT"},
      {{images}, 2, "--model"},
      {{"--model", model_dir(), images, images}, 2, "duplicate id"},
      {{"--model", dir + "/no-such-model", images}, 1, "no-such-model"},
      {{"--model", model_dir(), "--output", dir, images}, 1, dir},
      {{"--model", model_dir(), "--output", "/proc/forbidden", images}, 1, "/proc/forbidden"},
  };
  for (const auto& c : cases) {
    Result b = caption(c.args, dir);
    EXPECT_EQ(b.status, c.status) << c.needle << ": " << b.err;
    EXPECT_NE(b.err.find(c.needle), std::string::npos) << b.err;
    EXPECT_TRUE(b.out.empty()) << b.out;
  }
  EXPECT_TRUE(fs::is_directory(dir));
  EXPECT_FALSE(fs::exists("/proc/forbidden"));
  Result help = caption({"--help"}, dir);
  EXPECT_EQ(help.status, 0);
  for (const char* flag : {"--shard", "--output", "--batch-size", "--fail-fast", "merge", "--max-new-tokens"})
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
  // a record file of the other format is refused, untouched
  std::ofstream(dir + "/other.jsonl") << "\"id\",\"image\",\"prompt\",\"text\",\"error\"\r\n";
  Result other = caption({"--model", model_dir(), "--output", dir + "/other.jsonl", images}, dir);
  EXPECT_EQ(other.status, 1) << other.err;
  EXPECT_EQ(slurp(dir + "/other.jsonl"), "\"id\",\"image\",\"prompt\",\"text\",\"error\"\r\n");
  // --fail-fast: the first error record is written, then exit status 1
  {
    std::ofstream m(dir + "/list-ok.jsonl");
    m << "{\"image\": \"images/corrupt.jpg\"}\n{\"image\": \"images/merlion.png\"}\n";
  }
  Result ff = caption(with(base_args(), {"--fail-fast", "--output", dir + "/ff.jsonl", "--batch-size", "1",
                                  dir + "/list-ok.jsonl"}), dir);
  EXPECT_EQ(ff.status, 1) << ff.err;
  const auto ffr = bulk::read_records(dir + "/ff.jsonl", bulk::Format::Jsonl).records;
  ASSERT_GE(ffr.size(), 1u);
  EXPECT_TRUE(by_id(ffr).at(dir + "/images/corrupt.jpg").contains("error"));
}

TEST(CaptionCli, TarShardInputPassesTxtThrough) {
  const std::string dir = fresh_dir();
  const std::string tar = dir + "/shard.tar";
  auto file = [](const std::string& p) { return slurp(p); };
  const std::string conf = ibtest::data_dir() + "/images/Confusing-Pictures.jpg";
  const std::string lion = ibtest::data_dir() + "/images/merlion.png";
  {
    ::archive* a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    ASSERT_EQ(archive_write_open_filename(a, tar.c_str()), ARCHIVE_OK);
    const std::vector<std::pair<std::string, std::string>> members = {
        {"s/000.jpg", file(conf)}, {"s/000.txt", "an ironing man"}, {"s/000.json", "{\"w\": 1}"},
        {"s/001.txt", "nothing to see"}, {"s/002.png", file(lion)}};
    for (const auto& [name, data] : members) {
      ::archive_entry* e = archive_entry_new();
      archive_entry_set_pathname(e, name.c_str());
      archive_entry_set_filetype(e, AE_IFREG);
      archive_entry_set_perm(e, 0644);
      archive_entry_set_size(e, la_int64_t(data.size()));
      ASSERT_EQ(archive_write_header(a, e), ARCHIVE_OK);
      archive_write_data(a, data.data(), data.size());
      archive_entry_free(e);
    }
    archive_write_close(a);
    archive_write_free(a);
  }
  Result r = caption(with(base_args(), {tar}), dir);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("1 failed"), std::string::npos) << r.err;
  const auto m = by_id(jsonl_records(r.out));
  ASSERT_EQ(m.size(), 3u) << r.out;
  const auto& a = m.at(tar + "/s/000");
  EXPECT_EQ(a["tar"], tar);
  EXPECT_EQ(a["key"], "s/000");
  EXPECT_EQ(a["txt"], "an ironing man");
  EXPECT_EQ(a["json"], nlohmann::ordered_json::parse("{\"w\": 1}"));
  EXPECT_EQ(a["text"], generate_text(conf, kPrompt, dir));
  EXPECT_EQ(m.at(tar + "/s/002")["text"], generate_text(lion, kPrompt, dir));
  const auto& none = m.at(tar + "/s/001");
  EXPECT_NE(none["error"].get<std::string>().find("no image member"), std::string::npos);
  EXPECT_EQ(none["txt"], "nothing to see");
  // too big: an error record, the run goes on
  Result big = caption(with(base_args(), {"--max-image-bytes", "100000", tar}), dir);
  ASSERT_EQ(big.status, 0) << big.err;
  const auto mb = by_id(jsonl_records(big.out));
  EXPECT_TRUE(mb.at(tar + "/s/002").contains("error"));  // merlion.png is 1.6 MB
  EXPECT_EQ(mb.at(tar + "/s/000")["text"], a["text"]);
}

TEST(CaptionCli, ShardsUnionToEverythingAndMergeReportsDuplicatesAndMissing) {
  const std::string dir = fresh_dir();
  const std::string images = image_dir(dir);
  const std::string pattern = dir + "/part-{shard}.jsonl";
  for (int i = 0; i < 3; ++i) {
    Result r = caption(with(base_args(), {"--shard", std::to_string(i) + "/3", "--output", pattern, images}), dir);
    ASSERT_EQ(r.status, 0) << r.err;
  }
  // Slurm's variables select the same shard as --shard
  const std::string slurm_out = dir + "/slurm.jsonl";
  ::setenv("SLURM_ARRAY_TASK_ID", "11", 1);
  ::setenv("SLURM_ARRAY_TASK_COUNT", "3", 1);
  ::setenv("SLURM_ARRAY_TASK_MIN", "10", 1);
  Result s = caption(with(base_args(), {"--output", slurm_out, images}), dir);
  ::unsetenv("SLURM_ARRAY_TASK_ID");
  ::unsetenv("SLURM_ARRAY_TASK_COUNT");
  ::unsetenv("SLURM_ARRAY_TASK_MIN");
  ASSERT_EQ(s.status, 0) << s.err;
  {
    std::set<std::string> a, b;
    for (const auto& r : bulk::read_records(slurm_out, bulk::Format::Jsonl).records)
      a.insert(r["id"].get<std::string>());
    for (const auto& r : bulk::read_records(dir + "/part-1.jsonl", bulk::Format::Jsonl).records)
      b.insert(r["id"].get<std::string>());
    EXPECT_EQ(a, b);
    EXPECT_FALSE(a.empty());
  }

  std::multiset<std::string> seen;
  const auto items = bulk::enumerate_inputs({images}).items;
  for (int i = 0; i < 3; ++i)
    for (const auto& r :
         bulk::read_records(dir + "/part-" + std::to_string(i) + ".jsonl", bulk::Format::Jsonl).records) {
      const std::string id = r["id"].get<std::string>();
      seen.insert(id);
      std::size_t index = 0;
      while (index < items.size() && items[index].id != id) ++index;
      EXPECT_EQ(index % 3, std::size_t(i)) << id;
    }
  EXPECT_EQ(seen.size(), items.size());
  for (const auto& item : items) EXPECT_EQ(seen.count(item.id), 1u) << item.id;

  // a clean merge
  const std::string merged = dir + "/merged.csv";
  Result m = caption({"merge", "--output", merged, "--expect", images, dir + "/part-0.jsonl", dir + "/part-1.jsonl",
                      dir + "/part-2.jsonl"}, dir);
  EXPECT_EQ(m.status, 0) << m.err;
  EXPECT_NE(m.err.find("merged 7 records from 3 files; 0 duplicate ids; 0 missing"), std::string::npos) << m.err;
  EXPECT_EQ(bulk::read_records(merged, bulk::Format::Csv).records.size(), 7u);
  // a part twice and one missing: both reported, exit status 1, the output still written
  Result bad = caption({"merge", "--expect", images, dir + "/part-0.jsonl", dir + "/part-0.jsonl",
                        dir + "/part-2.jsonl"}, dir);
  EXPECT_EQ(bad.status, 1) << bad.err;
  const std::size_t part1 = bulk::read_records(dir + "/part-1.jsonl", bulk::Format::Jsonl).records.size();
  const std::size_t part0 = bulk::read_records(dir + "/part-0.jsonl", bulk::Format::Jsonl).records.size();
  EXPECT_NE(bad.err.find("merged " + std::to_string(7 - part1) + " records from 3 files; " + std::to_string(part0) +
                         " duplicate ids; " + std::to_string(part1) + " missing"),
            std::string::npos)
      << bad.err;
  const auto part1_first = bulk::read_records(dir + "/part-1.jsonl", bulk::Format::Jsonl).records[0]["id"];
  EXPECT_NE(bad.err.find(part1_first.get<std::string>()), std::string::npos) << bad.err;
  EXPECT_EQ(jsonl_records(bad.out).size(), 7 - part1);
  // usage
  EXPECT_EQ(caption({"merge"}, dir).status, 2);
  EXPECT_EQ(caption({"merge", dir + "/no-such-part.jsonl"}, dir).status, 2);
}

// A BLIP-2 checkpoint captions without a prompt (transformers' generate without input_ids): every
// record's text is the reference's greedy caption for that image (input c of the fixture).
TEST(CaptionCli, Blip2CaptionsWithoutAPrompt) {
  const std::string dir = fresh_dir();
  const std::string d = dir + "/images";
  fs::create_directories(d);
  for (const char* name : {"a.jpg", "b.jpg"}) fs::copy_file(ibtest::data_dir() + "/images/Confusing-Pictures.jpg", d + "/" + name);
  const ibtest::Reference ref("blip2-opt-tiny");
  const std::string out = dir + "/out.jsonl";
  Result r = caption({"--model", ref.model_dir(), "--max-new-tokens", "20", "--quiet", "--output", out, d}, dir);
  ASSERT_EQ(r.status, 0) << r.err;
  const auto records = jsonl_records(slurp(out));
  ASSERT_EQ(records.size(), 2u);
  const std::string expected = ref.json["generation"]["greedy"]["c"]["text"][0].get<std::string>();
  for (const auto& rec : records) {
    EXPECT_EQ(rec["prompt"], "");
    EXPECT_EQ(rec["text"], expected);
    EXPECT_FALSE(rec.contains("error")) << rec.dump();
  }
}
