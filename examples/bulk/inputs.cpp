#include "inputs.hpp"

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <unordered_map>

#include "csv.hpp"

namespace fs = std::filesystem;

namespace instructblip::bulk {

InputError::InputError(const std::string& f, std::size_t l, const std::string& message)
    : InvalidArgument(f + (l ? ":" + std::to_string(l) : std::string()) + ": " + message), file(f), line(l) {}

namespace {

std::string lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
  return s;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A manifest's image path: relative to the manifest's directory unless absolute.
std::string resolve(const std::string& manifest, const std::string& image) {
  if (!image.empty() && image[0] == '/') return image;
  const fs::path dir = fs::path(manifest).parent_path();
  return dir.empty() ? image : (dir / image).string();
}

std::string join(const std::string& dir, const std::string& rel) {
  return (!dir.empty() && dir.back() == '/') ? dir + rel : dir + "/" + rel;
}

struct Collector {
  Enumeration out;
  std::unordered_map<std::string, std::string> seen;  // id -> where

  void add(Item item) {
    auto [it, fresh] = seen.emplace(item.id, item.where);
    if (!fresh) {
      const auto colon = item.where.rfind(':');
      const bool has_line = colon != std::string::npos && colon + 1 < item.where.size() &&
                            item.where.find_first_not_of("0123456789", colon + 1) == std::string::npos;
      throw InputError(has_line ? item.where.substr(0, colon) : item.where,
                       has_line ? std::stoul(item.where.substr(colon + 1)) : 0,
                       "duplicate id '" + item.id + "' (first at " + it->second + ")");
    }
    item.index = out.items.size();
    out.items.push_back(std::move(item));
  }
};

void enumerate_directory(const std::string& dir, Collector& c) {
  std::vector<std::string> rel;
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, ec), end;
  if (ec) throw InputError(dir, 0, "cannot read the directory: " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) throw InputError(dir, 0, "cannot read the directory: " + ec.message());
    const std::string name = it->path().filename().string();
    if (!name.empty() && name[0] == '.') {
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (!it->is_regular_file(ec) || !is_image_extension(name)) continue;
    rel.push_back(it->path().lexically_relative(dir).generic_string());
  }
  std::sort(rel.begin(), rel.end());  // byte-wise: the same order on every machine
  for (const auto& r : rel) {
    Item item;
    item.path = item.id = join(dir, r);
    item.where = dir;
    c.add(std::move(item));
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path, 0, "cannot open the file");
  std::string s((std::istreambuf_iterator<char>(in)), {});
  if (in.bad()) throw InputError(path, 0, "cannot read the file");
  return s;
}

void strip_bom(std::string_view& s) {
  if (s.size() >= 3 && s.substr(0, 3) == "\xEF\xBB\xBF") s.remove_prefix(3);
}

void enumerate_jsonl(const std::string& path, Collector& c) {
  const std::string data = read_file(path);
  std::string_view rest(data);
  strip_bom(rest);
  std::size_t line = 0;
  while (!rest.empty()) {
    ++line;
    const std::size_t nl = rest.find('\n');
    std::string_view text = rest.substr(0, nl);
    rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (text.find_first_not_of(" \t") == std::string_view::npos) continue;  // blank line
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      throw InputError(path, line, std::string("not JSON: ") + e.what());
    }
    if (!j.is_object()) throw InputError(path, line, "not a JSON object");
    auto image = j.find("image");
    if (image == j.end()) throw InputError(path, line, "no \"image\"");
    if (!image->is_string() || image->get<std::string>().empty())
      throw InputError(path, line, "\"image\" must be a non-empty string");
    Item item;
    item.path = resolve(path, image->get<std::string>());
    item.id = item.path;
    if (auto id = j.find("id"); id != j.end()) {
      if (id->is_string()) item.id = id->get<std::string>();
      else if (id->is_number_integer()) item.id = id->dump();
      else throw InputError(path, line, "\"id\" must be a string or an integer");
      if (item.id.empty()) throw InputError(path, line, "\"id\" is empty");
    }
    if (auto p = j.find("prompt"); p != j.end()) {
      if (!p->is_string()) throw InputError(path, line, "\"prompt\" must be a string");
      item.prompt = p->get<std::string>();
    }
    item.where = path + ":" + std::to_string(line);
    c.add(std::move(item));
  }
}

