// The MPO decomposition's two instantiations, compiled once for pemoe's own binaries (see
// cmake/prebuilt/prebuilt.cmake and the end of pemoe/mpo/decompose.hpp). Not part of the installed library.
#include "pemoe/mpo/decompose.hpp"

namespace pemoe {
template Mpo<float> decompose<float>(ConstMatrixRef<float>, const MpoShape&, const TruncationPolicy&,
                                     MpoGauge);
template Mpo<double> decompose<double>(ConstMatrixRef<double>, const MpoShape&, const TruncationPolicy&,
                                       MpoGauge);
}  // namespace pemoe
