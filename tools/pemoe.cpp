// The `pemoe` command-line tool.
//
//   pemoe mpo compress IN --match REGEX --out OUT [--max-bond K] [--cores 5] ...   (tools/mpo_command.hpp)
//   pemoe mpo expand IN --out OUT
//   pemoe info FILE                                                               (tools/file_commands.hpp)
//   pemoe diff A B [--rtol R]
//
// Exit codes: 0 success, 1 runtime error (a file, a tensor, a diff that found differences), 2 usage
// error. Every error is one line on stderr: "pemoe <command>: error: <what>".
#include <Eigen/Core>
#include <exception>
#include <iostream>
#include <new>
#include <string>

#include "cli_args.hpp"
#include "file_commands.hpp"
#include "mpo_command.hpp"
#include "pemoe/core/error.hpp"
#include "pemoe/version.hpp"

namespace {

const char* const main_help =
    R"(usage: pemoe <command> [options]

pemoe: parameter-efficient mixture-of-experts fine-tuning; tools for safetensors checkpoints.

commands:
  mpo compress IN --match REGEX --out OUT [--max-bond K] [--cores 5] [--rel-cutoff X]
               [--gauge symmetric|mixed|left] [--pad]
                     decompose matching 2-d tensors into matrix product operators (MPO) and print a
                     table of shapes, modes, bond dimensions, parameters and errors
  mpo expand IN --out OUT
                     rebuild the dense tensors of a file written by 'mpo compress'
  info FILE          list the tensors and metadata of a safetensors file
  diff A B [--rtol R] [--atol X]
                     compare the tensors and metadata of two safetensors files

options:
  -h, --help         this text ('pemoe <command> --help' for a command's options)
  --version          print the version and the SIMD instruction sets Eigen uses

exit codes: 0 success, 1 runtime error (or differences found by diff), 2 usage error
)";

int run(int argc, char** argv) {
  using namespace pemoe::cli;
  if (argc < 2) throw UsageError("missing command (see 'pemoe --help')");
  const std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    std::cout << main_help;
    return 0;
  }
  if (cmd == "--version" || cmd == "version") {
    std::cout << "pemoe " << pemoe::version_string << " (Eigen " << EIGEN_WORLD_VERSION << "."
              << EIGEN_MAJOR_VERSION << "." << EIGEN_MINOR_VERSION << ", SIMD "
              << Eigen::SimdInstructionSetsInUse() << ")\n";
    return 0;
  }
  if (cmd == "mpo") return mpo_command(argc, argv, 2);
  if (cmd == "info") return info_command(argc, argv, 2);
  if (cmd == "diff") return diff_command(argc, argv, 2);
  throw UsageError("unknown command '" + cmd + "' (known: mpo, info, diff; see 'pemoe --help')");
}

// "pemoe mpo compress" for messages: the words of argv before the first option or file.
std::string command_name(int argc, char** argv) {
  std::string s = "pemoe";
  for (int i = 1; i < argc && i < 3; ++i) {
    const std::string a = argv[i];
    if (a.empty() || a[0] == '-' || a.find('.') != std::string::npos || a.find('/') != std::string::npos)
      break;
    s += " " + a;
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string who = command_name(argc, argv);
  try {
    return run(argc, argv);
  } catch (const pemoe::cli::UsageError& e) {
    std::cerr << who << ": error: " << e.what() << "\n";
    return 2;
  } catch (const std::bad_alloc&) {
    std::cerr << who << ": error: out of memory\n";
  } catch (const std::exception& e) {
    std::cerr << who << ": error: " << e.what() << "\n";
  } catch (...) {
    std::cerr << who << ": error: unknown exception\n";
  }
  return 1;
}
