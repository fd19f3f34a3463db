// io/: safetensors reading, writing, validation, dtype conversions, ParamStore load/save.
#include <unistd.h>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "pemoe/core/error.hpp"
#include "pemoe/core/param_store.hpp"
#include "pemoe/io/dtype.hpp"
#include "pemoe/io/safetensors.hpp"
#include "support/helpers.hpp"

using namespace pemoe;
namespace fs = std::filesystem;

namespace {

const std::string kData = std::string(PEMOE_TEST_DATA_DIR) + "/io/";

/// A fresh empty directory under the system temp dir, removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("pemoe_test_io_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

std::vector<unsigned char> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<unsigned char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

/// A file image with the given header text (no padding added) and `buffer` bytes of data (value 0x11).
std::vector<unsigned char> image(const std::string& header, std::size_t buffer) {
  std::vector<unsigned char> b;
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<unsigned char>(n >> (8 * i)));
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), buffer, 0x11);
  return b;
}

/// The message of the IoError that parsing `bytes` throws ("" when it does not throw).
std::string io_error(const std::vector<unsigned char>& bytes, const std::string& source = "bad.safetensors") {
  try {
    SafetensorsFile::from_bytes(bytes, source);
  } catch (const IoError& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("safetensors: write then read round-trips every dtype, shape, order and metadata") {
  TempDir tmp;
  const Matrix<float> w = testing::random_matrix<float>(5, 7, 1);
  const std::vector<double> v = {0.5, -1.25, 3.0, 1e-300};
  const std::vector<std::int64_t> ids = {-5, 0, 1LL << 40};
  const std::vector<std::int32_t> i32 = {-7, 8};
  const std::vector<std::uint8_t> u8 = {0, 200, 255};
  const bool flags[] = {true, false, true, true};
  const float scalar = 2.5f;
  const std::vector<float> halfable = {0.5f, -2.0f, 1024.0f, 0.1f};

  SafetensorsWriter wr;
  wr.add_matrix("z.weight", w);  // names deliberately not sorted: the writer keeps insertion order
  wr.add("a.vector", {4}, v.data());
  wr.add("ids", {1, 3}, ids.data());
  wr.add("i32", {2}, i32.data());
  wr.add("u8", {3}, u8.data());
  wr.add("flags", {2, 2}, flags);
  wr.add("scalar", {}, &scalar);
  wr.add("empty", {0, 3}, static_cast<const float*>(nullptr));
  wr.add("half", {4}, halfable.data(), Dtype::F16);
  wr.add("bf16", {2, 2}, halfable.data(), Dtype::BF16);
  wr.set_metadata("format", "pt");
  wr.set_metadata("note", "\"quoted\" and unicode: \xce\xbb");
  CHECK_THROWS_AS(wr.add("ids", {1}, ids.data()), ConfigError);
  CHECK_THROWS_AS(wr.add("__metadata__", {1}, ids.data()), ConfigError);
  wr.save(tmp.file("rt.safetensors"));
  CHECK_FALSE(fs::exists(tmp.file("rt.safetensors.tmp-pemoe")));

  const auto f = SafetensorsFile::load(tmp.file("rt.safetensors"));
  CHECK(f.names() == wr.names());
  CHECK(f.size() == 10);
  CHECK((8 + f.header_size()) % 8 == 0);
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.metadata().at("note") == "\"quoted\" and unicode: \xce\xbb");
  CHECK(f.info("z.weight").dtype == Dtype::F32);
  CHECK(f.info("z.weight").shape == Shape{5, 7});
  CHECK(testing::max_abs_diff(f.to_matrix<float>("z.weight"), w) == 0.0);
  CHECK(testing::max_abs_diff(f.to_matrix<double>("z.weight"), w.cast<double>()) == 0.0);
  CHECK(f.to_vector<double>("a.vector") == v);
  CHECK(f.info("ids").dtype == Dtype::I64);
  CHECK(f.to_vector<std::int64_t>("ids") == ids);
  CHECK(f.to_vector<std::int32_t>("i32") == i32);
  CHECK(f.to_vector<int>("u8") == std::vector<int>{0, 200, 255});
  CHECK(f.info("flags").dtype == Dtype::BOOL);
  CHECK(f.to_vector<float>("flags") == std::vector<float>{1, 0, 1, 1});
  CHECK(f.info("scalar").shape.empty());
  CHECK(f.to_vector<float>("scalar") == std::vector<float>{2.5f});
  CHECK(f.info("empty").nbytes() == 0);
  CHECK(f.to_matrix<float>("empty").rows() == 0);
  CHECK(f.info("half").dtype == Dtype::F16);
  CHECK(f.info("half").nbytes() == 8);
  const auto half = f.to_vector<float>("half");
  CHECK(half[0] == 0.5f);
  CHECK(half[2] == 1024.0f);
  CHECK(half[3] == half_to_float(float_to_half(0.1f)));
  CHECK(std::abs(half[3] - 0.1f) < 1e-4f);
  CHECK(f.to_vector<float>("bf16")[1] == -2.0f);
  CHECK(std::abs(f.to_vector<float>("bf16")[3] - 0.1f) < 1e-3f);
  CHECK_THROWS_AS(f.to_matrix<float>("a.vector"), ShapeError);

  SECTION("copy_from keeps dtype and bytes") {
    SafetensorsWriter w2;
    for (const auto& name : f.names()) w2.copy_from(f, name);
    w2.set_metadata(f.metadata());
    const auto bytes = w2.to_bytes();
    CHECK(bytes == read_bytes(tmp.file("rt.safetensors")));
  }
}

TEST_CASE("safetensors: reads a file written by Python's safetensors (every dtype)") {
  const auto f = SafetensorsFile::load(kData + "python_mixed.safetensors");
  std::ifstream js(kData + "python_mixed.json");
  const auto expected = nlohmann::json::parse(js);
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.metadata().at("source") == "make_fixtures.py");
  CHECK(f.size() == expected["tensors"].size());
  const std::map<std::string, Dtype> torch_dtype = {{"float32", Dtype::F32},
                                                    {"float64", Dtype::F64},
                                                    {"float16", Dtype::F16},
                                                    {"bfloat16", Dtype::BF16},
                                                    {"float8_e4m3fn", Dtype::F8_E4M3},
                                                    {"float8_e5m2", Dtype::F8_E5M2},
                                                    {"int64", Dtype::I64},
                                                    {"int32", Dtype::I32},
                                                    {"int16", Dtype::I16},
                                                    {"int8", Dtype::I8},
                                                    {"uint8", Dtype::U8},
                                                    {"bool", Dtype::BOOL}};
  for (auto it = expected["tensors"].begin(); it != expected["tensors"].end(); ++it) {
    const std::string& name = it.key();
    INFO("tensor " << name);
    REQUIRE(f.contains(name));
    const auto& ti = f.info(name);
    CHECK(ti.dtype == torch_dtype.at(it.value()["dtype"].get<std::string>()));
    CHECK(ti.shape == it.value()["shape"].get<Shape>());
    const auto got = f.to_vector<double>(name);
    const auto& want = it.value()["values"];
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      INFO("element " << i);
      if (want[i].is_null()) {
        CHECK(std::isnan(got[i]));
      } else {
        const double inf = std::numeric_limits<double>::infinity();
        const double w = want[i].is_string() ? (want[i] == "inf" ? inf : -inf) : want[i].get<double>();
        CHECK(got[i] == w);
        CHECK(std::signbit(got[i]) == std::signbit(w));
      }
    }
  }
  // Floats read as integers truncate and saturate; NaN reads as 0.
  CHECK(f.to_vector<int>("f16_special") == std::vector<int>{0, 0, 1, -2, 65504, 0, 0, 0,
                                                            std::numeric_limits<int>::max(),
                                                            std::numeric_limits<int>::min(), 0, 0});
  CHECK(f.to_vector<std::uint8_t>("f32_matrix")[11] == 4);  // 4.5 truncates
  CHECK(f.to_vector<std::uint8_t>("f32_matrix")[0] == 0);   // -1 saturates at 0
  // int64 values that do not fit a double exactly are read exactly as integers.
  CHECK(f.to_vector<std::int64_t>("i64_vector")[0] == -3000000000000LL);
  CHECK(f.to_matrix<float>("f32_matrix")(2, 3) == 11 * 0.5f - 1.0f);
}

