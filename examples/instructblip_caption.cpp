// instructblip-caption: captions many images (directories, JSONL / CSV manifests, webdataset tar
// shards) with one loaded model through the BatchEngine, writing one JSONL / CSV record per item as
// it completes. Resumable (reruns skip the recorded ids), shardable (--shard, Slurm array and
// Kubernetes Indexed Job variables) and mergeable (`instructblip-caption merge`).
#include <instructblip/engine/batch_engine.hpp>
#include <instructblip/instructblip.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli_args.hpp"
#include "inputs.hpp"
#include "records.hpp"

namespace {

using namespace instructblip;
using Clock = std::chrono::steady_clock;
using cli::UsageError;

constexpr const char* kProg = "instructblip-caption";

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// ---- signals: the handler only records the signal; the main loop acts on it ---------------------

std::atomic<int> g_signal{0};

extern "C" void on_signal(int sig) {
  if (g_signal.exchange(sig) != 0) {  // a second signal: leave at once, the default way
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}

void install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

int signal_status() { return g_signal.load() == SIGINT ? 130 : 143; }

// ---- options ----------------------------------------------------------------------------------------

struct Options {
  cli::Options gen;  // --model, the generation flags, --threads, --weights, --quiet
  std::vector<std::string> inputs;
  std::string output, format;
  /// Unset: "A short image description:" for InstructBLIP, none (plain captioning) for BLIP-2.
  std::optional<std::string> prompt;
  std::optional<std::string> shard;
  std::optional<std::int64_t> num_shards;
  bool overwrite = false, output_sequences = false, fail_fast = false;
  std::int64_t batch_size = 8;
  std::uint64_t max_image_bytes = 64ull << 20;
  double progress_interval = 10;
  bool help = false, version = false;
};

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const std::function<std::string()> value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") o.help = true;
    else if (a == "--version") o.version = true;
    else if (a == "--model" || a == "-m") o.gen.model_dir = value();
    else if (a == "--output" || a == "-o") o.output = value();
    else if (a == "--format") {
      o.format = value();
      if (o.format != "jsonl" && o.format != "csv")
        throw UsageError("--format must be jsonl or csv, got '" + o.format + "'");
    }
    else if (a == "--prompt" || a == "-p") o.prompt = value();
    else if (a == "--shard") o.shard = value();
    else if (a == "--num-shards") o.num_shards = cli::parse_int(a, value(), 1, 1 << 30);
    else if (a == "--overwrite") o.overwrite = true;
    else if (a == "--output-sequences") o.output_sequences = true;
    else if (a == "--fail-fast") o.fail_fast = true;
    else if (a == "--batch-size") o.batch_size = cli::parse_int(a, value(), 1, 1024);
    else if (a == "--max-image-bytes")
      o.max_image_bytes = std::uint64_t(cli::parse_int(a, value(), 1, std::numeric_limits<std::int64_t>::max()));
    else if (a == "--progress-interval") o.progress_interval = cli::parse_float(a, value(), 0.0, 1e6, true);
    else if (a == "--quiet" || a == "-q") o.gen.quiet = true;
    else if (a.size() > 1 && a[0] == '-') {
      if (!cli::parse_generation_flag(a, value, o.gen)) throw UsageError("unknown option '" + a + "' (see --help)");
    } else {
      o.inputs.push_back(a);
    }
  }
  if (o.help || o.version) return o;
  if (o.gen.model_dir.empty()) throw UsageError("--model DIR is required");
  if (o.inputs.empty()) throw UsageError("at least one INPUT (directory, .jsonl, .csv or .tar) is required");
  if (o.gen.num_return_sequences && o.gen.num_beams && *o.gen.num_return_sequences > *o.gen.num_beams &&
      !o.gen.do_sample)
    throw UsageError("--num-return-sequences must not exceed --num-beams");
  // The rows a request takes, as far as the flags tell (the checkpoint's settings are checked after the load).
  const std::int64_t beams = o.gen.num_beams.value_or(1);
  const std::int64_t rows = beams > 1 ? beams : o.gen.num_return_sequences.value_or(1);
  if (rows > o.batch_size)
    throw UsageError(std::string(beams > 1 ? "--num-beams " : "--num-return-sequences ") + std::to_string(rows) +
                     " needs --batch-size >= " + std::to_string(rows) + " (rows decoded together)");
  return o;
}

