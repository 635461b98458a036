#include "instructblip/io/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

namespace instructblip::io {

// ---- MappedFile ---------------------------------------------------------------

std::shared_ptr<const MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IoError(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw IoError(path + ": cannot stat: " + std::strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IoError(path + ": not a regular file");
  }
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->size_ = std::size_t(st.st_size);
  if (m->size_ > 0) {
    void* p = ::mmap(nullptr, m->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      throw IoError(path + ": cannot map: " + std::strerror(e));
    }
    m->data_ = static_cast<const std::uint8_t*>(p);
  }
  ::close(fd);
  return m;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<std::uint8_t*>(data_), size_);
}

// ---- SafeTensors --------------------------------------------------------------

namespace {

[[noreturn]] void bad(const std::string& file, const std::string& what) {
  throw FormatError(file + ": invalid safetensors file: " + what);
}

std::uint64_t as_u64(const nlohmann::json& v, const std::string& file, const std::string& what) {
  if (!v.is_number_integer() || (v.is_number_integer() && !v.is_number_unsigned() && v.get<std::int64_t>() < 0))
    bad(file, what + " must be a non-negative integer");
  return v.get<std::uint64_t>();
}

}  // namespace

SafeTensors SafeTensors::open(const std::string& path, const SafeTensorsLimits& limits) {
  auto mapped = MappedFile::open(path);
  SafeTensors st = from_buffer(mapped->data(), mapped->size(), path, mapped, limits);
  st.mapped_ = true;
  return st;
}

void SafeTensors::release_pages(const std::string& name) const {
  if (!mapped_) return;
  auto it = infos_.find(name);
  if (it == infos_.end()) return;
  const std::uintptr_t page = std::uintptr_t(::sysconf(_SC_PAGESIZE));
  const std::uintptr_t b = reinterpret_cast<std::uintptr_t>(data_block_ + it->second.begin);
  const std::uintptr_t e = reinterpret_cast<std::uintptr_t>(data_block_ + it->second.end);
  const std::uintptr_t pb = (b + page - 1) / page * page, pe = e / page * page;  // whole pages inside
  if (pe > pb) ::madvise(reinterpret_cast<void*>(pb), pe - pb, MADV_DONTNEED);
}

