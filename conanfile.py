# Conan 2 recipe for pemoe, a header-only C++17 library.
#
#   conan create .                       # package + build and run test_package/
#   bash scripts/conan_create.sh         # the same offline, against the Debian packages (what CI runs)
#
# Consumers: find_package(pemoe CONFIG REQUIRED), then link pemoe::pemoe (and pemoe::dnnl, the oneDNN fast
# path, when the package was created with -o "pemoe/*:with_dnnl=True").
import os

from conan import ConanFile
from conan.tools.build import check_min_cppstd
from conan.tools.files import copy
from conan.tools.layout import basic_layout

required_conan_version = ">=2.0"


class PemoeConan(ConanFile):
    name = "pemoe"
    # Keep equal to include/pemoe/version.hpp and ports/pemoe/vcpkg.json (ctest "package: versions agree").
    version = "0.2.0"
    description = ("Header-only C++17 parameter-efficient mixture-of-experts fine-tuning: LoRA, (IA)3, MoV, "
                   "MoLoRA, sparse top-k LoRA experts (MoLA), MPO/MPOE, GPT-2, training")
    license = "MIT"
    author = "pemoe authors"
    topics = ("machine-learning", "mixture-of-experts", "lora", "peft", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    options = {
        "with_openmp": [True, False],  # OpenMP threads (Eigen's GEMM and pemoe's loops)
        "with_dnnl": [True, False],  # the oneDNN fast path: the pemoe::dnnl component
        # CMake's PEMOE_WITH_CUDA: the CUDA kernels, built with the system's CUDA toolkit (not a Conan
        # package). No kernel ships in this release, so it adds nothing to the targets yet.
        "with_cuda": [True, False],
    }
    default_options = {"with_openmp": True, "with_dnnl": False, "with_cuda": False}
    implements = ["auto_header_only"]
    no_copy_source = True
    exports_sources = "include/*", "LICENSE", "cmake/conan/*"

    _modules_dir = os.path.join("lib", "cmake", "pemoe")

    def _provided(self, name):
        """Whether Conan provides the dependency `name` (False for a [platform_requires] of the profile)."""
        try:
            self.dependencies[name]
            return True
        except KeyError:
            return False

    def layout(self):
        basic_layout(self, src_folder=".")

    def requirements(self):
        # Headers of the dependencies appear in pemoe's public headers: transitive_headers.
        self.requires("eigen/3.4.0", transitive_headers=True)
        self.requires("xtensor/[>=0.24 <0.26]", transitive_headers=True)
        self.requires("nlohmann_json/[>=3.11 <4]", transitive_headers=True)
        if self.options.with_dnnl:
            self.requires("onednn/[>=2.6 <4]", transitive_headers=True, transitive_libs=True)

    def validate(self):
        check_min_cppstd(self, 17)

    def package(self):
        copy(self, "LICENSE", self.source_folder, os.path.join(self.package_folder, "licenses"))
        copy(self, "*.hpp", os.path.join(self.source_folder, "include"),
             os.path.join(self.package_folder, "include"))
        copy(self, "pemoe-platform-*.cmake", os.path.join(self.source_folder, "cmake", "conan"),
             os.path.join(self.package_folder, self._modules_dir))

    def package_info(self):
        # Same file and target names as pemoe's own CMake package (cmake/pemoeConfig.cmake.in).
        self.cpp_info.set_property("cmake_file_name", "pemoe")
        # The aggregate of all components; pemoe::pemoe itself is the header-only core below.
        self.cpp_info.set_property("cmake_target_name", "pemoe::pemoe_all")
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []

        core = self.cpp_info.components["core"]
        core.set_property("cmake_target_name", "pemoe::pemoe")
        core.bindirs = []
        core.libdirs = []
        # A dependency the profile lists in [platform_requires] comes from the system (Debian's packages in
        # scripts/conan_create.sh): Conan generates nothing for it, so a CMake build module finds the system's
        # own CMake package and links its target (cmake/conan/pemoe-platform-<name>.cmake).
        modules = []
        core.requires = []
        for dep in ("eigen", "xtensor", "nlohmann_json"):
            if self._provided(dep):
                core.requires.append(f"{dep}::{dep}")
            else:
                modules.append(os.path.join(self._modules_dir, f"pemoe-platform-{dep}.cmake"))
        if self.options.with_openmp:
            core.defines.append("PEMOE_WITH_OPENMP")
            flag = "/openmp" if self.settings.compiler == "msvc" else "-fopenmp"
            core.cxxflags.append(flag)
            if self.settings.compiler != "msvc":
                core.sharedlinkflags.append(flag)
                core.exelinkflags.append(flag)

        if self.options.with_dnnl:
            dnnl = self.cpp_info.components["dnnl"]
            dnnl.set_property("cmake_target_name", "pemoe::dnnl")
            dnnl.bindirs = []
            dnnl.libdirs = []
            dnnl.requires = ["core"]
            if self._provided("onednn"):
                dnnl.requires.append("onednn::onednn")
            else:
                modules.append(os.path.join(self._modules_dir, "pemoe-platform-onednn.cmake"))
            dnnl.defines.append("PEMOE_WITH_DNNL")
        self.cpp_info.set_property("cmake_build_modules", modules)
