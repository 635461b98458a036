/* The single implementation unit of stb_image (headers from Debian's libstb-dev).
 * Only the decoders the library uses are compiled in; JPEG goes through libjpeg-turbo
 * so that decoded pixels equal Pillow's. */
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO_UNUSED_WARNING
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_ONLY_TGA
#define STBI_ONLY_PNM
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#define STBI_MAX_DIMENSIONS (1 << 16)
#include <stb_image.h>