SafeTensors SafeTensors::from_buffer(const std::uint8_t* data, std::size_t size, const std::string& name,
                                     std::shared_ptr<const void> owner, const SafeTensorsLimits& limits) {
  if (size < 8) bad(name, "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > size - 8)
    bad(name, "header length " + std::to_string(n) + " exceeds the file size " + std::to_string(size));
  if (n > limits.max_header_bytes)
    bad(name, "header length " + std::to_string(n) + " exceeds the limit of " +
                  std::to_string(limits.max_header_bytes) + " bytes");
  const char* hbeg = reinterpret_cast<const char*>(data + 8);
  nlohmann::json header = nlohmann::json::parse(hbeg, hbeg + n, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) bad(name, "header is not well-formed JSON");
  if (!header.is_object()) bad(name, "header is not a JSON object");
  if (header.size() > limits.max_tensors + 1)
    bad(name, "header lists " + std::to_string(header.size()) + " entries, more than the limit of " +
                  std::to_string(limits.max_tensors));

  SafeTensors st;
  st.path_ = name;
  st.owner_ = std::move(owner);
  st.size_ = size;
  st.data_block_ = data + 8 + n;
  const std::uint64_t block = size - 8 - n;

  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    const auto& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object()) bad(name, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) bad(name, "__metadata__." + m.key() + " is not a string");
        st.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + key + "'";
    if (!v.is_object()) bad(name, where + " entry is not an object");
    auto d = v.find("dtype");
    auto s = v.find("shape");
    auto o = v.find("data_offsets");
    if (d == v.end() || s == v.end() || o == v.end())
      bad(name, where + " lacks one of dtype, shape, data_offsets");
    if (!d->is_string()) bad(name, where + " dtype is not a string");
    TensorInfo info{};
    if (!parse_dtype(d->get<std::string>(), &info.dtype))
      bad(name, where + " has unsupported dtype '" + d->get<std::string>() + "'");
    if (!s->is_array()) bad(name, where + " shape is not an array");
    if (s->size() > limits.max_rank) bad(name, where + " has rank " + std::to_string(s->size()));
    std::uint64_t numel = 1;
    bool overflow = false;
    for (const auto& dim : *s) {
      std::uint64_t x = as_u64(dim, name, where + " shape entry");
      if (x > std::uint64_t(std::numeric_limits<std::int64_t>::max())) overflow = true;
      if (x != 0 && numel > std::numeric_limits<std::uint64_t>::max() / x) overflow = true;
      else numel *= x;
      info.shape.push_back(std::int64_t(std::min<std::uint64_t>(x, std::uint64_t(std::numeric_limits<std::int64_t>::max()))));
    }
    const std::uint64_t esz = dtype_size(info.dtype);
    if (overflow || numel > std::numeric_limits<std::uint64_t>::max() / esz)
      bad(name, where + " shape " + shape_str(info.shape) + " overflows");
    if (!o->is_array() || o->size() != 2) bad(name, where + " data_offsets is not a pair");
    info.begin = as_u64((*o)[0], name, where + " data_offsets");
    info.end = as_u64((*o)[1], name, where + " data_offsets");
    if (info.end < info.begin) bad(name, where + " data_offsets end before begin");
    if (info.end > block)
      bad(name, where + " data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                    ") run past the data block of " + std::to_string(block) + " bytes");
    if (numel * esz != info.end - info.begin)
      bad(name, where + " shape " + shape_str(info.shape) + " x " + dtype_name(info.dtype) + " needs " +
                    std::to_string(numel * esz) + " bytes but data_offsets span " +
                    std::to_string(info.end - info.begin));
    if (info.end > info.begin) ranges.emplace_back(info.begin, info.end);
    st.infos_.emplace(key, std::move(info));
  }
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second)
      bad(name, "tensor data ranges overlap at byte " + std::to_string(ranges[i].first));
  return st;
}

std::vector<std::string> SafeTensors::names() const {
  std::vector<std::string> out;
  out.reserve(infos_.size());
  for (const auto& kv : infos_) out.push_back(kv.first);
  return out;
}

const TensorInfo& SafeTensors::info(const std::string& name) const {
  auto it = infos_.find(name);
  if (it == infos_.end()) throw TensorError("tensor '" + name + "' not found in " + path_);
  return it->second;
}

Tensor SafeTensors::get(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const std::uint8_t* p = data_block_ + ti.begin;
  if (reinterpret_cast<std::uintptr_t>(p) % dtype_size(ti.dtype) != 0) {
    // A header whose length is not a multiple of 8 leaves data misaligned: copy once.
    Tensor t = Tensor::empty(ti.shape, ti.dtype);
    std::memcpy(t.raw_mut(), p, t.nbytes());
    return t;
  }
  return Tensor::borrow(p, ti.shape, ti.dtype, owner_);
}

// ---- writer -------------------------------------------------------------------

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<const std::pair<std::string, Tensor>*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->first < b->first; });
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t off = 0;
  for (const auto* t : order) {
    if (t->first == "__metadata__") throw InvalidArgument("save_safetensors: reserved tensor name __metadata__");
    nlohmann::ordered_json e;
    e["dtype"] = dtype_name(t->second.dtype());
    e["shape"] = t->second.shape();
    e["data_offsets"] = {off, off + t->second.nbytes()};
    off += t->second.nbytes();
    header[t->first] = e;
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8 != 0) h.push_back(' ');
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw IoError(path + ": cannot open for writing");
  std::uint64_t n = h.size();
  char len[8];
  for (int i = 0; i < 8; ++i) len[i] = char((n >> (8 * i)) & 0xff);
  f.write(len, 8);
  f.write(h.data(), std::streamsize(h.size()));
  for (const auto* t : order)
    if (t->second.nbytes()) f.write(static_cast<const char*>(t->second.raw()), std::streamsize(t->second.nbytes()));
  if (!f) throw IoError(path + ": write failed");
}

}  // namespace instructblip::io
