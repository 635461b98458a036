#pragma once
// Reading (memory-mapped, zero-copy) and writing the safetensors format:
// 8-byte little-endian header length N, an N-byte JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the raw little-endian data block that the offsets index.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "instructblip/core/tensor.hpp"

namespace instructblip::io {

/// Limits a header must respect; anything beyond is rejected before allocation.
struct SafeTensorsLimits {
  std::uint64_t max_header_bytes = 100ull << 20;  // 100 MiB of JSON
  std::size_t max_tensors = 1u << 20;
  std::size_t max_rank = 8;
};

/// A read-only memory map of a whole file. Shared by every tensor view into it.
class MappedFile {
 public:
  static std::shared_ptr<const MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  std::string path_;
};

struct TensorInfo {
  DType dtype;
  Shape shape;
  std::uint64_t begin = 0;  // byte offsets relative to the data block
  std::uint64_t end = 0;
};

/// One .safetensors file, validated at open: header length inside the file, well-formed JSON,
/// known dtypes, shape x dtype size equal to the byte range, ranges inside the data block and
/// not overlapping. Tensors are handed out as views into the mapping (no copy).
class SafeTensors {
 public:
  static SafeTensors open(const std::string& path, const SafeTensorsLimits& limits = {});
  /// Parses an in-memory buffer (kept alive by `owner`); `name` is used in messages.
  static SafeTensors from_buffer(const std::uint8_t* data, std::size_t size, const std::string& name,
                                 std::shared_ptr<const void> owner, const SafeTensorsLimits& limits = {});

  const std::string& path() const { return path_; }
  std::size_t size() const { return infos_.size(); }
  bool contains(const std::string& name) const { return infos_.count(name) != 0; }
  std::vector<std::string> names() const;
  const TensorInfo& info(const std::string& name) const;
  /// Zero-copy view; throws TensorError naming the tensor and the file if absent.
  Tensor get(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// Bytes of the mapped file.
  std::size_t file_bytes() const { return size_; }
  /// For a file opened with open(): tells the kernel the mapped pages wholly inside tensor
  /// `name`'s bytes are not needed now (madvise MADV_DONTNEED on the read-only private mapping, so
  /// views stay valid and re-read the file on access). No effect for from_buffer().
  void release_pages(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<const void> owner_;
  const std::uint8_t* data_block_ = nullptr;
  std::size_t size_ = 0;
  std::map<std::string, TensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
  bool mapped_ = false;  // opened with open(): the data is a private read-only file mapping
};

/// Writes tensors (any supported dtype) to `path` in safetensors format, names sorted as
/// the reference implementation does. Throws IoError if the file cannot be written.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace instructblip::io
