#pragma once
// The weight-binding vocabulary of the models lives in the layers tier
// (instructblip/layers/weights.hpp); these names keep the models:: spelling working.
#include "instructblip/layers/weights.hpp"

namespace instructblip::models {

using layers::Linear;
using layers::matrix_storage_names;
using layers::MatrixRole;
using layers::WeightPolicy;
using layers::WeightSource;
using layers::WeightVisitor;

}  // namespace instructblip::models
