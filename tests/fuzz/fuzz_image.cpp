// libFuzzer harness: image decoding (JPEG, PNG, GIF, BMP, PNM, TGA, WebP) and BlipImageProcessor.
// Input: an encoded image. decode_image runs with a 4-megapixel limit (larger images are refused
// from the header, so the fuzzer cannot run out of memory); a decoded image is then preprocessed
// by one of a few processors (sizes, filters and flags picked by the last input byte; large
// resizes go to a small output size to keep the fuzzer fast). A PNG is decoded a second time with
// its chunk CRCs repaired, so that mutations get past the checksum test.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz_common.hpp"
#include "instructblip/core/error.hpp"
#include "instructblip/processing/image.hpp"
#include "instructblip/processing/image_processor.hpp"

using namespace instructblip;

namespace {

std::vector<ImageProcessor>* g_procs = nullptr;

ImageProcessor make(int h, int w, Resample r, bool resize = true, bool rescale = true) {
  ImageProcessorConfig c;
  c.height = h;
  c.width = w;
  c.resample = r;
  c.do_resize = resize;
  c.do_rescale = rescale;
  return ImageProcessor(c);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  static std::vector<ImageProcessor> procs = {
      ImageProcessor(),                        // BlipImageProcessor defaults: 384x384 bicubic
      make(224, 224, Resample::Bicubic),       // InstructBLIP's preprocessor_config.json
      make(5, 300, Resample::Lanczos),
      make(1, 1, Resample::Box),
      make(33, 17, Resample::Bilinear),
      make(48, 64, Resample::Hamming),
      make(31, 20, Resample::Nearest),
      make(224, 224, Resample::Bicubic, /*resize=*/false, /*rescale=*/false),
  };
  g_procs = &procs;
  return 0;
}

namespace {

/// The input with every complete PNG chunk's CRC recomputed, or empty if it is not a PNG or
/// nothing changed. Most mutations of a PNG break a checksum, which the decoder checks first;
/// decoding the repaired copy too lets them reach the chunk and pixel parsing behind it.
std::vector<std::uint8_t> with_png_crcs_fixed(const std::uint8_t* data, std::size_t size) {
  static const std::uint8_t sig[8] = {137, 80, 78, 71, 13, 10, 26, 10};
  if (size < 8 || std::memcmp(data, sig, 8) != 0) return {};
  std::vector<std::uint8_t> out(data, data + size);  // exactly `size` bytes: ASan sees over-reads
  bool changed = false;
  std::size_t pos = 8;
  while (size - pos >= 12) {
    const std::uint32_t len = (std::uint32_t(out[pos]) << 24) | (std::uint32_t(out[pos + 1]) << 16) |
                              (std::uint32_t(out[pos + 2]) << 8) | out[pos + 3];
    if (len > size - pos - 12) break;
    std::uint32_t crc = 0xFFFFFFFFu;
    for (std::size_t i = pos + 4; i < pos + 8 + len; ++i) {
      crc ^= out[i];
      for (int k = 0; k < 8; ++k) crc = (crc & 1) ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
    }
    crc = ~crc;
    for (int b = 0; b < 4; ++b) {
      const std::uint8_t v = std::uint8_t(crc >> (24 - 8 * b));
      changed = changed || out[pos + 8 + len + b] != v;
      out[pos + 8 + len + b] = v;
    }
    pos += 12 + std::size_t(len);
  }
  if (!changed) return {};
  return out;
}

void decode_and_preprocess(const std::uint8_t* data, std::size_t size);

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  decode_and_preprocess(data, size);
  const std::vector<std::uint8_t> fixed = with_png_crcs_fixed(data, size);
  if (!fixed.empty()) decode_and_preprocess(fixed.data(), fixed.size());
  return 0;
}

namespace {

void decode_and_preprocess(const std::uint8_t* data, std::size_t size) {
  ImageLoadOptions opt;
  opt.max_pixels = 4u << 20;
  Image img;
  try {
    img = decode_image(data, size, opt, "fuzz");
  } catch (const Error&) {
    return;
  }
  IB_FUZZ_CHECK(img.width > 0 && img.height > 0, "empty image decoded");
  IB_FUZZ_CHECK(img.num_pixels() <= opt.max_pixels, "max_pixels not enforced");
  IB_FUZZ_CHECK(img.rgb.size() == img.num_pixels() * 3, "inconsistent RGB buffer");
  // Resizing costs about out_width * in_height + out_height * in_width filter taps (Pillow's
  // horizontal pass runs over every input row): a 95-byte RLE TGA can be 4 x 11528 pixels, which
  // the 384 x 384 processor then takes a second to resize under the sanitizers. Keep the fuzzer
  // fast: large jobs go to the 33 x 17 processor, and if even that is too slow (a 1 x 4M PNG), to
  // the one without resize.
  auto cost = [&](const ImageProcessor& p) -> std::uint64_t {
    if (!p.config().do_resize) return 0;
    return std::uint64_t(p.width()) * std::uint64_t(img.height) + std::uint64_t(p.height()) * std::uint64_t(img.width);
  };
  const ImageProcessor* proc = &(*g_procs)[data[size - 1] % g_procs->size()];
  if (cost(*proc) > (1u << 18)) proc = &(*g_procs)[4];
  if (cost(*proc) > (1u << 18)) proc = &(*g_procs)[7];
  try {
    const Tensor px = proc->preprocess(img);
    const int h = proc->config().do_resize ? proc->height() : img.height;
    const int w = proc->config().do_resize ? proc->width() : img.width;
    IB_FUZZ_CHECK(px.shape() == (Shape{1, 3, h, w}), "pixel_values shape");
  } catch (const Error& e) {
    IB_FUZZ_CHECK(false, std::string("preprocessing a decoded image failed: ") + e.what());
  }
}

}  // namespace