TEST_CASE("safetensors: pemoe writes the same bytes as Python's safetensors for the same tensors") {
  // python_f32.safetensors: x[i] = i * 0.25 - 1, names in the reference writer's order, one metadata key.
  auto ar = [](Index n, auto zero) {
    std::vector<decltype(zero)> v(static_cast<std::size_t>(n));
    for (Index i = 0; i < n; ++i)
      v[static_cast<std::size_t>(i)] = static_cast<decltype(zero)>(i) * decltype(zero)(0.25) - 1;
    return v;
  };
  SafetensorsWriter w;
  w.add("double.weight", {3, 2}, ar(6, 0.0).data());
  w.add("layer.0.bias", {3}, ar(3, 0.0f).data());
  w.add("layer.0.weight", {3, 5}, ar(15, 0.0f).data());
  w.add("layer.1.weight", {2, 2, 3}, ar(12, 0.0f).data());
  w.set_metadata("format", "pt");
  const auto python = read_bytes(kData + "python_f32.safetensors");
  REQUIRE(!python.empty());
  CHECK(w.to_bytes() == python);

  const auto f = SafetensorsFile::load(kData + "python_f32.safetensors");
  CHECK(f.names() ==
        std::vector<std::string>{"double.weight", "layer.0.bias", "layer.0.weight", "layer.1.weight"});
  CHECK(f.to_vector<float>("layer.1.weight") == ar(12, 0.0f));
}

