#pragma once
// Nesting bound for the JSON files the library reads (private to src/). nlohmann's parser is
// iterative, but copying, comparing and dump()ing a value recurse once per level: a file of
// "[[[[...]]]]" a few hundred thousand levels deep would overflow the stack. Real configs nest
// about three levels.
#include <cstddef>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

namespace instructblip::detail {

constexpr std::size_t kMaxJsonDepth = 64;

/// True if `j` nests arrays / objects more than `limit` levels deep (checked without recursion).
/// Json: nlohmann::json or nlohmann::ordered_json.
template <class Json = nlohmann::json>
bool nested_deeper_than(const Json& j, std::size_t limit = kMaxJsonDepth) {
  std::vector<std::pair<const Json*, std::size_t>> pending{{&j, 0}};
  while (!pending.empty()) {
    const auto [v, depth] = pending.back();
    pending.pop_back();
    if (!v->is_structured()) continue;
    if (depth >= limit) return true;
    for (const Json& e : *v) pending.emplace_back(&e, depth + 1);
  }
  return false;
}

}  // namespace instructblip::detail