void enumerate_csv(const std::string& path, Collector& c) {
  const std::string data = read_file(path);
  std::string_view d(data);
  strip_bom(d);
  std::size_t pos = 0, lines = 0;
  std::vector<std::string> fields, header;
  auto next = [&](std::size_t& first_line) {
    for (;;) {
      first_line = lines + 1;
      const CsvStatus st = read_csv_record(d, pos, fields, lines);
      if (st == CsvStatus::End) return false;
      if (st == CsvStatus::Unterminated) throw InputError(path, first_line, "a quoted field is not closed");
      if (st == CsvStatus::BadQuote) throw InputError(path, first_line, "text after a closing quote");
      if (fields.size() == 1 && fields[0].empty()) continue;  // blank line
      return true;
    }
  };
  std::size_t line = 0;
  if (!next(line)) throw InputError(path, 1, "no header row");
  header = fields;
  std::ptrdiff_t image_col = -1, id_col = -1, prompt_col = -1;
  for (std::size_t i = 0; i < header.size(); ++i) {
    if (header[i] == "image" && image_col < 0) image_col = std::ptrdiff_t(i);
    if (header[i] == "id" && id_col < 0) id_col = std::ptrdiff_t(i);
    if (header[i] == "prompt" && prompt_col < 0) prompt_col = std::ptrdiff_t(i);
  }
  if (image_col < 0) throw InputError(path, line, "the header has no \"image\" column");
  while (next(line)) {
    if (fields.size() != header.size())
      throw InputError(path, line, std::to_string(fields.size()) + " fields, the header has " +
                                       std::to_string(header.size()));
    if (fields[std::size_t(image_col)].empty()) throw InputError(path, line, "empty \"image\"");
    Item item;
    item.path = resolve(path, fields[std::size_t(image_col)]);
    item.id = item.path;
    if (id_col >= 0) {
      if (fields[std::size_t(id_col)].empty()) throw InputError(path, line, "empty \"id\"");
      item.id = fields[std::size_t(id_col)];
    }
    if (prompt_col >= 0) item.prompt = fields[std::size_t(prompt_col)];
    item.where = path + ":" + std::to_string(line);
    c.add(std::move(item));
  }
}

// webdataset: the key is the member path up to the first dot of its basename, the rest its suffix.
void split_member(const std::string& name, std::string& key, std::string& suffix) {
  const std::size_t slash = name.rfind('/');
  const std::size_t dot = name.find('.', slash == std::string::npos ? 0 : slash + 1);
  key = name.substr(0, dot);
  suffix = dot == std::string::npos ? std::string() : lower(name.substr(dot + 1));
}

int image_rank(const std::string& suffix) {
  static const char* const order[] = {"jpg", "jpeg", "png", "webp"};
  for (int i = 0; i < 4; ++i)
    if (suffix == order[i]) return i;
  return -1;
}

struct ArchiveCloser {
  void operator()(::archive* a) const { archive_read_free(a); }
};

::archive* open_tar(const std::string& path) {
  ::archive* a = archive_read_new();
  archive_read_support_format_tar(a);
  if (archive_read_open_filename(a, path.c_str(), 1 << 16) != ARCHIVE_OK) {
    const std::string msg = archive_error_string(a) ? archive_error_string(a) : "cannot open";
    archive_read_free(a);
    throw IoError(path + ": " + msg);
  }
  return a;
}

std::string archive_message(::archive* a) {
  const char* m = archive_error_string(a);
  return m ? m : "read error";
}

