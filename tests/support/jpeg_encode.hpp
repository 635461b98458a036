#pragma once
// A JPEG encoder for tests and benchmarks (not part of the library: the library only decodes).
#include <cstdint>
#include <vector>

#include "instructblip/processing/image.hpp"

namespace instructblip {

/// Encodes an RGB image as a baseline (or progressive) JFIF JPEG with libjpeg-turbo at `quality`
/// (1..100, 4:2:0 chroma subsampling, libjpeg's standard tables). The bytes are not meant to equal
/// Pillow's encoder output. InvalidArgument for an empty image or a quality outside 1..100.
std::vector<std::uint8_t> encode_jpeg(const Image& image, int quality = 90, bool progressive = false);

}  // namespace instructblip
