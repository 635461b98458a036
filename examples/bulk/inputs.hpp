#pragma once
// The items of a bulk captioning run: images found in directories, listed by JSONL / CSV manifests,
// or held in webdataset tar shards (read as a stream with libarchive, never extracted).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "instructblip/core/error.hpp"

struct archive;

namespace instructblip::bulk {

/// A bad input: a missing path, an unsupported kind, a malformed manifest line, a duplicate id.
/// `file` and `line` (1-based; 0 when the error is not about one line) locate it; what() reads
/// "file:line: ...". A usage error: the tool exits with status 2.
class InputError : public InvalidArgument {
 public:
  InputError(const std::string& file, std::size_t line, const std::string& message);
  std::string file;
  std::size_t line = 0;
};

enum class ItemKind { File, TarMember };

struct Item {
  std::size_t index = 0;  // position in the list over all inputs (sharding works on it)
  std::string id;
  ItemKind kind = ItemKind::File;
  std::string path;       // File: the image path as opened; TarMember: the tar path as given
  std::string key;        // TarMember: the sample key
  std::string member;     // TarMember: the image member's path in the tar ("" when the sample has none)
  std::uint64_t member_size = 0;
  std::optional<std::string> prompt;  // a manifest's prompt
  std::optional<std::string> txt;     // TarMember: the sample's .txt member
  std::optional<nlohmann::ordered_json> json;  // TarMember: its .json member (parsed, else the raw string)
  std::string where;      // where the item was found, for messages ("list.jsonl:3", "shard.tar")
};

struct Enumeration {
  std::vector<Item> items;
  /// Problems that do not stop the run (a tar shard that ends early: its samples up to there are
  /// items, the rest cannot be known). One line each.
  std::vector<std::string> warnings;
};

/// True for the extensions a directory contributes (jpg, jpeg, png, webp, bmp, gif, tga, pnm, ppm,
/// pgm, pbm; any case).
bool is_image_extension(const std::string& filename);

/// Enumerates every input in the order given: directories (recursive, byte-wise sorted relative
/// paths, hidden entries skipped), *.jsonl and *.csv manifests, *.tar webdataset shards.
/// InputError for anything else, a malformed manifest line, or an id seen twice.
Enumeration enumerate_inputs(const std::vector<std::string>& inputs);

/// Reads the image members of one tar shard's samples in archive order, in one streaming pass.
/// Ask for the samples in the order they were enumerated (skipped samples are passed over without
/// reading their data). Once the archive fails (truncated, corrupt), every later read throws the
/// same IoError.
class TarImageReader {
 public:
  explicit TarImageReader(std::string tar_path);
  ~TarImageReader();
  TarImageReader(const TarImageReader&) = delete;
  TarImageReader& operator=(const TarImageReader&) = delete;

  const std::string& path() const { return path_; }
  /// The bytes of `item.member`. IoError when the archive fails before or inside it, or when the
  /// member is not found after the previous one; InvalidArgument when it is larger than
  /// `max_bytes` (0: no limit), without reading it.
  std::vector<std::uint8_t> read(const Item& item, std::uint64_t max_bytes);

 private:
  std::string path_;
  ::archive* a_ = nullptr;
  std::string failure_;
};

}  // namespace instructblip::bulk
