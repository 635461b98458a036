#pragma once
// Record files of a bulk captioning run (JSONL or RFC 4180 CSV): writing one record per item,
// reading them back (resume, merge) with detection of a torn last record, and sharding.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>

#include "instructblip/core/error.hpp"

namespace instructblip::bulk {

enum class Format { Jsonl, Csv };

/// `flag` ("jsonl", "csv" or "" for: by the extension of `path`, `.csv` -> CSV, else JSONL).
/// InvalidArgument for another flag value.
Format output_format(const std::string& path, const std::string& flag);
const char* format_name(Format f);

/// The CSV header row: id,image,prompt,text,error (CRLF-terminated, every field quoted).
std::string csv_header();

/// A record as written (JSONL keys in this order: id, image | tar + key, prompt, text, sequences,
/// ms, error, txt, json; CSV: id, image (or <tar>/<key>), prompt, text, error).
/// One line of JSONL ending in "\n", or one CSV record ending in CRLF.
std::string format_record(const nlohmann::ordered_json& record, Format f);

/// What a record file holds.
struct RecordFile {
  std::vector<nlohmann::ordered_json> records;  // CSV records as objects with the five columns
  std::uint64_t good_bytes = 0;  // offset just past the last complete record
  std::uint64_t size = 0;        // the file's size; > good_bytes when the last record is torn
  bool torn() const { return size > good_bytes; }
};

/// Reads a JSONL or CSV record file. A torn last record (no final line break, a last JSONL line that
/// does not parse or is not an object with a string "id", a CSV record with unbalanced quotes or
/// the wrong field count) ends the records at good_bytes. FormatError (naming file:line) for a file
/// of the other format or a bad earlier record; IoError when it cannot be read.
RecordFile read_records(const std::string& path, Format f);

/// Appends records to a file (or writes them to a descriptor such as stdout): one write() per
/// record, so a killed run leaves at most one torn last line.
class RecordWriter {
 public:
  /// Opens `path` for appending (created when missing; emptied with `truncate_to` = 0; cut to
  /// `truncate_to` bytes otherwise, for dropping a torn tail). IoError when it cannot be opened.
  RecordWriter(const std::string& path, Format f, std::optional<std::uint64_t> truncate_to);
  /// Writes to an open descriptor (not closed).
  RecordWriter(int fd, Format f);
  ~RecordWriter();
  RecordWriter(const RecordWriter&) = delete;
  RecordWriter& operator=(const RecordWriter&) = delete;

  /// IoError when the write fails (the record is then not complete in the file).
  void write(const nlohmann::ordered_json& record);
  Format format() const { return format_; }

 private:
  void write_all(const std::string& bytes);
  int fd_ = -1;
  bool owned_ = false;
  bool need_header_ = false;
  Format format_;
  std::string name_;
};

/// IoError unless `path` can be opened for appending as a regular file (it is created, empty, when
/// missing): checked before any slow work so that a bad --output fails at once.
void check_writable(const std::string& path);

/// The ids of the records in an existing output, and what was torn off its end.
struct ResumeState {
  std::unordered_set<std::string> done;
  std::uint64_t keep_bytes = 0;   // truncate the file to this before appending
  std::uint64_t torn_bytes = 0;   // bytes of a torn last record (0: none)
  std::size_t records = 0;
};
/// Reads `path` when it exists (ResumeState{} when it does not). FormatError / IoError as read_records.
ResumeState resume_state(const std::string& path, Format f);

// ---- sharding ---------------------------------------------------------------------------------

struct Shard {
  std::int64_t index = 0, count = 1;
  std::string source = "default";  // "--shard", "SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX", "default"
  bool contains(std::size_t item_index) const { return std::int64_t(item_index % std::size_t(count)) == index; }
};

/// "I/N" with 0 <= I < N. InvalidArgument naming `what` otherwise.
Shard parse_shard(const std::string& spec, const std::string& what = "--shard");

/// The shard of this process: `--shard` when given; else SLURM_ARRAY_TASK_ID / _COUNT (minus
/// SLURM_ARRAY_TASK_MIN when set); else JOB_COMPLETION_INDEX with `num_shards` (--num-shards);
/// else 0/1. InvalidArgument for malformed or inconsistent values. `getenv` is injectable for tests.
Shard resolve_shard(const std::optional<std::string>& flag, std::optional<std::int64_t> num_shards,
                    const std::function<const char*(const char*)>& getenv);

/// `pattern` with every "{shard}" replaced by the shard index.
std::string shard_path(const std::string& pattern, std::int64_t index);

// ---- merge --------------------------------------------------------------------------------------

struct MergeResult {
  std::vector<nlohmann::ordered_json> records;  // first occurrence of each id, parts in order
  std::size_t files = 0;
  std::vector<std::string> duplicates;  // ids found more than once (each listed once)
  std::vector<std::string> missing;     // expected ids without a record, in expected order
  std::vector<std::string> torn;        // one line per part whose torn last record was dropped
};

/// Merges record files (format of each by its extension). `expected`: the ids the run's inputs
/// enumerate (unset: nothing counts as missing).
MergeResult merge_records(const std::vector<std::string>& parts,
                          const std::optional<std::vector<std::string>>& expected);

}  // namespace instructblip::bulk
