// libjpeg-turbo compression of an instructblip::Image (tests, benchmarks).
#include "jpeg_encode.hpp"

#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include <jpeglib.h>

#include "instructblip/core/error.hpp"

namespace instructblip {

namespace {

struct JpegErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX + 64];
};

void jpeg_on_error(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

void jpeg_on_output(j_common_ptr) {}

struct JpegCompressGuard {
  jpeg_compress_struct* cinfo;
  unsigned char** buffer;
  ~JpegCompressGuard() {
    jpeg_destroy_compress(cinfo);
    std::free(*buffer);
  }
};

}  // namespace

std::vector<std::uint8_t> encode_jpeg(const Image& image, int quality, bool progressive) {
  if (image.empty() || image.rgb.size() != image.num_pixels() * 3)
    throw InvalidArgument("encode_jpeg: empty or inconsistent image");
  if (quality < 1 || quality > 100) throw InvalidArgument("encode_jpeg: quality must be in 1..100");
  if (image.width > 65500 || image.height > 65500) throw InvalidArgument("encode_jpeg: image too large for JPEG");
  std::vector<std::uint8_t> result;
  jpeg_compress_struct cinfo;
  JpegErrorManager jerr;
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  std::memset(&cinfo, 0, sizeof(cinfo));
  std::memset(&jerr, 0, sizeof(jerr));
  cinfo.err = jpeg_std_error(&jerr.pub);
  jerr.pub.error_exit = jpeg_on_error;
  jerr.pub.output_message = jpeg_on_output;
  JpegCompressGuard guard{&cinfo, &buffer};
  if (setjmp(jerr.jump)) throw InvalidArgument(std::string("encode_jpeg: ") + jerr.message);
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = JDIMENSION(image.width);
  cinfo.image_height = JDIMENSION(image.height);
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  if (progressive) jpeg_simple_progression(&cinfo);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(image.row(int(cinfo.next_scanline)));
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  result.assign(buffer, buffer + size);
  return result;
}

}  // namespace instructblip
