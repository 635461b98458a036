#include "records.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string_view>
#include <unordered_map>

#include "csv.hpp"

namespace instructblip::bulk {

namespace {

const std::vector<std::string> kCsvColumns = {"id", "image", "prompt", "text", "error"};

std::string field(const nlohmann::ordered_json& r, const char* key) {
  auto it = r.find(key);
  if (it == r.end() || it->is_null()) return "";
  return it->is_string() ? it->get<std::string>() : it->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot open the file: " + std::strerror(errno));
  std::string s((std::istreambuf_iterator<char>(in)), {});
  if (in.bad()) throw IoError(path + ": cannot read the file");
  return s;
}

bool is_record(const nlohmann::ordered_json& j) {
  return j.is_object() && j.contains("id") && j["id"].is_string();
}

RecordFile read_jsonl(const std::string& path, const std::string& data) {
  RecordFile f;
  f.size = data.size();
  if (data.compare(0, 5, "\"id\",") == 0)
    throw FormatError(path + ": a CSV record file, not JSONL (--format, or start afresh with --overwrite)");
  std::size_t pos = 0, line = 0;
  while (pos < data.size()) {
    ++line;
    const std::size_t nl = data.find('\n', pos);
    if (nl == std::string::npos) break;  // no final line break: torn
    const std::string_view text(data.data() + pos, nl - pos);
    const bool last = nl + 1 == data.size();
    if (text.find_first_not_of(" \t\r") == std::string_view::npos) {
      pos = nl + 1;
      f.good_bytes = pos;
      continue;
    }
    nlohmann::ordered_json j;
    bool ok = true;
    try {
      j = nlohmann::ordered_json::parse(text);
      ok = is_record(j);
    } catch (const nlohmann::json::exception&) {
      ok = false;
    }
    if (!ok) {
      if (last) break;  // torn
      throw FormatError(path + ":" + std::to_string(line) + ": not a record (a JSON object with a string \"id\")");
    }
    f.records.push_back(std::move(j));
    pos = nl + 1;
    f.good_bytes = pos;
  }
  return f;
}

RecordFile read_csv(const std::string& path, const std::string& data) {
  RecordFile f;
  f.size = data.size();
  if (data.empty()) return f;
  const std::string header = csv_header();
  if (data.compare(0, header.size(), header) != 0) {
    if (data.size() < header.size() && header.compare(0, data.size(), data) == 0) return f;  // torn header
    throw FormatError(path + ": not a CSV record file (its first line is not " + header.substr(0, header.size() - 2) +
                      "; --format, or start afresh with --overwrite)");
  }
  std::string_view d(data);
  std::size_t pos = header.size(), lines = 1;
  f.good_bytes = pos;
  std::vector<std::string> fields;
  for (;;) {
    const std::size_t first = lines + 1;
    const CsvStatus st = read_csv_record(d, pos, fields, lines);
    if (st == CsvStatus::End || st == CsvStatus::NoLineEnd || st == CsvStatus::Unterminated) break;
    if (st == CsvStatus::BadQuote || fields.size() != kCsvColumns.size()) {
      if (st == CsvStatus::Ok && pos == d.size()) break;  // a last record with the wrong field count: torn
      throw FormatError(path + ":" + std::to_string(first) + ": not a record of " + std::to_string(kCsvColumns.size()) +
                        " quoted fields");
    }
    nlohmann::ordered_json r = nlohmann::ordered_json::object();
    for (std::size_t i = 0; i < 3; ++i) r[kCsvColumns[i]] = fields[i];
    if (fields[4].empty()) r["text"] = fields[3];  // a success (possibly with an empty text)
    else r["error"] = fields[4];
    f.records.push_back(std::move(r));
    f.good_bytes = pos;
  }
  return f;
}

}  // namespace

Format output_format(const std::string& path, const std::string& flag) {
  if (flag == "jsonl") return Format::Jsonl;
  if (flag == "csv") return Format::Csv;
  if (!flag.empty()) throw InvalidArgument("--format must be jsonl or csv, got '" + flag + "'");
  const std::size_t n = path.size();
  if (n >= 4) {
    std::string ext = path.substr(n - 4);
    for (char& c : ext) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (ext == ".csv") return Format::Csv;
  }
  return Format::Jsonl;
}

const char* format_name(Format f) { return f == Format::Csv ? "csv" : "jsonl"; }

std::string csv_header() { return csv_record(kCsvColumns); }

std::string format_record(const nlohmann::ordered_json& r, Format f) {
  if (f == Format::Jsonl) return r.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::string image = field(r, "image");
  if (image.empty() && r.contains("tar")) image = field(r, "tar") + "/" + field(r, "key");
  return csv_record({field(r, "id"), image, field(r, "prompt"), field(r, "text"), field(r, "error")});
}

RecordFile read_records(const std::string& path, Format f) {
  const std::string data = load(path);
  return f == Format::Jsonl ? read_jsonl(path, data) : read_csv(path, data);
}

RecordWriter::RecordWriter(const std::string& path, Format f, std::optional<std::uint64_t> truncate_to)
    : owned_(true), format_(f), name_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) throw IoError(path + ": cannot open for writing: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw IoError(path + ": not a regular file");
  }
  std::uint64_t size = std::uint64_t(st.st_size);
  if (truncate_to && *truncate_to < size) {
    if (::ftruncate(fd_, off_t(*truncate_to)) != 0) {
      const std::string msg = std::strerror(errno);
      ::close(fd_);
      throw IoError(path + ": cannot truncate: " + msg);
    }
    size = *truncate_to;
  }
  need_header_ = f == Format::Csv && size == 0;
}

RecordWriter::RecordWriter(int fd, Format f) : fd_(fd), format_(f), name_("<stdout>") {
  need_header_ = f == Format::Csv;
}

