#pragma once
// All kernels: templated on the scalar type, operating on row-major Eigen maps.
#include "instructblip/ops/activations.hpp"
#include "instructblip/ops/attention.hpp"
#include "instructblip/ops/embedding.hpp"
#include "instructblip/ops/linear.hpp"
#include "instructblip/ops/norm.hpp"
#include "instructblip/ops/rope.hpp"
