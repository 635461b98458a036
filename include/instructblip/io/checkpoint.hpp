#pragma once
// A HuggingFace checkpoint directory as `save_pretrained` writes it: config.json plus either
// model.safetensors or model.safetensors.index.json with its shards. Tensors are looked up by
// their HF names and handed out as zero-copy views of the memory-mapped files.
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "instructblip/io/safetensors.hpp"

namespace instructblip::io {

class Checkpoint {
 public:
  /// Called once per mapped file with its path and size (load progress).
  using ProgressFn = std::function<void(const std::string& file, std::size_t bytes, std::size_t index,
                                        std::size_t count)>;

  /// Opens a checkpoint directory (or a single .safetensors file). Throws IoError when the
  /// directory or a shard is missing, FormatError for a malformed file or index, TensorError
  /// when the index names a tensor its shard lacks.
  static Checkpoint open(const std::string& path, const ProgressFn& progress = nullptr);

  const std::string& dir() const { return dir_; }
  std::size_t size() const { return where_.size(); }
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  std::vector<std::string> names() const;
  /// The file that holds `name` (TensorError if absent).
  const std::string& file_of(const std::string& name) const;
  /// Sum of the mapped files' sizes.
  std::size_t mapped_bytes() const;
  std::size_t num_files() const { return files_.size(); }

  /// The safetensors "__metadata__" of the files (merged; the first file wins on conflicts).
  std::map<std::string, std::string> metadata() const;
  /// SafeTensors::release_pages(name) in the file that holds `name` (after the tensor was
  /// converted into a buffer of its own; views of it stay valid and re-read the file).
  void release_pages(const std::string& name) const;

  /// Zero-copy view of tensor `name` in its stored dtype.
  Tensor get(const std::string& name) const;
  /// As get(), and checks the shape: a mismatch is a TensorError naming tensor, file and shapes.
  Tensor get(const std::string& name, const Shape& expected) const;
  /// The tensor as float32: a view when stored as F32, else converted (exactly) to a new buffer.
  Tensor get_f32(const std::string& name, const Shape& expected) const;

 private:
  std::string dir_;
  std::vector<std::shared_ptr<SafeTensors>> files_;
  std::map<std::string, const SafeTensors*> where_;
};

/// Writes `tensors` as a checkpoint's weights into `dir` (created if missing): one
/// model.safetensors when they fit in `max_shard_bytes`, else model-0000i-of-0000n.safetensors
/// shards (tensors in the given order) and model.safetensors.index.json, as transformers'
/// save_pretrained lays them out. Weight files already in `dir` (model.safetensors, model-*-of-*
/// shards, the index) are removed first. IoError when `dir` cannot be created or written.
void save_checkpoint(const std::string& dir, const std::vector<std::pair<std::string, Tensor>>& tensors,
                     const std::map<std::string, std::string>& metadata, std::size_t max_shard_bytes);

}  // namespace instructblip::io