RecordWriter::~RecordWriter() {
  if (owned_ && fd_ >= 0) ::close(fd_);
}

void RecordWriter::write_all(const std::string& bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError(name_ + ": write failed: " + std::strerror(errno));
    }
    done += std::size_t(n);
  }
}

void RecordWriter::write(const nlohmann::ordered_json& record) {
  std::string bytes = format_record(record, format_);
  if (need_header_) bytes = csv_header() + bytes;  // the header goes out with the first record
  write_all(bytes);
  need_header_ = false;
}

void check_writable(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError(path + ": cannot open for writing: " + std::strerror(errno));
  struct stat st {};
  const bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  ::close(fd);
  if (!regular) throw IoError(path + ": not a regular file");
}

ResumeState resume_state(const std::string& path, Format f) {
  ResumeState s;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return s;  // nothing recorded yet
  if (!S_ISREG(st.st_mode)) throw IoError(path + ": not a regular file");
  RecordFile r = read_records(path, f);
  for (const auto& rec : r.records) s.done.insert(rec["id"].get<std::string>());
  s.records = r.records.size();
  s.keep_bytes = r.good_bytes;
  s.torn_bytes = r.size - r.good_bytes;
  return s;
}

// ---- sharding -------------------------------------------------------------------------------------

namespace {

std::optional<std::int64_t> to_int(const std::string& s) {
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno || *end != '\0') return std::nullopt;
  return v;
}

std::int64_t env_int(const std::function<const char*(const char*)>& getenv, const char* name) {
  const char* v = getenv(name);
  auto x = to_int(v ? v : "");
  if (!x) throw InvalidArgument(std::string(name) + ": expected an integer, got '" + (v ? v : "") + "'");
  return *x;
}

}  // namespace

Shard parse_shard(const std::string& spec, const std::string& what) {
  const std::size_t slash = spec.find('/');
  auto i = to_int(spec.substr(0, slash));
  auto n = slash == std::string::npos ? std::nullopt : to_int(spec.substr(slash + 1));
  if (!i || !n) throw InvalidArgument(what + ": expected I/N, got '" + spec + "'");
  if (*n < 1 || *i < 0 || *i >= *n)
    throw InvalidArgument(what + ": " + spec + " is not a shard (0 <= I < N)");
  return Shard{*i, *n, what};
}

Shard resolve_shard(const std::optional<std::string>& flag, std::optional<std::int64_t> num_shards,
                    const std::function<const char*(const char*)>& getenv) {
  if (flag) return parse_shard(*flag, "--shard");
  if (getenv("SLURM_ARRAY_TASK_ID") && num_shards) {
    // The task id is the shard index itself: right also for a task resubmitted alone
    // (sbatch --array=2 is an array of one, whose COUNT is 1 and MIN 2).
    const std::int64_t i = env_int(getenv, "SLURM_ARRAY_TASK_ID");
    return parse_shard(std::to_string(i) + "/" + std::to_string(*num_shards), "SLURM_ARRAY_TASK_ID");
  }
  if (getenv("SLURM_ARRAY_TASK_ID")) {
    if (!getenv("SLURM_ARRAY_TASK_COUNT"))
      throw InvalidArgument("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not");
    std::int64_t i = env_int(getenv, "SLURM_ARRAY_TASK_ID");
    const std::int64_t n = env_int(getenv, "SLURM_ARRAY_TASK_COUNT");
    if (getenv("SLURM_ARRAY_TASK_MIN")) i -= env_int(getenv, "SLURM_ARRAY_TASK_MIN");
    return parse_shard(std::to_string(i) + "/" + std::to_string(n), "SLURM_ARRAY_TASK_ID");
  }
  if (getenv("JOB_COMPLETION_INDEX")) {
    if (!num_shards)
      throw InvalidArgument("JOB_COMPLETION_INDEX is set (Kubernetes Indexed Job): give --num-shards N (the job's "
                            "completions), or --shard I/N");
    const std::int64_t i = env_int(getenv, "JOB_COMPLETION_INDEX");
    return parse_shard(std::to_string(i) + "/" + std::to_string(*num_shards), "JOB_COMPLETION_INDEX");
  }
  if (num_shards)
    throw InvalidArgument("--num-shards needs SLURM_ARRAY_TASK_ID (Slurm job array) or JOB_COMPLETION_INDEX "
                          "(Kubernetes Indexed Job); else use --shard I/N");
  return Shard{};
}

std::string shard_path(const std::string& pattern, std::int64_t index) {
  std::string out;
  const std::string token = "{shard}";
  std::size_t pos = 0;
  for (;;) {
    const std::size_t at = pattern.find(token, pos);
    if (at == std::string::npos) break;
    out += pattern.substr(pos, at - pos) + std::to_string(index);
    pos = at + token.size();
  }
  return out + pattern.substr(pos);
}

// ---- merge --------------------------------------------------------------------------------------

MergeResult merge_records(const std::vector<std::string>& parts,
                          const std::optional<std::vector<std::string>>& expected) {
  MergeResult m;
  std::unordered_map<std::string, int> count;
  for (const auto& part : parts) {
    RecordFile r = read_records(part, output_format(part, ""));
    ++m.files;
    if (r.torn())
      m.torn.push_back(part + ": dropped a torn last record (" + std::to_string(r.size - r.good_bytes) + " bytes)");
    for (auto& rec : r.records) {
      const std::string id = rec["id"].get<std::string>();
      if (++count[id] == 1) m.records.push_back(std::move(rec));
      else if (count[id] == 2) m.duplicates.push_back(id);
    }
  }
  if (expected)
    for (const auto& id : *expected)
      if (!count.count(id)) m.missing.push_back(id);
  return m;
}

}  // namespace instructblip::bulk