std::string usage() {
  return std::string("usage: ") + kProg + " --model DIR [options] INPUT...\n"
         "       " + kProg + " merge [--output FILE] [--format jsonl|csv] [--expect INPUT]... PART...\n"
         "\n"
         "Captions every image of the inputs with an InstructBLIP checkpoint, one record per image.\n"
         "INPUT: a directory (recursive; jpg jpeg png webp bmp gif tga pnm ppm pgm pbm), a .jsonl or .csv\n"
         "manifest (\"image\" required, \"id\" and \"prompt\" optional), or a .tar webdataset shard.\n"
         "\n"
         "  --prompt TEXT             the instruction (default: 'A short image description:'; BLIP-2\n"
         "                            checkpoints: none, plain captioning)\n"
         "  --output FILE             records (default: stdout); {shard} is replaced by the shard index;\n"
         "                            an existing FILE is resumed: its ids are skipped, the rest appended\n"
         "  --format jsonl|csv        default: by FILE's extension (.csv), else jsonl\n"
         "  --overwrite               start FILE afresh instead of resuming\n"
         "  --output-sequences        add the generated ids to JSONL records\n"
         "  --shard I/N               the items whose index % N == I (default: SLURM_ARRAY_TASK_ID /\n"
         "                            SLURM_ARRAY_TASK_COUNT, or JOB_COMPLETION_INDEX with --num-shards N)\n"
         "  --num-shards N            the shard count: with SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX as\n"
         "                            the shard index (a Slurm task resubmitted alone, a Kubernetes Indexed Job)\n"
         "  --batch-size B            rows decoded together (default 8)\n"
         "  --max-image-bytes N       larger images are error records (default 64 MiB)\n"
         "  --fail-fast               stop at the first error record (exit status 1)\n"
         "  --progress-interval S     seconds between progress lines when stderr is not a terminal (10)\n"
         "  --quiet                   no progress\n"
         "generation and model (as instructblip-generate): --max-new-tokens N --min-new-tokens N --num-beams N\n"
         "  --do-sample --temperature F --top-p F --top-k N --repetition-penalty F --length-penalty F --seed N\n"
         "  --weights f32|bf16|q8_0|q4_0 --threads N\n"
         "\n"
         "exit status: 0 finished (error records included), 1 runtime error, 2 usage error,\n"
         "130 / 143 interrupted by SIGINT / SIGTERM (the finished records are kept)\n";
}

// ---- progress ---------------------------------------------------------------------------------------

class Progress {
 public:
  Progress(std::size_t total, bool quiet, double interval)
      : total_(total), quiet_(quiet), tty_(::isatty(2)), interval_(interval), start_(Clock::now()), last_(start_) {}

  void update(std::size_t done, std::size_t failed) {
    if (quiet_) return;
    const double since = seconds_since(last_);
    if (since < (tty_ ? 0.25 : interval_)) return;
    last_ = Clock::now();
    const std::string line = status(done, failed);
    if (tty_) std::fprintf(stderr, "\r%s   ", line.c_str());
    else std::fprintf(stderr, "%s: %s\n", kProg, line.c_str());
    shown_ = true;
  }

  void finish(std::size_t done, std::size_t failed) {
    if (tty_ && shown_) std::fputs("\n", stderr);
    const double s = seconds_since(start_);
    std::fprintf(stderr, "%s: captioned %zu items (%zu failed) in %.1f s (%.2f items/s)\n", kProg, done, failed, s,
                 s > 0 ? double(done) / s : 0.0);
  }

 private:
  std::string status(std::size_t done, std::size_t failed) const {
    const double s = seconds_since(start_);
    const double rate = s > 0 ? double(done) / s : 0.0;
    const long eta = rate > 0 ? long(double(total_ - done) / rate + 0.5) : 0;
    char buf[160];
    std::snprintf(buf, sizeof buf, "[%zu/%zu] %.2f items/s ETA %02ld:%02ld, %zu failed", done, total_, rate, eta / 60,
                  eta % 60, failed);
    return buf;
  }
  std::size_t total_;
  bool quiet_, tty_;
  double interval_;
  Clock::time_point start_, last_;
  bool shown_ = false;
};

