#pragma once
// Unicode helpers with Python str semantics (character data and UTF-8 decoding from utf8proc), used
// by the tokenizers and the text streamer (private to src/, not installed).
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace instructblip::text {

/// The code points of `s`, which must be valid UTF-8 (see check_utf8); InvalidArgument otherwise.
std::u32string decode_utf8(std::string_view s);
/// Decodes the code point at byte `i` of `s` into *cp and returns its length in bytes; 0 when the
/// bytes there are not valid UTF-8 (truncated, overlong, surrogate, above U+10FFFF).
std::size_t next_code_point(std::string_view s, std::size_t i, char32_t* cp);
/// The longest prefix of `s` that is whole, valid UTF-8 sequences (a character cut off at the end,
/// or anything after the first invalid byte, is left out).
std::size_t valid_utf8_prefix(std::string_view s);
void append_utf8(std::string& out, char32_t cp);
std::string encode_utf8(const std::u32string& s);
/// Python's str.isspace() for one character (category Zs or bidirectional class WS / B / S).
bool is_python_space(char32_t cp);
/// Python's str.strip() / lstrip() / rstrip() without arguments.
std::string_view strip(std::string_view s);
std::string_view lstrip(std::string_view s);
std::string_view rstrip(std::string_view s);
/// Python's str.split() without arguments.
std::vector<std::string> split_whitespace(std::string_view s);
/// Python's str.lower() applied to one character (no context: capital sigma -> small sigma).
void append_lower(std::string& out, char32_t cp);
/// Python's str.lower() on a string, including the Final_Sigma rule.
std::string lower(std::string_view s);

}  // namespace instructblip::text
