# `conan create .` builds this consumer against the new package and runs it.
import os

from conan import ConanFile
from conan.tools.build import can_run
from conan.tools.cmake import CMake, cmake_layout


class PemoeTestPackage(ConanFile):
    settings = "os", "arch", "compiler", "build_type"
    generators = "CMakeDeps", "CMakeToolchain"
    test_type = "explicit"

    def requirements(self):
        self.requires(self.tested_reference_str)

    def layout(self):
        cmake_layout(self)

    def build(self):
        cmake = CMake(self)
        with_dnnl = bool(self.dependencies["pemoe"].options.with_dnnl)
        cmake.configure(variables={"PEMOE_TEST_DNNL": "ON" if with_dnnl else "OFF"})
        cmake.build()

    def test(self):
        if can_run(self):
            self.run(os.path.join(self.cpp.build.bindir, "test_package"), env="conanrun")
            if self.dependencies["pemoe"].options.with_dnnl:
                self.run(os.path.join(self.cpp.build.bindir, "test_package_dnnl"), env="conanrun")
