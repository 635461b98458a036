#include "csv.hpp"

namespace instructblip::bulk {

namespace {

// CRLF or LF at `pos` (a lone CR is data).
bool line_break_at(std::string_view d, std::size_t pos) {
  return d[pos] == '\n' || (d[pos] == '\r' && pos + 1 < d.size() && d[pos + 1] == '\n');
}

}  // namespace

CsvStatus read_csv_record(std::string_view d, std::size_t& pos, std::vector<std::string>& fields,
                          std::size_t& lines) {
  fields.clear();
  if (pos >= d.size()) return CsvStatus::End;
  std::string field;
  for (;;) {
    field.clear();
    if (pos < d.size() && d[pos] == '"') {
      ++pos;
      for (;;) {
        if (pos >= d.size()) {
          fields.push_back(field);
          return CsvStatus::Unterminated;
        }
        const char c = d[pos++];
        if (c == '"') {
          if (pos < d.size() && d[pos] == '"') {
            field += '"';
            ++pos;
          } else {
            break;
          }
        } else {
          if (c == '\n') ++lines;
          field += c;
        }
      }
      // after the closing quote: a separator, a line break or the end
      if (pos < d.size() && d[pos] != ',' && !line_break_at(d, pos)) {
        fields.push_back(field);
        return CsvStatus::BadQuote;
      }
    } else {
      while (pos < d.size() && d[pos] != ',' && !line_break_at(d, pos)) field += d[pos++];
    }
    fields.push_back(field);
    if (pos >= d.size()) return CsvStatus::NoLineEnd;
    if (d[pos] == ',') {
      ++pos;
      continue;
    }
    pos += d[pos] == '\r' ? 2 : 1;
    ++lines;
    return CsvStatus::Ok;
  }
}

std::string csv_record(const std::vector<std::string>& fields) {
  std::string out;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i) out += ',';
    out += '"';
    for (char c : fields[i]) {
      if (c == '"') out += '"';
      out += c;
    }
    out += '"';
  }
  out += "\r\n";
  return out;
}

}  // namespace instructblip::bulk
