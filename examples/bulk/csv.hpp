#pragma once
// RFC 4180 CSV, shared by the manifest reader (inputs) and the record files (records).
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace instructblip::bulk {

enum class CsvStatus {
  Ok,           // a record ending in a line break
  End,          // nothing left
  NoLineEnd,    // a record that runs to the end of the data without a line break
  Unterminated, // the data ends inside a quoted field
  BadQuote,     // a closing quote followed by something other than a comma or a line break
};

/// Reads the record starting at `pos` (fields unquoted, `""` -> `"`). A line break is CRLF or LF
/// (outside quotes); inside quotes everything is data. On return `pos` is past the record and
/// `lines` has grown by the line breaks it consumed. Unquoted fields keep a stray `"` as data
/// (as Python's csv module does).
CsvStatus read_csv_record(std::string_view data, std::size_t& pos, std::vector<std::string>& fields,
                          std::size_t& lines);

/// One record: every field quoted, `"` doubled, CRLF at the end.
std::string csv_record(const std::vector<std::string>& fields);

}  // namespace instructblip::bulk
