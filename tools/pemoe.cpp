// The `pemoe` command-line tool: the commands are tools/commands/*.cpp (each registers itself; see
// tools/cli.hpp), parsed with CLI11.
//
//   pemoe mpo compress IN --match REGEX --out OUT [--max-bond K] [--cores 5] ...   (commands/mpo.cpp)
//   pemoe mpo expand IN --out OUT
//   pemoe info FILE                                                               (commands/info.cpp)
//   pemoe diff A B [--rtol R] [--atol X]                                          (commands/diff.cpp)
//
// Exit codes: 0 success, 1 runtime error (a file, a tensor, a diff that found differences), 2 usage
// error. Every error is one line on stderr: "pemoe <command>: error: <what>".
#include <Eigen/Core>
#include <iostream>
#include <string>

#include "cli.hpp"
#include "pemoe/version.hpp"

int main(int argc, char** argv) {
  return pemoe::cli::run_tool(
      argc, argv,
      "pemoe: parameter-efficient mixture-of-experts fine-tuning; tools for safetensors checkpoints.",
      [] {
        return std::string("pemoe ") + pemoe::version_string + " (Eigen " +
               std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) + "." +
               std::to_string(EIGEN_MINOR_VERSION) + ", SIMD " + Eigen::SimdInstructionSetsInUse() + ")";
      },
      std::cout, std::cerr);
}