TEST_CASE("dtype: F16 and BF16 conversions are exact and round to nearest-even") {
  // Every half value survives half -> float -> half (NaNs stay NaNs).
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const float x = half_to_float(static_cast<std::uint16_t>(h));
    const bool nan = (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
    if (nan) {
      REQUIRE(std::isnan(x));
      REQUIRE(std::isnan(half_to_float(float_to_half(x))));
    } else {
      REQUIRE(float_to_half(x) == h);
    }
  }
  CHECK(half_to_float(0x3c00) == 1.0f);
  CHECK(half_to_float(0x7bff) == 65504.0f);
  CHECK(half_to_float(0x0001) == std::ldexp(1.0f, -24));
  CHECK(float_to_half(65519.0f) == 0x7bff);                          // below the rounding midpoint to inf
  CHECK(float_to_half(65520.0f) == 0x7c00);                          // the midpoint rounds to even = inf
  CHECK(float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);      // tie -> even (down)
  CHECK(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);  // tie -> even (up)
  CHECK(float_to_half(std::ldexp(1.0f, -25)) == 0x0000);  // tie between 0 and the smallest subnormal
  CHECK(float_to_half(std::ldexp(3.0f, -26)) == 0x0001);
  CHECK(float_to_half(-0.0f) == 0x8000);
  CHECK(float_to_half(1e10f) == 0x7c00);

  for (std::uint32_t b = 0; b < 0x10000u; ++b) {
    const float x = bf16_to_float(static_cast<std::uint16_t>(b));
    if (std::isnan(x))
      REQUIRE(std::isnan(bf16_to_float(float_to_bf16(x))));
    else
      REQUIRE(float_to_bf16(x) == b);
  }
  CHECK(float_to_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);  // tie -> even
  CHECK(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);
  CHECK(f8e4m3_to_float(0x7e) == 448.0f);
  CHECK(std::isnan(f8e4m3_to_float(0x7f)));
  CHECK(f8e4m3_to_float(0x01) == std::ldexp(1.0f, -9));
  CHECK(f8e5m2_to_float(0x7b) == 57344.0f);
  CHECK(std::isinf(f8e5m2_to_float(0x7c)));
  Dtype d{};
  CHECK(parse_dtype("BF16", d));
  CHECK(d == Dtype::BF16);
  CHECK_FALSE(parse_dtype("F4", d));
  CHECK(dtype_of<float>() == Dtype::F32);
  CHECK(dtype_of<std::int64_t>() == Dtype::I64);
  CHECK(dtype_of<bool>() == Dtype::BOOL);
}