void enumerate_tar(const std::string& path, Collector& c) {
  std::unique_ptr<::archive, ArchiveCloser> a;
  try {
    a.reset(open_tar(path));
  } catch (const IoError& e) {
    throw InputError(path, 0, std::string("cannot read the tar shard: ") + e.what());
  }
  struct Sample {
    std::string key, member;
    std::uint64_t size = 0;
    int rank = 99;
    std::optional<std::string> txt;
    std::optional<nlohmann::ordered_json> json;
  };
  std::optional<Sample> cur;
  auto flush = [&] {
    if (!cur) return;
    Item item;
    item.kind = ItemKind::TarMember;
    item.path = path;
    item.key = cur->key;
    item.member = cur->member;
    item.member_size = cur->size;
    item.txt = std::move(cur->txt);
    item.json = std::move(cur->json);
    item.id = join(path, cur->key);
    item.where = path;
    c.add(std::move(item));
    cur.reset();
  };
  std::string failure;
  ::archive_entry* e = nullptr;
  for (;;) {
    const int r = archive_read_next_header(a.get(), &e);
    if (r == ARCHIVE_EOF) break;
    if (r < ARCHIVE_WARN) {
      failure = archive_message(a.get());
      break;
    }
    if (archive_entry_filetype(e) != AE_IFREG) continue;
    const std::string name = archive_entry_pathname(e) ? archive_entry_pathname(e) : "";
    const std::size_t base = name.rfind('/') == std::string::npos ? 0 : name.rfind('/') + 1;
    if (base < name.size() && name[base] == '.') continue;  // hidden (e.g. macOS "._x.jpg"): no key, as in webdataset
    std::string key, suffix;
    split_member(name, key, suffix);
    if (!cur || cur->key != key) {
      flush();
      cur.emplace();
      cur->key = key;
    }
    const int rank = image_rank(suffix);
    if (rank >= 0 && rank < cur->rank) {
      cur->rank = rank;
      cur->member = name;
      cur->size = std::uint64_t(std::max<la_int64_t>(0, archive_entry_size(e)));
    }
    if (suffix == "txt" || suffix == "json") {
      std::string text;
      char buf[1 << 14];
      la_ssize_t n;
      while ((n = archive_read_data(a.get(), buf, sizeof buf)) > 0) text.append(buf, std::size_t(n));
      if (n < 0) {
        failure = archive_message(a.get());
        break;
      }
      if (suffix == "txt") {
        cur->txt = std::move(text);
      } else {
        try {
          cur->json = nlohmann::ordered_json::parse(text);
        } catch (const nlohmann::json::exception&) {
          cur->json = text;  // passed through as it is
        }
      }
    } else if (archive_read_data_skip(a.get()) < ARCHIVE_WARN) {
      failure = archive_message(a.get());
      break;
    }
  }
  flush();
  if (!failure.empty())
    c.out.warnings.push_back(path + ": the tar shard ends early (" + failure + "); " +
                             "the samples after its last readable member are not known");
}

}  // namespace

bool is_image_extension(const std::string& filename) {
  const std::size_t dot = filename.rfind('.');
  if (dot == std::string::npos) return false;
  static const char* const exts[] = {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tga", "pnm", "ppm", "pgm", "pbm"};
  const std::string ext = lower(filename.substr(dot + 1));
  return std::any_of(std::begin(exts), std::end(exts), [&](const char* x) { return ext == x; });
}

Enumeration enumerate_inputs(const std::vector<std::string>& inputs) {
  Collector c;
  for (const auto& in : inputs) {
    std::error_code ec;
    const auto st = fs::status(in, ec);
    if (ec || !fs::exists(st)) throw InputError(in, 0, "no such file or directory");
    const std::string name = lower(in);
    if (fs::is_directory(st)) enumerate_directory(in, c);
    else if (ends_with(name, ".jsonl")) enumerate_jsonl(in, c);
    else if (ends_with(name, ".csv")) enumerate_csv(in, c);
    else if (ends_with(name, ".tar")) enumerate_tar(in, c);
    else throw InputError(in, 0, "not a directory, a .jsonl or .csv manifest or a .tar shard");
  }
  return std::move(c.out);
}

TarImageReader::TarImageReader(std::string tar_path) : path_(std::move(tar_path)) {
  try {
    a_ = open_tar(path_);
  } catch (const IoError& e) {
    failure_ = e.what();
  }
}

TarImageReader::~TarImageReader() {
  if (a_) archive_read_free(a_);
}

std::vector<std::uint8_t> TarImageReader::read(const Item& item, std::uint64_t max_bytes) {
  if (!failure_.empty()) throw IoError(failure_);
  ::archive_entry* e = nullptr;
  for (;;) {
    const int r = archive_read_next_header(a_, &e);
    if (r == ARCHIVE_EOF) throw IoError(path_ + ": member " + item.member + " not found");
    if (r < ARCHIVE_WARN) {
      failure_ = path_ + ": the tar shard ends early (" + archive_message(a_) + ")";
      throw IoError(failure_);
    }
    if (archive_entry_filetype(e) != AE_IFREG) continue;
    const char* name = archive_entry_pathname(e);
    if (!name || item.member != name) continue;  // the next header call skips its data
    const la_int64_t size = archive_entry_size(e);
    if (max_bytes && size > 0 && std::uint64_t(size) > max_bytes)
      throw InvalidArgument(item.member + ": " + std::to_string(size) + " bytes, more than --max-image-bytes " +
                            std::to_string(max_bytes));
    std::vector<std::uint8_t> bytes;
    bytes.reserve(std::size_t(std::max<la_int64_t>(0, size)));
    std::uint8_t buf[1 << 16];
    la_ssize_t n;
    while ((n = archive_read_data(a_, buf, sizeof buf)) > 0) bytes.insert(bytes.end(), buf, buf + n);
    if (n < 0) {
      failure_ = path_ + ": the tar shard ends early (" + archive_message(a_) + ")";
      throw IoError(failure_);
    }
    return bytes;
  }
}

}  // namespace instructblip::bulk
