#include "instructblip/io/checkpoint.hpp"

#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace instructblip::io {

namespace {

bool is_dir(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}
std::string join(const std::string& dir, const std::string& f) {
  return dir.empty() || dir.back() == '/' ? dir + f : dir + "/" + f;
}

}  // namespace

Checkpoint Checkpoint::open(const std::string& path, const ProgressFn& progress) {
  Checkpoint ck;
  if (!exists(path)) throw IoError(path + ": no such file or directory");
  std::vector<std::string> shard_files;
  std::map<std::string, std::string> weight_map;  // tensor -> shard file (sharded checkpoints)
  if (!is_dir(path)) {
    ck.dir_ = path;
    shard_files.push_back(path);
  } else {
    ck.dir_ = path;
    const std::string index = join(path, "model.safetensors.index.json");
    const std::string single = join(path, "model.safetensors");
    if (exists(index)) {
      std::ifstream f(index);
      if (!f) throw IoError(index + ": cannot open");
      std::stringstream ss;
      ss << f.rdbuf();
      auto j = nlohmann::json::parse(ss.str(), nullptr, false);
      if (j.is_discarded() || !j.is_object()) throw FormatError(index + ": not a well-formed JSON object");
      auto wm = j.find("weight_map");
      if (wm == j.end() || !wm->is_object()) throw FormatError(index + ": weight_map missing or not an object");
      std::set<std::string> uniq;
      for (auto it = wm->begin(); it != wm->end(); ++it) {
        if (!it.value().is_string()) throw FormatError(index + ": weight_map." + it.key() + " is not a string");
        const std::string shard = it.value().get<std::string>();
        if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..")
          throw FormatError(index + ": weight_map." + it.key() + " names '" + shard +
                            "', not a file in the checkpoint directory");
        weight_map[it.key()] = shard;
        if (uniq.insert(shard).second) shard_files.push_back(join(path, shard));
      }
      if (shard_files.empty()) throw FormatError(index + ": weight_map is empty");
    } else if (exists(single)) {
      shard_files.push_back(single);
    } else {
      throw IoError(path + ": no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)");
    }
  }
  std::map<std::string, const SafeTensors*> by_file;
  for (std::size_t i = 0; i < shard_files.size(); ++i) {
    if (!exists(shard_files[i])) throw IoError(shard_files[i] + ": shard listed in the index is missing");
    auto st = std::make_shared<SafeTensors>(SafeTensors::open(shard_files[i]));
    if (progress) progress(shard_files[i], st->file_bytes(), i, shard_files.size());
    by_file[shard_files[i]] = st.get();
    ck.files_.push_back(st);
  }
  if (weight_map.empty()) {
    for (const auto& st : ck.files_)
      for (const auto& n : st->names()) ck.where_[n] = st.get();
  } else {
    for (const auto& kv : weight_map) {
      const SafeTensors* st = by_file.at(join(path, kv.second));
      if (!st->contains(kv.first))
        throw TensorError("tensor '" + kv.first + "' is listed in model.safetensors.index.json but missing from " +
                          st->path());
      ck.where_[kv.first] = st;
    }
  }
  return ck;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

const std::string& Checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw TensorError("tensor '" + name + "' not found in checkpoint " + dir_);
  return it->second->path();
}

std::size_t Checkpoint::mapped_bytes() const {
  std::size_t n = 0;
  for (const auto& f : files_) n += f->file_bytes();
  return n;
}

Tensor Checkpoint::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw TensorError("tensor '" + name + "' not found in checkpoint " + dir_);
  return it->second->get(name);
}

Tensor Checkpoint::get(const std::string& name, const Shape& expected) const {
  Tensor t = get(name);
  if (t.shape() != expected)
    throw TensorError("tensor '" + name + "' in " + file_of(name) + " has shape " + shape_str(t.shape()) +
                      ", expected " + shape_str(expected));
  return t;
}

Tensor Checkpoint::get_f32(const std::string& name, const Shape& expected) const {
  Tensor t = get(name, expected);
  if (t.dtype() == DType::I64 || t.dtype() == DType::U8)
    throw TensorError("tensor '" + name + "' in " + file_of(name) + " has integer dtype " + dtype_name(t.dtype()) +
                      ", expected a floating-point weight");
  return t.to(DType::F32);
}

}  // namespace instructblip::io