TEST_CASE("dtype: F16 and BF16 bit patterns of known values") {
  auto bits = [](float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  };
  auto from_bits = [](std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  // float -> F16 (IEEE 754 binary16; values from the standard's tables and Python's struct 'e' format).
  CHECK(float_to_half(1.0f) == 0x3c00);
  CHECK(float_to_half(-2.0f) == 0xc000);
  CHECK(float_to_half(0.5f) == 0x3800);
  CHECK(float_to_half(1000.0f) == 0x63d0);
  CHECK(float_to_half(0.1f) == 0x2e66);                   // 0.0999755859375
  CHECK(float_to_half(1.0f / 3.0f) == 0x3555);            // 0.333251953125
  CHECK(float_to_half(3.14159265f) == 0x4248);            // 3.140625
  CHECK(float_to_half(65504.0f) == 0x7bff);               // the largest finite half
  CHECK(float_to_half(-65520.0f) == 0xfc00);              // rounds to -inf
  CHECK(float_to_half(std::ldexp(1.0f, -14)) == 0x0400);  // the smallest normal
  CHECK(float_to_half(std::ldexp(1.0f, -24)) == 0x0001);  // the smallest subnormal
  CHECK(float_to_half(1e-8f) == 0x0000);                  // below half of it: zero
  CHECK(float_to_half(0.0f) == 0x0000);
  CHECK(float_to_half(inf) == 0x7c00);
  CHECK(float_to_half(-inf) == 0xfc00);
  CHECK((float_to_half(nan) & 0x7c00) == 0x7c00);  // a NaN: all exponent bits, a non-zero mantissa
  CHECK((float_to_half(nan) & 0x03ff) != 0);
  CHECK((float_to_half(-nan) & 0x8000) == 0x8000);
  // F16 -> float.
  CHECK(half_to_float(0x3555) == 0.333251953125f);
  CHECK(half_to_float(0xfbff) == -65504.0f);
  CHECK(half_to_float(0x03ff) == std::ldexp(1023.0f, -24));  // the largest subnormal
  CHECK(half_to_float(0x8000) == 0.0f);
  CHECK(std::signbit(half_to_float(0x8000)));
  CHECK(half_to_float(0xfc00) == -inf);
  CHECK(std::isnan(half_to_float(0x7e00)));
  // float -> BF16: the upper 16 bits, rounded to nearest-even on the lower 16.
  CHECK(float_to_bf16(1.0f) == 0x3f80);
  CHECK(float_to_bf16(-2.0f) == 0xc000);
  CHECK(float_to_bf16(0.1f) == 0x3dcd);                    // 0x3dcccccd: lower half 0xcccd > 0x8000, up
  CHECK(float_to_bf16(3.14159265f) == 0x4049);             // 0x40490fdb: lower half 0x0fdb < 0x8000, down
  CHECK(float_to_bf16(1.0f / 3.0f) == 0x3eab);             // 0x3eaaaaab
  CHECK(float_to_bf16(from_bits(0x3f808000u)) == 0x3f80);  // tie, even below
  CHECK(float_to_bf16(from_bits(0x3f818000u)) == 0x3f82);  // tie, even above
  CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7f80);  // 0x7f7fffff rounds to inf
  CHECK(float_to_bf16(from_bits(0x00018000u)) == 0x0002);             // float subnormals round too
  CHECK(float_to_bf16(from_bits(0x00008000u)) == 0x0000);
  CHECK(float_to_bf16(inf) == 0x7f80);
  CHECK(float_to_bf16(-inf) == 0xff80);
  CHECK(float_to_bf16(nan) == 0x7fc0);
  CHECK(float_to_bf16(-nan) == 0xffc0);
  // BF16 -> float: exact.
  CHECK(bf16_to_float(0x3f81) == 1.0078125f);
  CHECK(bits(bf16_to_float(0x0001)) == 0x00010000u);
  CHECK(bf16_to_float(0xff80) == -inf);
  CHECK(std::isnan(bf16_to_float(0x7fc1)));
  // The F8 formats decode through the same code.
  CHECK(f8e5m2_to_float(0x3c) == 1.0f);
  CHECK(f8e5m2_to_float(0x01) == std::ldexp(1.0f, -16));
}

// ---- malformed files: one case per error class, each checks the type and the key phrase ----------

TEST_CASE("safetensors malformed: a file shorter than the 8-byte prefix") {
  const std::string msg = io_error({1, 2, 3});
  CHECK(contains(msg, "bad.safetensors"));
  CHECK(contains(msg, "shorter than the 8-byte header-length prefix"));
}

TEST_CASE("safetensors malformed: header length larger than the file") {
  auto b = image("{}      ", 0);
  b[0] = 0xff;
  b[1] = 0x10;
  const std::string msg = io_error(b);
  CHECK(contains(msg, "header length 4351 bytes is larger than the 8 bytes after the 8-byte prefix"));
  CHECK(contains(msg, "truncated or not a safetensors file"));
  auto huge = image("{}", 0);
  huge[7] = 0x80;  // 2^63: must not overflow any size computation
  CHECK(contains(io_error(huge), "is larger than"));
}

