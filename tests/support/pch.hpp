// Precompiled header of the test binaries: the heavy third-party headers every test includes.
#pragma once
#include <Eigen/Core>
#include <Eigen/SVD>
#include <catch2/catch.hpp>
#include <xtensor/xadapt.hpp>
#include <xtensor/xtensor.hpp>
