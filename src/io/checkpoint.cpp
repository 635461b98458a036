#include "instructblip/io/checkpoint.hpp"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>
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

std::map<std::string, std::string> Checkpoint::metadata() const {
  std::map<std::string, std::string> out;
  for (const auto& f : files_)
    for (const auto& kv : f->metadata()) out.insert(kv);
  return out;
}

void Checkpoint::release_pages(const std::string& name) const {
  auto it = where_.find(name);
  if (it != where_.end()) it->second->release_pages(name);
}

namespace {

void make_dirs(const std::string& dir) {
  std::string cur;
  std::size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    cur = dir.substr(0, pos);
    if (cur.empty() || is_dir(cur)) continue;
    if (::mkdir(cur.c_str(), 0755) != 0 && errno != EEXIST)
      throw IoError(cur + ": cannot create directory: " + std::strerror(errno));
  }
  if (!is_dir(dir)) throw IoError(dir + ": not a directory");
}

void remove_weight_files(const std::string& dir) {
  static const std::regex shard(R"(model-\d+-of-\d+\.safetensors)");
  std::vector<std::string> victims;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n == "model.safetensors" || n == "model.safetensors.index.json" || std::regex_match(n, shard))
        victims.push_back(join(dir, n));
    }
    ::closedir(d);
  }
  for (const std::string& v : victims)
    if (::unlink(v.c_str()) != 0) throw IoError(v + ": cannot remove: " + std::strerror(errno));
}

std::string shard_name(std::size_t i, std::size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

}  // namespace

void save_checkpoint(const std::string& dir, const std::vector<std::pair<std::string, Tensor>>& tensors,
                     const std::map<std::string, std::string>& metadata, std::size_t max_shard_bytes) {
  make_dirs(dir);
  remove_weight_files(dir);
  std::vector<std::vector<std::pair<std::string, Tensor>>> shards(1);
  std::size_t in_shard = 0, total = 0;
  for (const auto& t : tensors) {
    const std::size_t b = t.second.nbytes();
    if (in_shard > 0 && in_shard + b > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(t);
    in_shard += b;
    total += b;
  }
  if (shards.size() == 1) {
    save_safetensors(join(dir, "model.safetensors"), shards[0], metadata);
    return;
  }
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total}};
  nlohmann::ordered_json map = nlohmann::ordered_json::object();
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const std::string name = shard_name(i, shards.size());
    save_safetensors(join(dir, name), shards[i], metadata);
    for (const auto& t : shards[i]) map[t.first] = name;
  }
  index["weight_map"] = map;
  const std::string path = join(dir, "model.safetensors.index.json");
  std::ofstream f(path, std::ios::trunc);
  if (!f) throw IoError(path + ": cannot open for writing");
  f << index.dump(2) << "\n";
  if (!f) throw IoError(path + ": write failed");
}

}  // namespace instructblip::io