TEST_CASE("safetensors malformed: header is not JSON, or not an object") {
  CHECK(contains(io_error(image("{\"a\": {\"dtype\": \"F32\",", 0)), "the header is not valid JSON"));
  CHECK(contains(io_error(image("[1, 2, 3]", 0)), "does not start with '{'"));
  CHECK(contains(io_error(image("{\"a\": \"\xff\xfe\"}", 0)), "not valid JSON"));  // invalid UTF-8
  CHECK(contains(io_error(image("{\"a\": [1]}", 0)), "tensor 'a' is described by a JSON array"));
  CHECK(contains(io_error(image("{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4)),
                 "tensor 'a' has no \"dtype\" field"));
}

TEST_CASE("safetensors malformed: unknown dtype") {
  const std::string msg =
      io_error(image(R"({"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}})", 1), "m.safetensors");
  CHECK(contains(msg, "safetensors 'm.safetensors': tensor 'w' has unknown dtype 'F4'"));
  CHECK(contains(msg, "BF16"));  // lists the known ones
}

TEST_CASE("safetensors malformed: shape and dtype do not match the byte range") {
  const std::string msg =
      io_error(image(R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", 20));
  CHECK(contains(
      msg, "tensor 'w' has shape (2, 3) of F32 = 24 bytes, but its data_offsets [0, 20] span 20 bytes"));
  // An overflowing element count is reported the same way, not wrapped around.
  const std::string huge = io_error(
      image(R"({"w": {"dtype": "F64", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 8]}})", 8));
  CHECK(contains(huge, "tensor 'w' has shape"));
  CHECK(contains(huge, "exceeds 2^63 - 1 bytes"));
  CHECK(contains(io_error(image(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4)),
                 "extents must be non-negative integers"));
}

TEST_CASE("safetensors malformed: sizes that would overflow are IoErrors naming the tensor and the file") {
  // Each header is hand-crafted; none may allocate more than the file, wrap around or hit UB (ASan/UBSan).
  auto err = [](const std::string& shape, const std::string& offsets, std::size_t buffer,
                const std::string& dtype = "F32") {
    return io_error(image(R"({"w": {"dtype": ")" + dtype + R"(", "shape": )" + shape +
                              R"(, "data_offsets": )" + offsets + "}}",
                          buffer),
                    "big.safetensors");
  };
  auto named = [](const std::string& msg) {
    return contains(msg, "safetensors 'big.safetensors'") && contains(msg, "tensor 'w'");
  };
  // An extent of 2^63 or more does not fit an index (it would read as negative).
  for (const char* e : {"9223372036854775808", "18446744073709551615"}) {
    const std::string msg = err(std::string("[") + e + "]", "[0, 4]", 4);
    CHECK(named(msg));
    CHECK(contains(msg, std::string("an extent of ") + e + ", above the largest supported extent 2^63 - 1"));
  }
  // 2^64 and beyond, negative and fractional extents are not non-negative integers.
  for (const char* e :
       {"18446744073709551616", "-1", "-9223372036854775808", "2.0", "1e3", "\"4\"", "null"}) {
    INFO(e);
    const std::string msg = err(std::string("[2, ") + e + "]", "[0, 8]", 8);
    CHECK(named(msg));
    CHECK(contains(msg, "extents must be non-negative integers"));
  }
  // A zero extent does not excuse huge ones: the non-zero extents' product must fit, in any order.
  for (const char* shape :
       {"[0, 4294967296, 4294967296]", "[4294967296, 4294967296, 0]", "[65536, 0, 65536, 65536, 65536]"}) {
    INFO(shape);
    const std::string msg = err(shape, "[0, 0]", 0);
    CHECK(named(msg));
    CHECK(contains(
        msg, "the product of its non-zero extents times the 4-byte size of F32 exceeds 2^63 - 1 bytes"));
  }
  // numel fits but numel * dtype size does not: 2^60 elements of F64 are 2^63 bytes.
  CHECK(contains(err("[1152921504606846976]", "[0, 8]", 8, "F64"), "exceeds 2^63 - 1 bytes"));
  CHECK(contains(err("[4611686018427387904, 2]", "[0, 8]", 8, "F64"), "exceeds 2^63 - 1 bytes"));
  // Just below the limit: a size that fits, then the offsets do not match it.
  CHECK(contains(
      err("[576460752303423488]", "[0, 8]", 8, "F64"),
      "has shape (576460752303423488) of F64 = 4611686018427387904 bytes, but its data_offsets [0, 8] "
      "span 8 bytes"));
  // Offsets: past the end, beyond 2^64, negative, fractional, or reversed.
  CHECK(contains(err("[1]", "[18446744073709551611, 18446744073709551615]", 4),
                 "past the end of the 4-byte data buffer"));
  CHECK(contains(err("[1]", "[0, 18446744073709551620]", 4), "expected two non-negative integers"));
  CHECK(contains(err("[1]", "[-4, 0]", 4), "expected two non-negative integers"));
  CHECK(contains(err("[1]", "[0.5, 4]", 4), "expected two non-negative integers"));
  CHECK(named(err("[1]", "[18446744073709551615, 4]", 4)));
  // A header length of 2^64 - 1.
  auto huge_header = image("{}", 0);
  for (int i = 0; i < 8; ++i) huge_header[static_cast<std::size_t>(i)] = 0xff;
  CHECK(contains(io_error(huge_header), "header length 18446744073709551615 bytes is larger than"));
  // A zero extent beside large (but representable) ones is a valid empty tensor.
  const auto empty = SafetensorsFile::from_bytes(
      image(R"({"w": {"dtype": "F64", "shape": [0, 1000000000000], "data_offsets": [0, 0]}})", 0));
  CHECK(empty.info("w").numel() == 0);
  CHECK(empty.to_vector<double>("w").empty());
  CHECK(empty.to_matrix<float>("w").size() == 0);
  // A directory is not read as a file of 2^63 bytes.
  TempDir tmp;
  try {
    SafetensorsFile::load(tmp.path.string());
    FAIL("no throw");
  } catch (const IoError& e) {
    CHECK(contains(e.what(), "is a directory"));
  }
}

TEST_CASE("safetensors: the writer refuses sizes the reader would refuse") {
  SafetensorsWriter w;
  const double x = 1.0;
  CHECK_THROWS_AS(w.add_raw("a", Dtype::F64, {Index(1) << 61, 4}, &x, 8), ShapeError);
  CHECK_THROWS_AS(w.add_raw("b", Dtype::F32, {0, Index(1) << 40, Index(1) << 40}, &x, 0), ShapeError);
  CHECK_THROWS_AS(w.add("c", {-1, 2}, &x), ShapeError);
  CHECK_THROWS_AS(w.add("d", {Index(1) << 62, 4}, &x), ShapeError);
  CHECK(w.names().empty());
  w.add_raw("e", Dtype::F32, {0, Index(1) << 40}, nullptr, 0);
  CHECK(SafetensorsFile::from_bytes(w.to_bytes()).info("e").shape == Shape{0, Index(1) << 40});
}

TEST_CASE("safetensors malformed: offsets outside the buffer (a truncated file)") {
  const std::string msg =
      io_error(image(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 10));
  CHECK(contains(msg, "tensor 'w' has data_offsets [0, 16] past the end of the 10-byte data buffer"));
  CHECK(contains(msg, "truncated"));
  CHECK(contains(io_error(image(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", 8)),
                 "begin > end"));
  CHECK(contains(io_error(image(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 4)),
                 "expected two non-negative integers"));
}

TEST_CASE("safetensors malformed: a real file cut short") {
  TempDir tmp;
  auto b = read_bytes(kData + "python_f32.safetensors");
  b.resize(b.size() - 5);
  {
    std::ofstream out(tmp.file("cut.safetensors"), std::ios::binary);
    out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
  try {
    SafetensorsFile::load(tmp.file("cut.safetensors"));
    FAIL("no throw");
  } catch (const IoError& e) {
    CHECK(contains(e.what(), "cut.safetensors"));
    CHECK(contains(e.what(), "tensor 'layer.1.weight'"));
    CHECK(contains(e.what(), "the file is truncated"));
  }
}

TEST_CASE("safetensors malformed: overlapping tensors") {
  const std::string msg = io_error(image(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
                                         R"( "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}})",
                                         24));
  CHECK(contains(msg, "tensors 'a' [0, 16] and 'b' [8, 24] overlap"));
}

TEST_CASE("safetensors malformed: offsets that do not cover the buffer") {
  const std::string gap = io_error(image(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                                         R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}})",
                                         20));
  CHECK(contains(gap, "bytes [8, 12) of the data buffer belong to no tensor (between 'a' and 'b')"));
  const std::string trailing =
      io_error(image(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 11));
  CHECK(contains(trailing, "the data buffer has 3 bytes after the last tensor 'a'"));
  const std::string leading =
      io_error(image(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12));
  CHECK(contains(leading, "bytes [0, 4) of the data buffer belong to no tensor (before 'a')"));
}