// ---- records -------------------------------------------------------------------------------------

std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  return s;
}

nlohmann::ordered_json base_record(const bulk::Item& item, const std::string& prompt) {
  nlohmann::ordered_json r;
  r["id"] = item.id;
  if (item.kind == bulk::ItemKind::File) {
    r["image"] = item.path;
  } else {
    r["tar"] = item.path;
    r["key"] = item.key;
  }
  r["prompt"] = prompt;
  return r;
}

void add_tail(nlohmann::ordered_json& r, const bulk::Item& item, double ms, const std::string& error) {
  r["ms"] = double(std::llround(ms * 10)) / 10;
  if (!error.empty()) r["error"] = one_line(error);
  if (item.txt) r["txt"] = *item.txt;
  if (item.json) r["json"] = *item.json;
}

// ---- the run ------------------------------------------------------------------------------------------

int run(const Options& o) {
  install_signal_handlers();
  auto log = [&](const char* fmt, auto... args) {
    if (!o.gen.quiet) std::fprintf(stderr, fmt, args...);
  };

  // Everything that can be wrong with the command line is found before the model loads.
  bulk::Enumeration en = bulk::enumerate_inputs(o.inputs);
  for (const auto& w : en.warnings) std::fprintf(stderr, "%s: warning: %s\n", kProg, w.c_str());
  const bulk::Shard shard = bulk::resolve_shard(o.shard, o.num_shards, [](const char* n) { return std::getenv(n); });
  const std::string out_path = o.output.empty() ? "" : bulk::shard_path(o.output, shard.index);
  const bulk::Format format = bulk::output_format(out_path, o.format);

  bulk::ResumeState resume;
  if (!out_path.empty()) {
    try {
      if (!o.overwrite) resume = bulk::resume_state(out_path, format);
      bulk::check_writable(out_path);
    } catch (const Error& e) {
      std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
      return 1;
    }
    if (resume.torn_bytes)
      std::fprintf(stderr, "%s: %s: dropped a torn last record (%llu bytes)\n", kProg, out_path.c_str(),
                   static_cast<unsigned long long>(resume.torn_bytes));
  }
  std::vector<const bulk::Item*> pending;
  std::size_t in_shard = 0;
  for (const auto& item : en.items) {
    if (!shard.contains(item.index)) continue;
    ++in_shard;
    if (!resume.done.count(item.id)) pending.push_back(&item);
  }
  log("%s: %zu items, shard %lld/%lld (%s): %zu, already recorded %zu, to caption %zu\n", kProg, en.items.size(),
      static_cast<long long>(shard.index), static_cast<long long>(shard.count), shard.source.c_str(), in_shard,
      in_shard - pending.size(), pending.size());

  std::unique_ptr<bulk::RecordWriter> writer;
  auto open_writer = [&] {
    if (out_path.empty()) writer = std::make_unique<bulk::RecordWriter>(1, format);
    else writer = std::make_unique<bulk::RecordWriter>(out_path, format,
                                                       o.overwrite ? std::optional<std::uint64_t>(0)
                                                                   : std::optional<std::uint64_t>(resume.keep_bytes));
  };
  Progress progress(pending.size(), o.gen.quiet, o.progress_interval);
  if (pending.empty()) {  // nothing left to do: no model needed (but a torn tail is still cut)
    try {
      open_writer();
    } catch (const Error& e) {
      std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
      return 1;
    }
    progress.finish(0, 0);
    return 0;
  }

  if (o.gen.threads > 0) set_num_threads(o.gen.threads);
  VisionLanguageProcessor processor = VisionLanguageProcessor::from_pretrained(o.gen.model_dir);
  LoadOptions lo;
  if (!o.gen.weights.empty()) {
    ops::WeightFormat f;
    ops::parse_weight_format(o.gen.weights, &f);
    lo.weights = f;
  }
  const auto tl = Clock::now();
  auto model = VisionLanguageModel::from_pretrained(o.gen.model_dir, lo);
  // BLIP-2 captions without a prompt (its processor has no Q-Former tokenizer): an empty prompt
  // encodes to the bos token the model starts from anyway.
  const std::string default_prompt =
      o.prompt.value_or(processor.has_qformer_tokenizer() ? "A short image description:" : "");
  log("%s: loaded %s (%s language model, %s weights) in %.1f s\n", kProg, o.gen.model_dir.c_str(),
      model.config().text_model_type().c_str(), ops::weight_format_name(model.weight_format()), seconds_since(tl));
  if (g_signal) return signal_status();

  const GenerationConfig gen = cli::generation_config(model.generation_config(), o.gen);
  gen.validate();
  // as the engine counts them (it refuses a request that needs more rows than it decodes together)
  const std::int64_t rows = gen.num_beams > 1 ? gen.num_beams : gen.num_return_sequences;
  if (rows > o.batch_size)
    throw InvalidArgument("a request takes " + std::to_string(rows) + " rows (num_beams / num_return_sequences): "
                          "give --batch-size >= " + std::to_string(rows));

  open_writer();
  EngineOptions eo;
  eo.max_rows = o.batch_size;
  eo.prefetch = 2 * o.batch_size;
  eo.max_image_bytes = o.max_image_bytes;
  BatchEngine engine(model, processor, eo);

  struct InFlight {
    const bulk::Item* item;
    std::string prompt;
    BatchEngine::Handle handle;
  };
  std::deque<InFlight> inflight;
  const std::size_t ahead = std::size_t(2 * o.batch_size);  // decoded images never pile up
  std::size_t next = 0, done = 0, failed = 0;
  bool stop = false;  // --fail-fast tripped, or the output failed
  bool write_failed = false;
  std::string fatal;
  std::unique_ptr<bulk::TarImageReader> tar;

  auto record = [&](nlohmann::ordered_json r, bool error) {
    try {
      writer->write(r);
    } catch (const Error& e) {
      fatal = e.what();
      stop = write_failed = true;
      return;
    }
    ++done;
    if (error) {
      ++failed;
      if (o.fail_fast) {
        stop = true;
        if (fatal.empty()) fatal = "--fail-fast: " + r["id"].get<std::string>() + ": " + r["error"].get<std::string>();
      }
    }
  };
  auto error_record = [&](const bulk::Item& item, const std::string& prompt, const std::string& error,
                          Clock::time_point t0) {
    auto r = base_record(item, prompt);
    add_tail(r, item, seconds_since(t0) * 1e3, error);
    record(std::move(r), true);
  };
  auto result_record = [&](const InFlight& f, const EngineResult& res) {
    auto r = base_record(*f.item, f.prompt);
    if (res.ok()) {
      r["text"] = res.texts.empty() ? std::string() : res.texts[0];
      if (o.output_sequences) r["sequences"] = res.sequences;
    }
    add_tail(r, *f.item, res.total_ms, res.error);
    record(std::move(r), !res.ok());
  };

  while (!stop && !g_signal) {
    while (!stop && !g_signal && inflight.size() < ahead && next < pending.size()) {
      const bulk::Item& item = *pending[next++];
      const auto t0 = Clock::now();
      EngineRequest req;
      req.prompt = item.prompt.value_or(default_prompt);
      req.generation = gen;
      req.tag = item.id;
      if (item.kind == bulk::ItemKind::File) {
        req.image_path = item.path;
      } else {
        if (item.member.empty()) {
          error_record(item, req.prompt, "no image member (jpg, jpeg, png or webp) in the sample", t0);
          continue;
        }
        if (!tar || tar->path() != item.path) tar = std::make_unique<bulk::TarImageReader>(item.path);
        try {
          req.image_bytes = tar->read(item, o.max_image_bytes);
        } catch (const Error& e) {
          error_record(item, req.prompt, e.what(), t0);
          continue;
        }
      }
      std::string prompt = req.prompt;
      try {
        auto h = engine.submit(std::move(req));
        inflight.push_back({&item, std::move(prompt), std::move(h)});
      } catch (const InvalidArgument& e) {  // e.g. a manifest prompt that is not UTF-8
        error_record(item, prompt, e.what(), t0);
      }
    }
    if (inflight.empty() && next >= pending.size()) break;
    bool any = false;
    for (auto it = inflight.begin(); it != inflight.end() && !stop;) {
      if (it->handle.result.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
        result_record(*it, it->handle.result.get());
        it = inflight.erase(it);
        any = true;
      } else {
        ++it;
      }
    }
    if (!any && !inflight.empty()) inflight.front().handle.result.wait_for(std::chrono::milliseconds(20));
    progress.update(done, failed);
  }

  if (stop || g_signal) {
    // No new item starts; what runs is cancelled; what finished is still recorded. Cancelled items
    // get no record, so that a rerun captions them.
    engine.shutdown(false);
    for (auto& f : inflight) {
      if (f.handle.result.wait_for(std::chrono::seconds(30)) != std::future_status::ready) continue;
      const EngineResult& res = f.handle.result.get();
      if (res.error_type == "cancelled") continue;
      if (write_failed) break;
      result_record(f, res);
    }
  } else {
    engine.shutdown(true);
  }
  progress.finish(done, failed);
  if (g_signal) {
    std::fprintf(stderr, "%s: interrupted (%s); %zu items not started\n", kProg,
                 g_signal.load() == SIGINT ? "SIGINT" : "SIGTERM", pending.size() - next);
    return signal_status();
  }
  if (!fatal.empty()) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, one_line(fatal).c_str());
    return 1;
  }
  return 0;
}

