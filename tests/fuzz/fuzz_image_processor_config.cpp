// libFuzzer harness: preprocessor_config.json parsing (ImageProcessorConfig / ImageProcessor).
// Input: JSON text (non-JSON inputs are dropped). A config from_json accepts must build an
// ImageProcessor and preprocess a small fixed image without throwing (the preprocessing is
// skipped when the configured output is above 1 MPixel: accepted, but legitimately expensive).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fuzz_common.hpp"
#include "instructblip/core/error.hpp"
#include "instructblip/processing/image.hpp"
#include "instructblip/processing/image_processor.hpp"

using namespace instructblip;
using json = nlohmann::json;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const json j = json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  ImageProcessorConfig cfg;
  try {
    cfg = ImageProcessorConfig::from_json(j);
  } catch (const Error&) {
    return 0;
  }
  try {
    const ImageProcessor proc(cfg);
    const ImageProcessor again = ImageProcessor::from_json(j);
    IB_FUZZ_CHECK(again.height() == proc.height() && again.width() == proc.width(), "from_json differs");
    IB_FUZZ_CHECK(proc.height() > 0 && proc.width() > 0, "non-positive size accepted");
    if (std::int64_t(proc.height()) * proc.width() <= (1 << 20)) {
      std::vector<std::uint8_t> rgb(13 * 7 * 3);
      for (std::size_t i = 0; i < rgb.size(); ++i) rgb[i] = std::uint8_t(i * 37);
      const Image img = Image::from_rgb(13, 7, rgb);
      const Tensor px = proc.preprocess(img);
      const int h = cfg.do_resize ? proc.height() : 7, w = cfg.do_resize ? proc.width() : 13;
      IB_FUZZ_CHECK(px.shape() == (Shape{1, 3, h, w}), "pixel_values shape");
    }
  } catch (const Error& e) {
    IB_FUZZ_CHECK(false, std::string("an accepted preprocessor config fails later: ") + e.what());
  }
  return 0;
}