TEST_CASE("safetensors malformed: duplicate names") {
  const std::string msg = io_error(image(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                                         R"( "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                                         8));
  CHECK(contains(msg, "tensor name 'a' appears twice in the header"));
  CHECK(contains(
      io_error(image(R"({"a": {"dtype": "F32", "dtype": "F64", "shape": [1], "data_offsets": [0, 4]}})", 4)),
      "tensor 'a' has the key 'dtype' twice"));
}

TEST_CASE("safetensors malformed: metadata that is not string to string") {
  CHECK(contains(io_error(image(R"({"__metadata__": {"epoch": 3}})", 0)),
                 "__metadata__ value of 'epoch' is a number; safetensors metadata values must be strings"));
  CHECK(
      contains(io_error(image(R"({"__metadata__": [1]})", 0)), "__metadata__ is array, expected an object"));
}

TEST_CASE("safetensors: a missing file, a missing tensor and an empty file are clear errors") {
  try {
    SafetensorsFile::load("/nonexistent/dir/model.safetensors");
    FAIL("no throw");
  } catch (const IoError& e) {
    CHECK(contains(e.what(), "cannot open '/nonexistent/dir/model.safetensors' for reading"));
  }
  const auto f = SafetensorsFile::load(kData + "python_f32.safetensors");
  try {
    f.info("layer.2.weight");
    FAIL("no throw");
  } catch (const IoError& e) {
    CHECK(contains(e.what(), "no tensor named 'layer.2.weight'; the file has 4 tensors: 'double.weight'"));
  }
  // A file without tensors is valid.
  const auto empty = SafetensorsFile::from_bytes(SafetensorsWriter().to_bytes());
  CHECK(empty.size() == 0);
  CHECK_THROWS_AS(SafetensorsWriter().save("/nonexistent/dir/out.safetensors"), IoError);
}