// ---- merge ------------------------------------------------------------------------------------------

int merge(int argc, char** argv) {
  std::string output, format;
  std::vector<std::string> expect, parts;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(usage().c_str(), stdout);
      return 0;
    } else if (a == "--output" || a == "-o") output = value();
    else if (a == "--format") format = value();
    else if (a == "--expect") expect.push_back(value());
    else if (a.size() > 1 && a[0] == '-') throw UsageError("unknown option '" + a + "' (see --help)");
    else parts.push_back(a);
  }
  if (parts.empty()) throw UsageError("merge: at least one PART (a record file) is required");
  const bulk::Format f = bulk::output_format(output, format);
  for (const auto& p : parts)
    if (!std::filesystem::is_regular_file(p)) throw UsageError("merge: " + p + ": no such record file");
  std::optional<std::vector<std::string>> expected;
  if (!expect.empty()) {
    expected.emplace();
    for (const auto& item : bulk::enumerate_inputs(expect).items) expected->push_back(item.id);
  }
  bulk::MergeResult m;
  try {
    m = bulk::merge_records(parts, expected);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
    return 1;
  }
  for (const auto& t : m.torn) std::fprintf(stderr, "%s: %s\n", kProg, t.c_str());
  try {
    auto w = output.empty() ? std::make_unique<bulk::RecordWriter>(1, f)
                            : std::make_unique<bulk::RecordWriter>(output, f, std::optional<std::uint64_t>(0));
    for (const auto& r : m.records) w->write(r);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
    return 1;
  }
  std::fprintf(stderr, "%s: merged %zu records from %zu files; %zu duplicate ids; %zu missing\n", kProg,
               m.records.size(), m.files, m.duplicates.size(), m.missing.size());
  auto list = [](const char* what, const std::vector<std::string>& ids) {
    if (ids.empty()) return;
    std::string s;
    for (std::size_t i = 0; i < ids.size() && i < 10; ++i) s += (i ? ", " : "") + ids[i];
    if (ids.size() > 10) s += ", ...";
    std::fprintf(stderr, "%s: %s: %s\n", kProg, what, s.c_str());
  };
  list("duplicate ids", m.duplicates);
  list("missing", m.missing);
  return m.duplicates.empty() && m.missing.empty() ? 0 : 1;
}

}  // namespace

// Runs `f`, turning what it throws into one line on stderr and the documented exit status: 2 for usage
// errors (bad flags, inputs, manifest lines), 1 for the rest.
template <typename F>
int with_exit_status(F&& f) {
  try {
    return f();
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: %s\n", kProg, e.what());
    return 2;
  } catch (const InvalidArgument& e) {
    std::fprintf(stderr, "%s: %s\n", kProg, e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
    return 1;
  }
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "merge") return with_exit_status([&] { return merge(argc, argv); });
  Options o;
  try {
    o = parse_args(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: %s\n", kProg, e.what());
    return 2;
  }
  if (o.help) {
    std::fputs(usage().c_str(), stdout);
    return 0;
  }
  if (o.version) {
    std::printf("%s %s\n", kProg, INSTRUCTBLIP_VERSION_STRING);
    return 0;
  }
  return with_exit_status([&] { return run(o); });
}