TEST_CASE("safetensors: ParamStore save and load_into map names and check shapes") {
  TempDir tmp;
  ParamStore<float> s;
  s.add("layer.weight", {4, 3});
  s.add("layer.bias", {4});
  s.add("head.weight", {2, 4}, false);
  testing::randomize_params(s, 7);
  save_safetensors(s, tmp.file("p.safetensors"), {{"format", "pt"}});

  ParamStore<double> d;
  d.add("layer.weight", {4, 3});
  d.add("layer.bias", {4});
  d.add("head.weight", {2, 4});
  const auto report = load_into(d, tmp.file("p.safetensors"));
  CHECK(report.loaded.size() == 3);
  for (std::size_t i = 0; i < s.values().size(); ++i)
    CHECK(d.values()[i] == static_cast<double>(s.values()[i]));
  CHECK(SafetensorsFile::load(tmp.file("p.safetensors")).names() ==
        std::vector<std::string>{"layer.weight", "layer.bias", "head.weight"});

  SECTION("missing and unexpected names are listed") {
    ParamStore<float> m;
    m.add("layer.weight", {4, 3});
    m.add("other.weight", {2, 2});
    try {
      load_into(m, tmp.file("p.safetensors"));
      FAIL("no throw");
    } catch (const IoError& e) {
      CHECK(contains(e.what(), "missing from the file (1): 'other.weight'"));
      CHECK(contains(e.what(), "unexpected in the file (2): 'layer.bias', 'head.weight'"));
    }
    LoadOptions lenient;
    lenient.allow_missing = lenient.allow_unexpected = true;
    const auto r = load_into(m, tmp.file("p.safetensors"), lenient);
    CHECK(r.loaded == std::vector<std::string>{"layer.weight"});
    CHECK(r.missing == std::vector<std::string>{"other.weight"});
    CHECK(r.unexpected.size() == 2);
  }
  SECTION("shapes must match exactly, nothing is written on failure") {
    ParamStore<float> m;
    m.add("layer.weight", {3, 4});
    m.add("layer.bias", {4});
    m.add("head.weight", {2, 4});
    CHECK_THROWS_AS(load_into(m, tmp.file("p.safetensors")), ShapeError);
    CHECK(m.values()[12] == 0.0f);
  }
  SECTION("a rename function maps file names to parameter names (and can skip tensors)") {
    ParamStore<float> m;
    m.add("model.layer.weight", {4, 3});
    m.add("model.layer.bias", {4});
    LoadOptions o;
    o.rename = [](const std::string& n) { return n.rfind("head.", 0) == 0 ? std::string() : "model." + n; };
    const auto r = load_into(m, SafetensorsFile::load(tmp.file("p.safetensors")), o);
    CHECK(r.loaded.size() == 2);
    CHECK(m.values()[0] == s.values()[0]);
  }
  SECTION("saved as BF16, loaded back within bf16 precision") {
    save_safetensors(s, tmp.file("b.safetensors"), {}, Dtype::BF16);
    const auto f = SafetensorsFile::load(tmp.file("b.safetensors"));
    CHECK(f.info("layer.weight").dtype == Dtype::BF16);
    ParamStore<float> m;
    m.add("layer.weight", {4, 3});
    m.add("layer.bias", {4});
    m.add("head.weight", {2, 4});
    load_into(m, f);
    for (std::size_t i = 0; i < s.values().size(); ++i)
      CHECK(std::abs(m.values()[i] - s.values()[i]) <= std::abs(s.values()[i]) * (1.0f / 256));
  }
}

TEST_CASE("safetensors: random corruptions of a real file give a valid file or an IoError, never a crash") {
  const auto good = read_bytes(kData + "python_mixed.safetensors");
  REQUIRE(good.size() > 64);
  Rng rng(2024);
  auto uniform = [&](std::size_t n) {
    double u = 0;
    rng.fill_uniform(&u, 1, 0.0, 1.0);
    return std::min(n - 1, static_cast<std::size_t>(u * static_cast<double>(n)));
  };
  int parsed = 0, rejected = 0;
  // Numbers that overflow 32, 63 or 64 bits, or are negative or fractional.
  const char* const extremes[] = {"0",
                                  "-1",
                                  "4294967296",
                                  "9223372036854775807",
                                  "9223372036854775808",
                                  "18446744073709551615",
                                  "18446744073709551616",
                                  "1e30",
                                  "0.5",
                                  "2147483648"};
  for (int trial = 0; trial < 3000; ++trial) {
    auto b = good;
    const std::size_t header_end = 8 + SafetensorsFile::from_bytes(good).header_size();
    switch (trial % 5) {
      case 0:
        b[uniform(header_end)] = static_cast<unsigned char>(uniform(256));
        break;  // one header byte
      case 1:
        b.resize(uniform(b.size()));
        break;  // truncated
      case 2:
        b[uniform(8)] = static_cast<unsigned char>(uniform(256));
        break;   // length prefix
      case 3: {  // a digit of the header changed (shapes and offsets)
        std::vector<std::size_t> digits;
        for (std::size_t i = 8; i < header_end; ++i)
          if (b[i] >= '0' && b[i] <= '9') digits.push_back(i);
        b[digits[uniform(digits.size())]] = static_cast<unsigned char>('0' + uniform(10));
        break;
      }
      case 4: {  // a whole number of the header (an extent or an offset) replaced by an extreme one
        std::vector<std::pair<std::size_t, std::size_t>> numbers;  // [begin, end) of each digit run
        for (std::size_t i = 8; i < header_end; ++i)
          if (b[i] >= '0' && b[i] <= '9' && !(b[i - 1] >= '0' && b[i - 1] <= '9')) {
            std::size_t j = i;
            while (j < header_end && b[j] >= '0' && b[j] <= '9') ++j;
            if (b[i - 1] != '"' && b[j] != '"') numbers.emplace_back(i, j);  // not inside a name
          }
        const auto [nb, ne] = numbers[uniform(numbers.size())];
        const std::string x = extremes[uniform(std::size(extremes))];
        b.erase(b.begin() + static_cast<std::ptrdiff_t>(nb), b.begin() + static_cast<std::ptrdiff_t>(ne));
        b.insert(b.begin() + static_cast<std::ptrdiff_t>(nb), x.begin(), x.end());
        const std::uint64_t n = header_end - 8 - (ne - nb) + x.size();  // the new header length
        for (int i = 0; i < 8; ++i) b[static_cast<std::size_t>(i)] = static_cast<unsigned char>(n >> (8 * i));
        break;
      }
    }
    try {
      const auto f = SafetensorsFile::from_bytes(b, "fuzz");
      for (const auto& name : f.names()) {
        const auto v = f.to_vector<double>(name);
        REQUIRE(static_cast<Index>(v.size()) == f.info(name).numel());
      }
      ++parsed;
    } catch (const IoError& e) {
      REQUIRE(contains(e.what(), "safetensors 'fuzz'"));
      ++rejected;
    }
  }
  CHECK(parsed > 0);
  CHECK(rejected > 0);
}
